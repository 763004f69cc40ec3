// The directives fuse-svcd understands in unit files: how each is parsed, how it is enforced
// (which launcher spec records, docs/launcher.md), and which probe checks prove it
// (test/native/sandbox-probe.c; supervisor/units/security.ts runs them). One table, used by the
// unit loader, by `fuse-svcd security`, by docs/units.md and by the brokered fuse2fs sandbox
// (server/fuse2fs.sandbox, the same directive set).
//
// fuse-svcd's sandbox has a baseline that is always on (own user/mnt/pid/net/ipc/uts/cgroup
// namespaces, a minimal read-only root, a private /dev and /tmp, no capabilities, a dynamic uid).
// A directive that asks for that baseline holds by construction; a directive that asks for LESS
// isolation than the baseline (PrivateNetwork=no, ProtectSystem=full, User=, a capability...)
// cannot be honoured and makes the unit fail to load, naming file:line. Directives that only add
// seccomp rules may be turned off (=no simply adds no rule).
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { RLIMIT_NAMES, type RlimitName } from '../servers.js';
import type { SpecRecord } from '../launch-spec.js';
import { ADDRESS_FAMILIES, ERRNO, NAMESPACE_FLAGS, errnoNumber, parseSystemCallFilter, profileToSpecRecords, systemCallFilterToProfile, toOciArch, type DirectiveOptions, type FilterToProfileOptions } from '../sandbox/seccomp.js';
import { isGroup } from '../sandbox/syscall-groups.js';
import { parseBool, parseUnit, splitWords, type Assignment, type UnitFile, UnitError } from './parser.js';
import { expandSpecifiers } from './specifiers.js';

// ---------------------------------------------------------------------------------------------
// What a [Service] section (or a sandbox fragment) says, after parsing

export type Rlimit = [number | 'infinity', number | 'infinity'];

export type ServiceConfig = {
  file: string;
  /** Every assignment of the file, in order (the security report lists them). */
  assignments: Assignment[];
  execStart?: { path: string; argv: string[]; at: Assignment };
  environment: { text: string; at: Assignment }[];
  workingDirectory?: { text: string; at: Assignment; optional: boolean };
  syslogIdentifier?: { text: string; at: Assignment };
  standardOutput: string;
  standardError: string;
  type: 'simple' | 'exec';
  // The sandbox
  dynamicUser: boolean;
  privateUsers: boolean;
  protectSystem: 'no' | 'strict';
  protectHome: 'no' | 'yes' | 'tmpfs';
  privateTmp: boolean;
  privateDevices: boolean;
  devicePolicy: 'auto' | 'closed' | 'strict';
  privateNetwork: boolean;
  ipAddressDeny: string[];
  protectHostname: boolean;
  privateMounts: boolean;
  protectKernelTunables: boolean;
  protectKernelModules: boolean;
  protectKernelLogs: boolean;
  protectControlGroups: boolean;
  protectClock: boolean;
  protectProc: 'default' | 'invisible' | 'ptraceable' | 'noaccess';
  procSubset: 'all' | 'pid';
  /** undefined = not set; else { allow: true, families } (allow-list; empty = none) or a deny-list. */
  restrictAddressFamilies?: { allow: boolean; families: string[] };
  restrictNamespaces: boolean | string[];
  restrictRealtime: boolean;
  restrictSUIDSGID: boolean;
  lockPersonality: boolean;
  memoryDenyWriteExecute: boolean;
  noNewPrivileges: boolean;
  systemCallFilter: string[];
  systemCallErrorNumber?: string;
  systemCallArchitectures: string[];
  umask: number;
  limits: Partial<Record<RlimitName, Rlimit>>;
  oomScoreAdjust?: number;
  /** Directives that were set explicitly (last assignment of each). */
  set: Map<string, Assignment>;
};

export type SocketConfig = {
  file: string;
  assignments: Assignment[];
  listen: { kind: 'seqpacket' | 'stream'; path: string; at: Assignment }[];
  accept: boolean;
  socketMode: number;
  directoryMode: number;
  socketUser?: string;
  socketGroup?: string;
  removeOnStop: boolean;
  maxConnections: number;
  maxConnectionsPerSource?: number;
  backlog: number;
  set: Map<string, Assignment>;
};

export function defaultService(file: string): ServiceConfig {
  return {
    file, assignments: [], environment: [], standardOutput: 'journal', standardError: 'inherit', type: 'simple',
    dynamicUser: false, privateUsers: false, protectSystem: 'no', protectHome: 'no', privateTmp: false, privateDevices: false,
    devicePolicy: 'auto', privateNetwork: false, ipAddressDeny: [], protectHostname: false, privateMounts: false,
    protectKernelTunables: false, protectKernelModules: false, protectKernelLogs: false, protectControlGroups: false,
    protectClock: false, protectProc: 'default', procSubset: 'all', restrictNamespaces: false, restrictRealtime: false,
    restrictSUIDSGID: false, lockPersonality: false, memoryDenyWriteExecute: false, noNewPrivileges: false,
    systemCallFilter: [], systemCallArchitectures: [], umask: 0o022, limits: {}, set: new Map(),
  };
}

export function defaultSocket(file: string): SocketConfig {
  return { file, assignments: [], listen: [], accept: false, socketMode: 0o666, directoryMode: 0o755, removeOnStop: false, maxConnections: 64, backlog: 4096, set: new Map() };
}

// ---------------------------------------------------------------------------------------------
// Probe evidence (test/native/sandbox-probe.c prints one JSON line per check)

export type Attempt = { check: string; allowed: boolean; errno: string; errno_num: number; detail: string };

export type Evidence = {
  probe: Map<string, Attempt>;
  /** The sandbox uid the instance got, and the range it must come from. */
  uid: number;
  uidRange: [number, number];
  /** Host pids (other than the probe) that run with the sandbox uid. */
  otherPidsWithUid: number[];
  /** /proc/self/ns/* of fuse-svcd, e.g. { net: 'net:[4026531840]' }. */
  hostNs: Record<string, string>;
  hostnameBefore: string;
  hostnameAfter: string;
  /** A file fuse-svcd created in the host's /tmp before the probe ran (PrivateTmp=). */
  tmpMarker: string;
  /** Lines of the probe's output that fuse-svcd logged, tagged with the identifier. */
  taggedLines: string[];
  identifier: string;
  /** fuse-svcd itself has CAP_SYS_RESOURCE (needed to lower oom_score_adj, raise hard limits). */
  hostHasSysResource: boolean;
};

export type Verdict = { holds: boolean | null; evidence: string };

// ---------------------------------------------------------------------------------------------
// The table

export type Section = 'Unit' | 'Service' | 'Socket' | 'Install';
/** sandbox: enforced by the launcher and proven by a probe; exec: how the server is started;
 *  socket: the listening side; lifecycle: accepted, no meaning without systemd's manager. */
export type Kind = 'sandbox' | 'exec' | 'socket' | 'lifecycle';

export type Directive = {
  name: string;
  section: Section;
  kind: Kind;
  /** How fuse-svcd enforces it (docs/units.md). */
  enforce: string;
  /** Probe checks that prove it (docs/units.md, `fuse-svcd security`). */
  probe: string;
  /** Specifiers are resolved in its value. */
  specifiers?: boolean;
  parseService?: (v: string, c: ServiceConfig, a: Assignment) => void;
  parseSocket?: (v: string, c: SocketConfig, a: Assignment) => void;
  verify?: (c: ServiceConfig, e: Evidence) => Verdict;
};

const BASE_DEVICES = ['null', 'zero', 'full', 'random', 'urandom', 'tty'];
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin';

function bool(v: string, name: string): boolean {
  const b = parseBool(v);
  if (b === undefined) throw new Error(`${name}=: expected a boolean, got ${JSON.stringify(v)}`);
  return b;
}
/** A boolean whose `no` fuse-svcd cannot honour: its isolation is always on. */
function baseline(name: string, what: string) {
  return (v: string): true => {
    if (!bool(v, name)) throw new Error(`${name}=${v} is not supported: fuse-svcd always ${what}`);
    return true;
  };
}
function intIn(v: string, name: string, min: number, max: number): number {
  if (!/^-?\d+$/.test(v.trim())) throw new Error(`${name}=: expected an integer, got ${JSON.stringify(v)}`);
  const n = Number(v);
  if (n < min || n > max) throw new Error(`${name}=${v}: out of range ${min}..${max}`);
  return n;
}
function octal(v: string, name: string, max = 0o7777): number {
  if (!/^[0-7]{1,4}$/.test(v)) throw new Error(`${name}=: expected an octal mode, got ${JSON.stringify(v)}`);
  const n = parseInt(v, 8);
  if (n > max) throw new Error(`${name}=${v}: out of range`);
  return n;
}

