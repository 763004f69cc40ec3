// Who a helper of libfuse's contained-service protocol acts for (docs/units.md, "Identity").
// Upstream's helper is setuid root: SO_PEERCRED (the effective uid at connect) says 0 for every
// caller. The kernel still keeps the caller in the process's *real* uid: a setuid exec changes
// only the effective and saved ids, and the helper only changes its fsuid to open files.
// Nothing the helper sends is identity; the HELLO flags (ALLOW_OTHER, FUSEBLK) are ignored.
import { readFileSync } from 'node:fs';
import * as sock from '../helper/native/socket.js';
import { RequestError } from './protocol.js';

export type HelperIdentity = { uid: number; gid: number; how: string };

/**
 * - SO_PEERCRED uid != 0: that uid (and gid), as on the broker socket: an unprivileged process
 *   cannot claim any other.
 * - SO_PEERCRED uid 0: the real uid and gid of /proc/PID/status (kernel-sourced), read through
 *   the pidfd's pid and believed only if the pidfd still names a live process afterwards (the pid
 *   was not reused). Real uid 0 is root; anything else is the setuid helper's caller, who never
 *   gets more than its own uid. A helper in a pid namespace the broker cannot see (pid 0) cannot
 *   be told from root: refused.
 */
export function helperIdentity(peer: Pick<sock.Peer, 'uid' | 'gid' | 'pid' | 'pidfd'>): HelperIdentity {
  if (peer.pidfd < 0) throw new RequestError('EPEER', 'the kernel gave no pidfd for the helper');
  if (peer.uid !== 0) return { uid: peer.uid, gid: peer.gid, how: 'SO_PEERCRED' };
  let status: string;
  let pid: number;
  try {
    pid = Number(/^Pid:\s*(-?\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${peer.pidfd}`, 'utf8'))?.[1]);
    if (!(pid > 0)) throw new Error('not in our pid namespace');
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch (e) {
    throw new RequestError('EPEER', `a uid-0 helper whose /proc status the broker cannot read (${(e as Error).message}): root cannot be told from a setuid helper's caller`);
  }
  if (!sock.pidfdIsAlive(peer.pidfd)) throw new RequestError('EPEER', `the helper (pid ${pid}) exited before its identity was read`);
  const ids = (key: string) => /^\S+:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$/m.exec(status.split('\n').find((l) => l.startsWith(`${key}:`)) ?? '')?.slice(1).map(Number);
  const u = ids('Uid');
  const g = ids('Gid');
  if (!u || !g) throw new RequestError('EPEER', `the helper's /proc status (pid ${pid}) has no Uid:/Gid: lines`);
  const [ruid] = u;
  const [rgid] = g;
  return { uid: ruid, gid: rgid, how: ruid === 0 ? 'root' : `setuid helper: SO_PEERCRED uid 0, real uid ${ruid} from /proc/${pid}/status` };
}
