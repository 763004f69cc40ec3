// What a caller may mount, checked on the descriptors it sent (fusermount's rules, see
// shared/reference/fusermount-checks.md and docs/security.md). Nothing here resolves a path
// in the broker's namespace.
import { readFileSync } from 'node:fs';
import { RequestError } from './protocol.js';
import type { Config } from './config.js';
import { optionAllowed, type ServerDef } from './servers.js';
import * as sock from '../helper/native/socket.js';
import { statfsBounded } from './fdsafe.js';
import { sourceRules, targetRules } from './fusermount-rules.js';

export { MOUNTABLE_FS_MAGIC } from './fusermount-rules.js';

export type Caller = { uid: number; gid: number; pid: number; pidfd: number; groups: number[]; pidfdError?: string | null };

/** Supplementary groups of the caller, read through its pidfd's pid (none if not visible). */
export function callerGroups(pidfd: number, gid: number): number[] {
  try {
    const pid = Number(/^Pid:\s*(-?\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8'))?.[1]);
    if (!(pid > 0)) return [gid];
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    // The pid could have been reused between the two reads: only trust it if the pidfd still
    // names a live process, which pins the pid number (a signal 0 would fail across pid
    // namespaces, so readiness of the pidfd is asked instead).
    if (!sock.pidfdIsAlive(pidfd)) return [gid];
    const groups = /^Groups:\s*(.*)$/m.exec(status)?.[1].trim().split(/\s+/).filter(Boolean).map(Number) ?? [];
    return [gid, ...groups];
  } catch {
    return [gid];
  }
}

export type SourceCheck = { type: 'file' | 'blk'; size: number };

export function checkSource(fd: number, readOnly: boolean): SourceCheck {
  // statx with AT_STATX_DONT_SYNC and fcntl: neither reaches a FUSE filesystem (supervisor/fdsafe.ts).
  let info: ReturnType<typeof sock.fdInfo>;
  try {
    info = sock.fdInfo(fd);
  } catch (e) {
    // A file on a FUSE mount without allow_other: nobody but its owner may use it, neither the
    // broker nor the sandboxed server (whose reads would fail the same way).
    if ((e as { code?: string }).code === 'EACCES') throw new RequestError('EBADFD_SOURCE', 'the source lies on a FUSE mount without allow_other: the sandboxed server could not read it');
    throw e;
  }
  return sourceRules({ type: info.type, accmode: info.accmode, size: Number(info.size) }, readOnly);
}

/**
 * A transport (`--via`): one end of a connected AF_UNIX stream socket, nothing else. Asked of
 * the descriptor alone (statx DONT_SYNC, getsockopt, getpeername), so no FUSE server and no
 * peer can delay it; a FUSE file, a device, a pipe, a listening or unconnected socket, or a
 * network socket (which would hand the server the network) is refused before anything reads it.
 */
export function checkTransport(fd: number): void {
  let info: ReturnType<typeof sock.fdInfo>;
  try {
    info = sock.fdInfo(fd);
  } catch (e) {
    if ((e as { code?: string }).code === 'EACCES') throw new RequestError('EBADFD_TRANSPORT', 'the transport is a file on a FUSE mount, not a socket');
    throw e;
  }
  const kinds: Record<string, string> = { file: 'regular file', dir: 'directory', chr: 'character device', blk: 'block device', fifo: 'pipe', lnk: 'symbolic link' };
  if (info.type !== 'sock') throw new RequestError('EBADFD_TRANSPORT', `the transport is a ${kinds[info.type] ?? info.type}, not a connected AF_UNIX stream socket`);
  if (info.accmode !== 'rw') throw new RequestError('EBADFD_TRANSPORT', 'the transport descriptor is not open for reading and writing');
  const s = sock.socketInfo(fd);
  if (s.domain !== 'unix') throw new RequestError('EBADFD_TRANSPORT', `the transport is an ${s.domain === 'other' ? 'unknown-family' : s.domain} socket; only AF_UNIX is taken (the server gets no network)`);
  if (s.type !== 'stream') throw new RequestError('EBADFD_TRANSPORT', `the transport is a ${s.type} socket, not SOCK_STREAM`);
  if (s.listening || !s.connected) throw new RequestError('EBADFD_TRANSPORT', `the transport socket is ${s.listening ? 'listening' : 'not connected'}; send one end of a socketpair`);
}

/**
 * fusermount's mount point checks (supervisor/fusermount-rules.ts decides), on the pinned
 * descriptor. Metadata comes from statx(AT_STATX_DONT_SYNC) and a statfs run off the event
 * loop with a deadline (the target may be on a FUSE filesystem the caller runs: fdsafe.ts).
 */
export async function checkTarget(fd: number, caller: Caller, statfsTimeoutMs = 2000): Promise<void> {
  let info: ReturnType<typeof sock.fdInfo>;
  try {
    info = sock.fdInfo(fd);
  } catch (e) {
    // A FUSE mount without allow_other answers nobody but its owner, the broker included.
    if ((e as { code?: string }).code === 'EACCES') throw new RequestError('EPERM_TARGET', 'the broker may not inspect the target (inside a FUSE mount without allow_other?)');
    throw e;
  }
  // statfs only matters (and is only asked) for non-root directories.
  const fsMagic = caller.uid !== 0 && info.type === 'dir' ? (await statfsBounded(fd, caller.uid, statfsTimeoutMs, 'EPERM_TARGET')).type >>> 0 : 0;
  targetRules({ type: info.type, mode: info.mode, uid: info.uid, gid: info.gid, fsMagic }, { uid: caller.uid, groups: caller.groups });
}

export type MountOptions = { readOnly: boolean; serverOptions: string[]; maxRead?: number; noexec?: boolean; defaultPermissions?: boolean };

/**
 * Splits and checks the caller's option string. ro/rw pick the mode; kernel options are only
 * those fusermount lets a user pass; server options must be listed by the server definition.
 */
export function parseMountOptions(opts: string, server: ServerDef, caller: Caller, cfg: Config): MountOptions {
  let readOnly = false;
  const serverOptions: string[] = [];
  let maxRead: number | undefined;
  let noexec = false;
  let defaultPermissions = false;
  if (opts.length > 1024) throw new RequestError('EOPTION', 'options are longer than 1024 bytes');
  for (const o of opts.split(',')) {
    if (o === '') continue;
    if (!/^[a-z0-9_]+(=[a-z0-9_.-]+)?$/i.test(o)) throw new RequestError('EOPTION', `option "${o.slice(0, 64)}" is malformed`);
    if (o === 'ro') readOnly = true;
    else if (o === 'rw') readOnly = false;
    else if (o === 'nosuid' || o === 'nodev') continue; // always on
    else if (o === 'noexec') noexec = true; // MOUNT_ATTR_NOEXEC on the FUSE mount
    else if (o === 'exec') noexec = false;
    else if (o === 'default_permissions') defaultPermissions = true; // a FUSE mount option (fsconfig)
    else if (o === 'suid' || o === 'dev') throw new RequestError('EOPTION', `option "${o}" is not allowed: broker mounts are always nosuid,nodev`);
    else if (o === 'allow_other' || o === 'allow_root') {
      if (caller.uid !== 0 && !cfg.userAllowOther) throw new RequestError('EOPTION', `option "${o}" needs user_allow_other in /etc/fuse.conf`);
      throw new RequestError('EOPTION', `option "${o}" is not supported by fuse-svc yet`);
    } else if (o === 'blkdev' || o.startsWith('blksize=')) throw new RequestError('EOPTION', `option "${o}" (fuseblk) is not supported`);
    else if (/^(fd|rootmode|user_id|group_id|fsname|subtype)=/.test(o)) throw new RequestError('EOPTION', `option "${o.split('=')[0]}" is set by the broker and may not be given`);
    else if (o.startsWith('max_read=')) {
      const n = Number(o.slice(9));
      if (!Number.isInteger(n) || n < 4096 || n > 1 << 20) throw new RequestError('EOPTION', 'max_read must be an integer from 4096 to 1048576');
      maxRead = n;
    } else if (optionAllowed(server, o)) serverOptions.push(o);
    else throw new RequestError('EOPTION', `option "${o}" is unknown or not allowed for ${server.name}`);
  }
  // A server that cannot write must not be handed a writable source it might be trusted with.
  if (server.readOnly && !readOnly) throw new RequestError('EROFS_SERVER', `${server.name} serves its types read-only: mount with -o ro`);
  const all = [...server.options.always, ...(readOnly ? server.options.readOnly : server.options.readWrite), ...(!readOnly && caller.uid !== 0 ? server.options.readWriteNonRoot : []), ...serverOptions];
  return { readOnly, serverOptions: all, maxRead, noexec, defaultPermissions };
}

/** The string the mount table shows as the source: printable, no separators. */
export function fsnameFor(sourceName: string | undefined): string {
  const s = (sourceName ?? 'fuse-svc').replace(/[^A-Za-z0-9._/@:+-]/g, '_').slice(0, 200);
  return s === '' ? 'fuse-svc' : s;
}