const p = (check: string, e: Evidence): Attempt | undefined => e.probe.get(check);
const refused = (e: Evidence, ...checks: string[]): { ok: boolean; text: string } => {
  const parts: string[] = [];
  let ok = true;
  for (const c of checks) {
    const a = p(c, e);
    if (!a) {
      ok = false;
      parts.push(`${c}: no probe result`);
    } else if (a.allowed) {
      ok = false;
      parts.push(`${c}: ALLOWED`);
    } else parts.push(`${c}: ${a.errno || 'refused'}${a.detail ? ` (${a.detail})` : ''}`);
  }
  return { ok, text: parts.join('; ') };
};
const nsDiffers = (e: Evidence, ns: string): { ok: boolean; text: string } => {
  const a = p(`ns_${ns}`, e);
  if (!a || !a.allowed) return { ok: false, text: `ns_${ns}: no probe result` };
  const ok = a.detail !== '' && a.detail !== e.hostNs[ns];
  return { ok, text: `${ns} namespace ${a.detail} ${ok ? '!=' : '=='} fuse-svcd's ${e.hostNs[ns] ?? '?'}` };
};
const verdict = (...parts: { ok: boolean; text: string }[]): Verdict => ({ holds: parts.every((x) => x.ok), evidence: parts.map((x) => x.text).join('; ') });
const check = (ok: boolean, text: string) => ({ ok, text });
const detail = (e: Evidence, c: string): string | undefined => (p(c, e)?.allowed ? p(c, e)!.detail.trim() : undefined);
const absentOrEmpty = (e: Evidence, c: string): { ok: boolean; text: string } => {
  const a = p(c, e);
  if (!a) return check(false, `${c}: no probe result`);
  if (!a.allowed) return check(a.errno === 'ENOENT', `${c}: ${a.errno}`);
  return check(a.detail.trim() === '', `${c}: ${a.detail.trim() === '' ? 'empty' : `lists ${a.detail.trim()}`}`);
};

/** Mount points the probe saw, with their ro/rw flag. */
function mounts(e: Evidence): Map<string, string> {
  const m = new Map<string, string>();
  for (const w of (detail(e, 'mounts') ?? '').split(' ').filter(Boolean)) {
    const i = w.lastIndexOf(':');
    m.set(w.slice(0, i), w.slice(i + 1));
  }
  return m;
}

/** Which probe checks try which syscall (for SystemCallFilter=). */
const SYSCALL_CHECKS: Readonly<Record<string, string>> = {
  mount_tmpfs: 'mount', ptrace_attach: 'ptrace', reboot: 'reboot', swapon: 'swapon', setpriority: 'setpriority',
  sched_setaffinity: 'sched_setaffinity', clock_settime: 'clock_settime', init_module: 'init_module', syslog: 'syslog',
};

function limitVerdict(name: RlimitName) {
  return (c: ServiceConfig, e: Evidence): Verdict => {
    const want = c.limits[name];
    const got = detail(e, `limit_${name}`);
    if (!want) return { holds: null, evidence: `limit_${name}: ${got ?? '?'}` };
    const fmt = (x: number | 'infinity') => (x === 'infinity' ? 'inf' : String(x));
    const expect = `${fmt(want[0])} ${fmt(want[1])}`;
    return { holds: got === expect, evidence: `/proc/self/limits: ${got ?? '?'} (asked ${expect})` };
  };
}

const BYTE_LIMITS = new Set<RlimitName>(['AS', 'CORE', 'DATA', 'FSIZE', 'MEMLOCK', 'RSS', 'STACK', 'MSGQUEUE']);
function parseLimitValue(v: string, name: RlimitName, dname: string): number | 'infinity' {
  const s = v.trim();
  if (s === 'infinity') return 'infinity';
  const m = /^(\d+)([KMGTPE]?)$/.exec(s);
  if (!m || (m[2] && !BYTE_LIMITS.has(name))) throw new Error(`${dname}=: invalid value ${JSON.stringify(v)}`);
  const n = Number(m[1]) * 1024 ** ' KMGTPE'.indexOf(m[2] || ' ');
  if (!Number.isSafeInteger(n)) throw new Error(`${dname}=${v}: too large`);
  return n;
}

function limitDirective(name: RlimitName): Directive {
  const dname = `Limit${name}`;
  return {
    name: dname, section: 'Service', kind: 'sandbox',
    enforce: `\`rlimit ${name} SOFT HARD\` (setrlimit before exec; raising a hard limit needs CAP_SYS_RESOURCE, else clamped with a log line)`,
    probe: `limit_${name} (getrlimit inside the sandbox)`,
    parseService: (v, c) => {
      if (v === '') {
        delete c.limits[name];
        return;
      }
      const parts = v.split(':');
      if (parts.length > 2) throw new Error(`${dname}=: expected VALUE or SOFT:HARD`);
      const soft = parseLimitValue(parts[0], name, dname);
      const hard = parts.length === 2 ? parseLimitValue(parts[1], name, dname) : soft;
      if (hard !== 'infinity' && (soft === 'infinity' || soft > hard)) throw new Error(`${dname}=${v}: soft limit above the hard limit`);
      c.limits[name] = [soft, hard];
    },
    verify: limitVerdict(name),
  };
}

/** Known systemd directives fuse-svcd refuses, with the reason (a better message than "unknown"). */
export const REFUSED_DIRECTIVES: Readonly<Record<string, string>> = {
  User: 'services always run under a dynamic uid (DynamicUser=yes)',
  Group: 'services always run under a dynamic gid (DynamicUser=yes)',
  SupplementaryGroups: 'the sandbox has no supplementary groups',
  ExecStartPre: 'only ExecStart= runs', ExecStartPost: 'only ExecStart= runs', ExecStop: 'stopping is a signal to the server',
  ExecStopPost: 'only ExecStart= runs', ExecReload: 'instances are not reloaded', ExecCondition: 'only ExecStart= runs',
  BindPaths: 'the root holds only /usr, /dev, /tmp, /proc and the server binary', BindReadOnlyPaths: 'the root holds only /usr, /dev, /tmp, /proc and the server binary',
  ReadWritePaths: 'the root is read-only except /tmp', ReadOnlyPaths: 'the root is read-only already', InaccessiblePaths: 'only /usr is visible already',
  StateDirectory: 'instances have no persistent state', RuntimeDirectory: 'instances have no runtime directory', CacheDirectory: 'instances have no cache directory',
  LogsDirectory: 'output goes to fuse-svcd\'s log', ConfigurationDirectory: 'the host /etc is not visible',
  DeviceAllow: 'the sandbox /dev holds only the pseudo devices', IPAddressAllow: 'the sandbox has no network interfaces',
  NotifyAccess: 'there is no notification socket', PAMName: 'there is no PAM session', TTYPath: 'services have no terminal',
  RootDirectory: 'the sandbox root is built by fuse-svcd', RootImage: 'the sandbox root is built by fuse-svcd',
  LoadCredential: 'credentials are not supported', SetCredential: 'credentials are not supported',
  Restart: 'each connection runs once; nothing is restarted', EnvironmentFile: 'use Environment=',
  Service: 'the service is always NAME@.service next to NAME.socket',
  PassCredentials: 'not supported', PassSecurity: 'not supported', Symlinks: 'not supported', ListenDatagram: 'only ListenSequentialPacket= and ListenStream= are supported',
  ListenFIFO: 'only ListenSequentialPacket= and ListenStream= are supported', ListenNetlink: 'only AF_UNIX paths are supported',
  ConditionPathExists: 'conditions are not evaluated', AssertPathExists: 'assertions are not evaluated',
};

function lifecycle(name: string, section: Section, what: string): Directive {
  return { name, section, kind: 'lifecycle', enforce: `accepted, no effect: ${what}`, probe: 'n/a' };
}

