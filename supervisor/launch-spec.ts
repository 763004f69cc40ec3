// Builds the flat spec the C launcher reads on fd 3 (format: docs/launcher.md). All parsing and
// validation happens here; the launcher only checks the syntax of what it is given.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { ServerDef } from './servers.js';
import { parseOciProfile, profileToSpecRecords } from './sandbox/seccomp.js';
import { loadServiceFile, processRecords, type ServiceConfig } from './units/directives.js';

export type SpecRecord = (string | number)[];

/**
 * Fd numbers the broker hands the launcher (stdio positions of the spawn). A given mount
 * (upstream sockets) puts the helper's mounted /dev/fuse where the target would be.
 */
export const LAUNCHER_FDS = { spec: 3, source: 4, target: 5, fuse: 5, callerPidfd: 6 } as const;
/** Where the server finds its FUSE fd and its source. */
export const SERVER_FUSE_FD = 3;
export const SOURCE_SENTINEL = '/dev/fuse-svc/source';
export const SERVER_MOUNTPOINT = '/mnt';

export function renderSpec(records: SpecRecord[]): Buffer {
  const lines = records.map((r) => {
    const fields = r.map(String);
    for (const f of fields) {
      if (/[\t\n\0]/.test(f)) throw new Error(`launcher spec field ${JSON.stringify(f)} contains a tab, newline or NUL`);
    }
    return fields.join('\t');
  });
  const b = Buffer.from(lines.join('\n') + '\n');
  if (b.length > 65536) throw new Error('launcher spec larger than 64 KiB');
  return b;
}

const policyCache = new Map<string, SpecRecord[]>();
/** The seccomp records of a policy file in policies/seccomp/, parsed once per process. */
export function seccompRecords(policyDir: string, name: string): SpecRecord[] {
  const file = path.join(policyDir, `${name}.json`);
  const cached = policyCache.get(file);
  if (cached) return cached;
  const recs: SpecRecord[] = profileToSpecRecords(parseOciProfile(readFileSync(file, 'utf8'), file));
  policyCache.set(file, recs);
  return recs;
}

export type MountInstance = {
  id: number;
  runtimeDir: string;
  uid: number;
  server: ServerDef;
  policyDir: string;
  standin: string;
  callerUid: number;
  callerGid: number;
  readOnly: boolean;
  /** MOUNT_ATTR_NOEXEC on the FUSE mount (-o noexec). */
  noexec?: boolean;
  /** The kernel checks permissions itself (-o default_permissions). */
  defaultPermissions?: boolean;
  /** FUSE allow_other: Docker volume driver mounts only (their caller is the broker itself). */
  allowOther?: boolean;
  /** Options for the server's -o, already validated. */
  serverOptions: string[];
  /** The source's size: the placeholder at the sentinel path stats with it (libzip stat()s its path). */
  sourceSize?: number;
  /** Kernel mount options already validated (max_read=). */
  maxRead?: number;
  fsname: string;
  fstype: string;
  /** A transport server's remote directory ({remote_path}); undefined for image servers. */
  remotePath?: string;
  /** Instance cgroup directories, one per hierarchy (supervisor/cgroups.ts). */
  cgroup?: string | string[];
  /** A pooled launcher joined `cgroup` already (docs/launcher.md, cgroup_joined). */
  cgroupJoined?: boolean;
  /**
   * The caller's helper mounted the FUSE connection itself (libfuse's contained-service
   * protocol, supervisor/upstream.ts): the launcher gets that /dev/fuse, not a target.
   */
  given?: boolean;
  /**
   * `fuse-svcd profile`: no policy; the launcher records every call of the sandbox and writes
   * their names to this file when the instance ends (seccomp_profile).
   */
  profile?: string;
};

