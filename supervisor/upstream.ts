// Upstream sockets (`--upstream-sockets`, docs/units.md): fuse-svcd listens on
// /run/filesystems/TYPE for every type it serves and plays the *server* side of libfuse's
// contained-service protocol itself, so upstream's helper (fuservicemount3, mount.fuse3) gets a
// sandboxed unmodified server (fuse2fs...) through the broker's own policy and launcher.
// This module owns the sockets and the conversation; identity is identity.ts, policy and
// instances are the broker's (Broker.mountForHelper).
import { constants as osc } from 'node:os';
import { lstatSync, readSync } from 'node:fs';
import path from 'node:path';
import * as sock from '../helper/native/socket.js';
import { setSocketModeNoFollow, type Broker } from './broker.js';
import type { Config } from './config.js';
import { dropCallerFds, statfsBounded } from './fdsafe.js';
import { helperIdentity } from './identity.js';
import { log } from './log.js';
import { RequestError, errorReply, oneLine } from './protocol.js';
import { checkSecureDir } from './rundir.js';
import { bindListener, closeListener, probeLive, unlinkIfSame, type BoundSocket } from './socket-path.js';
import { readFileNoFollow, writeFileNoFollow } from './safefile.js';
import {
  ARGV_MAX_BYTES,
  MAGIC,
  SERVICE_MAX_PACKET,
  decodeArgv,
  decodeFile,
  decodeHello,
  decodeReply,
  encodeBye,
  encodeDoit,
  encodeHelloReply,
  encodeMountpoint,
  encodeOpen,
  encodeString,
  encodeType,
  parseHelperArgs,
} from './service-protocol.js';

const TMPFS_MAGIC = 0x01021994;
const FUSE_MAJOR = 10;
const FUSE_MINOR = 229;
const MS_RDONLY = 1;
const MS_NOSUID = 2;
const MS_NODEV = 4;
const MS_NOEXEC = 8;
/** RUNDIR file naming the sockets this broker bound (dev:ino per path), so that only those are ever removed. */
const RECORD = 'upstream-sockets';

type Listener = BoundSocket & { type: string; watcher: sock.Watcher };

/** errno number -> "EPERM" (os.constants.errno reversed). */
function errnoName(e: number): string {
  for (const [k, v] of Object.entries(osc.errno)) if (v === e) return k;
  return `errno ${e}`;
}

export class UpstreamSockets {
  private readonly listeners: Listener[] = [];
  private readonly live = new Set<Conversation>();
  private closed = false;

  constructor(
    private readonly cfg: Config,
    private readonly broker: Broker,
    private readonly types: string[],
  ) {}

  /** Binds one socket per type; a path another listener holds is never taken over. */
  start(): void {
    const dir = this.cfg.upstreamSocketDir;
    checkSecureDir(dir, true);
    const dirFd = sock.openat(sock.AT_FDCWD, dir, sock.O_RDONLY | sock.O_DIRECTORY | sock.O_NOFOLLOW);
    try {
      // Two brokers starting at once: probe, unlink and bind are one step under this lock.
      lockWithin(dirFd, 5000, dir);
      const ours = this.readRecord();
      for (const type of this.types) {
        const l = this.bindOne(type, path.join(dir, type), ours);
        if (l) this.listeners.push(l);
      }
      this.writeRecord();
    } finally {
      sock.close(dirFd); // the lock goes with it
    }
  }

  private bindOne(type: string, p: string, ours: Map<string, string>): Listener | undefined {
    let st: ReturnType<typeof lstatSync> | undefined;
    try {
      st = lstatSync(p);
    } catch {
      st = undefined;
    }
    if (st) {
      if (!st.isSocket()) {
        log.warn(`upstream socket ${p}: exists and is not a socket; not serving ${type} there`);
        return undefined;
      }
      if (probeLive(p)) {
        log.warn(`upstream socket ${p}: a live listener holds it (systemd, another fuse-svcd?); not taken over, ${type} is not served there`);
        return undefined;
      }
      if (ours.get(p) !== `${st.dev}:${st.ino}`) {
        log.warn(`upstream socket ${p}: a stale socket this broker did not create; left alone (remove it by hand to serve ${type} there)`);
        return undefined;
      }
      try {
        // Ours, and nobody listens: the previous broker of this runtime dir was killed.
        unlinkIfSame(p, st.dev, st.ino);
      } catch (e) {
        log.warn(`upstream socket ${p}: cannot remove our stale socket: ${(e as Error).message}`);
        return undefined;
      }
    }
    let bound: BoundSocket;
    try {
      bound = bindListener(p, 'seqpacket', 128);
    } catch (e) {
      // EADDRINUSE: another broker bound it between our probe and bind (it holds no lock of ours).
      log.warn(`upstream socket ${p}: ${(e as Error).message}; not serving ${type} there`);
      return undefined;
    }
    setSocketModeNoFollow(p, this.cfg.upstreamSocketMode, undefined);
    const l: Listener = { type, ...bound, watcher: sock.poll(bound.fd, 'readable', () => this.acceptAll(l)) };
    log.info(`upstream socket: listening on ${p} for ${type} (libfuse contained-service protocol, mode ${this.cfg.upstreamSocketMode.toString(8).padStart(4, '0')})`);
    return l;
  }

