// The broker in a container, clients in others, with real Docker (Debian's docker.io 20.10 and
// docker-compose v1): a private dockerd, a debootstrap base image, the broker image built from
// this checkout, compose.yaml brought up as written, unprivileged clients mounting through the
// static client the broker publishes, a broker crash survived, and `compose down` leaving nothing.
// Nothing is skipped: if Docker cannot run here, the first test fails with the exact error.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  BASE_IMAGE, buildBrokerImage, ensureBaseImage, inspect, log, makeExt4, mountPoints, repoRoot, run,
  startDockerd, unmountBelow, waitFor, type Dockerd, type RunOptions,
} from './lib/docker-host.js';

const root = repoRoot();
const IMAGE = 'fuse-svc:test';
const CLIENT_IMAGE = 'fuse-svc-test/busybox:latest';
const PROJECT = 'fusesvctest';
const VOLUME = 'fusesvctest-run';
const CLIENT = 'fusesvctest-client';
const INIT_BROKER = 'fusesvctest-init';

let d: Dockerd | undefined;
let ready = false;
const tmp = fs.mkdtempSync('/var/tmp/fuse-svc-dtest-');
const timings: string[] = [];
let fuseMountsBefore = 0;

function need(): Dockerd {
  if (!d || !ready) throw new Error('setup failed (see the first test)');
  return d;
}

async function timed<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const t = Date.now();
  try {
    return await fn();
  } finally {
    timings.push(`${what}: ${Date.now() - t} ms`);
    log(`${what}: ${Date.now() - t} ms`);
  }
}

function compose(args: readonly string[], opts: RunOptions = {}) {
  return run('docker-compose', ['-f', 'compose.yaml', '-p', PROJECT, ...args], {
    cwd: root, timeoutMs: 120_000, ...opts,
    env: { ...need().env, FUSE_SVC_IMAGE: IMAGE, FUSE_SVC_VOLUME: VOLUME, ...opts.env },
  });
}

async function brokerId(): Promise<string> {
  const r = await compose(['ps', '-q', 'mount-broker']);
  const id = r.stdout.trim();
  assert.ok(id, 'mount-broker container exists');
  return id;
}

async function brokerLogs(): Promise<string> {
  const r = await compose(['logs', '--no-color', '--tail', '80', 'mount-broker'], { allowFail: true });
  return r.stdout + r.stderr;
}

async function waitHealthy(id: string, timeoutMs: number): Promise<void> {
  await waitFor(`container ${id.slice(0, 12)} healthy`, timeoutMs, async () => {
    const st = await inspect(need(), id, '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}');
    if (st.startsWith('exited') || st.startsWith('dead')) throw new Error(`container ${st}\n${await brokerLogs()}`);
    if (st.endsWith('unhealthy')) throw new Error(`container unhealthy\n${await brokerLogs()}`);
    return st === 'running healthy';
  }, 250).catch(async (e: Error) => { throw new Error(`${e.message}\n${await brokerLogs()}`); });
}

/** The unprivileged client flags: no capabilities, no devices, no network, no_new_privs, uid 1000. */
const UNPRIVILEGED = ['--cap-drop', 'ALL', '--network', 'none', '--security-opt', 'no-new-privileges:true', '--user', '1000:1000'];

