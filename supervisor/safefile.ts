// Files root writes in its own directories (the state dir, and the public dir clients see).
// A checked path (rundir.ts) can still hold entries someone planted while they could write
// there (a pre-made directory, a volume a client container once mounted read-write): a link at
// `broker.pid` or `instances` would make root write, chmod or mount wherever it points. So every
// directory is opened one component at a time with O_NOFOLLOW, every file is made relative to
// that directory's descriptor with O_CREAT|O_EXCL|O_NOFOLLOW after any old entry is unlinked
// (unlink removes a link, never its target), and renames replace a link instead of writing
// through it. Directories and files root reads back as trusted must be root's and writable by
// root alone: anything else is refused, never repaired, so the operator sees it.
import { closeSync, constants as fsc, fchmodSync, fstatSync, fsyncSync, mkdirSync, readSync, renameSync, unlinkSync, writeSync, type Stats } from 'node:fs';
import path from 'node:path';
import * as sock from '../helper/native/socket.js';

export class UnsafePathError extends Error {}

/**
 * NAME looked up in the directory behind dirFd: /proc/self/fd/N is a magic link to that very
 * directory (pinned by the descriptor, whatever happens to the path it was opened by). Node has
 * no renameat/unlinkat/mkdirat; this gives the same lookup.
 */
export function at(dirFd: number, name: string): string {
  checkName(name);
  return `/proc/self/fd/${dirFd}/${name}`;
}

function checkName(name: string): void {
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) throw new UnsafePathError(`${JSON.stringify(name)}: not a plain file name`);
}

function mode4(st: Stats): string {
  return (st.mode & 0o7777).toString(8).padStart(4, '0');
}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException).code;
}

/**
 * Opens an absolute directory path with O_PATH, one component at a time, each with
 * O_NOFOLLOW|O_DIRECTORY: a symlink anywhere on the way is an error, never followed. With
 * `createMode`, missing components are made (in the directory just opened, so never through a
 * link either).
 */
export function openDirNoFollow(dir: string, createMode?: number): number {
  if (!path.isAbsolute(dir)) throw new UnsafePathError(`${dir}: not an absolute path`);
  let fd = sock.openat(sock.AT_FDCWD, '/', sock.O_PATH | sock.O_DIRECTORY);
  let cur = '/';
  for (const part of path.normalize(dir).split('/').filter(Boolean)) {
    cur = path.join(cur, part);
    let next: number;
    try {
      if (createMode !== undefined) {
        try {
          mkdirSync(at(fd, part), { mode: createMode });
        } catch (e) {
          if (errno(e) !== 'EEXIST') throw e;
        }
      }
      next = sock.openat(fd, part, sock.O_PATH | sock.O_DIRECTORY | sock.O_NOFOLLOW);
    } catch (e) {
      sock.close(fd);
      const code = errno(e);
      if (code === 'ELOOP' || code === 'ENOTDIR') throw new UnsafePathError(`${cur} is a symbolic link or not a directory; refusing to follow it`);
      throw e;
    }
    sock.close(fd);
    fd = next;
  }
  return fd;
}

/** Refuses a directory descriptor unless it is root's and writable by root alone. */
export function checkRootDir(fd: number, what: string): void {
  const st = fstatSync(fd);
  if (!st.isDirectory()) throw new UnsafePathError(`${what} is not a directory`);
  if (st.uid !== 0) throw new UnsafePathError(`${what} (owner uid ${st.uid}, mode ${mode4(st)}) is not owned by root`);
  if (st.mode & 0o022) throw new UnsafePathError(`${what} (mode ${mode4(st)}) is writable by group or others`);
}

/**
 * The subdirectory NAME of dirFd (O_PATH), made with `mode` when missing. Refused when NAME is
 * a link, not a directory, not root's or writable by anyone but root: whoever made it so could
 * have planted entries in it.
 */
export function openSubdir(dirFd: number, name: string, mode: number, what = name): number {
  try {
    mkdirSync(at(dirFd, name), { mode });
  } catch (e) {
    if (errno(e) !== 'EEXIST') throw e;
  }
  let fd: number;
  try {
    fd = sock.openat(dirFd, name, sock.O_PATH | sock.O_DIRECTORY | sock.O_NOFOLLOW);
  } catch (e) {
    const code = errno(e);
    if (code === 'ELOOP' || code === 'ENOTDIR') throw new UnsafePathError(`${what} is a symbolic link or not a directory; refusing to use it`);
    throw e;
  }
  try {
    checkRootDir(fd, what);
  } catch (e) {
    sock.close(fd);
    throw e;
  }
  return fd;
}

/** Runs fn with a descriptor of `dir` (an fd is used as it is, a path opened without links). */
function withDir<T>(dir: number | string, fn: (fd: number) => T): T {
  if (typeof dir === 'number') return fn(dir);
  const fd = openDirNoFollow(dir);
  try {
    return fn(fd);
  } finally {
    sock.close(fd);
  }
}

