// Load (issue 16), bounded for the suite: 4 uids x 2 concurrent loops x 5 cycles of mount -o ro
// + stat + unmount through the published static client, each command a separate process. Every
// cycle must succeed, and afterwards nothing is left: mounts, processes, broker fds, cgroups,
// uid locks, instance files. No timing assertion: the throughput ratio is bench/load.ts's.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { existingInstanceCgroups } from '../supervisor/cgroups.js';
import { fdCount, instanceProcesses, newCaller, startBroker, tmpdir, waitFor, type Broker, type Caller } from './lib/harness.js';
import { STATIC_CLIENT, prepareLoad, quantile, runLoad, type LoadSetup } from './lib/load.js';

const s = suite('load');
const UIDS = [1000, 1001, 1002, 1003];
const LOOPS = 2;
const CYCLES = 5;
let broker: Broker | undefined;
let caller: Caller | undefined;
let dir: string;
let setup: LoadSetup;

s.before(async () => {
  dir = tmpdir('fuse-svc-load-');
  setup = await prepareLoad(dir, UIDS, LOOPS);
  broker = await startBroker({ config: { rate_per_second: 100000, rate_burst: 100000 } });
  caller = await newCaller();
});

s.after(async () => {
  for (const m of caller?.fuseMounts() ?? []) await execa('nsenter', ['-t', String(caller!.pid), '-m', '--', 'umount', '-l', m], { reject: false, timeout: 10000 });
  await caller?.close();
  await broker?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function heldUidLocks(b: Broker): Promise<string[]> {
  const d = path.join(b.runtimeDir, 'uids');
  const held: string[] = [];
  for (const f of readdirSync(d)) {
    const r = await execa('flock', ['-n', path.join(d, f), 'true'], { reject: false, timeout: 5000 });
    if (r.exitCode !== 0) held.push(f);
  }
  return held;
}

s(`${UIDS.length} uids x ${LOOPS} loops x ${CYCLES} cycles: every cycle succeeds, nothing is left`, async () => {
  const b = broker!;
  const c = caller!;
  // Warm-up: one cycle per loop, so lazily opened descriptors are in the baseline.
  const warm = await runLoad('brokered', setup, c, 1, b.socket, 120000);
  assert.equal(warm.failures, [], 'warm-up cycles');
  await waitFor('warm-up instances gone', () => instanceProcesses(b.runtimeDir).length === 0, 15000);
  const fds0 = fdCount(b.proc.pid!);

  const r = await runLoad('brokered', setup, c, CYCLES, b.socket, 240000);
  console.log(`    ${r.ok}/${r.cycles} cycles in ${r.wall.toFixed(1)} s (${(r.cycles / r.wall).toFixed(1)}/s), p50 ${quantile(r.lat, 0.5).toFixed(0)} ms, p99 ${quantile(r.lat, 0.99).toFixed(0)} ms`);
  assert.equal(r.failures, [], 'every cycle succeeds');
  assert.is(r.ok, UIDS.length * LOOPS * CYCLES);

  assert.equal(c.fuseMounts(), [], 'no mount left in the caller\'s namespace');
  await waitFor('instances gone', () => instanceProcesses(b.runtimeDir).length === 0, 15000);
  await waitFor(`broker fds back to ${fds0}`, () => fdCount(b.proc.pid!) <= fds0, 10000).catch(() => assert.is(fdCount(b.proc.pid!), fds0, 'broker fd count'));
  // The broker removes a pooled instance's cgroups after its launcher is gone, asynchronously
  // (the kernel releases exiting tasks from a cgroup a moment after their pidfd says so).
  await waitFor('instance cgroups removed', () => existingInstanceCgroups(b.runtimeDir).length === 0, 10000).catch(() => undefined);
  assert.equal(existingInstanceCgroups(b.runtimeDir), [], 'no instance cgroup left');
  assert.equal(await heldUidLocks(b), [], 'no dynamic uid held');
  // An ended instance is kept (files too) until its owner's next `list` has reported it once:
  // that is the window; after each owner lists, no instance file may remain.
  for (const u of UIDS) {
    const l = await c.run([STATIC_CLIENT, '--socket', b.socket, 'list'], { uid: u, timeout: 10000 });
    assert.is(l.exitCode, 0, `list as ${u}: ${l.stderr}`);
  }
  const inst = path.join(b.runtimeDir, 'instances');
  // pool-N.log belongs to the broker's idle pooled launcher (its stock), not to an instance;
  // next-id is the id allocator's reservation (instances.ts), kept across restarts.
  const files = () => readdirSync(inst).filter((f) => !/^pool-\d+\.log$/.test(f) && f !== 'next-id');
  await waitFor('instance files removed', () => files().length === 0, 10000).catch(() => assert.equal(files(), [], 'instance files left'));
  assert.ok(readdirSync(inst).filter((f) => f !== 'next-id').length <= 1, 'at most the one idle pooled launcher\'s log');
  const hostFuse = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(dir));
  assert.equal(hostFuse, [], 'no mount of ours in the host namespace');
  assert.not.match(b.logs(), /error:|EINTERNAL/, 'no internal error in the broker log');
});

s.run();