test('setup: dockerd, base image, broker image, client image', async () => {
  fuseMountsBefore = mountPoints().filter((m) => m.fstype.startsWith('fuse')).length;
  d = await timed('dockerd start', () => startDockerd('compose'));
  const dk = d;
  // leftovers of an interrupted earlier run
  await dk.docker(['rm', '-f', CLIENT, INIT_BROKER], { allowFail: true });
  await run('docker-compose', ['-f', 'compose.yaml', '-p', PROJECT, 'down', '-v', '--remove-orphans', '-t', '30'], {
    cwd: root, env: { ...dk.env, FUSE_SVC_IMAGE: IMAGE, FUSE_SVC_VOLUME: VOLUME }, allowFail: true, timeoutMs: 120_000,
  });
  await timed('base image (debootstrap once, then cached)', () => ensureBaseImage(dk));
  await timed('broker image build', () => buildBrokerImage(dk, IMAGE));
  // A client image with nothing but a static busybox: no libc, no Node (like distroless/Alpine).
  const ctx = path.join(tmp, 'client-image');
  fs.mkdirSync(ctx);
  fs.writeFileSync(path.join(ctx, 'Dockerfile'), [
    `FROM ${BASE_IMAGE} AS bb`,
    'RUN apt-get update && apt-get install -y --no-install-recommends busybox-static && rm -rf /var/lib/apt/lists/*',
    'FROM scratch',
    'COPY --from=bb /usr/bin/busybox /bin/busybox',
    'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
    'CMD ["/bin/sh"]',
    '',
  ].join('\n'));
  await timed('client image build', () => dk.docker(['build', '--network', 'host', '--force-rm', '-t', CLIENT_IMAGE, ctx], { timeoutMs: 600_000 }));
  ready = true;
});

test('compose up -d mount-broker: healthy, publishes the static client, starts nothing else', async () => {
  const dk = need();
  await timed('compose up -d mount-broker', () => compose(['up', '-d', 'mount-broker']));
  const id = await brokerId();
  await timed('broker healthy', () => waitHealthy(id, 90_000));
  const ps = await dk.docker(['ps', '-a', '--filter', `label=com.docker.compose.project=${PROJECT}`, '--format', '{{.Label "com.docker.compose.service"}}']);
  assert.equal(ps.stdout.trim().split('\n'), ['mount-broker'], 'the example client (profile) is not started by up mount-broker');
  // what the container runs with
  const caps = await inspect(dk, id, '{{json .HostConfig.CapAdd}} {{json .HostConfig.CapDrop}} {{.HostConfig.Privileged}} {{.HostConfig.NetworkMode}}');
  assert.match(caps, /SYS_ADMIN/);
  assert.match(caps, /false none$/);
  // PID 1 is the launcher's init
  const top = await dk.docker(['top', id, '-eo', 'pid,ppid,args']);
  assert.match(top.stdout, /fuse-svc-launcher init/);
  // the static client is in the volume
  const ls = await dk.docker(['run', '--rm', ...UNPRIVILEGED, '-v', `${VOLUME}:/run/fuse-svc:ro`, CLIENT_IMAGE,
    'sh', '-c', 'ls -l /run/fuse-svc/bin/fuse-svc-request /run/fuse-svc/broker.sock; echo --; ls -A /run/fuse-svc'], { timeoutMs: 60_000 });
  assert.match(ls.stdout, /fuse-svc-request/);
  // The shared volume holds what clients need and nothing of the broker's state (issue 9 §3),
  // which is in the broker's own volume (and passed the broker's secure-path check there).
  assert.equal(ls.stdout.split('--\n')[1].trim().split('\n'), ['bin', 'broker.sock'], ls.stdout);
  const state = await dk.docker(['exec', id, 'ls', '-A', '/run/fuse-svcd'], { timeoutMs: 30_000 });
  for (const n of ['broker.lock', 'broker.pid', 'instances', 'uids']) assert.ok(state.stdout.split('\n').includes(n), `${n} in the state volume: ${state.stdout}`);
});

test('compose run example-client: uid 1000, no caps, no devices, no network mounts rw, writes, reads, unmounts', async () => {
  need();
  const r = await timed('compose run --rm example-client', () => compose(['run', '--rm', 'example-client'], { timeoutMs: 180_000 }));
  assert.match(r.stdout, /hello from uid 1000/);
  assert.match(r.stdout, /example-client: ok/);
});