/** Removes NAME in dirFd if present (a link is removed itself; its target is untouched). */
export function unlinkNoFollow(dir: number | string, name: string): void {
  withDir(dir, (fd) => {
    try {
      unlinkSync(at(fd, name));
    } catch (e) {
      const code = errno(e);
      if (code === 'ENOENT') return;
      // unlink() of a directory fails EISDIR: a planted directory is the operator's to look at.
      if (code === 'EISDIR' || code === 'EPERM') throw new UnsafePathError(`${name} is a directory; refusing to replace it`);
      throw e;
    }
  });
}

/**
 * A new file NAME in `dir`, opened with `flags` plus O_CREAT|O_EXCL|O_NOFOLLOW after any old
 * entry was unlinked: the descriptor is always a fresh inode of ours, never a planted link's
 * target or a planted hard link. Returns the descriptor (close-on-exec).
 */
export function createFileNoFollow(dir: number | string, name: string, flags: number, mode = 0o600): number {
  return withDir(dir, (fd) => {
    unlinkNoFollow(fd, name);
    return sock.openat(fd, name, flags | fsc.O_CREAT | fsc.O_EXCL | sock.O_NOFOLLOW, mode);
  });
}

/**
 * Writes NAME in `dir` atomically: a fresh NAME.tmp (createFileNoFollow), then rename over
 * NAME, which replaces whatever entry NAME was (a link included) rather than writing through
 * it. A reader sees the old or the new text, never half. No fsync: state must survive a crash
 * of a process, not of the machine (the state dir is a tmpfs; no instance outlives a reboot).
 */
export function writeFileNoFollow(dir: number | string, name: string, data: string | Uint8Array, mode = 0o600, durable = false): void {
  withDir(dir, (d) => {
    const tmp = `${name}.tmp`;
    const fd = createFileNoFollow(d, tmp, sock.O_WRONLY, mode);
    try {
      const buf = typeof data === 'string' ? Buffer.from(data) : data;
      for (let off = 0; off < buf.length; ) off += writeSync(fd, buf, off, buf.length - off);
      // The umask may have narrowed the mode (0755 for a published program).
      fchmodSync(fd, mode);
      if (durable) fsyncSync(fd);
    } catch (e) {
      closeSync(fd);
      unlinkNoFollow(d, tmp);
      throw e;
    }
    closeSync(fd);
    renameSync(at(d, tmp), at(d, name));
    if (durable) syncDir(d);
  });
}

/**
 * fsync of a directory (after a rename or unlink in it), for state that must survive a reboot
 * (Docker volume definitions on a disk, unlike the tmpfs state dir): the O_PATH descriptor
 * cannot be synced, so "." is opened read-only through it.
 */
export function syncDir(dirFd: number): void {
  const fd = sock.openat(dirFd, '.', sock.O_RDONLY | sock.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * An existing NAME in `dir`, opened with `flags` plus O_NOFOLLOW|O_NONBLOCK (a planted FIFO does
 * not block), refused unless it is a regular file owned by root: for files root keeps writing
 * to (a live instance's log it truncates). Returns the descriptor (close-on-exec).
 */
export function openExistingNoFollow(dir: number | string, name: string, flags: number): number {
  const fd = withDir(dir, (d) => sock.openat(d, name, flags | sock.O_NOFOLLOW | sock.O_NONBLOCK));
  const st = fstatSync(fd);
  if (!st.isFile() || st.uid !== 0) {
    closeSync(fd);
    throw new UnsafePathError(`${name} is not a regular file of root's; refusing to write to it`);
  }
  return fd;
}

/**
 * Reads NAME in `dir` (at most maxBytes) if it is a regular file owned by root and writable by
 * root alone; undefined when it is missing or anything else (a link, a FIFO, a file a user
 * planted): what the broker acts on (records naming pids to signal) must be root's own.
 */
export function readFileNoFollow(dir: number | string, name: string, maxBytes = 1 << 20): string | undefined {
  let fd: number;
  try {
    // O_NONBLOCK: a planted FIFO must not block the broker in open().
    fd = withDir(dir, (d) => sock.openat(d, name, sock.O_RDONLY | sock.O_NOFOLLOW | sock.O_NONBLOCK));
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.uid !== 0 || st.mode & 0o022) return undefined;
    const buf = Buffer.alloc(Math.min(maxBytes, Math.max(st.size, 0) + 1));
    let n = 0;
    while (n < buf.length) {
      const r = readSync(fd, buf, n, buf.length - n, null);
      if (r === 0) break;
      n += r;
    }
    return buf.toString('utf8', 0, Math.min(n, maxBytes));
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}
