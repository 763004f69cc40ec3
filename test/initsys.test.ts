// The init system integrations, for real:
//  - OpenRC: init/openrc/fuse-svcd installed by scripts/install-service.sh in a container built
//    from the broker image + Debian's openrc (OpenRC is not PID 1 there: /run/openrc/softlevel,
//    `docker run --init`); rc-service start/status/restart/stop/fullstop.
//  - runit: init/runit/fuse-svcd installed into a temp DESTDIR on this host, `runsv` on it,
//    `sv -w 10 up/status/restart/down`, `sv exit`.
// Each time: the socket appears and disappears, a mount request is served in between, a restart
// keeps a live mount, and the full stop detaches it (nothing answers ENOTCONN).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import {
  buildBrokerImage, ensureBaseImage, log, makeExt4, mountPoints, pidAlive, repoRoot, run, startDockerd,
  unmountBelow, waitFor, type Dockerd, type RunOptions,
} from './lib/docker-host.js';

const root = repoRoot();
const timings: string[] = [];
async function timed<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const t = Date.now();
  try { return await fn(); } finally { timings.push(`${what}: ${Date.now() - t} ms`); log(`${what}: ${Date.now() - t} ms`); }
}

// ---------------------------------------------------------------------------------------------
// OpenRC in a container

const IMAGE = 'fuse-svc:test';
const OPENRC_IMAGE = 'fuse-svc-test/openrc:latest';
const OPENRC = 'fusesvctest-openrc';
let d: Dockerd | undefined;
let openrcReady = false;

function exec(script: string, opts: RunOptions = {}) {
  if (!d || !openrcReady) throw new Error('OpenRC setup failed (see the first test)');
  return d.docker(['exec', OPENRC, 'sh', '-ec', script], { timeoutMs: 90_000, ...opts });
}
const AS_USER = 'setpriv --reuid 1000 --regid 1000 --clear-groups';
const REQ = '/run/fuse-svc/bin/fuse-svc-request';

async function rc(cmd: string): Promise<number> {
  const r = await exec(`rc-service fuse-svcd ${cmd}`, { allowFail: true });
  log(`rc-service fuse-svcd ${cmd}: exit ${r.code} ${(r.stdout + r.stderr).trim().replace(/\n/g, ' | ')}`);
  return r.code ?? -1;
}

async function socketThere(): Promise<boolean> {
  return (await exec('test -S /run/fuse-svc/broker.sock', { allowFail: true })).code === 0;
}

async function openrcLog(): Promise<string> {
  return (await exec('cat /var/log/fuse-svcd.log 2>&1 | tail -n 40', { allowFail: true })).stdout;
}

test('OpenRC setup: dockerd, base image, broker image + openrc, container', async () => {
  d = await timed('dockerd start', () => startDockerd('initsys'));
  const dk = d;
  await dk.docker(['rm', '-f', OPENRC], { allowFail: true });
  await timed('base image', () => ensureBaseImage(dk));
  await timed('broker image build', () => buildBrokerImage(dk, IMAGE));
  const ctx = fs.mkdtempSync('/tmp/fuse-svc-openrc-ctx-');
  try {
    fs.cpSync(path.join(root, 'init'), path.join(ctx, 'init'), { recursive: true });
    fs.mkdirSync(path.join(ctx, 'scripts'));
    fs.copyFileSync(path.join(root, 'scripts/install-service.sh'), path.join(ctx, 'scripts/install-service.sh'));
    fs.writeFileSync(path.join(ctx, 'Dockerfile'), [
      `FROM ${IMAGE}`,
      'RUN apt-get update && apt-get install -y --no-install-recommends openrc && rm -rf /var/lib/apt/lists/*',
      'COPY init /src/init',
      'COPY scripts /src/scripts',
      'RUN sh /src/scripts/install-service.sh openrc && rm -rf /src',
      'HEALTHCHECK NONE',
      'ENTRYPOINT []',
      'CMD ["sleep", "infinity"]',
      '',
    ].join('\n'));
    await timed('openrc image build', () => dk.docker(['build', '--network', 'host', '--force-rm', '-t', OPENRC_IMAGE, ctx], { timeoutMs: 600_000 }));
  } finally {
    fs.rmSync(ctx, { recursive: true, force: true });
  }
  // the broker's privileges from compose.yaml; --init: docker-init is PID 1, OpenRC is not
  await dk.docker(['run', '-d', '--init', '--name', OPENRC, '--network', 'none', '--device', '/dev/fuse',
    '--cap-drop', 'ALL', ...['SYS_ADMIN', 'SYS_PTRACE', 'SYS_CHROOT', 'SETUID', 'SETGID'].flatMap((c) => ['--cap-add', c]),
    '--security-opt', `seccomp=${path.join(root, 'docker/seccomp-broker.json')}`, OPENRC_IMAGE]);
  openrcReady = true;
  await exec('mkdir -p /run/openrc && touch /run/openrc/softlevel');
  // the client's files, made by the client (the container has no CAP_CHOWN)
  await dk.docker(['exec', '-u', '1000:1000', OPENRC, 'sh', '-ec',
    'mkdir -p /tmp/c/mnt && mkfs.ext4 -q -F -E root_owner=1000:1000 /tmp/c/disk.img 16M']);
});