test('busybox-only client: mounts an image from a bind mount through the published client', async () => {
  const dk = need();
  const data = path.join(tmp, 'data');
  fs.mkdirSync(path.join(data, 'mnt'), { recursive: true });
  fs.chownSync(data, 1000, 1000);
  fs.chownSync(path.join(data, 'mnt'), 1000, 1000);
  const img = path.join(data, 'disk.img');
  await makeExt4(img, 16, 1000, 1000);
  const script = [
    'cd /data',
    'C=/run/fuse-svc/bin/fuse-svc-request',
    '$C mount -t ext4 -o rw disk.img mnt',
    'grep -q " /data/mnt " /proc/self/mountinfo',
    'echo "written by a busybox client" > mnt/file.txt',
    'mkdir mnt/dir && echo nested > mnt/dir/n.txt',
    'cat mnt/file.txt mnt/dir/n.txt',
    '$C list',
    '$C unmount mnt',
    'if grep -q " /data/mnt " /proc/self/mountinfo; then echo "still mounted"; exit 1; fi',
    'echo done',
  ].join('\n');
  const r = await timed('busybox client mount/write/read/unmount', () => dk.docker(['run', '--rm', ...UNPRIVILEGED,
    '-v', `${VOLUME}:/run/fuse-svc:ro`, '-v', `${data}:/data`, CLIENT_IMAGE, 'sh', '-ec', script], { timeoutMs: 120_000 }));
  assert.match(r.stdout, /written by a busybox client\nnested\n/);
  assert.match(r.stdout, /done/);
  // the data reached the image, and the filesystem is clean (fuse2fs flushed before "unmounted")
  await run('e2fsck', ['-fn', img], { timeoutMs: 30_000 });
  const cat = await run('debugfs', ['-R', 'cat /file.txt', img], { timeoutMs: 30_000 });
  assert.match(cat.stdout, /written by a busybox client/);
  assert.not.ok(mountPoints().some((m) => m.mountPoint.startsWith(data)), 'nothing mounted on the host');
});

test('a broker crash inside the container: init restarts it, live mounts keep working', async () => {
  const dk = need();
  const id = await brokerId();
  const data = path.join(tmp, 'live');
  fs.mkdirSync(path.join(data, 'mnt'), { recursive: true });
  fs.chownSync(data, 1000, 1000);
  fs.chownSync(path.join(data, 'mnt'), 1000, 1000);
  await makeExt4(path.join(data, 'disk.img'), 16, 1000, 1000);
  await dk.docker(['run', '-d', '--name', CLIENT, ...UNPRIVILEGED, '-v', `${VOLUME}:/run/fuse-svc:ro`, '-v', `${data}:/data`,
    CLIENT_IMAGE, 'sleep', '3600']);
  const exec = (script: string, opts: RunOptions = {}) => dk.docker(['exec', CLIENT, 'sh', '-ec', script], { timeoutMs: 60_000, ...opts });
  await exec('cd /data && /run/fuse-svc/bin/fuse-svc-request mount -t ext4 -o rw disk.img mnt && echo before-crash > mnt/a.txt');

  // kill -9 the broker (node), not PID 1
  const top = await dk.docker(['top', id, '-eo', 'pid,args']);
  const line = top.stdout.split('\n').find((l) => /node .*fuse-svcd/.test(l) && !/ stop\b/.test(l) && !/fuse-svc-launcher init/.test(l));
  assert.ok(line, `the broker process in:\n${top.stdout}`);
  const pid = Number(line!.trim().split(/\s+/)[0]);
  process.kill(pid, 'SIGKILL');
  await timed('broker restarted by init', () => waitFor('a new broker answering list', 30_000, async () => {
    const t2 = await dk.docker(['top', id, '-eo', 'pid,args']);
    const again = t2.stdout.split('\n').some((l) => /node .*fuse-svcd/.test(l) && !l.trim().startsWith(String(pid) + ' '));
    if (!again) return false;
    const l = await exec('/run/fuse-svc/bin/fuse-svc-request list', { allowFail: true });
    return l.code === 0 ? l : false;
  }, 250));
  const st = await inspect(dk, id, '{{.State.Status}} {{.RestartCount}}');
  assert.is(st, 'running 0', 'the container itself did not restart');
  const r = await exec('cat /data/mnt/a.txt && echo after-crash >> /data/mnt/a.txt && cat /data/mnt/a.txt && /run/fuse-svc/bin/fuse-svc-request list');
  assert.match(r.stdout, /before-crash\nbefore-crash\nafter-crash/);
  assert.match(r.stdout, /\/data\/mnt|disk\.img/, 'list shows the re-adopted mount');
});

