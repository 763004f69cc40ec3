// The Docker volume driver (fuse-svcd --docker-plugin, supervisor/docker-plugin.ts) with a real
// dockerd: one private daemon for the file, the broker on the real plugin path
// /run/docker/plugins/fuse-svc.sock (dockerd looks nowhere else for a socket plugin), volumes
// created, used by containers of several uids, refcounted across containers, kept across a
// broker restart, removed, images fsck-clean; the Compose example as written. The attacks
// (docs/security.md "Attacks tried") are in the same file so one dockerd serves them all.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BASE_IMAGE, ensureBaseImage, log, mountPoints, repoRoot, run, startDockerd, waitFor, type Dockerd } from './lib/docker-host.js';
import { startBroker, instanceProcesses, type Broker } from './lib/harness.js';
import { MAX_PLUGIN_BODY } from '../supervisor/docker-plugin.js';

const SOCKET = '/run/docker/plugins/fuse-svc.sock';
const DRIVER = 'fuse-svc';
const PROJECT = 'fusesvcplug';
const tmp = fs.mkdtempSync('/var/tmp/fuse-svc-plugin-test-');
fs.chmodSync(tmp, 0o755);
const stateDir = path.join(tmp, 'state');
const runtimeDir = path.join(tmp, 'run');
fs.mkdirSync(runtimeDir, { mode: 0o755 });
let d: Dockerd | undefined;
let broker: Broker | undefined;
const extraBrokers: Broker[] = [];
const containers = new Set<string>();
const volumes = new Set<string>();

function need(): Dockerd {
  if (!d || !broker) throw new Error('setup failed (see the first test)');
  return d;
}

async function image(name: string, uid = 1000): Promise<string> {
  const f = path.join(tmp, name);
  await run('mkfs.ext4', ['-q', '-F', '-E', `root_owner=${uid}:${uid}`, f, '32M'], { timeoutMs: 30_000 });
  return f;
}

async function fsckClean(img: string): Promise<void> {
  const r = await run('e2fsck', ['-fn', img], { allowFail: true, timeoutMs: 60_000 });
  assert.is(r.code, 0, `e2fsck -fn ${img}: ${r.stdout}${r.stderr}`);
}

async function debugfsCat(img: string, file: string): Promise<string> {
  return (await run('debugfs', ['-R', `cat ${file}`, img], { timeoutMs: 20_000 })).stdout;
}

/** One plugin request as root over the socket (what dockerd sends), raw. */
async function plugin(endpoint: string, body: unknown, opts: { user?: 'plain' | 'dac'; raw?: string } = {}): Promise<{ code: number | null; out: string; status: string }> {
  const argv = ['-s', '-S', '-w', '\n%{http_code}', '--max-time', '20', '--unix-socket', SOCKET, '-X', 'POST', '--data-binary', opts.raw !== undefined ? '@-' : JSON.stringify(body), `http://plugin/${endpoint}`];
  let cmd = 'curl';
  let args = argv;
  if (opts.user === 'plain') [cmd, args] = ['setpriv', ['--reuid', '1000', '--regid', '1000', '--clear-groups', 'curl', ...argv]];
  if (opts.user === 'dac') [cmd, args] = ['setpriv', ['--reuid', '1000', '--regid', '1000', '--clear-groups', '--inh-caps', '+dac_override', '--ambient-caps', '+dac_override', 'curl', ...argv]];
  const r = await run(cmd, args, { allowFail: true, timeoutMs: 30_000, input: opts.raw });
  const lines = r.stdout.trimEnd().split('\n');
  const status = lines.pop() ?? '';
  return { code: r.code, out: lines.join('\n') + r.stderr, status };
}

