// Seccomp filters compiled once per definition (issue 12 §2, issue 16 §2). Turning a policy's
// ~390 rules into BPF with libseccomp was the launcher's largest step on the request path, and
// it gave the same program every time: nothing in the filters depends on the instance (the
// policy file, whether there is a source sentinel and whether mount(2) is notified are all the
// definition's). So the first launch of a definition runs `fuse-svc-launcher compile-seccomp`
// once, and every instance spec carries the result (`seccomp_program` records, docs/launcher.md)
// in place of the rules. The programs travel inside the spec, over the broker's pipe or socket
// to the launcher like every other record: there is no file anyone could swap in between.
import { closeSync, readSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import * as sock from '../helper/native/socket.js';
import { renderSpec, type SpecRecord } from './launch-spec.js';

const RULE_KEYS = new Set(['seccomp_default', 'seccomp_arch', 'seccomp_rule']);
const PROGRAM_LINE = /^seccomp_program\t(policy|notify)\t(\d+)\t([0-9a-f]{16})\t([0-9a-f]+)$/;

type Compiled = { rules: SpecRecord[]; variant: string; programs: SpecRecord[] };
// A policy's records come from one cached array (seccompRecords, seccompRecordsOf): the same
// record objects in every spec of that definition. Looked up by the first one and confirmed
// record by record (by reference), the cache costs a few µs per launch instead of the
// ~0.2 ms of rendering and hashing the rules; anything else falls back to the text key.
const byRecord = new WeakMap<SpecRecord, Compiled[]>();
const byText = new Map<string, SpecRecord[]>();
const TEXT_CACHE_MAX = 64;

/**
 * The spec with its seccomp_default/seccomp_arch/seccomp_rule records replaced by the
 * precompiled seccomp_program records (compiled on first use, then cached for the process).
 * A spec without rules and without a source sentinel needs no filter and is returned as is.
 */
export function withPrecompiledSeccomp(launcher: string, spec: SpecRecord[]): SpecRecord[] {
  const rules: SpecRecord[] = [];
  const rest: SpecRecord[] = [];
  let sentinel: SpecRecord | undefined;
  let notifyMount = false;
  for (const r of spec) {
    if (RULE_KEYS.has(r[0] as string)) rules.push(r);
    else rest.push(r);
    if (r[0] === 'source_sentinel') sentinel = r;
    if (r[0] === 'fuse_handover' && r[1] === 'notify') notifyMount = true;
  }
  // A profile run (seccomp_profile) has no policy and a notify-everything filter the launcher
  // builds itself; nothing precompiled applies to it.
  if ((!rules.length && !sentinel) || spec.some((r) => r[0] === 'seccomp_profile')) return spec;
  const variant = `${launcher}\0${sentinel ? 1 : 0}${notifyMount ? 1 : 0}`;
  const programs = rules.length ? lookup(rules, variant) : undefined;
  if (programs) return rest.concat(programs);
  const input: SpecRecord[] = [['version', 1]];
  if (sentinel) input.push(sentinel);
  if (notifyMount) input.push(['fuse_handover', 'notify']);
  input.push(...rules);
  const text = renderSpec(input);
  const key = createHash('sha256').update(variant).update(text).digest('hex');
  let compiled = byText.get(key);
  if (!compiled) {
    compiled = compile(launcher, text, rules.length > 0, sentinel !== undefined);
    if (byText.size >= TEXT_CACHE_MAX) byText.delete(byText.keys().next().value!);
    byText.set(key, compiled);
  }
  if (rules.length) {
    const list = byRecord.get(rules[0]) ?? [];
    list.push({ rules, variant, programs: compiled });
    byRecord.set(rules[0], list);
  }
  return rest.concat(compiled);
}

function lookup(rules: SpecRecord[], variant: string): SpecRecord[] | undefined {
  for (const c of byRecord.get(rules[0]) ?? []) {
    if (c.variant !== variant || c.rules.length !== rules.length) continue;
    if (c.rules.every((r, i) => r === rules[i])) return c.programs;
  }
  return undefined;
}

/**
 * Runs `launcher compile-seccomp` with the filter records on fd 3 and returns its
 * seccomp_program records. Synchronous: it happens once per definition and process, takes a
 * few ms, and is bounded by the launcher itself (it parses and compiles, nothing else; an
 * alarm ends it after 10 s). Spawned through the addon, like every launcher: a child of
 * Node's would hold and close copies of callers' descriptors.
 */
function compile(launcher: string, text: Buffer, wantPolicy: boolean, wantNotify: boolean): SpecRecord[] {
  const opened: number[] = [];
  let out = '';
  let pid: number;
  try {
    const [specRd, specWr] = sock.pipe();
    opened.push(specRd, specWr);
    // At most 64 KiB (renderSpec): fits the pipe, the write cannot block.
    writeSync(specWr, text);
    const [outRd, outWr] = sock.pipe();
    opened.push(outRd, outWr);
    // stderr: the broker's, so a rule libseccomp skips is logged once, not per instance
    pid = sock.spawnDetached(launcher, [launcher, 'compile-seccomp'], [-1, outWr, 2, specRd]);
    for (const fd of [specRd, specWr, outWr]) {
      closeSync(fd);
      opened.splice(opened.indexOf(fd), 1);
    }
    const buf = Buffer.alloc(65536);
    for (;;) {
      const n = readSync(outRd, buf, 0, buf.length, null);
      if (n === 0) break;
      out += buf.toString('latin1', 0, n);
      if (out.length > 256 * 1024) throw new Error('compile-seccomp wrote more than 256 KiB');
    }
  } catch (e) {
    throw new Error(`seccomp filters not compiled: cannot run ${launcher} compile-seccomp: ${(e as Error).message}`);
  } finally {
    for (const fd of opened) closeSync(fd);
  }
  reap(pid);
  const lines = out.split('\n').filter((l) => l !== '');
  const err = lines.find((l) => l.startsWith('error\t'));
  if (err) {
    const [, code, msg] = err.split('\t');
    throw new Error(`seccomp filters not compiled: ${code} ${msg ?? ''}`.trim());
  }
  const kinds = new Set<string>();
  const records: SpecRecord[] = lines.map((l) => {
    const m = PROGRAM_LINE.exec(l);
    if (!m || kinds.has(m[1]) || m[4].length !== Number(m[2]) * 16) throw new Error(`seccomp filters not compiled: compile-seccomp wrote "${l.slice(0, 80)}"`);
    kinds.add(m[1]);
    return ['seccomp_program', m[1], m[2], m[3], m[4]];
  });
  if (kinds.has('policy') !== wantPolicy || kinds.has('notify') !== wantNotify) {
    throw new Error(`seccomp filters not compiled: compile-seccomp gave ${[...kinds].join(', ') || 'nothing'}`);
  }
  return records;
}

const nap = new Int32Array(new SharedArrayBuffer(4));
/**
 * The compiler exits right after it closes its output: reaped here (a few 1 ms naps at most),
 * so no zombie outlives a short-lived caller; a slow one is left to a watcher.
 */
function reap(pid: number): void {
  let pidfd: number;
  try {
    pidfd = sock.pidfdOpen(pid);
  } catch {
    return; // cannot happen for our own unreaped child; nothing to do
  }
  for (let i = 0; i < 200; i++) {
    if (sock.pidfdReap(pidfd)) {
      sock.close(pidfd);
      return;
    }
    Atomics.wait(nap, 0, 0, 1);
  }
  const w = sock.poll(pidfd, 'readable', () => {
    w.stop();
    try {
      sock.pidfdReap(pidfd);
    } finally {
      sock.close(pidfd);
    }
  });
  w.unref();
}
