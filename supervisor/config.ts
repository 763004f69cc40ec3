// Broker configuration: defaults, the optional JSON file, and /etc/fuse.conf.
// Every error names the file and the key, like systemd's parser names file:line.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { packageRoot } from './paths.js';

export type Config = {
  socket: string;
  socketMode: number;
  socketGroup?: string;
  runtimeDir: string;
  /** Filesystem types a caller may ask for; empty (the default): every type of every valid definition. */
  fstypes: string[];
  /** Dynamic uids for sandboxes, inclusive (systemd's DynamicUser range by default). */
  uidRange: [number, number];
  /** Live mounts one uid may hold. */
  maxMountsPerUser: number;
  /** Live mounts in all (fuse.conf mount_max, default 1000). */
  maxMounts: number;
  /** May non-root callers ask for allow_other (fuse.conf user_allow_other). */
  userAllowOther: boolean;
  /** Requests per second and burst per uid (token bucket). */
  rate: { perSecond: number; burst: number };
  serverDir: string;
  policyDir: string;
  /** Where the launcher and the stand-in live. */
  nativeDir: string;
  /** How long a request may take to arrive after connect. */
  requestTimeoutMs: number;
  /** mount a private, unmasked procfs (needed inside Docker, see docs/deploy.md). */
  procSource: 'auto' | 'none';
  /** cgroup handling for instances. */
  cgroups: 'auto' | 'none';
  publishClient: boolean;
  /** Launchers started ahead of requests (0: spawn one per request). */
  poolSize: number;
  /**
   * `fuse-svcd profile` only (never read from a configuration file): every instance runs with
   * no seccomp policy, its calls recorded by the launcher's notifier into DIR/ID.syscalls.
   */
  profileDir?: string;
  /** Open connections one uid may hold, and all uids together. */
  maxConnectionsPerUser: number;
  maxConnections: number;
  /** Descriptors a uid sent that are still being closed (stuck on its own FUSE server). */
  maxStuckPerUser: number;
  /** How long the broker waits for a fstatfs of a caller's target (it may be on FUSE). */
  targetStatfsTimeoutMs: number;
  /** Bytes of instance logs kept in the runtime dir in all, and per owner uid (supervisor/logcap.ts). */
  logCapBytes: number;
  logCapBytesPerUser: number;
  /** Listen on UPSTREAM_DIR/TYPE for libfuse's contained-service helper (supervisor/upstream.ts). */
  upstreamSockets: boolean;
  upstreamSocketDir: string;
  /** Mode of those sockets: 0600 lets in root and setuid-root helpers only (docs/units.md). */
  upstreamSocketMode: number;
  /** Serve Docker's volume plugin protocol (supervisor/docker-plugin.ts). */
  dockerPlugin: boolean;
  /** The plugin socket dockerd finds the driver by (its name is the driver's name). */
  dockerPluginSocket: string;
  /** Volume definitions (persistent: they must survive reboots, unlike the runtime dir). */
  dockerStateDir: string;
  /** Where driver volumes are mounted (a 0700 root directory); default RUNDIR/docker/mnt. */
  dockerMountDir?: string;
};

export const DEFAULTS: Readonly<Config> = Object.freeze({
  socket: '/run/fuse-svc/broker.sock',
  socketMode: 0o666,
  runtimeDir: '/run/fuse-svcd',
  fstypes: [],
  uidRange: [61184, 65519] as [number, number],
  maxMountsPerUser: 32,
  maxMounts: 1000,
  userAllowOther: false,
  rate: { perSecond: 50, burst: 100 },
  serverDir: path.join(packageRoot, 'server'),
  policyDir: path.join(packageRoot, 'policies', 'seccomp'),
  nativeDir: path.join(packageRoot, 'build', 'Release'),
  requestTimeoutMs: 5000,
  procSource: 'auto' as const,
  cgroups: 'auto' as const,
  publishClient: true,
  poolSize: 1,
  maxConnectionsPerUser: 64,
  maxConnections: 1024,
  maxStuckPerUser: 8,
  targetStatfsTimeoutMs: 2000,
  logCapBytes: 128 * 1024 * 1024,
  logCapBytesPerUser: 16 * 1024 * 1024,
  upstreamSockets: false,
  upstreamSocketDir: '/run/filesystems',
  upstreamSocketMode: 0o600,
  dockerPlugin: false,
  dockerPluginSocket: '/run/docker/plugins/fuse-svc.sock',
  dockerStateDir: '/var/lib/fuse-svc/docker',
});

