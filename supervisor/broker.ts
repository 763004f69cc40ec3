// The broker: accept loop, one request per connection, policy, and the live instance table.
// Data flow for a mount: accept -> recv -> decode -> peer -> policy -> launcher -> reply.
import { chmodSync, chownSync, closeSync, constants as fsc, existsSync, fstatSync, ftruncateSync, lstatSync, promises as fsp, readFileSync, readlinkSync, rmSync, statSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import * as sock from '../helper/native/socket.js';
import type { Config } from './config.js';
import { InstanceDir, type Instance, type InstanceRecord, type LaunchResult, onPidfdExit, runWithFds, openLauncherPidfd, processStartTime, signalLauncher, spawnLauncher, waitPidfd } from './instances.js';
import { mountSpec } from './launch-spec.js';
import { CgroupError, cgroupName, instanceCgroups, removeParentsAtExit, unenforcedLimits } from './cgroups.js';
import { LauncherPool } from './pool.js';
import { openExistingNoFollow } from './safefile.js';
import { log } from './log.js';
import { callerGroups, checkSource, checkTarget, checkTransport, fsnameFor, parseMountOptions, type Caller } from './policy.js';
import { MAX_FDS, MAX_MESSAGE_BYTES, RequestError, splitRemoteSource, decodeRequest, encodeReply, errorReply, oneLine, type MountRequest, type Reply, type Request, type UnmountRequest } from './protocol.js';
import { listPage, type ListRequest } from './protocol.js';
import type { ServerDef } from './servers.js';
import { UidAllocator } from './uids.js';
import { dropCallerFds, setStuckShare, stuckCount } from './fdsafe.js';
import { INSTANCE_LOG_MAX, planLogCaps, type LogEntry } from './logcap.js';
import { keepFailedLog } from './failed-logs.js';
import { bindListener, closeListener, type BoundSocket } from './socket-path.js';

const ENDED_KEEP_MS = 10 * 60 * 1000;
/** How long the record of a possibly dead mount is kept for its owner to unmount it. */
const ORPHAN_KEEP_MS = 24 * 3600 * 1000;
/** How often live instance logs are checked against the caps (only read when they could pass). */
const LOG_CHECK_MS = 1000;
/** How long a new broker waits for the state of a launcher its predecessor died spawning. */
const ADOPT_WAIT_MS = 10000;
const ORPHAN_REASON = 'the launcher was killed; its mount may be left dead: unmount it';
/** The launcher ended but could not detach its mount: a stop answers EMOUNT_LEFT with it. */
const LEFT_REASON = 'the server ended but its mount is left (covered by another mount, or the detach failed): unmount it by path once it is uncovered';

/** What the helper of libfuse's contained-service protocol asked for (supervisor/upstream.ts). */
export type HelperMountRequest = { fstype: string; options: string; sourceName: string; targetName: string };
/** The helper's side of a mount: it opens the source and mounts, with the caller's rights. */
export type HelperSide = {
  openSource(readOnly: boolean): Promise<number>;
  mount(m: { readOnly: boolean; noexec: boolean; defaultPermissions: boolean; maxRead?: number; fsname: string }): Promise<number>;
};

type Conn = { fd: number; caller: Caller; watcher?: sock.Watcher; timer?: NodeJS.Timeout; done: boolean };

/** How long a launcher told to end (SIGTERM) gets before SIGKILL: more than its teardown bound. */
const LAUNCHER_TEARDOWN_GRACE_MS = 5000;

export class Broker {
  private listenFd = -1;
  private bound?: BoundSocket;
  private listenWatcher?: sock.Watcher;
  private readonly conns = new Set<Conn>();
  readonly instances = new Map<number, Instance>();
  /** Shared with the unit activator: one allocator per range, so uids are never handed out twice. */
  readonly uids: UidAllocator;
  private readonly dir: InstanceDir;
  private stopping = false;
  private readonly buckets = new Map<number, { tokens: number; at: number }>();
  private readonly launcher: string;
  private readonly standin: string;
  /** Ids whose cgroups are being created for a request (not tracked yet). */
  private readonly preparing = new Set<number>();
  /** Launchers started ahead of requests, per server definition. */
  private readonly pools = new Map<string, LauncherPool>();
  /** Open connections per uid (the caps of max_connections_per_user / max_connections). */
  private readonly connsPerUid = new Map<number, number>();
  /** Mount slots taken by requests not tracked yet (reserved before the first await). */
  private readonly reserved = new Map<number, number>();
  private reservedTotal = 0;
  private acceptPaused?: NodeJS.Timeout;
  /** Refused connections kept open a moment so their answer is read. */
  private lingering = 0;
  /** Size of each ended instance's log (it no longer grows), for the log caps. */
  private readonly endedLogBytes = new Map<number, number>();
  private logTimer?: NodeJS.Timeout;
  /** Open connections of other listeners (upstream sockets), counted against the same caps. */
  private external = 0;

  constructor(
    readonly cfg: Config,
    readonly servers: Map<string, ServerDef>,
  ) {
    this.uids = new UidAllocator(cfg.uidRange[0], cfg.uidRange[1]);
    this.dir = new InstanceDir(cfg.runtimeDir);
    this.launcher = path.join(cfg.nativeDir, 'fuse-svc-launcher');
    this.standin = path.join(cfg.nativeDir, 'fusermount-standin');
    setStuckShare(cfg.maxStuckPerUser);
  }

  /** Re-adopts the instances a previous broker left, then listens. */
  start(): void {
    this.adopt();
    this.listen();
    this.enforceLogCaps();
    // Live logs count at the most they can reach; only when that is over a cap are real sizes
    // read (a few stat calls a second, only then).
    this.logTimer = setInterval(() => this.enforceLogCaps(), LOG_CHECK_MS);
    this.logTimer.unref();
    for (const server of new Set(this.servers.values())) {
      const missing = unenforcedLimits(this.cfg, server.cgroup);
      if (missing.length) log.warn(`server ${server.name}: cgroup limits ${missing.join(', ')} not enforced: ${this.cfg.cgroups === 'none' ? 'cgroups: none' : 'no writable cgroup hierarchy with that controller'} (rlimits only; fuse-svcd check)`);
    }
    if (this.cfg.poolSize > 0) {
      // A pooled launcher knows nothing of its server until it is claimed but its cgroup
      // limits: definitions with the same limits share one pool (the shipped ones all do).
      for (const server of new Set(this.servers.values())) {
        if (this.pools.has(poolKey(server))) continue;
        const pool = new LauncherPool(this.launcher, this.dir, this.cfg.poolSize, (poolId) => instanceCgroups(this.cfg, poolId, server.cgroup, () => this.liveIds()));
        this.pools.set(poolKey(server), pool);
        pool.fill();
      }
    }
  }

  /** Ids whose cgroups must survive a sweep: live instances and pooled launchers. */
  private liveIds(): number[] {
    return [...this.instances.keys(), ...this.preparing, ...[...this.pools.values()].flatMap((p) => p.ids())];
  }

  private listen(): void {
    const p = this.cfg.socket;
    if (existsSync(p)) {
      if (!lstatSync(p).isSocket()) throw new Error(`${p} exists and is not a socket; refusing to replace it`);
      unlinkSync(p); // a stale socket from a previous broker; a live one would be replaced too, as inetd does
    }
    this.bound = bindListener(p, 'seqpacket', 128);
    this.listenFd = this.bound.fd;
    setSocketModeNoFollow(p, this.cfg.socketMode, this.cfg.socketGroup === undefined ? undefined : groupId(this.cfg.socketGroup));
    this.listenWatcher = sock.poll(this.listenFd, 'readable', () => this.acceptAll());
    log.info(`listening on ${p} (mode ${this.cfg.socketMode.toString(8).padStart(4, '0')}${this.cfg.socketGroup ? `, group ${this.cfg.socketGroup}` : ''}); ${this.liveCount()} live instance(s)`);
  }

  /** Stops accepting and closes the socket; live instances keep running; idle pooled launchers end. */
  close(): Promise<void> {
    this.stopping = true;
    clearInterval(this.logTimer);
    this.listenWatcher?.stop();
    clearTimeout(this.acceptPaused);
    if (this.bound) {
      closeListener(this.bound);
      this.bound = undefined;
      this.listenFd = -1;
    }
    for (const c of this.conns) this.finish(c);
    const pools = [...this.pools.values()].map((p) => p.close());
    for (const inst of this.instances.values()) {
      inst.watcher?.stop();
      if (inst.pidfd >= 0) sock.close(inst.pidfd);
      inst.pidfd = -1;
    }
    // Then this broker's cgroup parents, unless an instance still has its cgroups there.
    return Promise.all(pools).then(() => (this.cfg.cgroups === 'none' ? undefined : removeParentsAtExit(this.cfg.runtimeDir)));
  }

  liveCount(): number {
    let n = 0;
    for (const i of this.instances.values()) if (i.status.state !== 'exited') n++;
    return n;
  }

  allocatedUids(): number[] {
    return this.uids.allocated();
  }

  // ---- connections -------------------------------------------------------------------------

  private acceptAll(): void {
    for (;;) {
      let peer: sock.Peer | null;
      try {
        peer = sock.accept(this.listenFd, true);
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (code === 'EMFILE' || code === 'ENFILE' || code === 'ENOBUFS' || code === 'ENOMEM') {
          // Out of descriptors: the pending connection stays queued and the poll handle would
          // fire again at once. Pause accepting; connections that end give descriptors back.
          this.pauseAccept(`accept: ${(e as Error).message}; pausing accept for 200 ms (${this.conns.size} open connections)`);
          return;
        }
        log.limited('accept', `accept: ${(e as Error).message}`);
        return;
      }
      if (!peer) return;
      const caller: Caller = { uid: peer.uid, gid: peer.gid, pid: peer.pid, pidfd: peer.pidfd, groups: [peer.gid], pidfdError: peer.pidfdError };
      const refusal = this.admit(caller.uid);
      if (refusal) {
        // Answered before anything is received: descriptors queued on the connection are
        // dropped by the kernel with it (a plain fput, no FUSE flush).
        log.limited(`refuse ${refusal.code} ${caller.uid}`, `uid ${caller.uid}: connection refused: ${refusal.code}: ${refusal.message}`);
        try {
          sock.send(peer.fd, encodeReply(errorReply(refusal)), []);
        } catch {
          /* the caller is gone */
        }
        if (peer.pidfd >= 0) safeClose(peer.pidfd);
        // Closing a socket with its request unread resets the peer before it reads the
        // answer: keep it a moment (counted in the connection total), then close.
        const fd = peer.fd;
        if (this.lingering >= this.cfg.maxConnections) {
          safeClose(fd); // a flood of refused connections: no lingering for them
          continue;
        }
        this.lingering++;
        setTimeout(() => {
          this.lingering--;
          safeClose(fd);
        }, 500).unref();
        continue;
      }
      const c: Conn = { fd: peer.fd, caller, done: false };
      this.conns.add(c);
      this.connsPerUid.set(caller.uid, (this.connsPerUid.get(caller.uid) ?? 0) + 1);
      c.timer = setTimeout(() => {
        log.limited(`idle ${caller.uid}`, `uid ${caller.uid}: no request within ${this.cfg.requestTimeoutMs} ms; connection closed`);
        this.finish(c);
      }, this.cfg.requestTimeoutMs);
      c.watcher = sock.poll(c.fd, 'readable', () => this.onReadable(c));
    }
  }

  /** Why a new connection of `uid` is refused at once, if it is. */
  private admit(uid: number): RequestError | undefined {
    if (this.stopping) return new RequestError('ESHUTDOWN');
    const mine = this.connsPerUid.get(uid) ?? 0;
    if (mine >= this.cfg.maxConnectionsPerUser) return new RequestError('ELIMIT_CONN', `uid ${uid} already has ${mine} open connections (limit ${this.cfg.maxConnectionsPerUser})`);
    if (this.conns.size + this.lingering + this.external >= this.cfg.maxConnections) {
      return new RequestError('ELIMIT_CONN', `the broker already has ${this.conns.size + this.external} open connections (limit ${this.cfg.maxConnections})`);
    }
    const stuck = stuckCount(uid);
    if (stuck >= this.cfg.maxStuckPerUser) {
      return new RequestError('ELIMIT_STUCK', `${stuck} descriptors uid ${uid} sent are still stuck closing on a FUSE server that does not answer (limit ${this.cfg.maxStuckPerUser}); let that server answer`);
    }
    return undefined;
  }

  /**
   * A connection of another listener (upstream sockets) under the same caps as the broker
   * socket's: throws the refusal, else returns the function that gives the slot back.
   */
  openConnection(uid: number): () => void {
    const refusal = this.admit(uid);
    if (refusal) throw refusal;
    this.external++;
    this.connsPerUid.set(uid, (this.connsPerUid.get(uid) ?? 0) + 1);
    let open = true;
    return () => {
      if (!open) return;
      open = false;
      this.external--;
      const n = (this.connsPerUid.get(uid) ?? 1) - 1;
      if (n > 0) this.connsPerUid.set(uid, n);
      else this.connsPerUid.delete(uid);
    };
  }

  private pauseAccept(why: string): void {
    log.limited('accept-pause', why);
    if (this.acceptPaused || !this.listenWatcher) return;
    this.listenWatcher.stop();
    this.listenWatcher = undefined;
    this.acceptPaused = setTimeout(() => {
      this.acceptPaused = undefined;
      if (this.stopping || this.listenFd < 0) return;
      this.listenWatcher = sock.poll(this.listenFd, 'readable', () => this.acceptAll());
    }, 200);
  }

  private onReadable(c: Conn): void {
    if (c.done) return;
    let packet: sock.Received | null;
    try {
      packet = sock.recv(c.fd, MAX_MESSAGE_BYTES, MAX_FDS, c.caller.uid);
    } catch (e) {
      log.warn(`uid ${c.caller.uid}: recv: ${(e as Error).message}`);
      this.finish(c);
      return;
    }
    if (!packet) return;
    c.watcher?.stop();
    clearTimeout(c.timer);
    if (packet.eof) {
      this.finish(c);
      return;
    }
    void this.handle(c, packet).finally(() => {
      // Never close() here: these may be files on a FUSE filesystem the caller runs (fdsafe.ts).
      dropCallerFds(packet!.fds, c.caller.uid, c.caller.pidfd);
      this.finish(c);
    });
  }

  private finish(c: Conn): void {
    if (c.done) return;
    c.done = true;
    c.watcher?.stop();
    clearTimeout(c.timer);
    const n = (this.connsPerUid.get(c.caller.uid) ?? 1) - 1;
    if (n > 0) this.connsPerUid.set(c.caller.uid, n);
    else this.connsPerUid.delete(c.caller.uid);
    safeClose(c.fd);
    if (c.caller.pidfd >= 0) safeClose(c.caller.pidfd);
    this.conns.delete(c);
  }

  private async handle(c: Conn, packet: sock.Received): Promise<void> {
    const t0 = process.hrtime.bigint();
    let req: Request | undefined;
    let reply: Reply;
    let rollback: (() => Promise<void>) | undefined;
    try {
      if (this.stopping) throw new RequestError('ESHUTDOWN');
      req = decodeRequest(packet);
      this.rateLimit(c.caller.uid);
      if (req.op === 'mount') {
        const r = await this.mount(c.caller, req, packet.fds);
        reply = r.reply;
        rollback = r.rollback;
      } else if (req.op === 'unmount') reply = await this.unmount(c.caller, req, packet.fds);
      else reply = this.list(c.caller, req);
    } catch (e) {
      reply = errorReply(e);
      const what = req ? req.op : 'request';
      log.info(`uid ${c.caller.uid}: ${what} refused: ${reply.ok ? '' : `${reply.code}: ${reply.message}`}`);
    }
    try {
      sock.send(c.fd, encodeReply(reply), []);
    } catch (e) {
      // The caller went away before the answer: a mount it never learned of is undone, so a
      // disconnecting client leaves nothing behind.
      log.info(`uid ${c.caller.uid}: the caller disconnected before the reply (${(e as Error).message})${rollback ? '; undoing the mount' : ''}`);
      if (rollback) await rollback();
    }
    if (reply.ok && req?.op === 'mount') {
      log.debug(`mount answered in ${Number(process.hrtime.bigint() - t0) / 1e6} ms`);
    }
  }

  private rateLimit(uid: number): void {
    const { perSecond, burst } = this.cfg.rate;
    const now = Date.now();
    const b = this.buckets.get(uid) ?? { tokens: burst, at: now };
    b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * perSecond);
    b.at = now;
    this.buckets.set(uid, b);
    if (b.tokens < 1) throw new RequestError('ELIMIT_RATE', `more than ${perSecond} requests per second (burst ${burst}) from uid ${uid}; slow down`);
    b.tokens -= 1;
  }

  // ---- mount -------------------------------------------------------------------------------

  /**
   * A mount the broker asks for on its own behalf (the Docker volume driver,
   * supervisor/docker-plugin.ts): the same policy, limits, uid allocation, launcher and
   * sandbox as a request on the socket. `allowOther` is what no client may ask for; the
   * caller is the broker itself (uid 0, its own pidfd), so it is never a client's choice.
   */
  async mountFor(caller: Caller, req: MountRequest, fds: number[], extra: { allowOther?: boolean } = {}): Promise<Reply> {
    if (this.stopping) throw new RequestError('ESHUTDOWN');
    return (await this.mount(caller, req, fds, extra)).reply;
  }

  /** Ends a live instance (detach, server exit) and waits for it; a gone one is no error. */
  async stopById(id: number, timeoutMs = 10000): Promise<void> {
    const inst = this.instances.get(id);
    if (!inst || inst.status.state === 'exited') return;
    await this.stopInstance(inst, timeoutMs);
  }

  /** The tracked instance with this id, live or recently ended. */
  instance(id: number): Instance | undefined {
    return this.instances.get(id);
  }

  /** The definition serving `fstype`, if the configuration allows it; EFSTYPE otherwise. */
  private servedBy(fstype: string): ServerDef {
    if (!this.cfg.fstypes.includes(fstype)) throw new RequestError('EFSTYPE', `filesystem type "${oneLine(fstype, 40)}" is not allowed (allowed: ${this.cfg.fstypes.join(', ')})`);
    const server = this.servers.get(fstype);
    if (!server) throw new RequestError('EFSTYPE', `no server definition serves "${fstype}"`);
    return server;
  }

  private async mount(caller: Caller, req: MountRequest, fds: number[], extra: { allowOther?: boolean } = {}): Promise<{ reply: Reply; rollback: () => Promise<void> }> {
    if (caller.pidfd < 0) {
      if (caller.pidfdError === 'EPIDREUSED') throw new RequestError('EPEER', `the caller's pid ${caller.pid} names another process now (it exited before its request was read); nothing was done`);
      throw new RequestError('EPEER', 'the kernel gave no pidfd for the caller (it may be in a pid namespace the broker cannot see, on a kernel before 6.5)');
    }
    const server = this.servedBy(req.fstype);
    // A transport server (sshfs) takes a connected socket where an image server takes its image;
    // either descriptor sits at the source's place in the launcher's layout.
    const transport = server.source === 'transport';
    if (transport !== req.fds.includes('transport')) {
      throw new RequestError('ESOURCE_KIND', transport ? `${server.name} serves no image: it takes a transport (fuse-svc-request mount --via COMMAND)` : `${server.name} serves an image: send a source descriptor, not a transport`);
    }
    const sourceFd = fds[req.fds.indexOf(transport ? 'transport' : 'source')];
    const targetFd = fds[req.fds.indexOf('target')];
    caller.groups = callerGroups(caller.pidfd, caller.gid);
    const opts = parseMountOptions(req.options, server, caller, this.cfg);
    let source: { size?: number } = {};
    if (transport) checkTransport(sourceFd);
    else source = checkSource(sourceFd, opts.readOnly);
    // The slot is taken before the first await, so concurrent requests cannot all pass the
    // count; it is given back on every path that does not end in a tracked instance.
    const release = this.reserveSlot(caller.uid);
    try {
      await checkTarget(targetFd, caller, this.cfg.targetStatfsTimeoutMs);
      return await this.startMount(caller, req, server, { ...opts, sourceSize: source.size, allowOther: extra.allowOther }, sourceFd, { targetFd }, release);
    } finally {
      release();
    }
  }

  /**
   * A mount for libfuse's contained-service helper (supervisor/upstream.ts): the policy, limits,
   * uid, records and launcher of a brokered mount; only the mount itself is the helper's, made
   * in the caller's namespace by `helper.mount` and found there by the launcher (mount given).
   * The descriptors `helper` returns stay the caller's to drop.
   */
  async mountForHelper(caller: Caller, req: HelperMountRequest, helper: HelperSide): Promise<{ reply: Reply; rollback: () => Promise<void> }> {
    if (this.stopping) throw new RequestError('ESHUTDOWN');
    this.rateLimit(caller.uid);
    if (caller.pidfd < 0) throw new RequestError('EPEER', 'the kernel gave no pidfd for the helper');
    const server = this.servedBy(req.fstype);
    // The helper opens files, never a transport: a transport server's connection must be the
    // connected socket checkTransport proves, which this door cannot carry.
    if (server.source === 'transport') throw new RequestError('ESOURCE_KIND', `${server.name} serves no image: it takes a transport (fuse-svc-request mount --via COMMAND), not the upstream helper`);
    caller.groups = callerGroups(caller.pidfd, caller.gid);
    const opts = parseMountOptions(req.options, server, caller, this.cfg);
    const sourceFd = await helper.openSource(opts.readOnly);
    const source = checkSource(sourceFd, opts.readOnly);
    const release = this.reserveSlot(caller.uid);
    try {
      const fuseFd = await helper.mount({ readOnly: opts.readOnly, noexec: !!opts.noexec, defaultPermissions: !!opts.defaultPermissions, maxRead: opts.maxRead, fsname: fsnameFor(req.sourceName) });
      return await this.startMount(caller, req, server, { ...opts, sourceSize: source.size }, sourceFd, { fuseFd, targetPath: req.targetName }, release);
    } finally {
      release();
    }
  }

  /** Counts live + reserved mounts of the uid and in all; reserves one or refuses. */
  private reserveSlot(uid: number): () => void {
    const mine = [...this.instances.values()].filter((i) => i.status.state !== 'exited' && i.rec.owner_uid === uid).length + (this.reserved.get(uid) ?? 0);
    if (mine >= this.cfg.maxMountsPerUser) throw new RequestError('ELIMIT_MOUNTS', `uid ${uid} already has ${mine} live or starting mounts (limit ${this.cfg.maxMountsPerUser})`);
    const total = this.liveCount() + this.reservedTotal;
    if (total >= this.cfg.maxMounts) throw new RequestError('ELIMIT_TOTAL', `the broker already holds ${total} live or starting mounts (mount_max ${this.cfg.maxMounts})`);
    this.reserved.set(uid, (this.reserved.get(uid) ?? 0) + 1);
    this.reservedTotal++;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.reservedTotal--;
      const n = (this.reserved.get(uid) ?? 1) - 1;
      if (n > 0) this.reserved.set(uid, n);
      else this.reserved.delete(uid);
    };
  }

  private async startMount(caller: Caller, req: Pick<MountRequest, 'fstype' | 'sourceName' | 'targetName'>, server: ServerDef, opts: ReturnType<typeof parseMountOptions> & { sourceSize?: number; allowOther?: boolean }, sourceFd: number, place: { targetFd: number } | { fuseFd: number; targetPath: string }, releaseSlot: () => void): Promise<{ reply: Reply; rollback: () => Promise<void> }> {
    const given = 'fuseFd' in place;

    const transport = server.source === 'transport';
    for (let attempt = 0; ; attempt++) {
      const uid = this.uids.pick();
      if (uid === undefined) throw new RequestError('EUIDS_EXHAUSTED', `all ${this.uids.size} uids of ${this.cfg.uidRange.join('-')} are in use`);
      const id = this.dir.newId();
      const rec: InstanceRecord = {
        id,
        target_path: given ? place.targetPath : readlinkSync(`/proc/self/fd/${place.targetFd}`),
        owner_uid: caller.uid,
        owner_gid: caller.gid,
        fstype: req.fstype,
        options: opts.readOnly ? 'ro' : 'rw',
        source: req.sourceName ?? '(descriptor)',
        target: req.targetName ?? '(descriptor)',
        uid,
        server: server.name,
        started_at: Date.now(),
        mntns: callerMntns(caller.pidfd),
      };
      const specFor = (cgroup: string[], cgroupJoined: boolean) =>
        mountSpec({
          id,
          runtimeDir: this.cfg.runtimeDir,
          uid,
          server,
          policyDir: this.cfg.policyDir,
          profile: this.cfg.profileDir ? path.join(this.cfg.profileDir, `${id}.syscalls`) : undefined,
          standin: this.standin,
          callerUid: caller.uid,
          callerGid: caller.gid,
          readOnly: opts.readOnly,
          serverOptions: opts.serverOptions,
          maxRead: opts.maxRead,
          sourceSize: opts.sourceSize,
          noexec: opts.noexec,
          defaultPermissions: opts.defaultPermissions,
          allowOther: opts.allowOther,
          fsname: fsnameFor(req.sourceName),
          remotePath: transport ? splitRemoteSource(req.sourceName ?? '').path : undefined,
          fstype: req.fstype,
          cgroup,
          cgroupJoined,
          given,
        });
      // Before the launcher exists (docs/launcher.md): a broker killed from here on leaves a
      // record the next one adopts, completed from the launcher's state file.
      this.dir.writeRecord(rec);
      this.makeLogRoom(caller.uid);
      const tSpawn = performance.now();
      const fds = [sourceFd, given ? place.fuseFd : place.targetFd, caller.pidfd];
      const readyTimeoutMs = server.readyTimeoutMs + 5000;
      // A pooled launcher (already in its cgroups) if one is ready, else a new one.
      const pool = this.pools.get(poolKey(server));
      const claimed = pool?.claim((cg) => specFor(cg, true), fds, this.dir.file(id, 'log'), readyTimeoutMs, cgroupName(this.cfg.runtimeDir, id));
      let pid: number;
      let pidfd: number;
      let ready: Promise<LaunchResult>;
      if (claimed) {
        ({ pid, pidfd, ready } = claimed);
        rec.cgroups_to_remove = claimed.cgroups;
      } else {
        // Per-instance cgroups (supervisor/cgroups.ts); this launcher joins and removes them.
        // Its cgroups are created asynchronously: keep a concurrent sweep off them meanwhile.
        this.preparing.add(id);
        let cgroup: string[];
        try {
          cgroup = await instanceCgroups(this.cfg, id, server.cgroup, () => this.liveIds());
        } catch (e) {
          // Fail closed: no server runs without the limits its definition asks for.
          if (e instanceof CgroupError) throw new RequestError('ESANDBOX', `${server.name}: ${e.message}`);
          throw e;
        } finally {
          this.preparing.delete(id);
        }
        ({ pid, ready } = spawnLauncher({ launcher: this.launcher, spec: specFor(cgroup, false), fds, logFile: this.dir.file(id, 'log'), readyTimeoutMs }));
        // Our unreaped child: its pid cannot be reused yet, so this pidfd is the launcher's.
        pidfd = sock.pidfdOpen(pid);
      }
      rec.launcher_pid = pid;
      rec.launcher_start = processStartTime(pid);
      // The record on disk gets pid and mount ids with the readiness line (one write less on
      // the request path); until then a new broker reads them from the launcher's state file.
      const inst = this.track(rec, pidfd, { state: 'starting' });
      releaseSlot(); // the tracked instance counts itself from here
      const tSpawned = performance.now();
      const r = await ready;
      if (r.ok) {
        log.debug(`instance ${id}: ${claimed ? 'pooled launcher' : 'spawn'} ${(tSpawned - tSpawn).toFixed(1)} ms, launcher ready after ${(performance.now() - tSpawned).toFixed(1)} ms`);
        setImmediate(() => pool?.fill());
        rec.mnt_id = r.mntId;
        rec.mnt_id_old = r.mntIdOld;
        this.dir.writeRecord(rec);
        inst.status = { state: 'running', server_pid: r.serverPid };
        log.info(`instance ${id}: mounted ${rec.fstype} ${rec.source} on ${rec.target} (${rec.options}) for uid ${caller.uid}; sandbox uid ${uid}, server pid ${r.serverPid}`);
        return {
          reply: { ok: true, id, uid, server_pid: r.serverPid, mnt_id: r.mntId },
          rollback: async () => {
            await this.stopInstance(inst, 10000);
          },
        };
      }
      // A failed start: make sure the launcher is gone before the uid and id are forgotten.
      // The caller is answered by a deadline whatever the launcher does: SIGTERM, then
      // SIGKILL, then answer; a launcher the kernel cannot end yet (stuck in a FUSE wait)
      // keeps its instance (uid, slot) tracked until it does end.
      setImmediate(() => pool?.fill());
      // The SIGTERM grace outlasts the launcher's own bounded teardown (abort the connection,
      // kill the server, reap within 2 s each: docs/launcher.md), so SIGKILL never cuts it short.
      signalLauncher(pidfd);
      let gone = await Promise.race([inst.ended.then(() => true), sleep(LAUNCHER_TEARDOWN_GRACE_MS).then(() => false)]);
      if (!gone) {
        signalLauncher(pidfd, 9);
        gone = await Promise.race([inst.ended.then(() => true), sleep(2000).then(() => false)]);
      }
      if (!gone) {
        log.warn(`instance ${id}: the launcher (pid ${pid}) does not end after SIGKILL (stuck in the kernel); its uid ${uid} stays held until it does`);
        void inst.ended.then(() => this.forget(inst));
        const why = r.code === 'ETIMEDOUT_SERVER' ? 'ESERVER_TIMEOUT' : r.code;
        throw new RequestError(why as never, `${server.name}: ${r.message}; the launcher was killed`);
      }
      const tail = oneLine(this.dir.logTail(id, 600), 400);
      // The whole log outlives the instance's other files (supervisor/failed-logs.ts).
      const kept = keepFailedLog(this.cfg.runtimeDir, id, this.dir.file(id, 'log'));
      if (inst.orphaned) {
        // Killed after it attached the mount: the record stays, listed as a dead mount for
        // its owner to remove (a forgotten one would be a mount nobody can account for).
        this.dir.writeRecord(inst.rec);
        log.info(`instance ${id}: start failed after the attach: ${r.code}: ${r.message}; its mount may be left dead on ${rec.target}`);
        throw new RequestError(r.code as never, `${r.message}; ${ORPHAN_REASON}`);
      }
      this.forget(inst);
      if (r.code === 'EUID_BUSY' && attempt < 3) continue; // another broker's instance holds it
      log.info(`instance ${id}: start failed: ${r.code}: ${r.message}${tail && !r.message.includes(tail) ? ` (log: ${tail})` : ''}${kept ? `; whole log: ${kept}` : ''}`);
      throw new RequestError(r.code as never, r.message);
    }
  }

  /** Starts watching an instance's launcher; called for new and re-adopted instances. */
  private track(rec: InstanceRecord, pidfd: number, status: Instance['status']): Instance {
    let endedResolve!: (s: Instance['status']) => void;
    const ended = new Promise<Instance['status']>((r) => (endedResolve = r));
    const inst: Instance = { rec, pidfd, status, ended, endedResolve };
    this.instances.set(rec.id, inst);
    this.uids.hold(rec.uid);
    inst.watcher = onPidfdExit(pidfd, () => this.onLauncherExit(inst));
    return inst;
  }

  private onLauncherExit(inst: Instance): void {
    const st = this.dir.readState(inst.rec.id) ?? { state: 'exited' as const, reason: 'the launcher died without a final state' };
    const wasRunning = inst.status.state === 'running';
    // Written before its attach (the record gets it only with the readiness line): a launcher
    // killed after attaching but before ready leaves a mount only this id can be matched to.
    inst.rec.mnt_id_old ??= st.mnt_id_old;
    inst.status = { ...st, state: 'exited', ended_at: st.ended_at ?? Date.now() };
    if (st.state !== 'exited') {
      // Killed before it could detach: the mount may be left dead in the caller's namespace.
      inst.orphaned = mayLeaveDeadMount(inst.rec, st);
      inst.status.reason = inst.orphaned ? ORPHAN_REASON : st.detached ? `the launcher was killed after it detached the mount (last state ${st.state})` : `the launcher ended unexpectedly (last state ${st.state})`;
    } else if (mayLeaveDeadMount(inst.rec, st)) {
      inst.orphaned = true;
      inst.status.reason = LEFT_REASON;
    }
    safeClose(inst.pidfd);
    inst.pidfd = -1;
    this.uids.release(inst.rec.uid);
    // After the answer: removing a memory cgroup takes the kernel milliseconds.
    if (inst.rec.cgroups_to_remove?.length) setTimeout(() => void removeCgroupsSoon(inst.rec.cgroups_to_remove!), 0);
    if (wasRunning) {
      const how = inst.status.exit_signal ? `killed by signal ${inst.status.exit_signal}` : `exit status ${inst.status.exit_code ?? '?'}`;
      log.info(`instance ${inst.rec.id}: ${inst.rec.source} on ${inst.rec.target} (uid ${inst.rec.owner_uid}) ended: ${inst.status.reason ?? 'server exited'}, server ${how}${inst.orphaned ? '' : '; mount detached'}, sandbox uid ${inst.rec.uid} released`);
    }
    setTimeout(() => this.forget(inst), inst.orphaned ? ORPHAN_KEEP_MS : ENDED_KEEP_MS).unref();
    inst.endedResolve(inst.status);
  }

  private forget(inst: Instance): void {
    if (this.instances.get(inst.rec.id) !== inst) return;
    this.instances.delete(inst.rec.id);
    this.endedLogBytes.delete(inst.rec.id);
    this.dir.remove(inst.rec.id);
  }

  // ---- log caps (supervisor/logcap.ts) ----------------------------------------------------

  /** The instance logs, live ones at the most they may reach (worst) or at their size now. */
  private logEntries(worst: boolean): LogEntry[] {
    const out: LogEntry[] = [];
    for (const inst of this.instances.values()) {
      const id = inst.rec.id;
      const live = inst.status.state !== 'exited';
      let bytes: number;
      if (live) bytes = worst ? INSTANCE_LOG_MAX : fileSize(this.dir.file(id, 'log'));
      else {
        bytes = this.endedLogBytes.get(id) ?? fileSize(this.dir.file(id, 'log'));
        this.endedLogBytes.set(id, bytes);
      }
      out.push({ id, uid: inst.rec.owner_uid, bytes, live, at: live ? inst.rec.started_at : (inst.status.ended_at ?? inst.rec.started_at) });
    }
    return out;
  }

  /** Before a new instance of `uid` starts: room for its log, by dropping ended logs only. */
  private makeLogRoom(uid: number): void {
    const entries = this.logEntries(true);
    entries.push({ id: -1, uid, bytes: INSTANCE_LOG_MAX, live: true, at: Date.now() });
    this.applyLogPlan(planLogCaps(entries, this.cfg.logCapBytes, this.cfg.logCapBytesPerUser).drop, []);
  }

  /** Periodic: when live logs could pass a cap, their real sizes decide (ended first, then live). */
  private enforceLogCaps(): void {
    const worst = this.logEntries(true);
    const over = planLogCaps(worst, this.cfg.logCapBytes, this.cfg.logCapBytesPerUser);
    if (!over.drop.length && !over.truncate.length) return;
    const plan = over.truncate.length ? planLogCaps(this.logEntries(false), this.cfg.logCapBytes, this.cfg.logCapBytesPerUser) : over;
    this.applyLogPlan(plan.drop, plan.truncate);
  }

  private applyLogPlan(drop: LogEntry[], truncate: LogEntry[]): void {
    for (const e of drop) {
      if (e.id < 0) continue;
      rmSync(this.dir.file(e.id, 'log'), { force: true });
      this.endedLogBytes.set(e.id, 0);
    }
    for (const e of truncate) {
      if (e.id < 0) continue;
      try {
        // Through a descriptor opened without following links (safefile.ts).
        const fd = openExistingNoFollow(this.dir.dir, `${e.id}.log`, sock.O_WRONLY | fsc.O_APPEND);
        try {
          ftruncateSync(fd, 0);
          // The launcher appends (O_APPEND): its next lines follow this one.
          writeSync(fd, `fuse-svcd: log truncated: the instance logs passed log_cap_bytes (${this.cfg.logCapBytes}) or log_cap_bytes_per_user (${this.cfg.logCapBytesPerUser})\n`);
        } finally {
          closeSync(fd);
        }
      } catch {
        /* gone meanwhile */
      }
    }
    if (drop.some((e) => e.id >= 0) || truncate.length) {
      const uids = [...new Set([...drop, ...truncate].filter((e) => e.id >= 0).map((e) => e.uid))].join(', ');
      log.limited('log-cap', `instance logs over their cap (log_cap_bytes ${this.cfg.logCapBytes}, per user ${this.cfg.logCapBytesPerUser}): dropped ${drop.filter((e) => e.id >= 0).length} ended log(s)${truncate.length ? `, truncated ${truncate.length} live one(s)` : ''} of uid ${uids}`);
    }
  }

  // ---- unmount, list -----------------------------------------------------------------------

  private async unmount(caller: Caller, req: UnmountRequest, fds: number[]): Promise<Reply> {
    let inst: Instance | undefined;
    if (req.id !== undefined) {
      inst = this.instances.get(req.id);
      if (!inst || inst.status.state === 'exited') throw new RequestError('ENOENT_MOUNT', `no live broker mount with id ${req.id}`);
    } else {
      const i = req.fds.indexOf('target');
      inst = this.instanceAt(fds[i]);
      if (inst.status.state === 'exited') {
        if (caller.uid !== 0 && caller.uid !== inst.rec.owner_uid) throw new RequestError('EPERM_MOUNT', `mount ${inst.rec.id} belongs to uid ${inst.rec.owner_uid}`);
        return this.detachOrphan(inst, caller, fds[i]);
      }
      // The descriptor pins the very mount we are about to detach: while anyone holds it, the
      // superblock lives on and the server never sees the end of its connection. (An O_PATH
      // descriptor is closed at once; anything else off the loop, see fdsafe.ts.)
      dropCallerFds([fds[i]], caller.uid, caller.pidfd);
      fds[i] = -1;
    }
    if (caller.uid !== 0 && caller.uid !== inst.rec.owner_uid) throw new RequestError('EPERM_MOUNT', `mount ${inst.rec.id} belongs to uid ${inst.rec.owner_uid}`);
    const st = await this.stopInstance(inst, req.timeoutMs ?? 10000);
    if (inst.orphaned) {
      // The instance ended, its mount did not (its launcher was killed before it detached, or
      // the mount is covered): "ok" would be a lie. Listed as a dead mount for its owner.
      log.info(`instance ${inst.rec.id}: unmount for uid ${caller.uid}: the instance ended but its mount on ${inst.rec.target} is left: ${st.reason ?? ''}`);
      throw new RequestError('EMOUNT_LEFT', `instance ${inst.rec.id} ended but its mount is still there (${inst.status.reason ?? 'not detached'})`);
    }
    log.info(`instance ${inst.rec.id}: unmounted ${inst.rec.target} for uid ${caller.uid}`);
    return { ok: true, id: inst.rec.id, exit_code: st.exit_code ?? null, exit_signal: st.exit_signal ?? null };
  }

  /**
   * A mount whose launcher is gone (killed with its container, say) answers ENOTCONN and its
   * owner cannot remove it. Its owner may ask by descriptor: if the descriptor is the root of
   * the mount the record names and the kernel says the connection is dead, a one-shot
   * launcher detaches it in the caller's namespace.
   */
  private async detachOrphan(inst: Instance, caller: Caller, fd: number): Promise<Reply> {
    // Root's statfs cannot tell a dead FUSE mount (FUSE answers non-owners itself), so the
    // caller's own mount table must show this mount id as a FUSE mount owned by the record's
    // owner: a recycled mount id on someone else's mount does not qualify.
    const mntId = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
    const line = callerMountinfo(caller.pidfd)?.find((l) => l.split(' ')[0] === mntId);
    const fsType = line?.split(' - ')[1]?.split(' ')[0] ?? '';
    const superOpts = line?.split(' - ')[1]?.split(' ')[2] ?? '';
    if (!/^fuse(blk)?(\.|$)/.test(fsType) || !superOpts.split(',').includes(`user_id=${inst.rec.owner_uid}`)) {
      throw new RequestError('ENOENT_MOUNT', `broker mount ${inst.rec.id} has ended; the target is not its mount`);
    }
    const r = await runWithFds(this.launcher, ['detach'], [caller.pidfd, fd], 10000);
    if (r.code !== 0) throw new RequestError('EATTACH', `cannot detach the dead mount: ${oneLine(r.stderr)}`);
    log.info(`instance ${inst.rec.id}: detached the dead mount ${inst.rec.target} left by a launcher that was killed, for uid ${caller.uid}`);
    this.forget(inst);
    return { ok: true, id: inst.rec.id, exit_code: inst.status.exit_code ?? null, exit_signal: inst.status.exit_signal ?? null };
  }

  /**
   * The instance whose mount root `fd` is: a live one, or an orphaned one (its launcher was
   * killed and its mount may be left dead). Neither fstat nor statx may be used: FUSE refuses
   * every uid but the caller's (no allow_other), root included. The kernel's fdinfo names the
   * fd's mount, and the fd's path (as the kernel prints it) must be the mount point recorded at
   * mount time, so a subdirectory or a symlink inside the mount does not match.
   */
  private instanceAt(fd: number): Instance {
    const mntId = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
    let where: string;
    try {
      where = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      where = '';
    }
    const candidates = [...this.instances.values()].filter((i) => i.rec.mnt_id_old === mntId && (i.status.state !== 'exited' || i.orphaned));
    // The kernel reuses mount ids: an orphaned record (its dead mount since unmounted by
    // someone) can name the id of a newer mount elsewhere, so the recorded mount point decides
    // first, and a live instance before an orphan.
    const live = (i: Instance) => i.status.state !== 'exited';
    const atPath = candidates.filter((i) => i.rec.target_path === where);
    const inst = atPath.find(live) ?? atPath[0] ?? candidates.find(live) ?? candidates[0];
    if (!inst) throw new RequestError('ENOENT_MOUNT', 'the target is not a mount made by this broker');
    if (inst.rec.target_path !== where) throw new RequestError('ENOENT_MOUNT', `the target is not the root of broker mount ${inst.rec.id} (use --id ${inst.rec.id})`);
    return inst;
  }

  /** Asks the launcher to detach and end the server, and waits until it has. */
  private async stopInstance(inst: Instance, timeoutMs: number): Promise<Instance['status']> {
    if (inst.status.state === 'exited') return inst.status;
    inst.status = { ...inst.status, state: 'stopping' };
    signalLauncher(inst.pidfd);
    // The launcher waits stopTimeout for the server, then SIGTERM, then 2 s, then SIGKILL.
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), timeoutMs + 5000).unref());
    const r = await Promise.race([inst.ended, timer]);
    if (r === 'timeout') throw new RequestError('EINTERNAL', `instance ${inst.rec.id} did not stop within ${timeoutMs + 5000} ms`);
    return r;
  }

  /**
   * A record that says its mount may be left dead is believed until the broker can look: when
   * the owner asks from the very mount namespace the mount was made in, its mount table (through
   * the caller's pidfd) shows whether a FUSE mount of that id is still there. Gone (detached
   * by a launcher killed before it could say so, or never attached: killed just before the
   * attach), the record is an ended instance like any other, listed once and collected.
   */
  private settleDeadMounts(caller: Caller): void {
    let ns: string | undefined;
    let table: string[] | undefined;
    for (const inst of this.instances.values()) {
      if (!inst.orphaned || inst.rec.owner_uid !== caller.uid || !inst.rec.mntns || !inst.rec.mnt_id_old) continue;
      ns ??= callerMntns(caller.pidfd) ?? '';
      if (ns !== inst.rec.mntns) continue;
      table ??= callerMountinfo(caller.pidfd);
      if (!table || callerMntns(caller.pidfd) !== ns) return; // not visible, or it moved meanwhile
      const there = table.some((l) => l.split(' ')[0] === inst.rec.mnt_id_old && /^fuse(blk)?(\.|$)/.test(l.split(' - ')[1]?.split(' ')[0] ?? ''));
      if (there) continue;
      inst.orphaned = false;
      inst.status.reason = inst.status.reason === ORPHAN_REASON ? 'the launcher was killed; its mount is not in the caller\'s namespace (detached or never attached)' : 'the server ended; its mount, which a detach could not reach, has since gone from the caller\'s namespace';
      log.info(`instance ${inst.rec.id}: no mount of it is left in its owner's namespace (mount id ${inst.rec.mnt_id_old} absent): no longer listed as a dead mount`);
    }
  }

  private list(caller: Caller, req: ListRequest): Reply {
    this.settleDeadMounts(caller);
    const after = req.after ?? 0;
    const insts = [...this.instances.values()]
      .filter((i) => i.rec.id > after && (caller.uid === 0 || i.rec.owner_uid === caller.uid))
      .sort((a, b) => a.rec.id - b.rec.id);
    const entries = insts.map((inst) => {
      const r = inst.rec;
      const s = inst.status;
      return { id: r.id, owner_uid: r.owner_uid, fstype: r.fstype, options: r.options, source: r.source, target: r.target, uid: r.uid, state: s.state, started_at: r.started_at, server_pid: s.server_pid ?? null, exit_code: s.exit_code ?? null, exit_signal: s.exit_signal ?? null, reason: s.reason ?? null };
    });
    // Bounded: a page never passes the reply cap; `next` says where the rest starts.
    const page = listPage(entries);
    for (const inst of insts.slice(0, page.taken)) {
      // An ended instance is reported to its owner once, then forgotten.
      if (inst.status.state === 'exited' && caller.uid === inst.rec.owner_uid && !inst.orphaned) this.forget(inst);
    }
    return { ok: true, mounts: page.mounts, next: page.next };
  }

  // ---- restart -----------------------------------------------------------------------------

  /** Takes over the instances a previous broker started (their launchers outlive brokers). */
  private adopt(): void {
    const gc = this.dir.collectGarbage();
    if (gc.length) log.info(`runtime dir: removed ${gc.length} file(s) left by instances and launchers that ended while no broker ran (${gc.slice(0, 5).join(', ')}${gc.length > 5 ? ', ...' : ''})`);
    let dropped = 0;
    for (const id of this.dir.ids()) {
      const rec = this.dir.readRecord(id);
      const st = this.dir.readState(id);
      if (!rec) {
        this.dir.remove(id);
        continue;
      }
      // The record is written before the spawn: pid and mount ids of a launcher whose broker
      // died before its readiness line are in the launcher's own state file.
      if (st) {
        rec.launcher_pid ??= st.launcher_pid;
        rec.launcher_start ??= st.launcher_start;
        rec.mnt_id ??= st.mnt_id;
        rec.mnt_id_old ??= st.mnt_id_old;
      }
      if (!st && rec.launcher_pid === undefined) {
        // Spawned (or about to be) when the broker died; its launcher has not written yet.
        this.adoptLater(rec);
        continue;
      }
      const pidfd = st?.state === 'exited' ? undefined : openLauncherPidfd(rec);
      if (pidfd === undefined) {
        // Ended while no broker ran. When its launcher was killed before it could finish
        // (state not "exited"), the mount may be left dead in the caller's namespace: keep the
        // record so its owner can unmount it (detachOrphan); else list it for the usual window,
        // counted from its end, not from this start.
        const orphaned = mayLeaveDeadMount(rec, st);
        const reason = orphaned ? deadMountReason(st) : st?.state !== 'exited' && st?.detached ? `the launcher was killed after it detached the mount (last state ${st.state})` : (st?.reason ?? 'ended while the broker was not running');
        const endedAt = st?.ended_at || this.dir.mtime(id, 'state') || rec.started_at;
        const keep = (orphaned ? ORPHAN_KEEP_MS : ENDED_KEEP_MS) - (Date.now() - endedAt);
        if (keep <= 0) {
          this.dir.remove(id);
          dropped++;
          continue;
        }
        const status = { ...(st ?? { state: 'exited' as const }), state: 'exited' as const, reason, ended_at: endedAt };
        const inst: Instance = { rec, pidfd: -1, status, ended: Promise.resolve(status), endedResolve: () => {}, orphaned };
        this.instances.set(id, inst);
        setTimeout(() => this.forget(inst), keep).unref();
        continue;
      }
      const inst = this.track(rec, pidfd, st ?? { state: 'running' });
      if (inst.status.state === 'starting') this.followStart(inst);
      else if (!this.dir.readRecord(id)?.mnt_id_old && rec.mnt_id_old) this.dir.writeRecord(rec);
      log.info(`instance ${id}: re-adopted (${rec.source} on ${rec.target}, uid ${rec.owner_uid}, launcher pid ${rec.launcher_pid}${inst.status.state === 'starting' ? ', still starting' : ''})`);
    }
    if (dropped) log.info(`runtime dir: removed the records of ${dropped} instance(s) that ended longer ago than they are listed`);
  }

  /**
   * A record with neither pid nor state: its broker died around the spawn. The launcher writes
   * its state (with its pid and start time) first thing; wait for that a bounded time, listed
   * as starting meanwhile, then adopt it or, if no launcher ever wrote, drop the record.
   */
  private adoptLater(rec: InstanceRecord): void {
    let endedResolve!: (s: Instance['status']) => void;
    const ended = new Promise<Instance['status']>((r) => (endedResolve = r));
    const inst: Instance = { rec, pidfd: -1, status: { state: 'starting' }, ended, endedResolve };
    this.instances.set(rec.id, inst);
    this.uids.hold(rec.uid);
    const deadline = Date.now() + ADOPT_WAIT_MS;
    const poll = () => {
      if (this.instances.get(rec.id) !== inst) return;
      const st = this.dir.readState(rec.id);
      if (st?.launcher_pid !== undefined) {
        rec.launcher_pid = st.launcher_pid;
        rec.launcher_start = st.launcher_start;
        const pidfd = st.state === 'exited' ? undefined : openLauncherPidfd(rec);
        if (pidfd !== undefined) {
          inst.pidfd = pidfd;
          inst.status = { ...st, state: st.state };
          inst.watcher = onPidfdExit(pidfd, () => this.onLauncherExit(inst));
          log.info(`instance ${rec.id}: re-adopted (${rec.source} on ${rec.target}, uid ${rec.owner_uid}, launcher pid ${rec.launcher_pid}; its broker died while it started)`);
          if (st.state === 'starting') this.followStart(inst);
          else this.completeRecord(inst, st);
          return;
        }
        // Ended before we could look (or not the launcher any more): its end as it wrote it.
        this.onLauncherExit(inst);
        return;
      }
      if (Date.now() > deadline) {
        log.info(`instance ${rec.id}: no launcher wrote its state within ${ADOPT_WAIT_MS} ms after a broker restart; record dropped`);
        this.uids.release(rec.uid);
        inst.status = { state: 'exited', reason: 'its broker ended before the launcher started', ended_at: Date.now() };
        inst.endedResolve(inst.status);
        this.forget(inst);
        return;
      }
      setTimeout(poll, 100).unref();
    };
    poll();
  }

  /** An adopted instance still starting: its state file says when it runs (mount ids then). */
  private followStart(inst: Instance): void {
    const deadline = Date.now() + ADOPT_WAIT_MS + 60000;
    const poll = () => {
      if (inst.status.state !== 'starting' || this.instances.get(inst.rec.id) !== inst) return;
      const st = this.dir.readState(inst.rec.id);
      if (st && st.state !== 'starting' && st.state !== 'exited') {
        inst.status = { ...st };
        this.completeRecord(inst, st);
        return;
      }
      if (Date.now() < deadline) setTimeout(poll, 100).unref();
    };
    poll();
  }

  private completeRecord(inst: Instance, st: Instance['status']): void {
    inst.rec.mnt_id ??= st.mnt_id;
    inst.rec.mnt_id_old ??= st.mnt_id_old;
    this.dir.writeRecord(inst.rec);
  }
}

