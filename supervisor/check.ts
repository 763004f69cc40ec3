// `fuse-svcd check`: every kernel feature the broker relies on, whether it is there, and what
// to do if not. The broker runs the same checks at start and refuses to run without a required one.
import { accessSync, constants, existsSync, readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import { describeHierarchies, discoverHierarchies } from './cgroups.js';
import type { Config } from './config.js';
import { formatProblem, loadServerDefs, unservedTypes } from './server-check.js';

export type Check = { name: string; required: boolean; ok: boolean; detail: string; fix?: string };

function read(p: string): string | undefined {
  try {
    return readFileSync(p, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function kernelAtLeast(major: number, minor: number): boolean {
  const m = /^(\d+)\.(\d+)/.exec(os.release());
  if (!m) return false;
  const [a, b] = [Number(m[1]), Number(m[2])];
  return a > major || (a === major && b >= minor);
}

export function hostChecks(): Check[] {
  const out: Check[] = [];
  const add = (c: Check) => out.push(c);

  add({ name: 'root', required: true, ok: process.getuid?.() === 0, detail: `running as uid ${process.getuid?.()}`, fix: 'run fuse-svcd as root (or in a container with the capabilities in docs/deploy.md)' });

  const rel = os.release();
  add({ name: 'kernel', required: true, ok: kernelAtLeast(5, 9), detail: `Linux ${rel}`, fix: 'fsopen/move_mount (5.2), pidfd_open (5.3), seccomp ADDFD (5.9) and close_range (5.9) need Linux 5.9 or later' });
  add({ name: 'SO_PEERPIDFD', required: false, ok: kernelAtLeast(6, 5), detail: kernelAtLeast(6, 5) ? 'available (Linux 6.5+)' : 'not available: the caller\'s pidfd comes from pidfd_open(pid), trusted only if that process started before the accept and runs as the caller\'s uid', fix: 'without it, callers in other pid namespaces (other containers) are refused with EPEER, and a caller that exits before its request is read may leave its pid to another process of the same uid; use Linux 6.5 or later' });

  const maxUserNs = read('/proc/sys/user/max_user_namespaces');
  add({ name: 'user namespaces', required: true, ok: existsSync('/proc/self/ns/user') && maxUserNs !== '0', detail: `max_user_namespaces=${maxUserNs ?? 'absent'}`, fix: 'enable CONFIG_USER_NS and set sysctl user.max_user_namespaces to a positive number' });
  for (const ns of ['mnt', 'pid', 'net', 'ipc', 'uts', 'cgroup']) {
    add({ name: `${ns} namespaces`, required: true, ok: existsSync(`/proc/self/ns/${ns}`), detail: existsSync(`/proc/self/ns/${ns}`) ? 'available' : 'missing', fix: `enable CONFIG_${ns.toUpperCase()}_NS` });
  }
  const aa = read('/proc/sys/kernel/apparmor_restrict_unprivileged_userns');
  add({ name: 'AppArmor userns restriction', required: false, ok: aa !== '1', detail: aa === undefined ? 'not present' : `apparmor_restrict_unprivileged_userns=${aa}`, fix: 'the broker creates namespaces as root, which this does not restrict; an AppArmor profile confining fuse-svcd must allow userns' });

  let fuseOk = false;
  let fuseDetail = 'missing';
  try {
    const st = statSync('/dev/fuse');
    fuseOk = st.isCharacterDevice() && st.rdev === ((10 << 8) | 229);
    accessSync('/dev/fuse', constants.R_OK | constants.W_OK);
    fuseDetail = fuseOk ? 'character device 10:229, read/write' : 'not the FUSE device 10:229';
  } catch (e) {
    fuseOk = false;
    fuseDetail = (e as Error).message;
  }
  add({ name: '/dev/fuse', required: true, ok: fuseOk, detail: fuseDetail, fix: 'modprobe fuse; in a container: devices: [/dev/fuse]' });
  const fss = read('/proc/filesystems') ?? '';
  add({ name: 'fuse filesystem', required: true, ok: /\tfuse$/m.test(fss), detail: /\tfuse$/m.test(fss) ? 'registered' : 'not in /proc/filesystems', fix: 'modprobe fuse' });

  const actions = read('/proc/sys/kernel/seccomp/actions_avail') ?? '';
  add({ name: 'seccomp filters', required: true, ok: /\bstatus\b|Seccomp:/.test(read('/proc/self/status') ?? '') && actions.includes('errno'), detail: actions ? `actions: ${actions}` : 'no seccomp', fix: 'enable CONFIG_SECCOMP_FILTER' });
  add({ name: 'seccomp user notification', required: true, ok: actions.includes('user_notif'), detail: actions.includes('user_notif') ? 'available' : 'missing', fix: 'needs Linux 5.0+ with CONFIG_SECCOMP_FILTER (the source is handed to servers this way)' });

  // The hierarchies instance cgroups would go into (supervisor/cgroups.ts decides the same way).
  const cg = describeHierarchies(discoverHierarchies());
  add({ name: 'cgroups', required: false, ok: cg.ok, detail: cg.detail, fix: 'without a writable cgroup hierarchy, instances get rlimits only (no memory/pids/cpu limits); in a container mount /sys/fs/cgroup read-write or give the broker a delegated cgroup' });
  return out;
}

/**
 * The server definitions as the broker would load them: one line per definition that loads,
 * one per refusal (file:line and the types it disables), one for configured types nothing
 * serves. Not required: the broker runs and serves the other types.
 */
export function serverChecks(cfg: Pick<Config, 'serverDir' | 'policyDir' | 'fstypes'>): Check[] {
  const { servers, problems, loaded } = loadServerDefs(cfg.serverDir, cfg.policyDir);
  const out: Check[] = [];
  for (const l of loaded) out.push({ name: `server ${l.name}`, required: false, ok: true, detail: `${l.file}: serves ${l.fstypes.join(', ')}` });
  for (const p of problems) out.push({ name: 'server definition', required: false, ok: false, detail: formatProblem(p), fix: 'fix the file (docs/servers.md); the broker serves every other type meanwhile' });
  const missing = cfg.fstypes.length ? unservedTypes(cfg.fstypes, servers) : [];
  if (missing.length) out.push({ name: 'configured fstypes', required: false, ok: false, detail: `no valid server definition in ${cfg.serverDir} serves ${missing.join(', ')}`, fix: 'add a definition for each, or remove them from "fstypes" in the configuration' });
  if (servers.size === 0) out.push({ name: 'server definitions', required: false, ok: false, detail: `no valid server definition in ${cfg.serverDir}: every mount would be refused`, fix: 'install the servers the definitions name, or fix the definitions' });
  return out;
}

export function formatChecks(checks: Check[]): string {
  return checks
    .map((c) => `${c.ok ? 'ok  ' : c.required ? 'FAIL' : 'warn'}  ${c.name}: ${c.detail}${c.ok || !c.fix ? '' : `\n      -> ${c.fix}`}`)
    .join('\n');
}
