// One raw request on a fresh connection: bytes and descriptors exactly as given (for hostile
// input), the reply parsed, or 'closed' when the broker hung up without one.
import * as sock from '../../helper/native/socket.js';

export type RawReply = { ok: boolean; code?: string; message?: string; id?: number };

export async function rawRequest(socket: string, data: Buffer | string, fds: number[] = [], timeoutMs = 10000): Promise<RawReply | 'closed'> {
  const fd = sock.connectSeqpacket(socket);
  try {
    sock.send(fd, typeof data === 'string' ? Buffer.from(data) : data, fds);
    return await new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        w.stop();
        reject(new Error(`no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      const w = sock.poll(fd, 'readable', () => {
        let r: sock.Received | null;
        try {
          r = sock.recv(fd, 65536, 4);
        } catch (e) {
          clearTimeout(t);
          w.stop();
          resolve({ ok: false, code: `recv: ${(e as NodeJS.ErrnoException).code}` });
          return;
        }
        if (!r) return;
        clearTimeout(t);
        w.stop();
        for (const x of r.fds) sock.close(x);
        resolve(r.eof ? 'closed' : (JSON.parse(r.data.toString()) as RawReply));
      });
    });
  } finally {
    sock.close(fd);
  }
}
