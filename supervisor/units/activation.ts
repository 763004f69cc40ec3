// Socket activation of systemd unit pairs without systemd: `fuse-svcd --units DIR` loads every
// NAME.socket + NAME@.service in DIR, listens on the sockets, and runs one sandboxed instance
// per connection (Accept=yes) through the launcher: the connection is the server's fd 3,
// LISTEN_FDS=1, LISTEN_PID=1 (the server is pid 1 of its pid namespace), LISTEN_FDNAMES=connection.
import { Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { chmodSync, closeSync, writeSync, chownSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import * as sock from '../../helper/native/socket.js';
import { renderSpec, type SpecRecord } from '../launch-spec.js';
import { withPrecompiledSeccomp } from '../seccomp-programs.js';
import { InstanceDir, processStartTime, signalLauncher, type UnitRecord } from '../instances.js';
import { log as defaultLog } from '../log.js';
import { oneLine } from '../protocol.js';
import { probeLive, unlinkIfSame } from '../socket-path.js';
import type { UidAllocator } from '../uids.js';
import { identifierOf, loadService, loadSocket, serviceSpec, type ServiceConfig, type SocketConfig } from './directives.js';
import { parseUnit, UnitError } from './parser.js';

export type UnitPair = {
  /** The prefix: `service_ll` for service_ll.socket + service_ll@.service. */
  name: string;
  socket: SocketConfig;
  service: ServiceConfig;
};

/** A sample instance name, used to check specifiers at load time. */
const SAMPLE_INSTANCE = '0-0-0';

/** Loads one NAME.socket and its NAME@.service; every error is a UnitError (FILE:LINE: message). */
export function loadUnitPair(socketFile: string): UnitPair {
  const base = path.basename(socketFile);
  if (!base.endsWith('.socket')) throw new UnitError(socketFile, 1, 'not a .socket unit');
  const name = base.slice(0, -'.socket'.length);
  if (!/^[A-Za-z0-9:_.\\-]+$/.test(name) || name.includes('@')) throw new UnitError(socketFile, 1, `invalid unit name ${JSON.stringify(base)} (template sockets are not supported)`);
  const serviceFile = path.join(path.dirname(socketFile), `${name}@.service`);
  const socket = loadSocket(parseUnit(socketFile, readText(socketFile)), base);
  if (!existsSync(serviceFile)) throw new UnitError(socketFile, 1, `Accept=yes needs the template ${name}@.service next to it (not found: ${serviceFile})`);
  const parsed = parseUnit(serviceFile, readText(serviceFile));
  const service = loadService(parsed, `${name}@${SAMPLE_INSTANCE}.service`);
  if (!service.execStart) throw new UnitError(serviceFile, parsed.sectionLines.get('Service') ?? 1, 'no ExecStart= in [Service] (Type=exec needs exactly one command)');
  for (const [key, db] of [['SocketUser', '/etc/passwd'], ['SocketGroup', '/etc/group']] as const) {
    const at = socket.set.get(key);
    const v = key === 'SocketUser' ? socket.socketUser : socket.socketGroup;
    if (at && v !== undefined) {
      try {
        idOf(v, db);
      } catch (e) {
        throw new UnitError(at.file, at.line, `${key}=: ${(e as Error).message}`);
      }
    }
  }
  return { name, socket, service };
}

function readText(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new UnitError(file, 0, `cannot read: ${(e as Error).message}`);
  }
}

/** Every NAME.socket in dir, with its service. The first bad unit aborts the load. */
export function loadUnits(dir: string): UnitPair[] {
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.socket')).sort();
  } catch (e) {
    throw new UnitError(dir, 0, `cannot read the unit directory: ${(e as Error).message}`);
  }
  if (names.length === 0) throw new UnitError(dir, 0, 'no *.socket units in the directory');
  const pairs = names.map((n) => loadUnitPair(path.join(dir, n)));
  const seen = new Map<string, string>();
  for (const p of pairs) {
    for (const l of p.socket.listen) {
      const other = seen.get(l.path);
      if (other) throw new UnitError(l.at.file, l.at.line, `${l.path} is already a listening socket of ${other}`);
      seen.set(l.path, p.socket.file);
    }
  }
  return pairs;
}

// ---------------------------------------------------------------------------------------------
// Running an instance through the launcher

export type InstanceEnd = { launcherExit: number | null; signal: string | null; exitCode?: number; exitSignal?: number; reason?: string };

