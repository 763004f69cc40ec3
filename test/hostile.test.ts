// Hostile input: every bad request gets a stable code and one line, the broker keeps serving,
// and nothing leaks (broker fds, mounts, processes).
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import * as sock from '../helper/native/socket.js';
import { ERRORS } from '../supervisor/protocol.js';
import { rawRequest } from './lib/raw.js';
import { ROOT, clientArgs, fdCount, instanceProcesses, makeDir, makeImage, sleep, waitFor, type Broker, type Caller, openEnv, closeEnv } from './lib/harness.js';

const s = suite('hostile requests');
let broker: Broker;
let caller: Caller;
let dir: string;
let img: string;
let fdsBefore: number;

s.before(async () => {
  ({ dir, broker, caller } = await openEnv({ config: { request_timeout_ms: 500 } }));
  img = await makeImage(dir, 'disk.img', 16);
  // One good round trip first, so lazily opened fds (libuv, caches) are counted in the baseline.
  const mnt = makeDir(path.join(dir, 'warm'));
  const m = await caller.run(clientArgs(broker.socket, 'mount', img, mnt));
  assert.is(m.exitCode, 0, m.stderr);
  assert.is((await caller.run(clientArgs(broker.socket, 'unmount', mnt))).exitCode, 0);
  fdsBefore = fdCount(broker.proc.pid!);
});

s.after(async () => {
  await closeEnv({ dir, broker, caller });
});

/** Sends raw bytes and descriptors; resolves with the parsed reply, or 'closed'. */
const raw = (data: Buffer | string, fds: number[] = []) => rawRequest(broker.socket, data, fds);

async function expectCode(what: string, data: Buffer | string, fds: number[], code: keyof typeof ERRORS): Promise<void> {
  const r = await raw(data, fds);
  assert.ok(r !== 'closed', `${what}: got no reply`);
  const rep = r as { ok: boolean; code?: string; message?: string };
  assert.is(rep.ok, false, `${what}: refused`);
  assert.is(rep.code, code, `${what}: ${rep.code}: ${rep.message}`);
  assert.type(rep.message, 'string');
  assert.not.match(rep.message!, /\n/, 'one line');
}

const mount = (extra: Record<string, unknown> = {}) => JSON.stringify({ v: 1, op: 'mount', fstype: 'ext4', options: 'ro', fds: ['source', 'target'], ...extra });

s('malformed messages: garbage, oversized, truncated JSON, wrong version, unknown op and fields', async () => {
  await expectCode('garbage', Buffer.from([0xff, 0xfe, 0x00, 0x01, 0x02]), [], 'EPROTO_JSON');
  await expectCode('not an object', '[1,2,3]', [], 'EPROTO_JSON');
  await expectCode('oversized', JSON.stringify({ v: 1, op: 'list', pad: 'x'.repeat(20000) }), [], 'EPROTO_SIZE');
  await expectCode('truncated JSON', mount().slice(0, 30), [], 'EPROTO_JSON');
  await expectCode('version 2', JSON.stringify({ v: 2, op: 'list' }), [], 'EPROTO_VERSION');
  await expectCode('unknown op', JSON.stringify({ v: 1, op: 'format' }), [], 'EOP');
  await expectCode('unknown field', JSON.stringify({ v: 1, op: 'list', uid: 0 }), [], 'EPROTO_FIELD');
  await expectCode('wrong type', JSON.stringify({ v: 1, op: 'list', fds: 'source' }), [], 'EPROTO_FIELD');
  await expectCode('wrong field type', JSON.stringify({ v: 1, op: 'unmount', id: '7' }), [], 'EPROTO_FIELD');
  await expectCode('control characters', mount({ options: 'ro\nsuid' }), [], 'EPROTO_FIELD');
  assert.is(await raw(Buffer.alloc(0)), 'closed', 'an empty packet is end of stream');
});