export const DIRECTIVES: readonly Directive[] = [
  // ---- [Unit], [Install] ----------------------------------------------------------------------
  lifecycle('Description', 'Unit', 'shown in log lines only'),
  lifecycle('Documentation', 'Unit', 'documentation pointer'),
  lifecycle('CollectMode', 'Unit', 'fuse-svcd keeps no failed instances: every instance is forgotten when it ends'),
  lifecycle('DefaultDependencies', 'Unit', 'there is no dependency graph; fuse-svcd listens when it starts'),
  lifecycle('Before', 'Unit', 'ordering against other units has no meaning without systemd'),
  lifecycle('After', 'Unit', 'ordering against other units has no meaning without systemd'),
  lifecycle('Wants', 'Unit', 'dependencies have no meaning without systemd'),
  lifecycle('Requires', 'Unit', 'dependencies have no meaning without systemd'),
  lifecycle('Conflicts', 'Unit', 'dependencies have no meaning without systemd'),
  lifecycle('PartOf', 'Unit', 'dependencies have no meaning without systemd'),
  lifecycle('WantedBy', 'Install', 'installation targets; every unit pair in --units DIR is active'),
  lifecycle('RequiredBy', 'Install', 'installation targets; every unit pair in --units DIR is active'),
  lifecycle('Alias', 'Install', 'installation aliases'),
  lifecycle('Also', 'Install', 'installation hints'),

  // ---- [Socket] -------------------------------------------------------------------------------
  ...(['ListenSequentialPacket', 'ListenStream'] as const).map((name): Directive => ({
    name, section: 'Socket', kind: 'socket', specifiers: true,
    enforce: `an AF_UNIX ${name === 'ListenStream' ? 'SOCK_STREAM' : 'SOCK_SEQPACKET'} socket bound by fuse-svcd (created 0600, then SocketMode=/SocketUser=/SocketGroup=); a stale socket file is replaced, anything else is an error`,
    probe: 'the unit test connects to it',
    parseSocket: (v, c, a) => {
      if (v === '') {
        c.listen = [];
        return;
      }
      if (!v.startsWith('/')) throw new Error(`${name}=${v}: only AF_UNIX socket paths (starting with /) are supported; no IP addresses, ports or abstract sockets`);
      if (Buffer.byteLength(v) > 107) throw new Error(`${name}=: socket path longer than 107 bytes`);
      if (path.normalize(v) !== v) throw new Error(`${name}=${v}: path is not normalized`);
      c.listen.push({ kind: name === 'ListenStream' ? 'stream' : 'seqpacket', path: v, at: a });
    },
  })),
  {
    name: 'Accept', section: 'Socket', kind: 'socket', enforce: 'must be yes: one sandboxed instance per connection (the connection is its fd 3)', probe: 'the unit test: 50 connections, 50 instances',
    parseSocket: (v, c) => {
      c.accept = bool(v, 'Accept');
      if (!c.accept) throw new Error('Accept=no is not supported: fuse-svcd starts one instance per connection (Accept=yes)');
    },
  },
  { name: 'SocketMode', section: 'Socket', kind: 'socket', enforce: 'chmod of the socket file after bind (default 0666)', probe: 'the unit test stats the socket', parseSocket: (v, c) => void (c.socketMode = octal(v, 'SocketMode')) },
  { name: 'DirectoryMode', section: 'Socket', kind: 'socket', enforce: 'mode of parent directories fuse-svcd creates (default 0755)', probe: 'n/a', parseSocket: (v, c) => void (c.directoryMode = octal(v, 'DirectoryMode')) },
  {
    name: 'SocketUser', section: 'Socket', kind: 'socket', specifiers: true, enforce: 'chown of the socket file (name from /etc/passwd or a number)', probe: 'the unit test stats the socket',
    parseSocket: (v, c) => void (c.socketUser = v || undefined),
  },
  {
    name: 'SocketGroup', section: 'Socket', kind: 'socket', specifiers: true, enforce: 'chgrp of the socket file (name from /etc/group or a number)', probe: 'the unit test stats the socket',
    parseSocket: (v, c) => void (c.socketGroup = v || undefined),
  },
  { name: 'RemoveOnStop', section: 'Socket', kind: 'socket', enforce: 'the socket file is unlinked when fuse-svcd stops listening', probe: 'the unit test checks the path after stop', parseSocket: (v, c) => void (c.removeOnStop = bool(v, 'RemoveOnStop')) },
  {
    name: 'MaxConnections', section: 'Socket', kind: 'socket', enforce: 'live instances of the socket at most N (default 64); one more connection is closed at once with one log line', probe: 'the unit test: connection N+1 is refused',
    parseSocket: (v, c) => void (c.maxConnections = intIn(v, 'MaxConnections', 1, 1 << 20)),
  },
  {
    name: 'MaxConnectionsPerSource', section: 'Socket', kind: 'socket', enforce: 'live instances per peer uid (SO_PEERCRED) at most N (default: MaxConnections=); one more is closed at once with one log line', probe: 'the unit test: a second uid still gets in',
    parseSocket: (v, c) => void (c.maxConnectionsPerSource = intIn(v, 'MaxConnectionsPerSource', 1, 1 << 20)),
  },
  { name: 'Backlog', section: 'Socket', kind: 'socket', enforce: 'listen(2) backlog (default 4096)', probe: 'n/a', parseSocket: (v, c) => void (c.backlog = intIn(v, 'Backlog', 1, 1 << 20)) },

  // ---- [Service]: how it runs ------------------------------------------------------------------
  {
    name: 'Type', section: 'Service', kind: 'lifecycle', enforce: 'exec and simple: the instance counts as running once the server was exec\'d (the launcher\'s readiness line); the server stays in the foreground', probe: 'n/a',
    parseService: (v, c) => {
      if (v !== 'exec' && v !== 'simple') throw new Error(`Type=${v} is not supported: only exec and simple (the server runs in the foreground, pid 1 of its pid namespace)`);
      c.type = v;
    },
  },
  {
    name: 'ExecStart', section: 'Service', kind: 'exec', specifiers: true,
    enforce: '`exec` + `arg` records; a binary outside /usr is bound read-only at its own path; prefixes `-` and `@` accepted, `+` `!` `!!` (privileged) refused; $VAR/${VAR} from Environment=',
    probe: 'the unit test runs the server (the security report replaces it with the probe)',
    parseService: (v, c, a) => {
      if (v === '') {
        c.execStart = undefined;
        return;
      }
      if (c.execStart) throw new Error('ExecStart= given twice: Type=exec/simple takes exactly one command (an empty ExecStart= resets)');
      let s = v;
      let argv0Given = false;
      for (;;) {
        if (s.startsWith('-') || s.startsWith(':')) s = s.slice(1);
        else if (s.startsWith('@')) {
          argv0Given = true;
          s = s.slice(1);
        } else if (s.startsWith('+') || s.startsWith('!')) throw new Error('ExecStart= prefixes + ! !! (privileged execution) are not supported');
        else break;
      }
      let words: string[];
      try {
        words = splitWords(s);
      } catch (e) {
        throw new Error(`ExecStart=: ${(e as Error).message}`);
      }
      if (words.length === 0) throw new Error('ExecStart=: no command');
      const prog = words[0];
      if (!prog.startsWith('/')) throw new Error(`ExecStart=: ${prog}: the command must be an absolute path`);
      const argv = argv0Given ? words.slice(1) : words;
      if (argv.length === 0) throw new Error('ExecStart=@: argv[0] missing');
      c.execStart = { path: prog, argv, at: a };
    },
  },
  {
    name: 'Environment', section: 'Service', kind: 'exec', specifiers: true, enforce: '`env` records (nothing else of fuse-svcd\'s environment is passed; PATH defaults to systemd\'s)', probe: 'n/a',
    parseService: (v, c, a) => {
      if (v === '') {
        c.environment = [];
        return;
      }
      let words: string[];
      try {
        words = splitWords(v);
      } catch (e) {
        throw new Error(`Environment=: ${(e as Error).message}`);
      }
      for (const w of words) {
        if (!/^[A-Za-z_][A-Za-z0-9_]*=/.test(w)) throw new Error(`Environment=: ${JSON.stringify(w)} is not NAME=VALUE`);
        c.environment.push({ text: w, at: a });
      }
    },
  },
  {
    name: 'WorkingDirectory', section: 'Service', kind: 'exec', specifiers: true, enforce: '`cwd` record; a directory that is not part of the sandbox root is created empty (read-only) in it', probe: 'cwd',
    parseService: (v, c, a) => {
      if (v === '') {
        c.workingDirectory = undefined;
        return;
      }
      const optional = v.startsWith('-');
      const d = optional ? v.slice(1) : v;
      if (d === '~') throw new Error('WorkingDirectory=~ is not supported: there is no home directory');
      if (!d.startsWith('/') || d.split('/').includes('..')) throw new Error(`WorkingDirectory=${v}: expected an absolute path without ..`);
      c.workingDirectory = { text: d, at: a, optional };
    },
    verify: (c, e) => {
      const want = c.workingDirectory?.text ?? '/';
      const got = detail(e, 'cwd');
      return { holds: got === want, evidence: `getcwd() = ${got ?? '?'}` };
    },
  },
  {
    name: 'SyslogIdentifier', section: 'Service', kind: 'exec', specifiers: true, enforce: 'fuse-svcd reads the server\'s stdout/stderr (through the launcher) and logs each line as `IDENT[PID]: line`', probe: 'the probe\'s own output, as fuse-svcd logged it',
    parseService: (v, c, a) => void (c.syslogIdentifier = v === '' ? undefined : { text: v, at: a }),
    verify: (_c, e) => ({ holds: e.taggedLines.length > 0, evidence: e.taggedLines.length ? `${e.taggedLines.length} lines logged, e.g. "${e.taggedLines[0].slice(0, 100)}"` : `no line logged with ${e.identifier}` }),
  },
  ...(['StandardOutput', 'StandardError'] as const).map((name): Directive => ({
    name, section: 'Service', kind: 'exec', specifiers: true,
    enforce: 'captured by fuse-svcd and logged with SyslogIdentifier= (journal, kmsg, tty, inherit, append:/file:/truncate: PATH all mean fuse-svcd\'s log: there is no journal or /dev/ttyprintk here); null discards',
    probe: 'as SyslogIdentifier=',
    parseService: (v, c) => {
      const ok = /^(inherit|null|tty|journal|kmsg|journal\+console|kmsg\+console|socket)$/.test(v) || /^(file|append|truncate):\//.test(v);
      if (!ok) throw new Error(`${name}=${v}: not supported (fd:NAME and relative paths are not)`);
      if (name === 'StandardOutput') c.standardOutput = v;
      else c.standardError = v;
    },
    verify: (c, e) => {
      const v = name === 'StandardOutput' ? c.standardOutput : c.standardError;
      if (v === 'null') return { holds: null, evidence: 'discarded' };
      return { holds: e.taggedLines.length > 0, evidence: `redirected to fuse-svcd's log: ${e.taggedLines.length} line(s) tagged ${e.identifier}` };
    },
  })),
  lifecycle('OOMPolicy', 'Service', 'there is no control group of several processes to stop; the server is the instance'),
  lifecycle('TimeoutStopSec', 'Service', 'a stop sends SIGTERM to the server, then SIGKILL after 2 s (the launcher)'),
  lifecycle('KillMode', 'Service', 'the whole pid namespace dies with the server (it is pid 1)'),
  lifecycle('KillSignal', 'Service', 'a stop sends SIGTERM'),

  // ---- [Service]: the sandbox ------------------------------------------------------------------
  {
    name: 'DynamicUser', section: 'Service', kind: 'sandbox',
    enforce: '`uid`/`gid` from the broker\'s allocator (range, default 61184-65519; never a host or live uid); the launcher holds RUNDIR/uids/UID.lock for the instance\'s life',
    probe: 'Uid, Gid (seen from inside = host uid, same value under a 1:1 map); no other live process has it',
    parseService: (v, c) => void (c.dynamicUser = baseline('DynamicUser', 'runs services under a dynamic uid')(v)),
    verify: (_c, e) => {
      const u = detail(e, 'Uid');
      const g = detail(e, 'Gid');
      const inRange = e.uid >= e.uidRange[0] && e.uid <= e.uidRange[1] && e.uid !== 0;
      return verdict(
        check(u === `${e.uid} ${e.uid} ${e.uid} ${e.uid}` && g === `${e.uid} ${e.uid} ${e.uid} ${e.uid}`, `Uid ${u}, Gid ${g}; allocated ${e.uid}`),
        check(inRange, `in ${e.uidRange.join('-')}`),
        check(e.otherPidsWithUid.length === 0, e.otherPidsWithUid.length ? `also used by pids ${e.otherPidsWithUid.join(' ')}` : 'no other live process has it'),
      );
    },
  },
  {
    name: 'PrivateUsers', section: 'Service', kind: 'sandbox',
    enforce: 'CLONE_NEWUSER; uid_map/gid_map one line `UID UID 1` written through a /proc/PID dirfd; setgroups deny',
    probe: 'uid_map (one line, root unmapped), setuid_0 refused, ns_user differs',
    parseService: (v, c) => void (c.privateUsers = baseline('PrivateUsers', 'runs services in their own user namespace')(v)),
    verify: (_c, e) => {
      const m = detail(e, 'uid_map') ?? '';
      const lines = m.split(/\s+/).filter(Boolean);
      return verdict(check(lines.length === 3 && lines[0] !== '0' && lines[2] === '1', `uid_map "${m}"`), refused(e, 'setuid_0'), nsDiffers(e, 'user'));
    },
  },
  {
    name: 'ProtectSystem', section: 'Service', kind: 'sandbox',
    enforce: 'a tmpfs root holding /usr (read-only bind), /dev, /tmp, /proc and the server binary; pivot_root; / remounted read-only. Stricter than systemd\'s strict: the rest of the host tree is absent, not read-only',
    probe: 'write_usr, write_etc, write_root refused; mounts: every mount read-only except /tmp, /proc and device nodes',
    parseService: (v, c) => {
      if (v !== 'strict') throw new Error(`ProtectSystem=${v} is not supported: fuse-svcd's root is always read-only (ProtectSystem=strict)`);
      c.protectSystem = 'strict';
    },
    verify: (_c, e) => {
      const m = mounts(e);
      const rw = [...m].filter(([mp, f]) => f === 'rw' && !/^\/(tmp|proc)(\/|$)/.test(mp) && !/^\/dev\/[a-z]+$/.test(mp)).map(([mp]) => mp);
      return verdict(refused(e, 'write_usr', 'write_etc', 'write_root'), check(m.size > 0 && rw.length === 0, m.size === 0 ? 'no mount table' : rw.length ? `writable: ${rw.join(' ')}` : `${m.get('/') === 'ro' ? '/ ro' : '/ ?'}, /usr ${m.get('/usr') ?? 'absent'}; only /tmp, /proc and device nodes writable`));
    },
  },
  {
    name: 'ProtectHome', section: 'Service', kind: 'sandbox', enforce: '/home, /root, /run/user are not in the root', probe: 'ls_home, ls_root_home, ls_run_user absent',
    parseService: (v, c) => {
      if (v === 'tmpfs') c.protectHome = 'tmpfs';
      else if (v === 'read-only') throw new Error('ProtectHome=read-only is not supported: home directories are never visible (ProtectHome=yes)');
      else c.protectHome = baseline('ProtectHome', 'hides home directories')(v) ? 'yes' : 'no';
    },
    verify: (_c, e) => verdict(absentOrEmpty(e, 'ls_home'), absentOrEmpty(e, 'ls_root_home'), absentOrEmpty(e, 'ls_run_user')),
  },
  {
    name: 'PrivateTmp', section: 'Service', kind: 'sandbox', enforce: '`tmp_size`: a fresh size-limited tmpfs on /tmp, /var/tmp -> /tmp', probe: 'tmp_marker (a file fuse-svcd put in the host /tmp) invisible; ls_tmp',
    parseService: (v, c) => void (c.privateTmp = baseline('PrivateTmp', 'gives services a private /tmp')(v)),
    verify: (_c, e) => {
      const a = p('tmp_marker', e);
      return verdict(check(!!a && !a.allowed, a ? (a.allowed ? `${e.tmpMarker} VISIBLE` : `${e.tmpMarker} from the host /tmp: ${a.errno}`) : 'tmp_marker: no probe result'), check(m(e, '/tmp') === 'rw', `/tmp is a private mount (${m(e, '/tmp') ?? 'absent'})`));
    },
  },
  {
    name: 'PrivateDevices', section: 'Service', kind: 'sandbox',
    enforce: '`dev` records: a tmpfs /dev (read-only, noexec) with only null zero full random urandom tty bound from the host; seccomp @raw-io refused (systemd\'s rule)',
    probe: 'ls_dev lists only pseudo devices; open_block, mknod_blk refused',
    parseService: (v, c) => void (c.privateDevices = baseline('PrivateDevices', 'gives services a private /dev')(v)),
    verify: (c, e) => devVerdict(c, e),
  },
  {
    name: 'DevicePolicy', section: 'Service', kind: 'sandbox', enforce: 'auto/closed: the pseudo devices only; strict: no device nodes at all. No cgroup device filter (cgroup v1 host); the nodes are simply absent', probe: 'as PrivateDevices=',
    parseService: (v, c) => {
      if (v !== 'auto' && v !== 'closed' && v !== 'strict') throw new Error(`DevicePolicy=${v}: expected auto, closed or strict`);
      c.devicePolicy = v;
    },
    verify: (c, e) => devVerdict(c, e),
  },
  {
    name: 'PrivateNetwork', section: 'Service', kind: 'sandbox', enforce: 'CLONE_NEWNET: a network namespace with only lo (down)', probe: 'net_dev lists only lo; ns_net differs',
    parseService: (v, c) => void (c.privateNetwork = baseline('PrivateNetwork', 'runs services in a network namespace with only loopback')(v)),
    verify: (_c, e) => verdict(onlyLo(e), nsDiffers(e, 'net')),
  },
  {
    name: 'IPAddressDeny', section: 'Service', kind: 'sandbox', enforce: 'nothing to filter: the network namespace has no interface but lo (IPAddressAllow= is refused)', probe: 'net_dev lists only lo',
    parseService: (v, c) => {
      if (v === '') c.ipAddressDeny = [];
      else c.ipAddressDeny.push(...v.split(/\s+/));
    },
    verify: (_c, e) => verdict(onlyLo(e)),
  },
  {
    name: 'RestrictAddressFamilies', section: 'Service', kind: 'sandbox', enforce: 'seccomp: socket() of other families fails EAFNOSUPPORT (systemd 252\'s rules; socketpair() is not filtered, as in systemd)', probe: 'socket_inet, socket_inet6, socket_netlink, socket_unix',
    parseService: (v, c) => {
      if (v === '') {
        c.restrictAddressFamilies = undefined;
        return;
      }
      if (v === 'none') {
        c.restrictAddressFamilies = { allow: true, families: [] };
        return;
      }
      const deny = v.startsWith('~');
      const fams = (deny ? v.slice(1) : v).split(/\s+/).filter(Boolean);
      for (const f of fams) if (!Object.prototype.hasOwnProperty.call(ADDRESS_FAMILIES, f)) throw new Error(`RestrictAddressFamilies=: unknown address family ${f}`);
      const cur = c.restrictAddressFamilies;
      if (!cur) c.restrictAddressFamilies = { allow: !deny, families: fams };
      else if (cur.allow === !deny) cur.families = [...new Set([...cur.families, ...fams])];
      else cur.families = cur.families.filter((f) => !fams.includes(f));
    },
    verify: (c, e) => {
      const r = c.restrictAddressFamilies;
      if (!r) return { holds: null, evidence: 'not set' };
      const fams: [string, string][] = [['socket_inet', 'AF_INET'], ['socket_inet6', 'AF_INET6'], ['socket_netlink', 'AF_NETLINK'], ['socket_unix', 'AF_UNIX']];
      return verdict(...fams.map(([chk, af]) => {
        const listed = r.families.some((f) => ADDRESS_FAMILIES[f] === ADDRESS_FAMILIES[af]);
        const allowedBySetting = r.allow ? listed : !listed;
        const a = p(chk, e);
        if (!a) return check(false, `${chk}: no probe result`);
        const ok = allowedBySetting ? a.errno !== 'EAFNOSUPPORT' : !a.allowed && a.errno === 'EAFNOSUPPORT';
        return check(ok, `${af}: ${a.allowed ? 'allowed' : a.errno}`);
      }));
    },
  },
  {
    name: 'ProtectHostname', section: 'Service', kind: 'sandbox', enforce: 'CLONE_NEWUTS (always); seccomp: sethostname/setdomainname fail EPERM', probe: 'sethostname refused; ns_uts differs; the host name is unchanged',
    parseService: (v, c) => void (c.protectHostname = bool(v, 'ProtectHostname')),
    verify: (_c, e) => verdict(refused(e, 'sethostname'), nsDiffers(e, 'uts'), check(e.hostnameBefore === e.hostnameAfter, `host name ${e.hostnameAfter} unchanged`)),
  },
  {
    name: 'PrivateMounts', section: 'Service', kind: 'sandbox', enforce: 'CLONE_NEWNS; / made rprivate before anything is mounted', probe: 'ns_mnt differs; mount_tmpfs refused',
    parseService: (v, c) => void (c.privateMounts = baseline('PrivateMounts', 'runs services in their own mount namespace')(v)),
    verify: (_c, e) => verdict(nsDiffers(e, 'mnt')),
  },
  {
    name: 'ProtectKernelTunables', section: 'Service', kind: 'sandbox', enforce: 'no /sys in the root; /proc has no /proc/sys (subset=pid); seccomp _sysctl EPERM', probe: 'write_proc_sys refused; ls_sys absent',
    parseService: (v, c) => void (c.protectKernelTunables = bool(v, 'ProtectKernelTunables')),
    verify: (_c, e) => verdict(refused(e, 'write_proc_sys'), absentOrEmpty(e, 'ls_sys')),
  },
  {
    name: 'ProtectKernelModules', section: 'Service', kind: 'sandbox', enforce: 'no capabilities; seccomp @module EPERM; an empty read-only directory over /usr/lib/modules when the host has one', probe: 'init_module refused; ls_lib_modules absent or empty',
    parseService: (v, c) => void (c.protectKernelModules = bool(v, 'ProtectKernelModules')),
    verify: (_c, e) => verdict(refused(e, 'init_module'), absentOrEmpty(e, 'ls_lib_modules')),
  },
  {
    name: 'ProtectKernelLogs', section: 'Service', kind: 'sandbox', enforce: 'no /dev/kmsg in the private /dev; seccomp syslog(2) EPERM', probe: 'open_dev_kmsg, syslog refused',
    parseService: (v, c) => void (c.protectKernelLogs = bool(v, 'ProtectKernelLogs')),
    verify: (_c, e) => verdict(refused(e, 'open_dev_kmsg', 'syslog')),
  },
  {
    name: 'ProtectControlGroups', section: 'Service', kind: 'sandbox', enforce: 'no /sys (so no /sys/fs/cgroup) in the root; CLONE_NEWCGROUP', probe: 'write_cgroup refused; ns_cgroup differs',
    parseService: (v, c) => void (c.protectControlGroups = bool(v, 'ProtectControlGroups')),
    verify: (_c, e) => verdict(refused(e, 'write_cgroup'), nsDiffers(e, 'cgroup')),
  },
  {
    name: 'ProtectClock', section: 'Service', kind: 'sandbox', enforce: 'no capabilities; seccomp @clock EPERM', probe: 'clock_settime refused',
    parseService: (v, c) => void (c.protectClock = bool(v, 'ProtectClock')),
    verify: (_c, e) => verdict(refused(e, 'clock_settime')),
  },
  {
    name: 'ProtectProc', section: 'Service', kind: 'sandbox', enforce: '`proc invisible`: a fresh procfs of the instance\'s own pid namespace with hidepid=invisible (for every value: the namespace holds only the instance)', probe: 'ls_proc: only pids, self, thread-self',
    parseService: (v, c) => {
      if (!['default', 'invisible', 'ptraceable', 'noaccess'].includes(v)) throw new Error(`ProtectProc=${v}: expected default, invisible, ptraceable or noaccess`);
      c.protectProc = v as ServiceConfig['protectProc'];
    },
    verify: (_c, e) => procVerdict(e),
  },
  {
    name: 'ProcSubset', section: 'Service', kind: 'sandbox', enforce: '`proc invisible`: subset=pid (ProcSubset=all is refused: no /proc/sys, /proc/kcore, ... ever)', probe: 'ls_proc; proc_kcore absent',
    parseService: (v, c) => {
      if (v !== 'pid') throw new Error(`ProcSubset=${v} is not supported: fuse-svcd's /proc always has only the process directories (ProcSubset=pid)`);
      c.procSubset = 'pid';
    },
    verify: (_c, e) => {
      const pv = procVerdict(e);
      return verdict(check(pv.holds === true, pv.evidence), absentOrEmpty(e, 'proc_kcore'));
    },
  },
  {
    name: 'RestrictNamespaces', section: 'Service', kind: 'sandbox', enforce: 'seccomp (systemd 252\'s rules): unshare/clone with namespace flags and setns EPERM, clone3 ENOSYS (glibc falls back to clone)', probe: 'unshare_user, unshare_mnt refused',
    parseService: (v, c) => {
      const b = parseBool(v);
      if (b !== undefined) {
        c.restrictNamespaces = b;
        return;
      }
      const deny = v.startsWith('~');
      const names = (deny ? v.slice(1) : v).split(/\s+/).filter(Boolean);
      for (const n of names) if (!Object.prototype.hasOwnProperty.call(NAMESPACE_FLAGS, n)) throw new Error(`RestrictNamespaces=: unknown namespace type ${n}`);
      c.restrictNamespaces = deny ? Object.keys(NAMESPACE_FLAGS).filter((n) => !names.includes(n)) : names;
    },
    verify: (c, e) => {
      const r = c.restrictNamespaces;
      if (r === false) return { holds: null, evidence: 'not restricted' };
      const userAllowed = Array.isArray(r) && r.includes('user');
      const mntAllowed = Array.isArray(r) && r.includes('mnt');
      const out: { ok: boolean; text: string }[] = [];
      if (!userAllowed) out.push(refused(e, 'unshare_user'));
      if (!mntAllowed) out.push(refused(e, 'unshare_mnt'));
      return out.length ? verdict(...out) : { holds: null, evidence: 'user and mnt namespaces allowed' };
    },
  },
  {
    name: 'RestrictRealtime', section: 'Service', kind: 'sandbox', enforce: 'seccomp: sched_setscheduler with realtime policies EPERM', probe: 'sched_fifo refused',
    parseService: (v, c) => void (c.restrictRealtime = bool(v, 'RestrictRealtime')),
    verify: (_c, e) => verdict(refused(e, 'sched_fifo')),
  },
  {
    name: 'RestrictFileSystems', section: 'Service', kind: 'sandbox', enforce: 'empty value only (= no restriction set, as upstream\'s units have it); a list needs BPF LSM and is refused', probe: 'n/a',
    parseService: (v) => {
      if (v !== '') throw new Error('RestrictFileSystems= with a list is not supported (needs the BPF LSM); only the empty assignment is accepted');
    },
    verify: () => ({ holds: null, evidence: 'empty: no restriction asked' }),
  },
  {
    name: 'RestrictSUIDSGID', section: 'Service', kind: 'sandbox', enforce: 'seccomp: chmod/fchmod/fchmodat/mkdir/mknod/open/openat/creat with S_ISUID or S_ISGID EPERM; openat2 ENOSYS', probe: 'chmod_suid refused',
    parseService: (v, c) => void (c.restrictSUIDSGID = bool(v, 'RestrictSUIDSGID')),
    verify: (_c, e) => verdict(refused(e, 'chmod_suid')),
  },
  {
    name: 'LockPersonality', section: 'Service', kind: 'sandbox', enforce: 'seccomp: personality() other than PER_LINUX EPERM', probe: 'personality refused',
    parseService: (v, c) => void (c.lockPersonality = bool(v, 'LockPersonality')),
    verify: (_c, e) => verdict(refused(e, 'personality')),
  },
  {
    name: 'MemoryDenyWriteExecute', section: 'Service', kind: 'sandbox', enforce: 'seccomp: mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect with PROT_EXEC, shmat with SHM_EXEC: EPERM', probe: 'mmap_wx, mprotect_x refused',
    parseService: (v, c) => void (c.memoryDenyWriteExecute = bool(v, 'MemoryDenyWriteExecute')),
    verify: (_c, e) => verdict(refused(e, 'mmap_wx', 'mprotect_x')),
  },
  {
    name: 'NoNewPrivileges', section: 'Service', kind: 'sandbox', enforce: '`nnp 1`: PR_SET_NO_NEW_PRIVS', probe: 'NoNewPrivs 1',
    parseService: (v, c) => void (c.noNewPrivileges = baseline('NoNewPrivileges', 'sets no_new_privs')(v)),
    verify: (_c, e) => verdict(check(detail(e, 'NoNewPrivs') === '1', `NoNewPrivs ${detail(e, 'NoNewPrivs') ?? '?'}`)),
  },
  {
    name: 'CapabilityBoundingSet', section: 'Service', kind: 'sandbox', enforce: 'every capability dropped: PR_CAPBSET_DROP all, capset 0 (only an empty set is accepted)', probe: 'CapInh, CapPrm, CapEff, CapBnd all 0',
    parseService: (v) => {
      if (v !== '') throw new Error(`CapabilityBoundingSet=${v} is not supported: services never have capabilities (CapabilityBoundingSet= empty)`);
    },
    verify: (_c, e) => verdict(...['CapInh', 'CapPrm', 'CapEff', 'CapBnd'].map((k) => check(detail(e, k) === '0000000000000000', `${k} ${detail(e, k) ?? '?'}`))),
  },
  {
    name: 'AmbientCapabilities', section: 'Service', kind: 'sandbox', enforce: 'PR_CAP_AMBIENT_CLEAR_ALL (only an empty set is accepted)', probe: 'CapAmb 0',
    parseService: (v) => {
      if (v !== '') throw new Error(`AmbientCapabilities=${v} is not supported: services never have capabilities`);
    },
    verify: (_c, e) => verdict(check(detail(e, 'CapAmb') === '0000000000000000', `CapAmb ${detail(e, 'CapAmb') ?? '?'}`)),
  },
  {
    name: 'SystemCallArchitectures', section: 'Service', kind: 'sandbox', enforce: '`seccomp_arch`: only these ABIs in the filter; calls of any other ABI (int 0x80 on x86-64) kill the process', probe: 'int80_syscall refused',
    parseService: (v, c) => {
      if (v === '') {
        c.systemCallArchitectures = [];
        return;
      }
      for (const a of v.split(/\s+/)) {
        if (a !== 'native') toOciArch(a.replace('-', '_'));
        c.systemCallArchitectures.push(a);
      }
    },
    verify: (c, e) => {
      const natOnly = c.systemCallArchitectures.length > 0 && c.systemCallArchitectures.every((a) => a === 'native' || a === 'x86-64' || a === 'x86_64');
      if (!natOnly) return { holds: null, evidence: `architectures ${c.systemCallArchitectures.join(' ') || '(any)'}` };
      return verdict(refused(e, 'int80_syscall'));
    },
  },
  {
    name: 'SystemCallFilter', section: 'Service', kind: 'sandbox',
    enforce: 'one libseccomp filter (systemd 252 groups and semantics, merged with the directives\' argument rules by supervisor/sandbox/seccomp.ts): `seccomp_default`/`seccomp_rule` records',
    probe: 'mount_tmpfs, ptrace_attach, reboot, swapon, setpriority, clock_settime, init_module, syslog refused with SystemCallErrorNumber= when the filter denies them; sched_setaffinity allowed when it allows it',
    parseService: (v, c) => {
      if (v === '') {
        c.systemCallFilter = [];
        return;
      }
      const body = v.startsWith('~') ? v.slice(1) : v;
      for (const w of body.split(/\s+/).filter(Boolean)) {
        const name = w.includes(':') ? w.slice(0, w.indexOf(':')) : w;
        if (name.startsWith('@') && !isGroup(name)) throw new Error(`SystemCallFilter=: unknown system call group ${name}`);
        if (!name.startsWith('@') && !/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`SystemCallFilter=: invalid system call name ${JSON.stringify(name)}`);
        if (w.includes(':')) {
          const er = w.slice(w.indexOf(':') + 1);
          if (er !== 'kill') errnoNumber(er);
        }
      }
      c.systemCallFilter.push(v);
    },
    verify: (c, e) => {
      if (c.systemCallFilter.length === 0) return { holds: null, evidence: 'no filter' };
      const parsed = parseSystemCallFilter(c.systemCallFilter);
      const want = c.systemCallErrorNumber ?? 'kill';
      const out: { ok: boolean; text: string }[] = [];
      for (const [chk, sc] of Object.entries(SYSCALL_CHECKS)) {
        const a = p(chk, e);
        if (!a) continue;
        const v = parsed.entries.get(sc);
        const denied = parsed.allowList ? v === undefined || v !== -1 : v !== undefined;
        if (denied) out.push(check(!a.allowed && (want === 'kill' || a.errno_num === errnoNumber(want)), `${sc}: ${a.allowed ? 'ALLOWED' : a.errno}`));
        else out.push(check(a.allowed || a.errno !== (want === 'kill' ? '' : errnameOf(want)), `${sc} allowed by the filter: ${a.allowed ? 'ok' : a.errno + ' (not from the filter)'}`));
      }
      return verdict(...out);
    },
  },
  {
    name: 'SystemCallErrorNumber', section: 'Service', kind: 'sandbox', enforce: 'SCMP_ACT_ERRNO(N) for what SystemCallFilter= denies (unset: kill the process, as systemd)', probe: 'the errno of mount_tmpfs',
    parseService: (v, c) => {
      if (v !== 'kill' && v !== '') {
        const n = errnoNumber(v);
        if (n === 0) throw new Error('SystemCallErrorNumber=0 is invalid');
      }
      c.systemCallErrorNumber = v === '' ? undefined : v;
    },
    verify: (c, e) => {
      const a = p('mount_tmpfs', e);
      const want = c.systemCallErrorNumber!;
      return verdict(check(!!a && !a.allowed && a.errno_num === errnoNumber(want), `mount(2): ${a ? a.errno || 'allowed' : '?'} (errno ${a?.errno_num ?? '?'}; asked ${want} = ${errnoNumber(want)})`));
    },
  },
  {
    name: 'UMask', section: 'Service', kind: 'sandbox', enforce: '`umask` record: umask(2) right before exec', probe: 'Umask (/proc/self/status), tmp_file_mode of a file created 0666',
    parseService: (v, c) => void (c.umask = octal(v, 'UMask')),
    verify: (c, e) => {
      // umask(2) keeps only the permission bits: UMask=7777 is umask 0777 (as under systemd).
      const eff = c.umask & 0o777;
      const want = (0o666 & ~eff).toString(8).padStart(4, '0');
      const um = detail(e, 'Umask');
      const mode = detail(e, 'tmp_file_mode');
      return verdict(check(um === eff.toString(8).padStart(4, '0'), `Umask ${um ?? '?'}`), check(mode === want, `a file created 0666 has mode ${mode ?? '?'} (expected ${want})`));
    },
  },
  ...RLIMIT_NAMES.map((n) => limitDirective(n)),
  {
    name: 'OOMScoreAdjust', section: 'Service', kind: 'sandbox', enforce: '`oom_score_adj`: written to /proc/PID/oom_score_adj by the launcher before the server drops privileges (lowering needs CAP_SYS_RESOURCE, else logged and skipped)', probe: 'oom_score_adj',
    parseService: (v, c) => void (c.oomScoreAdjust = intIn(v, 'OOMScoreAdjust', -1000, 1000)),
    verify: (c, e) => {
      const got = detail(e, 'oom_score_adj');
      const lacks = c.oomScoreAdjust! < 0 && !e.hostHasSysResource;
      return verdict(check(got === String(c.oomScoreAdjust), `/proc/self/oom_score_adj ${got ?? '?'}${got !== String(c.oomScoreAdjust) && lacks ? ' (fuse-svcd lacks CAP_SYS_RESOURCE here: the launcher cannot lower it and logged so, as systemd does)' : ''}`));
    },
  },
];

