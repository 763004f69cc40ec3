// Issue 13 §2: upstream libfuse's helper reaches unmodified servers. A real broker with
// upstream sockets in a temp dir; test/native/service-client.c plays upstream's fuservicemount3
// (Debian has no fuservicemount3: docs/units.md), as root and installed setuid root for uid
// 1000. Real kernel mounts, fuse2fs in its sandbox, e2fsck afterwards. Every start is undone in
// finally; every wait has a timeout.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import * as sock from '../helper/native/socket.js';
import type { RequestError } from '../supervisor/protocol.js';
import { decodeArgv, decodeFile, decodeHello, decodeReply, parseHelperArgs } from '../supervisor/service-protocol.js';
import { SERVICE_CLIENT, helperRun, installSetuidHelper } from './lib/upstream.js';
import { CLIENT, fdTable, fdsBackTo, instanceProcesses, makeDir, makeImage, newCaller, sleep, startBroker, tmpdir, waitFor, type Broker, type Caller } from './lib/harness.js';

const s = suite('upstream sockets: libfuse contained-service helpers reach sandboxed servers');
let dir: string;
let fsDir: string;
let broker: Broker;
let caller: Caller;
let setuidHelper: string;

async function e2fsckClean(img: string): Promise<void> {
  const r = await execa('e2fsck', ['-fn', img], { reject: false, timeout: 60000 });
  assert.is(r.exitCode, 0, `e2fsck -fn: ${r.stdout} ${r.stderr}`);
}

async function listAs(uid: number): Promise<Array<{ id: number; owner_uid: number; state: string; target: string; source: string }>> {
  const r = await caller.run([CLIENT, '--socket', broker.socket, '--json', 'list'], { uid });
  assert.is(r.exitCode, 0, r.stderr);
  return JSON.parse(r.stdout).mounts;
}

s.before(async () => {
  dir = tmpdir('fuse-svc-upstream-');
  fsDir = path.join(dir, 'filesystems');
  // sshfs served too: a transport server, which upstream's helper (it hands over files) never reaches.
  broker = await startBroker({ args: ['--upstream-sockets'], config: { upstream_socket_dir: fsDir, fstypes: ['ext4', 'ext2', 'sshfs'] } });
  caller = await newCaller();
  setuidHelper = installSetuidHelper(dir);
});

s.after(async () => {
  await broker?.stop();
  await caller?.close();
  rmSync(dir, { recursive: true, force: true });
});

s('wire format: argv bounds, helper args, HELLO/FILE/REPL decoding refuse malformed input with stable codes', () => {
  const argv = (parts: string[], tweak?: (b: Buffer) => void) => {
    const head = 8 + 8 * parts.length;
    const strs = Buffer.from(parts.join(''));
    const b = Buffer.alloc(head + strs.length);
    b.write('ARGS', 0, 'latin1');
    b.writeUInt32BE(parts.length, 4);
    let pos = head;
    parts.forEach((p, i) => {
      b.writeUInt32BE(pos, 8 + 8 * i);
      b.writeUInt32BE(Buffer.byteLength(p), 12 + 8 * i);
      pos += Buffer.byteLength(p);
    });
    strs.copy(b, head);
    tweak?.(b);
    return b;
  };
  assert.equal(decodeArgv(argv(['ext4', '/img', '/mnt', '-o', 'ro'])), ['ext4', '/img', '/mnt', '-o', 'ro']);
  assert.equal(parseHelperArgs(['fuse.ext4', '/img', '/mnt', '-o', 'ro', '-onoexec']), { subtype: 'ext4', source: '/img', mountpoint: '/mnt', options: 'ro,noexec' });
  const code = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      return (e as RequestError).code;
    }
    return 'none';
  };
  assert.is(code(() => decodeArgv(argv(['a'], (b) => b.writeUInt32BE(9999, 12)))), 'EBADFD_ARGV'); // length past the end
  assert.is(code(() => decodeArgv(argv(['a'], (b) => b.writeUInt32BE(65, 4)))), 'EBADFD_ARGV'); // argc
  assert.is(code(() => decodeArgv(Buffer.from('XXXX\0\0\0\x01'))), 'EBADFD_ARGV');
  assert.is(code(() => parseHelperArgs(['ext4', '/img'])), 'EPROTO_SERVICE');
  assert.is(code(() => parseHelperArgs(['ext4', '-x', '/img', '/mnt'])), 'EOPTION');
  assert.is(code(() => decodeHello(Buffer.alloc(12))), 'EPROTO_SERVICE');
  const hello = Buffer.alloc(12);
  hello.write('SAFT', 0, 'latin1');
  hello.writeUInt16BE(2, 4);
  hello.writeUInt16BE(3, 6);
  assert.is(code(() => decodeHello(hello)), 'EPROTO_SERVICE'); // no common version
  assert.is(code(() => decodeFile(Buffer.from('FILE\0\0\0\0name'))), 'EPROTO_SERVICE'); // no NUL
  assert.is(code(() => decodeReply(Buffer.from('REPL\0\0\0'))), 'EPROTO_SERVICE');
  assert.is(decodeReply(Buffer.from('REPL\0\0\0\x0d', 'latin1')), 13);
});

