// `fuse-svcd profile`: a server author's way to a seccomp policy. A private broker (its own
// state and socket in a fresh root-only directory) serves the definition's type with no seccomp
// policy: the launcher's notifier stops every call of the sandbox, records its number and lets
// it through (seccomp_profile, docs/launcher.md); every other part of the sandbox is as always.
// The author's workload runs against the mount; after the unmount the recorded calls become
// the definition's `.sandbox` with an allow-list, and the policy is generated from that file
// exactly as gen-policies generates the shipped ones.
import { chmodSync, chownSync, closeSync, openSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { execa } from 'execa';
import type { Config } from './config.js';
import { ConfigError } from './config.js';
import type { ServerDef } from './servers.js';
import { formatProfile, systemCallFilterToProfile } from './sandbox/seccomp.js';
import { loadServiceFile, seccompOptions } from './units/directives.js';

export type ProfileRequest = {
  def: ServerDef;
  fstype: string;
  source: string;
  /** A transport server's `--via COMMAND` (sshfs): run by the client as `uid`; source is then PATH or HOST:PATH. */
  via?: string;
  /** Run by /bin/sh -c, as `uid`, with MNT set to the mount point. */
  workload: string;
  options: string;
  uid: number;
  gid: number;
  outDir: string;
  /** Base name of the written NAME.sandbox and NAME.json. */
  name: string;
  timeoutMs: number;
};

export type ProfileResult = {
  recorded: string[];
  /** Recorded, and allowed by the definition's current policy: the new allow-list. */
  kept: string[];
  /** Recorded, but refused by the current policy: left out, named in the .sandbox. */
  beyond: string[];
  /** Recorded, and answered by the current policy with an errno of its own: kept so. */
  answered: string[];
  sandboxFile: string;
  policyFile: string;
};

type Policy = { defaultErrnoRet?: number; syscalls?: { names: string[]; action: string; errnoRet?: number; args?: unknown[] }[] };

/** The names the policy's ALLOW rules name (with or without argument conditions). */
export function allowedNames(policyFile: string): Set<string> {
  const p = JSON.parse(readFileSync(policyFile, 'utf8')) as Policy;
  return new Set((p.syscalls ?? []).filter((s) => s.action === 'SCMP_ACT_ALLOW').flatMap((s) => s.names));
}

/**
 * Calls the policy answers, whatever their arguments, with an errno of their own rather than
 * its default (clone3: ENOSYS, so glibc falls back to clone, whose flags a filter can read).
 * A server copes with that answer under the policy it has; the profile keeps it.
 */
export function ownErrnos(policyFile: string): Map<string, number> {
  const p = JSON.parse(readFileSync(policyFile, 'utf8')) as Policy;
  const out = new Map<string, number>();
  for (const r of p.syscalls ?? []) {
    if (r.action !== 'SCMP_ACT_ERRNO' || r.args?.length || r.errnoRet === undefined || r.errnoRet === p.defaultErrnoRet) continue;
    for (const n of r.names) out.set(n, r.errnoRet);
  }
  return out;
}

/**
 * The definition's .sandbox with its SystemCallFilter= lines replaced by the allow-list (eight
 * names a line; in unit semantics the first positive line starts the list, the others add to
 * it). Every other directive stays: the policy's argument rules (RestrictAddressFamilies=,
 * MemoryDenyWriteExecute=, ...) and SystemCallErrorNumber= come from them as before.
 */
export function profiledSandbox(original: string, kept: string[], beyond: string[], about: string, answered = new Map<string, number>()): string {
  const lines = original.split('\n');
  const out: string[] = [];
  let placed = false;
  const list = [...kept].sort();
  for (const l of lines) {
    if (/^\s*SystemCallFilter\s*=/.test(l)) {
      if (placed) continue;
      placed = true;
      out.push(`# Written by fuse-svcd profile (${about}): the calls the server made over its workload,`);
      out.push('# those its previous policy allowed. Regenerate the policy from this file after an edit.');
      if (beyond.length) out.push(`# Also made, refused by the previous policy (left out; add by name if it needs them): ${beyond.join(' ')}`);
      for (let i = 0; i < list.length; i += 8) out.push(`SystemCallFilter=${list.slice(i, i + 8).join(' ')}`);
      if (answered.size) {
        out.push('# Made, and answered by the previous policy with an errno of their own, which the server copes with:');
        out.push(`SystemCallFilter=~${[...answered].map(([n, e]) => `${n}:${e}`).join(' ')}`);
      }
      continue;
    }
    out.push(l);
  }
  if (!placed) throw new ConfigError('the definition\'s .sandbox has no SystemCallFilter= to replace');
  return out.join('\n');
}

/**
 * What the reaper (launcher.c run_reaper: pid 1 of a daemonizing server's sandbox, under the
 * same policy) may call: the signal forwarding of a stop (kill) need not happen during the
 * profiled run, so these are always in a daemonizing server's profile.
 */
export const REAPER_CALLS = ['clone', 'close', 'close_range', 'exit_group', 'kill', 'rt_sigprocmask', 'rt_sigtimedwait', 'wait4', 'write'];

/** The child's exit code; null (and SIGKILL) when it takes longer than ms. */
function exitOf(child: ChildProcess, ms: number): Promise<number | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve(null);
    }, ms);
    child.once('error', () => (clearTimeout(timer), resolve(null)));
    child.once('exit', (c) => (clearTimeout(timer), resolve(c)));
  });
}

