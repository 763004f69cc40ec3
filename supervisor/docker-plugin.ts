// Docker's volume plugin protocol (HTTP/1.1 + JSON on an AF_UNIX stream socket), served by the
// broker itself: `docker volume create -d fuse-svc -o source=/abs/disk.img -o type=ext4 NAME`
// defines a volume; a container's `-v NAME:/data` mounts it through the broker's normal path
// (policy, limits, uid allocation, launcher, sandbox) with the broker as the caller. Whoever
// talks to this socket makes root open a path, so it answers uid 0 (dockerd) only.
// docs/deploy.md "Docker volume driver" is the manual; docs/security.md says why it is safe.
import http from 'node:http';
import net from 'node:net';
import { chmodSync, constants as fsc, lstatSync, readFileSync, readdirSync, rmdirSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import * as sock from '../helper/native/socket.js';
import type { Config } from './config.js';
import { setSocketModeNoFollow, type Broker } from './broker.js';
import { dropCallerFds } from './fdsafe.js';
import { log } from './log.js';
import { parseMountOptions, type Caller } from './policy.js';
import { RequestError, oneLine, type ErrorCode } from './protocol.js';
import { checkRootDir, openDirNoFollow, openSubdir, readFileNoFollow, syncDir, unlinkNoFollow, UnsafePathError, writeFileNoFollow } from './safefile.js';
import { acquireLockFile } from './rundir.js';
import { bindListener, closeListener, type BoundSocket } from './socket-path.js';

/** Largest request body read (Docker's are a few hundred bytes). */
export const MAX_PLUGIN_BODY = 64 * 1024;
/** Connections open at once (dockerd keeps a few). */
const MAX_PLUGIN_CONNS = 64;
/** How long a request may take to arrive, headers and body (checked every second). */
const REQUEST_MS = 5000;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
/** Docker's mount ids are 64 hex digits; anything printable and short is taken. */
const MOUNT_ID_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
const CONTENT_TYPE = 'application/vnd.docker.plugins.v1.2+json';

type Definition = { name: string; source: string; type: string; options: string; created_at: number };
/** A live volume: its broker instance and the Mount ids (one per container) holding it. */
type MountState = { instance: number; ids: string[] };

/** The plugin socket's lock file: a second broker must not take over a live broker's socket. */
export function pluginLockFile(socket: string): string {
  return `${socket}.lock`;
}

/**
 * Takes SOCKET.lock (flock, for this process's life), making the socket's directory if needed
 * (0700, what dockerd makes). undefined: another live process holds it.
 */
export function acquirePluginLock(cfg: Config): number | undefined {
  const dir = openDirNoFollow(path.dirname(cfg.dockerPluginSocket), 0o700);
  try {
    checkRootDir(dir, path.dirname(cfg.dockerPluginSocket));
  } finally {
    sock.close(dir);
  }
  const lock = acquireLockFile(pluginLockFile(cfg.dockerPluginSocket));
  if (lock === undefined) return undefined;
  // The lock file could have been removed under a live broker (it holds the old inode): a
  // socket that answers a connect is served by someone, lock or not.
  try {
    sock.close(sock.connectStream(cfg.dockerPluginSocket));
  } catch {
    return lock; // nothing listens: a dead broker's socket, or none
  }
  sock.close(lock);
  return undefined;
}

export class DockerPlugin {
  private listenFd = -1;
  private bound?: BoundSocket;
  private watcher?: sock.Watcher;
  private readonly http: http.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly deadlines = new WeakMap<net.Socket, { arm: () => void; disarm: () => void }>();
  /** SO_PEERCRED's pid of each connection (dockerd; 0 when it is in a pid namespace we cannot see). */
  private readonly peerPids = new WeakMap<net.Socket, number>();
  private readonly defs = new Map<string, Definition>();
  private mounts: Record<string, MountState> = {};
  /** One operation at a time per volume name: two Mounts never start two instances. */
  private readonly queues = new Map<string, Promise<unknown>>();
  private readonly volumesDir: string;
  private readonly runDir: string;
  private readonly mntDir: string;

  constructor(
    private readonly cfg: Config,
    private readonly broker: Broker,
  ) {
    this.volumesDir = path.join(cfg.dockerStateDir, 'volumes');
    this.runDir = path.join(cfg.runtimeDir, 'docker');
    this.mntDir = cfg.dockerMountDir ?? path.join(this.runDir, 'mnt');
    this.http = http.createServer({ maxHeaderSize: 8192, requestTimeout: REQUEST_MS, headersTimeout: REQUEST_MS, keepAliveTimeout: 5000, connectionsCheckingInterval: 1000 }, (req, res) => this.onRequest(req, res));
  }

  mountpoint(name: string): string {
    return path.join(this.mntDir, name);
  }

  /** Makes/checks the state dirs, loads definitions and live mounts, then listens. */
  start(): void {
    this.prepareDirs();
    this.loadDefinitions();
    this.loadMounts();
    const p = this.cfg.dockerPluginSocket;
    // We hold SOCKET.lock (acquirePluginLock), so a socket left here is a dead broker's.
    try {
      if (!lstatSync(p).isSocket()) throw new UnsafePathError(`${p} exists and is not a socket; refusing to replace it`);
      unlinkSync(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    this.bound = bindListener(p, 'stream', 64);
    this.listenFd = this.bound.fd;
    setSocketModeNoFollow(p, 0o600, 0);
    this.watcher = sock.poll(this.listenFd, 'readable', () => this.acceptAll());
    const live = Object.keys(this.mounts).length;
    log.info(`docker plugin: listening on ${p} (mode 0600, uid 0 only); ${this.defs.size} volume(s) defined in ${this.volumesDir}, ${live} mounted`);
  }

  close(): void {
    this.watcher?.stop();
    if (this.bound) {
      closeListener(this.bound);
      this.bound = undefined;
      this.listenFd = -1;
    }
    for (const s of this.sockets) s.destroy();
    this.http.close();
  }

  // ---- state -------------------------------------------------------------------------------

  private prepareDirs(): void {
    // Definitions: persistent, root's alone (they name host paths root will open).
    const state = openDirNoFollow(this.cfg.dockerStateDir, 0o700);
    try {
      checkRootDir(state, this.cfg.dockerStateDir);
      sock.close(openSubdir(state, 'volumes', 0o700, this.volumesDir));
    } finally {
      sock.close(state);
    }
    // Mount points: under a 0700 directory, since a driver mount is allow_other (any uid that
    // could reach the path would use it by the image's permission bits).
    const run = openDirNoFollow(this.cfg.runtimeDir);
    try {
      const d = openSubdir(run, 'docker', 0o700, this.runDir);
      chmodSync(`/proc/self/fd/${d}`, 0o700);
      sock.close(d);
    } finally {
      sock.close(run);
    }
    // Made (0700) one component at a time without following links; root's and 0700 after.
    const m = openDirNoFollow(this.mntDir, 0o700);
    try {
      checkRootDir(m, this.mntDir);
      chmodSync(`/proc/self/fd/${m}`, 0o700);
    } finally {
      sock.close(m);
    }
  }

  private loadDefinitions(): void {
    const dir = openDirNoFollow(this.volumesDir);
    try {
      for (const f of readdirSync(`/proc/self/fd/${dir}`)) {
        if (!f.endsWith('.json')) continue;
        const name = f.slice(0, -5);
        try {
          const d = JSON.parse(readFileNoFollow(dir, f, MAX_PLUGIN_BODY) ?? 'null') as Definition | null;
          if (!d || d.name !== name || !NAME_RE.test(name) || typeof d.source !== 'string' || typeof d.type !== 'string' || typeof d.options !== 'string') throw new Error('not a volume definition of root\'s');
          this.defs.set(name, { name, source: d.source, type: d.type, options: d.options, created_at: Number(d.created_at) || 0 });
        } catch (e) {
          log.warn(`docker plugin: ${path.join(this.volumesDir, f)} ignored: ${oneLine((e as Error).message, 200)}`);
        }
      }
    } finally {
      sock.close(dir);
    }
  }

  /** Live volumes a previous broker mounted: kept when their instance was re-adopted. */
  private loadMounts(): void {
    let saved: Record<string, MountState> = {};
    try {
      saved = JSON.parse(readFileNoFollow(this.runDir, 'mounts.json') ?? '{}') as Record<string, MountState>;
    } catch {
      log.warn(`docker plugin: ${this.runDir}/mounts.json is not JSON; no live volume re-adopted`);
    }
    for (const [name, m] of Object.entries(saved)) {
      if (!this.defs.has(name) || !Number.isInteger(m?.instance) || !Array.isArray(m.ids)) continue;
      this.mounts[name] = { instance: m.instance, ids: m.ids.filter((i) => typeof i === 'string') };
      if (this.live(name)) log.info(`docker plugin: volume ${name} re-adopted (instance ${m.instance}, ${m.ids.length} container(s))`);
    }
    this.saveMounts();
  }

  /** The volume's mount if its instance still runs on its mount point (else forgotten). */
  private live(name: string): MountState | undefined {
    const m = this.mounts[name];
    if (!m) return undefined;
    const inst = this.broker.instance(m.instance);
    if (inst && inst.status.state !== 'exited' && inst.rec.target_path === this.mountpoint(name)) return m;
    delete this.mounts[name];
    this.saveMounts();
    return undefined;
  }

  private saveMounts(): void {
    writeFileNoFollow(this.runDir, 'mounts.json', JSON.stringify(this.mounts) + '\n');
  }

  // ---- connections -------------------------------------------------------------------------

  private acceptAll(): void {
    for (;;) {
      let peer: sock.Peer | null;
      try {
        peer = sock.accept(this.listenFd, true);
      } catch (e) {
        log.limited('docker-accept', `docker plugin: accept: ${(e as Error).message}`);
        return;
      }
      if (!peer) return;
      if (peer.pidfd >= 0) sock.close(peer.pidfd);
      if (this.sockets.size >= MAX_PLUGIN_CONNS) {
        log.limited('docker-conns', `docker plugin: ${this.sockets.size} connections open; one more closed`);
        sock.close(peer.fd);
        continue;
      }
      const s = new net.Socket({ fd: peer.fd, readable: true, writable: true });
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      s.on('error', () => s.destroy());
      // Mode 0600 keeps others out; this keeps out a process that passed it otherwise (a
      // non-root uid with CAP_DAC_OVERRIDE): the kernel's word on who connected.
      if (peer.uid !== 0) {
        log.limited(`docker-eperm ${peer.uid}`, `docker plugin: connection of uid ${peer.uid} (pid ${peer.pid}) refused: EPERM_PLUGIN`);
        s.resume();
        const body = JSON.stringify({ Err: `EPERM_PLUGIN: uid ${peer.uid} may not use the plugin socket; it answers uid 0 (dockerd) only` });
        s.end(`HTTP/1.1 403 Forbidden\r\nContent-Type: ${CONTENT_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
        setTimeout(() => s.destroy(), 1000).unref();
        continue;
      }
      // node:http enforces requestTimeout only on connections of a server that listen()ed
      // itself; these are handed over, so the deadline is ours: a request must have fully
      // arrived REQUEST_MS after the connection opened or the previous answer went out.
      let timer: NodeJS.Timeout | undefined;
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          log.limited('docker-slow', `docker plugin: a request did not arrive within ${REQUEST_MS} ms; connection closed`);
          s.destroy();
        }, REQUEST_MS);
        timer.unref();
      };
      this.deadlines.set(s, { arm, disarm: () => clearTimeout(timer) });
      this.peerPids.set(s, peer.pid);
      s.on('close', () => clearTimeout(timer));
      arm();
      this.http.emit('connection', s);
    }
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const answer = (status: number, body: object, close = false) => {
      if (res.headersSent) return;
      const b = JSON.stringify(body);
      res.writeHead(status, { 'Content-Type': CONTENT_TYPE, 'Content-Length': Buffer.byteLength(b), ...(close ? { Connection: 'close' } : {}) });
      res.end(b);
    };
    const fail = (status: number, e: unknown, close = false) => {
      const err = e instanceof RequestError ? e : new RequestError('EINTERNAL', String((e as Error)?.message ?? e));
      if (err.code === 'EINTERNAL') log.warn(`docker plugin: ${req.url}: ${err.message}`);
      answer(status, { Err: `${err.code}: ${err.message}` }, close);
    };
    if (req.method !== 'POST') return fail(405, new RequestError('EPLUGIN_HTTP', `${oneLine(req.method ?? '', 16)} ${oneLine(req.url ?? '', 64)}: the plugin takes POST only`));
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > MAX_PLUGIN_BODY) {
      fail(413, new RequestError('EPLUGIN_HTTP', `body of ${declared} bytes; the limit is ${MAX_PLUGIN_BODY}`), true);
      req.destroy();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (c: Buffer) => {
      if (over) return;
      size += c.length;
      if (size > MAX_PLUGIN_BODY) {
        over = true;
        fail(413, new RequestError('EPLUGIN_HTTP', `body of more than ${MAX_PLUGIN_BODY} bytes`), true);
        // The answer first, then the connection: what is still coming is not read.
        res.on('finish', () => req.destroy());
        return;
      }
      chunks.push(c);
    });
    const deadline = this.deadlines.get(req.socket);
    res.on('finish', () => deadline?.arm());
    req.on('end', () => {
      if (over) return;
      deadline?.disarm();
      let body: Record<string, unknown>;
      try {
        const text = Buffer.concat(chunks).toString('utf8').trim();
        const v: unknown = text === '' || text === 'null' ? {} : JSON.parse(text);
        if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error();
        body = v as Record<string, unknown>;
      } catch {
        return fail(400, new RequestError('EPROTO_JSON', 'the body is not a JSON object'));
      }
      const t0 = Date.now();
      this.dispatch(req.url ?? '', body, this.peerPids.get(req.socket) ?? 0).then(
        (r) => {
          log.debug(`docker plugin: ${req.url} answered in ${Date.now() - t0} ms`);
          answer(200, { Err: '', ...r });
        },
        (e) => {
          if (e instanceof RequestError) log.info(`docker plugin: ${oneLine(req.url ?? '', 64)} ${typeof body.Name === 'string' ? oneLine(body.Name, 130) + ' ' : ''}refused: ${e.code}: ${e.message}`);
          fail(e instanceof RequestError && e.code === 'EOP' ? 404 : 500, e);
        },
      );
    });
    req.on('error', () => req.destroy());
  }

  // ---- the protocol ------------------------------------------------------------------------

  private async dispatch(url: string, b: Record<string, unknown>, peerPid: number): Promise<object> {
    switch (url) {
      case '/Plugin.Activate':
        return { Implements: ['VolumeDriver'] };
      case '/VolumeDriver.Capabilities':
        return { Capabilities: { Scope: 'local' } };
      case '/VolumeDriver.Create':
        return this.serial(volumeName(b.Name), (n) => this.create(n, b.Opts));
      case '/VolumeDriver.Remove':
        return this.serial(volumeName(b.Name), (n) => this.remove(n));
      case '/VolumeDriver.Mount':
        return this.serial(volumeName(b.Name), (n) => this.mount(n, mountId(b.ID), peerPid));
      case '/VolumeDriver.Unmount':
        return this.serial(volumeName(b.Name), (n) => this.unmount(n, mountId(b.ID)));
      case '/VolumeDriver.Path': {
        const n = this.defined(volumeName(b.Name)).name;
        return { Mountpoint: this.live(n) ? this.mountpoint(n) : '' };
      }
      case '/VolumeDriver.Get':
        return { Volume: this.describe(this.defined(volumeName(b.Name))) };
      case '/VolumeDriver.List':
        return { Volumes: [...this.defs.values()].sort((x, y) => (x.name < y.name ? -1 : 1)).map((d) => ({ Name: d.name, Mountpoint: this.live(d.name) ? this.mountpoint(d.name) : '' })) };
      default:
        throw new RequestError('EOP', `unknown endpoint "${oneLine(url, 64)}"`);
    }
  }

  private serial<T>(name: string, fn: (name: string) => Promise<T> | T): Promise<T> {
    const prev = this.queues.get(name) ?? Promise.resolve();
    const next = prev.then(() => fn(name));
    const settled = next.catch(() => undefined);
    this.queues.set(name, settled);
    void settled.then(() => {
      if (this.queues.get(name) === settled) this.queues.delete(name);
    });
    return next;
  }

  private defined(name: string): Definition {
    const d = this.defs.get(name);
    if (!d) throw new RequestError('ENOENT_VOLUME', `no fuse-svc volume named ${name}`);
    return d;
  }

  private describe(d: Definition): object {
    const m = this.live(d.name);
    return {
      Name: d.name,
      Mountpoint: m ? this.mountpoint(d.name) : '',
      CreatedAt: new Date(d.created_at).toISOString(),
      Status: { source: d.source, type: d.type, options: d.options, mounted: !!m, containers: m?.ids.length ?? 0, instance: m?.instance ?? null },
    };
  }

  private create(name: string, opts: unknown): object {
    const o = opts ?? {};
    if (typeof o !== 'object' || Array.isArray(o)) throw new RequestError('EVOLUME_OPTION', 'Opts must be an object of -o KEY=VALUE options');
    let source: string | undefined;
    let type: string | undefined;
    const rest: string[] = [];
    for (const [k, v] of Object.entries(o as Record<string, unknown>)) {
      if (typeof v !== 'string' || !/^[a-z0-9_]{1,32}$/.test(k)) throw new RequestError('EVOLUME_OPTION', `option "${oneLine(k, 40)}" is malformed (expected -o key=value, key in a-z 0-9 _)`);
      if (k === 'source') source = v;
      else if (k === 'type') type = v;
      else rest.push(v === '' ? k : `${k}=${v}`);
    }
    if (source === undefined) throw new RequestError('EVOLUME_OPTION', 'missing -o source=/absolute/path/of/an/image/or/block/device');
    if (type === undefined) throw new RequestError('EVOLUME_OPTION', `missing -o type=TYPE (one of ${this.cfg.fstypes.join(', ')})`);
    const options = rest.join(',');
    const def: Definition = { name, source, type, options, created_at: Date.now() };
    // The same policy as a brokered mount, checked now so a bad volume fails at create...
    const readOnly = this.policy(def).readOnly;
    // ...and the source too (opened as it will be at mount time, then closed).
    dropCallerFds([openSource(source, readOnly)], 0);
    const old = this.defs.get(name);
    if (old) {
      if (old.source === source && old.type === type && old.options === options) return {};
      throw new RequestError('EEXIST_VOLUME', `volume ${name} is defined with source=${old.source} type=${old.type}${old.options ? ` ${old.options}` : ''}`);
    }
    writeFileNoFollow(this.volumesDir, `${name}.json`, JSON.stringify(def) + '\n', 0o600, true);
    this.defs.set(name, def);
    log.info(`docker plugin: volume ${name} created (${type} ${source}${options ? `, ${options}` : ''})`);
    return {};
  }

  /** parseMountOptions as the caller the driver is (root), for the definition's type. */
  private policy(d: Definition): ReturnType<typeof parseMountOptions> {
    if (!this.cfg.fstypes.includes(d.type)) throw new RequestError('EFSTYPE', `filesystem type "${oneLine(d.type, 40)}" is not allowed (allowed: ${this.cfg.fstypes.join(', ')})`);
    const server = this.broker.servers.get(d.type);
    if (!server) throw new RequestError('EFSTYPE', `no server definition serves "${oneLine(d.type, 40)}"`);
    return parseMountOptions(d.options, server, brokerCaller(-1), this.cfg);
  }

  private remove(name: string): object {
    if (!this.defs.has(name)) return {}; // already gone: Docker may retry a Remove
    const m = this.live(name);
    if (m) throw new RequestError('EBUSY_VOLUME', `volume ${name} is mounted for ${m.ids.length} container(s); remove them first`);
    const dir = openDirNoFollow(this.volumesDir);
    try {
      unlinkNoFollow(dir, `${name}.json`);
      syncDir(dir);
    } finally {
      sock.close(dir);
    }
    this.defs.delete(name);
    try {
      rmdirSync(this.mountpoint(name));
    } catch {
      /* never mounted, or already gone */
    }
    log.info(`docker plugin: volume ${name} removed`);
    return {};
  }

  private async mount(name: string, id: string, peerPid: number): Promise<object> {
    const d = this.defined(name);
    const m = this.live(name);
    if (m) {
      if (!m.ids.includes(id)) m.ids.push(id);
      this.saveMounts();
      return { Mountpoint: this.mountpoint(name) };
    }
    const { readOnly } = this.policy(d);
    const srcFd = openSource(d.source, readOnly);
    let tgtFd = -1;
    let pidfd = -1;
    let reply: { id?: unknown } = {};
    try {
      const mnt = openDirNoFollow(this.mntDir);
      try {
        tgtFd = openSubdir(mnt, name, 0o700, this.mountpoint(name));
      } finally {
        sock.close(mnt);
      }
      pidfd = sock.pidfdOpen(process.pid);
      // allow_other: container processes of any uid; default_permissions: by the image's bits.
      const options = ['default_permissions', d.options].filter(Boolean).join(',');
      reply = (await this.broker.mountFor(brokerCaller(pidfd), { op: 'mount', fstype: d.type, options, fds: ['source', 'target'], sourceName: d.source, targetName: this.mountpoint(name) }, [srcFd, tgtFd], { allowOther: true })) as { id?: unknown };
    } finally {
      if (pidfd >= 0) sock.close(pidfd);
      if (tgtFd >= 0) sock.close(tgtFd);
      dropCallerFds([srcFd], 0);
    }
    const instance = Number(reply.id);
    // dockerd binds whatever is at the path into the container: if the mount never reached
    // its namespace, the container would write into the bare directory under it, silently.
    const unseen = this.unseenBy(peerPid, name);
    if (unseen) {
      await this.broker.stopById(instance, 10000).catch(() => undefined);
      throw new RequestError('EVOLUME_UNSEEN', unseen);
    }
    this.mounts[name] = { instance, ids: [id] };
    this.saveMounts();
    log.info(`docker plugin: volume ${name} mounted at ${this.mountpoint(name)} (instance ${reply.id})`);
    return { Mountpoint: this.mountpoint(name) };
  }

  /**
   * Why dockerd (the connection's peer) would not see the new mount, if it would not. A peer we
   * can see: its own mount table must list the mount point as a FUSE mount. A peer in a pid
   * namespace we cannot see (the broker in a container): the mount dir's mount must at least
   * be shared, the one way a mount made here can reach the host (docs/deploy.md).
   */
  private unseenBy(peerPid: number, name: string): string | undefined {
    const mp = this.mountpoint(name);
    const mine = readMountinfo('/proc/self/mountinfo');
    if (peerPid > 0) {
      const theirs = readMountinfo(`/proc/${peerPid}/mountinfo`);
      if (theirs && !theirs.some((m) => m.point === mp && m.fstype.startsWith('fuse'))) {
        return `dockerd (pid ${peerPid}) does not see the mount at ${mp}: its mount namespace gets no propagation from the broker's (docs/deploy.md "Docker volume driver")`;
      }
      if (theirs) return undefined;
    }
    // The mount the mount point's parent lies on (the deepest mount point above it).
    const parent = mine
      ?.filter((m) => m.point !== mp && (this.mntDir === m.point || this.mntDir.startsWith(m.point === '/' ? '/' : m.point + '/')))
      .sort((a, b) => b.point.length - a.point.length)[0];
    if (parent && !parent.shared) return `${this.mntDir} lies on a private mount (${parent.point}): a mount made there never reaches dockerd's namespace; bind-mount it from the host with rshared propagation (docs/deploy.md "Docker volume driver")`;
    return undefined;
  }

  private async unmount(name: string, id: string): Promise<object> {
    this.defined(name);
    const m = this.live(name);
    if (!m) return {}; // its instance ended already (a server crash, a full stop)
    m.ids = m.ids.filter((i) => i !== id);
    if (m.ids.length) {
      this.saveMounts();
      return {};
    }
    // The last container is gone: the instance ends cleanly (detach, server flushes and exits).
    await this.broker.stopById(m.instance, 10000);
    delete this.mounts[name];
    this.saveMounts();
    log.info(`docker plugin: volume ${name} unmounted (instance ${m.instance} ended)`);
    return {};
  }
}

/** Mount points, types and whether each is shared (a "shared:N" optional field). */
function readMountinfo(file: string): { point: string; fstype: string; shared: boolean }[] | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  const unescape = (x: string) => x.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [pre, post] = line.split(' - ');
      const f = pre.split(' ');
      return { point: unescape(f[4] ?? ''), fstype: (post ?? '').split(' ')[0] ?? '', shared: f.slice(6).some((o) => o.startsWith('shared:')) };
    });
}

/** The caller a driver mount is made for: the broker itself (root, in its own namespace). */
function brokerCaller(pidfd: number): Caller {
  return { uid: 0, gid: 0, pid: process.pid, pidfd, groups: [0] };
}

function volumeName(v: unknown): string {
  if (typeof v !== 'string' || !NAME_RE.test(v)) throw new RequestError('EVOLUME_NAME', typeof v === 'string' ? `volume name "${oneLine(v, 64)}" is not allowed` : 'field "Name" must be a string');
  return v;
}

function mountId(v: unknown): string {
  if (typeof v !== 'string' || !MOUNT_ID_RE.test(v)) throw new RequestError('EPROTO_FIELD', 'field "ID" must be a string of 1-128 letters, digits, "_.:-"');
  return v;
}

const sourceError = (code: ErrorCode, msg: string) => new RequestError(code, msg);

/**
 * Opens a volume's source as root: an absolute path in normal form, each directory opened
 * with O_NOFOLLOW|O_DIRECTORY (a symbolic link anywhere is refused, so no one who can write a
 * directory on the way can point root elsewhere by swapping a component for a link), the final
 * component with O_NOFOLLOW|O_NONBLOCK|O_NOCTTY (a link or FIFO never opens as something
 * else), then it must be a regular file or a block device. Read-write unless `readOnly`.
 */
export function openSource(source: string, readOnly: boolean): number {
  if (typeof source !== 'string' || !path.isAbsolute(source) || source.length > 4096 || source.includes('\0') || path.normalize(source) !== source || source.endsWith('/')) {
    throw sourceError('EVOLUME_SOURCE', `source "${oneLine(String(source), 200)}" is not an absolute path in normal form (no ".", "..", "//" or trailing "/")`);
  }
  let dir: number;
  try {
    dir = openDirNoFollow(path.dirname(source));
  } catch (e) {
    if (e instanceof UnsafePathError) throw sourceError('EVOLUME_SOURCE', `source ${source}: ${e.message}`);
    throw sourceError('EVOLUME_SOURCE', `source ${source}: ${oneLine((e as Error).message, 200)}`);
  }
  let fd: number;
  try {
    fd = sock.openat(dir, path.basename(source), (readOnly ? sock.O_RDONLY : sock.O_RDWR) | sock.O_NOFOLLOW | sock.O_NONBLOCK | fsc.O_NOCTTY);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw sourceError('EVOLUME_SOURCE', `source ${source} is a symbolic link; give the path of the file itself`);
    if (code === 'EISDIR') throw sourceError('EVOLUME_SOURCE', `source ${source} is a directory, not an image or block device`);
    throw sourceError('EVOLUME_SOURCE', `source ${source}: ${oneLine((e as Error).message, 200)}`);
  } finally {
    sock.close(dir);
  }
  // statx(AT_STATX_DONT_SYNC) through fdInfo: an fstat would send GETATTR to a FUSE server.
  const type = sock.fdInfo(fd).type;
  if (type !== 'file' && type !== 'blk') {
    dropCallerFds([fd], 0);
    throw sourceError('EVOLUME_SOURCE', `source ${source} is ${type === 'dir' ? 'a directory' : 'neither a regular file nor a block device'}`);
  }
  return fd;
}
