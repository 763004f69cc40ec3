// Per-instance cgroups: one directory `PARENT/NAME` under the broker's own cgroup in each
// usable hierarchy (cgroup v1 memory / pids / cpu controllers, and cgroup2), with the memory,
// pids and cpu limits of the server definition. The broker creates and fills them; the
// launcher moves the server in before exec (spec record `cgroup`, one per hierarchy) and
// removes them when the instance ends, because it is the one process sure to see that end
// (the broker may be down then). The broker sweeps leftovers (a launcher killed with -9).
//
// Relative to the broker's own cgroup, never the hierarchy root: inside a container or a
// service manager's slice the limits then nest under the ones already imposed from outside.
//
// Who may remove what: PARENT belongs to one runtime directory (`fuse-svc`, or `fuse-svc-HASH`
// for another runtime dir), i.e. to the one broker holding it; it is created on first use and
// removed only when that broker exits with no instance left there, or by a full stop (`fuse-svcd
// stop`) with no broker holding the runtime dir; never by a launcher: a process removing a
// directory another is creating in loses the other's mkdir (ENOENT). An instance's directory is
// removed by its launcher (or, for a pooled one, by the broker after the launcher exits), and by
// the sweep only when its id is not live at the moment of the sweep.
//
// Fail closed: a limit of the definition that applies in a usable hierarchy is written, or the
// mount is refused (CgroupError -> ESANDBOX); a server never runs with a limit silently missing.
import { createHash } from 'node:crypto';
import { accessSync, constants, existsSync, readFileSync, readdirSync, rmdirSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Config } from './config.js';
import { log } from './log.js';
import type { ServerDef } from './servers.js';

/** Ids from here up are idle pooled launchers' (supervisor/pool.ts), never instances'. */
export const POOL_ID_BASE = 1_000_000_000;

export type Hierarchy = {
  /** 'v1' (one or more controllers) or 'v2' (the unified hierarchy). */
  kind: 'v1' | 'v2';
  /** v1: the controllers bound to it; v2: those enabled for children of our cgroup. */
  controllers: string[];
  mount: string;
  /** The broker's own cgroup in this hierarchy, as a path on this machine. */
  base: string;
  writable: boolean;
};

const WANTED_V1 = ['memory', 'pids', 'cpu'];

function read(p: string): string | undefined {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * The hierarchies an instance cgroup can go into, from /proc/self/mountinfo and
 * /proc/self/cgroup. v1 hierarchies count only if they carry memory, pids or cpu; the v2
 * hierarchy always counts (it groups and counts processes even without controllers).
 */
export function discoverHierarchies(procSelf = '/proc/self'): Hierarchy[] {
  const own = new Map<string, string>(); // controller list ('' = v2) -> path
  for (const line of (read(`${procSelf}/cgroup`) ?? '').split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line);
    if (m) own.set(m[1], m[2]);
  }
  const out: Hierarchy[] = [];
  const seen = new Set<string>();
  for (const line of (read(`${procSelf}/mountinfo`) ?? '').split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!post) continue;
    const f = pre.split(' ');
    const [fstype, , superOpts] = post.split(' ');
    const root = unescapeMount(f[3]);
    const mount = unescapeMount(f[4]);
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') continue;
    let ownPath: string | undefined;
    let controllers: string[];
    let kind: Hierarchy['kind'];
    if (fstype === 'cgroup2') {
      kind = 'v2';
      ownPath = own.get('');
      controllers = [];
    } else {
      kind = 'v1';
      const opts = (superOpts ?? '').split(',');
      controllers = opts.filter((o) => WANTED_V1.includes(o) || o === 'cpuacct');
      if (!controllers.some((c) => WANTED_V1.includes(c))) continue;
      // /proc/self/cgroup names a v1 hierarchy by its controller list, e.g. "cpu,cpuacct".
      for (const [k, v] of own) if (k !== '' && k.split(',').some((c) => controllers.includes(c))) ownPath = v;
    }
    if (ownPath === undefined || seen.has(mount)) continue;
    // The mount shows the hierarchy from `root` down; our cgroup must lie below it.
    const rel = root === '/' ? ownPath : ownPath === root || ownPath.startsWith(root + '/') ? ownPath.slice(root.length) || '/' : undefined;
    if (rel === undefined) continue;
    const base = rel === '/' ? mount : path.join(mount, rel);
    if (!existsSync(path.join(base, 'cgroup.procs'))) continue;
    if (kind === 'v2') {
      const sub = (read(path.join(base, 'cgroup.subtree_control')) ?? '').trim();
      controllers = sub ? sub.split(/\s+/) : [];
    }
    let writable = true;
    try {
      accessSync(base, constants.W_OK);
    } catch {
      writable = false;
    }
    seen.add(mount);
    out.push({ kind, controllers, mount, base, writable });
  }
  return out;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** One line for `fuse-svcd check`. */
