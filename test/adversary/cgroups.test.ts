// Instance cgroups (issue 10 "Two or more server definitions", issue 16 section 1): two server
// definitions with pools on, each pooled launcher and server in its own cgroups with its
// definition's limits (read from the host through /proc/PID/cgroup of the server); pool ids not
// shared between definitions nor reused by a restarted broker; nothing left after. And fail
// closed: cgroups that cannot be made refuse the mount (ESANDBOX), no server runs, the broker
// serves on; a name already taken is refused without removing the other's cgroup.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { cgroupName, CgroupError, discoverHierarchies, existingInstanceCgroups, instanceCgroups, parentName } from '../../supervisor/cgroups.js';
import { DEFAULTS, type Config } from '../../supervisor/config.js';
import { PoolIds, POOL_ID_BASE } from '../../supervisor/pool.js';
import { fdCount, instanceProcesses, makeDir, makeImage, newCaller, processes, ROOT, startBroker, tmpdir, waitFor, type Broker, type Caller, madeRuntimeDir } from '../lib/harness.js';
import { cgroupDirs, limitsOf } from '../lib/cgroups.js';
import { STATIC_CLIENT } from '../lib/load.js';

/** The published static client (the one clients use, in containers too). */
const clientArgs = (socket: string, ...args: string[]) => [STATIC_CLIENT, '--socket', socket, ...args];

const MiB = 1 << 20;
const DEFS = {
  ext4: { name: 'fuse2fs', pidsMax: 64, memoryMax: 512 * MiB },
  ext4copy: { name: 'fuse2fs-copy', pidsMax: 48, memoryMax: 384 * MiB },
} as const;
type Fstype = keyof typeof DEFS;

const writable = discoverHierarchies().filter((h) => h.writable);
const limited = (c: string) => writable.some((h) => h.kind === 'v1' && h.controllers.includes(c));
const haveLimits = limited('pids') && limited('memory');

/** server/ with fuse2fs and a copy of it under another name, fstype and limits. */
function serverDir(dir: string): string {
  const d = path.join(dir, 'server');
  mkdirSync(d);
  const def = JSON.parse(readFileSync(path.join(ROOT, 'server', 'fuse2fs.json'), 'utf8'));
  copyFileSync(path.join(ROOT, 'server', 'fuse2fs.sandbox'), path.join(d, 'fuse2fs.sandbox'));
  for (const [fstype, l] of Object.entries(DEFS)) {
    const out = { ...def, name: l.name, fstypes: [fstype], cgroup: { ...def.cgroup, pidsMax: l.pidsMax, memoryMax: l.memoryMax } };
    writeFileSync(path.join(d, `${l.name}.json`), JSON.stringify(out, null, 2));
  }
  return d;
}

/** Idle pooled launchers of a broker (their log is a pool-N.log of its runtime dir), with that log's N. */
function pooled(b: Broker): { pid: number; poolId: number }[] {
  const out: { pid: number; poolId: number }[] = [];
  for (const p of processes(['fuse-svc-launch'])) {
    try {
      const m = /\/pool-(\d+)\.log$/.exec(readlinkSync(`/proc/${p.pid}/fd/2`));
      if (m && readlinkSync(`/proc/${p.pid}/fd/2`).startsWith(b.runtimeDir + '/')) out.push({ pid: p.pid, poolId: Number(m[1]) });
    } catch {
      /* gone */
    }
  }
  return out;
}

/** The runtime dir's cgroup parents (one per hierarchy that limits something). */
function parents(runtimeDir: string): string[] {
  return discoverHierarchies()
    .map((h) => path.join(h.base, parentName(runtimeDir)))
    .filter((p) => existsSync(p));
}