function errnameOf(v: string): string {
  if (/^\d+$/.test(v)) return Object.keys(ERRNO).find((k) => ERRNO[k] === Number(v)) ?? v;
  return v;
}
function m(e: Evidence, mp: string): string | undefined {
  return mounts(e).get(mp);
}
function onlyLo(e: Evidence): { ok: boolean; text: string } {
  const d = detail(e, 'net_dev');
  if (d === undefined) return check(false, 'net_dev: no probe result');
  const ifaces = d.split(/\s+/).filter((w) => w.endsWith(':')).map((w) => w.slice(0, -1));
  return check(ifaces.length === 1 && ifaces[0] === 'lo', `interfaces: ${ifaces.join(' ') || '(none)'}`);
}
function procVerdict(e: Evidence): Verdict {
  const d = detail(e, 'ls_proc');
  if (d === undefined) return { holds: false, evidence: 'ls_proc: no probe result' };
  const entries = d.split(' ').filter(Boolean);
  const bad = entries.filter((x) => !/^\d+$/.test(x) && x !== 'self' && x !== 'thread-self');
  return { holds: bad.length === 0 && entries.includes('1'), evidence: `/proc lists ${entries.join(' ')}` };
}
function devVerdict(c: ServiceConfig, e: Evidence): Verdict {
  const d = detail(e, 'ls_dev');
  const allowed = new Set([...(c.devicePolicy === 'strict' ? [] : BASE_DEVICES), 'fd', 'stdin', 'stdout', 'stderr']);
  const entries = (d ?? '').split(' ').filter(Boolean);
  const extra = entries.filter((x) => !allowed.has(x));
  return verdict(check(d !== undefined && extra.length === 0, `/dev lists ${entries.join(' ') || '(nothing)'}`), refused(e, 'open_block', 'mknod_blk'));
}

