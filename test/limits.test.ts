// Resource bounds (issue 6, part 3): a program started through the same launcher and sandbox as
// a server forks without end / allocates without end; the rlimits and the instance cgroup stop
// it, the launcher reports why, and neither the machine nor a running broker notice.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { DEFAULTS, type Config } from '../supervisor/config.js';
import { InstanceDir, signalLauncher, spawnLauncher, waitPidfd } from '../supervisor/instances.js';
import { commandSpec } from '../supervisor/launch-spec.js';
import { loadServers, type ServerDef } from '../supervisor/servers.js';
import { discoverHierarchies, existingInstanceCgroups, instanceCgroups, sweepRuntimeDir } from '../supervisor/cgroups.js';
import * as sock from '../helper/native/socket.js';
import { NATIVE, ROOT, clientArgs, newCaller, processes, startBroker, tmpdir, waitFor, type Broker, type Caller } from './lib/harness.js';

const s = suite('resource bounds');
let runtimeDir: string;
let broker: Broker;
let caller: Caller;
let base: ServerDef;
const pidfds: number[] = [];
const haveCgroups = discoverHierarchies().some((h) => h.writable && h.controllers.includes('memory'));

s.before(async () => {
  runtimeDir = tmpdir('fuse-svc-limits-');
  base = loadServers(path.join(ROOT, 'server')).get('ext4')!;
  broker = await startBroker();
  caller = await newCaller();
});

s.after(async () => {
  for (const fd of pidfds) {
    try {
      sock.pidfdSendSignal(fd, 9);
    } catch {
      /* gone */
    }
  }
  await broker?.stop();
  await caller?.close();
  sweepRuntimeDir(runtimeDir); // what a full stop does: the cgroup parents of this runtime dir
  rmSync(runtimeDir, { recursive: true, force: true });
});

type Run = { id: number; pidfd: number; dir: InstanceDir; cgroups: string[]; log: () => string; hog: () => { hog: string; count: number; errno: string }[] };

let nextId = 1;
async function startHog(mode: 'fork' | 'alloc', rlimits: ServerDef['rlimits'], cgroup: ServerDef['cgroup'] | undefined, uid: number): Promise<Run> {
  const id = nextId++;
  const dir = new InstanceDir(runtimeDir);
  // sandbox: undefined, so these rlimits are the ones used (not server/fuse2fs.sandbox's).
  const server: ServerDef = { ...base, sandbox: undefined, rlimits: { ...base.rlimits, ...rlimits }, cgroup: cgroup ?? {} };
  const cfg = { ...DEFAULTS, runtimeDir } as Config;
  const cgroups = cgroup ? await instanceCgroups(cfg, id, cgroup, []) : [];
  if (cgroup) assert.ok(cgroups.length > 0, 'instance cgroups were created');
  const spec = commandSpec({ id, runtimeDir, uid, server, policyDir: DEFAULTS.policyDir, standin: path.join(NATIVE, 'fusermount-standin'), exec: '/sandbox-probe-hog', argv: ['sandbox-probe-hog', mode], binds: [{ src: path.join(NATIVE, 'sandbox-probe-hog'), dst: '/sandbox-probe-hog' }], cgroup: cgroups });
  const { pid, ready } = spawnLauncher({ launcher: path.join(NATIVE, 'fuse-svc-launcher'), spec, fds: [], logFile: dir.file(id, 'log'), readyTimeoutMs: 10000 });
  const pidfd = sock.pidfdOpen(pid);
  pidfds.push(pidfd);
  const r = await ready;
  assert.ok(r.ok, `the hog started: ${JSON.stringify(r)}`);
  const log = () => (existsSync(dir.file(id, 'log')) ? readFileSync(dir.file(id, 'log'), 'utf8') : '');
  const hog = () => log().split('\n').filter((l) => l.startsWith('{"hog"')).map((l) => JSON.parse(l));
  return { id, pidfd, dir, cgroups, log, hog };
}

/** The broker answers `list` quickly while the hog runs (measured). */
async function brokerResponsive(what: string): Promise<number> {
  const t0 = Date.now();
  const l = await caller.run(clientArgs(broker.socket, 'list'), { timeout: 10000 });
  const ms = Date.now() - t0;
  assert.is(l.exitCode, 0, `${what}: the broker answers: ${l.stderr}`);
  assert.ok(ms < 5000, `${what}: list took ${ms} ms`);
  return ms;
}