export function describeHierarchies(hs: Hierarchy[]): { ok: boolean; detail: string } {
  if (hs.length === 0) return { ok: false, detail: 'no cgroup hierarchy with memory, pids or cpu found' };
  const usable = hs.filter((h) => h.writable);
  const parts = hs.map((h) => `${h.kind === 'v1' ? `v1 ${h.controllers.join(',')}` : `v2 (controllers for children: ${h.controllers.join(' ') || 'none'})`} at ${h.base}${h.writable ? '' : ' (read-only)'}`);
  const limits = new Set<string>();
  for (const h of usable) {
    if (h.kind === 'v1') h.controllers.forEach((c) => limits.add(c));
    else h.controllers.filter((c) => WANTED_V1.includes(c)).forEach((c) => limits.add(c));
  }
  const lim = [...limits].filter((c) => WANTED_V1.includes(c)).sort();
  return { ok: usable.length > 0, detail: `${parts.join('; ')}; instance limits: ${lim.length ? lim.join(', ') : 'none (grouping only)'}` };
}

let cached: Hierarchy[] | undefined;
function hierarchies(): Hierarchy[] {
  cached ??= discoverHierarchies().filter((h) => h.writable);
  return cached;
}

/** The directory name of instance `id`: plain for the default runtime dir, else tagged. */
export function cgroupName(runtimeDir: string, id: number): string {
  if (runtimeDir === '/run/fuse-svcd') return String(id);
  return `${createHash('sha256').update(runtimeDir).digest('hex').slice(0, 8)}-${id}`;
}

/**
 * The shared parent of runtimeDir's instance cgroups: one per runtime directory (so per broker),
 * so no other broker's full stop can remove it while this one creates an instance in it.
 */
export function parentName(runtimeDir: string): string {
  const tag = cgroupName(runtimeDir, 0); // '0' for the default runtime dir, else 'HASH-0'
  return tag === '0' ? 'fuse-svc' : `fuse-svc-${tag.slice(0, 8)}`;
}

function namePattern(runtimeDir: string): RegExp {
  return runtimeDir === '/run/fuse-svcd' ? /^(\d+)$/ : new RegExp(`^${cgroupName(runtimeDir, 0).slice(0, 8)}-(\\d+)$`);
}

type Limits = ServerDef['cgroup'];

/** What goes into each file, per hierarchy kind and controller. */
function limitFiles(h: Hierarchy, l: Limits): [string, string][] {
  const files: [string, string][] = [];
  const has = (c: string) => h.controllers.includes(c);
  if (h.kind === 'v1') {
    if (has('memory') && l.memoryMax) {
      files.push(['memory.limit_in_bytes', String(l.memoryMax)]);
      files.push(['memory.memsw.limit_in_bytes', String(l.memoryMax)]); // no escape into swap
    }
    if (has('pids') && l.pidsMax) files.push(['pids.max', String(l.pidsMax)]);
    // systemd's mapping: CPUWeight=100 (the default) is cpu.shares=1024, i.e. no change.
    if (has('cpu') && l.cpuWeight && l.cpuWeight !== 100) files.push(['cpu.shares', String(Math.max(2, Math.round((l.cpuWeight * 1024) / 100)))]);
  } else {
    if (has('memory') && l.memoryMax) files.push(['memory.max', String(l.memoryMax)], ['memory.swap.max', '0']);
    if (has('pids') && l.pidsMax) files.push(['pids.max', String(l.pidsMax)]);
    if (has('cpu') && l.cpuWeight && l.cpuWeight !== 100) files.push(['cpu.weight', String(Math.min(10000, Math.max(1, l.cpuWeight)))]);
  }
  return files;
}

/**
 * The limits of a definition that no usable hierarchy can apply (no writable cgroup with that
 * controller: a container with /sys/fs/cgroup read-only, `cgroups: none`). The broker says so
 * at start, once per definition, so limits are never dropped silently; rlimits still apply.
 */
