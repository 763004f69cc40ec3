// One raw request on a fresh connection: bytes and descriptors exactly as given (for hostile
// input), the reply parsed, or 'closed' when the broker hung up without one.
import * as sock from '../../helper/native/socket.js';
import { ClientError, receivePacket } from '../../helper/client.js';

export type RawReply = { ok: boolean; code?: string; message?: string; id?: number };

export async function rawRequest(socket: string, data: Buffer | string, fds: number[] = [], timeoutMs = 10000): Promise<RawReply | 'closed'> {
  const fd = sock.connectSeqpacket(socket);
  try {
    sock.send(fd, typeof data === 'string' ? Buffer.from(data) : data, fds);
    let r: sock.Received;
    try {
      r = await receivePacket(fd, timeoutMs);
    } catch (e) {
      if (e instanceof ClientError) throw e;
      return { ok: false, code: `recv: ${(e as NodeJS.ErrnoException).code}` };
    }
    for (const x of r.fds) sock.close(x);
    return r.eof ? 'closed' : (JSON.parse(r.data.toString()) as RawReply);
  } finally {
    sock.close(fd);
  }
}
