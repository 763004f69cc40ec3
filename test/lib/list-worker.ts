// Makes ended mounts for the list tests (run as a caller's uid in its namespace):
//   cycles SOCKET IMAGE TARGET N   N times: mount IMAGE on TARGET, unmount it by id;
// prints the ids as JSON. One image and one mount point serve every cycle: what the list test
// needs is many ended instances with long names, not many images.
import { BrokerClient } from '../../helper/client.js';

const [mode, socket, image, target, count] = process.argv.slice(2);
if (mode !== 'cycles' || !socket || !image || !target || !count) {
  process.stderr.write('usage: list-worker cycles SOCKET IMAGE TARGET N\n');
  process.exit(64);
}
const c = new BrokerClient({ socket, timeoutMs: 30000 });
const ids: number[] = [];
for (let i = 0; i < Number(count); i++) {
  const m = await c.mount(image, target, { options: 'rw' });
  ids.push(m.id);
  await c.unmount({ id: m.id });
}
process.stdout.write(JSON.stringify(ids));
