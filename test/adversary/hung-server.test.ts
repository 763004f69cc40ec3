// Servers that hang or flood (issue 15, sections 2 and 3): test/native/fuse-hang.c in its modes,
// against a real broker. Each test asserts the request ends within a bound and that no launcher,
// server or mount is left (checked in /proc).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { chownSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { clientArgs, instanceProcesses, makeDir, newCaller, processes, startBroker, tmpdir, waitFor, ROOT, type Broker } from '../lib/harness.js';
import { writeHangDef } from '../lib/hang.js';

const READY_MS = 1500;
const STOP_MS = 2000;

async function setup(mode: string, daemonizes = false) {
  const dir = tmpdir();
  const serverDir = path.join(dir, 'server');
  mkdirSync(serverDir);
  writeHangDef(serverDir, { type: 'hang', mode, readyMs: READY_MS, stopMs: STOP_MS, daemonizes });
  const broker = await startBroker({ config: { server_dir: serverDir, fstypes: ['hang'], pool_size: 0 } });
  const caller = await newCaller().catch(async (e) => {
    await broker.stop(); // withHang's finally never sees a setup that failed half-way
    rmSync(dir, { recursive: true, force: true });
    throw e;
  });
  const src = path.join(dir, 'source');
  writeFileSync(src, 'a source descriptor for the server\n');
  chownSync(src, 1000, 1000);
  const mnt = makeDir(path.join(dir, 'mnt'));
  return { dir, broker, caller, src, mnt };
}

const left = (b: Broker) => [...instanceProcesses(b.runtimeDir), ...processes(['fuse-hang'])];

function logs(runtimeDir: string): string {
  let out = '';
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('log') && !/pool-\d+\.log$/.test(e.name)) out += readFileSync(p, 'utf8');
    }
  };
  walk(runtimeDir);
  return out;
}

type Hang = Awaited<ReturnType<typeof setup>>;

/** A broker serving test/native/fuse-hang in MODE for BODY; everything it made goes after. */
async function withHang(mode: string, body: (t: Hang) => Promise<void>, daemonizes = false): Promise<void> {
  const t = await setup(mode, daemonizes);
  try {
    await body(t);
  } finally {
    await t.broker.stop();
    await t.caller.close();
    rmSync(t.dir, { recursive: true, force: true });
  }
}

const mountHang = (t: Hang) => t.caller.run(clientArgs(t.broker.socket, 'mount', '-t', 'hang', '-o', 'ro', t.src, t.mnt), { timeout: 20000 });
const unmountHang = (t: Hang) => t.caller.run(clientArgs(t.broker.socket, 'unmount', t.mnt), { timeout: 20000 });

/** Mounts and asserts it worked: the tests below are about what comes after. */
async function mounted(t: Hang): Promise<void> {
  const m = await mountHang(t);
  assert.is(m.exitCode, 0, m.stderr);
}

/** Unmounts, asserts it worked, and waits for the instance to go. */
async function unmountedAndEnded(t: Hang, ms = 5000): Promise<void> {
  const u = await unmountHang(t);
  assert.is(u.exitCode, 0, u.stderr);
  await waitFor('the instance to end', () => left(t.broker).length === 0, ms);
}

/** An INIT-only server: the mount fails ETIMEDOUT_SERVER by the ready deadline, nothing left. */
async function initOnlyEndsByDeadline(t: Hang): Promise<void> {
  const t0 = Date.now();
  const m = await mountHang(t);
  const took = Date.now() - t0;
  assert.is.not(m.exitCode, 0);
  assert.match(m.stderr, /ETIMEDOUT_SERVER/);
  assert.ok(took < READY_MS + 6000, `took ${took} ms`);
  await waitFor('no launcher, reaper, server or checker', () => left(t.broker).length === 0, 5000);
  assert.equal(t.caller.fuseMounts(), []);
}

/** A server hung after ready: the unmount returns and the instance ends within stopTimeoutMs. */
async function hungAfterReadyUnmounts(t: Hang): Promise<void> {
  const t0 = Date.now();
  const u = await unmountHang(t);
  assert.is(u.exitCode, 0, u.stderr);
  assert.equal(t.caller.fuseMounts(), []);
  await waitFor('the instance to end', () => left(t.broker).length === 0, STOP_MS + 3000);
  assert.ok(Date.now() - t0 < STOP_MS + 3000, `took ${Date.now() - t0} ms`);
}

test('an INIT-only server: the mount ends by the ready deadline, nothing left', () => withHang('init', initOnlyEndsByDeadline));

// `daemonizes` puts the launcher's reaper at pid 1 of the sandbox and the server below it: the
// same deadlines must hold with one more process between the launcher and the hung server.
test('an INIT-only server of a daemonizing definition (reaper at pid 1): ends by the ready deadline, no reaper, server or mount left; the broker still serves', () =>
  withHang(
    'init',
    async (t) => {
      assert.match(readFileSync(path.join(t.dir, 'server', 'hang.json'), 'utf8'), /"daemonizes":true/);
      await initOnlyEndsByDeadline(t);
      const l = await t.caller.run(clientArgs(t.broker.socket, 'list'), { timeout: 10000 });
      assert.is(l.exitCode, 0, l.stderr);
    },
    true,
  ),
);

test('a daemonizing definition whose server stops answering after ready: unmount returns, the instance (reaper too) ends, nothing left', () =>
  withHang(
    'ready',
    async (t) => {
      await mounted(t);
      assert.match(logs(t.broker.runtimeDir), /under the reaper, pid \d+/, 'the server really runs under the reaper');
      await hungAfterReadyUnmounts(t);
    },
    true,
  ),
);

