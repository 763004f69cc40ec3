// Sends a descriptor of the caller's choosing as a mount's transport (run as a caller's uid in
// its namespace): `open SOCKET FILE TARGET` opens FILE read-write (a file on the caller's own
// FUSE mount, say) and asks for an sshfs mount with it; `fd SOCKET N TARGET` sends descriptor N,
// inherited open (a file on a FUSE server the caller has stopped, which can no longer be
// opened). Prints {"code":...} or the reply.
import { openSync } from 'node:fs';
import { BrokerClient, RequestError } from '../../helper/client.js';

const [mode, socket, file, target] = process.argv.slice(2);
if ((mode !== 'open' && mode !== 'fd') || !socket || !file || !target) {
  process.stderr.write('usage: transport-worker open SOCKET FILE TARGET | fd SOCKET N TARGET\n');
  process.exit(64);
}
const fd = mode === 'fd' ? Number(file) : openSync(file, 'r+');
try {
  const r = await new BrokerClient({ socket, timeoutMs: 30000 }).mountTransport(fd, ':', target);
  process.stdout.write(JSON.stringify(r));
} catch (e) {
  process.stdout.write(JSON.stringify({ code: e instanceof RequestError ? e.code : String(e), message: (e as Error).message }));
}