async function stopAndCheck(r: Run, uid: number): Promise<string> {
  signalLauncher(r.pidfd);
  assert.ok(await waitPidfd(r.pidfd, 15000), 'the launcher ended after the stop');
  const st = r.dir.readState(r.id)!;
  assert.is(st.state, 'exited');
  await waitFor('no process of the sandbox uid', () => processes(['sandbox-probe-h']).length === 0, 5000);
  for (const d of r.cgroups) assert.not.ok(existsSync(d), `cgroup ${d} removed by the launcher`);
  void uid;
  return st.reason ?? '';
}

s('fork without end, stopped by RLIMIT_NPROC (no cgroup)', async () => {
  const r = await startHog('fork', { NPROC: [24, 24] }, undefined, 65011);
  await waitFor('the hog to be refused', () => r.hog().find((h) => h.hog === 'fork'), 20000);
  const h = r.hog().find((x) => x.hog === 'fork')!;
  console.log(`    RLIMIT_NPROC 24: ${h.count} forks, then ${h.errno}; broker list in ${await brokerResponsive('fork/nproc')} ms`);
  assert.ok(h.count <= 24, `at most 24 processes (${h.count})`);
  assert.is(h.errno, 'EAGAIN');
  await stopAndCheck(r, 65011);
});

s('fork without end, stopped by the cgroup pids limit; the reason says so', async () => {
  if (!haveCgroups) return console.log('    (no writable cgroup hierarchy: skipped)');
  const r = await startHog('fork', { NPROC: [4096, 4096] }, { pidsMax: 20, memoryMax: 256 << 20 }, 65012);
  await waitFor('the hog to be refused', () => r.hog().find((h) => h.hog === 'fork'), 20000);
  const h = r.hog().find((x) => x.hog === 'fork')!;
  console.log(`    pids.max 20: ${h.count} forks, then ${h.errno}; broker list in ${await brokerResponsive('fork/pids')} ms`);
  assert.ok(h.count < 20, `fewer than 20 processes (${h.count})`);
  assert.is(h.errno, 'EAGAIN');
  const reason = await stopAndCheck(r, 65012);
  assert.match(reason, /pids limit hit \(\d+ forks? refused\)/, reason);
});

s('allocate without end, stopped by RLIMIT_AS (no cgroup)', async () => {
  const r = await startHog('alloc', { AS: [128 << 20, 128 << 20] }, undefined, 65013);
  await waitFor('the hog to be refused', () => r.hog().find((h) => h.hog === 'alloc'), 20000);
  const h = r.hog().find((x) => x.hog === 'alloc')!;
  console.log(`    RLIMIT_AS 128 MiB: ${h.count} MiB, then ${h.errno}; broker list in ${await brokerResponsive('alloc/as')} ms`);
  assert.ok(h.count < 128, `${h.count} MiB`);
  assert.is(h.errno, 'ENOMEM');
  await stopAndCheck(r, 65013);
});

s('allocate without end, killed by the cgroup memory limit; reported as an OOM kill', async () => {
  if (!haveCgroups) return console.log('    (no writable cgroup hierarchy: skipped)');
  const r = await startHog('alloc', { AS: [4294967296, 4294967296] }, { memoryMax: 64 << 20, pidsMax: 64 }, 65014);
  assert.ok(await waitPidfd(r.pidfd, 30000), 'the instance ended by itself (OOM kill)');
  const st = r.dir.readState(r.id)!;
  const progress = r.hog().filter((x) => x.hog === 'alloc-progress').pop();
  console.log(`    memory limit 64 MiB: last progress ${progress?.count ?? 0} MiB; reason "${st.reason}"; broker list in ${await brokerResponsive('alloc/memory')} ms`);
  assert.is(st.state, 'exited');
  assert.is(st.exit_signal, 9);
  assert.match(st.reason ?? '', /killed by signal 9; memory limit hit \(\d+ OOM kills?\)/);
  assert.ok((progress?.count ?? 0) <= 64, 'never more than the limit');
  for (const d of r.cgroups) assert.not.ok(existsSync(d), `cgroup ${d} removed`);
});

s('every instance cgroup of this runtime dir is gone', () => {
  assert.equal(existingInstanceCgroups(runtimeDir), []);
});

s.run();