test('OpenRC: start -> socket + status 0 -> a mount is served (uid 1000)', async () => {
  const code = await timed('rc-service start', () => rc('start'));
  assert.is(code, 0, `start failed:\n${await openrcLog()}`);
  assert.ok(await socketThere(), 'socket after start');
  assert.is(await rc('status'), 0, 'status of a started service');
  const r = await exec(`${AS_USER} ${REQ} mount -t ext4 -o rw /tmp/c/disk.img /tmp/c/mnt
    ${AS_USER} sh -c 'echo from-openrc > /tmp/c/mnt/f.txt'
    ${AS_USER} cat /tmp/c/mnt/f.txt`);
  assert.match(r.stdout, /mounted .*\nfrom-openrc/);
});

test('OpenRC: restart keeps the live mount, the new broker lists it', async () => {
  const code = await timed('rc-service restart', () => rc('restart'));
  assert.is(code, 0, `restart failed:\n${await openrcLog()}`);
  assert.ok(await socketThere());
  const r = await exec(`${AS_USER} cat /tmp/c/mnt/f.txt; ${AS_USER} ${REQ} list`);
  assert.match(r.stdout, /from-openrc/);
  assert.match(r.stdout, /\/tmp\/c\/mnt|disk\.img/, 'the restarted broker re-adopted the mount');
});

test('OpenRC: stop -> socket gone, status 3, mount kept; start + unmount served', async () => {
  assert.is(await timed('rc-service stop', () => rc('stop')), 0);
  assert.not.ok(await socketThere(), 'socket removed by stop');
  assert.is(await rc('status'), 3, 'status of a stopped service');
  const kept = await exec(`${AS_USER} cat /tmp/c/mnt/f.txt`);
  assert.match(kept.stdout, /from-openrc/, 'a plain stop keeps live mounts (FUSE_SVCD_FULL_STOP=shutdown)');
  assert.is(await rc('start'), 0, await openrcLog());
  const r = await exec(`${AS_USER} ${REQ} unmount /tmp/c/mnt
    if grep -q " /tmp/c/mnt " /proc/self/mountinfo; then echo still-mounted; exit 1; fi
    ${AS_USER} ${REQ} mount -t ext4 -o rw /tmp/c/disk.img /tmp/c/mnt
    ${AS_USER} sh -c 'echo second >> /tmp/c/mnt/f.txt'`);
  assert.match(r.stdout, /unmounted/);
});

test('OpenRC: fullstop -> broker stopped, every mount detached, no server left', async () => {
  assert.is(await timed('rc-service fullstop', () => rc('fullstop')), 0, await openrcLog());
  assert.not.ok(await socketThere(), 'socket removed');
  assert.is(await rc('status'), 3);
  const r = await exec(`grep " /tmp/c/mnt " /proc/self/mountinfo || echo no-mount
    cat /proc/[0-9]*/comm 2>/dev/null | grep -c -E "^(fuse2fs|fuse-svc-launch)" || true
    ls /tmp/c/mnt; echo ls-ok
    e2fsck -fn /tmp/c/disk.img >/dev/null && echo fsck-clean`);
  assert.match(r.stdout, /no-mount\n0\n/, `after fullstop: ${r.stdout}`);
  assert.match(r.stdout, /ls-ok/);
  assert.match(r.stdout, /fsck-clean/);
});