test('a server that stops answering after ready: unmount returns, the instance ends, nothing left', () =>
  withHang('ready', async (t) => {
    await mounted(t);
    await hungAfterReadyUnmounts(t);
  }),
);

test('a server that stops answering after ready, unmounted by the caller\'s own umount(2): the launcher ends it within stop_timeout_ms', () =>
  withHang('ready', async (t) => {
    await mounted(t);
    const t0 = Date.now();
    // --no-canonicalize: umount(8) would stat the mount point first, and wait for the server
    const u = await t.caller.run(['umount', '--no-canonicalize', t.mnt], { uid: 0, timeout: 20000 });
    assert.is(u.exitCode, 0, u.stderr);
    await waitFor('the instance to end', () => left(t.broker).length === 0, STOP_MS + 3000);
    assert.ok(Date.now() - t0 < STOP_MS + 3000, `took ${Date.now() - t0} ms`);
    assert.match(logs(t.broker.runtimeDir), /the mount was unmounted; the server has 2000 ms to exit/);
    assert.equal(t.caller.fuseMounts(), []);
  }),
);

test('SIGTERM to the launcher of a server that ignores it ends the instance within stop_timeout_ms', () =>
  withHang('ready', async (t) => {
    await mounted(t);
    const launchers = instanceProcesses(t.broker.runtimeDir).filter((p) => p.comm.startsWith('fuse-svc-launch'));
    assert.is(launchers.length, 1);
    const t0 = Date.now();
    process.kill(launchers[0].pid, 'SIGTERM');
    await waitFor('the instance to end', () => left(t.broker).length === 0, STOP_MS + 3000);
    assert.ok(Date.now() - t0 < STOP_MS + 1000, `took ${Date.now() - t0} ms`);
    assert.equal(t.caller.fuseMounts(), []);
  }),
);

test('`fuse-svcd stop` ends an instance whose server hangs', () =>
  withHang('ready', async (t) => {
    await mounted(t);
    const t0 = Date.now();
    await execa(process.execPath, [path.join(ROOT, 'dist', 'supervisor', 'main.js'), 'stop', '--runtime-dir', t.broker.runtimeDir, '--timeout', '20000'], { reject: false, timeout: 30000 });
    await waitFor('the instance to end', () => left(t.broker).length === 0, STOP_MS + 3000);
    assert.ok(Date.now() - t0 < STOP_MS + 3000, `took ${Date.now() - t0} ms`);
    assert.equal(t.caller.fuseMounts(), []);
  }),
);

test('a server opening its sentinel in a loop: a bounded number of "source handed" lines', () =>
  withHang('openloop', async (t) => {
    await mounted(t);
    await unmountedAndEnded(t);
    const log = logs(t.broker.runtimeDir);
    assert.match(log, /opened the source 3000 times/);
    const lines = log.split('\n').filter((l) => /source handed to the server/.test(l));
    assert.ok(lines.length >= 1 && lines.length <= 4, `${lines.length} lines`);
    assert.match(log, /source handed to the server \d+ more times in the last \d+ s/);
  }),
);

test('a server writing to stderr without pause: unmount still works promptly, the log stays capped', () =>
  withHang('flood', async (t) => {
    await mounted(t);
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    const u = await unmountHang(t);
    assert.is(u.exitCode, 0, u.stderr);
    assert.ok(Date.now() - t0 < 3000, `unmount took ${Date.now() - t0} ms`);
    await waitFor('the instance to end', () => left(t.broker).length === 0, 5000);
    const log = logs(t.broker.runtimeDir);
    assert.ok(log.length <= 1024 * 1024 + 32 * 1024, `log ${log.length} bytes`);
    assert.match(log, /dropping the rest/);
  }),
);

test('ADDFD failing (the server has no free fd): its open fails instead of hanging', () =>
  withHang('emfile', async (t) => {
    await mounted(t);
    await unmountedAndEnded(t);
    const log = logs(t.broker.runtimeDir);
    assert.match(log, /emfile open failed: Too many open files/);
    assert.match(log, /SECCOMP_IOCTL_NOTIF_ADDFD: Too many open files/);
  }),
);

test('a launcher frozen during the start (SIGSTOP): the broker answers by its own deadline, kills it, and nothing is left', () =>
  withHang('init', async (t) => {
    const t0 = Date.now();
    const pending = mountHang(t);
    // The launcher is root's; only a fault (or a stuck kernel wait) stops it: SIGSTOP stands in.
    const launcher = await waitFor('the launcher', () => instanceProcesses(t.broker.runtimeDir).find((p) => p.comm.startsWith('fuse-svc-launch')), 5000, 5);
    process.kill(launcher.pid, 'SIGSTOP');
    const m = await pending;
    const took = Date.now() - t0;
    assert.is.not(m.exitCode, 0);
    assert.match(m.stderr, /ESERVER_TIMEOUT|ETIMEDOUT_SERVER/, m.stderr);
    // ready timeout + the broker's 5 s margin + SIGTERM grace 5 s + SIGKILL
    assert.ok(took < READY_MS + 5000 + 5000 + 3000, `took ${took} ms`);
    await waitFor('no launcher, server or checker', () => left(t.broker).length === 0, 5000);
    await waitFor('no mount left in the caller', () => t.caller.fuseMounts().length === 0, 5000).catch(() => assert.equal(t.caller.fuseMounts(), [], 'a dead mount was left'));
    // the broker still serves the same caller
    const l = await t.caller.run(clientArgs(t.broker.socket, 'list'), { timeout: 10000 });
    assert.is(l.exitCode, 0, l.stderr);
  }),
);

test.run();