export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Json = Record<string, unknown>;

/** Keys the JSON file may set, with their checker. */
const FILE_KEYS: Record<string, (v: unknown, where: string) => Partial<Config>> = {
  socket: (v, w) => ({ socket: absPath(v, w) }),
  socket_mode: (v, w) => ({ socketMode: mode(v, w) }),
  socket_group: (v, w) => ({ socketGroup: nonEmpty(v, w) }),
  runtime_dir: (v, w) => ({ runtimeDir: absPath(v, w) }),
  fstypes: (v, w) => ({ fstypes: fstypeList(v, w) }),
  uid_range: (v, w) => ({ uidRange: uidRange(v, w) }),
  max_mounts_per_user: (v, w) => ({ maxMountsPerUser: int(v, w, 1, 100000) }),
  max_mounts: (v, w) => ({ maxMounts: int(v, w, 1, 1000000) }),
  rate_per_second: (v, w) => ({ rate: { perSecond: int(v, w, 1, 100000), burst: -1 } }),
  rate_burst: (v, w) => ({ rate: { perSecond: -1, burst: int(v, w, 1, 100000) } }),
  server_dir: (v, w) => ({ serverDir: absPath(v, w) }),
  policy_dir: (v, w) => ({ policyDir: absPath(v, w) }),
  request_timeout_ms: (v, w) => ({ requestTimeoutMs: int(v, w, 100, 600000) }),
  proc_source: (v, w) => ({ procSource: oneOf(v, w, ['auto', 'none'] as const) }),
  cgroups: (v, w) => ({ cgroups: oneOf(v, w, ['auto', 'none'] as const) }),
  publish_client: (v, w) => ({ publishClient: bool(v, w) }),
  pool_size: (v, w) => ({ poolSize: int(v, w, 0, 64) }),
  max_connections_per_user: (v, w) => ({ maxConnectionsPerUser: int(v, w, 1, 100000) }),
  max_connections: (v, w) => ({ maxConnections: int(v, w, 1, 1000000) }),
  max_stuck_per_user: (v, w) => ({ maxStuckPerUser: int(v, w, 1, 1024) }),
  target_statfs_timeout_ms: (v, w) => ({ targetStatfsTimeoutMs: int(v, w, 100, 60000) }),
  log_cap_bytes: (v, w) => ({ logCapBytes: int(v, w, 1024 * 1024, 2 ** 50) }),
  log_cap_bytes_per_user: (v, w) => ({ logCapBytesPerUser: int(v, w, 1024 * 1024, 2 ** 50) }),
  upstream_sockets: (v, w) => ({ upstreamSockets: bool(v, w) }),
  upstream_socket_dir: (v, w) => ({ upstreamSocketDir: absPath(v, w) }),
  upstream_socket_mode: (v, w) => ({ upstreamSocketMode: mode(v, w) }),
  docker_plugin: (v, w) => ({ dockerPlugin: bool(v, w) }),
  docker_plugin_socket: (v, w) => ({ dockerPluginSocket: pluginSocket(v, w) }),
  docker_state_dir: (v, w) => ({ dockerStateDir: absPath(v, w) }),
  docker_mount_dir: (v, w) => ({ dockerMountDir: absPath(v, w) }),
};

