/**
 * Typed wrapper around the `fuse_svc_socket` N-API addon (helper/native/socket.c):
 * AF_UNIX SOCK_SEQPACKET/SOCK_STREAM sockets, SCM_RIGHTS, peer identity (SO_PEERCRED +
 * SO_PEERPIDFD), pidfds, a libuv poll watcher, and fd inspection.
 *
 * Errors from syscalls are plain `Error`s with `code` (errno name, e.g. 'EAGAIN'), `errno`
 * (the positive C errno value, unlike Node's negative libuv numbers), `syscall`, and the
 * message "syscall: strerror". Bad argument types throw TypeError, out-of-range values
 * RangeError. Every descriptor the addon creates is close-on-exec.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface SyscallError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

/** True when `err` came from a failing syscall (optionally: with this errno name). */
export function isSyscallError(err: unknown, code?: string): err is SyscallError {
  if (!(err instanceof Error)) return false;
  const e = err as Partial<SyscallError>;
  return typeof e.code === 'string' && typeof e.errno === 'number' && typeof e.syscall === 'string' &&
    (code === undefined || e.code === code);
}

export interface Peer {
  /** The accepted connection (close-on-exec; non-blocking if asked). */
  fd: number;
  uid: number;
  gid: number;
  /** SO_PEERCRED's pid in our pid namespace: 0 when the peer is in a pid namespace we cannot see. */
  pid: number;
  /** A pidfd for the peer process, or -1 (see pidfdError). The caller closes it. */
  pidfd: number;
  pidfdSource: 'SO_PEERPIDFD' | 'pidfd_open' | 'none';
  /** errno name of the last failed attempt when pidfd is -1 (e.g. 'ESRCH', 'ENODATA'), else null. */
  pidfdError: string | null;
}

export interface Received {
  data: Buffer;
  /** Received descriptors, close-on-exec, owned by the caller. */
  fds: number[];
  /** MSG_TRUNC or MSG_CTRUNC, or more descriptors than maxFds arrived (the extra ones were dropped with dropFds). */
  truncated: boolean;
  /** The peer closed: 0 bytes and no descriptors. */
  eof: boolean;
}

export type FileType = 'file' | 'dir' | 'chr' | 'blk' | 'fifo' | 'sock' | 'lnk' | 'unknown';

export interface FdInfo {
  type: FileType;
  /** st_mode, type bits included. */
  mode: number;
  uid: number;
  gid: number;
  dev: number;
  devMajor: number;
  devMinor: number;
  ino: number;
  rdev: number;
  rdevMajor: number;
  rdevMinor: number;
  size: number;
  nlink: number;
  /** 'path' for an O_PATH descriptor, otherwise from O_ACCMODE. */
  accmode: 'r' | 'w' | 'rw' | 'path';
  /** fcntl(F_GETFL). */
  flags: number;
  /** FD_CLOEXEC from fcntl(F_GETFD). */
  cloexec: boolean;
}

export interface MountInfo {
  /** STATX_MNT_ID_UNIQUE (Linux 6.8+): never reused while the system runs. */
  mntIdUnique: bigint;
  /** STATX_MNT_ID: the id in /proc/PID/mountinfo (reusable). */
  mntId: number;
  /** STATX_ATTR_MOUNT_ROOT: the descriptor is the root of its mount. */
  isMountRoot: boolean;
}

export interface StatfsInfo {
  /** f_type magic, e.g. 0xEF53 (ext2/3/4), 0x65735546 (FUSE), 0x01021994 (tmpfs). */
  type: number;
  /** f_flags (ST_RDONLY = 1, ST_NOSUID = 2, ST_NODEV = 4, ...). */
  flags: number;
}

export type PollEvents = 'readable' | 'writable' | 'readwrite';
/** `events` is a bitmask of constants.POLL_READABLE / POLL_WRITABLE (0 when err is set). */
export type PollCallback = (err: SyscallError | null, events: number) => void;

export interface Constants {
  O_RDONLY: number;
  O_WRONLY: number;
  O_RDWR: number;
  O_PATH: number;
  O_NOFOLLOW: number;
  O_DIRECTORY: number;
  O_CLOEXEC: number;
  O_NONBLOCK: number;
  O_ACCMODE: number;
  AT_FDCWD: number;
  SCM_MAX_FD: number;
  POLL_READABLE: number;
  POLL_WRITABLE: number;
}

