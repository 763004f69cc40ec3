// Server definitions (issue 11): validated at start (a bad one disables only its types, named
// by file:line, in the log and in `fuse-svcd check`), read-only servers refuse rw with their own
// code, and the shipped definitions for squashfs, iso9660, zip and archive mount real images as
// uid 1000 in its own mount namespace, each server sealed in the same sandbox as fuse2fs.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { formatProblem, loadServerDefs } from '../supervisor/server-check.js';
import { ERRORS } from '../supervisor/protocol.js';
import { keepFailedLog } from '../supervisor/failed-logs.js';
import { readdirSync, readlinkSync } from 'node:fs';
import { DEFAULTS } from '../supervisor/config.js';
import { DAEMON, ROOT, clientArgs, instanceProcesses, makeDir, makeImage, newCaller, procStatus, startBroker, tmpdir, waitFor, type Broker, type Caller } from './lib/harness.js';
import { failedStart, instanceTree, makeFormatImage, makeTree, type Format } from './lib/servers.js';

const SERVER_DIR = path.join(ROOT, 'server');
const POLICY_DIR = path.join(ROOT, 'policies', 'seccomp');
const fuse2fsDef = () => JSON.parse(readFileSync(path.join(SERVER_DIR, 'fuse2fs.json'), 'utf8')) as Record<string, unknown>;

/** A server directory: the shipped fuse2fs.sandbox beside the given definition files. */
function serverDir(dir: string, files: Record<string, string | Record<string, unknown>>): string {
  const d = path.join(dir, `server-${Math.random().toString(36).slice(2, 8)}`);
  mkdirSync(d);
  for (const f of ['fuse2fs.sandbox', 'fuse-mount.sandbox']) copyFileSync(path.join(SERVER_DIR, f), path.join(d, f));
  for (const [n, body] of Object.entries(files)) writeFileSync(path.join(d, n), typeof body === 'string' ? body : JSON.stringify(body, null, 2) + '\n');
  return d;
}

const defs = suite('definitions are checked at start');
let dir: string;
defs.before(() => {
  dir = tmpdir();
});
defs.after(() => rmSync(dir, { recursive: true, force: true }));

defs('each kind of bad definition disables only its own types, named by file:line', () => {
  const good = fuse2fsDef();
  const d = serverDir(dir, {
    'a-good.json': good,
    // line 3: the JSON breaks there
    'b-badjson.json': '{\n  "name": "broken",\n  "fstypes": ["brk"],,\n}\n',
    'c-nopolicy.json': { ...good, name: 'nopolicy', fstypes: ['np1', 'np2'], seccompPolicy: 'no-such-policy' },
    'd-noexec.json': { ...good, name: 'noexec', fstypes: ['nx'], exec: '/usr/bin/no-such-server' },
    'e-badkey.json': { ...good, name: 'badkey', fstypes: ['bk'], options: { ...(good.options as object), allowed: ['rw+x;'] } },
    'f-dup.json': { ...good, name: 'dup', fstypes: ['ext4', 'dupnew'] },
    'g-nosandbox.json': { ...good, name: 'nosandbox', fstypes: ['ns'], sandbox: 'missing.sandbox' },
    'h-badsandbox.json': { ...good, name: 'badsandbox', fstypes: ['bs'], sandbox: 'bad.sandbox' },
  });
  writeFileSync(path.join(d, 'bad.sandbox'), '[Service]\nPrivateNetwork=true\nPrivateNetwork=no\n');
  const r = loadServerDefs(d, POLICY_DIR);
  assert.equal([...r.servers.keys()].sort(), ['dupnew', 'ext2', 'ext3', 'ext4'], 'the good types load; ext4 stays with the first definition');
  const lines = r.problems.map(formatProblem);
  const find = (re: RegExp) => {
    const l = lines.find((x) => re.test(x));
    assert.ok(l, `a problem matching ${re} in:\n${lines.join('\n')}`);
    return l!;
  };
  assert.match(find(/b-badjson\.json/), /b-badjson\.json:3: not valid JSON.*disables type brk/);
  assert.match(find(/c-nopolicy/), /c-nopolicy\.json:\d+: seccompPolicy: no policy "no-such-policy".*disables types np1, np2/);
  const nx = find(/d-noexec/);
  assert.match(nx, /d-noexec\.json:\d+: exec: \/usr\/bin\/no-such-server: not installed \(disables type nx\)/);
  const exLine = readFileSync(path.join(d, 'd-noexec.json'), 'utf8').split('\n').findIndex((l) => l.includes('"exec"')) + 1;
  assert.ok(nx.includes(`d-noexec.json:${exLine}:`), `the line of "exec" (${exLine}): ${nx}`);
  assert.match(find(/e-badkey/), /e-badkey\.json:\d+: options\.allowed: "rw\+x;" is not a plain option \(disables type bk\)/);
  assert.match(find(/f-dup/), /f-dup\.json:\d+: fstypes: "ext4" is already served by a-good\.json \(disables type ext4\)/);
  assert.match(find(/g-nosandbox/), /sandbox: missing\.sandbox does not exist/);
  assert.match(find(/bad\.sandbox/), /bad\.sandbox:?3?.*PrivateNetwork.*\(disables type bs\)/);
  assert.is(r.problems.length, 7, lines.join('\n'));
  for (const l of lines) assert.not.match(l, /\n/, 'one line each');
});

