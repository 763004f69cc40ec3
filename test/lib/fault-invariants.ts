// The invariants a fault run (test/lib/fault-run.ts) checks once the faults stop, each failure
// one line naming what broke: every FUSE mount in every caller namespace is listed exactly once
// with a unique id and can be unmounted; no server or launcher without its instance; every live
// instance in its own cgroups with its limits; and after the final full stop, no process,
// cgroup, uid lock or state file left of the runtime directory.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { discoverHierarchies, existingInstanceCgroups, parentName } from '../../supervisor/cgroups.js';
import { CLIENT, instanceProcesses, processes, type Broker, type Caller } from './harness.js';
import { limitsOf } from './cgroups.js';

export type Party = { name: string; caller: Caller; uid: number; dir: string };

export type Listed = { id: number; owner_uid: number; target: string; state: string; server_pid: number | null; reason: string | null };

/**
 * The broker's words for a mount that may be left dead (supervisor/broker.ts ORPHAN_REASON: its
 * launcher was killed before it detached; LEFT_REASON: the detach found it covered). Not "the
 * launcher was killed after it detached the mount": nothing of that one is left.
 */
export const isOrphan = (l: Listed) => l.state === 'exited' && /mount may be left dead|its mount is left/.test(l.reason ?? '');
const live = (l: Listed) => l.state !== 'exited';

export async function listAll(b: Broker, asUid: number, via: Caller): Promise<Listed[]> {
  const r = await via.run([CLIENT, '--socket', b.socket, '--json', 'list'], { uid: asUid, timeout: 15000 });
  if (r.exitCode !== 0) throw new Error(`list as uid ${asUid} failed: ${r.stderr.trim()}`);
  return (JSON.parse(r.stdout) as { mounts: Listed[] }).mounts;
}

/** Mount ids (the first field of mountinfo) of the FUSE mounts at `target` in the party's namespace. */
export function fuseMountIdsAt(p: Party, target: string): string[] {
  return p.caller.mountinfo().split('\n').filter((l) => / - fuse(\.|blk| )/.test(l) && l.split(' ')[4] === target).map((l) => l.split(' ')[0]);
}

/** FUSE mount points below the party's directory in its namespace, one entry per mount (stacked ones repeat). */
export function fuseMountsOf(p: Party): string[] {
  return p.caller.fuseMounts().filter((m) => m.startsWith(p.dir + '/'));
}

/**
 * Every FUSE mount is listed exactly once (a live instance, or one whose launcher was killed:
 * its mount is dead and only its owner's unmount removes it), nothing live is listed that is not
 * mounted, ids are unique. Returns the violations.
 */
export function checkAccounted(parties: Party[], listed: Listed[]): string[] {
  const out: string[] = [];
  const ids = listed.map((l) => l.id);
  const dup = ids.filter((id, i) => ids.indexOf(id) !== i);
  if (dup.length) out.push(`accounted: id(s) ${[...new Set(dup)].join(',')} listed more than once`);
  for (const p of parties) {
    const mounted = new Map<string, number>();
    for (const m of fuseMountsOf(p)) mounted.set(m, (mounted.get(m) ?? 0) + 1);
    const mine = listed.filter((l) => l.owner_uid === p.uid && l.target.startsWith(p.dir + '/'));
    const targets = new Set([...mounted.keys(), ...mine.filter(live).map((l) => l.target)]);
    for (const t of targets) {
      const n = mounted.get(t) ?? 0;
      const rows = mine.filter((l) => l.target === t && (live(l) || isOrphan(l)));
      const liveRows = rows.filter(live);
      if (n === 0 && liveRows.length) out.push(`accounted: ${p.name}: ${t} is listed live (id ${liveRows.map((l) => l.id).join(',')}) but nothing is mounted there`);
      else if (n > 0 && rows.length !== n) out.push(`accounted: ${p.name}: ${t} has ${n} FUSE mount(s) but ${rows.length} listing(s) (${rows.map((l) => `${l.id}:${l.state}`).join(' ') || 'none'}): ${rows.length < n ? 'a mount with no record' : 'listed twice'}`);
    }
  }
  return out;
}