export function unenforcedLimits(cfg: Config, limits: Limits): string[] {
  const want: [keyof Limits, string][] = [['memoryMax', 'memory'], ['pidsMax', 'pids']];
  const usable = cfg.cgroups === 'none' ? [] : hierarchies();
  return want.filter(([k, c]) => limits[k] && !usable.some((h) => h.controllers.includes(c))).map(([k]) => `${k}=${limits[k]}`);
}

/** An instance's cgroups could not be made: the mount is refused (ESANDBOX), never run without. */
export class CgroupError extends Error {
  constructor(
    message: string,
    /** EEXIST: the name is taken (another instance's cgroup); the pool then takes another id. */
    readonly code?: string,
  ) {
    super(message);
  }
}

/**
 * Creates `PARENT/NAME` in every usable hierarchy where one of the server's limits applies,
 * writes the limits and returns the directories (for the launcher's `cgroup` records). Throws
 * CgroupError when one cannot be made or a limit cannot be written (fail closed), after removing
 * only what this call created. `live` answers, at the moment of the sweep, the ids of instances
 * and pooled launchers the broker knows; leftovers of others are removed on the way.
 */
export async function instanceCgroups(cfg: Config, id: number, limits: Limits, live: Iterable<number> | (() => Iterable<number>)): Promise<string[]> {
  // Asynchronous on purpose: creating a memory cgroup takes milliseconds in the kernel, and the
  // broker's event loop must keep answering meanwhile (a pooled launcher is prepared while the
  // previous request's unmount may already be arriving).
  if (cfg.cgroups === 'none') return [];
  const liveNow = typeof live === 'function' ? live : () => live;
  const pattern = namePattern(cfg.runtimeDir);
  const dirs: string[] = [];
  for (const h of hierarchies()) {
    // Joining a cgroup costs the server's start-up a few ms per hierarchy (cgroup v1 and v2
    // migrations wait for an RCU grace period): only where a limit actually applies.
    const files = limitFiles(h, limits);
    if (files.length === 0) continue;
    const parent = path.join(h.base, parentName(cfg.runtimeDir));
    const dir = path.join(parent, cgroupName(cfg.runtimeDir, id));
    try {
      await makeParent(h, parent);
      // The live ids are read now, after the awaits above, and the sweep is synchronous: an
      // instance that started creating its cgroups meanwhile is in them.
      sweep(parent, pattern, new Set(liveNow()));
      try {
        await fsp.mkdir(dir, { mode: 0o755 });
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT') throw new CgroupError(`mkdir(${dir}): ${code ?? (e as Error).message}`, code);
        // Only a full stop removes the parent; if one ran meanwhile, make it again, once.
        await makeParent(h, parent);
        await fsp.mkdir(dir, { mode: 0o755 }).catch((e2: NodeJS.ErrnoException) => {
          throw new CgroupError(`mkdir(${dir}): ${e2.code ?? e2.message}`, e2.code);
        });
      }
      dirs.push(dir);
      for (const [file, value] of files) await writeLimit(dir, file, value);
    } catch (e) {
      removeCgroups(dirs); // ours only: a directory that existed before (EEXIST) is not ours
      const msg = e instanceof CgroupError ? e.message : `${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
      throw new CgroupError(`instance cgroups not made: ${msg}`, e instanceof CgroupError ? e.code : undefined);
    }
  }
  return dirs;
}

/** Creates the runtime dir's parent in a hierarchy if missing (and lets its children use the v2 controllers). */
async function makeParent(h: Hierarchy, parent: string): Promise<void> {
  if (existsSync(parent)) return;
  await fsp.mkdir(parent, { mode: 0o755 }).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'EEXIST') throw new CgroupError(`mkdir(${parent}): ${e.code ?? e.message}`, e.code);
  });
  if (h.kind === 'v2') {
    const want = h.controllers.filter((c) => WANTED_V1.includes(c));
    // Without them the limit files below do not exist and the mount is refused by writeLimit.
    if (want.length) await fsp.writeFile(path.join(parent, 'cgroup.subtree_control'), want.map((c) => `+${c}`).join(' '), { flag: 'r+' }).catch(() => undefined);
  }
}

/**
 * Writes one limit into an existing control file: opened without O_CREAT, so a directory that
 * is not a cgroup (a tmpfs mounted over the parent, a controller missing) fails instead of
 * getting an ordinary file that limits nothing.
 */
async function writeLimit(dir: string, file: string, value: string): Promise<void> {
  try {
    await fsp.writeFile(path.join(dir, file), value, { flag: 'r+' });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // No swap accounting on this kernel (memsw absent, or swap.max refused): memory.limit still holds.
    if ((file.includes('swap') || file.includes('memsw')) && existsSync(path.join(dir, 'cgroup.procs'))) return;
    throw new CgroupError(`${path.join(dir, file)}=${value}: ${code ?? (e as Error).message}`, code === 'EEXIST' ? undefined : code);
  }
}

/**
 * Removes leftover instance cgroups (no tasks) of this runtime dir whose instance is not live.
 * Synchronous, so `live` is exact for its whole run.
 */
function sweep(parent: string, pattern: RegExp, live: Set<number>): void {
  let names: string[];
  try {
    names = readdirSync(parent);
  } catch {
    return;
  }
  for (const n of names) {
    const m = pattern.exec(n);
    if (!m || live.has(Number(m[1]))) continue;
    removeCgroups([path.join(parent, n)]);
  }
}

/**
 * Removes runtimeDir's parents where they are empty: only at a full stop, when its broker is gone
 * (it is the only one creating in them).
 */
export function removeEmptyParents(runtimeDir: string): void {
  for (const h of discoverHierarchies()) removeCgroups([path.join(h.base, parentName(runtimeDir))]);
}

/**
 * At the broker's exit (it holds the runtime dir's lock until then, so no other broker creates
 * here meanwhile; launchers never create): the parents go where nothing but the cgroups of its
 * ending pooled launchers is left, which the kernel releases a moment after they are reaped.
 * A parent with an instance's cgroup stays for the next broker or the full stop. Bounded: ~1 s.
 */
export async function removeParentsAtExit(runtimeDir: string): Promise<void> {
  const pattern = namePattern(runtimeDir);
  for (let tries = 0; tries < 20; tries++) {
    let waiting = false;
    for (const h of discoverHierarchies()) {
      const parent = path.join(h.base, parentName(runtimeDir));
      let names: string[];
      try {
        names = readdirSync(parent, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
      } catch {
        continue; // none here
      }
      const ids = names.map((n) => Number(pattern.exec(n)?.[1] ?? NaN));
      if (ids.some((id) => !(id >= POOL_ID_BASE))) continue; // an instance (or a stranger) lives here
      removeCgroups(names.map((n) => path.join(parent, n)));
      removeCgroups([parent]);
      if (existsSync(parent)) waiting = true;
    }
    if (!waiting) return;
    await new Promise((r) => setTimeout(r, 50).unref());
  }
}

/** rmdir each cgroup; a missing one is fine, a busy one (tasks left) stays. */
export function removeCgroups(dirs: string[]): void {
  for (const d of dirs) {
    try {
      rmdirSync(d);
    } catch {
      /* ENOENT: already removed by the launcher; EBUSY: still has tasks */
    }
  }
}

/** The instance cgroup directories that exist for runtimeDir (tests, `check`). */
export function existingInstanceCgroups(runtimeDir: string, withPool = false): string[] {
  const pattern = namePattern(runtimeDir);
  const out: string[] = [];
  for (const h of discoverHierarchies()) {
    const parent = path.join(h.base, parentName(runtimeDir));
    try {
      // Not those of idle pooled launchers (ids from 1e9, supervisor/pool.ts): stock, not instances.
      for (const n of readdirSync(parent)) if (pattern.test(n) && (withPool || Number(pattern.exec(n)![1]) < POOL_ID_BASE)) out.push(path.join(parent, n));
    } catch {
      /* none */
    }
  }
  return out;
}

/**
 * After a full stop: removes every instance cgroup of runtimeDir that has no tasks left (also
 * those of launchers killed with -9, which could not remove their own), then the shared
 * parents if they are empty. A cgroup with tasks is never touched (rmdir refuses it).
 */
export function sweepRuntimeDir(runtimeDir: string, opts: { parents?: boolean } = {}): number {
  const stale = existingInstanceCgroups(runtimeDir, true);
  removeCgroups(stale);
  // Not while a broker still holds the runtime dir: it may be creating in them.
  if (opts.parents ?? true) removeEmptyParents(runtimeDir);
  return stale.filter((d) => !existsSync(d)).length;
}
