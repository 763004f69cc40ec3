// The "never blocked" attacker (issue 15), run as an unprivileged uid inside its own mount
// namespace: it mounts a squashfs image with its own `squashfuse -f` (through the setuid
// fusermount3, as any user can), opens a file and the mount's root on it, stops its server,
// and then sends the broker requests carrying those descriptors. Any syscall the broker made on
// them (close -> FLUSH, fstatfs -> STATFS, fstat -> GETATTR) would wait for the stopped server.
//
//   stuck-attacker SOCKET IMAGE MNT GOOD_IMAGE GOOD_TARGET
// Lines on stdin: `burst N` sends N requests at once (a third `list` with the file attached,
// a third `mount` with it as the source, a third `mount` with the stopped mount's root as the
// target) and prints one JSON line {answered, codes, maxMs}; `one K` sends one request of kind
// K (0 list, 1 source, 2 target, 3 list with a file of an overlay over the FUSE mount) and
// prints {code, ms}; `cont` resumes the server, unmounts and exits. Prints `ready SERVER_PID`
// once the server is stopped. With STUCK_ATTACKER_OVERLAY=DIR (root only: an overlay mount
// needs it) the FUSE mount is also the lower layer of an overlay mounted on DIR/o.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, constants, mkdirSync, openSync, readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import * as sock from '../../helper/native/socket.js';
import { receivePacket } from '../../helper/client.js';

const O_PATH = 0o10000000;
const [socket, image, mnt, goodImage, goodTarget] = process.argv.slice(2) as [string, string, string, string, string];

const server = spawn('squashfuse', ['-f', image, mnt], { stdio: 'ignore' });
const deadline = Date.now() + 10000;
while (!readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === mnt)) {
  if (Date.now() > deadline) {
    process.stderr.write('stuck-attacker: squashfuse did not mount\n');
    process.exit(2);
  }
  await new Promise((r) => setTimeout(r, 50));
}
const overlay = process.env.STUCK_ATTACKER_OVERLAY;
if (overlay) {
  // Upper and work dirs on the overlay dir's own filesystem; the FUSE mount is the lower layer.
  for (const d of ['u', 'w', 'o']) mkdirSync(`${overlay}/${d}`, { recursive: true });
  const r = spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${mnt},upperdir=${overlay}/u,workdir=${overlay}/w`, `${overlay}/o`], { encoding: 'utf8', timeout: 10000 });
  if (r.status !== 0) {
    process.stderr.write(`stuck-attacker: overlay over the FUSE mount: ${r.stderr}\n`);
    process.exit(2);
  }
}
// Opened through the overlay: the overlay's own descriptor holds the FUSE file open beneath.
const ovlFile = overlay ? openSync(`${overlay}/o/f`, constants.O_RDONLY) : -1;
const file = openSync(`${mnt}/f`, constants.O_RDONLY);
const root = openSync(mnt, O_PATH | constants.O_DIRECTORY | constants.O_NOFOLLOW);
const good = openSync(goodImage, constants.O_RDONLY);
const goodDir = openSync(goodTarget, O_PATH | constants.O_DIRECTORY | constants.O_NOFOLLOW);
process.kill(server.pid!, 'SIGSTOP');
process.stdout.write(`ready ${server.pid}\n`);

/** One request on its own connection; the reply's code (or OK / closed / a client error). */
async function request(kind: number): Promise<{ code: string; ms: number }> {
  const t0 = Date.now();
  let fd: number;
  try {
    fd = sock.connectSeqpacket(socket);
  } catch (e) {
    return { code: `connect: ${(e as NodeJS.ErrnoException).code}`, ms: Date.now() - t0 };
  }
  try {
    const mount = (fds: number[]) => {
      sock.send(fd, Buffer.from(JSON.stringify({ v: 1, op: 'mount', fstype: 'ext4', options: 'ro', fds: ['source', 'target'] })), fds);
    };
    if (kind === 0) sock.send(fd, Buffer.from(JSON.stringify({ v: 1, op: 'list', fds: [] })), [file]);
    else if (kind === 3) sock.send(fd, Buffer.from(JSON.stringify({ v: 1, op: 'list', fds: [] })), [ovlFile]);
    else if (kind === 1) mount([file, goodDir]);
    else mount([good, root]);
    const r = await receivePacket(fd, 30000);
    for (const x of r.fds) sock.close(x);
    if (r.eof) return { code: 'closed', ms: Date.now() - t0 };
    const reply = JSON.parse(r.data.toString()) as { ok: boolean; code?: string; id?: number };
    if (reply.ok && reply.id !== undefined) {
      // A mount that got through (the third kind may, if the target check passed): undo it.
      const u = sock.connectSeqpacket(socket);
      sock.send(u, Buffer.from(JSON.stringify({ v: 1, op: 'unmount', id: reply.id, fds: [] })), []);
      await receivePacket(u, 30000).catch(() => undefined);
      sock.close(u);
    }
    return { code: reply.ok ? 'OK' : reply.code ?? '?', ms: Date.now() - t0 };
  } catch (e) {
    return { code: `client: ${(e as Error).message}`, ms: Date.now() - t0 };
  } finally {
    sock.close(fd);
  }
}

for await (const line of createInterface({ input: process.stdin })) {
  const [cmd, n] = line.split(' ');
  if (cmd === 'burst') {
    let done = 0;
    const progress = process.env.STUCK_ATTACKER_DEBUG ? setInterval(() => process.stderr.write(`stuck-attacker: ${done}/${n} answered\n`), 1000) : undefined;
    const results = await Promise.all(Array.from({ length: Number(n) }, (_, i) => request(i % 3).finally(() => done++)));
    clearInterval(progress);
    const codes: Record<string, number> = {};
    results.forEach((r, i) => {
      const k = `${['list', 'source', 'target'][i % 3]}:${r.code}`;
      codes[k] = (codes[k] ?? 0) + 1;
    });
    const answered = results.filter((r) => !r.code.startsWith('client:') && !r.code.startsWith('connect:')).length;
    process.stdout.write(`${JSON.stringify({ answered, codes, maxMs: Math.max(...results.map((r) => r.ms)) })}\n`);
  } else if (cmd === 'one') {
    process.stdout.write(`${JSON.stringify(await request(Number(n)))}\n`);
  } else if (cmd === 'cont') {
    process.kill(server.pid!, 'SIGCONT');
    for (const fd of [file, root, good, goodDir, ...(ovlFile >= 0 ? [ovlFile] : [])]) closeSync(fd);
    if (overlay) spawnSync('umount', ['-l', `${overlay}/o`], { stdio: 'ignore', timeout: 10000 });
    spawn('fusermount3', ['-u', mnt], { stdio: 'ignore' }).once('exit', () => process.exit(0));
  }
}
