// Server definitions (server/*.json): one file per filesystem server. The broker has no
// per-server code; everything that differs between servers is here, validated strictly.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

export const RLIMIT_NAMES = ['AS', 'CORE', 'CPU', 'DATA', 'FSIZE', 'MEMLOCK', 'NOFILE', 'NPROC', 'RSS', 'RTPRIO', 'RTTIME', 'STACK', 'MSGQUEUE', 'NICE', 'SIGPENDING', 'LOCKS'] as const;
export type RlimitName = (typeof RLIMIT_NAMES)[number];
export type Rlimit = [number | 'infinity', number | 'infinity'];

export type ServerDef = {
  file: string;
  name: string;
  description: string;
  fstypes: string[];
  exec: string;
  /**
   * Placeholders: {options} {source} {mountpoint} {fusefd} {caller_uid} {caller_gid}, and for
   * a transport server {remote_path} (the directory the caller named on the remote side).
   */
  argv: string[];
  /**
   * How the server gets the FUSE fd: a fusermount stand-in (libfuse2, go-fuse), /dev/fd/N
   * (libfuse3), or `notify`: the server opens /dev/fuse and calls mount(2) itself; the seccomp
   * notifier answers the open with the mount's fd and that FUSE mount(2) as done.
   */
  fuseFd: 'fusermount' | 'devfd' | 'notify';
  /** An /etc/passwd and /etc/group entry `fuse-svc` for the sandbox uid (servers that getpwuid()). */
  passwd: boolean;
  /**
   * The server forks into the background (no foreground flag, or one with side effects, as
   * exfat-fuse's -d): pid 1 of its sandbox is the launcher's reaper, the server pid 2, and the
   * instance lives while a process of the sandbox does, not until the first one exits 0.
   */
  daemonizes: boolean;
  /**
   * What the server serves: `seccomp-notify`, an image the caller sent, handed at the open of
   * a sentinel path; or `transport`, no image at all: a connected stream socket the caller
   * serves (`--via COMMAND`), which is the server's stdin and stdout (sshfs -o passive: SFTP).
   */
  source: 'seccomp-notify' | 'transport';
  seccompPolicy: string;
  /** The server cannot write (squashfs, iso9660...): a rw request is refused with EROFS_SERVER. */
  readOnly: boolean;
  /** Unit-style directive file (next to the definition) that says what the sandbox is. */
  sandbox?: string;
  /** allowed: exact options, or `NAME=<number>` for a decimal value the caller picks. */
  options: { always: string[]; readOnly: string[]; readWrite: string[]; readWriteNonRoot: string[]; allowed: string[] };
  paths: { src: string; dst: string; optional: boolean }[];
  rlimits: Partial<Record<RlimitName, Rlimit>>;
  cgroup: { memoryMax?: number; pidsMax?: number; cpuWeight?: number };
  tmpSize: number;
  readyTimeoutMs: number;
  stopTimeoutMs: number;
};

export class ServerDefError extends Error {
  override name = 'ServerDefError';
  constructor(
    message: string,
    /** The key (dotted path) or JSON position the problem is at, to name file:line. */
    readonly at?: { key?: string; pos?: number },
  ) {
    super(message);
  }
}

const KEYS = ['name', 'description', 'fstypes', 'exec', 'argv', 'fuseFd', 'source', 'seccompPolicy', 'readOnly', 'passwd', 'daemonizes', 'sandbox', 'options', 'paths', 'rlimits', 'cgroup', 'tmpSize', 'readyTimeoutMs', 'stopTimeoutMs'];

/** Loads every *.json in dir; a type claimed twice is an error. */
export function loadServers(dir: string): Map<string, ServerDef> {
  const byType = new Map<string, ServerDef>();
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.json')).sort();
  } catch (e) {
    throw new ServerDefError(`${dir}: cannot read server definitions: ${(e as Error).message}`);
  }
  for (const n of names) {
    const def = parseServerDef(path.join(dir, n), readFileSync(path.join(dir, n), 'utf8'));
    for (const t of def.fstypes) {
      const other = byType.get(t);
      if (other) throw new ServerDefError(`${def.file}: fstype "${t}" is already served by ${other.file}`);
      byType.set(t, def);
    }
  }
  return byType;
}

