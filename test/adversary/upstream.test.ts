// Adversary suite: upstream sockets (issue 13 §2). A helper of libfuse's contained-service
// protocol is hostile input like any client: a non-setuid process claiming root, wrong
// descriptors, malformed packets, a helper that leaves mid-way or mounts against the rules.
// Each attack asserts its refusal (stable code in the broker's log, one line), that nothing is
// left in the caller's namespace, and at the end that the broker still serves and holds no
// more descriptors or processes than before.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { chmodSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { fdTable, fdsBackTo, instanceProcesses, makeDir, makeImage, newCaller, sleep, startBroker, tmpdir, waitFor, type Broker, type Caller } from '../lib/harness.js';
import { SERVICE_CLIENT, helperRun } from '../lib/upstream.js';

const s = suite('adversary: upstream sockets');
let dir: string;
let fsDir: string;
let broker: Broker;
let caller: Caller;
let img: string;
let before: Map<number, string>;

s.before(async () => {
  dir = tmpdir('fuse-svc-adv-upstream-');
  fsDir = path.join(dir, 'filesystems');
  // 0666: unprivileged, non-setuid processes may connect too, so they can be tried.
  broker = await startBroker({ args: ['--upstream-sockets'], config: { upstream_socket_dir: fsDir, upstream_socket_mode: '0666', fstypes: ['ext4'], request_timeout_ms: 1500, pool_size: 0 } });
  caller = await newCaller();
  img = await makeImage(dir, 'disk.img', 16, 'ext4', 0);
  before = fdTable(broker.proc.pid!);
});

s.after(async () => {
  await broker?.stop();
  await caller?.close();
  rmSync(dir, { recursive: true, force: true });
});

const SOCK = () => path.join(fsDir, 'ext4');

/** Runs a hostile helper; returns its result and the broker's log lines it caused. */
async function attempt(extra: string[], uid = 0, mnt = makeDir(path.join(dir, `m-${Math.random().toString(36).slice(2)}`), uid)) {
  const mark = broker.logs().length;
  const r = await helperRun(caller, SERVICE_CLIENT, SOCK(), 'ext4', img, mnt, extra, uid);
  // The refusal line follows the helper's end at once; allow the loop a moment.
  await sleep(100);
  return { r, log: broker.logs().slice(mark), mnt };
}

function refused(log: string, code: string, uid: number | string = 0): void {
  assert.match(log, new RegExp(`upstream ext4: uid ${uid}: refused at \\w+: ${code}: `), log);
}

async function nothingLeft(mnt: string): Promise<void> {
  await waitFor('no instance processes', () => instanceProcesses(broker.runtimeDir).length === 0, 10000);
  assert.not.ok(caller.fuseMounts().includes(mnt), `a mount left on ${mnt}`);
}

/**
 * BODY with a 0666 /dev/fuse in the caller's namespace (as on ordinary distributions), so that
 * uid 1000's helper gets as far as the broker and its claims, not the device, are judged.
 */
async function withWorldFuse(name: string, body: () => Promise<void>): Promise<void> {
  const node = path.join(dir, name);
  await execa('mknod', [node, 'c', '10', '229']);
  chmodSync(node, 0o666);
  await caller.run(['mount', '--bind', node, '/dev/fuse'], { uid: 0 });
  try {
    await body();
  } finally {
    await caller.run(['umount', '/dev/fuse'], { uid: 0 });
  }
}

s('a non-setuid uid-1000 client claiming root (HELLO ALLOW_OTHER|FUSEBLK, -o allow_other) is uid 1000 and refused EOPTION', () =>
  withWorldFuse('fuse-0666', async () => {
    const userImg = await makeImage(dir, 'u.img', 16);
    const mnt = makeDir(path.join(dir, 'claim'));
    const mark = broker.logs().length;
    const r = await caller.run([SERVICE_CLIENT, '--just-mount', '--hello-flags', '3', '-o', 'allow_other', SOCK(), 'ext4', userImg, mnt], { uid: 1000, timeout: 30000 });
    await sleep(100);
    const log = broker.logs().slice(mark);
    assert.is.not(r.exitCode, 0);
    assert.match(log, /uid 1000 \(SO_PEERCRED\) asks for .* \(helper flags 0x3 ignored\)/);
    refused(log, 'EOPTION', 1000);
    // Without the claim it still gets nothing beyond its own rights: it cannot mount (fsopen EPERM).
    const mark2 = broker.logs().length;
    const r2 = await caller.run([SERVICE_CLIENT, '--just-mount', SOCK(), 'ext4', userImg, mnt], { uid: 1000, timeout: 30000 });
    await sleep(100);
    assert.is.not(r2.exitCode, 0);
    refused(broker.logs().slice(mark2), 'EMOUNT_HELPER', 1000);
    await nothingLeft(mnt);
  }),
);

