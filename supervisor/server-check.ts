// Server definitions checked as a whole at start: each definition file with its policy, its
// sandbox directives, its binary and its paths. A bad definition disables only the types it
// claims (one log line naming file:line); the broker serves the others. `fuse-svcd check` runs
// the same checks, so a server author sees the problem before any mount is tried.
import { accessSync, constants, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { lineOfProblem, parseServerDef, ServerDefError, type ServerDef } from './servers.js';
import { sandboxOf, seccompRecords } from './launch-spec.js';

export type DefProblem = {
  /** The definition file (or the file the problem is in: a policy, a .sandbox). */
  file: string;
  line?: number;
  message: string;
  /** The types this problem disables (those the definition claims, as far as it parsed). */
  fstypes: string[];
};

export type LoadedServers = {
  servers: Map<string, ServerDef>;
  problems: DefProblem[];
  /** Every definition file that loaded, with the types it serves. */
  loaded: { file: string; name: string; fstypes: string[] }[];
};

/** "file:line: message (disables: a, b)" - one line. */
export function formatProblem(p: DefProblem): string {
  const where = p.line === undefined ? p.file : `${p.file}:${p.line}`;
  return `${where}: ${p.message}${p.fstypes.length ? ` (disables type${p.fstypes.length > 1 ? 's' : ''} ${p.fstypes.join(', ')})` : ''}`;
}

/** The types a definition claims, read leniently from a file that may not validate. */
function claimedTypes(text: string): string[] {
  try {
    const o = JSON.parse(text) as { fstypes?: unknown };
    return Array.isArray(o.fstypes) ? o.fstypes.filter((t): t is string => typeof t === 'string') : [];
  } catch {
    // Not JSON: the types are still worth naming if the "fstypes" line reads plainly.
    const list = /"fstypes"\s*:\s*\[([^\]]*)\]/.exec(text)?.[1] ?? '';
    return [...list.matchAll(/"([a-z0-9_.-]{1,32})"/g)].map((m) => m[1]);
  }
}

/**
 * Everything a definition needs at mount time, asked now: the policy compiles to records, the
 * sandbox file loads, the binary is an executable file, required paths exist.
 */
function checkDef(def: ServerDef, text: string, policyDir: string): DefProblem | undefined {
  const at = (key: string) => lineOfProblem(text, { key });
  const problem = (key: string, message: string): DefProblem => ({ file: def.file, line: at(key), message, fstypes: def.fstypes });
  if (def.fstypes.length === 0) return problem('fstypes', 'fstypes: the definition claims no filesystem type');
  for (const t of def.fstypes) if (!/^[a-z0-9_.-]{1,32}$/.test(t)) return problem('fstypes', `fstypes: "${t}" is not a type name (a-z 0-9 _ . -, at most 32)`);
  // exec is a path in the sandbox root: /usr (and bin, lib... into it) as on the host, or a
  // file the definition binds in with `paths`.
  const bound = def.paths.find((p) => def.exec === p.dst || def.exec.startsWith(p.dst.replace(/\/?$/, '/')));
  if (!bound && !/^\/(usr|bin|sbin|lib|lib64)\//.test(def.exec)) return problem('exec', `exec: ${def.exec} is not in the sandbox root (only /usr and the files named in "paths" are)`);
  const hostExec = bound ? path.join(bound.src, path.relative(bound.dst, def.exec)) : def.exec;
  try {
    const st = statSync(hostExec);
    if (!st.isFile()) return problem('exec', `exec: ${def.exec} is not a regular file`);
    accessSync(hostExec, constants.X_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return problem('exec', `exec: ${def.exec}: ${code === 'ENOENT' ? 'not installed' : code === 'EACCES' ? 'not executable' : (e as Error).message}`);
  }
  if (!/^[A-Za-z0-9_.-]+$/.test(def.seccompPolicy) || def.seccompPolicy.startsWith('.')) {
    return problem('seccompPolicy', `seccompPolicy: "${def.seccompPolicy}" is not a policy name (a file NAME.json in the policy directory)`);
  }
  const policyFile = path.join(policyDir, `${def.seccompPolicy}.json`);
  if (!existsSync(policyFile)) return problem('seccompPolicy', `seccompPolicy: no policy "${def.seccompPolicy}" (${def.seccompPolicy}.json is not in the policy directory)`);
  try {
    seccompRecords(policyDir, def.seccompPolicy);
  } catch (e) {
    return { file: policyFile, message: `policy of ${path.basename(def.file)}: ${(e as Error).message.replace(`${policyFile}: `, '')}`, fstypes: def.fstypes };
  }
  if (def.sandbox !== undefined) {
    const sb = path.join(path.dirname(def.file), def.sandbox);
    if (!existsSync(sb)) return problem('sandbox', `sandbox: ${def.sandbox} does not exist next to the definition`);
    try {
      sandboxOf(def);
    } catch (e) {
      // UnitError messages start with FILE:LINE already.
      return { file: sb, message: (e as Error).message.replace(new RegExp(`^${escapeRe(sb)}:?`), '').trim(), fstypes: def.fstypes };
    }
  }
  for (const [i, p] of def.paths.entries()) {
    if (!p.optional && !existsSync(p.src)) return problem(`paths`, `paths[${i}].src: ${p.src} does not exist on this host (or mark it "optional": true)`);
  }
  return undefined;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Loads every *.json in dir and checks it; never throws for a definition's fault. A type
 * claimed by two definitions is served by the first (in file name order) and the second is
 * reported for it.
 */
export function loadServerDefs(dir: string, policyDir: string): LoadedServers {
  const servers = new Map<string, ServerDef>();
  const problems: DefProblem[] = [];
  const loaded: LoadedServers['loaded'] = [];
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.json')).sort();
  } catch (e) {
    return { servers, loaded, problems: [{ file: dir, message: `cannot read server definitions: ${(e as Error).message}`, fstypes: [] }] };
  }
  for (const n of names) {
    const file = path.join(dir, n);
    let text = '';
    let def: ServerDef;
    try {
      text = readFileSync(file, 'utf8');
      def = parseServerDef(file, text);
    } catch (e) {
      const at = e instanceof ServerDefError ? e.at : undefined;
      problems.push({ file, line: lineOfProblem(text, at), message: (e as Error).message.replace(`${file}: `, ''), fstypes: claimedTypes(text) });
      continue;
    }
    const p = checkDef(def, text, policyDir);
    if (p) {
      problems.push(p);
      continue;
    }
    const mine: string[] = [];
    for (const t of def.fstypes) {
      const other = servers.get(t);
      if (other) problems.push({ file, line: lineOfProblem(text, { key: 'fstypes' }), message: `fstypes: "${t}" is already served by ${path.basename(other.file)}`, fstypes: [t] });
      else {
        servers.set(t, def);
        mine.push(t);
      }
    }
    if (mine.length) loaded.push({ file, name: def.name, fstypes: mine });
  }
  return { servers, problems, loaded };
}

/** Types the configuration allows that no valid definition serves. */
export function unservedTypes(fstypes: readonly string[], servers: ReadonlyMap<string, ServerDef>): string[] {
  return fstypes.filter((t) => !servers.has(t));
}