s('descriptors: missing, extra, too many, and of the wrong kind', async () => {
  const src = openSync(img, 'r');
  const tgt = openSync(dir, sock.O_PATH | sock.O_DIRECTORY);
  const [p0, p1] = pipeFds();
  const dfd = openSync(dir, 'r');
  const pathFd = openSync(img, sock.O_PATH);
  const sockFd = sock.connectSeqpacket(broker.socket);
  const fileTarget = openSync(img, sock.O_PATH);
  const link = path.join(dir, 'link');
  symlinkSync(dir, link);
  const linkFd = openSync(link, sock.O_PATH | sock.O_NOFOLLOW);
  try {
    await expectCode('missing', mount(), [], 'EPROTO_FDS');
    await expectCode('one missing', mount(), [src], 'EPROTO_FDS');
    await expectCode('extra', mount(), [src, tgt, p0], 'EPROTO_FDS');
    await expectCode('five descriptors', mount(), [src, tgt, p0, p1, dfd], 'EPROTO_SIZE');
    await expectCode('role twice', mount({ fds: ['source', 'source'] }), [src, src], 'EPROTO_FDS');
    await expectCode('unknown role', mount({ fds: ['source', 'target', 'extra'] }), [src, tgt, p0], 'EPROTO_FDS');
    await expectCode('pipe as source', mount(), [p0, tgt], 'EBADFD_SOURCE');
    await expectCode('socket as source', mount(), [sockFd, tgt], 'EBADFD_SOURCE');
    await expectCode('directory as source', mount(), [dfd, tgt], 'EBADFD_SOURCE');
    await expectCode('O_PATH source', mount(), [pathFd, tgt], 'EBADFD_SOURCE');
    await expectCode('rw on a read-only source', mount({ options: 'rw' }), [src, tgt], 'EROFS_SOURCE');
    await expectCode('file as target', mount(), [src, fileTarget], 'EBADFD_TARGET');
    await expectCode('symlink as target', mount(), [src, linkFd], 'EBADFD_TARGET');
    await expectCode('fs type', mount({ fstype: 'xfs' }), [src, tgt], 'EFSTYPE');
    for (const o of ['suid', 'dev', 'fd=3', 'user_id=0', 'allow_other', 'blkdev', 'nonsense', 'a=b=c', 'max_read=1']) {
      await expectCode(`option ${o}`, mount({ options: `ro,${o}` }), [src, tgt], 'EOPTION');
    }
    await expectCode('unmount of a non-mount', JSON.stringify({ v: 1, op: 'unmount', fds: ['target'] }), [tgt], 'ENOENT_MOUNT');
    await expectCode('unmount of unknown id', JSON.stringify({ v: 1, op: 'unmount', id: 999999 }), [], 'ENOENT_MOUNT');
  } finally {
    for (const fd of [src, tgt, p0, p1, dfd, pathFd, fileTarget, linkFd]) closeSync(fd);
    sock.close(sockFd);
  }
});

/** A pipe's two ends: a FIFO opened read-write on both sides does not block. */
function pipeFds(): [number, number] {
  const fifo = path.join(dir, `fifo-${Math.random().toString(36).slice(2)}`);
  if (spawnSync('mkfifo', [fifo], { stdio: 'ignore', timeout: 5000 }).status !== 0) throw new Error(`mkfifo ${fifo} failed`);
  return [openSync(fifo, 'r+'), openSync(fifo, 'r+')];
}

s('targets a uid-1000 caller may not use: not writable, sticky and not owned, on procfs', async () => {
  const rootOwned = makeDir(path.join(dir, 'root-owned'), 0, 0o755);
  const r1 = await caller.run(clientArgs(broker.socket, 'mount', '-o', 'ro', img, rootOwned));
  assert.is(r1.exitCode, 2);
  assert.match(r1.stderr, /EPERM_TARGET/);
  // fusermount's rule is on the mount point itself: a sticky directory (like /tmp) that the
  // caller does not own (a writable directory inside one is fine: test/adversary/boundary).
  const sticky = makeDir(path.join(dir, 'sticky'), 0, 0o1777);
  const r2 = await caller.run(clientArgs(broker.socket, 'mount', '-o', 'ro', img, sticky));
  assert.match(r2.stderr, /EPERM_TARGET: .*sticky/);
  const r3 = await caller.run(clientArgs(broker.socket, 'mount', '-o', 'ro', img, '/proc/1'));
  assert.match(r3.stderr, /EFSTYPE_TARGET: .*magic 0x9fa0/);
  const r4 = await caller.run(clientArgs(broker.socket, 'mount', '-o', 'ro', img, path.join(dir, 'link')));
  assert.is(r4.exitCode, 1, 'the client itself refuses to follow a symlink');
  assert.match(r4.stderr, /symbolic link/);
  assert.equal(caller.fuseMounts(), []);
});