/**
 * The 1-based line of a definition problem: of the JSON position, or of the (last segment of
 * the) key, searched after its parent keys; undefined when it cannot be told.
 */
export function lineOfProblem(text: string, at: ServerDefError['at']): number | undefined {
  const lineAt = (pos: number) => text.slice(0, pos).split('\n').length;
  if (at?.pos !== undefined) return lineAt(Math.min(at.pos, text.length));
  if (!at?.key) return undefined;
  let from = 0;
  for (const seg of at.key.replace(/\[\d+\]/g, '').split('.')) {
    const i = text.indexOf(JSON.stringify(seg), from);
    if (i < 0) return from ? lineAt(from) : undefined;
    from = i;
  }
  return lineAt(from);
}

/** Whether a caller's option is one the definition allows (exactly, or NAME=<number>). */
export function optionAllowed(server: Pick<ServerDef, 'options'>, o: string): boolean {
  return server.options.allowed.some((a) => a === o || (a.endsWith('=<number>') && o.startsWith(a.slice(0, -8)) && /^\d{1,18}$/.test(o.slice(a.length - 8))));
}

export function parseServerDef(file: string, text: string): ServerDef {
  const fail = (k: string, what: string): never => {
    throw new ServerDefError(`${file}: ${k}: ${what}`, { key: k });
  };
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(text);
  } catch (e) {
    const pos = /at position (\d+)/.exec((e as Error).message)?.[1];
    throw new ServerDefError(`${file}: not valid JSON: ${(e as Error).message}`, { pos: pos === undefined ? undefined : Number(pos) });
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new ServerDefError(`${file}: must be a JSON object`);
  for (const k of Object.keys(o)) if (!KEYS.includes(k)) fail(k, 'unknown key');
  const specSafe = (s: unknown, k: string): string => {
    // The launcher spec is TAB/LF separated; nothing from a definition may break a record.
    if (typeof s !== 'string' || /[\t\n\0]/.test(s)) fail(k, 'expected a string without tabs, newlines or NULs');
    return s as string;
  };
  const strList = (v: unknown, k: string): string[] => {
    if (!Array.isArray(v)) fail(k, 'expected an array of strings');
    return (v as unknown[]).map((s, i) => specSafe(s, `${k}[${i}]`));
  };
  const abs = (v: unknown, k: string): string => {
    const s = specSafe(v, k);
    if (!path.isAbsolute(s)) fail(k, 'expected an absolute path');
    return s;
  };
  const posInt = (v: unknown, k: string, dflt: number): number => {
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) fail(k, 'expected a positive integer');
    return v as number;
  };
  const name = specSafe(o.name, 'name');
  const argv = strList(o.argv, 'argv');
  if (argv.length === 0) fail('argv', 'must not be empty');
  if (o.fuseFd !== 'fusermount' && o.fuseFd !== 'devfd' && o.fuseFd !== 'notify') fail('fuseFd', 'expected "fusermount", "devfd" or "notify"');
  if (o.source !== 'seccomp-notify' && o.source !== 'transport') fail('source', 'expected "seccomp-notify" or "transport"');
  // Each kind has its own placeholder: an image server has no remote path, a transport server
  // no image to open (and no seccomp notifier to hand one: it answers fuseFd "notify" too).
  const uses = (ph: string) => argv.findIndex((a) => a.includes(ph));
  if (o.source === 'transport') {
    if (uses('{source}') >= 0) fail(`argv[${uses('{source}')}]`, '{source} names an image; a transport server has none (use {remote_path})');
    if (o.fuseFd === 'notify') fail('fuseFd', '"notify" needs an image source (the notifier that answers /dev/fuse hands the source too)');
  } else if (uses('{remote_path}') >= 0) fail(`argv[${uses('{remote_path}')}]`, '{remote_path} is only for a "transport" source');
  const opts = (o.options ?? {}) as Record<string, unknown>;
  for (const k of Object.keys(opts)) if (!['always', 'readOnly', 'readWrite', 'readWriteNonRoot', 'allowed'].includes(k)) fail(`options.${k}`, 'unknown key');
  const optList = (k: string) => {
    const l = strList(opts[k] ?? [], `options.${k}`);
    // `NAME=<number>` (only in "allowed"): the caller picks a decimal value (offset=<number>).
    const numeric = k === 'allowed' ? '|=<number>' : '';
    // A server's own flag syntax (fusefat's `rw+`) only where the definition, not the caller,
    // writes the option: a caller's options stay plain.
    const plus = k === 'allowed' ? '' : '+';
    for (const s of l) if (!new RegExp(`^[a-z0-9_${plus}]+(=[a-z0-9_.${plus}-]+${numeric})?$`, 'i').test(s)) fail(`options.${k}`, `"${s}" is not a plain option`);
    return l;
  };
  const rl = (o.rlimits ?? {}) as Record<string, unknown>;
  const rlimits: Partial<Record<RlimitName, Rlimit>> = {};
  for (const [k, v] of Object.entries(rl)) {
    if (!(RLIMIT_NAMES as readonly string[]).includes(k)) fail(`rlimits.${k}`, `unknown limit (known: ${RLIMIT_NAMES.join(' ')})`);
    const ok = (x: unknown) => x === 'infinity' || (typeof x === 'number' && Number.isSafeInteger(x) && x >= 0);
    if (!Array.isArray(v) || v.length !== 2 || !v.every(ok)) fail(`rlimits.${k}`, 'expected [soft, hard], numbers or "infinity"');
    const [s, h] = v as Rlimit;
    if (h !== 'infinity' && (s === 'infinity' || s > h)) fail(`rlimits.${k}`, 'soft limit exceeds hard limit');
    rlimits[k as RlimitName] = [s, h];
  }
  const cg = (o.cgroup ?? {}) as Record<string, unknown>;
  for (const k of Object.keys(cg)) if (!['memoryMax', 'pidsMax', 'cpuWeight'].includes(k)) fail(`cgroup.${k}`, 'unknown key');
  const paths = (Array.isArray(o.paths) ? o.paths : o.paths === undefined ? [] : fail('paths', 'expected an array')) as unknown[];
  return {
    file,
    name,
    description: o.description === undefined ? '' : specSafe(o.description, 'description'),
    fstypes: strList(o.fstypes, 'fstypes'),
    exec: abs(o.exec, 'exec'),
    argv,
    fuseFd: o.fuseFd as ServerDef['fuseFd'],
    source: o.source as ServerDef['source'],
    seccompPolicy: specSafe(o.seccompPolicy, 'seccompPolicy'),
    passwd: o.passwd === undefined ? false : typeof o.passwd === 'boolean' ? o.passwd : fail('passwd', 'expected true or false'),
    daemonizes: o.daemonizes === undefined ? false : typeof o.daemonizes === 'boolean' ? o.daemonizes : fail('daemonizes', 'expected true or false'),
    readOnly: o.readOnly === undefined ? false : typeof o.readOnly === 'boolean' ? o.readOnly : fail('readOnly', 'expected true or false'),
    sandbox: o.sandbox === undefined ? undefined : specSafe(o.sandbox, 'sandbox'),
    options: { always: optList('always'), readOnly: optList('readOnly'), readWrite: optList('readWrite'), readWriteNonRoot: optList('readWriteNonRoot'), allowed: optList('allowed') },
    paths: paths.map((p, i) => {
      const e = p as Record<string, unknown>;
      return { src: abs(e?.src, `paths[${i}].src`), dst: abs(e?.dst, `paths[${i}].dst`), optional: e?.optional === true };
    }),
    rlimits,
    cgroup: {
      memoryMax: cg.memoryMax === undefined ? undefined : posInt(cg.memoryMax, 'cgroup.memoryMax', 0),
      pidsMax: cg.pidsMax === undefined ? undefined : posInt(cg.pidsMax, 'cgroup.pidsMax', 0),
      cpuWeight: cg.cpuWeight === undefined ? undefined : posInt(cg.cpuWeight, 'cgroup.cpuWeight', 0),
    },
    tmpSize: posInt(o.tmpSize, 'tmpSize', 16 << 20),
    readyTimeoutMs: posInt(o.readyTimeoutMs, 'readyTimeoutMs', 15000),
    stopTimeoutMs: posInt(o.stopTimeoutMs, 'stopTimeoutMs', 10000),
  };
}