defs('the broker starts with bad definitions beside good ones, logs each once, serves the rest; check names them', async () => {
  const good = fuse2fsDef();
  const d = serverDir(dir, {
    'fuse2fs.json': good,
    'zz-broken.json': { ...good, name: 'broken', fstypes: ['brk'], seccompPolicy: 'nope' },
  });
  const cfgFile = path.join(dir, 'check-config.json');
  writeFileSync(cfgFile, JSON.stringify({ server_dir: d, fstypes: ['ext4', 'brk', 'nosuchfs'] }));
  const c = await execa(process.execPath, [DAEMON, 'check', '--config', cfgFile], { reject: false, timeout: 30000 });
  assert.match(c.stdout, /zz-broken\.json:\d+: seccompPolicy: no policy "nope".*disables type brk/);
  assert.match(c.stdout, /configured fstypes: no valid server definition .* serves brk, nosuchfs/);
  assert.match(c.stdout, /ok {4}server fuse2fs: .*serves ext2, ext3, ext4/);
  const j = JSON.parse((await execa(process.execPath, [DAEMON, 'check', '--json', '--config', cfgFile], { reject: false, timeout: 30000 })).stdout) as { name: string; ok: boolean; detail: string }[];
  assert.ok(j.some((x) => !x.ok && x.detail.includes('zz-broken.json')));

  let broker: Broker | undefined;
  let caller: Caller | undefined;
  try {
    broker = await startBroker({ config: { server_dir: d, fstypes: ['ext4', 'brk', 'nosuchfs'] } });
    const logs = broker.logs();
    assert.is(logs.split('\n').filter((l) => l.includes('zz-broken.json')).length, 1, logs);
    assert.match(logs, /server definition refused: .*zz-broken\.json:\d+: .*disables type brk/);
    assert.match(logs, /configured fstypes without a valid server definition .*: brk, nosuchfs/);
    caller = await newCaller();
    const img = await makeImage(dir, 'defs.img', 16);
    const mnt = makeDir(path.join(dir, 'defs-mnt'));
    const bad = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'brk', '-o', 'ro', img, mnt));
    assert.match(bad.stderr, /EFSTYPE/);
    const m = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'ext4', '-o', 'ro', img, mnt));
    assert.is(m.exitCode, 0, m.stderr);
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
    await waitFor('the server to exit', () => instanceProcesses(broker!.runtimeDir).length === 0, 10000);
  } finally {
    await broker?.stop();
    await caller?.close();
  }
});