/** The spec of one brokered mount: mount + sandbox + server. */
export function mountSpec(m: MountInstance): SpecRecord[] {
  const s = m.server;
  const subst = (a: string) =>
    a
      .replaceAll('{options}', m.serverOptions.join(','))
      .replaceAll('{source}', SOURCE_SENTINEL)
      .replaceAll('{mountpoint}', s.fuseFd === 'devfd' ? `/dev/fd/${SERVER_FUSE_FD}` : SERVER_MOUNTPOINT)
      .replaceAll('{fusefd}', String(SERVER_FUSE_FD))
      .replaceAll('{remote_path}', m.remotePath ?? '')
      // Servers that map ownership themselves (exfat, vfat, ntfs): files appear as the caller's.
      .replaceAll('{caller_uid}', String(m.callerUid))
      .replaceAll('{caller_gid}', String(m.callerGid));
  const recs: SpecRecord[] = [
    ['version', 1],
    ['id', m.id],
    ['rundir', m.runtimeDir],
    ['uid', m.uid],
    ['gid', m.uid],
    // A transport (sshfs's SFTP socket) is passed where a source would be; the launcher makes
    // it the server's stdin and stdout.
    ['fd', s.source === 'transport' ? 'transport' : 'source', LAUNCHER_FDS.source],
    m.given ? ['fd', 'fuse', LAUNCHER_FDS.fuse] : ['fd', 'target', LAUNCHER_FDS.target],
    ['fd', 'caller_pidfd', LAUNCHER_FDS.callerPidfd],
    ['mount', m.given ? 'given' : 'fuse'],
    ['mount_fsname', m.fsname],
    ['mount_subtype', m.fstype],
    ['mount_owner', m.callerUid, m.callerGid],
    ['mount_readonly', m.readOnly ? 1 : 0],
  ];
  if (m.noexec) recs.push(['mount_noexec', 1]);
  if (m.defaultPermissions) recs.push(['mount_default_permissions', 1]);
  if (m.allowOther) recs.push(['mount_allow_other', 1]);
  if (m.maxRead !== undefined) recs.push(['mount_max_read', m.maxRead]);
  const image = s.source === 'seccomp-notify';
  recs.push(['fuse_fd', SERVER_FUSE_FD]);
  // No image, no sentinel: a transport server runs without a seccomp notifier at all.
  if (image) recs.push(['source_sentinel', SOURCE_SENTINEL]);
  if (s.fuseFd === 'notify') recs.push(['fuse_handover', 'notify']);
  if (s.daemonizes) recs.push(['reaper', 1]);
  recs.push(...sandboxRoot(s, m.standin, m.cgroup));
  if (m.cgroupJoined) recs.push(['cgroup_joined', 1]);
  recs.push(['root_dir', SERVER_MOUNTPOINT]);
  if (image) recs.push(m.sourceSize ? ['root_file', SOURCE_SENTINEL, m.sourceSize] : ['root_file', SOURCE_SENTINEL]);
  recs.push(['env', 'PATH=/usr/bin:/bin'], ['env', `FUSE_SVC_FUSE_FD=${SERVER_FUSE_FD}`], ['cwd', '/']);
  recs.push(['exec', s.exec], ...s.argv.map((a) => ['arg', subst(a)]));
  recs.push(...(m.profile ? [['seccomp_profile', m.profile] as SpecRecord] : seccompRecords(m.policyDir, s.seccompPolicy)));
  recs.push(['stop_timeout_ms', s.stopTimeoutMs], ['ready_timeout_ms', s.readyTimeoutMs]);
  return recs;
}

const sandboxCache = new Map<string, ServiceConfig>();
/**
 * The server's sandbox directives (server/NAME.sandbox, unit syntax): the one definition of
 * what its sandbox is; policies/seccomp/NAME.json is generated from the same file.
 */
export function sandboxOf(s: ServerDef): ServiceConfig | undefined {
  if (!s.sandbox) return undefined;
  const file = path.join(path.dirname(s.file), s.sandbox);
  let c = sandboxCache.get(file);
  if (!c) {
    c = loadServiceFile(file).svc;
    sandboxCache.set(file, c);
  }
  return c;
}

/** The root, devices, limits and identity every server sandbox gets. */
export function sandboxRoot(s: ServerDef, standin: string, cgroup?: string | string[]): SpecRecord[] {
  const recs: SpecRecord[] = [['root_usr', 1]];
  if (s.fuseFd === 'fusermount') recs.push(['root_bin', 'standin', standin]);
  if (s.passwd) recs.push(['root_passwd', 'fuse-svc']);
  for (const p of s.paths) {
    if (existsSync(p.src)) recs.push(['root_bind', p.src, p.dst, 'ro']);
    else if (!p.optional) throw new Error(`${s.file}: path ${p.src} does not exist on this host`);
  }
  for (const d of ['null', 'zero', 'full', 'random', 'urandom']) recs.push(['dev', d]);
  recs.push(['tmp_size', s.tmpSize], ['proc', 'invisible'], ['hostname', 'fuse-svc']);
  // Limits, umask and OOM score come from the sandbox directives when the server has them.
  const sb = sandboxOf(s);
  if (sb) recs.push(...processRecords(sb));
  else {
    for (const [name, [soft, hard]] of Object.entries(s.rlimits)) recs.push(['rlimit', name, soft === 'infinity' ? 'inf' : soft, hard === 'infinity' ? 'inf' : hard]);
    recs.push(['umask', '0077'], ['nnp', 1]);
  }
  for (const c of [cgroup ?? []].flat()) recs.push(['cgroup', c]);
  return recs;
}

export type CommandInstance = {
  id: number;
  runtimeDir: string;
  uid: number;
  server: ServerDef;
  policyDir: string;
  standin: string;
  exec: string;
  argv: string[];
  env?: string[];
  /** Extra read-only binds (e.g. a test probe that does not live under /usr). */
  binds?: { src: string; dst: string }[];
  /** A connected socket handed to the command as fd 3 with LISTEN_FDS (socket activation). */
  connFd?: number;
  cgroup?: string | string[];
};

/** A sandboxed command without a mount: the same sandbox a server of `server` gets. */
export function commandSpec(c: CommandInstance): SpecRecord[] {
  const recs: SpecRecord[] = [['version', 1], ['id', c.id], ['rundir', c.runtimeDir], ['uid', c.uid], ['gid', c.uid]];
  if (c.connFd !== undefined) recs.push(['fd', 'conn', c.connFd], ['listen_env', 1]);
  recs.push(...sandboxRoot(c.server, c.standin, c.cgroup));
  for (const b of c.binds ?? []) recs.push(['root_bind', b.src, b.dst, 'ro']);
  recs.push(['env', 'PATH=/usr/bin:/bin'], ...(c.env ?? []).map((e) => ['env', e]), ['cwd', '/']);
  recs.push(['exec', c.exec], ...c.argv.map((a) => ['arg', a]));
  recs.push(...seccompRecords(c.policyDir, c.server.seccompPolicy));
  recs.push(['stop_timeout_ms', c.server.stopTimeoutMs], ['ready_timeout_ms', c.server.readyTimeoutMs]);
  return recs;
}
