// A small client library for the broker: one connection per request, descriptors by SCM_RIGHTS.
// For programs (the tests, the benchmark, plugins). The command-line client is the static C
// one, fuse-svc-request (helper/native/client.c); there is no second CLI.
import { closeSync, lstatSync, openSync } from 'node:fs';
import * as sock from './native/socket.js';
import { decodeReply, encodeRequest, RequestError } from '../supervisor/protocol.js';

export const DEFAULT_SOCKET = '/run/fuse-svc/broker.sock';

export type MountInfo = {
  id: number;
  owner_uid: number;
  fstype: string;
  options: string;
  source: string;
  target: string;
  uid: number;
  state: 'starting' | 'running' | 'stopping' | 'exited';
  started_at: number;
  server_pid: number | null;
  exit_code: number | null;
  exit_signal: number | null;
  reason: string | null;
};

export class ClientError extends Error {
  override name = 'ClientError';
}

export type ClientOptions = { socket?: string; timeoutMs?: number };

export class BrokerClient {
  readonly socket: string;
  readonly timeoutMs: number;
  constructor(o: ClientOptions = {}) {
    this.socket = o.socket ?? process.env.FUSE_SVC_SOCKET ?? DEFAULT_SOCKET;
    this.timeoutMs = o.timeoutMs ?? 60000;
  }

  /**
   * Sends one request with descriptors and resolves with the broker's reply (or throws
   * RequestError). With closeAfterSend, the descriptors are closed as soon as they are in
   * flight (an unmount's descriptor must not pin the mount while the broker detaches it).
   */
  async request(body: Record<string, unknown>, fds: number[] = [], o: { closeAfterSend?: boolean } = {}): Promise<Record<string, unknown>> {
    let fd: number;
    try {
      fd = sock.connectSeqpacket(this.socket);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const hint = err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? ' (is fuse-svcd running? set --socket or FUSE_SVC_SOCKET)' : '';
      throw new ClientError(`cannot connect to ${this.socket}: ${err.code ?? err.message}${hint}`);
    }
    try {
      sock.send(fd, encodeRequest(body), fds);
      if (o.closeAfterSend) for (const f of fds.splice(0)) closeSync(f);
      const packet = await receivePacket(fd, this.timeoutMs);
      for (const extra of packet.fds) sock.close(extra);
      if (packet.eof || packet.data.length === 0) throw new ClientError('the broker closed the connection without a reply');
      return decodeReply(packet.data);
    } finally {
      sock.close(fd);
    }
  }

  /** Opens source and target here, as the caller, and asks for the mount. */
  async mount(source: string, target: string, o: { fstype?: string; options?: string } = {}): Promise<{ id: number; uid: number; server_pid: number; mnt_id: string }> {
    const options = o.options ?? 'rw';
    // The last of ro/rw wins, as the broker reads them.
    const readOnly = options.split(',').filter((x) => x === 'ro' || x === 'rw').at(-1) === 'ro';
    const fds: number[] = [];
    try {
      fds.push(openFd(source, readOnly ? sock.O_RDONLY : sock.O_RDWR, 'source'));
      fds.push(openFd(target, sock.O_PATH | sock.O_DIRECTORY | sock.O_NOFOLLOW, 'target'));
      const r = await this.request({ op: 'mount', fstype: o.fstype ?? 'ext4', options, fds: ['source', 'target'], source_name: source, target_name: target }, fds);
      return r as never;
    } finally {
      for (const fd of fds) closeSync(fd);
    }
  }

  /**
   * A transport mount (sshfs): `transportFd` is one end of a connected AF_UNIX stream socket
   * (sock.socketpairStream()) whose other end the caller serves; it is sent, not closed here.
   * `source` is `PATH`, `:PATH` or `HOST:PATH`, the remote directory (splitRemoteSource).
   */
  async mountTransport(transportFd: number, source: string, target: string, o: { fstype?: string; options?: string } = {}): Promise<{ id: number; uid: number; server_pid: number; mnt_id: string }> {
    const fd = openFd(target, sock.O_PATH | sock.O_DIRECTORY | sock.O_NOFOLLOW, 'target');
    try {
      const r = await this.request({ op: 'mount', fstype: o.fstype ?? 'sshfs', options: o.options ?? 'rw', fds: ['transport', 'target'], source_name: source, target_name: target }, [transportFd, fd]);
      return r as never;
    } finally {
      closeSync(fd);
    }
  }

  async unmount(target: string | { id: number }, o: { timeoutMs?: number } = {}): Promise<{ id: number; exit_code: number | null; exit_signal: number | null }> {
    const extra = o.timeoutMs === undefined ? {} : { timeout_ms: o.timeoutMs };
    if (typeof target !== 'string') return (await this.request({ op: 'unmount', id: target.id, ...extra })) as never;
    const fds = [openFd(target, sock.O_PATH | sock.O_NOFOLLOW, 'target')];
    try {
      return (await this.request({ op: 'unmount', fds: ['target'], ...extra }, fds, { closeAfterSend: true })) as never;
    } finally {
      for (const fd of fds) closeSync(fd);
    }
  }

  /** Every mount the caller may see: follows the broker's pages (`next` -> `after`) to the end. */
  async list(): Promise<MountInfo[]> {
    const all: MountInfo[] = [];
    let after: number | undefined;
    for (;;) {
      // The first request names no cursor, so a broker from before paging answers it too.
      const r = await this.request(after === undefined ? { op: 'list' } : { op: 'list', after });
      if (!Array.isArray(r.mounts)) throw new RequestError('EPROTO_FIELD', 'the broker\'s list reply has no "mounts" array');
      all.push(...(r.mounts as MountInfo[]));
      const next = r.next;
      if (next === undefined || next === null) return all;
      // Ids only grow from page to page: anything else would loop forever.
      if (typeof next !== 'number' || !Number.isInteger(next) || next <= (after ?? 0) || r.mounts.length === 0) {
        throw new RequestError('EPROTO_FIELD', `the broker's list reply has a bad "next" (${JSON.stringify(next)})`);
      }
      after = next;
    }
  }
}

/**
 * Waits for one packet on a connected SEQPACKET socket, at most timeoutMs (a ClientError
 * then). Shared by the client and the tests that send raw requests.
 */
export function receivePacket(fd: number, timeoutMs: number): Promise<sock.Received> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      w.stop();
      reject(new ClientError(`no reply from the broker within ${timeoutMs} ms`));
    }, timeoutMs);
    const w = sock.poll(fd, 'readable', () => {
      let r: sock.Received | null;
      try {
        r = sock.recv(fd, 65536, 4);
      } catch (e) {
        clearTimeout(timer);
        w.stop();
        reject(e);
        return;
      }
      if (!r) return;
      clearTimeout(timer);
      w.stop();
      resolve(r);
    });
  });
}

function openFd(p: string, flags: number, role: string): number {
  try {
    return openSync(p, flags | sock.O_CLOEXEC);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    // O_NOFOLLOW|O_DIRECTORY on a symlink fails ELOOP or ENOTDIR: say which it really is.
    const isLink = (() => {
      try {
        return lstatSync(p).isSymbolicLink();
      } catch {
        return false;
      }
    })();
    const why = isLink && role === 'target' ? 'it is a symbolic link (never followed)' : err.code === 'ENOTDIR' ? 'not a directory' : err.code ?? err.message;
    throw new ClientError(`cannot open ${role} ${p}: ${why}`);
  }
}

export { RequestError };
