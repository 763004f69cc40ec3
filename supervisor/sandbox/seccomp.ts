// Seccomp policies: the OCI/Docker profile format (policies/seccomp/*.json), systemd 252's
// SystemCallFilter= semantics and its argument-filtered directive rules, and the flat
// `seccomp_*` records the launcher compiles with libseccomp (docs/launcher.md).
//
// How systemd and this file differ in mechanism, not in result:
// systemd loads one seccomp filter per directive (each with default ALLOW) and the
// SystemCallFilter= filter last. The kernel runs every filter and keeps the result of highest
// precedence (KILL_PROCESS > KILL_THREAD > TRAP > ERRNO > USER_NOTIF > TRACE > LOG > ALLOW); among
// equal actions the most recently loaded filter wins. So for a call that SystemCallFilter= refuses,
// its errno (e.g. EL3RST) wins over a directive's EPERM; for a call it allows, the directive rules
// decide. fuse-svc loads one policy filter, so systemCallFilterToProfile() computes that combined
// result per syscall and writes it as rules whose conditions do not overlap. That matters because
// libseccomp (2.5.4, checked) silently drops an argument-filtered rule for a syscall that already
// has an unconditional rule: "ALLOW mmap" + "ERRNO(EPERM) mmap if PROT_WRITE|PROT_EXEC" compiles
// to plain "ALLOW mmap". Instead the profile says "ERRNO(EPERM) mmap if (prot & 6) == 6",
// "ALLOW mmap if (prot & 2) == 0", "ALLOW mmap if (prot & 4) == 0".

import { expandGroup, isGroup } from './syscall-groups.js';

// ---------------------------------------------------------------------------------------------
// The OCI profile

export const OCI_ACTIONS = [
  'SCMP_ACT_KILL', 'SCMP_ACT_KILL_PROCESS', 'SCMP_ACT_KILL_THREAD', 'SCMP_ACT_TRAP', 'SCMP_ACT_ERRNO',
  'SCMP_ACT_TRACE', 'SCMP_ACT_ALLOW', 'SCMP_ACT_LOG', 'SCMP_ACT_NOTIFY',
] as const;
export type OciAction = (typeof OCI_ACTIONS)[number];

export const OCI_OPS = [
  'SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_EQ', 'SCMP_CMP_GE', 'SCMP_CMP_GT', 'SCMP_CMP_MASKED_EQ',
] as const;
export type OciOp = (typeof OCI_OPS)[number];

export const OCI_FLAGS = [
  'SECCOMP_FILTER_FLAG_TSYNC', 'SECCOMP_FILTER_FLAG_LOG', 'SECCOMP_FILTER_FLAG_SPEC_ALLOW',
  'SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV',
] as const;

/** OCI architecture name -> libseccomp name (seccomp_arch_resolve_name). */
export const OCI_ARCHES: Readonly<Record<string, string>> = {
  SCMP_ARCH_X86: 'x86', SCMP_ARCH_X86_64: 'x86_64', SCMP_ARCH_X32: 'x32', SCMP_ARCH_ARM: 'arm',
  SCMP_ARCH_AARCH64: 'aarch64', SCMP_ARCH_MIPS: 'mips', SCMP_ARCH_MIPS64: 'mips64',
  SCMP_ARCH_MIPS64N32: 'mips64n32', SCMP_ARCH_MIPSEL: 'mipsel', SCMP_ARCH_MIPSEL64: 'mipsel64',
  SCMP_ARCH_MIPSEL64N32: 'mipsel64n32', SCMP_ARCH_PPC: 'ppc', SCMP_ARCH_PPC64: 'ppc64',
  SCMP_ARCH_PPC64LE: 'ppc64le', SCMP_ARCH_S390: 's390', SCMP_ARCH_S390X: 's390x',
  SCMP_ARCH_PARISC: 'parisc', SCMP_ARCH_PARISC64: 'parisc64', SCMP_ARCH_RISCV64: 'riscv64',
  // Not known to libseccomp 2.5.4 (2.6 adds them); the launcher refuses what it cannot add.
  SCMP_ARCH_LOONGARCH64: 'loongarch64', SCMP_ARCH_M68K: 'm68k', SCMP_ARCH_SH: 'sh', SCMP_ARCH_SHEB: 'sheb',
};

export interface OciArg {
  /** Syscall argument, 0..5. */
  index: number;
  /** For SCMP_CMP_MASKED_EQ: the mask. Otherwise the datum. */
  value: number;
  /** For SCMP_CMP_MASKED_EQ: the datum `(arg & value) == valueTwo`. Ignored by the other ops. */
  valueTwo?: number;
  op: OciOp;
}

export interface OciSyscall {
  names: string[];
  action: OciAction;
  /** Only with SCMP_ACT_ERRNO / SCMP_ACT_TRACE; default EPERM. */
  errnoRet?: number;
  /** All must match (AND). */
  args?: OciArg[];
  /** Docker's profile format has this field; OCI runtimes ignore it. */
  comment?: string;
}

export interface OciProfile {
  defaultAction: OciAction;
  defaultErrnoRet?: number;
  /** Absent or empty: the native architecture only (what SystemCallArchitectures=native means). */
  architectures?: string[];
  flags?: string[];
  listenerPath?: string;
  listenerMetadata?: string;
  syscalls?: OciSyscall[];
}

const SYSCALL_NAME = /^[a-z_][a-z0-9_]{0,63}$/;

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'number' ? `the number ${v}` : typeof v === 'string' ? 'a string' : `a ${typeof v}`;
}

/**
 * Parses and strictly validates an OCI seccomp profile. Every problem is an Error whose message
 * starts with `fileName: $.json.path:`. Unknown keys are errors, except `comment` on a syscall
 * entry (Docker's format has it). Numbers must be non-negative safe integers (a JSON number above
 * 2^53 cannot be read exactly here).
 */