s('a target swapped for a symlink after it was opened: the mount lands on the pinned inode', async () => {
  const play = makeDir(path.join(dir, 'play'));
  const a = makeDir(path.join(play, 'swap'));
  const moved = path.join(play, 'swap-moved');
  const victim = makeDir(path.join(dir, 'victim'));
  const script = `
    import { openSync, renameSync, symlinkSync } from 'node:fs';
    import * as sock from '${ROOT}/dist/helper/native/socket.js';
    import { BrokerClient } from '${ROOT}/dist/helper/client.js';
    const s = openSync('${img}', sock.O_RDONLY);
    const t = openSync('${a}', sock.O_PATH | sock.O_DIRECTORY | sock.O_NOFOLLOW);
    renameSync('${a}', '${moved}');
    symlinkSync('${victim}', '${a}');
    const r = await new BrokerClient({ socket: '${broker.socket}' }).request({ op: 'mount', fstype: 'ext4', options: 'ro', fds: ['source', 'target'] }, [s, t]);
    console.log(JSON.stringify(r));`;
  const r = await caller.run([process.execPath, '--input-type=module', '-e', script]);
  assert.is(r.exitCode, 0, r.stderr);
  const id = JSON.parse(r.stdout).id;
  const mounts = caller.fuseMounts();
  assert.ok(mounts.includes(moved), `mounted on the pinned directory: ${mounts.join(' ')}`);
  assert.not.ok(mounts.includes(victim), 'not on what the symlink points to');
  const u = await caller.run(clientArgs(broker.socket, 'unmount', '--id', String(id)));
  assert.is(u.exitCode, 0, u.stderr);
});

s('clients that disconnect: before sending, and after sending a mount (the mount is undone)', async () => {
  // Connects and sends nothing: closed after request_timeout_ms.
  const idle = sock.connectSeqpacket(broker.socket);
  await sleep(800);
  const r = sock.recv(idle, 100, 0);
  sock.close(idle);
  assert.ok(r === null || r.eof, 'idle connection closed by the broker');
  const mnt = makeDir(path.join(dir, 'gone'));
  // Sends a mount and closes the connection at once; `linger` keeps the process (and so its
  // pidfd and namespace) alive, so the mount is made and must then be undone. Without it the
  // caller is gone before its namespace is pinned and the launcher refuses (EATTACH).
  const send = (linger: boolean) => `
    import { openSync } from 'node:fs';
    import * as sock from '${ROOT}/dist/helper/native/socket.js';
    const fd = sock.connectSeqpacket('${broker.socket}');
    const s = openSync('${img}', sock.O_RDONLY);
    const t = openSync('${mnt}', sock.O_PATH | sock.O_DIRECTORY);
    sock.send(fd, Buffer.from(JSON.stringify({ v: 1, op: 'mount', fstype: 'ext4', options: 'ro', fds: ['source', 'target'] })), [s, t]);
    sock.close(fd);
    ${linger ? 'setTimeout(() => process.exit(0), 3000);' : 'process.exit(0);'}`;
  const before = broker.logs().split('caller disconnected').length;
  const c1 = await caller.run([process.execPath, '--input-type=module', '-e', send(true)]);
  assert.is(c1.exitCode, 0, c1.stderr);
  await waitFor('the abandoned mount to be undone', () => broker.logs().includes('undoing the mount') && instanceProcesses(broker.runtimeDir).length === 0, 20000);
  assert.equal(caller.fuseMounts(), []);
  const c2 = await caller.run([process.execPath, '--input-type=module', '-e', send(false)]);
  assert.is(c2.exitCode, 0, c2.stderr);
  await waitFor('the second disconnect to be seen', () => broker.logs().split('caller disconnected').length >= before + 2, 20000);
  await waitFor('no server left', () => instanceProcesses(broker.runtimeDir).length === 0, 10000);
  assert.equal(caller.fuseMounts(), []);
});

s('afterwards: the broker still serves, and holds no extra fds, mounts or processes', async () => {
  const mnt = makeDir(path.join(dir, 'after'));
  const m = await caller.run(clientArgs(broker.socket, 'mount', '-o', 'ro', img, mnt));
  assert.is(m.exitCode, 0, m.stderr);
  assert.is((await caller.run(clientArgs(broker.socket, 'unmount', mnt))).exitCode, 0);
  await waitFor(`broker fds back to ${fdsBefore}`, () => fdCount(broker.proc.pid!) === fdsBefore, 5000).catch(() => {
    assert.is(fdCount(broker.proc.pid!), fdsBefore, 'broker fd count');
  });
  assert.equal(caller.fuseMounts(), []);
  assert.equal(instanceProcesses(broker.runtimeDir), []);
});

s.run();