defs('a read-only definition refuses rw with EROFS_SERVER before touching the source; ro mounts', async () => {
  const d = serverDir(dir, { 'ro.json': { ...fuse2fsDef(), name: 'ext4-ro', readOnly: true } });
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  try {
    broker = await startBroker({ config: { server_dir: d } });
    caller = await newCaller();
    const img = await makeImage(dir, 'ro.img', 16);
    const mnt = makeDir(path.join(dir, 'ro-mnt'));
    const rw = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'ext4', '-o', 'rw', img, mnt));
    assert.is.not(rw.exitCode, 0);
    assert.match(rw.stderr, /EROFS_SERVER: ext4-ro serves its types read-only: mount with -o ro/);
    // The static client knows the new code's text too (a reply without a message).
    assert.ok(ERRORS.EROFS_SERVER.length > 0);
    assert.equal(caller.fuseMounts(), []);
    const ro = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'ext4', '-o', 'ro', img, mnt));
    assert.is(ro.exitCode, 0, ro.stderr);
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
  } finally {
    await broker?.stop();
    await caller?.close();
  }
});

defs('a failed start keeps its whole log (RUNDIR/failed/ID.log), not two lines; the broker log names it', async () => {
  // A "server" that writes 300 lines and exits before FUSE_INIT, as a server author's first try does.
  const d = serverDir(dir, {
    'chatty.json': {
      ...fuse2fsDef(),
      name: 'chatty',
      fstypes: ['chatty'],
      exec: '/usr/bin/sh',
      argv: ['sh', '-c', 'i=1; while [ $i -le 300 ]; do echo "chatty line $i" >&2; i=$((i+1)); done; exit 3'],
      fuseFd: 'devfd',
      options: { always: [], readOnly: [], readWriteNonRoot: [], allowed: [] },
    },
  });
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  try {
    broker = await startBroker({ config: { server_dir: d, pool_size: 0 } });
    caller = await newCaller();
    const { m, where, log: text } = await failedStart(broker, caller, dir, 'chatty');
    assert.match(m.stderr, /ESERVER_START/);
    assert.ok(where.startsWith(path.join(broker.runtimeDir, 'failed') + '/'), where);
    for (const n of [1, 2, 150, 299, 300]) assert.ok(text.includes(`chatty line ${n}\n`), `line ${n} is kept`);
    assert.is((await execa('stat', ['-c', '%a %u', where])).stdout, '600 0', 'root-only');
    assert.not.ok(readdirSync(path.join(broker.runtimeDir, 'instances')).some((n) => /^\d+\.(json|state|log)$/.test(n)), 'the instance files are gone');
  } finally {
    await broker?.stop();
    await caller?.close();
  }
});

defs('the /dev/fuse hand-over (fuseFd notify): one open gets the FUSE fd, a second fails; only a FUSE mount(2) of that fd is answered, every other mount(2) EPERM', async () => {
  // A hostile "server" (python3 from the host's /usr, calling mount(2) through libc).
  const script = [
    'import ctypes, os, sys',
    'libc = ctypes.CDLL(None, use_errno=True)',
    'def m(t, data, flags=0):',
    '    r = libc.mount(b"x", b"/mnt", t, flags, data)',
    '    return "ok" if r == 0 else os.strerror(ctypes.get_errno())',
    'fd = os.open("/dev/fuse", os.O_RDWR)',
    'print("probe open1", fd)',
    'try:',
    '    os.open("/dev/fuse", os.O_RDWR); print("probe open2 ok")',
    'except OSError as e:',
    '    print("probe open2", e.strerror)',
    'print("probe tmpfs", m(b"tmpfs", None))',
    'print("probe bind", m(None, None, 4096))',
    'print("probe fd-wrong", m(b"fuse.x", b"fd=0,rootmode=40000,user_id=0,group_id=0"))',
    'print("probe fd-prefix", m(b"fuse", ("fd=%d0,rootmode=40000" % fd).encode()))',
    'print("probe fd-handed", m(b"fuse.x", ("rootmode=40000,fd=%d,user_id=0,group_id=0" % fd).encode()))',
    'print("probe fuse-mounts-here", sum(1 for l in open("/proc/self/mountinfo") if " - fuse" in l))',
    'sys.stdout.flush()',
    'sys.exit(3)',
  ].join('\n');
  const d = serverDir(dir, {
    'grabby.json': {
      ...fuse2fsDef(),
      name: 'grabby',
      fstypes: ['grabby'],
      exec: '/usr/bin/python3',
      // argv may not hold newlines (the launcher spec is line-based): a JSON string literal is a Python one.
      argv: ['python3', '-c', `exec(${JSON.stringify(script)})`],
      fuseFd: 'notify',
      seccompPolicy: 'fuse-mount',
      sandbox: 'fuse-mount.sandbox',
      options: { always: [], readOnly: [], readWriteNonRoot: [], allowed: [] },
    },
  });
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  try {
    broker = await startBroker({ config: { server_dir: d, pool_size: 0 } });
    caller = await newCaller();
    const { m, log } = await failedStart(broker, caller, dir, 'grabby');
    const probe = Object.fromEntries([...log.matchAll(/^probe (\S+) (.*)$/gm)].map((x) => [x[1], x[2]]));
    assert.match(probe.open1 ?? '', /^\d+$/, log);
    assert.is(probe.open2, 'No such device');
    assert.is(probe.tmpfs, 'Operation not permitted');
    assert.is(probe.bind, 'Operation not permitted');
    assert.is(probe['fd-wrong'], 'Operation not permitted');
    assert.is(probe['fd-prefix'], 'Operation not permitted');
    assert.is(probe['fd-handed'], 'ok');
    assert.is(probe['fuse-mounts-here'], '0', 'the answered mount(2) mounted nothing in the sandbox');
    assert.match(log, /mount\(2\) by the server refused \(EPERM\)/);
    assert.equal(caller.fuseMounts(), []);
  } finally {
    await broker?.stop();
    await caller?.close();
  }
});

