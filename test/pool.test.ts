// The launcher pool: mounts are served by launchers started ahead (already in their cgroups),
// the pool refills, and with pool_size 0 (or an empty pool) a launcher is spawned per request.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import path from 'node:path';
import { NATIVE, clientArgs, instanceProcesses, makeDir, makeImage, newCaller, processes, startBroker, tmpdir, waitFor, type Broker, type Caller, madeRuntimeDir } from './lib/harness.js';
import * as sock from '../helper/native/socket.js';
import { InstanceDir } from '../supervisor/instances.js';
import { LauncherPool, PoolIds } from '../supervisor/pool.js';
import { cgroupName, discoverHierarchies, existingInstanceCgroups, instanceCgroups, parentName, removeCgroups, sweepRuntimeDir } from '../supervisor/cgroups.js';
import { DEFAULTS, type Config } from '../supervisor/config.js';

async function cycles(broker: Broker, caller: Caller, dir: string, n: number): Promise<void> {
  const img = await makeImage(dir, `p${n}.img`, 16);
  const mnt = makeDir(path.join(dir, `m${n}`));
  for (let i = 0; i < n; i++) {
    const m = await caller.run(clientArgs(broker.socket, 'mount', '-o', 'ro', img, mnt));
    assert.is(m.exitCode, 0, m.stderr);
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
  }
}

/** Idle pooled launchers of a broker: launchers whose log is a pool-N.log of its runtime dir. */
function pooled(broker: Broker): number {
  return processes(['fuse-svc-launch']).filter((p) => {
    try {
      const log = readlinkSync(`/proc/${p.pid}/fd/2`);
      return log.startsWith(broker.runtimeDir + '/') && /\/pool-\d+\.log$/.test(log);
    } catch {
      return false;
    }
  }).length;
}

/** A broker with `config` and a caller, torn down whatever the test does. */
async function withBroker(config: Record<string, unknown>, body: (b: Broker, c: Caller, dir: string) => Promise<void>): Promise<void> {
  const dir = tmpdir();
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  try {
    broker = await startBroker({ config });
    caller = await newCaller();
    await body(broker, caller, dir);
  } finally {
    await broker?.stop();
    await caller?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('mounts are served by pooled launchers and the pool refills; an exiting broker ends them', () =>
  withBroker({ pool_size: 2 }, async (broker, caller, dir) => {
    await waitFor('two pooled launchers', () => pooled(broker) === 2, 10000);
    await cycles(broker, caller, dir, 3);
    assert.is(broker.logs().match(/pooled launcher/g)?.length ?? 0, 3, 'every mount took a pooled launcher');
    await waitFor('the pool refilled', () => pooled(broker) === 2, 10000);
    assert.equal(instanceProcesses(broker.runtimeDir), []);
    await broker.exit();
    await waitFor('idle launchers gone with the broker', () => pooled(broker) === 0, 5000);
  }));

test('pool_size 0: a launcher is spawned for each request', () =>
  withBroker({ pool_size: 0 }, async (broker, caller, dir) => {
    await cycles(broker, caller, dir, 2);
    assert.is(broker.logs().match(/: spawn /g)?.length ?? 0, 2);
    assert.is(pooled(broker), 0);
  }));

/** Launchers whose log is in runtimeDir (a pool's own, made by the test without a broker). */
function launchersOf(runtimeDir: string): { pid: number; comm: string }[] {
  return processes(['fuse-svc-launch']).filter((p) => {
    try {
      return readlinkSync(`/proc/${p.pid}/fd/2`).startsWith(runtimeDir + '/');
    } catch {
      return false;
    }
  });
}

test('a pooled launcher found dead at claim time (before its exit was polled) leaves no watcher on its closed pidfd', async () => {
  const runtimeDir = madeRuntimeDir();
  const pool = new LauncherPool(path.join(NATIVE, 'fuse-svc-launcher'), new InstanceDir(runtimeDir), 1, async () => []);
  const opened: number[] = [];
  try {
    pool.fill();
    const mine = () => launchersOf(runtimeDir);
    await waitFor('the pooled launcher', () => mine().length === 1, 10000);
    // Joined: it said so on its socket (no cgroups here, so at once).
    await new Promise((r) => setTimeout(r, 300));
    const pid = mine()[0].pid;
    const pidfdNumbers = new Set(readdirFds());
    process.kill(pid, 'SIGKILL');
    // Without yielding to the event loop: the pool has not seen the exit when claim() runs.
    const end = Date.now() + 5000;
    while (Date.now() < end && !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))) {
      /* spin */
    }
    assert.is(pool.claim(() => [], [], path.join(runtimeDir, 'instances', '1.log'), 1000, 'x'), undefined, 'a dead launcher is not handed a request');
    // The numbers it closed are free again; a poll on each must work (EEXIST before the fix).
    for (;;) {
      const [r, w] = sock.pipe();
      opened.push(r, w);
      if (!pidfdNumbers.has(r) && !pidfdNumbers.has(w)) break;
      for (const fd of [r, w]) if (pidfdNumbers.has(fd)) sock.poll(fd, 'readable', () => {}).stop();
      if (opened.length > 16) break;
    }
  } finally {
    await pool.close();
    for (const fd of opened) closeSync(fd);
    rmSync(runtimeDir, { recursive: true, force: true });
  }
});