async function create(name: string, opts: Record<string, string>): Promise<{ code: number | null; out: string }> {
  const args = ['volume', 'create', '-d', DRIVER];
  for (const [k, v] of Object.entries(opts)) args.push('-o', v === '' ? k : `${k}=${v}`);
  args.push(name);
  volumes.add(name);
  const r = await need().docker(args, { allowFail: true, timeoutMs: 60_000 });
  return { code: r.code, out: r.stdout + r.stderr };
}

function mountedAt(name: string): boolean {
  const mp = path.join(runtimeDir, 'docker', 'mnt', name);
  return mountPoints().some((m) => m.mountPoint === mp && m.fstype.startsWith('fuse'));
}

/** Servers and launchers of this file's broker (other suites may run their own meanwhile). */
function instanceCount(): number {
  return instanceProcesses(runtimeDir).length;
}

test('setup: private dockerd, base image, broker with --docker-plugin on the real plugin path', async () => {
  // A live broker of someone else's on the real path: fail with that, do not fight it.
  const other = fs.existsSync(SOCKET) ? await run('curl', ['-s', '--max-time', '2', '--unix-socket', SOCKET, '-X', 'POST', 'http://p/Plugin.Activate'], { allowFail: true }) : undefined;
  assert.ok(!other || other.code !== 0, `${SOCKET} is served by another process already`);
  d = await startDockerd('dockerplugin');
  await ensureBaseImage(d);
  for (const v of (await d.docker(['volume', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) await d.docker(['volume', 'rm', '-f', v], { allowFail: true });
  broker = await startBroker({ runtimeDir, args: ['--docker-plugin'], config: { docker_state_dir: stateDir } });
  await waitFor('the plugin to listen', 10_000, () => broker!.logs().includes('docker plugin: listening on'));
  const st = fs.statSync(SOCKET);
  assert.is(st.mode & 0o777, 0o600, 'plugin socket mode 0600');
  assert.is(st.uid, 0);
  assert.is(fs.statSync(path.join(runtimeDir, 'docker')).mode & 0o777, 0o700, 'mount points under a 0700 directory');
  assert.is(fs.statSync(path.join(stateDir, 'volumes')).mode & 0o777, 0o700, 'definitions in a 0700 directory');
});

test('create, run as root, as uid 1000 (writes) and as uid 1001 (refused by the image bits), remove; fsck clean', async () => {
  const dk = need();
  const img = await image('basic.img');
  const before = instanceCount();
  const c = await create('plugvol', { source: img, type: 'ext4' });
  assert.is(c.code, 0, c.out);
  assert.ok(!mountedAt('plugvol'), 'not mounted before a container needs it');
  const r1 = await dk.docker(['run', '--rm', '--network', 'none', '-v', 'plugvol:/data', BASE_IMAGE, 'sh', '-c', 'echo root > /data/root.txt && stat -c %u /data/root.txt'], { timeoutMs: 60_000 });
  assert.is(r1.stdout.trim(), '0', 'root in the container writes as uid 0');
  const r2 = await dk.docker(['run', '--rm', '--network', 'none', '--user', '1000:1000', '-v', 'plugvol:/data', BASE_IMAGE, 'sh', '-c', 'echo user > /data/user.txt && stat -c %u /data/user.txt && cat /data/root.txt'], { timeoutMs: 60_000 });
  assert.is(r2.stdout.trim(), '1000\nroot', 'uid 1000 writes into its own directory');
  const r3 = await dk.docker(['run', '--rm', '--network', 'none', '--user', '1001:1001', '-v', 'plugvol:/data', BASE_IMAGE, 'sh', '-c', 'cat /data/user.txt; echo x > /data/no.txt'], { allowFail: true, timeoutMs: 60_000 });
  assert.is.not(r3.code, 0, 'uid 1001 may not write into a 0755 directory of uid 1000');
  assert.match(r3.stderr, /Permission denied/);
  assert.is(r3.stdout.trim(), 'user', 'but reads what the bits let it read');
  // Each run ended its instance on the last Unmount.
  await waitFor('the instance to end', 15_000, () => !mountedAt('plugvol') && instanceCount() === before);
  const rm = await dk.docker(['volume', 'rm', 'plugvol'], { allowFail: true });
  assert.is(rm.code, 0, rm.stdout + rm.stderr);
  volumes.delete('plugvol');
  assert.ok(!fs.existsSync(path.join(stateDir, 'volumes', 'plugvol.json')), 'definition removed');
  await fsckClean(img);
  assert.is(await debugfsCat(img, '/user.txt'), 'user\n');
  assert.not.ok((await run('debugfs', ['-R', 'ls -l /', img])).stdout.includes('no.txt'));
});

test('Mount ids: the instance starts on the first container, ends on the last one\'s Unmount', async () => {
  const dk = need();
  const img = await image('refs.img');
  assert.is((await create('refvol', { source: img, type: 'ext4' })).code, 0);
  const a = 'fusesvcplug-a';
  const b = 'fusesvcplug-b';
  containers.add(a).add(b);
  await dk.docker(['run', '-d', '--name', a, '--network', 'none', '-v', 'refvol:/data', BASE_IMAGE, 'sleep', '600']);
  assert.ok(mountedAt('refvol'));
  const inst = JSON.parse((await plugin('VolumeDriver.Get', { Name: 'refvol' })).out).Volume.Status.instance as number;
  await dk.docker(['run', '-d', '--name', b, '--network', 'none', '-v', 'refvol:/data', BASE_IMAGE, 'sleep', '600']);
  let st = JSON.parse((await plugin('VolumeDriver.Get', { Name: 'refvol' })).out).Volume.Status;
  assert.is(st.containers, 2);
  assert.is(st.instance, inst, 'one instance for both containers');
  await dk.docker(['exec', a, 'sh', '-c', 'echo from-a > /data/a.txt']);
  assert.is((await dk.docker(['exec', b, 'cat', '/data/a.txt'])).stdout, 'from-a\n', 'both see one filesystem');
  await dk.docker(['rm', '-f', b]);
  containers.delete(b);
  st = JSON.parse((await plugin('VolumeDriver.Get', { Name: 'refvol' })).out).Volume.Status;
  assert.is(st.containers, 1);
  assert.ok(mountedAt('refvol'), 'still mounted for the other container');
  // Remove is refused while mounted: by dockerd ("in use") and, asked directly, by the driver.
  const rm = await dk.docker(['volume', 'rm', 'refvol'], { allowFail: true });
  assert.is.not(rm.code, 0);
  const direct = await plugin('VolumeDriver.Remove', { Name: 'refvol' });
  assert.is(direct.status, '500');
  assert.match(direct.out, /EBUSY_VOLUME/);
  assert.ok(fs.existsSync(path.join(stateDir, 'volumes', 'refvol.json')));
  await dk.docker(['rm', '-f', a]);
  containers.delete(a);
  await waitFor('the last Unmount to end the instance', 15_000, () => !mountedAt('refvol'));
  await dk.docker(['volume', 'rm', 'refvol']);
  volumes.delete('refvol');
  await fsckClean(img);
});

test('a broker restart keeps a live volume and answers Path/List/Get for it; the next Unmount ends it', async () => {
  const dk = need();
  const img = await image('restart.img');
  assert.is((await create('keepvol', { source: img, type: 'ext4' })).code, 0);
  const c = 'fusesvcplug-keep';
  containers.add(c);
  await dk.docker(['run', '-d', '--name', c, '--network', 'none', '-v', 'keepvol:/data', BASE_IMAGE, 'sleep', '600']);
  await broker!.exit();
  assert.ok(!fs.existsSync(SOCKET), 'the socket went with the broker');
  await dk.docker(['exec', c, 'sh', '-c', 'echo while-down > /data/down.txt']);
  broker = await startBroker({ runtimeDir, args: ['--docker-plugin'], config: { docker_state_dir: stateDir } });
  await waitFor('the plugin to listen again', 10_000, () => broker!.logs().includes('docker plugin: listening on'));
  await waitFor('the volume re-adopted', 10_000, () => /volume keepvol re-adopted/.test(broker!.logs()));
  const mp = path.join(runtimeDir, 'docker', 'mnt', 'keepvol');
  assert.is(JSON.parse((await plugin('VolumeDriver.Path', { Name: 'keepvol' })).out).Mountpoint, mp);
  const list = JSON.parse((await plugin('VolumeDriver.List', {})).out).Volumes as { Name: string; Mountpoint: string }[];
  assert.equal(list.find((v) => v.Name === 'keepvol'), { Name: 'keepvol', Mountpoint: mp });
  assert.is(JSON.parse((await plugin('VolumeDriver.Get', { Name: 'keepvol' })).out).Volume.Status.mounted, true);
  assert.is((await dk.docker(['exec', c, 'cat', '/data/down.txt'])).stdout, 'while-down\n');
  await dk.docker(['rm', '-f', c]);
  containers.delete(c);
  await waitFor('the Unmount after the restart to end the instance', 15_000, () => !mountedAt('keepvol'));
  await dk.docker(['volume', 'rm', 'keepvol']);
  volumes.delete('keepvol');
  await fsckClean(img);
  assert.is(await debugfsCat(img, '/down.txt'), 'while-down\n');
});

test('the Compose example (docker/compose.volume-example.yaml) with docker-compose', async () => {
  const dk = need();
  const img = await image('compose.img');
  const file = path.join(repoRoot(), 'docker', 'compose.volume-example.yaml');
  const env = { ...dk.env, DISK_IMAGE: img, APP_IMAGE: BASE_IMAGE };
  volumes.add(`${PROJECT}_data`);
  try {
    const r = await run('docker-compose', ['-f', file, '-p', PROJECT, 'run', '--rm', 'app'], { env, timeoutMs: 120_000 });
    assert.match(r.stdout, /written-by-compose/);
  } finally {
    await run('docker-compose', ['-f', file, '-p', PROJECT, 'down', '-v'], { env, timeoutMs: 120_000, allowFail: true });
  }
  assert.is((await dk.docker(['volume', 'ls', '-q'])).stdout.includes(`${PROJECT}_data`), false, 'down -v removed the volume');
  volumes.delete(`${PROJECT}_data`);
  assert.ok(!mountedAt(`${PROJECT}_data`));
  await fsckClean(img);
  assert.is(await debugfsCat(img, '/compose.txt'), 'written-by-compose\n');
});

// ---- attacks ---------------------------------------------------------------------------------

test('attack: uid 1000 on the plugin socket: no access by mode; with CAP_DAC_OVERRIDE, refused by SO_PEERCRED', async () => {
  need();
  const plain = await plugin('VolumeDriver.List', {}, { user: 'plain' });
  assert.is.not(plain.code, 0, `a plain uid 1000 cannot connect: ${plain.out}`);
  const dac = await plugin('VolumeDriver.Create', { Name: 'evil', Opts: { source: '/etc/shadow', type: 'ext4' } }, { user: 'dac' });
  assert.is(dac.status, '403', dac.out);
  assert.match(dac.out, /EPERM_PLUGIN/);
  assert.ok(!fs.existsSync(path.join(stateDir, 'volumes', 'evil.json')));
  assert.match(broker!.logs(), /connection of uid 1000 .* refused: EPERM_PLUGIN/);
});

test('attack: sources that are relative, a symlink, behind a symlinked directory, a directory, a FIFO, missing', async () => {
  need();
  const img = await image('src.img');
  fs.symlinkSync(img, path.join(tmp, 'link.img'));
  fs.mkdirSync(path.join(tmp, 'real'));
  fs.renameSync(await image('inner.img'), path.join(tmp, 'real', 'inner.img'));
  fs.symlinkSync(path.join(tmp, 'real'), path.join(tmp, 'linkdir'));
  fs.mkdirSync(path.join(tmp, 'adir'));
  await run('mkfifo', [path.join(tmp, 'fifo')]);
  const cases: [string, string][] = [
    ['src.img', 'relative'],
    [path.join(tmp, 'link.img'), 'final symlink'],
    [path.join(tmp, 'linkdir', 'inner.img'), 'intermediate symlink'],
    [path.join(tmp, 'adir'), 'directory'],
    [path.join(tmp, 'fifo'), 'FIFO'],
    [path.join(tmp, 'missing.img'), 'missing'],
    [`${tmp}/real/../src.img`, 'dot-dot'],
  ];
  for (const [source, what] of cases) {
    const t = Date.now();
    const r = await plugin('VolumeDriver.Create', { Name: 'badsrc', Opts: { source, type: 'ext4' } });
    assert.is(r.status, '500', `${what}: ${r.out}`);
    assert.match(r.out, /EVOLUME_SOURCE/, what);
    assert.ok(Date.now() - t < 5000, `${what}: answered at once`);
  }
  // Through docker too: its error carries the code and line.
  const viaDocker = await create('badsrc', { source: path.join(tmp, 'link.img'), type: 'ext4' });
  assert.is.not(viaDocker.code, 0);
  assert.match(viaDocker.out, /EVOLUME_SOURCE: source .* is a symbolic link/);
  volumes.delete('badsrc');
  assert.ok(!fs.existsSync(path.join(stateDir, 'volumes', 'badsrc.json')));
});

test('attack: unknown, broker-only and malformed options, missing type, other types, bad names', async () => {
  need();
  const img = await image('opts.img');
  const cases: [Record<string, string>, RegExp][] = [
    [{ source: img, type: 'ext4', bogus: '1' }, /EOPTION: option "bogus=1" is unknown/],
    [{ source: img, type: 'ext4', allow_other: '' }, /EOPTION/],
    [{ source: img, type: 'ext4', fd: '3' }, /EOPTION/],
    [{ source: img, type: 'ext4', suid: '' }, /EOPTION/],
    [{ source: img }, /EVOLUME_OPTION: missing -o type/],
    [{ type: 'ext4' }, /EVOLUME_OPTION: missing -o source/],
    [{ source: img, type: 'btrfs' }, /EFSTYPE/],
  ];
  for (const [opts, want] of cases) {
    const r = await create('badopt', opts);
    assert.is.not(r.code, 0, JSON.stringify(opts));
    assert.match(r.out, want);
  }
  volumes.delete('badopt');
  assert.match((await plugin('VolumeDriver.Create', { Name: 'x', Opts: { source: img, type: 'ext4', 'Bad-Key': '1' } })).out, /EVOLUME_OPTION/);
  assert.match((await plugin('VolumeDriver.Create', { Name: '../etc', Opts: { source: img, type: 'ext4' } })).out, /EVOLUME_NAME/);
  assert.match((await plugin('VolumeDriver.Mount', { Name: 'nosuch', ID: 'a' })).out, /ENOENT_VOLUME/);
  assert.match((await plugin('VolumeDriver.Nope', {})).out, /EOP/);
  assert.is(fs.readdirSync(path.join(stateDir, 'volumes')).length, 0, 'nothing was defined');
});

test('attack: oversize and malformed bodies, a request that never completes', async () => {
  need();
  const big = await plugin('VolumeDriver.Create', undefined, { raw: JSON.stringify({ Name: 'big', Opts: { pad: 'x'.repeat(MAX_PLUGIN_BODY + 10) } }) });
  assert.is(big.status, '413', big.out);
  assert.match(big.out, /EPLUGIN_HTTP/);
  const bad = await plugin('VolumeDriver.Get', undefined, { raw: '{"Name":' });
  assert.is(bad.status, '400');
  assert.match(bad.out, /EPROTO_JSON/);
  // Headers that never end: the broker closes the connection by its request deadline.
  const t = Date.now();
  const r = await run('python3', ['-c', `
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(${JSON.stringify(SOCKET)})
s.send(b"POST /VolumeDriver.List HTTP/1.1\\r\\nHost: x\\r\\n")
s.settimeout(30)
try:
    d = s.recv(4096)
except Exception as e:
    print("error", e); sys.exit(1)
print("closed", len(d))
`], { timeoutMs: 40_000, allowFail: true });
  assert.is(r.code, 0, r.stdout + r.stderr);
  assert.ok(Date.now() - t < 20_000, `closed after ${Date.now() - t} ms`);
  // Still serving.
  assert.is((await plugin('Plugin.Activate', {})).status, '200');
});

test('a Mount asked from a mount namespace the mount cannot reach is refused and undone (no silent bare directory)', async () => {
  need();
  const img = await image('unseen.img');
  assert.is((await create('unseenvol', { source: img, type: 'ext4' })).code, 0);
  const before = instanceCount();
  // "dockerd" in a private mount namespace: what a host dockerd is to a broker container
  // whose mount dir was not bind-mounted with rshared propagation.
  const r = await run('unshare', ['-m', '--propagation', 'private', 'curl', '-s', '--max-time', '20', '--unix-socket', SOCKET, '-X', 'POST', '-d', JSON.stringify({ Name: 'unseenvol', ID: 'x1' }), 'http://p/VolumeDriver.Mount'], { timeoutMs: 30_000 });
  assert.match(r.stdout, /EVOLUME_UNSEEN: dockerd \(pid \d+\) does not see the mount/);
  await waitFor('the instance to be undone', 15_000, () => !mountedAt('unseenvol') && instanceCount() === before);
  assert.is(JSON.parse((await plugin('VolumeDriver.Get', { Name: 'unseenvol' })).out).Volume.Status.mounted, false);
  assert.is((await plugin('VolumeDriver.Remove', { Name: 'unseenvol' })).status, '200');
  volumes.delete('unseenvol');
  await fsckClean(img);
});

test('attack: a second broker with the plugin socket held by a live one exits and takes nothing over', async () => {
  need();
  const inode = fs.statSync(SOCKET).ino;
  const second = await startBroker({ args: ['--docker-plugin'], config: { docker_state_dir: path.join(tmp, 'state2') } }).catch((e: Error) => e);
  if (!(second instanceof Error)) {
    extraBrokers.push(second);
    await waitFor('the second broker to exit', 10_000, () => second.proc.exitCode !== null);
    assert.is(second.proc.exitCode, 75, second.logs());
    assert.match(second.logs(), /another live broker holds the Docker plugin socket/);
  } else {
    assert.match(second.message, /\(75\).*another live broker holds the Docker plugin socket/s);
  }
  assert.is(fs.statSync(SOCKET).ino, inode, 'the socket is the first broker\'s still');
  assert.is((await plugin('Plugin.Activate', {})).status, '200');
});

test('teardown: containers, volumes, brokers, dockerd; nothing left mounted', async () => {
  const dk = d;
  if (dk) {
    for (const c of containers) await dk.docker(['rm', '-f', c], { allowFail: true });
    for (const v of volumes) await dk.docker(['volume', 'rm', '-f', v], { allowFail: true });
  }
  for (const b of extraBrokers) await b.stop();
  await dk?.stop();
  if (broker) {
    await broker.stop();
    assert.ok(!fs.existsSync(SOCKET), 'plugin socket removed');
    fs.rmSync(`${SOCKET}.lock`, { force: true });
  }
  assert.equal(mountPoints().filter((m) => m.mountPoint.startsWith(runtimeDir)).map((m) => m.mountPoint), []);
  fs.rmSync(tmp, { recursive: true, force: true });
  log('docker-plugin: torn down');
});

test.run();
