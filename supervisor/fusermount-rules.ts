// fusermount's checks (libfuse util/fusermount.c, util/fuser_conf.c check_nonroot_dir_access),
// as pure functions of metadata the caller of these functions already obtained. Gathering the
// metadata (fstat/statx/fstatfs on the caller's descriptors) lives in policy.ts, so how it is
// read can change without touching the rules. Each rule is listed in docs/security.md.
import { RequestError } from './protocol.js';

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

export type FileType = 'file' | 'dir' | 'chr' | 'blk' | 'fifo' | 'sock' | 'lnk' | 'unknown';

/** What is known about the mount point descriptor. */
export type TargetInfo = { type: FileType | string; mode: number; uid: number; gid: number; fsMagic: number };
/** What is known about the source descriptor. */
export type SourceInfo = { type: FileType | string; accmode: 'r' | 'w' | 'rw' | 'path'; size: number };
export type Who = { uid: number; groups: readonly number[] };

/** Rules T1..T5 (docs/security.md): the mount point. Throws a RequestError on the first that fails. */
export function targetRules(t: TargetInfo, who: Who): void {
  // T1: fusermount lstat()s and never follows a link; we were handed the link itself.
  if (t.type === 'lnk') throw new RequestError('EBADFD_TARGET', 'the target is a symbolic link; symlinks are never followed');
  // T2: only directories (fusermount also allows a regular file it can open for writing; the
  // broker mounts directories only, the stricter choice).
  if (t.type !== 'dir') throw new RequestError('EBADFD_TARGET', `the target is a ${describeType(t.type)}, not a directory`);
  // Root skips the rest, as in fusermount (getuid() == 0).
  if (who.uid === 0) return;
  // T3: the filesystem under the mount point must be one of fusermount's allowed magics.
  const magic = t.fsMagic >>> 0;
  if (!MOUNTABLE_FS_MAGIC.has(magic)) {
    throw new RequestError('EFSTYPE_TARGET', `the target lies on a filesystem (magic 0x${magic.toString(16)}) that non-root users may not mount over`);
  }
  // T4: a sticky mount point (like /tmp) may be mounted over only by its owner; the parent's
  // mode plays no part.
  if ((t.mode & 0o1000) !== 0 && t.uid !== who.uid) {
    throw new RequestError('EPERM_TARGET', 'the target is a sticky directory (like /tmp) that the caller does not own');
  }
  // T5: in every case the caller needs write permission on the mount point itself.
  if (!mayWrite(t, who)) throw new RequestError('EPERM_TARGET', 'the caller has no write permission on the target directory');
}

/** Rules S1..S4 (docs/security.md): the source descriptor. */
export function sourceRules(s: SourceInfo, readOnly: boolean): { type: 'file' | 'blk'; size: number } {
  if (s.accmode === 'path') throw new RequestError('EBADFD_SOURCE', 'the source descriptor was opened with O_PATH; open the image for reading (ro) or reading and writing (rw)');
  if (s.type !== 'file' && s.type !== 'blk') {
    throw new RequestError('EBADFD_SOURCE', `the source descriptor is a ${describeType(s.type)}, not a regular file or block device`);
  }
  // A write-only descriptor cannot serve a read-only mount nor a read-write one.
  if (s.accmode === 'w') throw new RequestError('EBADFD_SOURCE', 'the source descriptor is write-only (O_WRONLY); open the image O_RDONLY (ro) or O_RDWR (rw)');
  if (!readOnly && s.accmode !== 'rw') {
    throw new RequestError('EROFS_SOURCE', 'rw was asked for, but the source descriptor is open read-only; open it O_RDWR or mount with -o ro');
  }
  return { type: s.type, size: s.size };
}

/** access(W_OK) on the mode bits, with the caller's uid and groups (owner class first, as the kernel does). */
export function mayWrite(t: { uid: number; gid: number; mode: number }, who: Who): boolean {
  if (t.uid === who.uid) return (t.mode & 0o200) !== 0;
  if (who.groups.includes(t.gid)) return (t.mode & 0o020) !== 0;
  return (t.mode & 0o002) !== 0;
}

export function describeType(t: string): string {
  return ({ file: 'regular file', dir: 'directory', chr: 'character device', blk: 'block device', fifo: 'pipe', sock: 'socket', lnk: 'symbolic link' } as Record<string, string>)[t] ?? 'file of unknown type';
}