declare const watcherHandleBrand: unique symbol;
type WatcherHandle = { readonly [watcherHandleBrand]: true };

interface Native {
  listenSeqpacket(path: string, backlog: number): number;
  listenStream(path: string, backlog: number): number;
  connectSeqpacket(path: string): number;
  connectStream(path: string): number;
  accept(fd: number, nonblock: boolean): Peer | null;
  send(fd: number, data: Uint8Array, fds: readonly number[]): number;
  recv(fd: number, maxBytes: number, maxFds: number, tag?: number): Received | null;
  dropFds(fds: number[], tag: number, callerPidfd?: number): number;
  closeStats(): { inline: number; closers: number };
  closersAlive(tag: number): number;
  fstatfsStart(fd: number, tag: number): number;
  closersPending(): number;
  setCloserShare(n: number): void;
  poll(fd: number, events: PollEvents, callback: PollCallback): WatcherHandle;
  pollStop(handle: WatcherHandle): void;
  pollRef(handle: WatcherHandle): void;
  pollUnref(handle: WatcherHandle): void;
  close(fd: number): void;
  pidfdOpen(pid: number): number;
  pidfdSendSignal(pidfd: number, sig: number): void;
  pidfdIsAlive(pidfd: number): boolean;
  fdInfo(fd: number): FdInfo;
  statxMount(fd: number): MountInfo;
  openat(dirfd: number, path: string, flags: number, mode?: number): number;
  fstatfs(fd: number): StatfsInfo;
  flock(fd: number, exclusive: boolean, nonblock: boolean): boolean;
  dupCloexec(fd: number): number;
  spawnDetached(path: string, args: string[], fds: number[]): number;
  pipe(): [number, number];
  socketpair(): [number, number];
  socketpairStream(): [number, number];
  socketInfo(fd: number): SocketInfo;
  pidfdReap(pidfd: number): { code: number; signal: number } | null;
  constants: Constants;
}

const ADDON = join('build', 'Release', 'fuse_svc_socket.node');

/**
 * The addon of the package this file belongs to: the first directory above this file (the
 * compiled one lives in dist/helper/native/) that holds a package.json and the built addon.
 * Requiring both skips a package.json a build step may place inside dist/.
 */
function addonPath(): string {
  const here = fileURLToPath(import.meta.url);
  for (let dir = dirname(here); ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, ADDON))) return join(dir, ADDON);
    if (dirname(dir) === dir) {
      throw new Error(`fuse_svc_socket: no package directory with ${ADDON} above ${here}; run \`npm run native\``);
    }
  }
}

const native = createRequire(import.meta.url)(addonPath()) as Native;

export const constants: Readonly<Constants> = Object.freeze({ ...native.constants });
export const O_RDONLY = constants.O_RDONLY;
export const O_WRONLY = constants.O_WRONLY;
export const O_RDWR = constants.O_RDWR;
export const O_PATH = constants.O_PATH;
export const O_NOFOLLOW = constants.O_NOFOLLOW;
export const O_DIRECTORY = constants.O_DIRECTORY;
export const O_CLOEXEC = constants.O_CLOEXEC;
export const O_NONBLOCK = constants.O_NONBLOCK;
export const O_ACCMODE = constants.O_ACCMODE;
export const AT_FDCWD = constants.AT_FDCWD;
export const POLL_READABLE = constants.POLL_READABLE;
export const POLL_WRITABLE = constants.POLL_WRITABLE;

/**
 * socket(AF_UNIX, SOCK_SEQPACKET|SOCK_NONBLOCK|SOCK_CLOEXEC) + bind + listen. The socket file
 * is created with mode 0600 (never wider, not even briefly); chmod/chown it afterwards.
 * Nothing is unlinked first. A path over 107 bytes throws ENAMETOOLONG.
 */
export function listenSeqpacket(path: string, backlog: number): number {
  return native.listenSeqpacket(path, backlog);
}

