// What a caller may mount, checked on the descriptors it sent (fusermount's rules, see
// shared/reference/fusermount-checks.md and docs/security.md). Nothing here resolves a path
// in the broker's namespace.
import { readFileSync } from 'node:fs';
import { RequestError } from './protocol.js';
import type { Config } from './config.js';
import type { ServerDef } from './servers.js';
import * as sock from '../helper/native/socket.js';
import { statfsBounded } from './fdsafe.js';

/** Filesystems a non-root caller may mount over (fusermount.c's list of magic numbers). */
export const MOUNTABLE_FS_MAGIC: ReadonlyMap<number, string> = new Map([
  [0x61756673, 'aufs'], [0x00000187, 'autofs'], [0xca451a4e, 'bcachefs'], [0x9123683e, 'btrfs'],
  [0x00c36400, 'ceph'], [0xff534d42, 'cifs'], [0x0000f15f, 'ecryptfs'], [0x2011bab0, 'exfat'],
  [0x0000ef53, 'ext2/3/4'], [0xf2f52010, 'f2fs'], [0x65735546, 'fuse'], [0x01161970, 'gfs2'],
  [0x47504653, 'gpfs'], [0x0000482b, 'hfsplus'], [0x000072b6, 'jffs2'], [0x3153464a, 'jfs'],
  [0x0bd00bd0, 'lustre'], [0x00004d44, 'msdos'], [0x0000564c, 'ncp'], [0x00006969, 'nfs'],
  [0x00003434, 'nilfs'], [0x5346544e, 'ntfs'], [0x7366746e, 'ntfs3'], [0x5346414f, 'openafs'],
  [0x794c7630, 'overlayfs'], [0xaad7aaea, 'panfs'], [0x52654973, 'reiserfs'], [0xfe534d42, 'smb2'],
  [0x73717368, 'squashfs'], [0x01021994, 'tmpfs'], [0x24051905, 'ubifs'], [0x18031977, 'weka'],
  [0x58465342, 'xfs'], [0x2fc12fc1, 'zfs'], [0x858458f6, 'ramfs'],
]);

export type Caller = { uid: number; gid: number; pid: number; pidfd: number; groups: number[] };

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
  const info = sock.fdInfo(fd);
  if (info.accmode === 'path') throw new RequestError('EBADFD_SOURCE', 'the source descriptor was opened with O_PATH; open the image for reading (ro) or reading and writing (rw)');
  if (info.accmode === 'w') throw new RequestError('EBADFD_SOURCE', `the source descriptor is write-only; open the image ${readOnly ? 'O_RDONLY (ro)' : 'O_RDWR (rw)'}`);
  if (info.type !== 'file' && info.type !== 'blk') {
    throw new RequestError('EBADFD_SOURCE', `the source descriptor is a ${describeType(info.type)}, not a regular file or block device`);
  }
  if (!readOnly && info.accmode !== 'rw') {
    throw new RequestError('EROFS_SOURCE', 'rw was asked for, but the source descriptor is open read-only; open it O_RDWR or mount with -o ro');
  }
  return { type: info.type, size: Number(info.size) };
}

/**
 * fusermount's mount point checks (util/fusermount.c, util/fuser_conf.c
 * check_nonroot_dir_access and check_nonroot_fstype), on the pinned descriptor:
 * 1. the target is a directory (never a symlink);            root: only this rule
 * 2. a sticky mount point (like /tmp) only for its owner;    (rule on the mount point itself)
 * 3. the caller may write the mount point;                   (mode bits and groups; no ACLs)
 * 4. the filesystem under it is on fusermount's magic list.  (statfs, bounded: it may be FUSE)
 * Metadata comes from statx(AT_STATX_DONT_SYNC) and a statfs run off the event loop.
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
  if (info.type === 'lnk') throw new RequestError('EBADFD_TARGET', 'the target is a symbolic link; symlinks are never followed');
  if (info.type !== 'dir') throw new RequestError('EBADFD_TARGET', `the target is a ${describeType(info.type)}, not a directory`);
  if (caller.uid === 0) return;
  if (info.mode & 0o1000 && info.uid !== caller.uid) {
    throw new RequestError('EPERM_TARGET', 'the target is a sticky directory (like /tmp) that the caller does not own; only its owner may mount on it');
  }
  if (!mayWrite(info, caller)) throw new RequestError('EPERM_TARGET', 'the caller has no write permission on the target directory');
  const fsType = (await statfsBounded(fd, caller.uid, statfsTimeoutMs, 'EPERM_TARGET')).type >>> 0;
  if (!MOUNTABLE_FS_MAGIC.has(fsType)) {
    throw new RequestError('EFSTYPE_TARGET', `the target lies on a filesystem (magic 0x${fsType.toString(16)}) that non-root users may not mount over`);
  }
}

function mayWrite(info: { uid: number; gid: number; mode: number }, caller: Caller): boolean {
  if (info.uid === caller.uid) return (info.mode & 0o200) !== 0;
  if (caller.groups.includes(info.gid)) return (info.mode & 0o020) !== 0;
  return (info.mode & 0o002) !== 0;
}

function describeType(t: string): string {
  return ({ file: 'regular file', dir: 'directory', chr: 'character device', blk: 'block device', fifo: 'pipe', sock: 'socket', lnk: 'symbolic link' } as Record<string, string>)[t] ?? 'file of unknown type';
}

export type MountOptions = { readOnly: boolean; serverOptions: string[]; maxRead?: number };

/**
 * Splits and checks the caller's option string. ro/rw pick the mode; kernel options are only
 * those fusermount lets a user pass; server options must be listed by the server definition.
 */
export function parseMountOptions(opts: string, server: ServerDef, caller: Caller, cfg: Config): MountOptions {
  let readOnly = false;
  const serverOptions: string[] = [];
  let maxRead: number | undefined;
  if (opts.length > 1024) throw new RequestError('EOPTION', 'options are longer than 1024 bytes');
  for (const o of opts.split(',')) {
    if (o === '') continue;
    if (!/^[a-z0-9_]+(=[a-z0-9_.-]+)?$/i.test(o)) throw new RequestError('EOPTION', `option "${o.slice(0, 64)}" is malformed`);
    if (o === 'ro') readOnly = true;
    else if (o === 'rw') readOnly = false;
    else if (o === 'nosuid' || o === 'nodev' || o === 'noexec' || o === 'default_permissions') continue; // always on / harmless
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
    } else if (server.options.allowed.includes(o)) serverOptions.push(o);
    else throw new RequestError('EOPTION', `option "${o}" is unknown or not allowed for ${server.name}`);
  }
  const all = [...server.options.always, ...(readOnly ? server.options.readOnly : []), ...(!readOnly && caller.uid !== 0 ? server.options.readWriteNonRoot : []), ...serverOptions];
  return { readOnly, serverOptions: all, maxRead };
}

/** The string the mount table shows as the source: printable, no separators. */
export function fsnameFor(sourceName: string | undefined): string {
  const s = (sourceName ?? 'fuse-svc').replace(/[^A-Za-z0-9._/@:+-]/g, '_').slice(0, 200);
  return s === '' ? 'fuse-svc' : s;
}