export const DIRECTIVE_BY_NAME: ReadonlyMap<string, Directive> = new Map(DIRECTIVES.map((d) => [d.name, d]));

// ---------------------------------------------------------------------------------------------
// Loading

/**
 * Applies the [Service] (and [Unit]/[Install]) assignments of a parsed unit. `sample` is a unit
 * name used to check specifiers at load time (they are resolved again per instance).
 */
export function loadService(u: UnitFile, sample: string, allowed: Section[] = ['Unit', 'Service', 'Install']): ServiceConfig {
  const c = defaultService(u.file);
  c.assignments = u.assignments;
  for (const a of u.assignments) {
    const d = lookup(a, allowed);
    if (d.specifiers) resolveOrThrow(a.value, sample, a);
    if (!d.parseService) continue;
    try {
      d.parseService(a.value, c, a);
    } catch (e) {
      throw new UnitError(a.file, a.line, (e as Error).message);
    }
    c.set.set(d.name, a);
  }
  // Cross-directive checks (systemd would refuse these at start; fuse-svcd at load).
  if (c.systemCallFilter.length) {
    try {
      parseSystemCallFilter(c.systemCallFilter);
    } catch (e) {
      const a = c.set.get('SystemCallFilter')!;
      throw new UnitError(a.file, a.line, (e as Error).message);
    }
  }
  return c;
}

