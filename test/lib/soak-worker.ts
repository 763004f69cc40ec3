// The soak's load generator (test/soak.test.ts), run as root in a private mount namespace:
//   node soak-worker.js SOCKET DIR TOTAL CLIENTS
// CLIENTS concurrent loops share TOTAL requests: good mounts (rw and ro) with writes and reads
// on them, lists, unmounts (by path and by id), and every bad input of test/hostile.test.ts.
// Prints one JSON line: counts, mount latencies, wrong answers, mounts left in this namespace.
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import * as sock from '../../helper/native/socket.js';
import { BrokerClient } from '../../helper/client.js';
import { RequestError } from '../../supervisor/protocol.js';
import { rawRequest } from './raw.js';

const [socket, dir, totalArg, clientsArg] = process.argv.slice(2);
const TOTAL = Number(totalArg);
const CLIENTS = Number(clientsArg);
const client = new BrokerClient({ socket, timeoutMs: 30000 });

type Reply = { ok: boolean; code?: string; message?: string; id?: number };

const raw = (data: Buffer | string, fds: number[] = []): Promise<Reply | 'closed'> => rawRequest(socket, data, fds, 30000);

const mountBody = (extra: Record<string, unknown> = {}) => JSON.stringify({ v: 1, op: 'mount', fstype: 'ext4', options: 'ro', fds: ['source', 'target'], ...extra });

// Shared descriptors for the bad inputs (opened once; the broker gets its own copies).
const badDir = path.join(dir, 'bad');
mkdirSync(badDir, { recursive: true });
const img0 = path.join(dir, 'img0.img');
const fifo = path.join(badDir, 'fifo');
rmSync(fifo, { force: true });
spawnSync('mkfifo', [fifo]);
const link = path.join(badDir, 'link');
rmSync(link, { force: true });
symlinkSync(badDir, link);
const F = {
  src: openSync(img0, 'r'),
  tgt: openSync(badDir, sock.O_PATH | sock.O_DIRECTORY),
  p0: openSync(fifo, 'r+'),
  p1: openSync(fifo, 'r+'),
  dfd: openSync(badDir, 'r'),
  pathFd: openSync(img0, sock.O_PATH),
  fileTarget: openSync(img0, sock.O_PATH),
  linkFd: openSync(link, sock.O_PATH | sock.O_NOFOLLOW),
};

/** Every bad input of the hostile test: [name, send, expected code or 'closed']. */
const BAD: [string, () => Promise<Reply | 'closed'>, string][] = [
  ['garbage', () => raw(Buffer.from([0xff, 0xfe, 0, 1, 2])), 'EPROTO_JSON'],
  ['not an object', () => raw('[1,2,3]'), 'EPROTO_JSON'],
  ['oversized', () => raw(JSON.stringify({ v: 1, op: 'list', pad: 'x'.repeat(20000) })), 'EPROTO_SIZE'],
  ['truncated JSON', () => raw(mountBody().slice(0, 30)), 'EPROTO_JSON'],
  ['version 2', () => raw(JSON.stringify({ v: 2, op: 'list' })), 'EPROTO_VERSION'],
  ['unknown op', () => raw(JSON.stringify({ v: 1, op: 'format' })), 'EOP'],
  ['unknown field', () => raw(JSON.stringify({ v: 1, op: 'list', uid: 0 })), 'EPROTO_FIELD'],
  ['wrong type', () => raw(JSON.stringify({ v: 1, op: 'list', fds: 'source' })), 'EPROTO_FIELD'],
  ['wrong field type', () => raw(JSON.stringify({ v: 1, op: 'unmount', id: '7' })), 'EPROTO_FIELD'],
  ['control characters', () => raw(mountBody({ options: 'ro\nsuid' })), 'EPROTO_FIELD'],
  ['empty packet', () => raw(Buffer.alloc(0)), 'closed'],
  ['fds missing', () => raw(mountBody()), 'EPROTO_FDS'],
  ['one fd missing', () => raw(mountBody(), [F.src]), 'EPROTO_FDS'],
  ['extra fd', () => raw(mountBody(), [F.src, F.tgt, F.p0]), 'EPROTO_FDS'],
  ['five fds', () => raw(mountBody(), [F.src, F.tgt, F.p0, F.p1, F.dfd]), 'EPROTO_SIZE'],
  ['role twice', () => raw(mountBody({ fds: ['source', 'source'] }), [F.src, F.src]), 'EPROTO_FDS'],
  ['unknown role', () => raw(mountBody({ fds: ['source', 'target', 'extra'] }), [F.src, F.tgt, F.p0]), 'EPROTO_FDS'],
  ['pipe as source', () => raw(mountBody(), [F.p0, F.tgt]), 'EBADFD_SOURCE'],
  ['directory as source', () => raw(mountBody(), [F.dfd, F.tgt]), 'EBADFD_SOURCE'],
  ['O_PATH source', () => raw(mountBody(), [F.pathFd, F.tgt]), 'EBADFD_SOURCE'],
  ['rw on a read-only source', () => raw(mountBody({ options: 'rw' }), [F.src, F.tgt]), 'EROFS_SOURCE'],
  ['file as target', () => raw(mountBody(), [F.src, F.fileTarget]), 'EBADFD_TARGET'],
  ['symlink as target', () => raw(mountBody(), [F.src, F.linkFd]), 'EBADFD_TARGET'],
  ['fs type', () => raw(mountBody({ fstype: 'xfs' }), [F.src, F.tgt]), 'EFSTYPE'],
  ...['suid', 'dev', 'fd=3', 'user_id=0', 'allow_other', 'blkdev', 'nonsense', 'a=b=c', 'max_read=1'].map((o) => [`option ${o}`, () => raw(mountBody({ options: `ro,${o}` }), [F.src, F.tgt]), 'EOPTION'] as [string, () => Promise<Reply | 'closed'>, string]),
  ['unmount of a non-mount', () => raw(JSON.stringify({ v: 1, op: 'unmount', fds: ['target'] }), [F.tgt]), 'ENOENT_MOUNT'],
  ['unmount of an unknown id', () => raw(JSON.stringify({ v: 1, op: 'unmount', id: 999999 })), 'ENOENT_MOUNT'],
];