defs('kept failed-start logs are bounded: the newest 32, each at most 1 MiB with its head and tail', () => {
  const rd = path.join(dir, 'failed-rd');
  mkdirSync(path.join(rd, 'instances'), { recursive: true });
  for (let id = 1; id <= 40; id++) {
    const f = path.join(rd, 'instances', `${id}.log`);
    writeFileSync(f, id === 40 ? `HEAD\n${'x'.repeat(3 << 20)}\nTAIL\n` : `log ${id}\n`);
    assert.is(keepFailedLog(rd, id, f), path.join(rd, 'failed', `${id}.log`));
  }
  const kept = readdirSync(path.join(rd, 'failed')).map((n) => Number(n.slice(0, -4))).sort((a, b) => a - b);
  assert.equal(kept, Array.from({ length: 32 }, (_, i) => i + 9));
  const big = readFileSync(path.join(rd, 'failed', '40.log'), 'utf8');
  assert.ok(big.length <= (1 << 20) + 200, `bounded: ${big.length}`);
  assert.ok(big.startsWith('HEAD\n') && big.endsWith('TAIL\n'));
  assert.match(big, /bytes of this log left out/);
  assert.is(keepFailedLog(rd, 99, path.join(rd, 'instances', 'none.log')), undefined, 'no log, nothing kept');
});

defs.run();

// ---- the shipped definitions, one filesystem at a time ----------------------------------------

const fs = suite('shipped definitions: squashfs, iso9660, zip, archive, vfat, exfat, ntfs');
let fdir: string;
let broker: Broker;
let caller: Caller;
let tree: string;
let want: string;

/** Whether pid names a live (not zombie) process. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

function parentOf(pid: number): number {
  return Number(procStatus(pid).PPid);
}

/** sha256 of every regular file under root, relative names, sorted. */
async function checksums(run: (argv: string[]) => Promise<{ stdout: string; stderr: string; exitCode: number }>, root: string): Promise<string> {
  const r = await run(['sh', '-c', `cd "${root}" && find . -type f | LC_ALL=C sort | xargs -d '\\n' sha256sum`]);
  assert.is(r.exitCode, 0, `checksums under ${root}: ${r.stderr}`);
  return r.stdout;
}

fs.before(async () => {
  fdir = tmpdir();
  // No configuration at all: the broker serves every type of every shipped definition.
  broker = await startBroker();
  caller = await newCaller();
  tree = await makeTree(fdir);
  want = await checksums((argv) => execa(argv[0], argv.slice(1), { reject: false }) as never, tree);
});

fs.after(async () => {
  await broker?.stop();
  // Idle pooled launchers end when the broker's sockets close: let them go before the next suite.
  if (broker) await waitFor('the pooled launchers to end', () => instanceTree(broker.runtimeDir, { pooled: true }).length === 0, 10000);
  await caller?.close();
  rmSync(fdir, { recursive: true, force: true });
});