test('compose stop/down: full stop detaches the client mount (no ENOTCONN), down -v leaves nothing', async () => {
  const dk = need();
  const id = await brokerId();
  const t = Date.now();
  await timed('compose stop (full stop)', () => compose(['stop', '-t', '30']));
  const stopMs = Date.now() - t;
  assert.ok(stopMs < 25_000, `stop took ${stopMs} ms: PID 1 did not handle SIGTERM in time`);
  const exit = await inspect(dk, id, '{{.State.ExitCode}}');
  assert.is(exit, '0', 'the init exits 0 after a clean full stop');
  // the client's mount is gone from its namespace, not left answering ENOTCONN
  const r = await dk.docker(['exec', CLIENT, 'sh', '-c', 'grep " /data/mnt " /proc/self/mountinfo; ls /data/mnt; echo rc=$?'], { allowFail: true });
  assert.not.match(r.stdout, / \/data\/mnt /, `mount still in the client's table: ${r.stdout}`);
  assert.not.match(r.stdout + r.stderr, /not connected/i);
  assert.match(r.stdout, /rc=0/);
  await dk.docker(['rm', '-f', CLIENT]);
  await run('e2fsck', ['-fn', path.join(tmp, 'live/disk.img')], { timeoutMs: 30_000 });
  const cat = await run('debugfs', ['-R', 'cat /a.txt', path.join(tmp, 'live/disk.img')], { timeoutMs: 30_000 });
  assert.match(cat.stdout, /before-crash\nafter-crash/, 'the write after the crash reached the image');

  await timed('compose down -v', () => compose(['down', '-v', '-t', '30']));
  const ps = await dk.docker(['ps', '-aq', '--filter', `label=com.docker.compose.project=${PROJECT}`]);
  assert.is(ps.stdout.trim(), '', 'no container left');
  const vols = await dk.docker(['volume', 'ls', '-q']);
  assert.not.ok(vols.stdout.split('\n').includes(VOLUME), 'volume removed');
  const fuse = mountPoints().filter((m) => m.fstype.startsWith('fuse')).length;
  assert.is(fuse, fuseMountsBefore, 'no FUSE mount left on the host');
});

