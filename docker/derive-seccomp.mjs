#!/usr/bin/env node
// Derive docker/seccomp-broker.json from Docker's own default profile.
//
//   git -C moby show v20.10.24:profiles/seccomp/default.json > default.json
//   node docker/derive-seccomp.mjs default.json > docker/seccomp-broker.json
//
// Docker's built-in default cannot be exported from a running daemon, but it is generated from
// the same source as moby's profiles/seccomp/default.json; v20.10.24 is the dockerd Debian
// bookworm ships (docker.io 20.10.24). The result is that allow-list (default action: EPERM)
// with exactly these changes, all inside the rule that applies only when the container has
// CAP_SYS_ADMIN:
//   + pivot_root       the sandbox launcher pivots into its tmpfs root (20.10 has no pivot_root
//                      at all: EPERM even with CAP_SYS_ADMIN)
//   - bpf perf_event_open fanotify_init lookup_dcookie quotactl quotactl_fd name_to_handle_at
//     setdomainname syslog
//                      granted with CAP_SYS_ADMIN by Docker, never used by the broker, the
//                      launcher or fuse2fs: the broker holds CAP_SYS_ADMIN only for mounts and
//                      namespaces, so nothing else that capability would unlock stays reachable.
// Everything else (the 300+ unconditional syscalls, the argument filters on clone/personality,
// clone3 -> ENOSYS without CAP_SYS_ADMIN, the CAP_SYS_PTRACE rule for process_vm_readv and
// pidfd_getfd) is Docker's, unchanged. Syscalls newer than the profile get ENOSYS from runc.
//
// Why not "allow everything, deny a list of dangerous calls": a deny-list silently allows every
// syscall added to the kernel later and every one nobody thought of; Docker's default is an
// allow-list that millions of containers already run under, so the smallest auditable step is
// that list plus the one call we need, minus the ones SYS_ADMIN would open that we do not need.
import { readFileSync } from 'node:fs';

const ADD = ['pivot_root'];
const REMOVE = ['bpf', 'perf_event_open', 'fanotify_init', 'lookup_dcookie', 'quotactl', 'quotactl_fd',
  'name_to_handle_at', 'setdomainname', 'syslog'];

const src = JSON.parse(readFileSync(process.argv[2] ?? '/dev/stdin', 'utf8'));
if (src.defaultAction !== 'SCMP_ACT_ERRNO') throw new Error('unexpected defaultAction ' + src.defaultAction);
const isSysAdminRule = (r) => r.action === 'SCMP_ACT_ALLOW' && !(r.args?.length)
  && JSON.stringify(r.includes?.caps ?? []) === '["CAP_SYS_ADMIN"]' && !r.includes?.arches;
const rules = src.syscalls.filter(isSysAdminRule);
if (rules.length !== 1) throw new Error(`expected one unconditional CAP_SYS_ADMIN allow rule, found ${rules.length}`);
const rule = rules[0];
for (const n of ADD) if (src.syscalls.some((r) => r.action === 'SCMP_ACT_ALLOW' && r.names.includes(n))) throw new Error(`${n} is already allowed`);
rule.names = [...rule.names.filter((n) => !REMOVE.includes(n)), ...ADD].sort();
rule.comment = 'fuse-svc broker: Docker 20.10.24 CAP_SYS_ADMIN rule + pivot_root - '
  + REMOVE.join(' ') + ' (docker/derive-seccomp.mjs)';
process.stdout.write(JSON.stringify(src, null, '\t') + '\n');