fs('with no configuration the broker serves every type of every shipped definition', () => {
  const m = /serving (.*)$/m.exec(broker.logs());
  assert.ok(m, broker.logs());
  const served = m![1].split(', ').sort();
  const shipped = readdirSync(SERVER_DIR)
    .filter((n) => n.endsWith('.json'))
    .flatMap((n) => (JSON.parse(readFileSync(path.join(SERVER_DIR, n), 'utf8')) as { fstypes: string[] }).fstypes)
    .sort();
  assert.equal(served, shipped);
  for (const t of ['squashfs', 'iso9660', 'zip', 'archive', 'ext4']) assert.ok(served.includes(t), t);
  assert.not.match(broker.logs(), /definition refused/);
});

const FORMATS: { fstype: Format; comm: string }[] = [
  { fstype: 'squashfs', comm: 'squashfuse' },
  { fstype: 'iso9660', comm: 'fuseiso' },
  { fstype: 'zip', comm: 'fuse-zip' },
  { fstype: 'archive', comm: 'archivemount' },
];

for (const { fstype, comm } of FORMATS) {
  fs(`${fstype}: uid 1000 mounts an image made here, reads every checksum back, rw is refused; the server is sealed; kill -9 detaches`, async () => {
    const sub = path.join(fdir, fstype);
    mkdirSync(sub);
    const img = await makeFormatImage(sub, fstype, tree);
    const mnt = makeDir(path.join(sub, 'mnt'));

    const rw = await caller.run(clientArgs(broker.socket, 'mount', '-t', fstype, '-o', 'rw', img, mnt));
    assert.is(rw.exitCode, 2, rw.stderr);
    assert.match(rw.stderr, /EROFS_SERVER/);

    const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', '-t', fstype, '-o', 'ro', img, mnt));
    assert.is(m.exitCode, 0, `${m.stderr}\n${broker.logs().slice(-2000)}`);
    const { server_pid: pid, uid } = JSON.parse(m.stdout) as { server_pid: number; uid: number };
    const launcherPid = parentOf(pid);
    let u: { exitCode?: number; stderr: string };
    try {
      assert.ok(caller.fuseMounts().includes(mnt), 'mounted in the caller namespace');
      const line = caller.mountinfo().split('\n').find((l) => l.split(' ')[4] === mnt)!;
      assert.match(line.split(' - ')[1], new RegExp(`^fuse\\.${fstype} `), `subtype ${fstype}: ${line}`);
      assert.is(await checksums((argv) => caller.run(argv), mnt), want, 'every file reads back');
      const w = await caller.run(['sh', '-c', `echo x > "${mnt}/new"`]);
      assert.is.not(w.exitCode, 0, 'a read-only mount refuses a write');

      // Sandbox evidence, read from the host's /proc of the server.
      const st = procStatus(pid);
      assert.is(st.Name, comm.slice(0, 15));
      const [lo, hi] = DEFAULTS.uidRange;
      assert.ok(uid >= lo && uid <= hi, `uid ${uid} in the dynamic range`);
      assert.equal(st.Uid.split(/\s+/).map(Number), [uid, uid, uid, uid]);
      for (const k of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) assert.is(st[k], '0000000000000000', k);
      assert.is(st.NoNewPrivs, '1');
      assert.is(st.Seccomp, '2');
      for (const ns of ['mnt', 'net', 'pid', 'ipc', 'uts', 'user', 'cgroup']) {
        assert.is.not(readlinkSync(`/proc/${pid}/ns/${ns}`), readlinkSync(`/proc/${broker.proc.pid}/ns/${ns}`), `${ns} namespace differs`);
      }
      const fds = readdirSync(`/proc/${pid}/fd`).map((f) => readlinkSync(`/proc/${pid}/fd/${f}`));
      assert.ok(fds.some((f) => f === '/dev/fuse'), `holds the FUSE fd: ${fds.join(', ')}`);
      assert.ok(fds.some((f) => f === img), `holds the injected image: ${fds.join(', ')}`);
      const dev = readdirSync(`/proc/${pid}/root/dev`);
      assert.not.ok(dev.includes('fuse'), 'no /dev/fuse in its root');
      assert.not.ok(readdirSync(`/proc/${pid}/root`).includes('home'), 'no /home');
      // The placeholder at the source path stats like the source (libzip stat()s it).
      assert.is(Number((await execa('stat', ['-c', '%s', `/proc/${pid}/root/dev/fuse-svc/source`])).stdout), Number((await execa('stat', ['-c', '%s', img])).stdout));
    } finally {
      u = await caller.run(clientArgs(broker.socket, 'unmount', mnt)); // asserted after: a failure above must not be hidden
    }
    assert.is(u.exitCode, 0, u.stderr);
    await waitFor('the server and its launcher to exit', () => !alive(pid) && !alive(launcherPid), 10000);

    // kill -9 of the server: the launcher detaches the mount in the caller's namespace.
    const k = await caller.run(clientArgs(broker.socket, '--json', 'mount', '-t', fstype, '-o', 'ro', img, mnt));
    assert.is(k.exitCode, 0, k.stderr);
    const kpid = (JSON.parse(k.stdout) as { server_pid: number }).server_pid;
    const klauncher = parentOf(kpid);
    process.kill(kpid, 'SIGKILL');
    await waitFor('the mount to be detached', () => !caller.fuseMounts().includes(mnt), 10000);
    await waitFor('the instance to end', () => !alive(kpid) && !alive(klauncher), 10000);
    const l = JSON.parse((await caller.run(clientArgs(broker.socket, '--json', 'list'))).stdout) as { mounts: { state: string; exit_signal: number | null }[] };
    assert.ok(l.mounts.some((x) => x.state === 'exited' && x.exit_signal === 9), JSON.stringify(l.mounts));
  });
}