/** Same as listenSeqpacket, SOCK_STREAM (systemd ListenStream=). */
export function listenStream(path: string, backlog: number): number {
  return native.listenStream(path, backlog);
}

/** accept4 with SOCK_CLOEXEC (+ SOCK_NONBLOCK if `nonblock`); null when no connection waits. */
export function accept(fd: number, nonblock: boolean): Peer | null {
  return native.accept(fd, nonblock);
}

/** A blocking, close-on-exec SOCK_SEQPACKET client socket. */
export function connectSeqpacket(path: string): number {
  return native.connectSeqpacket(path);
}

/** A blocking, close-on-exec SOCK_STREAM client socket. */
export function connectStream(path: string): number {
  return native.connectStream(path);
}

/**
 * sendmsg(MSG_NOSIGNAL), with the descriptors as one SCM_RIGHTS message (at most 253).
 * Returns the bytes sent. On a non-blocking socket that is full, throws EAGAIN.
 */
export function send(fd: number, data: Uint8Array, fds: readonly number[] = []): number {
  return native.send(fd, data, fds);
}

/**
 * recvmsg(MSG_CMSG_CLOEXEC) of one message: null when nothing waits (EAGAIN, non-blocking fd),
 * otherwise the data, every received descriptor (close them), `truncated`, and `eof`.
 */
export function recv(fd: number, maxBytes: number, maxFds: number, tag = -1): Received | null {
  return native.recv(fd, maxBytes, maxFds, tag);
}

/**
 * Closes descriptors a caller sent without ever blocking this thread: at once those whose close
 * provably cannot block (O_PATH; a linked file or directory on a mount attached in our mount
 * namespace, or in that of the process behind `callerPidfd`, whose superblock is a tmpfs, ramfs,
 * hugetlbfs or the broker's own root filesystem: socket.c close_cannot_block), the others in a
 * child that shares the descriptor table (close() of a FUSE file waits for its server's FLUSH
 * answer, uninterruptibly). `tag` (the caller's uid) is what closersAlive counts.
 * Returns how many went to a closer (started, or waiting for the tag's share).
 */
export function dropFds(fds: readonly number[], tag: number, callerPidfd = -1): number {
  return native.dropFds([...fds], tag, callerPidfd);
}

/** Since the process started: descriptors dropFds closed on this thread, closers it started. */
export function closeStats(): { inline: number; closers: number } {
  return native.closeStats();
}

/** Closers (and bounded fstatfs children) of `tag` (-1: all) that have not finished yet. */
export function closersAlive(tag = -1): number {
  return native.closersAlive(tag);
}

/** Descriptors waiting for a closer of their tag (its share is in use); a reap starts them. */
export function closersPending(): number {
  return native.closersPending();
}

/**
 * At most `n` closers and fstatfs children per tag (0: no share). Beyond it dropFds keeps the
 * descriptors waiting and fstatfsStart throws EDQUOT.
 */
export function setCloserShare(n: number): void {
  native.setCloserShare(n);
}

/**
 * Starts fstatfs(fd) in a child sharing the fd table; returns a non-blocking pipe read end that
 * becomes readable with 24 bytes (int64 -errno|0, f_type, f_flags). The caller owns the deadline.
 */
export function fstatfsStart(fd: number, tag: number): number {
  return native.fstatfsStart(fd, tag);
}

/**
 * A libuv poll watcher on the main loop. Level-triggered: the callback runs on every loop turn
 * while the fd is ready, so drain it (accept/recv until null) or stop(). A pidfd becomes
 * readable when its process exits. Notes: libuv puts the fd into O_NONBLOCK mode; only one
 * watcher per fd may exist at a time (else EEXIST); stop() before closing the fd.
 */
export class Watcher {
  #handle: WatcherHandle;
  #stopped = false;

  constructor(fd: number, events: PollEvents, callback: PollCallback) {
    this.#handle = native.poll(fd, events, callback);
  }

