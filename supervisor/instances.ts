// Instances: start (through the launcher), watch, stop, re-adopt after a broker restart, and the
// state files in RUNDIR/instances that make that possible. The launcher owns each server's
// lifetime; the broker only starts instances, signals them through pidfds and reads their state.
import { closeSync, constants as fsc, existsSync, readFileSync, readSync, readdirSync, rmSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import * as sock from '../helper/native/socket.js';
import { RequestError, isErrorCode, oneLine } from './protocol.js';
import { renderSpec, type SpecRecord } from './launch-spec.js';
import { withPrecompiledSeccomp } from './seccomp-programs.js';
import { log } from './log.js';
import { checkRootDir, createFileNoFollow, openDirNoFollow, openSubdir, readFileNoFollow, writeFileNoFollow } from './safefile.js';
import { POOL_ID_BASE } from './cgroups.js';

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
  /** The caller's mount namespace ("dev:ino" of /proc/PID/ns/mnt) where the broker saw it. */
  mntns?: string;
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
  /** What the launcher says of itself: a broker killed right after the spawn never recorded it. */
  launcher_pid?: number;
  launcher_start?: string;
  mnt_id?: string;
  mnt_id_old?: string;
  /** The launcher detached the mount (or found it gone): if it dies now, no dead mount is left. */
  detached?: boolean;
  /**
   * A detach found the mount but could not remove it (the caller covered it with another
   * mount, or a step failed): it stays in the caller's namespace, dead once the server ends.
   */
  left_mounted?: boolean;
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
/** Files a writer may still be at are left alone this long by the start-up collection. */
const GC_GRACE_MS = 60000;

export type UnitRecord = { id: number; unit: string; peer_uid: number; uid: number; started_at: number; launcher_pid?: number; launcher_start?: string };

function statOr(p: string): { mtimeMs: number } | undefined {
  try {
    return statSync(p);
  } catch {
    return undefined;
  }
}

/** Whether the unit instance's launcher (from its record, else its own state file) still runs. */
function unitLauncherAlive(u: UnitRecord, st: InstanceState | undefined): boolean {
  if (st?.state === 'exited') return false;
  const pidfd = openLauncherPidfd({ launcher_pid: u.launcher_pid ?? st?.launcher_pid, launcher_start: u.launcher_start ?? st?.launcher_start });
  if (pidfd === undefined) return false;
  sock.close(pidfd);
  return true;
}

/** Ids reserved in `next-id` at a time: one small write per this many instances. */
const ID_BLOCK = 100;

export class InstanceDir {
  readonly dir: string;
  readonly uidDir: string;
  constructor(readonly runtimeDir: string) {
    this.dir = path.join(runtimeDir, 'instances');
    this.uidDir = path.join(runtimeDir, 'uids');
    // Made or checked without following links (safefile.ts): an UnsafePathError means a link
    // or someone else's directory was planted here.
    const root = openDirNoFollow(runtimeDir, 0o700);
    try {
      this.dirFd = openSubdir(root, 'instances', 0o700, this.dir);
      try {
        sock.close(openSubdir(root, 'uids', 0o700, this.uidDir));
      } catch (e) {
        sock.close(this.dirFd);
        throw e;
      }
    } finally {
      sock.close(root);
    }
  }
  /**
   * instances/, opened once without following links and held for this object's life: records
   * are written and read relative to it, instead of walking from / for each (issue 9: that walk
   * was a dozen syscalls per mount cycle). Held, the directory cannot be swapped for another
   * behind the broker: what a later rename or link at the path does is not followed. Every use
   * re-checks it is still root's and writable by root alone (one fstat).
   */
  private readonly dirFd: number;
  private held(): number {
    checkRootDir(this.dirFd, this.dir);
    return this.dirFd;
  }
  file(id: number, ext: 'json' | 'state' | 'log'): string {
    return path.join(this.dir, `${id}.${ext}`);
  }
  writeRecord(rec: InstanceRecord): void {
    writeFileNoFollow(this.held(), `${rec.id}.json`, JSON.stringify(rec) + '\n');
  }
  readRecord(id: number): InstanceRecord | undefined {
    try {
      return JSON.parse(readFileNoFollow(this.held(), `${id}.json`) ?? '') as InstanceRecord;
    } catch {
      return undefined;
    }
  }
  readState(id: number): InstanceState | undefined {
    // Written by the launcher as root; anything else in its place is not believed.
    const text = readFileNoFollow(this.held(), `${id}.state`);
    if (text === undefined) return undefined;
    const kv = Object.fromEntries(text.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    const num = (k: string) => (kv[k] === undefined || kv[k] === '' ? undefined : Number(kv[k]));
    const state = ['starting', 'running', 'stopping', 'exited'].includes(kv.state) ? (kv.state as InstanceState['state']) : 'starting';
    const mntId = (k: string) => (kv[k] && kv[k] !== '0' ? kv[k] : undefined);
    return {
      state,
      server_pid: num('server_pid'),
      exit_code: num('exit_code'),
      exit_signal: num('exit_signal'),
      reason: kv.reason,
      ended_at: num('ended_at'),
      launcher_pid: num('launcher_pid'),
      launcher_start: kv.launcher_start || undefined,
      mnt_id: mntId('mnt_id'),
      mnt_id_old: mntId('mnt_id_old'),
      detached: kv.detached === '1',
      left_mounted: kv.left_mounted === '1',
    };
  }

  /**
   * Instance ids are never reused, across broker restarts and SIGKILLs: a block of ids is
   * reserved in `next-id` before any id of it is handed out, so the next broker starts past
   * every id a previous one may have used (a launcher of one would otherwise write its end
   * state into the record of a new instance with its id). Also past every id on disk. No
   * fsync (as atomicWrite): the directory does not outlive a reboot, nor does any instance.
   */
  newId(): number {
    if (this.idNext === undefined || this.idNext >= this.idLimit) {
      // Re-read at each block: the unit activator allocates from the same file (one process).
      const saved = Number(/^(\d+)/.exec(readFileNoFollow(this.held(), 'next-id') ?? '')?.[1] ?? 0);
      let next = Math.max(this.idNext ?? 1, saved);
      if (this.idNext === undefined) next = Math.max(next, Math.max(0, ...this.allIds()) + 1);
      this.idLimit = next + ID_BLOCK;
      writeFileNoFollow(this.held(), 'next-id', `${this.idLimit}\n`);
      this.idNext = next;
    }
    return this.idNext++;
  }
  private idNext?: number;
  private idLimit = 0;

  /** Every id some file in the directory names (records, states, logs, unit records). */
  allIds(): number[] {
    const out = new Set<number>();
    for (const n of readdirSync(this.dir)) {
      const m = /^(\d+)\./.exec(n);
      // Ids from 1e9 up are pooled launchers' and (without a broker) time-based unit ids.
      if (m && Number(m[1]) < POOL_ID_BASE) out.add(Number(m[1]));
    }
    return [...out];
  }
  ids(): number[] {
    return readdirSync(this.dir)
      .map((n) => /^(\d+)\.json$/.exec(n)?.[1])
      .filter((x): x is string => x !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
  }
  remove(id: number): void {
    for (const ext of ['json', 'state', 'log', 'state.tmp', 'json.tmp', 'unit', 'unit.tmp'] as const) rmSync(path.join(this.dir, `${id}.${ext}`), { force: true });
  }
  /** Modification time (unix ms) of one of an instance's files, 0 if it has none. */
  mtime(id: number, ext: 'json' | 'state' | 'log'): number {
    try {
      return statSync(this.file(id, ext)).mtimeMs;
    } catch {
      return 0;
    }
  }

  /**
   * At broker start: what no live process will ever use again. Idle pooled launchers of a
   * killed broker end at the EOF on their socket and leave their pool-N.log; a state file with
   * no record is a launcher's whose broker died before writing one (or a unit instance of an
   * older broker) and goes once that launcher is gone; a log with nothing else, and temporary
   * files a writer left half-way, go once they are old enough that no writer is at them.
   * Records are not touched here (the broker lists ended ones for a while). Called with the
   * runtime dir's lock held. Returns the names.
   */
  collectGarbage(now = Date.now()): string[] {
    const names = readdirSync(this.dir);
    const have = new Set(names);
    const removed: string[] = [];
    const drop = (n: string) => {
      rmSync(path.join(this.dir, n), { force: true });
      removed.push(n);
    };
    const old = (n: string) => now - (statOr(path.join(this.dir, n))?.mtimeMs ?? now) > GC_GRACE_MS;
    for (const n of names) {
      if (/^pool-\d+\.log$/.test(n)) drop(n);
      // Records, unit records and next-id are written by the broker alone, which holds the
      // runtime dir's lock: a .tmp of theirs is a killed broker's half-write. State files are
      // launchers' (a live one may be at its .tmp now).
      else if (/\.(json|unit)\.tmp$|^next-id\.tmp$/.test(n)) drop(n);
      else if (/\.tmp$/.test(n) && old(n)) drop(n);
    }
    for (const id of this.allIds()) {
      if (have.has(`${id}.json`)) continue;
      if (have.has(`${id}.unit`)) {
        const u = this.readUnit(id);
        if (u && unitLauncherAlive(u, this.readState(id))) continue;
        for (const ext of ['unit', 'state', 'log']) if (have.has(`${id}.${ext}`)) drop(`${id}.${ext}`);
        continue;
      }
      if (have.has(`${id}.state`)) {
        const st = this.readState(id);
        const pidfd = st && st.state !== 'exited' ? openLauncherPidfd({ launcher_pid: st.launcher_pid, launcher_start: st.launcher_start }) : undefined;
        if (pidfd !== undefined) {
          sock.close(pidfd);
          continue;
        }
        drop(`${id}.state`);
        if (have.has(`${id}.log`)) drop(`${id}.log`);
      } else if (have.has(`${id}.log`) && old(`${id}.log`)) drop(`${id}.log`);
    }
    return removed;
  }

  /** The record of a socket-activated unit instance (UnitActivator): `fuse-svcd stop` ends it. */
  writeUnit(u: UnitRecord): void {
    writeFileNoFollow(this.held(), `${u.id}.unit`, JSON.stringify(u) + '\n');
  }
  readUnit(id: number): UnitRecord | undefined {
    try {
      return JSON.parse(readFileNoFollow(this.held(), `${id}.unit`) ?? '') as UnitRecord;
    } catch {
      return undefined;
    }
  }
  unitIds(): number[] {
    return readdirSync(this.dir)
      .map((n) => /^(\d+)\.unit$/.exec(n)?.[1])
      .filter((x): x is string => x !== undefined)
      .map(Number);
  }
  logTail(id: number, bytes = 2048): string {
    try {
      // Tails go into replies to callers: never through a link to some other file.
      return (readFileNoFollow(this.held(), `${id}.log`) ?? '').slice(-bytes);
    } catch {
      return '';
    }
  }
}

/**
 * Write to FILE.tmp, then rename: a reader sees the old or the new text, never half; made
 * without following any link (safefile.ts writeFileNoFollow, which says why no fsync).
 */
export function atomicWrite(file: string, text: string): void {
  writeFileNoFollow(path.dirname(file), path.basename(file), text);
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
export function openLauncherPidfd(rec: Pick<InstanceRecord, 'launcher_pid' | 'launcher_start'>): number | undefined {
  return openPidfdChecked(rec.launcher_pid, rec.launcher_start, LAUNCHER_COMM);
}

/** comm of a launcher: the kernel keeps the first 15 bytes of "fuse-svc-launcher". */
const LAUNCHER_COMM = 'fuse-svc-launch';

/**
 * A pidfd for `pid` only when, checked after the pidfd pinned the number: it started at
 * `start` (field 22 of /proc/PID/stat), runs as root (real, effective and saved uid 0), and,
 * when `comm` is given, has that name. A record read from a file is never believed on its own:
 * the pid may have been reused, or the record copied from another process's /proc entry.
 */
export function openPidfdChecked(pid: number | undefined, start: string | undefined, comm?: string): number | undefined {
  if (!pid || !start || !Number.isInteger(pid) || pid < 1) return undefined;
  let pidfd: number;
  try {
    pidfd = sock.pidfdOpen(pid);
  } catch {
    return undefined;
  }
  let ok = processStartTime(pid) === start;
  if (ok) {
    try {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      const uids = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(status);
      ok = uids !== null && uids.slice(1).every((u) => u === '0') && (comm === undefined || /^Name:\s+(.*)$/m.exec(status)?.[1] === comm);
    } catch {
      ok = false;
    }
  }
  // Read after the checks: the pidfd still names a live process, so /proc/PID was that one.
  if (!ok || !sock.pidfdIsAlive(pidfd)) {
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
  /**
   * false: the launcher compiles the spec's seccomp rules itself, as before the programs
   * were compiled once per definition (tests compare the two).
   */
  precompileSeccomp?: boolean;
};

/**
 * Spawns a launcher detached (its own session; it must outlive the broker) with an empty
 * environment, hands it the spec on fd 3 and waits for its one readiness line. Through the
 * addon rather than child_process: Node's fork() costs milliseconds that grow with the
 * broker's heap, on every mount, and its child would close copies of callers' descriptors
 * at exec (a FUSE flush that can wait forever, and Node waits for the exec).
 */
export function spawnLauncher(a: LaunchArgs): { pid: number; ready: Promise<LaunchResult> } {
  let spec: Buffer;
  try {
    spec = renderSpec(a.precompileSeccomp === false ? a.spec : withPrecompiledSeccomp(a.launcher, a.spec));
  } catch (e) {
    throw new RequestError('EINTERNAL', oneLine((e as Error).message));
  }
  const opened: number[] = [];
  let readyRd = -1;
  let pid: number;
  try {
    const logFd = createFileNoFollow(path.dirname(a.logFile), path.basename(a.logFile), sock.O_WRONLY | fsc.O_APPEND);
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
    pid = sock.spawnDetached(a.launcher, [a.launcher, 'instance'], [-1, readyWr, logFd, specRd, ...a.fds]);
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
 * code and stderr. Through spawnDetached, never child_process: a child of Node's would hold
 * copies of callers' descriptors and close them at exec (a FUSE flush that may never end).
 */
export function runWithFds(cmd: string, args: string[], fds: number[], timeoutMs: number): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    let rd = -1;
    let pidfd: number;
    try {
      const [r, w] = sock.pipe();
      rd = r;
      try {
        pidfd = sock.pidfdOpen(sock.spawnDetached(cmd, [cmd, ...args], [-1, -1, w, ...fds]));
      } finally {
        closeSync(w);
      }
    } catch (e) {
      if (rd >= 0) closeSync(rd);
      resolve({ code: -1, stderr: (e as Error).message });
      return;
    }
    let stderr = '';
    let eof = false;
    let exited: { code: number; signal: number } | null = null;
    const buf = Buffer.alloc(4096);
    const finish = () => {
      if (!eof || !exited) return;
      clearTimeout(timer);
      closeSync(rd);
      closeSync(pidfd);
      resolve({ code: exited.signal ? -1 : exited.code, stderr });
    };
    const out = sock.poll(rd, 'readable', () => {
      let n = 0;
      try {
        n = readSync(rd, buf, 0, buf.length, null);
      } catch {
        n = 0;
      }
      if (n > 0) {
        stderr = (stderr + buf.toString('utf8', 0, n)).slice(-4096);
        return;
      }
      eof = true;
      out.stop();
      finish();
    });
    // Not onPidfdExit: it reaps, and the exit status is wanted here.
    const exit = sock.poll(pidfd, 'readable', () => {
      exit.stop();
      exited = sock.pidfdReap(pidfd) ?? { code: -1, signal: 0 };
      finish();
    });
    const timer = setTimeout(() => signalLauncher(pidfd, 9), timeoutMs);
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
  // Mount records and the records of socket-activated unit instances: a unit's server may
  // serve its mount long after its connection ended (upstream's send BYE, then serve).
  const all = [...dir.ids().map((id) => ({ id, rec: dir.readRecord(id) as (InstanceRecord | UnitRecord) | undefined })), ...dir.unitIds().map((id) => ({ id, rec: dir.readUnit(id) }))];
  for (const { id, rec } of all) {
    const st = dir.readState(id);
    if (!rec || st?.state === 'exited') continue;
    // A record written before the spawn names no pid: the launcher's state file does.
    const pidfd = openLauncherPidfd({ launcher_pid: rec.launcher_pid ?? st?.launcher_pid, launcher_start: rec.launcher_start ?? st?.launcher_start });
    if (pidfd === undefined) {
      gone++;
      continue;
    }
    signalLauncher(pidfd);
    if ('unit' in rec) log.info(`stop: unit instance ${id} (${rec.unit}, peer uid ${rec.peer_uid}): ending`);
    else log.info(`stop: instance ${id} (${rec.source} on ${rec.target}, uid ${rec.owner_uid}): unmounting`);
    const isUnit = 'unit' in rec;
    waits.push(
      waitPidfd(pidfd, timeoutMs).then((ok) => {
        sock.close(pidfd);
        if (!ok) log.warn(`stop: instance ${id} did not end within ${timeoutMs} ms`);
        // No broker lists unit instances: their record goes with them (mount records stay,
        // for the next broker to list once).
        else if (isUnit) dir.remove(id);
        return ok;
      }),
    );
  }
  const results = await Promise.all(waits);
  return { stopped: results.filter(Boolean).length, gone };
}