/** Reads the JSON config file (all keys optional) on top of `base`. */
export function loadConfigFile(file: string, base: Config): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`${file}: cannot read: ${(e as Error).message}`);
  }
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${file}: not valid JSON: ${(e as Error).message}`);
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new ConfigError(`${file}: must be a JSON object`);
  let cfg: Config = { ...base, rate: { ...base.rate } };
  for (const [k, v] of Object.entries(o as Json)) {
    const check = FILE_KEYS[k];
    if (!check) throw new ConfigError(`${file}: unknown key "${k}" (known: ${Object.keys(FILE_KEYS).join(', ')})`);
    const part = check(v, `${file}: ${k}`);
    if (part.rate) {
      cfg.rate = {
        perSecond: part.rate.perSecond > 0 ? part.rate.perSecond : cfg.rate.perSecond,
        burst: part.rate.burst > 0 ? part.rate.burst : cfg.rate.burst,
      };
      delete part.rate;
    }
    cfg = { ...cfg, ...part };
  }
  return cfg;
}

/** /etc/fuse.conf: `user_allow_other` and `mount_max = N`, as fusermount reads them. */
export function readFuseConf(file = '/etc/fuse.conf'): { userAllowOther?: boolean; mountMax?: number } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return {};
  }
  const out: { userAllowOther?: boolean; mountMax?: number } = {};
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) return;
    if (line === 'user_allow_other') out.userAllowOther = true;
    else {
      const m = /^mount_max\s*=\s*(-?\d+)$/.exec(line);
      if (m) {
        const n = Number(m[1]);
        out.mountMax = n < 0 ? 1000000 : n;
      } else process.stderr.write(`fuse-svcd: ${file}:${i + 1}: unknown option "${line}", ignored (as fusermount does)\n`);
    }
  });
  return out;
}

export function parseUidRange(s: string, where = '--uid-range'): [number, number] {
  const m = /^(\d+)-(\d+)$/.exec(s);
  if (!m) throw new ConfigError(`${where}: expected FIRST-LAST, e.g. 61184-65519`);
  return uidRange([Number(m[1]), Number(m[2])], where);
}

export function parseMode(s: string, where = '--socket-mode'): number {
  return mode(s, where);
}

function uidRange(v: unknown, w: string): [number, number] {
  if (!Array.isArray(v) || v.length !== 2 || !v.every((n) => Number.isInteger(n))) throw new ConfigError(`${w}: expected [first, last]`);
  const [a, b] = v as [number, number];
  if (a < 1000 || b > 0xfffffffe || a > b) throw new ConfigError(`${w}: range must lie within 1000-4294967294 and first <= last (0 and system uids are never used)`);
  return [a, b];
}
function mode(v: unknown, w: string): number {
  const s = typeof v === 'number' ? v.toString(8) : v;
  if (typeof s !== 'string' || !/^0?[0-7]{3}$/.test(s)) throw new ConfigError(`${w}: expected an octal mode like "0660"`);
  return parseInt(s, 8);
}
function absPath(v: unknown, w: string): string {
  if (typeof v !== 'string' || !path.isAbsolute(v) || v.includes('\0')) throw new ConfigError(`${w}: expected an absolute path`);
  return path.normalize(v);
}
/** dockerd takes the driver's name from the socket's: NAME.sock, NAME a plain name. */
function pluginSocket(v: unknown, w: string): string {
  const p = absPath(v, w);
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\.sock$/.test(path.basename(p))) throw new ConfigError(`${w}: expected an absolute path ending in NAME.sock (NAME: letters, digits, _ . -)`);
  return p;
}
function nonEmpty(v: unknown, w: string): string {
  if (typeof v !== 'string' || v === '') throw new ConfigError(`${w}: expected a non-empty string`);
  return v;
}
function fstypeList(v: unknown, w: string): string[] {
  if (!Array.isArray(v) || v.length === 0 || !v.every((t) => typeof t === 'string' && /^[a-z0-9_.-]{1,32}$/.test(t))) {
    throw new ConfigError(`${w}: expected a non-empty array of filesystem type names (leave it out to serve every defined type)`);
  }
  return v as string[];
}
function int(v: unknown, w: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new ConfigError(`${w}: expected an integer from ${min} to ${max}`);
  return v;
}
function bool(v: unknown, w: string): boolean {
  if (typeof v !== 'boolean') throw new ConfigError(`${w}: expected true or false`);
  return v;
}
function oneOf<T extends string>(v: unknown, w: string, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !allowed.includes(v as T)) throw new ConfigError(`${w}: expected one of ${allowed.join(', ')}`);
  return v as T;
}