let issued = 0;
const take = () => (issued < TOTAL ? ++issued : 0);
const latencies: number[] = [];
const wrong: string[] = [];
const counts: Record<string, number> = { mount: 0, unmount: 0, list: 0, bad: 0, writes: 0 };
let badIndex = 0;

function fuseMountsHere(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => / - fuse(\.|blk| )/.test(l)).map((l) => l.split(' ')[4]);
}

async function bad(): Promise<void> {
  const [name, send, want] = BAD[badIndex++ % BAD.length];
  counts.bad++;
  const r = await send();
  const got = r === 'closed' ? 'closed' : r.ok ? 'ok' : r.code;
  if (got !== want) wrong.push(`${name}: got ${got} (${r === 'closed' ? '' : r.message}), want ${want}`);
}

async function runClient(i: number): Promise<void> {
  const img = path.join(dir, `img${i}.img`);
  const mnt = path.join(dir, `m${i}`);
  let step = 0;
  let mounted: number | undefined;
  const unmount = async (byId: boolean) => {
    counts.unmount++;
    try {
      await client.unmount(byId ? { id: mounted! } : mnt);
    } catch (e) {
      wrong.push(`unmount ${i}: ${(e as Error).message}`);
    }
    mounted = undefined;
  };
  for (;;) {
    const kind = step++ % 8;
    // A mount held open when the budget runs out is still unmounted (not counted).
    if (!take()) {
      if (mounted !== undefined) await unmount(false);
      return;
    }
    try {
      if (kind === 0 || kind === 4) {
        if (mounted !== undefined) await unmount(true);
        else {
          const t0 = process.hrtime.bigint();
          counts.mount++;
          const r = await client.mount(img, mnt, { options: kind === 0 ? 'rw' : 'ro' });
          latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
          mounted = r.id;
          const f = path.join(mnt, 'soak.txt');
          if (kind === 0) {
            writeFileSync(f, `client ${i} step ${step}\n`.repeat(100));
            counts.writes++;
          }
          readFileSync(f, 'utf8');
        }
      } else if (kind === 1 || kind === 5) {
        counts.list++;
        await client.list();
      } else if (kind === 3 || kind === 7) {
        if (mounted !== undefined) await unmount(kind === 7);
        else await bad();
      } else await bad();
    } catch (e) {
      wrong.push(`client ${i} step ${step}: ${e instanceof RequestError ? `${e.code}: ${e.message}` : (e as Error).message}`);
    }
  }
}

const t0 = Date.now();
await Promise.all(Array.from({ length: CLIENTS }, (_, i) => runClient(i)));
const elapsed = (Date.now() - t0) / 1000;
for (const fd of Object.values(F)) closeSync(fd);
latencies.sort((a, b) => a - b);
const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? 0;
process.stdout.write(JSON.stringify({ requests: issued, elapsed, rps: issued / elapsed, counts, p50: pct(50), p99: pct(99), max: latencies[latencies.length - 1] ?? 0, wrong, left: fuseMountsHere() }) + '\n');
