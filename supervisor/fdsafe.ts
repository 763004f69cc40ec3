// Syscalls on descriptors a caller sent, kept off the event loop. Any of them may reach a
// filesystem the caller runs itself (its own FUSE server, which it can SIGSTOP): close sends
// FLUSH, fstat GETATTR, fstatfs STATFS, and the kernel waits for the answer uninterruptibly.
// The broker therefore reads metadata only with calls that cannot reach the filesystem
// (statx AT_STATX_DONT_SYNC, fcntl, /proc/self/fdinfo, readlink of /proc/self/fd), runs
// fstatfs in a child that shares its descriptor table, and closes such descriptors in such
// children too, except those whose close it proves cannot block (an allow-list of kinds and
// filesystems, in one place: helper/native/socket.c close_cannot_block). What may stay stuck
// is counted per uid.
import { readSync, closeSync } from 'node:fs';
import * as sock from '../helper/native/socket.js';
import { RequestError } from './protocol.js';
import { log } from './log.js';

/**
 * Each uid holds at most `share` closers and statfs children (processes that may be stuck on
 * a server it stopped); descriptors it drops beyond them wait, open and untouched, until one
 * ends. The broker refuses the uid's new connections meanwhile (ELIMIT_STUCK).
 */
export function setStuckShare(share: number): void {
  sock.setCloserShare(share);
}

let drainTimer: NodeJS.Timeout | undefined;
/** While descriptors wait for a closer, reap now and then: a reap starts their closer. */
function drainSoon(): void {
  if (drainTimer) return;
  drainTimer = setTimeout(() => {
    drainTimer = undefined;
    if (sock.closersPending() > 0) drainSoon();
  }, 200);
  drainTimer.unref();
}

/** Closes descriptors a caller sent, never on this thread when they could block. */
export function dropCallerFds(fds: readonly number[], uid: number, callerPidfd = -1): void {
  const live = fds.filter((fd) => fd >= 0);
  if (!live.length) return;
  try {
    // All closed here (the usual image file and O_PATH target): no closer to reap. The caller's
    // pidfd lets the addon find mounts of the caller's own namespace (a container's image).
    if (sock.dropFds(live, uid, callerPidfd) === 0) return;
    // Reap finished closers soon (each holds a pidfd until reaped); stuck ones stay counted.
    setTimeout(() => sock.closersAlive(-1), 20).unref();
    setTimeout(() => sock.closersAlive(-1), 500).unref();
    if (sock.closersPending() > 0) drainSoon();
  } catch (e) {
    // No closer could be started (process limit): closing here could block the broker, so the
    // descriptors stay open until a later try can start one; say so (at most a line per 10 s),
    // since an operator must lift the limit for them to go.
    log.limited('closer-clone', `cannot start a closer for ${live.length} descriptor(s) of uid ${uid} (${(e as Error).message}); kept open, retried every second`);
    setTimeout(() => dropCallerFds(live, uid), 1000).unref();
  }
}

/** Closers and bounded statfs children of `uid` that have not finished. */
export function stuckCount(uid: number): number {
  return sock.closersAlive(uid);
}

/**
 * fstatfs of a caller's descriptor with a deadline: resolves with the magic, or throws
 * RequestError(code) when the filesystem does not answer by timeoutMs (the child stays
 * counted under the uid until the server answers).
 */
export function statfsBounded(fd: number, uid: number, timeoutMs: number, code: 'EPERM_TARGET' | 'EBADFD_ARGV', what = 'the target'): Promise<{ type: number; flags: number }> {
  return new Promise((resolve, reject) => {
    let rd: number;
    try {
      rd = sock.fstatfsStart(fd, uid);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EDQUOT') {
        reject(new RequestError('ELIMIT_STUCK', `uid ${uid} already has ${sock.closersAlive(uid)} requests stuck on a FUSE server that does not answer; let that server answer`));
        return;
      }
      reject(new RequestError('EINTERNAL', `cannot inspect ${what}: ${(e as Error).message}`));
      return;
    }
    let done = false;
    const finish = (f: () => void) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      w.stop();
      closeSync(rd); // a pipe: never on FUSE
      setTimeout(() => sock.closersAlive(-1), 20).unref(); // reap the helper (its pidfd)
      f();
    };
    const timer = setTimeout(() => finish(() => reject(new RequestError(code, `${what}: its filesystem did not answer statfs within ${timeoutMs} ms (a FUSE server that does not answer?)`))), timeoutMs);
    const buf = Buffer.alloc(24);
    const w = sock.poll(rd, 'readable', () => {
      let n = 0;
      try {
        n = readSync(rd, buf, 0, 24, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return;
      }
      if (n !== 24) {
        finish(() => reject(new RequestError('EINTERNAL', 'the statfs helper ended without an answer')));
        return;
      }
      const err = Number(buf.readBigInt64LE(0));
      const type = Number(buf.readBigInt64LE(8));
      const flags = Number(buf.readBigInt64LE(16));
      if (err < 0) finish(() => reject(new RequestError(code, `statfs of ${what} failed (errno ${-err})`)));
      else finish(() => resolve({ type, flags }));
    });
  });
}
