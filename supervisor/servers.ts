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
  /** Placeholders: {options} {source} {mountpoint} {fusefd} */
  argv: string[];
  /** How the server gets the FUSE fd: a fusermount stand-in (libfuse2, go-fuse) or /dev/fd/N (libfuse3). */
  fuseFd: 'fusermount' | 'devfd';
  /** How the server gets the source: seccomp user notification on a sentinel path. */
  source: 'seccomp-notify';
  seccompPolicy: string;
  /** Unit-style directive file (next to the definition) that says what the sandbox is. */
  sandbox?: string;
  options: { always: string[]; readOnly: string[]; readWriteNonRoot: string[]; allowed: string[] };
  paths: { src: string; dst: string; optional: boolean }[];
  rlimits: Partial<Record<RlimitName, Rlimit>>;
  cgroup: { memoryMax?: number; pidsMax?: number; cpuWeight?: number };
  tmpSize: number;
  readyTimeoutMs: number;
  stopTimeoutMs: number;
};

export class ServerDefError extends Error {
  override name = 'ServerDefError';
}

const KEYS = ['name', 'description', 'fstypes', 'exec', 'argv', 'fuseFd', 'source', 'seccompPolicy', 'sandbox', 'options', 'paths', 'rlimits', 'cgroup', 'tmpSize', 'readyTimeoutMs', 'stopTimeoutMs'];

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

export function parseServerDef(file: string, text: string): ServerDef {
  const fail = (k: string, what: string): never => {
    throw new ServerDefError(`${file}: ${k}: ${what}`);
  };
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(text);
  } catch (e) {
    throw new ServerDefError(`${file}: not valid JSON: ${(e as Error).message}`);
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
  if (o.fuseFd !== 'fusermount' && o.fuseFd !== 'devfd') fail('fuseFd', 'expected "fusermount" or "devfd"');
  if (o.source !== 'seccomp-notify') fail('source', 'expected "seccomp-notify"');
  const opts = (o.options ?? {}) as Record<string, unknown>;
  for (const k of Object.keys(opts)) if (!['always', 'readOnly', 'readWriteNonRoot', 'allowed'].includes(k)) fail(`options.${k}`, 'unknown key');
  const optList = (k: string) => {
    const l = strList(opts[k] ?? [], `options.${k}`);
    for (const s of l) if (!/^[a-z0-9_]+(=[a-z0-9_.-]+)?$/i.test(s)) fail(`options.${k}`, `"${s}" is not a plain option`);
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
    source: 'seccomp-notify',
    seccompPolicy: specSafe(o.seccompPolicy, 'seccompPolicy'),
    sandbox: o.sandbox === undefined ? undefined : specSafe(o.sandbox, 'sandbox'),
    options: { always: optList('always'), readOnly: optList('readOnly'), readWriteNonRoot: optList('readWriteNonRoot'), allowed: optList('allowed') },
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
