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