s('one socket per served image type (none for sshfs, a transport server), mode 0600 by default (root and setuid helpers only)', () => {
  for (const t of ['ext4', 'ext2']) {
    const st = lstatSync(path.join(fsDir, t));
    assert.ok(st.isSocket(), t);
    assert.is(st.mode & 0o777, 0o600, t);
    assert.is(st.uid, 0);
  }
  assert.not.ok(existsSync(path.join(fsDir, 'squashfs')), 'only configured types');
  // A plain file the helper opened must never become sshfs's SFTP channel (checkTransport's
  // connected socket is the only transport): no socket for a transport type.
  assert.not.ok(existsSync(path.join(fsDir, 'sshfs')), 'no upstream socket for a transport server');
});

s('root: mount ext4 through the upstream socket, write, read back, umount ends the instance, e2fsck clean', async () => {
  const img = await makeImage(dir, 'root.img', 32, 'ext4', 0);
  const mnt = makeDir(path.join(dir, 'mnt-root'), 0);
  const r = await helperRun(caller, SERVICE_CLIENT, path.join(fsDir, 'ext4'), 'ext4', img, mnt);
  assert.is(r.exitCode, 0, `${r.stdout} ${r.stderr} ${broker.logs().slice(-2000)}`);
  assert.match(r.stdout, /bye 0/);
  const line = caller.mountinfo().split('\n').find((l) => l.split(' ')[4] === mnt);
  assert.ok(line, 'mounted in the caller namespace');
  assert.match(line!, /nosuid,nodev.* - fuse\.ext4 .* rw,user_id=0,group_id=0/);
  // The mount is absent from the broker's namespace (the helper made it in its own).
  assert.not.ok(readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${mnt} `));
  const w = await caller.run(['sh', '-c', `echo upstream-data > ${mnt}/file && sync && cat ${mnt}/file`], { uid: 0 });
  assert.is(w.stdout.trim(), 'upstream-data', w.stderr);
  const mounts = await listAs(0);
  const mine = mounts.find((m) => m.target === mnt);
  assert.ok(mine, `listed: ${JSON.stringify(mounts)}`);
  assert.is(mine!.owner_uid, 0);
  assert.is(mine!.state, 'running');
  assert.ok(instanceProcesses(broker.runtimeDir).some((p) => p.comm.startsWith('fuse2fs')), 'fuse2fs runs (sandboxed)');
  const u = await caller.run(['umount', mnt], { uid: 0 });
  assert.is(u.exitCode, 0, u.stderr);
  await waitFor('the instance to end after umount', () => broker.logs().includes(`${img} on ${mnt} (uid 0) ended`), 15000);
  await waitFor('no instance processes', () => instanceProcesses(broker.runtimeDir).length === 0, 10000);
  await e2fsckClean(img);
  // The data is on the image.
  const dump = await execa('debugfs', ['-R', 'cat /file', img], { reject: false });
  assert.is(dump.stdout.trim(), 'upstream-data');
});

s('uid 1000 through a setuid helper: identity from the real uid, the caller owns the mount, unmount by id', async () => {
  // Ordinary distributions ship /dev/fuse 0666; here it is 0600, so the caller gets a usable
  // node bound over /dev/fuse in its own mount namespace only.
  const node = path.join(dir, 'fuse-0666');
  rmSync(node, { force: true });
  await execa('mknod', [node, 'c', '10', '229']);
  chmodSync(node, 0o666);
  const b = await caller.run(['mount', '--bind', node, '/dev/fuse'], { uid: 0 });
  assert.is(b.exitCode, 0, b.stderr);
  try {
    const img = await makeImage(dir, 'user.img', 32);
    const mnt = makeDir(path.join(dir, 'mnt-user'));
    const r = await helperRun(caller, setuidHelper, path.join(fsDir, 'ext4'), 'ext4', img, mnt, [], 1000);
    assert.is(r.exitCode, 0, `${r.stdout} ${r.stderr} ${broker.logs().slice(-2000)}`);
    assert.match(broker.logs(), /upstream ext4: uid 1000 \(setuid helper: SO_PEERCRED uid 0, real uid 1000 from \/proc\/\d+\/status\)/);
    const line = caller.mountinfo().split('\n').find((l) => l.split(' ')[4] === mnt);
    assert.match(line ?? '', / - fuse\.ext4 .* rw,user_id=1000,group_id=1000/);
    const w = await caller.run(['sh', '-c', `echo mine > ${mnt}/f && cat ${mnt}/f && stat -c %u ${mnt}/f`], { uid: 1000 });
    assert.is(w.exitCode, 0, w.stderr);
    assert.match(w.stdout, /^mine\n1000$/);
    // FUSE without allow_other: no other uid gets in.
    const other = await caller.run(['ls', mnt], { uid: 1001 });
    assert.is.not(other.exitCode, 0);
    const mine = (await listAs(1000)).find((m) => m.target === mnt);
    assert.ok(mine, 'uid 1000 sees its mount');
    assert.is(mine!.owner_uid, 1000);
    assert.not.ok((await listAs(1001)).some((m) => m.target === mnt), 'uid 1001 does not');
    // Through the broker socket: the launcher finds the helper's mount by its id and detaches it.
    const u = await caller.run([CLIENT, '--socket', broker.socket, 'unmount', '--id', String(mine!.id)], { uid: 1000 });
    assert.is(u.exitCode, 0, u.stderr + u.stdout);
    await waitFor('the mount gone from the caller namespace', () => !caller.fuseMounts().includes(mnt), 10000);
    await e2fsckClean(img);
  } finally {
    await caller.run(['umount', '/dev/fuse'], { uid: 0 });
  }
});

s('uid 1000 on a host whose /dev/fuse is 0600: the helper cannot open it, nothing reaches the broker', async () => {
  const img = await makeImage(dir, 'user2.img', 16);
  const mnt = makeDir(path.join(dir, 'mnt-user2'));
  const before = broker.logs().length;
  const r = await helperRun(caller, setuidHelper, path.join(fsDir, 'ext4'), 'ext4', img, mnt, [], 1000);
  assert.is.not(r.exitCode, 0);
  assert.match(r.stderr, /open\(fusedev\): Permission denied/);
  await sleep(200);
  assert.not.ok(broker.logs().slice(before).includes('asks for'), 'no request reached the policy');
});

s('a second broker never takes over a live upstream socket; a stale one it did not create is left alone', async () => {
  const sockBefore = lstatSync(path.join(fsDir, 'ext4'));
  // The first broker's other socket: the second one names only ext4 and ext3.
  const other = path.join(fsDir, 'ext2');
  const second = await startBroker({ args: ['--upstream-sockets'], config: { upstream_socket_dir: fsDir, fstypes: ['ext4', 'ext3'] } });
  try {
    await waitFor('the second broker to report', () => /upstream socket .*ext4: a live listener holds it/.test(second.logs()), 10000);
    await waitFor('the log line /listening on .*\/ext3 for ext3/', () => /listening on .*\/ext3 for ext3/.test(second.logs()), 10000);
  } finally {
    await second.stop();
  }
  const after = lstatSync(path.join(fsDir, 'ext4'));
  assert.is(after.ino, sockBefore.ino, 'the first broker keeps its socket');
  assert.not.ok(existsSync(path.join(fsDir, 'ext3')), 'the second broker removed only its own socket');
  assert.ok(lstatSync(other).isSocket());
  // The first broker still serves through it.
  const img = await makeImage(dir, 'after.img', 16, 'ext4', 0);
  const mnt = makeDir(path.join(dir, 'mnt-after'), 0);
  const r = await helperRun(caller, SERVICE_CLIENT, path.join(fsDir, 'ext4'), 'ext4', img, mnt);
  assert.is(r.exitCode, 0, r.stderr);
  await caller.run(['umount', mnt], { uid: 0 });
  await waitFor('the instance to end', () => broker.logs().includes(`${img} on ${mnt} (uid 0) ended`), 15000);
});

s('stale sockets: a killed broker\'s own are rebound by its successor; a foreign one is never removed', async () => {
  const d = tmpdir('fuse-svc-upstream-stale-');
  const fdir = path.join(d, 'fs');
  mkdirSync(fdir, { mode: 0o755 });
  // Someone else's stale socket: bound and closed, nobody listens.
  const foreignFd = sock.listenSeqpacket(path.join(fdir, 'ext2'), 1);
  sock.close(foreignFd);
  const run = path.join(d, 'run');
  mkdirSync(run, { mode: 0o755 });
  let b = await startBroker({ runtimeDir: run, args: ['--upstream-sockets'], config: { upstream_socket_dir: fdir, fstypes: ['ext4', 'ext2'] } });
  try {
    await waitFor('the log line /ext2: a stale socket this broker did not create; left alone/', () => /ext2: a stale socket this broker did not create; left alone/.test(b.logs()), 10000);
    const ino = lstatSync(path.join(fdir, 'ext4')).ino;
    b.proc.kill('SIGKILL');
    await waitFor('the broker gone', () => b.proc.exitCode !== null || b.proc.signalCode !== null, 5000);
    assert.ok(lstatSync(path.join(fdir, 'ext4')).isSocket(), 'a killed broker leaves its socket');
    b = await startBroker({ runtimeDir: run, args: ['--upstream-sockets'], config: { upstream_socket_dir: fdir, fstypes: ['ext4', 'ext2'] } });
    await waitFor('the log line /listening on .*\/ext4 for ext4/', () => /listening on .*\/ext4 for ext4/.test(b.logs()), 10000);
    assert.is.not(lstatSync(path.join(fdir, 'ext4')).ino, ino, 'rebound: its own stale socket');
  } finally {
    await b.stop();
  }
  assert.not.ok(existsSync(path.join(fdir, 'ext4')), 'removed at stop: its own');
  assert.ok(lstatSync(path.join(fdir, 'ext2')).isSocket(), 'the foreign stale socket is still there');
  rmSync(d, { recursive: true, force: true });
});

s('a restarted broker re-adopts an upstream instance: listed, and unmount --id detaches it in the helper\'s namespace', async () => {
  const d = tmpdir('fuse-svc-upstream-restart-');
  const fdir = path.join(d, 'fs');
  const run = path.join(d, 'run');
  mkdirSync(run, { mode: 0o755 });
  const cfg = { upstream_socket_dir: fdir, fstypes: ['ext4'] };
  let b = await startBroker({ runtimeDir: run, args: ['--upstream-sockets'], config: cfg });
  try {
    const img = await makeImage(d, 'r.img', 16, 'ext4', 0);
    const mnt = makeDir(path.join(d, 'mnt'), 0);
    const r = await helperRun(caller, SERVICE_CLIENT, path.join(fdir, 'ext4'), 'ext4', img, mnt);
    assert.is(r.exitCode, 0, r.stderr);
    await b.exit(); // SIGTERM: the broker goes, the instance stays
    assert.ok(caller.fuseMounts().includes(mnt), 'the mount outlives the broker');
    b = await startBroker({ runtimeDir: run, args: ['--upstream-sockets'], config: cfg });
    await waitFor('the log line /re-adopted .* on .*\/mnt, uid 0/', () => /re-adopted .* on .*\/mnt, uid 0/.test(b.logs()), 10000);
    const l = await caller.run([CLIENT, '--socket', b.socket, '--json', 'list'], { uid: 0 });
    const m = (JSON.parse(l.stdout).mounts as Array<{ id: number; target: string; state: string }>).find((x) => x.target === mnt);
    assert.is(m?.state, 'running');
    const u = await caller.run([CLIENT, '--socket', b.socket, 'unmount', '--id', String(m!.id)], { uid: 0 });
    assert.is(u.exitCode, 0, u.stderr);
    assert.not.ok(caller.fuseMounts().includes(mnt));
    await e2fsckClean(img);
  } finally {
    await b.stop();
    rmSync(d, { recursive: true, force: true });
  }
});

s('the broker holds nothing more after the mounts above', async () => {
  const pid = broker.proc.pid!;
  const before = fdTable(pid);
  const img = await makeImage(dir, 'count.img', 16, 'ext4', 0);
  const mnt = makeDir(path.join(dir, 'mnt-count'), 0);
  for (let i = 0; i < 3; i++) {
    const r = await helperRun(caller, SERVICE_CLIENT, path.join(fsDir, 'ext4'), 'ext4', img, mnt);
    assert.is(r.exitCode, 0, r.stderr);
    await caller.run(['umount', mnt], { uid: 0 });
    await waitFor('the instance to end', () => instanceProcesses(broker.runtimeDir).length === 0, 15000);
  }
  // The pool refills in the background: allow it to settle to where it was.
  await fdsBackTo(pid, before, 10000);
  await e2fsckClean(img);
});

s.run();