/** The instance id of a launcher serving runtimeDir (its fd 2 is instances/ID.log), or undefined. */
function launcherId(pid: number, runtimeDir: string): number | undefined {
  try {
    const m = /\/instances\/(\d+)\.log$/.exec(readlinkSync(`/proc/${pid}/fd/2`));
    return m && readlinkSync(`/proc/${pid}/fd/2`).startsWith(runtimeDir + '/') ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function ppidOf(pid: number): number {
  try {
    return Number(/^PPid:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  } catch {
    return -1;
  }
}

function zombie(pid: number): boolean {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return st[st.lastIndexOf(')') + 2] === 'Z';
  } catch {
    return true;
  }
}

/** Servers (fuse2fs) of this runtime dir: children of its launchers or in its cgroup parent. */
export function serversOf(runtimeDir: string): number[] {
  const parent = `/${parentName(runtimeDir)}/`;
  const launchers = new Set(instanceProcesses(runtimeDir).filter((p) => p.comm.startsWith('fuse-svc-launch')).map((p) => p.pid));
  return processes(['fuse2fs'])
    .filter((p) => !zombie(p.pid))
    .filter((p) => {
      if (launchers.has(ppidOf(p.pid))) return true;
      try {
        return readFileSync(`/proc/${p.pid}/cgroup`, 'utf8').includes(parent);
      } catch {
        return false;
      }
    })
    .map((p) => p.pid);
}

/** Pooled launchers of runtimeDir (their log is a pool-N.log there). */
export function pooledOf(runtimeDir: string): number[] {
  return processes(['fuse-svc-launch'])
    .filter((p) => {
      try {
        const l = readlinkSync(`/proc/${p.pid}/fd/2`);
        return l.startsWith(runtimeDir + '/') && /\/pool-\d+\.log$/.test(l);
      } catch {
        return false;
      }
    })
    .filter((p) => !zombie(p.pid))
    .map((p) => p.pid);
}

/**
 * No server without its instance, no instance without its server, no launcher serving an id
 * that is not live, no idle pooled launcher but the running broker's own.
 */
export function checkProcesses(runtimeDir: string, broker: Broker, listed: Listed[]): string[] {
  const out: string[] = [];
  const running = listed.filter((l) => l.state === 'running');
  const servers = serversOf(runtimeDir);
  // A stopping instance's server is still its own: a stop whose detach found the mount covered
  // waits out stop_timeout_ms for it (its connection lives on under the cover), then ends it.
  const known = new Set(listed.filter((l) => l.state === 'running' || l.state === 'stopping').map((l) => l.server_pid));
  for (const pid of servers) if (!known.has(pid)) out.push(`processes: server pid ${pid} (parent ${ppidOf(pid)}) belongs to no listed running instance`);
  for (const l of running) if (!l.server_pid || !servers.includes(l.server_pid)) out.push(`processes: instance ${l.id} is listed running with server pid ${l.server_pid}, which is not a server of this runtime dir`);
  const liveIds = new Set(listed.filter(live).map((l) => l.id));
  for (const p of instanceProcesses(runtimeDir)) {
    if (!p.comm.startsWith('fuse-svc-launch') || zombie(p.pid)) continue;
    const id = launcherId(p.pid, runtimeDir);
    if (id !== undefined && !liveIds.has(id)) out.push(`processes: launcher pid ${p.pid} serves instance ${id}, which is not listed live`);
  }
  for (const pid of pooledOf(runtimeDir)) if (ppidOf(pid) !== broker.proc.pid) out.push(`processes: idle pooled launcher ${pid} is not the running broker's (parent ${ppidOf(pid)}, broker ${broker.proc.pid})`);
  return out;
}

/**
 * Every running instance's server is in pids and memory cgroups of this runtime dir that no
 * other instance shares, with the definition's limits. Skipped (no violation) where the machine
 * has no writable hierarchy for a controller.
 */
export function checkCgroups(runtimeDir: string, listed: Listed[], want: { pidsMax?: number; memoryMax?: number }): string[] {
  const out: string[] = [];
  const writable = discoverHierarchies().filter((h) => h.writable && h.kind === 'v1');
  const hasPids = writable.some((h) => h.controllers.includes('pids')) && want.pidsMax !== undefined;
  const hasMem = writable.some((h) => h.controllers.includes('memory')) && want.memoryMax !== undefined;
  const seen = new Map<string, number>();
  const parent = parentName(runtimeDir);
  for (const l of listed.filter((x) => x.state === 'running' && x.server_pid)) {
    let lim: ReturnType<typeof limitsOf>;
    try {
      lim = limitsOf(l.server_pid!);
    } catch (e) {
      out.push(`cgroups: instance ${l.id}: cannot read /proc/${l.server_pid}/cgroup: ${(e as Error).message}`);
      continue;
    }
    for (const [what, dir, has, value, limit] of [
      ['pids', lim.pidsDir, hasPids, lim.pidsMax, want.pidsMax],
      ['memory', lim.memoryDir, hasMem, lim.memoryMax, want.memoryMax],
    ] as const) {
      if (!has) continue;
      if (!dir || path.basename(path.dirname(dir)) !== parent) {
        out.push(`cgroups: instance ${l.id}: server ${l.server_pid} is in ${what} cgroup ${dir ?? '(none)'}, not an instance cgroup of this runtime dir`);
        continue;
      }
      const other = seen.get(dir);
      if (other !== undefined) out.push(`cgroups: instances ${other} and ${l.id} share the ${what} cgroup ${dir}`);
      seen.set(dir, l.id);
      if (value !== limit) out.push(`cgroups: instance ${l.id}: ${what} limit of ${dir} is ${value}, the definition says ${limit}`);
    }
  }
  return out;
}

/** After the final full stop: nothing of the runtime directory is left. */
export async function checkNothingLeft(runtimeDir: string, brokers: Broker[]): Promise<string[]> {
  const out: string[] = [];
  for (const b of brokers) if (b.proc.exitCode === null && b.proc.signalCode === null) out.push(`leftover: broker pid ${b.proc.pid} still runs`);
  for (const p of instanceProcesses(runtimeDir)) if (!zombie(p.pid)) out.push(`leftover: process ${p.pid} ${p.comm} (instance ${launcherId(p.pid, runtimeDir) ?? '?'})`);
  for (const pid of pooledOf(runtimeDir)) out.push(`leftover: pooled launcher ${pid}`);
  for (const pid of serversOf(runtimeDir)) out.push(`leftover: server ${pid}`);
  for (const d of existingInstanceCgroups(runtimeDir, true)) out.push(`leftover: cgroup ${d}`);
  for (const h of discoverHierarchies()) {
    const p = path.join(h.base, parentName(runtimeDir));
    try {
      readdirSync(p);
      out.push(`leftover: cgroup parent ${p}`);
    } catch {
      /* gone, as it should be */
    }
  }
  const uidDir = path.join(runtimeDir, 'uids');
  let locks: string[] = [];
  try {
    locks = readdirSync(uidDir).filter((f) => f.endsWith('.lock'));
  } catch {
    /* none made */
  }
  for (const f of locks) {
    // flock -n fails while a launcher (or anyone) holds the uid's lock.
    const r = await execa('flock', ['-n', path.join(uidDir, f), 'true'], { reject: false, timeout: 5000 });
    if (r.exitCode !== 0) out.push(`leftover: uid lock ${f} is held`);
  }
  const inst = path.join(runtimeDir, 'instances');
  for (const f of readdirSync(inst)) {
    if (/^pool-\d+\.log$/.test(f)) out.push(`leftover: ${f} (a pooled launcher's log)`);
    else if (/\.tmp$/.test(f)) out.push(`leftover: ${f}`);
    else if (/\.unit$/.test(f)) out.push(`leftover: unit record ${f}`);
    // Records and states of ended instances stay for the next broker to list once
    // (checkCollected); a live launcher behind one is a leftover process, found above.
  }
  return out;
}

/** What a final broker leaves once every ended instance was listed to its owner: only next-id. */
export function checkCollected(runtimeDir: string): string[] {
  const left = readdirSync(path.join(runtimeDir, 'instances')).filter((f) => f !== 'next-id');
  return left.length ? [`collected: instances/ still holds ${left.join(' ')} after every owner listed and a full stop`] : [];
}