  /** Stops for good and closes the uv handle (not the fd). No callback runs afterwards. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    native.pollStop(this.#handle);
  }

  /** Whether this watcher keeps the process alive (the default). */
  ref(): this {
    native.pollRef(this.#handle);
    return this;
  }

  /** Let the process exit even while this watcher is active. */
  unref(): this {
    native.pollUnref(this.#handle);
    return this;
  }

  get stopped(): boolean {
    return this.#stopped;
  }
}

export function poll(fd: number, events: PollEvents, callback: PollCallback): Watcher {
  return new Watcher(fd, events, callback);
}

export function close(fd: number): void {
  native.close(fd);
}

/** pidfd_open(pid, 0); pidfds are close-on-exec. */
export function pidfdOpen(pid: number): number {
  return native.pidfdOpen(pid);
}

/**
 * pidfd_send_signal(pidfd, sig, NULL, 0). sig 0 checks that the process still exists (ESRCH if
 * not), but only for processes in our pid namespace or below: otherwise EINVAL. See pidfdIsAlive.
 */
export function pidfdSendSignal(pidfd: number, sig: number): void {
  native.pidfdSendSignal(pidfd, sig);
}

/**
 * Whether the process is still running (its pidfd is not yet readable). Works across pid
 * namespaces, unlike pidfdSendSignal(pidfd, 0), which fails EINVAL when the target is outside
 * the caller's pid namespace and its descendants (a broker in a container, a client elsewhere).
 */
export function pidfdIsAlive(pidfd: number): boolean {
  return native.pidfdIsAlive(pidfd);
}

/** fstat + fcntl(F_GETFL/F_GETFD). */
export function fdInfo(fd: number): FdInfo {
  return native.fdInfo(fd);
}

/** statx(fd, "", AT_EMPTY_PATH): mount ids and mount-root bit. EOPNOTSUPP before Linux 6.8. */
export function statxMount(fd: number): MountInfo {
  return native.statxMount(fd);
}

/** openat(dirfd, path, flags | O_CLOEXEC, mode); dirfd may be constants.AT_FDCWD. */
export function openat(dirfd: number, path: string, flags: number, mode?: number): number {
  return mode === undefined ? native.openat(dirfd, path, flags) : native.openat(dirfd, path, flags, mode);
}

export function fstatfs(fd: number): StatfsInfo {
  return native.fstatfs(fd);
}

/** flock; false when `nonblock` and the lock is held elsewhere (EWOULDBLOCK). */
export function flock(fd: number, exclusive: boolean, nonblock: boolean): boolean {
  return native.flock(fd, exclusive, nonblock);
}

/** fcntl(F_DUPFD_CLOEXEC, 3). */
export function dupCloexec(fd: number): number {
  return native.dupCloexec(fd);
}

/**
 * Starts `path` with argv `args` (args[0] included), an empty environment, its own session,
 * default signal handling and exactly `fds` at 0, 1, 2… (-1: /dev/null). The child never holds
 * a copy of any other descriptor of ours, not even for a moment: closing copies of a caller's
 * FUSE files (at exec) could wait without end on the caller's server (socket.c spawn_clean).
 * The caller must reap it with pidfdReap once its pidfd is readable.
 */
export function spawnDetached(path: string, args: string[], fds: number[]): number {
  return native.spawnDetached(path, args, fds);
}

/** A connected AF_UNIX SOCK_SEQPACKET pair, close-on-exec: [a, b]. */
export function socketpair(): [number, number] {
  return native.socketpair();
}

/** A connected AF_UNIX SOCK_STREAM pair, close-on-exec: [a, b] (a --via transport). */
export function socketpairStream(): [number, number] {
  return native.socketpairStream();
}

export type SocketInfo = { domain: 'unix' | 'inet' | 'inet6' | 'other'; type: 'stream' | 'seqpacket' | 'dgram' | 'other'; listening: boolean; connected: boolean };

/** getsockopt(SO_DOMAIN, SO_TYPE, SO_ACCEPTCONN) and getpeername of a socket descriptor. */
export function socketInfo(fd: number): SocketInfo {
  return native.socketInfo(fd);
}

/** A close-on-exec pipe: [readEnd, writeEnd]. */
export function pipe(): [number, number] {
  return native.pipe();
}

/** Reaps an exited child started by spawnDetached; null if it still runs or is not ours. */
export function pidfdReap(pidfd: number): { code: number; signal: number } | null {
  return native.pidfdReap(pidfd);
}
