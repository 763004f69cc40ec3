// Socket files at global paths (/run/filesystems/TYPE), shared with systemd and other brokers:
// a live listener is never taken over, and only the very inode one bound is ever unlinked.
import { lstatSync, unlinkSync } from 'node:fs';
import * as sock from '../helper/native/socket.js';

/** Whether someone listens on the socket file `p` (connect succeeds); ECONNREFUSED = stale. */
export function probeLive(p: string, kind: 'seqpacket' | 'stream' = 'seqpacket'): boolean {
  try {
    sock.close(kind === 'stream' ? sock.connectStream(p) : sock.connectSeqpacket(p));
    return true;
  } catch (e) {
    const code = (e as { code?: string }).code;
    // EPROTOTYPE: a socket of the other type, which someone listens on or did: not ours either.
    return code !== 'ECONNREFUSED' && code !== 'ENOENT';
  }
}

/** Unlinks `p` only if it is still the socket (dev, ino) that was bound; throws otherwise. */
export function unlinkIfSame(p: string, dev: number, ino: number): void {
  const st = lstatSync(p);
  if (!st.isSocket() || st.dev !== dev || st.ino !== ino) throw new Error(`${p} was replaced by another file`);
  // Callers keep such sockets in directories only root may write (checked at start).
  unlinkSync(p);
}

/** A socket this process bound and listens on at a path; only that inode is ever unlinked. */
export type BoundSocket = { path: string; fd: number; dev: number; ino: number };

/** Binds and listens at `p` (which must not exist: bind never replaces a file). */
export function bindListener(p: string, kind: 'seqpacket' | 'stream', backlog: number): BoundSocket {
  const fd = kind === 'stream' ? sock.listenStream(p, backlog) : sock.listenSeqpacket(p, backlog);
  try {
    const st = lstatSync(p);
    return { path: p, fd, dev: st.dev, ino: st.ino };
  } catch (e) {
    sock.close(fd);
    throw e;
  }
}

/** Stops listening and removes the socket file, unless someone replaced it since the bind. */
export function closeListener(b: BoundSocket): void {
  sock.close(b.fd);
  try {
    unlinkIfSame(b.path, b.dev, b.ino);
  } catch {
    /* gone, or someone else's now: left alone */
  }
}