export type SpawnedInstance = {
  launcherPid: number;
  ready: Promise<{ ok: true; serverPid: number } | { ok: false; code: string; message: string }>;
  ended: Promise<InstanceEnd>;
  kill: (sig?: NodeJS.Signals) => void;
};

/**
 * Spawns a detached launcher: readiness on fd 1, its log (and the server's stdout/stderr) on
 * fd 2 as a pipe that `onLine` receives line by line, the spec on fd 3, `fds` at 4, 5, ...
 * (Unlike the brokered mounts' log files: a unit's output is tagged with SyslogIdentifier= and
 * logged by fuse-svcd, as the journal would. If fuse-svcd exits, the output is lost; the
 * instance keeps running: the launcher ignores SIGPIPE.)
 */
export function spawnInstance(launcher: string, spec: SpecRecord[], fds: number[], readyTimeoutMs: number, onLine: (line: string) => void, stateFile?: string): SpawnedInstance {
  // spawnDetached, not child_process: a child of Node's holds copies of every descriptor the
  // broker has (callers' FUSE files among them) and closes them at exec, which may wait on a
  // stopped server while Node waits for the exec (supervisor/fdsafe.ts).
  // at most 64 KiB: fits the pipe, the write cannot block
  const text = renderSpec(withPrecompiledSeccomp(launcher, spec));
  const opened: number[] = [];
  let pid: number;
  let pidfd: number;
  let outRd: number;
  let errRd: number;
  try {
    const [specRd, specWr] = sock.pipe();
    opened.push(specRd, specWr);
    writeSync(specWr, text);
    const [oRd, oWr] = sock.pipe();
    const [eRd, eWr] = sock.pipe();
    opened.push(oWr, eWr);
    outRd = oRd;
    errRd = eRd;
    pid = sock.spawnDetached(launcher, [launcher, 'instance'], [-1, oWr, eWr, specRd, ...fds]);
    pidfd = sock.pidfdOpen(pid);
  } catch (e) {
    throw new Error(`cannot start the launcher ${launcher}: ${(e as Error).message}`);
  } finally {
    for (const fd of opened) closeSync(fd);
  }
  const child = {
    stdout: new Socket({ fd: outRd, readable: true, writable: false }),
    stderr: new Socket({ fd: errRd, readable: true, writable: false }),
    exitCode: null as number | null,
    signalCode: null as string | null,
  };
  let exitCb: ((code: number | null, signal: string | null) => void) | undefined;
  // Not onPidfdExit: it reaps, and the exit status is wanted here.
  const exitWatch = sock.poll(pidfd, 'readable', () => {
    exitWatch.stop();
    const r = sock.pidfdReap(pidfd);
    closeSync(pidfd);
    if (r && r.signal) child.signalCode = Object.entries(osConstants.signals).find(([, n]) => n === r.signal)?.[0] ?? `signal ${r.signal}`;
    else child.exitCode = r ? r.code : -1;
    exitCb?.(child.exitCode, child.signalCode);
  });
  let partial = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('error', () => {});
  child.stdout.on('error', () => {});
  child.stderr.on('data', (d: string) => {
    partial += d;
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      onLine(partial.slice(0, nl));
      partial = partial.slice(nl + 1);
    }
    if (partial.length > 16384) {
      onLine(partial);
      partial = '';
    }
  });
  const stderrDone = new Promise<void>((r) => child.stderr.once('close', () => r()));
  const ended = new Promise<InstanceEnd>((resolve) => {
    exitCb = (code, signal) => {
      void Promise.race([stderrDone, new Promise((r) => setTimeout(r, 500))]).then(() => {
        if (partial) onLine(partial);
        partial = '';
        const end: InstanceEnd = { launcherExit: code, signal };
        if (stateFile) {
          try {
            const kv = Object.fromEntries(readFileSync(stateFile, 'utf8').split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
            if (kv.exit_code !== undefined && kv.exit_code !== '') end.exitCode = Number(kv.exit_code);
            if (kv.exit_signal !== undefined && kv.exit_signal !== '') end.exitSignal = Number(kv.exit_signal);
            end.reason = kv.reason;
          } catch {
            /* no state written */
          }
        }
        resolve(end);
      });
    };
  });
  const ready = new Promise<{ ok: true; serverPid: number } | { ok: false; code: string; message: string }>((resolve) => {
    let buf = '';
    let done = false;
    const finish = (r: { ok: true; serverPid: number } | { ok: false; code: string; message: string }) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.stdout?.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => finish({ ok: false, code: 'ETIMEDOUT_SERVER', message: `no readiness line within ${readyTimeoutMs} ms` }), readyTimeoutMs);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const [kind, f1, f2] = buf.slice(0, nl).split('\t');
      if (kind === 'ready') finish({ ok: true, serverPid: Number(f1) });
      else finish({ ok: false, code: kind === 'error' ? f1 : 'EINTERNAL', message: oneLine(f2 ?? buf.slice(0, nl)) });
    });
    child.stdout.on('end', () => finish({ ok: false, code: 'EINTERNAL', message: 'the launcher exited without a readiness line' }));
  });
  return {
    launcherPid: pid,
    ready,
    ended,
    kill: (sig = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) signalLauncher(pidfd, osConstants.signals[sig as keyof typeof osConstants.signals] ?? 15);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The activator

export type ActivatorOptions = {
  dir: string;
  runtimeDir: string;
  /** Where fuse-svc-launcher lives. */
  nativeDir: string;
  /** The broker's allocator (one uid per live instance across mounts and units). */
  uids: UidAllocator;
  /** An unmasked procfs the sandboxes may need (inside Docker); optional. */
  procSource?: string;
  readyTimeoutMs?: number;
  log?: { info: (m: string) => void; warn: (m: string) => void };
};

export type UnitInstance = {
  id: number;
  unit: string;
  socket: string;
  peerUid: number;
  peerPid: number;
  uid: number;
  launcherPid: number;
  serverPid?: number;
  state: 'starting' | 'running' | 'exited';
  ended: Promise<InstanceEnd>;
  stop: () => void;
};

type Listener = { pair: UnitPair; path: string; fd: number; dev: number; ino: number; watcher?: sock.Watcher };

export class UnitActivator {
  readonly pairs: UnitPair[];
  private readonly listeners: Listener[] = [];
  readonly live = new Map<number, UnitInstance>();
  private readonly accepted = new Map<string, number>();
  /** Ids and records shared with the broker's instances (RUNDIR/instances). */
  private idir?: InstanceDir;
  private readonly notes = new Set<string>();
  private closed = false;
  private readonly launcher: string;
  private readonly emptyDir: string;
  private readonly log: { info: (m: string) => void; warn: (m: string) => void };
  /** Called for every instance start, refusal and end (tests, benchmarks). */
  onEvent?: (kind: 'started' | 'refused' | 'ended' | 'failed', detail: { unit: string; peerUid: number; instance?: UnitInstance; message?: string }) => void;

  constructor(readonly opts: ActivatorOptions) {
    this.pairs = loadUnits(opts.dir);
    this.launcher = path.join(opts.nativeDir, 'fuse-svc-launcher');
    this.emptyDir = path.join(opts.runtimeDir, 'empty');
    this.log = opts.log ?? defaultLog;
  }

  start(): void {
    this.idir = new InstanceDir(this.opts.runtimeDir);
    mkdirSync(this.emptyDir, { recursive: true, mode: 0o555 });
    for (const pair of this.pairs) {
      for (const l of pair.socket.listen) this.listen(pair, l.path, l.kind);
    }
  }

  private listen(pair: UnitPair, p: string, kind: 'seqpacket' | 'stream'): void {
    const s = pair.socket;
    mkdirSync(path.dirname(p), { recursive: true, mode: s.directoryMode });
    if (existsSync(p)) {
      if (!lstatSync(p).isSocket()) throw new Error(`${s.file}: ${p} exists and is not a socket; refusing to replace it`);
      // /run/filesystems/NAME is a global path: systemd or another broker may be serving it.
      if (probeLive(p, kind)) throw new Error(`${s.file}: ${p}: a live listener holds this socket (systemd, another fuse-svcd?); not taken over`);
      unlinkSync(p);
    }
    const fd = kind === 'stream' ? sock.listenStream(p, s.backlog) : sock.listenSeqpacket(p, s.backlog);
    const bound = lstatSync(p);
    const l: Listener = { pair, path: p, fd, dev: bound.dev, ino: bound.ino };
    this.listeners.push(l);
    if (s.socketUser !== undefined || s.socketGroup !== undefined) {
      const st = statSync(p);
      chownSync(p, s.socketUser !== undefined ? idOf(s.socketUser, '/etc/passwd') : st.uid, s.socketGroup !== undefined ? idOf(s.socketGroup, '/etc/group') : st.gid);
    }
    chmodSync(p, s.socketMode);
    l.watcher = sock.poll(fd, 'readable', () => this.acceptAll(l));
    this.log.info(`${pair.name}.socket: listening on ${p} (${kind}, mode ${s.socketMode.toString(8).padStart(4, '0')}, MaxConnections=${s.maxConnections}, MaxConnectionsPerSource=${s.maxConnectionsPerSource ?? s.maxConnections}) for ${pair.name}@.service`);
  }

  /** Stops listening (RemoveOnStop= unlinks the socket file). Live instances keep running. */
  close(): void {
    this.closed = true;
    for (const l of this.listeners) {
      l.watcher?.stop();
      try {
        sock.close(l.fd);
      } catch {
        /* closed */
      }
      if (l.pair.socket.removeOnStop) {
        try {
          unlinkIfSame(l.path, l.dev, l.ino);
        } catch {
          /* gone, or someone else's socket now: left alone */
        }
      }
    }
    this.listeners.length = 0;
  }

  /** SIGTERM to every live instance; waits (at most timeoutMs) until they have ended. */
  async stopAll(timeoutMs = 15000): Promise<boolean> {
    const all = [...this.live.values()];
    for (const i of all) i.stop();
    const timeout = new Promise<false>((r) => setTimeout(() => r(false), timeoutMs).unref());
    const done = Promise.all(all.map((i) => i.ended)).then(() => true as const);
    return Promise.race([done, timeout]);
  }

  liveCount(socketName?: string, peerUid?: number): number {
    let n = 0;
    for (const i of this.live.values()) if ((socketName === undefined || i.socket === socketName) && (peerUid === undefined || i.peerUid === peerUid)) n++;
    return n;
  }

  private acceptAll(l: Listener): void {
    for (;;) {
      let peer: sock.Peer | null;
      try {
        peer = sock.accept(l.fd, false);
      } catch (e) {
        this.log.warn(`${l.pair.name}.socket: accept: ${(e as Error).message}`);
        return;
      }
      if (!peer) return;
      if (peer.pidfd >= 0) safeClose(peer.pidfd);
      this.onConnection(l, peer);
    }
  }

  private refuse(l: Listener, peer: sock.Peer, why: string): void {
    safeClose(peer.fd);
    const msg = `${l.pair.name}.socket: refusing connection from uid ${peer.uid} (pid ${peer.pid}): ${why}`;
    this.log.info(msg);
    this.onEvent?.('refused', { unit: l.pair.name, peerUid: peer.uid, message: msg });
  }

  private onConnection(l: Listener, peer: sock.Peer): void {
    const s = l.pair.socket;
    const socketName = `${l.pair.name}.socket`;
    if (this.closed) return this.refuse(l, peer, 'fuse-svcd is stopping');
    const total = this.liveCount(socketName);
    if (total >= s.maxConnections) return this.refuse(l, peer, `too many connections (${total} live, MaxConnections=${s.maxConnections})`);
    const perSource = s.maxConnectionsPerSource ?? s.maxConnections;
    const mine = this.liveCount(socketName, peer.uid);
    if (mine >= perSource) return this.refuse(l, peer, `too many connections from uid ${peer.uid} (${mine} live, MaxConnectionsPerSource=${perSource})`);
    const nr = this.accepted.get(socketName) ?? 0;
    this.accepted.set(socketName, nr + 1);
    const unitName = `${l.pair.name}@${nr}-${peer.pid}-${peer.uid}.service`;
    void this.startInstance(l, peer, unitName, socketName, 0);
  }

  private async startInstance(l: Listener, peer: sock.Peer, unitName: string, socketName: string, attempt: number): Promise<void> {
    const svc = l.pair.service;
    const uid = this.opts.uids.pick();
    if (uid === undefined) return this.refuse(l, peer, `no free dynamic uid in ${this.opts.uids.first}-${this.opts.uids.last}`);
    // From the broker's id sequence (the same directory), never reused across restarts.
    const idir = this.idir ?? (this.idir = new InstanceDir(this.opts.runtimeDir));
    const id = idir.newId();
    const ident = identifierOf(svc, unitName);
    const stateFile = idir.file(id, 'state');
    let spec: SpecRecord[];
    try {
      spec = serviceSpec(svc, { id, runtimeDir: this.opts.runtimeDir, uid, unitName, connFd: 4, emptyDir: this.emptyDir, procSource: this.opts.procSource });
    } catch (e) {
      this.opts.uids.release(uid);
      return this.refuse(l, peer, `cannot build the sandbox: ${(e as Error).message}`);
    }
    const discard = svc.standardOutput === 'null' && svc.standardError === 'null';
    let pidForLog = 0;
    // Written before the spawn and again with the pid: `fuse-svcd stop` ends unit instances
    // from these records (a broker killed in between leaves the pid in the launcher's state).
    const urec: UnitRecord = { id, unit: unitName, peer_uid: peer.uid, uid, started_at: Date.now() };
    idir.writeUnit(urec);
    const inst: UnitInstance = { id, unit: unitName, socket: socketName, peerUid: peer.uid, peerPid: peer.pid, uid, launcherPid: 0, state: 'starting', ended: Promise.resolve({ launcherExit: null, signal: null }), stop: () => {} };
    const sp = spawnInstance(this.launcher, spec, [peer.fd], (this.opts.readyTimeoutMs ?? 15000), (line) => {
      if (discard || line === '') return;
      // The launcher repeats the same setup notes for every instance (e.g. syscall names this
      // libseccomp does not know): each distinct one is logged once.
      const note = /^fuse-svc-launcher\[\d+\]: (seccomp: .*|oom_score_adj .*|rlimit .*)$/.exec(line)?.[1];
      if (note) {
        if (this.notes.has(note)) return;
        this.notes.add(note);
      }
      this.log.info(`${ident}[${pidForLog || sp.launcherPid}]: ${line}`);
    }, stateFile);
    inst.launcherPid = sp.launcherPid;
    urec.launcher_pid = sp.launcherPid;
    urec.launcher_start = processStartTime(sp.launcherPid);
    idir.writeUnit(urec);
    inst.ended = sp.ended;
    inst.stop = () => sp.kill('SIGTERM');
    this.live.set(id, inst);
    const r = await sp.ready;
    if (!r.ok) {
      sp.kill('SIGKILL');
      await sp.ended;
      this.live.delete(id);
      this.opts.uids.release(uid);
      idir.remove(id);
      if (r.code === 'EUID_BUSY' && attempt < 5) return this.startInstance(l, peer, unitName, socketName, attempt + 1);
      safeClose(peer.fd);
      const msg = `${unitName}: start failed: ${r.code}: ${r.message}`;
      this.log.warn(msg);
      this.onEvent?.('failed', { unit: l.pair.name, peerUid: peer.uid, message: msg });
      return;
    }
    // The launcher has the connection now; ours must go, or the peer never sees EOF.
    safeClose(peer.fd);
    pidForLog = r.serverPid;
    inst.serverPid = r.serverPid;
    inst.state = 'running';
    this.log.info(`${unitName}: started for uid ${peer.uid} (pid ${peer.pid}); sandbox uid ${uid}, server pid ${r.serverPid}`);
    this.onEvent?.('started', { unit: l.pair.name, peerUid: peer.uid, instance: inst });
    void sp.ended.then((end) => {
      inst.state = 'exited';
      this.live.delete(id);
      this.opts.uids.release(uid);
      idir.remove(id);
      const how = end.exitSignal ? `killed by signal ${end.exitSignal}` : end.exitCode !== undefined ? `exit status ${end.exitCode}` : `launcher exit ${end.launcherExit ?? end.signal}`;
      this.log.info(`${unitName}: ended (${end.reason ?? 'server exited'}, ${how}); sandbox uid ${uid} released`);
      this.onEvent?.('ended', { unit: l.pair.name, peerUid: peer.uid, instance: inst });
    });
  }
}

function idOf(nameOrId: string, db: string): number {
  if (/^\d+$/.test(nameOrId)) return Number(nameOrId);
  for (const line of readFileSync(db, 'utf8').split('\n')) {
    const f = line.split(':');
    if (f[0] === nameOrId) return Number(f[2]);
  }
  throw new Error(`unknown ${db === '/etc/passwd' ? 'user' : 'group'} ${JSON.stringify(nameOrId)}`);
}

function safeClose(fd: number): void {
  try {
    sock.close(fd);
  } catch {
    /* already closed */
  }
}