/**
 * chmod/chown of the socket just bound, through an O_PATH|O_NOFOLLOW descriptor of it: if the
 * entry was swapped for a link meanwhile (by someone who can write the public dir), the link is
 * refused instead of root changing its target's mode.
 */
export function setSocketModeNoFollow(p: string, mode: number, gid: number | undefined): void {
  const fd = sock.openat(sock.AT_FDCWD, p, sock.O_PATH | sock.O_NOFOLLOW);
  try {
    if (!fstatSync(fd).isSocket()) throw new Error(`${p} was replaced by something other than a socket after bind; refusing to chmod it`);
    // /proc/self/fd/N is that very inode, whatever the path names now.
    if (gid !== undefined) chownSync(`/proc/self/fd/${fd}`, 0, gid);
    chmodSync(`/proc/self/fd/${fd}`, mode);
  } finally {
    sock.close(fd);
  }
}

/**
 * Whether a launcher that ended without its final state may have left its mount dead in the
 * caller's namespace: it had attached (mount ids known) and had not yet said it detached. Such
 * a record is kept for a day so its owner can remove the mount; one that detached is not, or
 * its owner would be told of a dead mount that is not there and the record would outlive every
 * full stop (found by test/faults-inject.test.ts: a launcher killed while its server flushed).
 */
