// Instances: start (through the launcher), watch, stop, re-adopt after a broker restart, and the
// state files in RUNDIR/instances that make that possible. The launcher owns each server's
// lifetime; the broker only starts instances, signals them through pidfds and reads their state.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import * as sock from '../helper/native/socket.js';
import { RequestError, isErrorCode, oneLine } from './protocol.js';
import { renderSpec, type SpecRecord } from './launch-spec.js';
import { log } from './log.js';

export type InstanceRecord = {
  id: number;
  owner_uid: number;
  owner_gid: number;
  fstype: string;
  options: string;
  source: string;
  target: string;
  uid: number;
  server: string;
  started_at: number;
  launcher_pid?: number;
  /** /proc/PID/stat field 22: with the pidfd, proves a pid is still the launcher we started. */
  launcher_start?: string;
  /** Unique mount id (statx STATX_MNT_ID_UNIQUE) and the reusable one that fdinfo shows. */
  mnt_id?: string;
  mnt_id_old?: string;
  /** The target as the kernel prints the caller's descriptor, at mount time. */
  target_path?: string;
  /** Instance cgroups a pooled launcher sat in itself: the broker removes them after it. */
  cgroups_to_remove?: string[];
};

export type InstanceState = {
  state: 'starting' | 'running' | 'stopping' | 'exited';
  server_pid?: number;
  exit_code?: number;
  exit_signal?: number;
  reason?: string;
  ended_at?: number;
};

export type Instance = {
  rec: InstanceRecord;
  pidfd: number;
  watcher?: sock.Watcher;
  status: InstanceState;
  /** Resolved when the launcher has exited and its final state was read. */
  ended: Promise<InstanceState>;
  endedResolve: (s: InstanceState) => void;
  /** Its launcher died without finishing; the mount may be left dead in the caller's namespace. */
  orphaned?: boolean;
};

const SIGTERM = 15;