  private readRecord(): Map<string, string> {
    const m = new Map<string, string>();
    const text = readFileNoFollow(this.cfg.runtimeDir, RECORD) ?? '';
    for (const line of text.split('\n')) {
      const i = line.indexOf(' ');
      if (i > 0) m.set(line.slice(i + 1), line.slice(0, i));
    }
    return m;
  }

  private writeRecord(): void {
    writeFileNoFollow(this.cfg.runtimeDir, RECORD, this.listeners.map((l) => `${l.dev}:${l.ino} ${l.path}\n`).join(''), 0o600);
  }

  /** Stops listening; removes only the socket files this broker bound (same inode). */
  close(): void {
    this.closed = true;
    for (const l of this.listeners) {
      l.watcher.stop();
      closeListener(l);
    }
    this.listeners.length = 0;
    try {
      this.writeRecord();
    } catch {
      /* the runtime dir went away */
    }
    for (const c of this.live) c.abort();
  }

  private acceptAll(l: Listener): void {
    for (;;) {
      let peer: sock.Peer | null;
      try {
        peer = sock.accept(l.fd, true);
      } catch (e) {
        log.limited('upstream-accept', `upstream socket ${l.path}: accept: ${(e as Error).message}`);
        return;
      }
      if (!peer) return;
      if (this.closed) {
        closePeer(peer);
        continue;
      }
      const c = new Conversation(this.cfg, this.broker, l.type, peer);
      this.live.add(c);
      void c.run().finally(() => this.live.delete(c));
    }
  }
}

function closePeer(peer: sock.Peer): void {
  sock.close(peer.fd);
  if (peer.pidfd >= 0) sock.close(peer.pidfd);
}

function lockWithin(fd: number, ms: number, what: string): void {
  const end = Date.now() + ms;
  while (!sock.flock(fd, true, true)) {
    if (Date.now() > end) throw new Error(`${what}: another broker holds its lock for more than ${ms} ms`);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
  }
}

/** One helper connection: the server side of the protocol, from HELLO to BYEE. */
class Conversation {
  private watcher?: sock.Watcher;
  private waiting?: { resolve: (r: sock.Received) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };
  private readonly fds: number[] = [];
  private uid = -1;
  private ended = false;

  constructor(
    private readonly cfg: Config,
    private readonly broker: Broker,
    private readonly type: string,
    private readonly peer: sock.Peer,
  ) {}

  abort(): void {
    this.waiting?.reject(new RequestError('ESHUTDOWN'));
  }

