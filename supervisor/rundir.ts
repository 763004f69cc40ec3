// The runtime directory is trusted by root: it holds the socket clients connect to, the state
// files the broker re-adopts instances from, and the pid file `stop` signals. A directory that
// anyone but root can write to (or a path through one, or through a symlink) lets a user plant
// links root then writes through, or replace the socket. So the broker refuses to start unless
// the path is secure by OpenSSH's rule, and holds a lock so that only one broker uses it.
import { constants as fsc, fstatSync, lstatSync, mkdirSync, readFileSync, type Stats } from 'node:fs';
import path from 'node:path';
import * as sock from '../helper/native/socket.js';
import { readFileNoFollow, UnsafePathError } from './safefile.js';

/** Exit status: the runtime dir or socket dir is not secure (EX_NOPERM). */
export const EXIT_INSECURE_DIR = 77;
/** Exit status: another broker holds the runtime dir's lock (EX_TEMPFAIL). */
export const EXIT_BROKER_RUNNING = 75;

export class InsecurePathError extends Error {}

function describe(p: string, st: Stats): string {
  return `${p} (owner uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`;
}

/**
 * Checks `dir` and every parent up to `/` with lstat (a symlinked component is refused, never
 * followed). Every component must be a root-owned directory; parents may be group/other-writable
 * only when sticky (`/tmp`); `dir` itself must be writable by root alone. Missing trailing
 * components are created (mode 0755) when `create` is set, once their parent passed the check:
 * mkdir into a directory only root can write cannot be raced by anyone else.
 */
export function checkSecureDir(dir: string, create: boolean): void {
  if (!path.isAbsolute(dir)) throw new InsecurePathError(`${dir}: not an absolute path`);
  const parts = path.normalize(dir).split('/').filter(Boolean);
  let cur = '/';
  for (let i = 0; i <= parts.length; i++) {
    if (i > 0) cur = path.join(cur, parts[i - 1]);
    const last = i === parts.length;
    let st: Stats;
    try {
      st = lstatSync(cur);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || !create) throw new InsecurePathError(`${cur}: ${(e as Error).message}`);
      // The parent passed: root-owned and writable by root alone, or sticky (where no one can
      // remove or rename root's entry). 0755 so clients can reach the socket and bin/.
      mkdirSync(cur, { mode: 0o755 });
      st = lstatSync(cur);
    }
    if (st.isSymbolicLink()) throw new InsecurePathError(`${cur} is a symbolic link; the runtime path must not contain any`);
    if (!st.isDirectory()) throw new InsecurePathError(`${cur} is not a directory`);
    if (st.uid !== 0) throw new InsecurePathError(`${describe(cur, st)} is not owned by root`);
    const writableByOthers = (st.mode & 0o022) !== 0;
    if (writableByOthers && (last || (st.mode & 0o1000) === 0)) {
      throw new InsecurePathError(`${describe(cur, st)} is writable by group or others${last ? '' : ' and not sticky'}`);
    }
  }
}

/**
 * The state dir (RUNDIR) must not lie in the socket's directory or below it: that directory is
 * what client containers are given (a volume, a hostPath), and a client container's root
 * without a user namespace is root on the host, so any file a client volume reaches is one a
 * client can change. The other way round (RUNDIR/public) is fine: a client given the public
 * dir reaches nothing above it.
 */
export function checkSeparated(runtimeDir: string, socketDir: string): void {
  const rel = path.relative(path.normalize(socketDir), path.normalize(runtimeDir));
  if (rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))) {
    throw new InsecurePathError(`the socket's directory ${socketDir} holds the broker's state dir ${runtimeDir}; clients given it would reach the state: put the socket in a directory of its own (e.g. ${path.join(runtimeDir, 'public')})`);
  }
}

/**
 * The broker's lock: RUNDIR/broker.lock, opened with O_NOFOLLOW in a checked directory, flock'd
 * exclusively for the broker's life (the fd is close-on-exec, so launchers never inherit it and
 * the lock ends exactly when this process does, SIGKILL included). Returns the fd, or undefined
 * when another process holds it.
 */
export function acquireBrokerLock(runtimeDir: string): number | undefined {
  return acquireLockFile(path.join(runtimeDir, 'broker.lock'));
}

/**
 * The same exclusive, non-blocking flock on any lock FILE (the Docker plugin socket's
 * SOCKET.lock: a global path no second broker may take over). The fd is the lock; undefined
 * when another process holds it.
 */
export function acquireLockFile(file: string): number | undefined {
  const fd = openLockFile(file);
  if (sock.flock(fd, true, true)) return fd;
  sock.close(fd);
  return undefined;
}

function openLockFile(file: string): number {
  // Reused across brokers, so opened rather than made fresh: it must be root's own regular file
  // with one link (a planted hard link or FIFO is refused; nothing is ever written to it).
  const fd = sock.openat(sock.AT_FDCWD, file, sock.O_RDWR | fsc.O_CREAT | sock.O_NOFOLLOW | sock.O_NONBLOCK, 0o600);
  const st = fstatSync(fd);
  if (!st.isFile() || st.uid !== 0 || st.nlink !== 1 || st.mode & 0o022) {
    sock.close(fd);
    throw new UnsafePathError(`${file} is not a regular file of root's with one link; refusing it`);
  }
  return fd;
}

/** True when a live broker holds RUNDIR's lock (tested by trying to take it, then letting go). */
export function brokerLockHeld(runtimeDir: string): boolean {
  let fd: number;
  try {
    fd = openLockFile(path.join(runtimeDir, 'broker.lock'));
  } catch {
    return false;
  }
  try {
    return !sock.flock(fd, true, true);
  } finally {
    sock.close(fd); // closing the only fd drops a lock taken just now
  }
}

/** The pid named in RUNDIR/broker.pid, for messages only (never signalled on its own word). */
export function pidFileText(runtimeDir: string): string {
  // Not through a link: the word would land in a log line.
  return (readFileNoFollow(runtimeDir, 'broker.pid') ?? '').trim().split(' ')[0] || 'unknown';
}

/** uid of a live process (from /proc/PID/status), undefined when it is gone. */
export function processUid(pid: number): number | undefined {
  try {
    const m = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Pids holding a flock on RUNDIR/broker.lock, from /proc/locks (entries read
 * "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF", device numbers in hex). This is what proves
 * a pid named in broker.pid is really the broker: only the lock holder is.
 */
export function brokerLockHolders(runtimeDir: string): number[] {
  let st: Stats;
  try {
    st = lstatSync(path.join(runtimeDir, 'broker.lock'));
  } catch {
    return [];
  }
  const major = Number((BigInt(st.dev) >> 8n) & 0xfffn);
  const minor = Number((BigInt(st.dev) & 0xffn) | ((BigInt(st.dev) >> 12n) & ~0xffn));
  const out: number[] = [];
  for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[1] !== 'FLOCK' || f[3] !== 'WRITE') continue;
    const [ma, mi, ino] = (f[5] ?? '').split(':');
    if (parseInt(ma, 16) === major && parseInt(mi, 16) === minor && Number(ino) === st.ino) out.push(Number(f[4]));
  }
  return out;
}
