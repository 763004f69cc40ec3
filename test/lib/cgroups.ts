// Reading a process's cgroups and limits from the host, for the cgroup tests: /proc/PID/cgroup
// (paths relative to our cgroup namespace, so the server's own cgroup namespace does not hide
// them) joined to the hierarchy mounts of supervisor/cgroups.ts.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { discoverHierarchies, type Hierarchy } from '../../supervisor/cgroups.js';

/** The directory of each v1 controller (and '' for cgroup2) that pid is in, as a host path. */
export function cgroupDirs(pid: number, hs: Hierarchy[] = discoverHierarchies()): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line);
    if (!m) continue;
    const ctrls = m[1] === '' ? [''] : m[1].split(',');
    // A hierarchy's mount shows it from its root; this machine's mounts are all at '/'.
    const h = hs.find((x) => (m[1] === '' ? x.kind === 'v2' : x.kind === 'v1' && ctrls.some((c) => x.controllers.includes(c))));
    if (!h) continue;
    for (const c of ctrls) out.set(c, path.join(h.mount, m[2]));
  }
  return out;
}

function readNum(file: string): number | 'max' | undefined {
  try {
    const t = readFileSync(file, 'utf8').trim();
    return t === 'max' ? 'max' : Number(t);
  } catch {
    return undefined;
  }
}

/** The pids and memory limits of the cgroups pid is in (v1 or v2 files, whichever applies). */
export function limitsOf(pid: number): { pidsDir?: string; memoryDir?: string; pidsMax?: number | 'max'; memoryMax?: number | 'max' } {
  const d = cgroupDirs(pid);
  const pidsDir = d.get('pids');
  const memoryDir = d.get('memory');
  const v2 = d.get('');
  return {
    pidsDir,
    memoryDir,
    pidsMax: pidsDir ? readNum(path.join(pidsDir, 'pids.max')) : v2 ? readNum(path.join(v2, 'pids.max')) : undefined,
    memoryMax: memoryDir ? readNum(path.join(memoryDir, 'memory.limit_in_bytes')) : v2 ? readNum(path.join(v2, 'memory.max')) : undefined,
  };
}