  async run(): Promise<void> {
    let releaseConn: (() => void) | undefined;
    let stage = 'connect';
    let mounted: { rollback: () => Promise<void> } | undefined;
    let id: number | undefined;
    try {
      // Who the caller is, from the kernel, before a byte is read (identity.ts).
      const who = helperIdentity(this.peer);
      this.uid = who.uid;
      releaseConn = this.broker.openConnection(who.uid);
      stage = 'HELLO';
      const hello = decodeHello(this.expectNoFds(await this.recv()));
      this.send(encodeHelloReply());
      stage = 'argv';
      const argvFd = await this.recvFile('argv');
      stage = 'fusedev';
      const fuseFd = await this.recvFile('fusedev');
      checkFuseDev(fuseFd);
      stage = 'argv';
      const args = parseHelperArgs(decodeArgv(await readArgv(argvFd, who.uid, this.cfg.requestTimeoutMs)));
      if (args.subtype !== this.type) throw new RequestError('EFSTYPE', `the helper asks for "${oneLine(args.subtype, 40)}" on the ${this.type} socket`);
      log.info(`upstream ${this.type}: uid ${who.uid} (${who.how}) asks for ${oneLine(args.source, 200)} on ${oneLine(args.mountpoint, 200)}${args.options ? ` -o ${oneLine(args.options, 200)}` : ''}${hello.flags ? ` (helper flags 0x${hello.flags.toString(16)} ignored)` : ''}`);
      stage = 'policy';
      const r = await this.broker.mountForHelper(
        { uid: who.uid, gid: who.gid, pid: this.peer.pid, pidfd: this.peer.pidfd, groups: [who.gid] },
        { fstype: this.type, options: args.options, sourceName: args.source, targetName: args.mountpoint },
        {
          openSource: async (readOnly) => {
            stage = 'OPEN';
            this.send(encodeOpen(readOnly ? sock.O_RDONLY : sock.O_RDWR, args.source));
            return this.recvFile(args.source, 'EBADFD_SOURCE');
          },
          mount: async (m) => {
            const opts = [m.defaultPermissions ? 'default_permissions' : '', m.maxRead ? `max_read=${m.maxRead}` : ''].filter(Boolean).join(',');
            const flags = MS_NOSUID | MS_NODEV | (m.readOnly ? MS_RDONLY : 0) | (m.noexec ? MS_NOEXEC : 0);
            for (const [what, pkt] of [
              ['TYPE', encodeType(0)],
              ['NAME', encodeString(MAGIC.NAME, m.fsname)],
              ['MNTP', encodeMountpoint(args.mountpoint)],
              ['OPTS', encodeString(MAGIC.OPTS, opts)],
              ['MTAB', encodeString(MAGIC.MTAB, m.readOnly ? 'ro' : 'rw')],
              ['DOIT', encodeDoit(flags)],
            ] as const) {
              stage = what;
              this.send(pkt);
              const e = decodeReply(this.expectNoFds(await this.recv()));
              if (e) {
                const code = what === 'MNTP' && (e === osc.errno.EPERM || e === osc.errno.EACCES) ? 'EPERM_TARGET' : 'EMOUNT_HELPER';
                throw new RequestError(code, `the helper answered ${what} with ${errnoName(e)}`);
              }
            }
            stage = 'start';
            return fuseFd;
          },
        },
      );
      mounted = r;
      id = r.reply.ok ? Number(r.reply.id) : undefined;
      stage = 'BYEE';
      try {
        this.send(encodeBye(0));
      } catch (e) {
        // The helper went away before it learned of the mount: undone, as for the broker socket.
        log.info(`upstream ${this.type}: uid ${who.uid}: the helper disconnected before BYEE (${(e as Error).message}); undoing instance ${id}`);
        await mounted.rollback();
      }
    } catch (e) {
      const rep = errorReply(e);
      const line = rep.ok ? '' : `${rep.code}: ${rep.message}`;
      log.info(`upstream ${this.type}: uid ${this.uid < 0 ? `? (SO_PEERCRED ${this.peer.uid})` : this.uid}: refused at ${stage}: ${line}`);
      // A helper that got as far as HELLO hears the end as BYEE(1) (it exits 1); one refused
      // before HELLO sees the connection close unanswered, as upstream's "no service" case.
      if (stage !== 'connect' && stage !== 'HELLO' && !this.ended) {
        try {
          this.send(encodeBye(1));
        } catch {
          /* gone */
        }
      }
    } finally {
      this.watcher?.stop();
      if (this.waiting) clearTimeout(this.waiting.timer);
      // Never close() a caller's descriptor here (fdsafe.ts): a source on the caller's own FUSE
      // mount could hold this thread in FLUSH.
      dropCallerFds(this.fds, this.uid < 0 ? this.peer.uid : this.uid, this.peer.pidfd);
      closePeer(this.peer);
      releaseConn?.();
    }
  }

  private send(b: Buffer): void {
    sock.send(this.peer.fd, b, []);
  }

