// Fires many requests at once from one process (run as a caller's uid in its namespace):
//   mount SOCKET IMG:TARGET...   all mounts concurrently; prints [{ok,code,id}] as JSON
//   unmount SOCKET ID...         all unmounts concurrently; prints the same
import { BrokerClient, RequestError } from '../../helper/client.js';

const [mode, socket, ...rest] = process.argv.slice(2);
const c = new BrokerClient({ socket, timeoutMs: 60000 });
const results = await Promise.all(
  rest.map(async (a) => {
    try {
      if (mode === 'mount') {
        const [img, target] = a.split(':');
        const r = await c.mount(img!, target!, { options: 'rw' });
        return { ok: true, id: r.id };
      }
      await c.unmount({ id: Number(a) });
      return { ok: true, id: Number(a) };
    } catch (e) {
      return { ok: false, code: e instanceof RequestError ? (e as RequestError).code : `client: ${(e as Error).message}` };
    }
  }),
);
process.stdout.write(JSON.stringify(results));
