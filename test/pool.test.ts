// The launcher pool: mounts are served by launchers started ahead (already in their cgroups),
// the pool refills, and with pool_size 0 (or an empty pool) a launcher is spawned per request.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import path from 'node:path';
import { NATIVE, clientArgs, instanceProcesses, makeDir, makeImage, newCaller, processes, startBroker, tmpdir, waitFor, type Broker, type Caller, madeRuntimeDir } from './lib/harness.js';
import * as sock from '../helper/native/socket.js';
import { InstanceDir } from '../supervisor/instances.js';
import { LauncherPool } from '../supervisor/pool.js';

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

test('a pooled launcher found dead at claim time (before its exit was polled) leaves no watcher on its closed pidfd', async () => {
  const runtimeDir = madeRuntimeDir();
  const pool = new LauncherPool(path.join(NATIVE, 'fuse-svc-launcher'), new InstanceDir(runtimeDir), 1, async () => []);
  const opened: number[] = [];
  try {
    pool.fill();
    const mine = () => processes(['fuse-svc-launch']).filter((p) => {
      try {
        return readlinkSync(`/proc/${p.pid}/fd/2`).startsWith(runtimeDir + '/');
      } catch {
        return false;
      }
    });
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

test.run();