/** Loads a unit file as a service: `X@.service`, `X.service`, or a `.sandbox` fragment ([Service] only). */
export function loadServiceFile(file: string): { svc: ServiceConfig; unitName: string } {
  const base = path.basename(file);
  let unitName: string;
  if (base.endsWith('@.service')) unitName = `${base.slice(0, -'@.service'.length)}@0-0-0.service`;
  else if (base.endsWith('.sandbox')) unitName = `${base.slice(0, -'.sandbox'.length)}.service`;
  else unitName = base;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new UnitError(file, 0, `cannot read: ${(e as Error).message}`);
  }
  return { svc: loadService(parseUnit(file, text), unitName), unitName };
}

export function loadSocket(u: UnitFile, sample: string): SocketConfig {
  const c = defaultSocket(u.file);
  c.assignments = u.assignments;
  for (const a of u.assignments) {
    const d = lookup(a, ['Unit', 'Socket', 'Install']);
    let v = a.value;
    if (d.specifiers) v = resolveOrThrow(a.value, sample, a);
    if (!d.parseSocket) continue;
    try {
      d.parseSocket(v, c, a);
    } catch (e) {
      throw new UnitError(a.file, a.line, (e as Error).message);
    }
    c.set.set(d.name, a);
  }
  if (c.listen.length === 0) throw new UnitError(u.file, 1, 'no ListenSequentialPacket= or ListenStream= in [Socket]');
  if (!c.accept) throw new UnitError(u.file, 1, 'Accept=yes is required: fuse-svcd starts one instance per connection');
  return c;
}