s('uid 1000 as "root" of its own user namespace (unshare -Urm) mounting user_id=0 is refused EMOUNT_GIVEN, its mount detached', () =>
  withWorldFuse('fuse-0666-ns', async () => {
    const userImg = await makeImage(dir, 'ns.img', 16);
    const mnt = makeDir(path.join(dir, 'ns-claim'));
    const mark = broker.logs().length;
    const r = await caller.run(['unshare', '-Urm', '--', SERVICE_CLIENT, '--just-mount', SOCK(), 'ext4', userImg, mnt], { uid: 1000, timeout: 30000 });
    await sleep(100);
    const log = broker.logs().slice(mark);
    assert.match(r.stdout, /bye 1/, r.stderr);
    assert.match(log, /uid 1000 \(SO_PEERCRED\) asks for/);
    refused(log, 'EMOUNT_GIVEN', 1000);
    assert.match(log, /not owned by the caller \(uid 1000\): rw,user_id=0/);
    assert.match(log, /detached the mount in the caller's namespace/);
    await nothingLeft(mnt);
  }),
);

s('a helper mounting with another owner (user_id=1234) is refused EMOUNT_GIVEN and its mount detached', async () => {
  const { r, log, mnt } = await attempt(['--user-id', '1234']);
  assert.match(r.stdout, /bye 1/);
  refused(log, 'EMOUNT_GIVEN');
  assert.match(log, /not owned by the caller \(uid 0\)/);
  await nothingLeft(mnt);
});

s('a helper mounting without nosuid is refused EMOUNT_GIVEN and its mount detached', async () => {
  const { r, log, mnt } = await attempt(['--drop-nosuid']);
  assert.match(r.stdout, /bye 1/);
  refused(log, 'EMOUNT_GIVEN');
  assert.match(log, /lacks nosuid or nodev/);
  await nothingLeft(mnt);
});

s('a helper that mounts the connection twice is refused EMOUNT_GIVEN (only one mount could be detached)', async () => {
  const also = makeDir(path.join(dir, 'twice'), 0);
  const { r, log, mnt } = await attempt(['--bind-also', also]);
  assert.match(r.stdout, /bye 1/);
  refused(log, 'EMOUNT_GIVEN');
  assert.match(log, /mounted 2 times/);
  await waitFor('no instance processes', () => instanceProcesses(broker.runtimeDir).length === 0, 10000);
  // Both are the helper's own (dead: the server was never kept); it removes them itself.
  await caller.run(['umount', '-l', also], { uid: 0 });
  await caller.run(['umount', '-l', mnt], { uid: 0 });
  assert.not.ok(caller.fuseMounts().includes(mnt) || caller.fuseMounts().includes(also));
});

s('wrong descriptors: fusedev a regular file (EBADFD_FUSE), /dev/fuse as the source (EBADFD_SOURCE), argv not a memfd (EBADFD_ARGV)', async () => {
  const plain = path.join(dir, 'plain');
  writeFileSync(plain, 'not a fuse device');
  let a = await attempt(['--fusedev', plain]);
  refused(a.log, 'EBADFD_FUSE');
  await nothingLeft(a.mnt);
  a = await attempt(['--answer-open', '/dev/fuse']);
  refused(a.log, 'EBADFD_SOURCE');
  assert.match(a.log, /character device, not a regular file or block device/);
  await nothingLeft(a.mnt);
  a = await attempt(['--argv-file', plain]);
  refused(a.log, 'EBADFD_ARGV');
  await nothingLeft(a.mnt);
});

s('truncated and oversized packets: EPROTO_SERVICE, the connection is closed', async () => {
  for (const n of ['3', '70000', '13']) {
    const a = await attempt(['--raw', n]);
    assert.is(a.r.exitCode, 3, `--raw ${n}: ${a.r.stderr}`); // closed before HELLO was answered
    refused(a.log, 'EPROTO_SERVICE');
  }
});

s('disconnect mid-handshake (at OPEN, at MNTP, at DOIT): nothing left, the slot is given back', async () => {
  for (const at of ['OPEN', 'MNTP', 'DOIT']) {
    const a = await attempt(['--quit-at', at]);
    assert.is(a.r.exitCode, 4, a.r.stderr);
    refused(a.log, 'EPROTO_SERVICE');
    assert.match(a.log, /the helper closed the connection/);
    await nothingLeft(a.mnt);
  }
});

s('a silent connection is closed after request_timeout_ms', async () => {
  const mark = broker.logs().length;
  // HELLO, then nothing: --quit-at never matches, stdin holds it; killed by the timeout.
  const p = execa('python3', ['-c', `import socket,time\ns=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET)\ns.connect(${JSON.stringify(SOCK())})\nprint(len(s.recv(100)))`], { reject: false, timeout: 10000 });
  const r = await p;
  assert.is(r.stdout.trim(), '0', 'EOF from the broker');
  assert.match(broker.logs().slice(mark), /refused at HELLO: EPROTO_SERVICE: no packet within 1500 ms/);
});

s('after all of it the broker still serves, and holds no more descriptors or processes than before', async () => {
  const mnt = makeDir(path.join(dir, 'ok'), 0);
  const r = await helperRun(caller, SERVICE_CLIENT, SOCK(), 'ext4', img, mnt);
  assert.is(r.exitCode, 0, r.stderr + broker.logs().slice(-1500));
  const w = await caller.run(['sh', '-c', `echo ok > ${mnt}/ok && cat ${mnt}/ok`], { uid: 0 });
  assert.is(w.stdout.trim(), 'ok');
  await caller.run(['umount', mnt], { uid: 0 });
  await nothingLeft(mnt);
  await fdsBackTo(broker.proc.pid!, before, 10000);
  const fsck = await execa('e2fsck', ['-fn', img], { reject: false });
  assert.is(fsck.exitCode, 0, fsck.stdout);
});

s.run();