function ppid(pid: number): number {
  return Number(/^PPid:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
}

type T = { dir: string; broker?: Broker; caller?: Caller; cleanup: (() => Promise<void> | void)[] };
async function withSetup(body: (t: T) => Promise<void>): Promise<void> {
  const t: T = { dir: tmpdir(), cleanup: [] };
  try {
    await body(t);
  } finally {
    if (t.caller) for (const m of t.caller.fuseMounts()) await execa('nsenter', ['-t', String(t.caller.pid), '-m', '--', 'umount', '-l', m], { reject: false, timeout: 10000 });
    await t.broker?.stop();
    await t.caller?.close();
    for (const f of t.cleanup.reverse()) await f();
    rmSync(t.dir, { recursive: true, force: true });
  }
}

test('two definitions, pools on, concurrent mounts of both: every launcher and server in its own cgroups with its limits; pool ids unique across definitions and restarts; nothing left', () =>
  withSetup(async (t) => {
    if (!haveLimits) return console.log('    (no writable pids + memory cgroup hierarchy: skipped)');
    const sd = serverDir(t.dir);
    const runtimeDir = madeRuntimeDir();
    const config = { server_dir: sd, fstypes: Object.keys(DEFS), pool_size: 2 };
    t.broker = await startBroker({ runtimeDir, config });
    t.caller = await newCaller();
    const b = t.broker;
    const c = t.caller;
    await waitFor('two pooled launchers per definition', () => pooled(b).length === 4, 15000);

    // Idle pooled launchers: distinct ids (so distinct cgroups and logs), each in its cgroups.
    const idle = pooled(b);
    assert.is(new Set(idle.map((p) => p.poolId)).size, 4, `pool ids shared: ${idle.map((p) => p.poolId)}`);
    const idleDirs = idle.map((p) => limitsOf(p.pid));
    for (const l of idleDirs) {
      assert.ok(l.pidsDir?.includes(`/${parentName(runtimeDir)}/`), `pooled launcher in an instance pids cgroup: ${l.pidsDir}`);
      assert.ok(l.memoryDir?.includes(`/${parentName(runtimeDir)}/`), `pooled launcher in an instance memory cgroup: ${l.memoryDir}`);
    }
    assert.is(new Set(idleDirs.map((l) => l.pidsDir)).size, 4, 'each pooled launcher has its own cgroup');
    const fds0 = fdCount(b.proc.pid!);

    // Three concurrent mounts of each definition, all held at once.
    const jobs: { fstype: Fstype; img: string; mnt: string }[] = [];
    for (const fstype of Object.keys(DEFS) as Fstype[]) {
      for (let i = 0; i < 3; i++) jobs.push({ fstype, img: await makeImage(t.dir, `${fstype}-${i}.img`, 16), mnt: makeDir(path.join(t.dir, `${fstype}-${i}`)) });
    }
    const replies = await Promise.all(jobs.map((j) => c.run(clientArgs(b.socket, '--json', 'mount', '-t', j.fstype, '-o', 'ro', j.img, j.mnt), { timeout: 60000 })));
    const servers: { fstype: Fstype; pid: number }[] = [];
    replies.forEach((r, i) => {
      assert.is(r.exitCode, 0, `mount ${jobs[i].fstype} ${i}: ${r.stderr}`);
      servers.push({ fstype: jobs[i].fstype, pid: JSON.parse(r.stdout).server_pid as number });
    });
    const seen = new Set<string>();
    const brokerPids = cgroupDirs(b.proc.pid!).get('pids');
    const pooledServed: Record<Fstype, number> = { ext4: 0, ext4copy: 0 };
    for (const s of servers) {
      const l = limitsOf(s.pid);
      const want = DEFS[s.fstype];
      assert.ok(l.pidsDir && l.memoryDir, `server ${s.pid} (${s.fstype}) in pids and memory cgroups`);
      for (const d of [l.pidsDir!, l.memoryDir!]) {
        assert.is(path.basename(path.dirname(d)), parentName(runtimeDir), `server ${s.pid}: ${d} is an instance cgroup of this runtime dir`);
        assert.not.ok(seen.has(d), `server ${s.pid}: cgroup ${d} shared with another instance`);
        seen.add(d);
      }
      assert.is(l.pidsMax, want.pidsMax, `server ${s.pid} (${s.fstype}): pids.max`);
      assert.is(l.memoryMax, want.memoryMax, `server ${s.pid} (${s.fstype}): memory limit`);
      // A pooled launcher joined them first and supervises from them; one spawned for the
      // request (the pool drained) put only its server in and stays in the broker's cgroup.
      const launcher = cgroupDirs(ppid(s.pid)).get('pids');
      if (launcher === l.pidsDir) pooledServed[s.fstype]++;
      else assert.is(launcher, brokerPids, `launcher of ${s.pid}: in its server's cgroup or the broker's, not ${launcher}`);
    }
    for (const f of Object.keys(DEFS) as Fstype[]) assert.ok(pooledServed[f] >= 1, `${f}: pooled launchers served (in their server's cgroups): ${pooledServed[f]}`);
    console.log(`    ${servers.length} servers (${pooledServed.ext4}+${pooledServed.ext4copy} by pooled launchers), ${seen.size} distinct instance cgroups; limits ${Object.values(DEFS).map((d) => `${d.name} pids ${d.pidsMax} mem ${d.memoryMax / MiB} MiB`).join(', ')}`);
    assert.not.match(b.logs(), /not used|EEXIST/, 'no cgroup skipped or clashed');

    for (const j of jobs) {
      const u = await c.run(clientArgs(b.socket, 'unmount', j.mnt), { timeout: 30000 });
      assert.is(u.exitCode, 0, `unmount ${j.mnt}: ${u.stderr}`);
    }
    await waitFor('instances gone', () => instanceProcesses(runtimeDir).length === 0, 15000);
    await waitFor('instance cgroups removed', () => existingInstanceCgroups(runtimeDir).length === 0, 10000).catch(() => undefined);
    assert.equal(existingInstanceCgroups(runtimeDir), [], 'no instance cgroup left');
    await waitFor('the pools refilled', () => pooled(b).length === 4, 15000);
    await waitFor(`broker fds back to ${fds0}`, () => fdCount(b.proc.pid!) <= fds0, 10000).catch(() => assert.is(fdCount(b.proc.pid!), fds0, 'broker fd count'));

    // A restarted broker (SIGTERM: the live instance stays; pooled launchers end) takes new ids.
    const live = await c.run(clientArgs(b.socket, 'mount', '-t', 'ext4copy', '-o', 'ro', jobs[3].img, jobs[3].mnt));
    assert.is(live.exitCode, 0, live.stderr);
    const before = new Set(pooled(b).map((p) => p.poolId));
    const usedMax = Math.max(...before, ...idle.map((p) => p.poolId));
    await b.exit();
    await waitFor('idle launchers gone with the broker', () => pooled(b).length === 0, 5000);
    assert.is(parents(runtimeDir).length, 2, 'the parents stay while an instance has its cgroups there');
    t.broker = await startBroker({ runtimeDir, config });
    const b2 = t.broker;
    await waitFor('the new pools', () => pooled(b2).length === 4, 15000);
    const after = pooled(b2).map((p) => p.poolId);
    assert.ok(after.every((id) => id > usedMax), `restarted broker's pool ids ${after} above the previous ${usedMax}`);
    const u = await c.run(clientArgs(b2.socket, 'unmount', jobs[3].mnt));
    assert.is(u.exitCode, 0, `the adopted instance unmounts: ${u.stderr}`);
    const m = await c.run(clientArgs(b2.socket, 'mount', '-t', 'ext4copy', '-o', 'ro', jobs[4].img, jobs[4].mnt));
    assert.is(m.exitCode, 0, m.stderr);
    const u2 = await c.run(clientArgs(b2.socket, 'unmount', jobs[4].mnt));
    assert.is(u2.exitCode, 0, u2.stderr);

    await b2.stop();
    t.broker = undefined;
    assert.equal(pooled(b2), [], 'no pooled launcher after the full stop');
    assert.equal(instanceProcesses(runtimeDir), [], 'no launcher or server after the full stop');
    assert.equal(existingInstanceCgroups(runtimeDir, true), [], 'no instance or pool cgroup after the full stop');
    assert.equal(parents(runtimeDir), [], 'the full stop removed the runtime dir\'s parents');
    rmSync(runtimeDir, { recursive: true, force: true });
  }));

test('the cgroup parent outlives its last instance (no launcher removes it while the broker may create in it); the exiting broker removes it', () =>
  withSetup(async (t) => {
    if (!haveLimits) return console.log('    (no writable pids + memory cgroup hierarchy: skipped)');
    const runtimeDir = madeRuntimeDir();
    t.cleanup.push(() => rmSync(runtimeDir, { recursive: true, force: true }));
    // No pool: the instance's launcher is the last user of the parent when it ends.
    t.broker = await startBroker({ runtimeDir, config: { pool_size: 0 } });
    t.caller = await newCaller();
    const b = t.broker;
    const img = await makeImage(t.dir, 'a.img', 16);
    const mnt = makeDir(path.join(t.dir, 'mnt'));
    for (let i = 0; i < 2; i++) {
      const m = await t.caller.run(clientArgs(b.socket, 'mount', '-o', 'ro', img, mnt));
      assert.is(m.exitCode, 0, m.stderr);
      const u = await t.caller.run(clientArgs(b.socket, 'unmount', mnt));
      assert.is(u.exitCode, 0, u.stderr);
      await waitFor('the instance gone', () => instanceProcesses(runtimeDir).length === 0, 10000);
      await waitFor('its cgroups removed', () => existingInstanceCgroups(runtimeDir).length === 0, 5000);
      assert.is(parents(runtimeDir).length, 2, `the pids and memory parents stay after instance ${i + 1} ended: ${parents(runtimeDir)}`);
    }
    // A broker exiting with no instance left removes them (it was the only one creating there).
    await b.exit();
    assert.equal(parents(runtimeDir), [], 'the exiting broker removed them');
  }));

test('cgroups that cannot be made (a tmpfs over the pids parent): the mount is refused with ESANDBOX, no server runs, the broker serves on', () =>
  withSetup(async (t) => {
    if (!haveLimits) return console.log('    (no writable pids + memory cgroup hierarchy: skipped)');
    const runtimeDir = madeRuntimeDir();
    t.cleanup.push(() => rmSync(runtimeDir, { recursive: true, force: true }));
    const pidsH = writable.find((h) => h.kind === 'v1' && h.controllers.includes('pids'))!;
    // The parent is a real cgroup with a tmpfs on it: mkdir below works, but it makes plain
    // directories, and a launcher joining them would limit nothing. The broker must notice.
    const parent = path.join(pidsH.base, parentName(runtimeDir));
    mkdirSync(parent);
    t.cleanup.push(() => rmdirQuiet(parent));
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'fuse-svc-cgroups-test', parent], { timeout: 10000 });
    t.cleanup.push(async () => void (await execa('umount', [parent], { reject: false, timeout: 10000 })));

    t.broker = await startBroker({ runtimeDir, config: { pool_size: 1 } });
    t.caller = await newCaller();
    const b = t.broker;
    const c = t.caller;
    await waitFor('the pool gave up on its launcher', () => /launcher pool: cannot start a launcher: instance cgroups not made/.test(b.logs()), 10000);
    const fds0 = fdCount(b.proc.pid!);
    const img = await makeImage(t.dir, 'a.img', 16);
    const mnt = makeDir(path.join(t.dir, 'mnt'));
    const servers0 = processes(['fuse2fs']).length;
    const m = await c.run(clientArgs(b.socket, 'mount', '-o', 'ro', img, mnt));
    assert.is.not(m.exitCode, 0, 'the mount is refused');
    assert.match(m.stderr, /^fuse-svc-request: ESANDBOX: fuse2fs: instance cgroups not made: \S.*pids\.max=64: ENOENT\n?$/, m.stderr);
    assert.is(m.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(c.fuseMounts(), [], 'nothing mounted');
    assert.equal(instanceProcesses(runtimeDir), [], 'no launcher or server of this broker');
    assert.equal(pooled(b), [], 'no pooled launcher either');
    assert.ok(processes(['fuse2fs']).length <= servers0, 'no server started');
    assert.equal(readdirSync(parent), [], 'the half-made directory was removed');
    const l = await c.run(clientArgs(b.socket, 'list'));
    assert.is(l.exitCode, 0, `the broker serves on: ${l.stderr}`);
    assert.is(fdCount(b.proc.pid!), fds0, 'broker fds back');

    // Ordinary use once the cgroup is usable again.
    await execa('umount', [parent], { timeout: 10000 });
    const ok = await c.run(clientArgs(b.socket, '--json', 'mount', '-o', 'ro', img, mnt));
    assert.is(ok.exitCode, 0, ok.stderr);
    const lim = limitsOf(JSON.parse(ok.stdout).server_pid as number);
    assert.is(lim.pidsMax, 64, 'pids limit applied');
    assert.is(lim.memoryMax, 512 * MiB, 'memory limit applied');
    const u = await c.run(clientArgs(b.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
    await b.stop();
    t.broker = undefined;
    assert.equal(existingInstanceCgroups(runtimeDir, true), [], 'no cgroup left');
    assert.not.ok(existsSync(parent), 'the full stop removed the parent');
  }));

test('a cgroup name already taken (a task in it) is refused with EEXIST and the other\'s cgroup is left alone; the sweep spares live ids read at sweep time', async () => {
  if (!haveLimits) return console.log('    (no writable pids + memory cgroup hierarchy: skipped)');
  const runtimeDir = madeRuntimeDir();
  const cfg = { ...DEFAULTS, runtimeDir } as Config;
  const limits = { pidsMax: 32, memoryMax: 64 * MiB };
  const pidsH = writable.find((h) => h.kind === 'v1' && h.controllers.includes('pids'))!;
  const parent = path.join(pidsH.base, parentName(runtimeDir));
  const taken = path.join(parent, cgroupName(runtimeDir, 7));
  const holder = execa('sleep', ['60']);
  const made: string[] = [];
  try {
    mkdirSync(parent, { recursive: true });
    mkdirSync(taken);
    writeFileSync(path.join(taken, 'cgroup.procs'), String(holder.pid));
    let err: unknown;
    await instanceCgroups(cfg, 7, limits, []).catch((e) => (err = e));
    assert.instance(err, CgroupError);
    assert.is((err as CgroupError).code, 'EEXIST');
    assert.ok(existsSync(taken), 'the other\'s cgroup is still there');
    assert.is(readFileSync(path.join(taken, 'cgroup.procs'), 'utf8').trim(), String(holder.pid), 'with its task');
    assert.equal(existingInstanceCgroups(runtimeDir).filter((d) => d !== taken), [], 'nothing half-made left');

    // Id 8 is made while id 9 is "starting" (live); the live set is asked at sweep time.
    const live = new Set<number>([7]);
    made.push(...(await instanceCgroups(cfg, 8, limits, () => live)));
    live.add(8);
    made.push(...(await instanceCgroups(cfg, 9, limits, () => live)));
    assert.ok(made.every((d) => existsSync(d)), `a live instance's cgroups survive the next one's sweep: ${made}`);
    live.delete(8);
    live.add(9);
    made.push(...(await instanceCgroups(cfg, 10, limits, () => live)));
    assert.not.ok(existsSync(path.join(parent, cgroupName(runtimeDir, 8))), 'a cgroup whose id is no longer live is swept');

    // Concurrent creations, each id live from just before its call: none sweeps another's.
    const ids = [20, 21, 22, 23, 24, 25];
    const all = await Promise.all(ids.map((id) => (live.add(id), instanceCgroups(cfg, id, limits, () => live))));
    made.push(...all.flat());
    assert.ok(all.every((d) => d.length === 2), 'memory and pids cgroups for each');
    assert.equal(all.flat().filter((d) => !existsSync(d)), [], 'no concurrent creation swept another\'s cgroups');
  } finally {
    holder.kill('SIGKILL');
    await holder.catch(() => undefined);
    for (const d of [...made, taken]) await waitFor(`rmdir ${d}`, () => (existsSync(d) ? (rmdirQuiet(d), !existsSync(d)) : true), 5000).catch(() => undefined);
    for (const h of discoverHierarchies()) rmdirQuiet(path.join(h.base, parentName(runtimeDir)));
    rmSync(runtimeDir, { recursive: true, force: true });
  }
  assert.equal(parents(runtimeDir), [], 'cleaned up');
});

test('pool ids: one counter for every definition, above instance ids, and a later start never below an earlier one', () => {
  const a = new PoolIds(1_700_000_000_000);
  const ids = [a.take(), a.take(), a.take()];
  assert.equal(ids, [ids[0], ids[0] + 1, ids[0] + 2]);
  assert.ok(ids[0] > POOL_ID_BASE);
  // A broker restarted 1 ms later, after its predecessor made 999 launchers in that ms: still above.
  for (let i = 0; i < 996; i++) a.take();
  const last = a.take();
  assert.ok(new PoolIds(1_700_000_000_001).take() > last);
  assert.ok(Number.isSafeInteger(new PoolIds(Date.UTC(2200, 0)).take()), 'exact as a number for centuries');
});

function rmdirQuiet(d: string): void {
  try {
    rmdirSync(d);
  } catch {
    /* busy or gone */
  }
}

test.run();