function lookup(a: Assignment, allowed: Section[]): Directive {
  if (!['Unit', 'Service', 'Socket', 'Install'].includes(a.section)) throw new UnitError(a.file, a.line, `unknown section [${a.section}]`);
  if (!allowed.includes(a.section as Section)) throw new UnitError(a.file, a.line, `section [${a.section}] does not belong in this file`);
  const d = DIRECTIVE_BY_NAME.get(a.key);
  if (!d) {
    if (a.key in REFUSED_DIRECTIVES) throw new UnitError(a.file, a.line, `${a.key}= is not supported by fuse-svcd: ${REFUSED_DIRECTIVES[a.key]}`);
    throw new UnitError(a.file, a.line, `unknown directive ${a.key}= in [${a.section}]`);
  }
  if (d.section !== a.section) throw new UnitError(a.file, a.line, `${a.key}= belongs in [${d.section}], not [${a.section}]`);
  return d;
}

function resolveOrThrow(text: string, unitName: string, a: Assignment): string {
  try {
    return expandSpecifiers(text, { name: unitName });
  } catch (e) {
    throw new UnitError(a.file, a.line, `${a.key}=: ${(e as Error).message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Enforcement: the launcher records

/** The seccomp part of a service: the input of systemCallFilterToProfile(). */
export function seccompOptions(c: ServiceConfig): FilterToProfileOptions {
  const d: DirectiveOptions = {};
  if (c.restrictRealtime) d.restrictRealtime = true;
  if (c.privateDevices) d.privateDevices = true;
  if (c.protectHostname) d.protectHostname = true;
  if (c.restrictAddressFamilies) {
    const r = c.restrictAddressFamilies;
    d.restrictAddressFamilies = r.allow ? (r.families.length ? r.families.join(' ') : 'none') : `~${r.families.join(' ')}`;
  }
  if (c.protectKernelLogs) d.protectKernelLogs = true;
  if (c.protectKernelModules) d.protectKernelModules = true;
  if (c.protectKernelTunables) d.protectKernelTunables = true;
  if (c.restrictNamespaces !== false) d.restrictNamespaces = c.restrictNamespaces;
  if (c.lockPersonality) d.lockPersonality = true;
  if (c.memoryDenyWriteExecute) d.memoryDenyWriteExecute = true;
  if (c.protectClock) d.protectClock = true;
  if (c.restrictSUIDSGID) d.restrictSUIDSGID = true;
  const arches = c.systemCallArchitectures.filter((a) => a !== 'native');
  return {
    filter: [...c.systemCallFilter],
    errorNumber: c.systemCallErrorNumber,
    architectures: arches.length ? arches.map((a) => a.replace('-', '_')) : 'native',
    directives: d,
  };
}

const recordCache = new WeakMap<ServiceConfig, SpecRecord[]>();
/** The seccomp records of a service (computed once per loaded unit). */
export function seccompRecordsOf(c: ServiceConfig): SpecRecord[] {
  let r = recordCache.get(c);
  if (!r) {
    r = profileToSpecRecords(systemCallFilterToProfile(seccompOptions(c)));
    recordCache.set(c, r);
  }
  return r;
}

export type InstanceSpec = {
  id: number;
  runtimeDir: string;
  uid: number;
  /** Full instance unit name, e.g. service_ll@0-1234-1000.service (for specifiers). */
  unitName: string;
  /** Launcher fd of the accepted connection (listen_env), if any. */
  connFd?: number;
  /** An empty directory on the host (to mask /usr/lib/modules). */
  emptyDir: string;
  procSource?: string;
  /** Replace ExecStart= (the security report runs the probe): host path bound at `/probe`. */
  probe?: { hostPath: string; argv: string[] };
  tmpSize?: number;
};

/** Expands $VAR and ${VAR} in an ExecStart= word from the unit's environment. */
function expandEnv(word: string, env: Map<string, string>): string {
  return word.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_m, a?: string, b?: string) => env.get((a ?? b)!) ?? '');
}

/** The whole launcher spec of one service instance (docs/launcher.md). */
/** Limit*=, UMask=, OOMScoreAdjust= and NoNewPrivileges as launcher records (units and the brokered sandbox alike). */
export function processRecords(c: ServiceConfig): SpecRecord[] {
  const recs: SpecRecord[] = [];
  for (const [name, [soft, hard]] of Object.entries(c.limits) as [RlimitName, Rlimit][]) {
    recs.push(['rlimit', name, soft === 'infinity' ? 'inf' : soft, hard === 'infinity' ? 'inf' : hard]);
  }
  recs.push(['umask', c.umask.toString(8).padStart(4, '0')]);
  if (c.oomScoreAdjust !== undefined) recs.push(['oom_score_adj', c.oomScoreAdjust]);
  recs.push(['nnp', 1]);
  return recs;
}

/** Where an ExecStart= program outside /usr appears inside the sandbox. */
export const EXEC_DIR = '/run/fuse-svc-exec';

export function serviceSpec(c: ServiceConfig, i: InstanceSpec): SpecRecord[] {
  const sp = (t: string) => expandSpecifiers(t, { name: i.unitName });
  const recs: SpecRecord[] = [['version', 1], ['id', i.id], ['rundir', i.runtimeDir], ['uid', i.uid], ['gid', i.uid]];
  if (i.connFd !== undefined) recs.push(['fd', 'conn', i.connFd], ['listen_env', 1]);
  recs.push(['root_usr', 1]);
  if (existsSync('/etc/ld.so.cache')) recs.push(['root_bind', '/etc/ld.so.cache', '/etc/ld.so.cache', 'ro']);
  if (existsSync('/usr/lib/modules')) recs.push(['root_bind', i.emptyDir, '/usr/lib/modules', 'ro']);
  const env = new Map<string, string>([['PATH', DEFAULT_PATH]]);
  for (const e of c.environment) {
    const t = sp(e.text);
    env.set(t.slice(0, t.indexOf('=')), t.slice(t.indexOf('=') + 1));
  }
  let exec: string;
  let argv: string[];
  if (i.probe) {
    recs.push(['root_bind', i.probe.hostPath, '/probe', 'ro']);
    exec = '/probe';
    argv = i.probe.argv;
  } else {
    if (!c.execStart) throw new Error(`${c.file}: no ExecStart=`);
    const hostExec = sp(c.execStart.path);
    argv = c.execStart.argv.map((w) => expandEnv(sp(w), env));
    // /usr is in every root. A program elsewhere is bound read-only at a fixed place: its own
    // path may run through what the sandbox replaces (/tmp, /var/tmp -> /tmp, /dev, /proc).
    exec = hostExec.startsWith('/usr/') ? hostExec : `${EXEC_DIR}/${path.basename(hostExec)}`;
    if (exec !== hostExec) recs.push(['root_bind', hostExec, exec, 'ro']);
  }
  for (const d of c.devicePolicy === 'strict' ? [] : BASE_DEVICES) if (existsSync(`/dev/${d}`)) recs.push(['dev', d]);
  recs.push(['tmp_size', i.tmpSize ?? 64 << 20], ['proc', 'invisible']);
  if (i.procSource) recs.push(['proc_source', i.procSource]);
  const cwd = c.workingDirectory ? sp(c.workingDirectory.text) : '/';
  if (!/^\/(usr|tmp|dev|proc)?(\/|$)/.test(cwd)) recs.push(['root_dir', cwd]);
  recs.push(...processRecords(c));
  for (const [k, v] of env) recs.push(['env', `${k}=${v}`]);
  recs.push(['cwd', cwd], ['exec', exec], ...argv.map((a) => ['arg', a]));
  recs.push(...seccompRecordsOf(c));
  recs.push(['stop_timeout_ms', 10000], ['ready_timeout_ms', 10000]);
  return recs;
}

/** The identifier output lines are tagged with (SyslogIdentifier=, default: the command's name). */
export function identifierOf(c: ServiceConfig, unitName: string): string {
  if (c.syslogIdentifier) return expandSpecifiers(c.syslogIdentifier.text, { name: unitName });
  return path.basename(c.execStart?.argv[0] ?? unitName);
}