export class InstanceDir {
  readonly dir: string;
  readonly uidDir: string;
  constructor(readonly runtimeDir: string) {
    this.dir = path.join(runtimeDir, 'instances');
    this.uidDir = path.join(runtimeDir, 'uids');
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    mkdirSync(this.uidDir, { recursive: true, mode: 0o700 });
  }
  file(id: number, ext: 'json' | 'state' | 'log'): string {
    return path.join(this.dir, `${id}.${ext}`);
  }
  writeRecord(rec: InstanceRecord): void {
    atomicWrite(this.file(rec.id, 'json'), JSON.stringify(rec) + '\n');
  }
  readRecord(id: number): InstanceRecord | undefined {
    try {
      return JSON.parse(readFileSync(this.file(id, 'json'), 'utf8')) as InstanceRecord;
    } catch {
      return undefined;
    }
  }
  readState(id: number): InstanceState | undefined {
    let text: string;
    try {
      text = readFileSync(this.file(id, 'state'), 'utf8');
    } catch {
      return undefined;
    }
    const kv = Object.fromEntries(text.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    const num = (k: string) => (kv[k] === undefined || kv[k] === '' ? undefined : Number(kv[k]));
    const state = ['starting', 'running', 'stopping', 'exited'].includes(kv.state) ? (kv.state as InstanceState['state']) : 'starting';
    return { state, server_pid: num('server_pid'), exit_code: num('exit_code'), exit_signal: num('exit_signal'), reason: kv.reason, ended_at: num('ended_at') };
  }
  ids(): number[] {
    return readdirSync(this.dir)
      .map((n) => /^(\d+)\.json$/.exec(n)?.[1])
      .filter((x): x is string => x !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
  }
  remove(id: number): void {
    for (const ext of ['json', 'state', 'log', 'state.tmp'] as const) rmSync(path.join(this.dir, `${id}.${ext}`), { force: true });
  }
  logTail(id: number, bytes = 2048): string {
    try {
      const t = readFileSync(this.file(id, 'log'), 'utf8');
      return t.slice(-bytes);
    } catch {
      return '';
    }
  }
}

/**
 * Write to FILE.tmp, then rename: a reader sees the old or the new text, never half. No fsync:
 * state must survive a crash of a process, not of the machine (no instance outlives a reboot,
 * and the runtime directory is a tmpfs in a normal deployment).
 */
export function atomicWrite(file: string, text: string): void {
  const tmp = `${file}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeFileSync(fd, text);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}

/** Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat). */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/**
 * A pidfd for the launcher of `rec`, or undefined when that process is gone. A pidfd pins the
 * pid number, so checking the start time after opening it proves it is the same process.
 */
export function openLauncherPidfd(rec: InstanceRecord): number | undefined {
  if (!rec.launcher_pid || !rec.launcher_start) return undefined;
  let pidfd: number;
  try {
    pidfd = sock.pidfdOpen(rec.launcher_pid);
  } catch {
    return undefined;
  }
  if (processStartTime(rec.launcher_pid) !== rec.launcher_start) {
    sock.close(pidfd);
    return undefined;
  }
  return pidfd;
}

export type LaunchResult = { ok: true; serverPid: number; mntId: string; mntIdOld: string } | { ok: false; code: string; message: string };

export type LaunchArgs = {
  launcher: string;
  spec: SpecRecord[];
  /** fds placed at 4, 5, 6… in the launcher. */
  fds: number[];
  logFile: string;
  readyTimeoutMs: number;
  /** The caller's uid: copies of its descriptors are dropped under it (fdsafe.ts). */
  tag?: number;
};

/**
 * Spawns a launcher detached (its own session; it must outlive the broker) with an empty
 * environment, hands it the spec on fd 3 and waits for its one readiness line. posix_spawn
 * through the addon rather than child_process: Node's fork() costs milliseconds that grow
 * with the broker's heap, on every mount.
 */
export function spawnLauncher(a: LaunchArgs): { pid: number; ready: Promise<LaunchResult> } {
  const spec = renderSpec(a.spec);
  const opened: number[] = [];
  let readyRd = -1;
  let pid: number;
  try {
    const logFd = openSync(a.logFile, 'a', 0o600);
    opened.push(logFd);
    const [specRd, specWr] = sock.pipe();
    opened.push(specRd, specWr);
    // The spec (at most 64 KiB, checked by renderSpec) fits the pipe: this write cannot block.
    writeSync(specWr, spec);
    closeSync(specWr);
    opened.splice(opened.indexOf(specWr), 1);
    const [rd, readyWr] = sock.pipe();
    readyRd = rd;
    opened.push(readyWr);
    pid = sock.spawnDetached(a.launcher, [a.launcher, 'instance'], [-1, readyWr, logFd, specRd, ...a.fds], a.tag ?? -1);
  } catch (e) {
    if (readyRd >= 0) closeSync(readyRd);
    throw new RequestError('EINTERNAL', `cannot start the launcher ${a.launcher}: ${(e as Error).message}`);
  } finally {
    for (const fd of opened) closeSync(fd);
  }
  return { pid, ready: readReady(readyRd, a.readyTimeoutMs) };
}

/**
 * Waits for a launcher's one readiness line on readyRd (the read end of its fd 1), at most
 * timeoutMs; closes readyRd when done.
 */
export function readReady(readyRd: number, timeoutMs: number): Promise<LaunchResult> {
  return new Promise<LaunchResult>((resolve) => {
    let buf = '';
    let done = false;
    const finish = (r: LaunchResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      w.stop();
      closeSync(readyRd);
      resolve(r);
    };
    const timer = setTimeout(() => {
      finish({ ok: false, code: 'ETIMEDOUT_SERVER', message: `no answer from the launcher within ${timeoutMs} ms` });
    }, timeoutMs);
    const chunk = Buffer.alloc(4096);
    const w = sock.poll(readyRd, 'readable', () => {
      let n: number;
      try {
        n = readSync(readyRd, chunk, 0, chunk.length, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return;
        n = 0;
      }
      if (n === 0) {
        finish({ ok: false, code: 'EINTERNAL', message: 'the launcher exited without a readiness line' });
        return;
      }
      buf += chunk.toString('utf8', 0, n);
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > 4096) finish({ ok: false, code: 'EINTERNAL', message: 'the launcher wrote an overlong readiness line' });
        return;
      }
      const [kind, f1, f2, f3] = buf.slice(0, nl).split('\t');
      if (kind === 'ready') finish({ ok: true, serverPid: Number(f1), mntId: f2 ?? '0', mntIdOld: f3 ?? '0' });
      else if (kind === 'error') finish({ ok: false, code: isErrorCode(f1) ? f1 : 'EINTERNAL', message: oneLine(f2 ?? 'launcher failed') });
      else finish({ ok: false, code: 'EINTERNAL', message: `the launcher wrote "${oneLine(buf.slice(0, nl), 80)}"` });
    });
  });
}

/**
 * Runs a short helper with `fds` at 3, 4… and an empty environment; resolves with its exit
 * code and stderr. (execa does not place arbitrary descriptors above stderr.)
 */
export function runWithFds(cmd: string, args: string[], fds: number[], timeoutMs: number): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe', ...fds], env: {} });
    let stderr = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => (stderr = (stderr + d).slice(-4096)));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: -1, stderr: e.message });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stderr });
    });
  });
}

/** Calls back once when the process behind pidfd has exited (pidfds poll readable then). */
export function onPidfdExit(pidfd: number, cb: () => void): sock.Watcher {
  let fired = false;
  const w = sock.poll(pidfd, 'readable', () => {
    if (fired) return;
    fired = true;
    w.stop();
    // Our own launchers are reaped here (spawnDetached children are unknown to Node);
    // re-adopted ones are someone else's children and answer null.
    try {
      sock.pidfdReap(pidfd);
    } catch {
      /* not reapable: nothing to do */
    }
    cb();
  });
  return w;
}

/** Waits until pidfd's process exited, at most ms; true if it did. */
export function waitPidfd(pidfd: number, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      w.stop();
      resolve(false);
    }, ms);
    const w = onPidfdExit(pidfd, () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

export function signalLauncher(pidfd: number, sig = SIGTERM): boolean {
  try {
    sock.pidfdSendSignal(pidfd, sig);
    return true;
  } catch {
    return false;
  }
}

/**
 * Full stop, usable with or without a running broker: every live instance in the runtime
 * directory is unmounted in its caller's namespace and its server ended.
 */
export async function stopAll(runtimeDir: string, timeoutMs = 30000): Promise<{ stopped: number; gone: number }> {
  if (!existsSync(path.join(runtimeDir, 'instances'))) return { stopped: 0, gone: 0 };
  const dir = new InstanceDir(runtimeDir);
  const waits: Promise<boolean>[] = [];
  let gone = 0;
  for (const id of dir.ids()) {
    const rec = dir.readRecord(id);
    const st = dir.readState(id);
    if (!rec || st?.state === 'exited') continue;
    const pidfd = openLauncherPidfd(rec);
    if (pidfd === undefined) {
      gone++;
      continue;
    }
    signalLauncher(pidfd);
    log.info(`stop: instance ${id} (${rec.source} on ${rec.target}, uid ${rec.owner_uid}): unmounting`);
    waits.push(
      waitPidfd(pidfd, timeoutMs).then((ok) => {
        sock.close(pidfd);
        if (!ok) log.warn(`stop: instance ${id} did not end within ${timeoutMs} ms`);
        return ok;
      }),
    );
  }
  const results = await Promise.all(waits);
  return { stopped: results.filter(Boolean).length, gone };
}