/**
 * What libc calls instead when a call fails ENOSYS: with no policy the profiled server's clone3
 * succeeds, so its threads' clone never shows; under a policy that answers clone3 ENOSYS
 * (RestrictNamespaces=) glibc falls back to clone, which must then be allowed.
 */
export const ENOSYS_FALLBACK: Readonly<Record<string, string[]>> = { clone3: ['clone'], openat2: ['openat'] };
const ENOSYS = 38;

export type BrokerHandle = { socket: string; close(): Promise<void> };

/**
 * Mount, workload, unmount through a private broker started by `start` (main.ts: the same
 * set-up as `run`), then write NAME.sandbox and NAME.json to outDir.
 */
export async function profileServer(base: Config, r: ProfileRequest, start: (cfg: Config) => Promise<BrokerHandle>): Promise<ProfileResult> {
  if (!r.def.sandbox) throw new ConfigError(`${r.def.file}: profile needs a "sandbox" file to write the allow-list into`);
  const work = mkdtempSync(path.join(os.tmpdir(), 'fuse-svcd-profile-'));
  // search only: the caller (--uid) reaches its mount point, nothing else here
  chmodSync(work, 0o711);
  const cfg: Config = {
    ...base,
    runtimeDir: path.join(work, 'state'),
    socket: path.join(work, 'public', 'broker.sock'),
    poolSize: 0,
    fstypes: [r.fstype],
    publishClient: false,
    upstreamSockets: false,
    dockerPlugin: false,
    profileDir: path.join(work, 'syscalls'),
  };
  mkdirSync(cfg.profileDir!, { mode: 0o700 });
  const mnt = path.join(work, 'mnt');
  mkdirSync(mnt, { mode: 0o755 });
  chownSync(mnt, r.uid, r.gid);
  const client = path.join(cfg.nativeDir, 'fuse-svc-client');
  const as = { uid: r.uid, gid: r.gid, reject: false, timeout: r.timeoutMs } as const;
  let broker: BrokerHandle | undefined;
  let mounted = false;
  try {
    broker = await start(cfg);
    const opts = r.options ? ['-o', r.options] : [];
    const via = r.via !== undefined ? ['--via', r.via] : [];
    // Into files as plain descriptors, not pipes: a --via COMMAND outlives the client and keeps
    // its stderr, so a pipe (execa's file output too) would never see its end.
    const [mout, merr] = [path.join(work, 'mount.out'), path.join(work, 'mount.err')];
    const [fo, fe] = [openSync(mout, 'w', 0o600), openSync(merr, 'w', 0o600)];
    let code: number | null;
    try {
      code = await exitOf(spawn(client, ['--socket', cfg.socket, '--json', 'mount', '-t', r.fstype, ...opts, ...via, r.source, mnt], { uid: r.uid, gid: r.gid, stdio: ['ignore', fo, fe] }), r.timeoutMs);
    } finally {
      closeSync(fo);
      closeSync(fe);
    }
    const [mo, me] = [readFileSync(mout, 'utf8'), readFileSync(merr, 'utf8')];
    if (code !== 0) throw new Error(`profile: the mount failed${code === null ? ' (timed out)' : ''}: ${(me || mo).trim()}`);
    mounted = true;
    const id = (JSON.parse(mo) as { id: number }).id;
    const w = await execa('/bin/sh', ['-c', r.workload], { ...as, cwd: '/', env: { MNT: mnt, PATH: '/usr/bin:/bin' }, extendEnv: false });
    if (w.exitCode !== 0) throw new Error(`profile: the workload failed (exit ${w.exitCode}${w.timedOut ? ', timed out' : ''}): ${(w.stderr || w.stdout).trim().split('\n').slice(-3).join(' | ')}`);
    const u = await execa(client, ['--socket', cfg.socket, 'unmount', mnt], as);
    if (u.exitCode !== 0) throw new Error(`profile: the unmount failed: ${u.stderr.trim()}`);
    mounted = false;
    // The launcher writes the file as it exits, after the server is gone.
    const file = path.join(cfg.profileDir!, `${id}.syscalls`);
    const end = Date.now() + 30000;
    while (!existsSync(file) && Date.now() < end) await new Promise((res) => setTimeout(res, 50));
    if (!existsSync(file)) throw new ConfigError('profile: the instance did not end within 30 s after the unmount (no record of its calls)');
    await new Promise((res) => setTimeout(res, 100));
    const recorded = [...new Set([...readFileSync(file, 'utf8').split('\n').filter(Boolean), ...(r.def.daemonizes ? REAPER_CALLS : [])])].sort();
    const allowed = allowedNames(path.join(cfg.policyDir, `${r.def.seccompPolicy}.json`));
    const own = ownErrnos(path.join(cfg.policyDir, `${r.def.seccompPolicy}.json`));
    const answered = new Map(recorded.filter((n) => !allowed.has(n) && own.has(n)).map((n) => [n, own.get(n)!] as const));
    const fallbacks = [...answered].flatMap(([n, e]) => (e === ENOSYS ? ENOSYS_FALLBACK[n] ?? [] : []));
    const kept = [...new Set([...recorded, ...fallbacks])].filter((n) => allowed.has(n)).sort();
    const beyond = recorded.filter((n) => !allowed.has(n) && !own.has(n));
    mkdirSync(r.outDir, { recursive: true });
    const sandboxFile = path.join(r.outDir, `${r.name}.sandbox`);
    const policyFile = path.join(r.outDir, `${r.name}.json`);
    const original = readFileSync(path.join(path.dirname(r.def.file), r.def.sandbox), 'utf8');
    writeFileSync(sandboxFile, profiledSandbox(original, kept, beyond, `${r.def.name}, type ${r.fstype}`, answered));
    // Generated from the written file, as gen-policies does for the shipped ones.
    writeFileSync(policyFile, formatProfile(systemCallFilterToProfile(seccompOptions(loadServiceFile(sandboxFile).svc))));
    return { recorded, kept, beyond, answered: [...answered.keys()], sandboxFile, policyFile };
  } finally {
    if (mounted && broker) await execa(client, ['--socket', cfg.socket, 'unmount', mnt], as);
    await broker?.close();
    rmSync(work, { recursive: true, force: true });
  }
}