// ---------------------------------------------------------------------------------------------
// runit on this host

const rtmp = fs.mkdtempSync('/tmp/fuse-svc-runit-');
const svdir = path.join(rtmp, 'etc/sv/fuse-svcd');
const rundir = path.join(rtmp, 'run');
const sock = path.join(rtmp, 'public', 'broker.sock');
let runsvPid = 0;
let nsHolder = 0;

const sv = (args: string[], opts: RunOptions = {}) => run('sv', [...args, svdir], { timeoutMs: 30_000, ...opts });
function inNs(script: string, opts: RunOptions = {}) {
  if (!nsHolder) throw new Error('runit setup failed');
  return run('nsenter', ['-t', String(nsHolder), '-m', '--', 'sh', '-ec', script], { timeoutMs: 60_000, ...opts });
}
const hostReq = `${path.join(root, 'build/Release/fuse-svc-client')} --socket ${sock}`;
function runitLog(): string {
  try { return fs.readFileSync(path.join(rtmp, 'log/current'), 'utf8').split('\n').slice(-40).join('\n'); } catch (e) { return String(e); }
}
/** The mounts in the client's namespace below rtmp. */
function clientMounts(): string[] {
  return mountPoints(`/proc/${nsHolder}/mountinfo`).map((m) => m.mountPoint).filter((m) => m.startsWith(rtmp));
}