test('compose down with a live mount in a one-off client: no container, no volume, no mount, no process', async () => {
  const dk = need();
  await compose(['up', '-d', 'mount-broker']);
  await waitHealthy(await brokerId(), 90_000);
  const run1 = await compose(['run', '-d', '--entrypoint', '/bin/sh', 'example-client', '-ec', [
    'cd /data',
    'mkfs.ext4 -q -F -E root_owner=1000:1000 disk.img 16M',
    'mkdir mnt',
    '/run/fuse-svc/bin/fuse-svc-request mount -t ext4 -o rw disk.img mnt',
    'echo live > mnt/f',
    // PID 1 of this container: leave on SIGTERM (a PID 1 without a handler ignores it)
    'trap "exit 0" TERM',
    'sleep 3600 & wait',
  ].join('\n')]);
  const name = run1.stdout.trim().split('\n').pop()!.trim();
  assert.ok(name, `one-off container name from: ${run1.stdout}`);
  await waitFor('the one-off client to hold its mount', 30_000, async () => {
    const r = await dk.docker(['exec', name, 'cat', '/data/mnt/f'], { allowFail: true });
    if ((await inspect(dk, name, '{{.State.Status}}')) === 'exited') {
      throw new Error(`client exited: ${(await dk.docker(['logs', name], { allowFail: true })).stderr}`);
    }
    return r.stdout.trim() === 'live';
  }, 250);
  const launchers = () => fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
    try { return /^(fuse2fs|fuse-svc-launch)/.test(fs.readFileSync(`/proc/${p}/comm`, 'utf8')); } catch { return false; }
  });
  const t = Date.now();
  await timed('compose down -v with a live mount', () => compose(['down', '-v', '-t', '30']));
  assert.ok(Date.now() - t < 30_000, 'down did not need the SIGKILL timeout');
  assert.is((await dk.docker(['ps', '-aq', '--filter', `label=com.docker.compose.project=${PROJECT}`])).stdout.trim(), '', 'no container');
  assert.not.ok((await dk.docker(['volume', 'ls', '-q'])).stdout.split('\n').includes(VOLUME), 'no volume');
  assert.is(mountPoints().filter((m) => m.fstype.startsWith('fuse')).length, fuseMountsBefore, 'no FUSE mount');
  assert.equal(launchers().filter((p) => {
    // only processes of this daemon's containers count (other suites may run servers of their own)
    try { return fs.readFileSync(`/proc/${p}/cgroup`, 'utf8').includes('/docker/'); } catch { return false; }
  }), [], 'no server or launcher left');
});

test('the image also runs below docker run --init (init: true): serves, stops fast and cleanly', async () => {
  const dk = need();
  const seccomp = path.join(root, 'docker/seccomp-broker.json'); // the docker CLI reads the file
  await dk.docker(['run', '-d', '--init', '--name', INIT_BROKER, '--network', 'none', '--device', '/dev/fuse',
    '--cap-drop', 'ALL', ...['SYS_ADMIN', 'SYS_PTRACE', 'SYS_CHROOT', 'SETUID', 'SETGID'].flatMap((c) => ['--cap-add', c]),
    '--security-opt', `seccomp=${seccomp}`, '--security-opt', 'no-new-privileges:true', IMAGE]);
  await waitFor('the broker under docker-init to answer', 30_000, async () =>
    (await dk.docker(['exec', INIT_BROKER, 'fuse-svc-request', 'list'], { allowFail: true })).code === 0, 250);
  const top = await dk.docker(['top', INIT_BROKER, '-eo', 'pid,ppid,args']);
  assert.match(top.stdout, /docker-init/);
  assert.match(top.stdout, /fuse-svc-launcher init/);
  const t = Date.now();
  await dk.docker(['stop', '-t', '20', INIT_BROKER], { timeoutMs: 60_000 });
  const ms = Date.now() - t;
  timings.push(`docker stop under --init: ${ms} ms`);
  assert.ok(ms < 10_000, `docker stop took ${ms} ms`);
  assert.is(await inspect(dk, INIT_BROKER, '{{.State.ExitCode}}'), '0');
  await dk.docker(['rm', '-f', INIT_BROKER]);
});

test.after(async () => {
  try {
    if (d) {
      await d.docker(['rm', '-f', CLIENT, INIT_BROKER], { allowFail: true, timeoutMs: 60_000 });
      await run('docker-compose', ['-f', 'compose.yaml', '-p', PROJECT, 'down', '-v', '--remove-orphans', '-t', '30'], {
        cwd: root, env: { ...d.env, FUSE_SVC_IMAGE: IMAGE, FUSE_SVC_VOLUME: VOLUME }, allowFail: true, timeoutMs: 120_000,
      }).catch((e: Error) => log(`cleanup: ${e.message}`));
      await d.stop();
    }
  } catch (e) {
    // an after hook must not throw (uvu would abort the remaining suites): report and go on
    log(`cleanup failed: ${(e as Error).message}`);
    process.exitCode = 1;
  } finally {
    await unmountBelow(tmp).catch(() => undefined);
    fs.rmSync(tmp, { recursive: true, force: true });
    log('timings:\n  ' + timings.join('\n  '));
  }
});

test.run();