/** This process's open descriptor numbers. */
function readdirFds(): number[] {
  return readdirSync('/proc/self/fd').map(Number);
}

test('a claim that fails after the pooled launcher\'s cgroups took the instance\'s name gives the name back: the spawn for that id makes its own cgroups (no EEXIST)', async () => {
  // What a fault run found once ("ESANDBOX ... mkdir(.../HASH-508): EEXIST"): a pooled
  // launcher killed between claim's liveness check and the hand-over had its cgroups renamed
  // to instance 508's name; the broker then spawned a launcher for 508, whose mkdir of that
  // name met the dead launcher's cgroup, removed only once its exit was polled.
  const limits = { pidsMax: 64 };
  assert.ok(discoverHierarchies().some((h) => h.writable && h.controllers.includes('pids')), 'a writable pids hierarchy (this test needs one)');
  const runtimeDir = madeRuntimeDir();
  const cfg: Config = { ...DEFAULTS, runtimeDir };
  const id = 508;
  const made: string[] = [];
  let left: string[] = [];
  const pool: LauncherPool = new LauncherPool(path.join(NATIVE, 'fuse-svc-launcher'), new InstanceDir(runtimeDir), 1, (poolId) => instanceCgroups(cfg, poolId, limits, () => [id, ...pool.ids()]), new PoolIds());
  try {
    pool.fill();
    const mine = () => launchersOf(runtimeDir);
    // Joined: its /proc/PID/cgroup names a pool cgroup of this runtime dir.
    const poolCg = new RegExp(`/${parentName(runtimeDir)}/[0-9a-f]{8}-1\\d{9,}`);
    await waitFor('the pooled launcher in its cgroups', () => mine().length === 1 && poolCg.test(readFileSync(`/proc/${mine()[0].pid}/cgroup`, 'utf8')), 10000);
    await new Promise((r) => setTimeout(r, 300)); // and said so on its socket
    // A descriptor number that is not open: the hand-over (sendmsg) fails EBADF after the
    // rename, as it fails when the launcher died after the liveness check.
    const claimed = pool.claim(() => [], [987654], path.join(runtimeDir, 'instances', `${id}.log`), 1000, cgroupName(runtimeDir, id));
    assert.is(claimed, undefined, 'the failed hand-over is not a claim');
    // Synchronously, before the killed launcher's exit could be polled: the instance's name is free.
    const cg = await instanceCgroups(cfg, id, limits, () => [id, ...pool.ids()]);
    made.push(...cg);
    assert.ok(cg.length > 0 && cg.every((d) => path.basename(d) === cgroupName(runtimeDir, id)), `the spawn's own cgroups: ${cg.join(' ')}`);
  } finally {
    await pool.close();
    removeCgroups(made);
    await waitFor('the killed launcher\'s cgroups removed', () => existingInstanceCgroups(runtimeDir, true).length === 0, 5000).catch(() => {});
    left = existingInstanceCgroups(runtimeDir, true);
    sweepRuntimeDir(runtimeDir);
    rmSync(runtimeDir, { recursive: true, force: true });
  }
  assert.equal(left, [], 'no cgroup left'); // after the block: a failure above is not hidden
});

test.run();