test('runit setup: install-service.sh runit into a DESTDIR, runsv, a client mount namespace', async () => {
  await run('sh', [path.join(root, 'scripts/install-service.sh'), 'runit', '--destdir', rtmp, '--bin', path.join(root, 'dist/supervisor/main.js')]);
  for (const f of ['run', 'finish', 'log/run', 'conf']) assert.ok(fs.existsSync(path.join(svdir, f)), f);
  fs.appendFileSync(path.join(svdir, 'conf'), `FUSE_SVCD_RUNTIME_DIR=${rundir}\nFUSE_SVCD_SOCKET=${sock}\nFUSE_SVCD_LOG_DIR=${rtmp}/log\n`);
  fs.writeFileSync(path.join(svdir, 'down'), ''); // runsv starts it down: `sv up` starts it
  const out = fs.openSync(path.join(rtmp, 'runsv.out'), 'w');
  const child = spawn('runsv', [svdir], { detached: true, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  await new Promise<void>((resolve, reject) => { child.once('spawn', resolve); child.once('error', reject); });
  child.unref();
  runsvPid = child.pid!;
  await waitFor('runsv to answer', 10_000, async () => (await sv(['status'], { allowFail: true })).stdout.startsWith('down:'), 100);

  const holder = spawn('unshare', ['-m', '--propagation', 'private', 'sleep', '900'], { detached: true, stdio: 'ignore' });
  await new Promise<void>((resolve, reject) => { holder.once('spawn', resolve); holder.once('error', reject); });
  holder.unref();
  await waitFor('the client namespace', 5000, () => {
    try { return fs.readlinkSync(`/proc/${holder.pid}/ns/mnt`) !== fs.readlinkSync('/proc/self/ns/mnt'); } catch { return false; }
  }, 50);
  nsHolder = holder.pid!;
  fs.mkdirSync(path.join(rtmp, 'mnt'));
  await makeExt4(path.join(rtmp, 'disk.img'), 16, 0, 0);
});

test('runit: sv up -> socket, sv status run, a mount is served', async () => {
  await timed('sv -w 10 up', () => sv(['-w', '10', 'up']));
  await waitFor(`socket ${sock}`, 10_000, () => fs.existsSync(sock), 100).catch((e: Error) => { throw new Error(`${e.message}\n${runitLog()}`); });
  const st = await sv(['status']);
  assert.match(st.stdout, /^run: /, st.stdout);
  const r = await inNs(`${hostReq} mount -t ext4 -o rw ${rtmp}/disk.img ${rtmp}/mnt; echo from-runit > ${rtmp}/mnt/f.txt; cat ${rtmp}/mnt/f.txt`);
  assert.match(r.stdout, /mounted .*\nfrom-runit/);
  assert.ok(clientMounts().includes(`${rtmp}/mnt`));
});

test('runit: sv restart keeps the live mount (finish does no full stop while wanted up)', async () => {
  const before = (await sv(['status'])).stdout;
  await timed('sv -w 10 restart', () => sv(['-w', '10', 'restart']));
  await waitFor('a new broker', 10_000, async () => {
    const s = (await sv(['status'])).stdout;
    return s.startsWith('run: ') && s !== before && fs.existsSync(sock);
  }, 100).catch((e: Error) => { throw new Error(`${e.message}\n${runitLog()}`); });
  const r = await inNs(`cat ${rtmp}/mnt/f.txt; ${hostReq} list`, { allowFail: true });
  assert.is(r.code, 0, `${r.stdout}${r.stderr}\n${runitLog()}`);
  assert.match(r.stdout, /from-runit/);
  assert.match(r.stdout, /disk\.img|\/mnt/, 're-adopted');
});

test('runit: sv down is a full stop: socket gone, the mount detached in the client namespace', async () => {
  await timed('sv -w 10 down (full stop)', () => sv(['-w', '10', 'down']));
  assert.match((await sv(['status'])).stdout, /^down: /);
  assert.not.ok(fs.existsSync(sock), 'socket removed');
  assert.equal(clientMounts(), [], `still mounted in the client namespace\n${runitLog()}`);
  const ls = await inNs(`ls ${rtmp}/mnt; echo ok`);
  assert.match(ls.stdout, /ok/);
  await run('e2fsck', ['-fn', path.join(rtmp, 'disk.img')], { timeoutMs: 30_000 });
  const cat = await run('debugfs', ['-R', 'cat /f.txt', path.join(rtmp, 'disk.img')], { timeoutMs: 30_000 });
  assert.match(cat.stdout, /from-runit/);
});

test('runit: up again serves, down, sv exit ends runsv', async () => {
  await sv(['-w', '10', 'up']);
  await waitFor(`socket ${sock}`, 10_000, () => fs.existsSync(sock), 100);
  const r = await inNs(`${hostReq} mount -t ext4 -o rw ${rtmp}/disk.img ${rtmp}/mnt; cat ${rtmp}/mnt/f.txt; ${hostReq} unmount ${rtmp}/mnt`);
  assert.match(r.stdout, /from-runit\nunmounted/);
  await sv(['-w', '10', 'down']);
  assert.not.ok(fs.existsSync(sock));
  await sv(['exit']);
  await waitFor('runsv to exit', 10_000, () => !pidAlive(runsvPid), 100);
  runsvPid = 0;
});

test.after(async () => {
  try {
    if (d) {
      await d.docker(['rm', '-f', OPENRC], { allowFail: true, timeoutMs: 60_000 });
      await d.stop();
    }
  } catch (e) {
    log(`cleanup (docker) failed: ${(e as Error).message}`);
    process.exitCode = 1;
  }
  try {
    if (runsvPid && pidAlive(runsvPid)) {
      await sv(['-w', '10', 'down'], { allowFail: true });
      await sv(['exit'], { allowFail: true });
      await waitFor('runsv to exit', 10_000, () => !pidAlive(runsvPid), 100).catch(() => {
        try { process.kill(-runsvPid, 'SIGKILL'); } catch { /* gone */ }
      });
    }
    // whatever the tests left: a full stop of the host broker's instances
    if (fs.existsSync(rundir)) {
      await run(path.join(root, 'dist/supervisor/main.js'), ['stop', '--runtime-dir', rundir], { allowFail: true, timeoutMs: 30_000 });
    }
    if (nsHolder && pidAlive(nsHolder)) process.kill(nsHolder, 'SIGKILL');
    await unmountBelow(rtmp);
  } catch (e) {
    // an after hook must not throw (uvu would abort the remaining suites): report and go on
    log(`cleanup (runit) failed: ${(e as Error).message}`);
    process.exitCode = 1;
  } finally {
    fs.rmSync(rtmp, { recursive: true, force: true });
    log('timings:\n  ' + timings.join('\n  '));
  }
});

test.run();
