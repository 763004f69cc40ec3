// Adversary: the transport of a --via mount is hostile input. Anything but a connected AF_UNIX
// stream socket is refused with EBADFD_TRANSPORT before anything reads it (a pipe, a seqpacket
// or listening socket, a regular file, /dev/fuse, a file on the caller's own FUSE mount); the
// wrong kind for the server is ESOURCE_KIND (sshfs given an image, ext4 given a transport); a
// COMMAND that never speaks ends in the ready timeout with nothing left, its COMMAND included.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { copyFileSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import * as sock from '../../helper/native/socket.js';
import { rawRequest } from '../lib/raw.js';
import { ROOT, clientArgs, fdTable, fdsBackTo, makeDir, makeImage, newCaller, startBroker, tmpdir, waitFor, type Broker, type Caller } from '../lib/harness.js';
import { instanceTree } from '../lib/servers.js';

const WORKER = path.join(ROOT, 'dist', 'test', 'lib', 'transport-worker.js');
const s = suite('adversary: sshfs transports');
let dir: string;
let broker: Broker;
let caller: Caller;
let mnt: string;

s.before(async () => {
  dir = tmpdir();
  // The shipped definitions, sshfs with a short ready timeout (the never-speaking COMMAND).
  const servers = path.join(dir, 'server');
  mkdirSync(servers);
  for (const f of ['fuse2fs.json', 'fuse2fs.sandbox', 'sshfs.sandbox']) copyFileSync(path.join(ROOT, 'server', f), path.join(servers, f));
  const def = JSON.parse(readFileSync(path.join(ROOT, 'server', 'sshfs.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(path.join(servers, 'sshfs.json'), JSON.stringify({ ...def, readyTimeoutMs: 2000 }));
  broker = await startBroker({ config: { server_dir: servers } });
  caller = await newCaller();
  mnt = makeDir(path.join(dir, 'mnt'));
});
s.after(async () => {
  await broker?.stop();
  await caller?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A raw sshfs mount request carrying `transport` (root in the broker's namespace: the transport is checked first). */
async function sendTransport(transport: number): Promise<{ ok: boolean; code?: string; message?: string } | 'closed'> {
  const target = sock.openat(sock.AT_FDCWD, mnt, sock.O_PATH | sock.O_DIRECTORY | sock.O_NOFOLLOW);
  try {
    return await rawRequest(broker.socket, JSON.stringify({ v: 1, op: 'mount', fstype: 'sshfs', options: 'rw', fds: ['transport', 'target'], source_name: ':' }), [transport, target]);
  } finally {
    sock.close(target);
  }
}

s('a transport of the wrong kind: EBADFD_TRANSPORT, one line naming what it is', async () => {
  const cases: [string, () => number[], RegExp][] = [
    ['pipe', () => sock.pipe(), /is a pipe, not a connected AF_UNIX stream socket/],
    ['seqpacket socketpair', () => sock.socketpair(), /is a seqpacket socket, not SOCK_STREAM/],
    ['regular file', () => [openSync(path.join(dir, 'plain'), 'w+')], /is a regular file/],
    ['/dev/fuse', () => [openSync('/dev/fuse', 'r+')], /is a character device/],
    ['listening socket', () => [sock.listenStream(path.join(dir, 'listen.sock'), 1)], /socket is listening/],
  ];
  const before = fdTable(broker.proc.pid!);
  for (const [what, make, re] of cases) {
    const fds = make();
    try {
      const got = await sendTransport(fds[0]);
      assert.ok(got !== 'closed', what);
      const r = got as { code?: string; message?: string };
      assert.is(r.code, 'EBADFD_TRANSPORT', `${what}: ${JSON.stringify(r)}`);
      assert.match(r.message ?? '', re, what);
      assert.not.match(r.message ?? '', /\n/);
    } finally {
      for (const f of fds) sock.close(f);
    }
  }
  assert.equal(instanceTree(broker.runtimeDir), [], 'nothing started');
  await fdsBackTo(broker.proc.pid!, before, 10000);
});

s('source and transport together, or neither: EPROTO_FDS', async () => {
  const [a, b] = sock.socketpairStream();
  const img = openSync(path.join(dir, 'plain'), 'r');
  const target = sock.openat(sock.AT_FDCWD, mnt, sock.O_PATH | sock.O_DIRECTORY);
  try {
    const both = await rawRequest(broker.socket, JSON.stringify({ v: 1, op: 'mount', fstype: 'sshfs', fds: ['source', 'transport', 'target'] }), [img, a, target]);
    assert.is((both as { code?: string }).code, 'EPROTO_FDS');
    const none = await rawRequest(broker.socket, JSON.stringify({ v: 1, op: 'mount', fstype: 'sshfs', fds: ['target'] }), [target]);
    assert.is((none as { code?: string }).code, 'EPROTO_FDS');
  } finally {
    for (const f of [a, b, img, target]) sock.close(f);
  }
});

s('sshfs asked for with an image, ext4 with a transport: ESOURCE_KIND; the COMMAND ends', async () => {
  const img = await makeImage(dir, 'disk.img', 16);
  const r = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'sshfs', img, mnt));
  assert.is(r.exitCode, 2, r.stderr);
  assert.match(r.stderr, /ESOURCE_KIND: sshfs serves no image: it takes a transport/);
  const work = makeDir(path.join(dir, 'work-kind'));
  const pidFile = path.join(work, 'pid');
  const e = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'ext4', '--via', `echo $$ > ${pidFile}; exec cat >/dev/null`, img, mnt));
  assert.is(e.exitCode, 2, e.stderr);
  assert.match(e.stderr, /ESOURCE_KIND: fuse2fs serves an image: send a source descriptor, not a transport/);
  const pid = Number(readFileSync(pidFile, 'utf8'));
  await waitFor('the COMMAND to see EOF and end', () => !existsSync(`/proc/${pid}`), 5000);
  assert.equal(caller.fuseMounts(), []);
});

s('a transport that is a file on the caller\'s own FUSE mount: EBADFD_TRANSPORT, the broker never waits on it', async () => {
  const remote = makeDir(path.join(dir, 'remote'));
  await caller.run(['sh', '-c', `echo x > ${remote}/f`]);
  const m = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'sshfs', '--via', `exec /usr/lib/openssh/sftp-server -d ${remote} 2>/dev/null`, ':', mnt));
  assert.is(m.exitCode, 0, m.stderr);
  try {
    const mnt2 = makeDir(path.join(dir, 'mnt2'));
    const r = await caller.run([process.execPath, WORKER, 'open', broker.socket, path.join(mnt, 'f'), mnt2]);
    const out = JSON.parse(r.stdout) as { code: string; message: string };
    assert.is(out.code, 'EBADFD_TRANSPORT', r.stdout + r.stderr);
    assert.match(out.message, /FUSE mount|regular file/);
    assert.equal(caller.fuseMounts(), [mnt]);
  } finally {
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
  }
});

s('a COMMAND that never speaks: ETIMEDOUT_SERVER at the ready timeout, no mount, no process, the COMMAND ended', async () => {
  const work = makeDir(path.join(dir, 'work-silent'));
  const pidFile = path.join(work, 'pid');
  const before = fdTable(broker.proc.pid!);
  const t0 = Date.now();
  const r = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'sshfs', '--via', `echo $$ > ${pidFile}; exec sleep 120`, ':', mnt), { timeout: 30000 });
  assert.is(r.exitCode, 2, r.stderr);
  assert.match(r.stderr, /ETIMEDOUT_SERVER/);
  assert.ok(Date.now() - t0 < 15000, 'the definition\'s 2 s ready timeout, not more');
  const pid = Number(readFileSync(pidFile, 'utf8'));
  await waitFor('the silent COMMAND to be ended by the client', () => !existsSync(`/proc/${pid}`) || /^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')), 5000);
  assert.equal(caller.fuseMounts(), []);
  await waitFor('nothing of the instance left', () => instanceTree(broker.runtimeDir).length === 0, 10000);
  // The pool refills after a failed start: its launchers' descriptors are the broker's stock.
  await fdsBackTo(broker.proc.pid!, before, 10000, 2);
});

s.run();