  /** The next packet within requestTimeoutMs; its descriptors are ours to drop at the end. */
  private recv(): Promise<sock.Received> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        this.watcher?.stop();
        this.watcher = undefined;
        reject(new RequestError('EPROTO_SERVICE', `no packet within ${this.cfg.requestTimeoutMs} ms`));
      }, this.cfg.requestTimeoutMs);
      this.waiting = { resolve, reject, timer };
      const done = (f: () => void) => {
        clearTimeout(timer);
        this.waiting = undefined;
        this.watcher?.stop();
        this.watcher = undefined;
        f();
      };
      this.watcher = sock.poll(this.peer.fd, 'readable', () => {
        let r: sock.Received | null;
        try {
          // One byte over the limit shows an oversized packet as truncated.
          r = sock.recv(this.peer.fd, SERVICE_MAX_PACKET + 1, 2, this.uid);
        } catch (e) {
          done(() => reject(new RequestError('EPROTO_SERVICE', `recv: ${(e as Error).message}`)));
          return;
        }
        if (!r) return;
        this.fds.push(...r.fds);
        if (r.eof) {
          this.ended = true;
          done(() => reject(new RequestError('EPROTO_SERVICE', 'the helper closed the connection')));
        } else if (r.truncated || r.data.length > SERVICE_MAX_PACKET) done(() => reject(new RequestError('EPROTO_SERVICE', `a packet larger than ${SERVICE_MAX_PACKET} bytes, or with more than one descriptor`)));
        else done(() => resolve(r!));
      });
    });
  }

  private expectNoFds(r: sock.Received): Buffer {
    if (r.fds.length) throw new RequestError('EPROTO_SERVICE', `a ${JSON.stringify(r.data.toString('latin1', 0, 4))} packet carried descriptors`);
    return r.data;
  }

  /** A FILE packet named `name` with exactly one descriptor; an error FILE is refused as `code`. */
  private async recvFile(name: string, code: 'EPROTO_SERVICE' | 'EBADFD_SOURCE' = 'EPROTO_SERVICE'): Promise<number> {
    const r = await this.recv();
    const f = decodeFile(r.data);
    if (f.name !== name) throw new RequestError('EPROTO_SERVICE', `expected FILE ${JSON.stringify(oneLine(name, 64))}, got FILE ${JSON.stringify(oneLine(f.name, 64))}`);
    if (f.error) {
      if (r.fds.length) throw new RequestError('EPROTO_SERVICE', `FILE ${oneLine(name, 64)} carries both an error and a descriptor`);
      throw new RequestError(code, `the helper could not open ${oneLine(name, 200)}: ${errnoName(f.error)}`);
    }
    if (r.fds.length !== 1) throw new RequestError('EPROTO_SERVICE', `FILE ${oneLine(name, 64)} carries ${r.fds.length} descriptors, not one`);
    return r.fds[0];
  }
}

/** The fusedev descriptor must be /dev/fuse itself (char 10:229); fstat asks no FUSE server. */
function checkFuseDev(fd: number): void {
  let i: ReturnType<typeof sock.fdInfo>;
  try {
    i = sock.fdInfo(fd);
  } catch (e) {
    throw new RequestError('EBADFD_FUSE', `fusedev: ${(e as Error).message}`);
  }
  if (i.type !== 'chr' || i.rdevMajor !== FUSE_MAJOR || i.rdevMinor !== FUSE_MINOR) throw new RequestError('EBADFD_FUSE', `fusedev is a ${i.type} (${i.rdevMajor}:${i.rdevMinor}), not /dev/fuse (char 10:229)`);
  if (i.accmode !== 'rw') throw new RequestError('EBADFD_FUSE', 'fusedev is not open for reading and writing');
}

/**
 * The argv memfd's bytes. A helper could send any file instead, one on its own FUSE mount
 * whose read never returns: only a small regular file on tmpfs (where memfds live) is read,
 * and its filesystem is asked off the event loop with a deadline.
 */
async function readArgv(fd: number, uid: number, timeoutMs: number): Promise<Buffer> {
  let i: ReturnType<typeof sock.fdInfo>;
  try {
    i = sock.fdInfo(fd);
  } catch (e) {
    // The helper's descriptor, not our fault: a file on another uid's FUSE mount (EACCES), say.
    throw new RequestError('EBADFD_ARGV', `argv: ${(e as Error).message}`);
  }
  if (i.type !== 'file' || i.accmode === 'path' || i.accmode === 'w') throw new RequestError('EBADFD_ARGV', `argv is a ${i.type} (${i.accmode}), not a readable memfd`);
  if (i.size > ARGV_MAX_BYTES) throw new RequestError('EBADFD_ARGV', `argv is ${i.size} bytes (at most ${ARGV_MAX_BYTES})`);
  const fs = await statfsBounded(fd, uid, timeoutMs, 'EBADFD_ARGV', 'argv');
  if (fs.type >>> 0 !== TMPFS_MAGIC) throw new RequestError('EBADFD_ARGV', `argv lies on a filesystem of magic 0x${(fs.type >>> 0).toString(16)}, not a memfd (tmpfs)`);
  const b = Buffer.alloc(Number(i.size));
  let got = 0;
  while (got < b.length) {
    const n = readSync(fd, b, got, b.length - got, got);
    if (n <= 0) break;
    got += n;
  }
  return b.subarray(0, got);
}