export function parseOciProfile(text: string, fileName: string): OciProfile {
  const fail = (p: string, msg: string): never => {
    throw new Error(`${fileName}: ${p}: ${msg}`);
  };
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return fail('$', `invalid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  const obj = (v: unknown, p: string, allowed: readonly string[]): Record<string, unknown> => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(p, `expected an object, got ${describe(v)}`);
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      if (!allowed.includes(k)) fail(`${p}.${k}`, `unknown key (allowed: ${allowed.join(', ')})`);
    }
    return o;
  };
  const has = (o: Record<string, unknown>, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);
  const uint = (v: unknown, p: string, max = Number.MAX_SAFE_INTEGER): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) fail(p, `expected a non-negative integer, got ${describe(v)}`);
    if ((v as number) > max) fail(p, `${v} is larger than ${max}`);
    return v as number;
  };
  const str = (v: unknown, p: string): string => {
    if (typeof v !== 'string') fail(p, `expected a string, got ${describe(v)}`);
    return v as string;
  };
  const arr = (v: unknown, p: string): unknown[] => {
    if (!Array.isArray(v)) fail(p, `expected an array, got ${describe(v)}`);
    return v as unknown[];
  };
  const oneOf = <T extends string>(v: unknown, p: string, allowed: readonly T[]): T => {
    const s = str(v, p);
    if (!(allowed as readonly string[]).includes(s)) fail(p, `unknown value ${JSON.stringify(s)} (expected one of ${allowed.join(', ')})`);
    return s as T;
  };
  const errnoOk = (a: OciAction): boolean => a === 'SCMP_ACT_ERRNO' || a === 'SCMP_ACT_TRACE';

  const top = obj(doc, '$', ['defaultAction', 'defaultErrnoRet', 'architectures', 'flags', 'listenerPath', 'listenerMetadata', 'syscalls']);
  if (!has(top, 'defaultAction')) fail('$.defaultAction', 'missing');
  const profile: OciProfile = { defaultAction: oneOf(top.defaultAction, '$.defaultAction', OCI_ACTIONS) };
  if (has(top, 'defaultErrnoRet')) {
    profile.defaultErrnoRet = uint(top.defaultErrnoRet, '$.defaultErrnoRet', 4095);
    if (!errnoOk(profile.defaultAction)) fail('$.defaultErrnoRet', `only allowed with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not ${profile.defaultAction}`);
  }
  if (has(top, 'architectures')) {
    const archNames = Object.keys(OCI_ARCHES);
    profile.architectures = arr(top.architectures, '$.architectures').map((a, i) => oneOf(a, `$.architectures[${i}]`, archNames));
  }
  if (has(top, 'flags')) profile.flags = arr(top.flags, '$.flags').map((f, i) => oneOf(f, `$.flags[${i}]`, OCI_FLAGS));
  if (has(top, 'listenerPath')) profile.listenerPath = str(top.listenerPath, '$.listenerPath');
  if (has(top, 'listenerMetadata')) profile.listenerMetadata = str(top.listenerMetadata, '$.listenerMetadata');
  if (has(top, 'syscalls')) {
    profile.syscalls = arr(top.syscalls, '$.syscalls').map((s, i): OciSyscall => {
      const p = `$.syscalls[${i}]`;
      const o = obj(s, p, ['names', 'action', 'errnoRet', 'args', 'comment']);
      if (!has(o, 'names')) fail(`${p}.names`, 'missing');
      if (!has(o, 'action')) fail(`${p}.action`, 'missing');
      const names = arr(o.names, `${p}.names`).map((n, j) => {
        const name = str(n, `${p}.names[${j}]`);
        if (!SYSCALL_NAME.test(name)) fail(`${p}.names[${j}]`, `${JSON.stringify(name)} is not a syscall name`);
        return name;
      });
      if (names.length === 0) fail(`${p}.names`, 'empty');
      const entry: OciSyscall = { names, action: oneOf(o.action, `${p}.action`, OCI_ACTIONS) };
      if (has(o, 'errnoRet')) {
        entry.errnoRet = uint(o.errnoRet, `${p}.errnoRet`, 4095);
        if (!errnoOk(entry.action)) fail(`${p}.errnoRet`, `only allowed with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not ${entry.action}`);
      }
      if (has(o, 'args')) {
        const args = arr(o.args, `${p}.args`);
        if (args.length > 6) fail(`${p}.args`, `at most 6 comparisons, got ${args.length}`);
        entry.args = args.map((a, k): OciArg => {
          const q = `${p}.args[${k}]`;
          const ao = obj(a, q, ['index', 'value', 'valueTwo', 'op']);
          for (const key of ['index', 'value', 'op']) if (!has(ao, key)) fail(`${q}.${key}`, 'missing');
          const arg: OciArg = { index: uint(ao.index, `${q}.index`, 5), value: uint(ao.value, `${q}.value`), op: oneOf(ao.op, `${q}.op`, OCI_OPS) };
          if (has(ao, 'valueTwo')) arg.valueTwo = uint(ao.valueTwo, `${q}.valueTwo`);
          return arg;
        });
      }
      if (has(o, 'comment')) entry.comment = str(o.comment, `${p}.comment`);
      return entry;
    });
  }
  return profile;
}

// ---------------------------------------------------------------------------------------------
// Errno and address-family names (Linux x86_64 / asm-generic values, which aarch64 shares too)

/** From /usr/include/asm-generic/errno-base.h and errno.h (Linux UAPI), plus glibc's ENOTSUP. */
export const ERRNO: Readonly<Record<string, number>> = {
  EPERM: 1, ENOENT: 2, ESRCH: 3, EINTR: 4, EIO: 5, ENXIO: 6, E2BIG: 7, ENOEXEC: 8, EBADF: 9,
  ECHILD: 10, EAGAIN: 11, ENOMEM: 12, EACCES: 13, EFAULT: 14, ENOTBLK: 15, EBUSY: 16, EEXIST: 17,
  EXDEV: 18, ENODEV: 19, ENOTDIR: 20, EISDIR: 21, EINVAL: 22, ENFILE: 23, EMFILE: 24, ENOTTY: 25,
  ETXTBSY: 26, EFBIG: 27, ENOSPC: 28, ESPIPE: 29, EROFS: 30, EMLINK: 31, EPIPE: 32, EDOM: 33,
  ERANGE: 34, EDEADLK: 35, ENAMETOOLONG: 36, ENOLCK: 37, ENOSYS: 38, ENOTEMPTY: 39, ELOOP: 40,
  EWOULDBLOCK: 11, ENOMSG: 42, EIDRM: 43, ECHRNG: 44, EL2NSYNC: 45, EL3HLT: 46, EL3RST: 47,
  ELNRNG: 48, EUNATCH: 49, ENOCSI: 50, EL2HLT: 51, EBADE: 52, EBADR: 53, EXFULL: 54, ENOANO: 55,
  EBADRQC: 56, EBADSLT: 57, EDEADLOCK: 35, EBFONT: 59, ENOSTR: 60, ENODATA: 61, ETIME: 62,
  ENOSR: 63, ENONET: 64, ENOPKG: 65, EREMOTE: 66, ENOLINK: 67, EADV: 68, ESRMNT: 69, ECOMM: 70,
  EPROTO: 71, EMULTIHOP: 72, EDOTDOT: 73, EBADMSG: 74, EOVERFLOW: 75, ENOTUNIQ: 76, EBADFD: 77,
  EREMCHG: 78, ELIBACC: 79, ELIBBAD: 80, ELIBSCN: 81, ELIBMAX: 82, ELIBEXEC: 83, EILSEQ: 84,
  ERESTART: 85, ESTRPIPE: 86, EUSERS: 87, ENOTSOCK: 88, EDESTADDRREQ: 89, EMSGSIZE: 90,
  EPROTOTYPE: 91, ENOPROTOOPT: 92, EPROTONOSUPPORT: 93, ESOCKTNOSUPPORT: 94, EOPNOTSUPP: 95,
  ENOTSUP: 95, EPFNOSUPPORT: 96, EAFNOSUPPORT: 97, EADDRINUSE: 98, EADDRNOTAVAIL: 99,
  ENETDOWN: 100, ENETUNREACH: 101, ENETRESET: 102, ECONNABORTED: 103, ECONNRESET: 104,
  ENOBUFS: 105, EISCONN: 106, ENOTCONN: 107, ESHUTDOWN: 108, ETOOMANYREFS: 109, ETIMEDOUT: 110,
  ECONNREFUSED: 111, EHOSTDOWN: 112, EHOSTUNREACH: 113, EALREADY: 114, EINPROGRESS: 115,
  ESTALE: 116, EUCLEAN: 117, ENOTNAM: 118, ENAVAIL: 119, EISNAM: 120, EREMOTEIO: 121, EDQUOT: 122,
  ENOMEDIUM: 123, EMEDIUMTYPE: 124, ECANCELED: 125, ENOKEY: 126, EKEYEXPIRED: 127,
  EKEYREVOKED: 128, EKEYREJECTED: 129, EOWNERDEAD: 130, ENOTRECOVERABLE: 131, ERFKILL: 132,
  EHWPOISON: 133,
};

/** systemd's ERRNO_MAX: errno numbers 0..4095 are accepted. */
const ERRNO_MAX = 4095;

/** An errno name (EL3RST) or number (47, 0..4095) -> number. Throws otherwise. */
export function errnoNumber(e: string | number): number {
  if (typeof e === 'number') {
    if (!Number.isInteger(e) || e < 0 || e > ERRNO_MAX) throw new Error(`errno ${e} out of range 0..${ERRNO_MAX}`);
    return e;
  }
  if (/^[0-9]+$/.test(e)) return errnoNumber(Number(e));
  const n = Object.prototype.hasOwnProperty.call(ERRNO, e) ? ERRNO[e] : undefined;
  if (n === undefined) throw new Error(`unknown errno name ${JSON.stringify(e)}`);
  return n;
}

/** Address families of glibc 2.36's <bits/socket.h> (PF_MAX 46). */
export const ADDRESS_FAMILIES: Readonly<Record<string, number>> = {
  AF_UNIX: 1, AF_LOCAL: 1, AF_INET: 2, AF_AX25: 3, AF_IPX: 4, AF_APPLETALK: 5, AF_NETROM: 6,
  AF_BRIDGE: 7, AF_ATMPVC: 8, AF_X25: 9, AF_INET6: 10, AF_ROSE: 11, AF_DECnet: 12, AF_NETBEUI: 13,
  AF_SECURITY: 14, AF_KEY: 15, AF_NETLINK: 16, AF_PACKET: 17, AF_ASH: 18, AF_ECONET: 19,
  AF_ATMSVC: 20, AF_RDS: 21, AF_SNA: 22, AF_IRDA: 23, AF_PPPOX: 24, AF_WANPIPE: 25, AF_LLC: 26,
  AF_IB: 27, AF_MPLS: 28, AF_CAN: 29, AF_TIPC: 30, AF_BLUETOOTH: 31, AF_IUCV: 32, AF_RXRPC: 33,
  AF_ISDN: 34, AF_PHONET: 35, AF_IEEE802154: 36, AF_CAIF: 37, AF_ALG: 38, AF_NFC: 39,
  AF_VSOCK: 40, AF_KCM: 41, AF_QIPCRTR: 42, AF_SMC: 43, AF_XDP: 44, AF_MCTP: 45,
};
const AF_MAX = 46;

// ---------------------------------------------------------------------------------------------
// Constants the directive rules compare against (x86_64 values)

const PROT_WRITE = 0x2;
const PROT_EXEC = 0x4;
const SHM_EXEC = 0o100000;
const O_CREAT = 0o100;
const S_ISUID = 0o4000;
const S_ISGID = 0o2000;
const PER_LINUX = 0;
/** systemd's namespace_info[] (src/basic/namespace-util.c, v252), in its order. */
export const NAMESPACE_FLAGS: Readonly<Record<string, number>> = {
  cgroup: 0x02000000, ipc: 0x08000000, net: 0x40000000, mnt: 0x00020000, pid: 0x20000000,
  user: 0x10000000, uts: 0x04000000, time: 0x00000080,
};
/** systemd's NAMESPACE_FLAGS_ALL (nsflags.h): without CLONE_NEWTIME. */
const NAMESPACE_FLAGS_ALL = 0x02000000 | 0x08000000 | 0x40000000 | 0x00020000 | 0x20000000 | 0x10000000 | 0x04000000;

// ---------------------------------------------------------------------------------------------
// The directive rules, as systemd 252 builds them

export interface DirectiveOptions {
  /** RestrictNamespaces=: true = none may be created; a list = these kinds stay allowed. */
  restrictNamespaces?: boolean | string[];
  memoryDenyWriteExecute?: boolean;
  restrictRealtime?: boolean;
  restrictSUIDSGID?: boolean;
  lockPersonality?: boolean;
  /** RestrictAddressFamilies= in systemd syntax: 'none', 'AF_UNIX AF_INET', '~AF_INET6'. */
  restrictAddressFamilies?: string;
  protectClock?: boolean;
  protectKernelModules?: boolean;
  protectKernelLogs?: boolean;
  protectKernelTunables?: boolean;
  protectHostname?: boolean;
  privateDevices?: boolean;
}

/**
 * One systemd directive's seccomp filter: default ALLOW plus these rules. `order` is the position
 * at which systemd 252's exec_child() loads it (src/core/execute.c): a higher order is loaded
 * later and wins among equal actions.
 */
export interface DirectiveFilter {
  directive: string;
  order: number;
  rules: OciSyscall[];
}

const ORDER = {
  ProtectHostname: 1, RestrictAddressFamilies: 2, MemoryDenyWriteExecute: 3, RestrictRealtime: 4,
  RestrictSUIDSGID: 5, RestrictNamespaces: 6, ProtectKernelTunables: 7, ProtectKernelModules: 8,
  ProtectKernelLogs: 9, ProtectClock: 10, PrivateDevices: 11, LockPersonality: 13,
  /** extraRules come after every directive, */
  extra: 20,
  /** and SystemCallFilter= is always last. */
  SystemCallFilter: 100,
} as const;

const errnoRule = (names: string[], errno: number, args?: OciArg[]): OciSyscall =>
  args && args.length ? { names, action: 'SCMP_ACT_ERRNO', errnoRet: errno, args } : { names, action: 'SCMP_ACT_ERRNO', errnoRet: errno };
const masked = (index: number, mask: number, datum: number): OciArg => ({ index, value: mask, valueTwo: datum, op: 'SCMP_CMP_MASKED_EQ' });
const cmp = (index: number, op: OciOp, value: number): OciArg => ({ index, value, op });

/**
 * The argument-filtered (and a few unconditional) rules of each directive, in OCI form, as
 * systemd 252's src/shared/seccomp-util.c builds them for x86_64. Each DirectiveFilter is meant
 * for a filter of its own with default ALLOW; systemCallFilterToProfile() merges them.
 */
export function directiveRules(d: DirectiveOptions): DirectiveFilter[] {
  const EPERM = ERRNO.EPERM;
  const out: DirectiveFilter[] = [];
  const add = (directive: keyof typeof ORDER, label: string, rules: OciSyscall[]): void => {
    out.push({ directive: label, order: ORDER[directive], rules });
  };

  if (d.protectHostname) {
    // seccomp_protect_hostname()
    add('ProtectHostname', 'ProtectHostname=yes', [errnoRule(['sethostname', 'setdomainname'], EPERM)]);
  }

  if (d.restrictAddressFamilies !== undefined) {
    // seccomp_restrict_address_families(): socket() only. socketpair() is not filtered (systemd.exec(5):
    // "sockets created with socketpair() (which creates connected AF_UNIX sockets only) are unaffected").
    const spec = d.restrictAddressFamilies.trim();
    const label = `RestrictAddressFamilies=${spec}`;
    const EAFNOSUPPORT = ERRNO.EAFNOSUPPORT;
    let allowList = true;
    let families: number[] = [];
    if (spec !== 'none') {
      let body = spec;
      if (body.startsWith('~')) {
        allowList = false;
        body = body.slice(1);
      }
      const words = body.split(/\s+/).filter(Boolean);
      if (words.length === 0) throw new Error(`${label}: no address family named`);
      families = words.map((w) => {
        const n = Object.prototype.hasOwnProperty.call(ADDRESS_FAMILIES, w) ? ADDRESS_FAMILIES[w] : undefined;
        if (n === undefined) throw new Error(`${label}: unknown address family ${JSON.stringify(w)}`);
        return n;
      });
    }
    const set = [...new Set(families)].sort((a, b) => a - b);
    const rules: OciSyscall[] = [];
    if (!allowList) {
      for (const af of set) rules.push(errnoRule(['socket'], EAFNOSUPPORT, [cmp(0, 'SCMP_CMP_EQ', af)]));
    } else if (set.length === 0) {
      rules.push(errnoRule(['socket'], EAFNOSUPPORT));
    } else {
      const first = set[0], last = set[set.length - 1];
      rules.push(errnoRule(['socket'], EAFNOSUPPORT, [cmp(0, 'SCMP_CMP_LT', first)]));
      rules.push(errnoRule(['socket'], EAFNOSUPPORT, [cmp(0, 'SCMP_CMP_GT', last)]));
      // systemd adds "== af" for every af in 1..AF_MAX-1 not in the set; those outside [first, last]
      // are already covered by the two rules above and are left out here (same result).
      for (let af = first + 1; af < last && af < AF_MAX; af++) {
        if (!set.includes(af)) rules.push(errnoRule(['socket'], EAFNOSUPPORT, [cmp(0, 'SCMP_CMP_EQ', af)]));
      }
    }
    add('RestrictAddressFamilies', label, rules);
  }

  if (d.memoryDenyWriteExecute) {
    // seccomp_memory_deny_write_execute(), x86_64 branch: mmap is the filtered call, shmat exists.
    add('MemoryDenyWriteExecute', 'MemoryDenyWriteExecute=yes', [
      errnoRule(['mmap'], EPERM, [masked(2, PROT_EXEC | PROT_WRITE, PROT_EXEC | PROT_WRITE)]),
      errnoRule(['mprotect'], EPERM, [masked(2, PROT_EXEC, PROT_EXEC)]),
      errnoRule(['pkey_mprotect'], EPERM, [masked(2, PROT_EXEC, PROT_EXEC)]),
      errnoRule(['shmat'], EPERM, [masked(2, SHM_EXEC, SHM_EXEC)]),
    ]);
  }

  if (d.restrictRealtime) {
    // seccomp_restrict_realtime(): permitted SCHED_OTHER(0), SCHED_BATCH(3), SCHED_IDLE(5); every
    // other policy below 5 refused, and everything above 5 (SCHED_DEADLINE, SCHED_RESET_ON_FORK...).
    const permitted = [0, 3, 5];
    const max = Math.max(...permitted);
    const rules: OciSyscall[] = [];
    for (let p = 0; p < max; p++) {
      if (!permitted.includes(p)) rules.push(errnoRule(['sched_setscheduler'], EPERM, [cmp(1, 'SCMP_CMP_EQ', p)]));
    }
    rules.push(errnoRule(['sched_setscheduler'], EPERM, [cmp(1, 'SCMP_CMP_GT', max)]));
    add('RestrictRealtime', 'RestrictRealtime=yes', rules);
  }

  if (d.restrictSUIDSGID) {
    // seccomp_restrict_suid_sgid(): seccomp_restrict_sxid() once for S_ISUID, once for S_ISGID.
    const rules: OciSyscall[] = [];
    for (const m of [S_ISUID, S_ISGID]) {
      rules.push(
        errnoRule(['chmod'], EPERM, [masked(1, m, m)]),
        errnoRule(['fchmod'], EPERM, [masked(1, m, m)]),
        errnoRule(['fchmodat'], EPERM, [masked(2, m, m)]),
        // fchmodat2: systemd >= v252.23 built against a libseccomp that knows it; with one that does
        // not (Debian: 2.5.4) systemd answers it ENOSYS by raw number. The launcher skips names
        // libseccomp does not know, which leaves fchmodat2 to the default action.
        errnoRule(['fchmodat2'], EPERM, [masked(2, m, m)]),
        errnoRule(['mkdir'], EPERM, [masked(1, m, m)]),
        errnoRule(['mkdirat'], EPERM, [masked(2, m, m)]),
        errnoRule(['mknod'], EPERM, [masked(1, m, m)]),
        errnoRule(['mknodat'], EPERM, [masked(2, m, m)]),
        errnoRule(['open'], EPERM, [masked(1, O_CREAT, O_CREAT), masked(2, m, m)]),
        errnoRule(['openat'], EPERM, [masked(2, O_CREAT, O_CREAT), masked(3, m, m)]),
        // openat2's flags are behind a pointer: refused with ENOSYS so callers fall back to openat.
        errnoRule(['openat2'], ERRNO.ENOSYS),
        errnoRule(['creat'], EPERM, [masked(1, m, m)]),
      );
    }
    add('RestrictSUIDSGID', 'RestrictSUIDSGID=yes', rules);
  }

  if (d.restrictNamespaces !== undefined && d.restrictNamespaces !== false) {
    // seccomp_restrict_namespaces(retain)
    const retained = d.restrictNamespaces === true ? [] : d.restrictNamespaces;
    let retain = 0;
    for (const n of retained) {
      const f = Object.prototype.hasOwnProperty.call(NAMESPACE_FLAGS, n) ? NAMESPACE_FLAGS[n] : undefined;
      if (f === undefined) throw new Error(`RestrictNamespaces=: unknown namespace type ${JSON.stringify(n)}`);
      retain |= f;
    }
    const label = d.restrictNamespaces === true ? 'RestrictNamespaces=yes' : `RestrictNamespaces=${retained.join(' ')}`;
    if ((retain & NAMESPACE_FLAGS_ALL) !== NAMESPACE_FLAGS_ALL) {
      // clone3's flags live in a struct seccomp cannot read: ENOSYS makes glibc fall back to clone().
      const rules: OciSyscall[] = [errnoRule(['clone3'], ERRNO.ENOSYS)];
      if ((retain & NAMESPACE_FLAGS_ALL) === 0) rules.push(errnoRule(['setns'], EPERM));
      else rules.push(errnoRule(['setns'], EPERM, [cmp(1, 'SCMP_CMP_EQ', 0)]));
      for (const f of Object.values(NAMESPACE_FLAGS)) {
        if ((retain & f) === f) continue;
        rules.push(errnoRule(['unshare'], EPERM, [masked(0, f, f)]));
        rules.push(errnoRule(['clone'], EPERM, [masked(0, f, f)]));
        if ((retain & NAMESPACE_FLAGS_ALL) !== 0) rules.push(errnoRule(['setns'], EPERM, [masked(1, f, f)]));
      }
      add('RestrictNamespaces', label, rules);
    }
  }

  if (d.protectKernelTunables) {
    // seccomp_protect_sysctl()
    add('ProtectKernelTunables', 'ProtectKernelTunables=yes', [errnoRule(['_sysctl'], EPERM)]);
  }
  if (d.protectKernelModules) {
    add('ProtectKernelModules', 'ProtectKernelModules=yes', [errnoRule(expandGroup('@module'), EPERM)]);
  }
  if (d.protectKernelLogs) {
    // seccomp_protect_syslog()
    add('ProtectKernelLogs', 'ProtectKernelLogs=yes', [errnoRule(['syslog'], EPERM)]);
  }
  if (d.protectClock) {
    add('ProtectClock', 'ProtectClock=yes', [errnoRule(expandGroup('@clock'), EPERM)]);
  }
  if (d.privateDevices) {
    add('PrivateDevices', 'PrivateDevices=yes', [errnoRule(expandGroup('@raw-io'), EPERM)]);
  }
  if (d.lockPersonality) {
    // seccomp_lock_personality(PER_LINUX): every other value is refused, the query value
    // 0xffffffff included (systemd 252 compares with != only).
    add('LockPersonality', 'LockPersonality=yes', [errnoRule(['personality'], EPERM, [cmp(0, 'SCMP_CMP_NE', PER_LINUX)])]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// SystemCallFilter= (systemd 252: config_parse_syscall_filter + seccomp_parse_syscall_filter)

/** A syscall's entry in the filter map: -1 = the filter's own action, 'kill', or an errno. */
type FilterValue = number | 'kill';

export interface ParsedSystemCallFilter {
  /** true: allow-list (default action = the error), false: deny-list (default allow). */
  allowList: boolean;
  /** Syscall name -> -1 (allow in an allow-list / SystemCallErrorNumber= in a deny-list), an errno, or 'kill'. */
  entries: Map<string, FilterValue>;
}

function parseErrnoOrKill(s: string): FilterValue {
  if (s === 'kill') return 'kill';
  return errnoNumber(s);
}

/**
 * systemd's parsing of SystemCallFilter= lines, in order. The first non-empty line decides the
 * mode: without `~` an allow-list (which starts with @default), with `~` a deny-list. Later lines
 * add to or remove from the set: in an allow-list a plain line adds, a `~` line removes (or, for
 * `name:ERRNO`, makes that call fail with ERRNO); in a deny-list a `~` line adds (with its own
 * errno if given) and a plain line removes. An empty line resets everything. Unknown groups and
 * malformed words are ignored by systemd with a warning: `onWarning` gets them; without it they
 * are errors.
 */
export function parseSystemCallFilter(lines: string[], onWarning?: (msg: string) => void): ParsedSystemCallFilter {
  const warn = (msg: string): void => {
    if (onWarning) onWarning(msg);
    else throw new Error(msg);
  };
  let entries: Map<string, FilterValue> | undefined;
  let allowList = false;

  const apply = (name: string, errno: FilterValue | -1, invert: boolean): void => {
    if (!entries) throw new Error('unreachable');
    if (name.startsWith('@')) {
      if (!isGroup(name)) {
        warn(`SystemCallFilter=: unknown system call group, ignoring: ${name}`);
        return;
      }
      for (const n of expandGroup(name)) apply(n, errno, invert);
      return;
    }
    if (!SYSCALL_NAME.test(name)) {
      warn(`SystemCallFilter=: invalid system call name, ignoring: ${name}`);
      return;
    }
    if (!invert === allowList || (invert && allowList && errno !== -1)) entries.set(name, errno);
    else entries.delete(name);
  };

  for (const raw of lines) {
    let line = raw.trim();
    if (line === '') {
      entries = undefined;
      allowList = false;
      continue;
    }
    let invert = false;
    if (line.startsWith('~')) {
      invert = true;
      line = line.slice(1);
    }
    if (!entries) {
      entries = new Map();
      allowList = !invert;
      if (allowList) for (const n of expandGroup('@default')) entries.set(n, -1);
    }
    for (const word of line.split(/\s+/).filter(Boolean)) {
      const colon = word.indexOf(':');
      const name = colon < 0 ? word : word.slice(0, colon);
      let errno: FilterValue | -1 = -1;
      if (colon >= 0) {
        try {
          errno = parseErrnoOrKill(word.slice(colon + 1));
        } catch (e) {
          warn(`SystemCallFilter=: failed to parse syscall:errno, ignoring: ${word}`);
          continue;
        }
      }
      if (!invert && errno !== -1) {
        warn(`SystemCallFilter=: allow-listed system calls cannot take error number, ignoring: ${word}`);
        continue;
      }
      apply(name, errno, invert);
    }
  }
  return { allowList, entries: entries ?? new Map() };
}

// ---------------------------------------------------------------------------------------------
// Conditions: conjunctions of per-argument constraints, with negation, for merging filters

const U64_MAX = (1n << 64n) - 1n;
type Interval = readonly [bigint, bigint];
type Constraint = { kind: 'mask'; mask: bigint; datum: bigint } | { kind: 'set'; iv: Interval[] };
/** A conjunction: argument index -> constraint. An empty map is TRUE. */
type Conj = Map<number, Constraint>;
/** A disjunction of conjunctions. [] is FALSE. */
type Dnf = Conj[];

function normIv(iv: Interval[]): Interval[] {
  const s = iv.filter(([a, b]) => a <= b).sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  const out: [bigint, bigint][] = [];
  for (const [a, b] of s) {
    const last = out[out.length - 1];
    if (last && a <= last[1] + 1n) {
      if (b > last[1]) last[1] = b;
    } else out.push([a, b]);
  }
  return out;
}
function ivIntersect(x: Interval[], y: Interval[]): Interval[] {
  const out: Interval[] = [];
  for (const [a, b] of x) for (const [c, d] of y) {
    const lo = a > c ? a : c, hi = b < d ? b : d;
    if (lo <= hi) out.push([lo, hi]);
  }
  return normIv(out);
}
function ivComplement(x: Interval[]): Interval[] {
  const out: Interval[] = [];
  let next = 0n;
  for (const [a, b] of normIv(x)) {
    if (a > next) out.push([next, a - 1n]);
    next = b + 1n;
  }
  if (next <= U64_MAX) out.push([next, U64_MAX]);
  return out;
}
const ivSize = (x: Interval[]): bigint => x.reduce((s, [a, b]) => s + (b - a + 1n), 0n);

function argToConstraint(a: OciArg): Constraint {
  const v = BigInt(a.value);
  switch (a.op) {
    case 'SCMP_CMP_EQ': return { kind: 'set', iv: [[v, v]] };
    case 'SCMP_CMP_NE': return { kind: 'set', iv: ivComplement([[v, v]]) };
    case 'SCMP_CMP_LT': return { kind: 'set', iv: v === 0n ? [] : [[0n, v - 1n]] };
    case 'SCMP_CMP_LE': return { kind: 'set', iv: [[0n, v]] };
    case 'SCMP_CMP_GT': return { kind: 'set', iv: v === U64_MAX ? [] : [[v + 1n, U64_MAX]] };
    case 'SCMP_CMP_GE': return { kind: 'set', iv: [[v, U64_MAX]] };
    case 'SCMP_CMP_MASKED_EQ': return { kind: 'mask', mask: v, datum: BigInt(a.valueTwo ?? 0) };
  }
}

type MaskC = Extract<Constraint, { kind: 'mask' }>;

/** (arg & m.mask) == m.datum and arg != v, as a union of masked comparisons. */
function maskAndNot(m: MaskC, v: bigint): MaskC[] {
  if ((v & m.mask) !== m.datum) return [m]; // v is already excluded by the mask
  // arg != v  <=>  some bit outside the mask differs from v's bit
  const out: MaskC[] = [];
  for (let b = 0n; b < 64n; b++) {
    const bit = 1n << b;
    if (!(m.mask & bit)) out.push({ kind: 'mask', mask: m.mask | bit, datum: m.datum | ((v & bit) ^ bit) });
  }
  return out;
}

/** Conjunction of two constraints on one argument, as a union (empty = unsatisfiable). */
function andConstraint(x: Constraint, y: Constraint): Constraint[] {
  if (x.kind === 'mask' && y.kind === 'mask') {
    if ((x.datum & ~x.mask) !== 0n || (y.datum & ~y.mask) !== 0n) return [];
    const common = x.mask & y.mask;
    if ((x.datum & common) !== (y.datum & common)) return [];
    return [{ kind: 'mask', mask: x.mask | y.mask, datum: x.datum | y.datum }];
  }
  if (x.kind === 'set' && y.kind === 'set') {
    const iv = ivIntersect(x.iv, y.iv);
    return iv.length ? [{ kind: 'set', iv }] : [];
  }
  const m = (x.kind === 'mask' ? x : y) as MaskC;
  const s = (x.kind === 'set' ? x : y) as Extract<Constraint, { kind: 'set' }>;
  if ((m.datum & ~m.mask) !== 0n) return [];
  if (ivSize(s.iv) <= 64n) {
    // a few values: keep those the mask lets through
    const vals: Interval[] = [];
    for (const [a, b] of s.iv) for (let v = a; v <= b; v++) if ((v & m.mask) === m.datum) vals.push([v, v]);
    return vals.length ? [{ kind: 'set', iv: normIv(vals) }] : [];
  }
  const excluded = ivComplement(s.iv);
  if (ivSize(excluded) <= 64n) {
    // all but a few values: the mask, minus each excluded value
    let parts: MaskC[] = [m];
    for (const [a, b] of excluded) {
      for (let v = a; v <= b; v++) {
        parts = parts.flatMap((p) => maskAndNot(p, v));
        if (parts.length > 1024) throw new Error('argument condition too complex for libseccomp rules');
      }
    }
    return parts;
  }
  throw new Error('cannot combine a masked comparison with a large value range on one argument');
}

function andConj(x: Conj, y: Conj): Conj[] {
  let out: Conj[] = [new Map(x)];
  for (const [i, c] of y) {
    out = out.flatMap((conj) => {
      const prev = conj.get(i);
      const merged = prev ? andConstraint(prev, c) : [c];
      return merged.map((k) => new Map(conj).set(i, k));
    });
    if (!out.length) return [];
  }
  return out;
}

function andDnf(x: Dnf, y: Dnf): Dnf {
  const out: Dnf = [];
  for (const a of x) for (const b of y) out.push(...andConj(a, b));
  return simplify(out);
}

function notConstraint(i: number, c: Constraint): Dnf {
  if (c.kind === 'set') {
    const iv = ivComplement(c.iv);
    return iv.length ? [new Map([[i, { kind: 'set', iv }]])] : [];
  }
  // not ((arg & mask) == datum)  <=>  some bit of the mask differs from the datum's bit
  const out: Dnf = [];
  for (let b = 0n; b < 64n; b++) {
    const bit = 1n << b;
    if (c.mask & bit) out.push(new Map([[i, { kind: 'mask', mask: bit, datum: (c.datum & bit) ^ bit }]]));
  }
  if ((c.datum & ~c.mask) !== 0n) return [new Map()]; // the comparison never matched: its negation is TRUE
  return out;
}

function notConj(c: Conj): Dnf {
  const out: Dnf = [];
  for (const [i, k] of c) out.push(...notConstraint(i, k));
  return simplify(out);
}

function implies(a: Constraint, b: Constraint): boolean {
  if (a.kind === 'mask' && b.kind === 'mask') return (b.mask & ~a.mask) === 0n && (a.datum & b.mask) === b.datum;
  if (a.kind === 'set' && b.kind === 'set') return ivSize(ivIntersect(a.iv, b.iv)) === ivSize(a.iv);
  return false;
}
/** a ⊆ b: every constraint of b is implied by a's constraint on that argument. */
function conjSubset(a: Conj, b: Conj): boolean {
  for (const [i, cb] of b) {
    const ca = a.get(i);
    if (!ca || !implies(ca, cb)) return false;
  }
  return true;
}
/** Drops conjunctions contained in another one (and duplicates). */
function simplify(d: Dnf): Dnf {
  const out: Dnf = [];
  d.forEach((c, i) => {
    const absorbed = d.some((o, j) => j !== i && conjSubset(c, o) && (!conjSubset(o, c) || j < i));
    if (!absorbed) out.push(c);
  });
  return out;
}

class UnrepresentableValue extends Error {}
function toSafe(v: bigint): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new UnrepresentableValue(`comparison value ${v} does not fit the profile's JSON numbers`);
  return Number(v);
}

/** A conjunction as OCI comparisons; a multi-interval constraint splits it into several rules. */
function conjToArgs(c: Conj): OciArg[][] {
  let alts: OciArg[][] = [[]];
  for (const i of [...c.keys()].sort((a, b) => a - b)) {
    const k = c.get(i)!;
    let choices: OciArg[];
    if (k.kind === 'mask') {
      choices = [masked(i, toSafe(k.mask), toSafe(k.datum))];
    } else {
      const iv = normIv(k.iv);
      if (iv.length === 1 && iv[0][0] === 0n && iv[0][1] === U64_MAX) continue;
      if (iv.length === 2 && iv[0][0] === 0n && iv[1][1] === U64_MAX && iv[1][0] - iv[0][1] === 2n) {
        choices = [cmp(i, 'SCMP_CMP_NE', toSafe(iv[0][1] + 1n))];
      } else {
        choices = [];
        for (const [a, b] of iv) {
          if (a === b) choices.push(cmp(i, 'SCMP_CMP_EQ', toSafe(a)));
          else if (a === 0n) choices.push(cmp(i, 'SCMP_CMP_LE', toSafe(b)));
          else if (b === U64_MAX) choices.push(cmp(i, 'SCMP_CMP_GE', toSafe(a)));
          else if (b - a < 16n) for (let v = a; v <= b; v++) choices.push(cmp(i, 'SCMP_CMP_EQ', toSafe(v)));
          else throw new Error(`argument ${i}: the range ${a}..${b} needs two comparisons of one argument`);
        }
      }
    }
    alts = alts.flatMap((prefix) => choices.map((ch) => [...prefix, ch]));
  }
  return alts;
}

/** The condition of an OCI rule as a DNF (duplicate argument indexes are ANDed here). */
function ruleDnf(args: OciArg[] | undefined): Dnf {
  let d: Dnf = [new Map()];
  for (const a of args ?? []) d = andDnf(d, [new Map([[a.index, argToConstraint(a)]])]);
  return d;
}

// ---------------------------------------------------------------------------------------------
// Merging: SystemCallFilter= + directive filters -> one profile

/** Kernel precedence of a seccomp action (higher wins). */
function precedence(a: OciAction): number {
  switch (a) {
    case 'SCMP_ACT_KILL_PROCESS': return 8;
    case 'SCMP_ACT_KILL': case 'SCMP_ACT_KILL_THREAD': return 7;
    case 'SCMP_ACT_TRAP': return 6;
    case 'SCMP_ACT_ERRNO': return 5;
    case 'SCMP_ACT_NOTIFY': return 4;
    case 'SCMP_ACT_TRACE': return 3;
    case 'SCMP_ACT_LOG': return 2;
    case 'SCMP_ACT_ALLOW': return 1;
  }
}

interface Outcome { action: OciAction; errnoRet?: number }
const outcomeKey = (o: Outcome): string => (o.action === 'SCMP_ACT_ERRNO' || o.action === 'SCMP_ACT_TRACE' ? `${o.action}:${o.errnoRet ?? ERRNO.EPERM}` : o.action === 'SCMP_ACT_KILL' ? 'SCMP_ACT_KILL_THREAD' : o.action);

export interface FilterToProfileOptions {
  /** SystemCallFilter= lines, in order (e.g. ['@system-service', '~@privileged @resources', 'mbind']). */
  filter: string[];
  /** SystemCallErrorNumber=: an errno name or number (1..4095), or 'kill' (systemd's default). */
  errorNumber?: string | number;
  /** SystemCallArchitectures=: 'native' (the default) or OCI/libseccomp architecture names. */
  architectures?: 'native' | string[];
  /** The directives whose seccomp rules systemd adds (see directiveRules()). */
  directives?: DirectiveOptions;
  /** More rules (not ALLOW), treated like one more directive filter loaded after the directives. */
  extraRules?: OciSyscall[];
  /** Receives what systemd would ignore with a warning; without it such input is an error. */
  onWarning?: (msg: string) => void;
}

/**
 * Builds the single OCI profile whose result for every syscall equals what systemd 252 would
 * enforce with the same SystemCallFilter=, SystemCallErrorNumber=, SystemCallArchitectures= and
 * directives (its several filters combined by the kernel's precedence rules).
 */
export function systemCallFilterToProfile(opts: FilterToProfileOptions): OciProfile {
  const parsed = parseSystemCallFilter(opts.filter, opts.onWarning);
  // SystemCallErrorNumber=: unset, empty or 'kill' = kill the process (systemd's default); 0 is refused.
  const err = opts.errorNumber ?? 'kill';
  let negative: Outcome;
  if (err === 'kill' || err === '') negative = { action: 'SCMP_ACT_KILL_PROCESS' };
  else {
    const n = errnoNumber(err);
    if (n === 0) throw new Error('SystemCallErrorNumber=0 is invalid (systemd refuses it)');
    negative = { action: 'SCMP_ACT_ERRNO', errnoRet: n };
  }
  const allow: Outcome = { action: 'SCMP_ACT_ALLOW' };
  const hasFilter = parsed.entries.size > 0 || parsed.allowList;
  const defaultOutcome = parsed.allowList ? negative : allow;

  const filterOutcome = (name: string): Outcome => {
    const v = parsed.entries.get(name);
    if (v === undefined) return parsed.allowList ? negative : allow;
    if (v === 'kill') return { action: 'SCMP_ACT_KILL_PROCESS' };
    if (v === -1) return parsed.allowList ? allow : negative;
    return { action: 'SCMP_ACT_ERRNO', errnoRet: v };
  };

  // Every directive filter, plus extraRules as one more.
  const filters = directiveRules(opts.directives ?? {});
  if (opts.extraRules?.length) {
    for (const r of opts.extraRules) {
      if (r.action === 'SCMP_ACT_ALLOW') throw new Error('extraRules: ALLOW rules cannot be merged (a filter with default ALLOW cannot allow more)');
    }
    filters.push({ directive: 'extra rules', order: ORDER.extra, rules: opts.extraRules });
  }

  type Cand = { outcome: Outcome; dnf: Dnf; order: number; label: string; args?: OciArg[] };
  const cands = new Map<string, Cand[]>();
  for (const f of filters) {
    for (const r of f.rules) {
      for (const name of r.names) {
        const list = cands.get(name) ?? [];
        list.push({ outcome: { action: r.action, errnoRet: r.errnoRet }, dnf: ruleDnf(r.args), order: f.order, label: f.directive, args: r.args });
        cands.set(name, list);
      }
    }
  }

  type Emit = { outcome: Outcome; args: OciArg[]; comment: string; sortKey: string };
  const emitted = new Map<string, { e: Emit; names: Set<string> }>();
  const emit = (name: string, e: Emit): void => {
    const key = JSON.stringify([outcomeKey(e.outcome), e.args, e.comment]);
    const cur = emitted.get(key);
    if (cur) cur.names.add(name);
    else emitted.set(key, { e, names: new Set([name]) });
  };

  const filterLabel = 'SystemCallFilter=';
  const allowedComment = `allowed by SystemCallFilter= ${opts.filter.map((l) => JSON.stringify(l)).join(', ')} (systemd 252 semantics and groups)`;
  const names = new Set<string>([...parsed.entries.keys(), ...cands.keys()]);
  for (const name of [...names].sort()) {
    const fo = filterOutcome(name);
    const list: Cand[] = [
      ...(cands.get(name) ?? []),
      ...(hasFilter ? [{ outcome: fo, dnf: [new Map()] as Dnf, order: ORDER.SystemCallFilter, label: filterLabel }] : []),
    ];
    // Kernel: the highest-precedence result of all filters; among equal actions the newest filter.
    list.sort((a, b) => precedence(b.outcome.action) - precedence(a.outcome.action) || b.order - a.order);
    // First match wins; what no rule matches is ALLOW (each directive filter's default).
    list.push({ outcome: allow, dnf: [new Map()], order: -1, label: '' });
    // A rule's effective condition: its own, minus what an earlier rule with another result
    // takes. Rules with the same result need not exclude each other (their union is what counts);
    // a rule nothing earlier overlaps keeps its comparisons as written (verbatim).
    type Out = { outcome: Outcome; dnf: Dnf; verbatim: OciArg[][]; labels: Set<string> };
    const byOutcome = new Map<string, Out>();
    const negations: { key: string; neg: Dnf }[] = [];
    for (const c of list) {
      const k = outcomeKey(c.outcome);
      const others = negations.filter((n) => n.key !== k);
      let eff = c.dnf;
      for (const n of others) {
        if (eff.length === 0) break;
        eff = andDnf(eff, n.neg);
      }
      if (eff.length) {
        const cur = byOutcome.get(k) ?? { outcome: c.outcome, dnf: [], verbatim: [], labels: new Set<string>() };
        if (others.length === 0 && c.args !== undefined && c.args.length > 0) cur.verbatim.push(c.args);
        else cur.dnf = simplify([...cur.dnf, ...eff]);
        if (c.label) cur.labels.add(c.label);
        byOutcome.set(k, cur);
      }
      let neg: Dnf = [new Map()];
      for (const conj of c.dnf) neg = andDnf(neg, notConj(conj));
      negations.push({ key: k, neg });
      if (neg.length === 0) break; // an unconditional rule: nothing after it can match
    }
    const conditional = [...byOutcome.values()].some((o) => o.verbatim.length > 0 || !(o.dnf.length === 1 && o.dnf[0].size === 0));
    const directiveLabels = [...byOutcome.values()].flatMap((o) => [...o.labels]).filter((l) => l !== filterLabel);
    for (const [k, o] of byOutcome) {
      if (k === outcomeKey(defaultOutcome)) continue;
      const labels = [...o.labels].filter((l) => l !== filterLabel);
      let comment: string;
      if (!conditional) {
        comment = labels.length ? labels.join(', ') : o.outcome.action === 'SCMP_ACT_ALLOW' ? allowedComment : 'SystemCallFilter= refuses';
      } else if (o.outcome.action === 'SCMP_ACT_ALLOW') {
        comment = `allowed by SystemCallFilter= except where ${[...new Set(directiveLabels)].join(', ')} refuses`;
      } else {
        comment = labels.join(', ') || 'SystemCallFilter=';
      }
      // Output order: plain allows first, then other unconditional results, then conditional ones,
      // each by the systemd order of the directive behind it.
      const directiveOrder = Math.min(...list.filter((c) => c.label && c.label !== filterLabel).map((c) => c.order), ORDER.SystemCallFilter);
      const ownOrder = Math.min(...list.filter((c) => o.labels.has(c.label)).map((c) => c.order), ORDER.SystemCallFilter);
      const sortKey = conditional
        ? `2:${String(directiveOrder).padStart(3, '0')}`
        : o.outcome.action === 'SCMP_ACT_ALLOW' ? '0:000' : `1:${String(ownOrder).padStart(3, '0')}`;
      for (const args of o.verbatim) emit(name, { outcome: o.outcome, args, comment, sortKey });
      for (const conj of o.dnf) {
        let alts: OciArg[][];
        try {
          alts = conjToArgs(conj);
        } catch (e) {
          // A condition that needs values above 2^53 (JSON numbers here are exact only below):
          // leaving an ALLOW part out only makes those calls take the default action (stricter,
          // and only for argument values no libc passes, e.g. setns() nstype bits 53-63 when
          // RestrictNamespaces= keeps some kinds). Anything else would loosen the policy: refuse.
          if (e instanceof UnrepresentableValue && o.outcome.action === 'SCMP_ACT_ALLOW' && parsed.allowList) continue;
          throw e;
        }
        for (const args of alts) emit(name, { outcome: o.outcome, args, comment, sortKey });
      }
    }
  }

  const entries = [...emitted.values()].map(({ e, names: n }) => ({ e, names: [...n].sort() }));
  const strcmp = (x: string, y: string): number => (x < y ? -1 : x > y ? 1 : 0);
  entries.sort((a, b) =>
    strcmp(a.e.sortKey, b.e.sortKey) ||
    precedence(b.e.outcome.action) - precedence(a.e.outcome.action) ||
    strcmp(a.e.comment, b.e.comment) ||
    strcmp(a.names[0], b.names[0]) ||
    strcmp(JSON.stringify(a.e.args), JSON.stringify(b.e.args)));

  const profile: OciProfile = { defaultAction: defaultOutcome.action };
  if (defaultOutcome.errnoRet !== undefined) profile.defaultErrnoRet = defaultOutcome.errnoRet;
  const arches = opts.architectures ?? 'native';
  if (arches !== 'native') profile.architectures = arches.map(toOciArch);
  profile.syscalls = entries.map(({ e, names: n }) => {
    const s: OciSyscall = { names: n, action: e.outcome.action };
    if (e.outcome.action === 'SCMP_ACT_ERRNO' || e.outcome.action === 'SCMP_ACT_TRACE') s.errnoRet = e.outcome.errnoRet ?? ERRNO.EPERM;
    if (e.args.length) s.args = e.args;
    s.comment = e.comment;
    return s;
  });
  return profile;
}

/** 'x86_64' or 'SCMP_ARCH_X86_64' -> 'SCMP_ARCH_X86_64'. */
export function toOciArch(name: string): string {
  if (Object.prototype.hasOwnProperty.call(OCI_ARCHES, name)) return name;
  const hit = Object.entries(OCI_ARCHES).find(([, v]) => v === name);
  if (!hit) throw new Error(`unknown architecture ${JSON.stringify(name)}`);
  return hit[0];
}

// ---------------------------------------------------------------------------------------------
// Profile -> launcher records

const RECORD_ACTION: Record<OciAction, string | undefined> = {
  SCMP_ACT_ALLOW: 'allow', SCMP_ACT_ERRNO: 'errno', SCMP_ACT_KILL_PROCESS: 'kill_process',
  SCMP_ACT_KILL_THREAD: 'kill_thread', SCMP_ACT_KILL: 'kill_thread', SCMP_ACT_TRAP: 'trap',
  SCMP_ACT_LOG: 'log', SCMP_ACT_TRACE: undefined, SCMP_ACT_NOTIFY: undefined,
};
const RECORD_OP: Record<OciOp, string> = {
  SCMP_CMP_NE: 'ne', SCMP_CMP_LT: 'lt', SCMP_CMP_LE: 'le', SCMP_CMP_EQ: 'eq', SCMP_CMP_GE: 'ge',
  SCMP_CMP_GT: 'gt', SCMP_CMP_MASKED_EQ: 'masked_eq',
};

/**
 * The launcher's records for a profile (docs/launcher.md):
 *   seccomp_default ACTION [ERRNO]
 *   seccomp_arch NAME                      ('native' when the profile names none)
 *   seccomp_rule ACTION ERRNO NAME [IDX:OP:VALUE[:VALUE2]]...   (one per name; ERRNO 0 unless errno)
 * Mapping, as runc does it: OCI `value` -> libseccomp datum_a, `valueTwo` -> datum_b; for
 * SCMP_CMP_MASKED_EQ that is `(arg & value) == valueTwo`, written `IDX:masked_eq:value:valueTwo`.
 * Values are decimal. SCMP_ACT_KILL is libseccomp's KILL = kill_thread. A rule that compares one
 * argument more than once is split into one rule per comparison, as runc does. The native
 * architecture is always in the filter (libseccomp's default), also when others are listed.
 * Refused (Error): SCMP_ACT_TRACE / SCMP_ACT_NOTIFY, flags, listenerPath.
 */
export function profileToSpecRecords(p: OciProfile): string[][] {
  const recs: string[][] = [];
  const act = (a: OciAction, where: string): string => {
    const r = RECORD_ACTION[a];
    if (!r) throw new Error(`${where}: action ${a} is not supported by the launcher`);
    return r;
  };
  if (p.flags?.length) throw new Error(`seccomp flags (${p.flags.join(', ')}) are not supported by the launcher`);
  if (p.listenerPath !== undefined) throw new Error('listenerPath is not supported by the launcher');
  const def = act(p.defaultAction, 'defaultAction');
  recs.push(def === 'errno' ? ['seccomp_default', def, String(p.defaultErrnoRet ?? ERRNO.EPERM)] : ['seccomp_default', def]);
  const arches = p.architectures?.length ? p.architectures.map((a) => OCI_ARCHES[toOciArch(a)]) : ['native'];
  for (const a of [...new Set(arches)]) recs.push(['seccomp_arch', a]);
  (p.syscalls ?? []).forEach((s, i) => {
    const a = act(s.action, `syscalls[${i}]`);
    const errno = a === 'errno' ? String(s.errnoRet ?? ERRNO.EPERM) : '0';
    const args = s.args ?? [];
    const fmt = (x: OciArg): string => {
      if (!Number.isSafeInteger(x.value) || x.value < 0 || (x.valueTwo !== undefined && (!Number.isSafeInteger(x.valueTwo) || x.valueTwo < 0)) || !Number.isInteger(x.index) || x.index < 0 || x.index > 5) {
        throw new Error(`syscalls[${i}]: invalid argument comparison ${JSON.stringify(x)}`);
      }
      const op = RECORD_OP[x.op];
      if (!op) throw new Error(`syscalls[${i}]: unknown op ${String(x.op)}`);
      return x.op === 'SCMP_CMP_MASKED_EQ' ? `${x.index}:${op}:${x.value}:${x.valueTwo ?? 0}` : `${x.index}:${op}:${x.value}`;
    };
    const idx = args.map((x) => x.index);
    const argSets: string[][] = new Set(idx).size === idx.length ? [args.map(fmt)] : args.map((x) => [fmt(x)]);
    for (const name of s.names) {
      if (!SYSCALL_NAME.test(name)) throw new Error(`syscalls[${i}]: invalid syscall name ${JSON.stringify(name)}`);
      for (const set of argSets) recs.push(['seccomp_rule', a, errno, name, ...set]);
    }
  });
  return recs;
}

/** Pretty-printed JSON of a profile, keys in a fixed order, with a trailing newline. */
export function formatProfile(p: OciProfile): string {
  const ordered: Record<string, unknown> = { defaultAction: p.defaultAction };
  if (p.defaultErrnoRet !== undefined) ordered.defaultErrnoRet = p.defaultErrnoRet;
  if (p.architectures) ordered.architectures = p.architectures;
  if (p.flags) ordered.flags = p.flags;
  if (p.listenerPath !== undefined) ordered.listenerPath = p.listenerPath;
  if (p.listenerMetadata !== undefined) ordered.listenerMetadata = p.listenerMetadata;
  if (p.syscalls) {
    ordered.syscalls = p.syscalls.map((s) => {
      const o: Record<string, unknown> = {};
      if (s.comment !== undefined) o.comment = s.comment;
      o.names = s.names;
      o.action = s.action;
      if (s.errnoRet !== undefined) o.errnoRet = s.errnoRet;
      if (s.args) o.args = s.args.map((a) => (a.valueTwo !== undefined ? { index: a.index, value: a.value, valueTwo: a.valueTwo, op: a.op } : { index: a.index, value: a.value, op: a.op }));
      return o;
    });
  }
  return JSON.stringify(ordered, null, 2) + '\n';
}
