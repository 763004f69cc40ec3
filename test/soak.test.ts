// Soak (issue 6, part 4): 1,000 requests from 20 concurrent clients mixing good mounts, writes,
// unmounts and every bad input of test/hostile.test.ts. Afterwards the broker's fd count, the
// mount table, the process list, the dynamic uids and the cgroups are back to where they began.
// The figures go to docs/performance.md ("Soak").
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { DEFAULTS } from '../supervisor/config.js';
import { existingInstanceCgroups } from '../supervisor/cgroups.js';
import { ROOT, fdCount, instanceProcesses, makeDir, makeImage, startBroker, tmpdir, waitFor, type Broker } from './lib/harness.js';

const s = suite('soak');
const CLIENTS = 20;
const TOTAL = Number(process.env.FUSE_SVC_SOAK_REQUESTS ?? 1000);
let broker: Broker;
let dir: string;

s.before(async () => {
  dir = tmpdir('fuse-svc-soak-');
  broker = await startBroker({ config: { rate_per_second: 100000, rate_burst: 100000 } });
  await Promise.all(Array.from({ length: CLIENTS }, (_, i) => makeImage(dir, `img${i}.img`, 8, 'ext4', 0)));
  for (let i = 0; i < CLIENTS; i++) makeDir(path.join(dir, `m${i}`), 0);
});

s.after(async () => {
  await broker?.stop();
  rmSync(dir, { recursive: true, force: true });
});

type Result = { requests: number; elapsed: number; rps: number; counts: Record<string, number>; p50: number; p99: number; max: number; wrong: string[]; left: string[] };

async function work(total: number): Promise<Result> {
  const r = await execa('unshare', ['-m', '--propagation', 'private', '--', process.execPath, path.join(ROOT, 'dist', 'test', 'lib', 'soak-worker.js'), broker.socket, dir, String(total), String(CLIENTS)], { reject: false, timeout: 280000 });
  assert.is(r.exitCode, 0, `worker: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Result;
}

/** Processes running with a dynamic uid (other brokers on this machine have some too). */
function sandboxUidProcesses(): { pid: number; uid: number }[] {
  const [lo, hi] = DEFAULTS.uidRange;
  const out: { pid: number; uid: number }[] = [];
  for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1]);
      if (uid >= lo && uid <= hi) out.push({ pid: Number(p), uid });
    } catch {
      /* gone */
    }
  }
  return out;
}

async function heldUidLocks(): Promise<string[]> {
  const dirU = path.join(broker.runtimeDir, 'uids');
  const held: string[] = [];
  for (const f of readdirSync(dirU)) {
    const r = await execa('flock', ['-n', path.join(dirU, f), 'true'], { reject: false, timeout: 5000 });
    if (r.exitCode !== 0) held.push(f);
  }
  return held;
}

const hostFuseMounts = () => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => / - fuse(\.|blk| )/.test(l));

s(`${TOTAL} requests from ${CLIENTS} concurrent clients; nothing leaks`, async () => {
  // Warm-up (lazily opened fds, caches), then the baseline.
  const warm = await work(CLIENTS * 2);
  assert.equal(warm.wrong, []);
  await waitFor('warm-up instances gone', () => instanceProcesses(broker.runtimeDir).length === 0, 10000);
  const before = { fds: fdCount(broker.proc.pid!), host: hostFuseMounts().length, procs: new Set(sandboxUidProcesses().map((p) => p.pid)) };

  const r = await work(TOTAL);
  console.log(`    ${r.requests} requests (+${r.counts.mount + r.counts.unmount + r.counts.list + r.counts.bad - r.requests} closing unmounts) in ${r.elapsed.toFixed(1)} s = ${r.rps.toFixed(0)} req/s; ${JSON.stringify(r.counts)}; mount latency p50 ${r.p50.toFixed(1)} ms, p99 ${r.p99.toFixed(1)} ms, max ${r.max.toFixed(1)} ms`);
  assert.equal(r.wrong, [], 'every answer as expected');
  assert.is(r.requests, TOTAL);
  assert.ok(r.counts.mount >= TOTAL / 5, 'a good share of mounts');
  assert.ok(r.counts.bad >= 31, 'every bad input at least once');
  assert.equal(r.left, [], 'no mount left in the clients\' namespace');

  await waitFor('instances gone', () => instanceProcesses(broker.runtimeDir).length === 0, 15000);
  await waitFor(`broker fds back to ${before.fds}`, () => fdCount(broker.proc.pid!) <= before.fds, 10000).catch(() => assert.is(fdCount(broker.proc.pid!), before.fds, 'broker fd count'));
  assert.is(hostFuseMounts().length, before.host, 'host mount table unchanged');
  // the uids this broker used are the lock files in its runtime dir
  const ours = new Set(readdirSync(path.join(broker.runtimeDir, 'uids')).map((f) => Number(f.split('.')[0])));
  assert.ok(ours.size >= CLIENTS, `${ours.size} dynamic uids were used`);
  // Other brokers on this machine (other tests) use the same range: a process with one of our
  // uids is theirs while a launcher (or a sandboxed parent) supervises it; ours would be orphans.
  const all = sandboxUidProcesses();
  const dyn = new Set(all.map((p) => p.pid));
  const supervised = (pid: number) => {
    try {
      const ppid = Number(/^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
      return dyn.has(ppid) || readFileSync(`/proc/${ppid}/comm`, 'utf8').startsWith('fuse-svc-launch');
    } catch {
      return true; // gone meanwhile
    }
  };
  assert.equal(all.filter((p) => ours.has(p.uid) && !before.procs.has(p.pid) && !supervised(p.pid)), [], 'no orphan process left with one of our dynamic uids');
  assert.equal(await heldUidLocks(), [], 'no dynamic uid held');
  assert.equal(existingInstanceCgroups(broker.runtimeDir), [], 'no instance cgroup left');
  const l = await execa(path.join(ROOT, 'build', 'Release', 'fuse-svc-client'), ['--socket', broker.socket, '--json', 'list'], { reject: false, timeout: 10000 });
  const live = (JSON.parse(l.stdout).mounts as { state: string }[]).filter((m) => m.state !== 'exited');
  assert.equal(live, [], 'the broker holds no live instance');
  assert.not.match(broker.logs(), /error:|EINTERNAL/, 'no internal error in the broker log');
});

s.run();