function mayLeaveDeadMount(rec: InstanceRecord, st: Instance['status'] | undefined): boolean {
  if (rec.mnt_id_old === undefined || st?.detached) return false;
  // Killed before it could detach, or ended with its mount left where a detach could not
  // remove it (covered by another mount): either way its owner's unmount by path removes it.
  return st?.state !== 'exited' || st.left_mounted === true;
}

/** Why an instance whose mount may be left dead is listed so (mayLeaveDeadMount). */
function deadMountReason(st: Instance['status'] | undefined): string {
  return st?.state === 'exited' ? LEFT_REASON : ORPHAN_REASON;
}

/** Which pool serves a definition: one per set of cgroup limits. */
function poolKey(server: ServerDef): string {
  const c = server.cgroup;
  return JSON.stringify([c.memoryMax ?? null, c.pidsMax ?? null, c.cpuWeight ?? null]);
}

/** Waits until a stopped broker's instances are gone (used by tests and `stop`). */
export async function waitForExit(pidfd: number, ms: number): Promise<boolean> {
  return waitPidfd(pidfd, ms);
}

/** The caller's mount namespace as "dev:ino" of /proc/PID/ns/mnt (undefined if not visible). */
function callerMntns(pidfd: number): string | undefined {
  try {
    const pid = Number(/^Pid:\s*(-?\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8'))?.[1]);
    if (!(pid > 0)) return undefined;
    const st = statSync(`/proc/${pid}/ns/mnt`);
    // Only if the pid still names the caller (a live pidfd pins the pid number).
    return sock.pidfdIsAlive(pidfd) ? `${st.dev}:${st.ino}` : undefined;
  } catch {
    return undefined;
  }
}

/** The caller's mount table, read through its pidfd's pid (undefined if not visible). */
function callerMountinfo(pidfd: number): string[] | undefined {
  try {
    const pid = Number(/^Pid:\s*(-?\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8'))?.[1]);
    if (!(pid > 0)) return undefined;
    const text = readFileSync(`/proc/${pid}/mountinfo`, 'utf8');
    // Only if the pid still names the caller (a live pidfd pins the pid number).
    return sock.pidfdIsAlive(pidfd) ? text.split('\n') : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Removes the cgroups a pooled launcher sat in, once it exited. The kernel takes exiting
 * tasks out of their cgroups a moment after the pidfd says they are gone: retry briefly.
 */
async function removeCgroupsSoon(dirs: string[]): Promise<void> {
  for (let tries = 0; dirs.length && tries < 20; tries++) {
    if (tries) await new Promise((r) => setTimeout(r, 50).unref());
    const left: string[] = [];
    for (const d of dirs) {
      await fsp.rmdir(d).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') left.push(d);
      });
    }
    dirs = left;
  }
}

function fileSize(f: string): number {
  try {
    return statSync(f).size;
  } catch {
    return 0;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

function groupId(g: string): number {
  if (/^\d+$/.test(g)) return Number(g);
  for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
    const f = line.split(':');
    if (f[0] === g) return Number(f[2]);
  }
  throw new Error(`unknown group "${g}"`);
}

function safeClose(fd: number): void {
  try {
    sock.close(fd);
  } catch {
    /* already closed */
  }
}