fs('vfat (fusefat): reads an mkfs.vfat + mcopy image, writes with rw (its own -o rw+), fsck.vfat -n clean, ro reads back; kill -9 detaches', async () => {
  const sub = path.join(fdir, 'vfat');
  const ftree = path.join(sub, 'tree');
  mkdirSync(path.join(ftree, 'SUB'), { recursive: true });
  // 8.3 names in upper case: mcopy stores them as short names only, as DOS would.
  writeFileSync(path.join(ftree, 'BIG.BIN'), randomBytes(3 << 20));
  for (let i = 0; i < 8; i++) writeFileSync(path.join(ftree, 'SUB', `F${i}.TXT`), `fat file ${i}\n`.repeat(i * 100 + 1));
  const img = path.join(sub, 'fat.img');
  await execa('mkfs.vfat', ['-C', img, String(32 * 1024)], { timeout: 30000 });
  await execa('mcopy', ['-s', '-i', img, path.join(ftree, 'BIG.BIN'), path.join(ftree, 'SUB'), '::/'], { timeout: 30000 });
  await execa('chown', ['1000:1000', img]);
  await execa('chmod', ['600', img]);
  const orig = await checksums((argv) => execa(argv[0], argv.slice(1), { reject: false }) as never, ftree);
  const mnt = makeDir(path.join(sub, 'mnt'));
  const mountAs = async (o: string) => {
    const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', '-t', 'vfat', '-o', o, img, mnt));
    assert.is(m.exitCode, 0, `${m.stderr}\n${broker.logs().slice(-1500)}`);
    const pid = (JSON.parse(m.stdout) as { server_pid: number }).server_pid;
    return { pid, launcher: parentOf(pid) };
  };
  const unmount = async (p: { pid: number; launcher: number }) => {
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
    await waitFor('the server and its launcher to exit', () => !alive(p.pid) && !alive(p.launcher), 10000);
  };

  try {
    let p = await mountAs('ro');
    assert.is(await checksums((argv) => caller.run(argv), mnt), orig, 'the mcopy tree reads back');
    assert.not.ok(readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').split('\0').some((a) => a.includes('rw+')), 'ro: no rw+');
    assert.is.not((await caller.run(['sh', '-c', `echo x > "${mnt}/NO.TXT"`])).exitCode, 0, 'ro refuses a write');
    await unmount(p);

    p = await mountAs('rw');
    // fusefat rewrites its argv while parsing (the '+' is gone from /proc/PID/cmdline): rw+
    // was its flag if it reads back as rw there and the writes below succeed.
    const cmd = readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').split('\0');
    assert.ok(cmd.some((a) => a.split(',').some((o) => /^rw\+?\s*$/.test(o))), `rw is passed as fusefat's rw+: ${cmd.join(' ')}`);
    const st = procStatus(p.pid);
    assert.is(st.NoNewPrivs, '1');
    assert.is(st.Seccomp, '2');
    assert.is(st.CapEff, '0000000000000000');
    const data = path.join(sub, 'data.bin');
    writeFileSync(data, randomBytes(1 << 20));
    await execa('chown', ['1000:1000', data]);
    const w = await caller.run(['sh', '-c', `cp "${data}" "${mnt}/written.bin" && mkdir "${mnt}/newdir" && echo hello > "${mnt}/newdir/hello.txt" && sync`]);
    assert.is(w.exitCode, 0, w.stderr);
    await unmount(p);

    const fsck = await execa('fsck.vfat', ['-n', img], { reject: false });
    assert.is(fsck.exitCode, 0, `fsck.vfat -n: ${fsck.stdout}${fsck.stderr}`);

    p = await mountAs('ro');
    const sums = (await caller.run(['sha256sum', data, `${mnt}/written.bin`])).stdout.split('\n').map((l) => l.split(' ')[0]);
    assert.is(sums[0], sums[1], 'the written file reads back after a remount');
    assert.is((await caller.run(['cat', `${mnt}/newdir/hello.txt`])).stdout, 'hello');
    assert.ok((await checksums((argv) => caller.run(argv), mnt)).includes(orig.split('\n')[0]), 'the original files are intact');
    // kill -9 of the server: the launcher detaches the mount.
    process.kill(p.pid, 'SIGKILL');
    await waitFor('the mount to be detached', () => !caller.fuseMounts().includes(mnt), 10000);
    await waitFor('the instance to end', () => !alive(p.pid) && !alive(p.launcher), 10000);
  } finally {
    if (caller.fuseMounts().includes(mnt)) await caller.run(clientArgs(broker.socket, 'unmount', mnt));
  }
});

const WRITABLE_NOTIFY = [
  { fstype: 'exfat', server: 'exfat-fuse', mkfs: (img: string) => execa('mkfs.exfat', [img], { timeout: 30000 }), check: (img: string) => execa('fsck.exfat', ['-n', img], { reject: false }) },
  { fstype: 'ntfs', server: 'ntfs-3g', mkfs: (img: string) => execa('mkntfs', ['-F', '-f', '-q', img], { timeout: 30000 }), check: (img: string) => execa('ntfsfix', ['-n', img], { reject: false }) },
];

for (const { fstype, server, mkfs, check } of WRITABLE_NOTIFY) fs(`${fstype} (${server}, which opens /dev/fuse and calls mount(2) itself): rw writes, the format's checker is clean, ro reads back; files are the caller's; kill -9 detaches`, async () => {
  const sub = path.join(fdir, fstype);
  mkdirSync(sub);
  const img = path.join(sub, 'fs.img');
  await execa('truncate', ['-s', '64M', img]);
  await mkfs(img);
  await execa('chown', ['1000:1000', img]);
  await execa('chmod', ['600', img]);
  const mnt = makeDir(path.join(sub, 'mnt'));
  const mountAs = async (o: string) => {
    const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', '-t', fstype, '-o', o, img, mnt));
    assert.is(m.exitCode, 0, `${m.stderr}\n${broker.logs().slice(-1500)}`);
    const pid = (JSON.parse(m.stdout) as { server_pid: number }).server_pid;
    return { pid, launcher: parentOf(pid) };
  };
  const unmount = async (p: { pid: number; launcher: number }) => {
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
    await waitFor('the server and its launcher to exit', () => !alive(p.pid) && !alive(p.launcher), 10000);
  };
  try {
    let p = await mountAs('rw');
    const st = procStatus(p.pid);
    assert.is(st.NoNewPrivs, '1');
    assert.is(st.Seccomp, '2');
    assert.is(st.CapEff, '0000000000000000');
    const fds = readdirSync(`/proc/${p.pid}/fd`).map((f) => readlinkSync(`/proc/${p.pid}/fd/${f}`));
    assert.ok(fds.includes('/dev/fuse'), `holds the FUSE fd it opened as /dev/fuse: ${fds.join(', ')}`);
    assert.not.ok(readdirSync(`/proc/${p.pid}/root/dev`).includes('fuse'), 'there is no /dev/fuse in its root');
    assert.match(readFileSync(`/proc/${p.pid}/root/etc/passwd`, 'utf8'), new RegExp(`^fuse-svc:x:${Number(st.Uid.split(/\s+/)[0])}:`));
    const cp = await caller.run(['sh', '-c', `cp -r "${tree}/." "${mnt}/" && sync`]);
    assert.is(cp.exitCode, 0, cp.stderr);
    assert.is((await caller.run(['stat', '-c', '%u', `${mnt}/big.bin`])).stdout, '1000', 'files appear as the caller\'s ({caller_uid})');
    await unmount(p);
    const fsck = await check(img);
    assert.is(fsck.exitCode, 0, `${fstype} checker: ${fsck.stdout}${fsck.stderr}`);
    p = await mountAs('ro');
    assert.is(await checksums((argv) => caller.run(argv), mnt), want, 'the tree reads back after a remount');
    assert.is.not((await caller.run(['sh', '-c', `echo x > "${mnt}/no"`])).exitCode, 0, 'ro refuses a write');
    process.kill(p.pid, 'SIGKILL');
    await waitFor('the mount to be detached', () => !caller.fuseMounts().includes(mnt), 10000);
    await waitFor('the instance to end', () => !alive(p.pid) && !alive(p.launcher), 10000);
  } finally {
    if (caller.fuseMounts().includes(mnt)) await caller.run(clientArgs(broker.socket, 'unmount', mnt));
  }
});

fs('every allowed option of every shipped read-only definition mounts', async () => {
  let n = 0;
  for (const { fstype } of FORMATS) {
    const def = JSON.parse(readFileSync(path.join(SERVER_DIR, readdirSync(SERVER_DIR).find((f) => f.endsWith('.json') && (JSON.parse(readFileSync(path.join(SERVER_DIR, f), 'utf8')) as { fstypes: string[] }).fstypes.includes(fstype))!), 'utf8')) as { options: { allowed: string[] } };
    const sub = path.join(fdir, `opts-${fstype}`);
    mkdirSync(sub);
    const img = await makeFormatImage(sub, fstype, tree);
    for (const a of def.options.allowed) {
      const opt = a.replace('=<number>', '=0');
      const mnt = makeDir(path.join(sub, `mnt-${n++}`));
      const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', '-t', fstype, '-o', `ro,${opt}`, img, mnt));
      assert.is(m.exitCode, 0, `${fstype} -o ${opt}: ${m.stderr}`);
      const pid = (JSON.parse(m.stdout) as { server_pid: number }).server_pid;
      const launcherPid = parentOf(pid);
      const ls = await caller.run(['ls', mnt]);
      assert.is(ls.exitCode, 0, ls.stderr);
      assert.ok(ls.stdout.trim().length > 0, `${fstype} -o ${opt}: something is listed`);
      const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
      assert.is(u.exitCode, 0, u.stderr);
      await waitFor('the server and its launcher to exit', () => !alive(pid) && !alive(launcherPid), 10000);
    }
    const bad = await caller.run(clientArgs(broker.socket, 'mount', '-t', fstype, '-o', 'ro,offset=x', img, makeDir(path.join(sub, 'mnt-bad'))));
    assert.match(bad.stderr, /EOPTION/);
  }
  assert.ok(n > 0, 'some options were tried');
  // A server's own flag syntax is the definition's to write, never the caller's.
  const vimg = path.join(fdir, 'opts-vfat.img');
  await execa('mkfs.vfat', ['-C', vimg, '4096'], { timeout: 30000 });
  await execa('chown', ['1000:1000', vimg]);
  for (const o of ['rw+', 'ro,rw+', 'rw,offset=<number>']) {
    const r = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'vfat', '-o', o, vimg, makeDir(path.join(fdir, 'opts-vfat-mnt'))));
    assert.is(r.exitCode, 2, o);
    assert.match(r.stderr, /EOPTION/, o);
  }
});

fs.run();
