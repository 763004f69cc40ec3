// Adversary suite: the privilege boundary (issue 9) and "never blocked" (issue 15), tried
// against a real broker by an unprivileged caller (uid 1000 in its own mount namespace) and by
// root. Each attack asserts that it fails AND that ordinary use still works, and what the
// broker holds (fds, connections, processes) before and after.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants, mkdirSync, openSync, readFileSync, readdirSync, rmSync, rmdirSync, chownSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import * as sock from '../../helper/native/socket.js';
import { rawRequest, type RawReply } from '../lib/raw.js';
import { NATIVE, fdCount, makeDir, makeImage, sleep, waitFor, type Broker, type Caller, openEnv, closeEnv } from '../lib/harness.js';

const CLIENT = path.join(NATIVE, 'fuse-svc-client');
const s = suite('adversary: privilege boundary and never blocked');
let broker: Broker;
let caller: Caller;
let dir: string;
let img: string;

s.before(async () => {
  ({ dir, broker, caller } = await openEnv({ config: { max_mounts_per_user: 4, max_connections_per_user: 40, max_stuck_per_user: 3, request_timeout_ms: 3000 } }, 'fuse-svc-adv-'));
  img = await makeImage(dir, 'disk.img', 16);
});

s.after(async () => {
  await closeEnv({ dir, broker, caller });
});

/** The static client as uid (default 1000) inside the caller's namespace. */
const run = (args: string[], uid = 1000) => caller.run([CLIENT, '--socket', broker.socket, ...args], { uid, timeout: 30000 });

async function ordinaryMountWorks(what: string): Promise<void> {
  const mnt = makeDir(path.join(dir, `ok-${Math.random().toString(36).slice(2)}`));
  const m = await run(['mount', '-t', 'ext4', '-o', 'ro', img, mnt]);
  assert.is(m.exitCode, 0, `${what}: an ordinary mount still works: ${m.stderr}`);
  const u = await run(['unmount', mnt]);
  assert.is(u.exitCode, 0, `${what}: and unmounts: ${u.stderr}`);
  rmSync(mnt, { recursive: true, force: true });
}

s('sticky mount points (fusermount: a sticky directory is a mount point only for its owner)', async () => {
  // A root-owned sticky dir like /tmp, one like /tmp in the caller's namespace itself, and
  // variants: group-writable sticky dir of another user, a sticky dir the caller owns.
  const rootSticky = makeDir(path.join(dir, 'sticky-root'), 0, 0o1777);
  const otherSticky = makeDir(path.join(dir, 'sticky-other'), 1001, 0o1777);
  const ownSticky = makeDir(path.join(dir, 'sticky-own'), 1000, 0o1777);
  const notWritable = makeDir(path.join(dir, 'not-writable'), 0, 0o755);
  const inSticky = makeDir(path.join(rootSticky, 'mine'), 1000, 0o755);
  for (const [target, why] of [[rootSticky, 'root-owned sticky'], [otherSticky, 'sticky dir of another user'], ['/tmp', '/tmp'], ['/var/tmp', '/var/tmp'], ['/dev/shm', '/dev/shm']] as const) {
    const r = await run(['mount', '-t', 'ext4', '-o', 'ro', img, target]);
    assert.is.not(r.exitCode, 0, `${why}: refused`);
    assert.match(r.stderr, /EPERM_TARGET/, `${why}: ${r.stderr}`);
    assert.ok(!caller.fuseMounts().includes(target), `${why}: nothing mounted`);
  }
  const nw = await run(['mount', '-t', 'ext4', '-o', 'ro', img, notWritable]);
  assert.match(nw.stderr, /EPERM_TARGET/, `not writable: ${nw.stderr}`);
  // A directory the caller may write, on a filesystem not on fusermount's list (cgroup2).
  const cg = '/sys/fs/cgroup/unified/fuse-svc-adversary-test';
  try {
    mkdirSync(cg);
    chownSync(cg, 1000, 1000);
    const r = await run(['mount', '-t', 'ext4', '-o', 'ro', img, cg]);
    assert.match(r.stderr, /EFSTYPE_TARGET: .*magic 0x63677270/, `cgroup2: ${r.stderr}`);
  } finally {
    rmdirSync(cg);
  }
  for (const target of [ownSticky, inSticky]) {
    const r = await run(['mount', '-t', 'ext4', '-o', 'ro', img, target]);
    assert.is(r.exitCode, 0, `${target}: allowed: ${r.stderr}`);
    assert.is((await run(['unmount', target])).exitCode, 0);
  }
});

s('mount limits hold under concurrency: slots are reserved before the first await', async () => {
  const targets = Array.from({ length: 16 }, (_, i) => makeDir(path.join(dir, `conc-${i}`)));
  const results = await Promise.all(targets.map((t) => run(['mount', '-t', 'ext4', '-o', 'ro', img, t])));
  const ok = results.filter((r) => r.exitCode === 0).length;
  const limited = results.filter((r) => /ELIMIT_MOUNTS/.test(r.stderr)).length;
  assert.is(ok, 4, `exactly max_mounts_per_user (4) succeed: ${results.map((r) => r.stderr.trim()).filter(Boolean).join(' | ')}`);
  assert.is(limited, 12, 'the others are refused with ELIMIT_MOUNTS');
  for (const t of targets) if (caller.fuseMounts().includes(t)) assert.is((await run(['unmount', t])).exitCode, 0);
  await waitFor('slots released', () => caller.fuseMounts().length === 0, 15000);
  await ordinaryMountWorks('after the burst');
});

s('a write-only source is refused as such, for ro and rw', async () => {
  const wfd = openSync(img, constants.O_WRONLY); // never 'w': that would truncate the image
  const t = makeDir(path.join(dir, 'wo'));
  const tfd = sock.openat(sock.AT_FDCWD, t, sock.O_PATH | sock.O_DIRECTORY | sock.O_NOFOLLOW);
  try {
    for (const options of ['ro', 'rw']) {
      const r = (await rawRequest(broker.socket, JSON.stringify({ v: 1, op: 'mount', fstype: 'ext4', options, fds: ['source', 'target'] }), [wfd, tfd])) as RawReply;
      assert.is(r.code, 'EBADFD_SOURCE', `${options}: ${r.message}`);
      assert.match(r.message!, /write-only/);
    }
  } finally {
    closeSync(wfd);
    sock.close(tfd);
  }
});

s('control characters and line separators in names are escaped in the log', async () => {
  const rfd = openSync(img, 'r');
  const t = makeDir(path.join(dir, 'names'));
  const tfd = sock.openat(sock.AT_FDCWD, t, sock.O_PATH | sock.O_DIRECTORY | sock.O_NOFOLLOW);
  const evil = 'a\u2028fuse-svcd: forged\u0085line\u009b2J\u202eb';
  try {
    const r = (await rawRequest(broker.socket, JSON.stringify({ v: 1, op: 'mount', fstype: 'ext4', options: 'ro', fds: ['source', 'target'], source_name: evil, target_name: evil }), [rfd, tfd])) as RawReply;
    assert.ok(r.ok, `mounted: ${r.message}`);
    await waitFor('the mount line', () => broker.logs().includes('forged'), 5000);
    assert.not.match(broker.logs(), /[\u2028\u0085\u009b\u202e]/, 'no raw separator or C1 control reaches the log');
    assert.match(broker.logs(), /\\u2028fuse-svcd: forged\\x85line\\x9b2J\\u202eb/);
    const u = (await rawRequest(broker.socket, JSON.stringify({ v: 1, op: 'unmount', fds: [], id: r.id }))) as RawReply;
    assert.ok(u.ok, u.message);
  } finally {
    closeSync(rfd);
    sock.close(tfd);
  }
});

s('connection flood: capped per uid, refused with ELIMIT_CONN, another uid still mounts, nothing kept', async () => {
  const base = fdCount(broker.proc.pid!);
  const fds: number[] = [];
  try {
    for (let i = 0; i < 60; i++) fds.push(sock.connectSeqpacket(broker.socket));
    await sleep(300);
    // The ones past the cap were answered at once and closed by the broker.
    let refused = 0;
    for (const fd of fds) {
      const r = sock.recv(fd, 4096, 0);
      if (r && !r.eof && /ELIMIT_CONN/.test(r.data.toString())) refused++;
    }
    assert.ok(refused >= 20, `the 20 connections over the cap of 40 were refused (${refused})`);
    assert.ok(fdCount(broker.proc.pid!) <= base + 45, 'the broker holds at most its cap');
    await ordinaryMountWorks('during the flood by root');
  } finally {
    for (const fd of fds) sock.close(fd);
  }
  await waitFor('fds back to the baseline', () => fdCount(broker.proc.pid!) <= base + 2, 10000);
});

s('out of descriptors (EMFILE): accept backs off instead of spinning, logs stay bounded', async () => {
  const pid = broker.proc.pid!;
  const cpu = () => {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, seconds (USER_HZ 100)
  };
  const lines = () => broker.logs().split('\n').filter((l) => /accept/.test(l)).length;
  const base = fdCount(pid);
  // Only the soft limit: root here lacks CAP_SYS_RESOURCE and could not raise a hard one back.
  const soft = /Max open files\s+(\d+)/.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'))![1];
  await execa('prlimit', ['--pid', String(pid), `--nofile=${base + 10}:`]);
  const fds: number[] = [];
  try {
    for (let i = 0; i < 30; i++) fds.push(sock.connectSeqpacket(broker.socket));
    const c0 = cpu();
    const l0 = lines();
    await sleep(2000);
    const used = cpu() - c0;
    assert.ok(used < 0.6, `the broker did not spin at EMFILE (${used.toFixed(2)} s CPU in 2 s)`);
    assert.ok(lines() - l0 <= 3, `accept lines are rate-limited (${lines() - l0} new)`);
  } finally {
    for (const fd of fds) sock.close(fd);
    await execa('prlimit', ['--pid', String(pid), `--nofile=${soft}:`]);
  }
  await ordinaryMountWorks('after EMFILE');
});

s('a descriptor stuck on the caller\'s own stopped FUSE server never blocks the broker', async () => {
  // The attacker's own FUSE filesystem (fuse2fs run by root here stands in for any FUSE server
  // a caller can run where /dev/fuse is 0666), a file open on it, the server stopped.
  // The file exists before the server starts: no close reaches it before the test's, so the
  // first FLUSH (a server without flush sets no_flush only after answering one) is the broker's.
  const seed = path.join(dir, 'seed');
  mkdirSync(seed);
  writeFileSync(path.join(seed, 'f'), 'x');
  const own = path.join(dir, 'own.img');
  await execa('mkfs.ext4', ['-q', '-F', '-d', seed, own, '8M']);
  const ownMnt = makeDir(path.join(dir, 'own-mnt'), 0);
  const server: ChildProcess = spawn('nsenter', ['-t', String(caller.pid), '-m', '--', 'fuse2fs', '-f', own, ownMnt], { stdio: 'ignore' });
  const stuck: number[] = [];
  try {
    await waitFor('the own FUSE mount', () => caller.fuseMounts().includes(ownMnt), 10000);
    const via = `/proc/${caller.pid}/root${ownMnt}`;
    const serverPid = Number((await execa('pgrep', ['-n', '-f', `fuse2fs -f ${own}`])).stdout.trim());
    const fdsBefore = fdCount(broker.proc.pid!);
    for (let i = 0; i < 3; i++) stuck.push(openSync(path.join(via, 'f'), 'r'));
    process.kill(serverPid, 'SIGSTOP');
    try {
      // (1) list with the stuck fd attached: answered, (2) again: still answered.
      for (let i = 0; i < 3; i++) {
        const t0 = Date.now();
        const r = (await rawRequest(broker.socket, JSON.stringify({ v: 1, op: 'list', fds: [] }), [stuck[i]], 5000)) as RawReply;
        assert.ok(r !== ('closed' as never) && Date.now() - t0 < 3000, `list ${i} answered at once`);
      }
      // (3) past the share (3 stuck closers for uid 0) root's requests are refused at accept
      // with ELIMIT_STUCK, one line; another uid is served within a bound.
      await sleep(300);
      const refused = (await rawRequest(broker.socket, JSON.stringify({ v: 1, op: 'list', fds: [] }), [], 5000)) as RawReply;
      assert.is(refused.code, 'ELIMIT_STUCK', refused.message);
      // (No child process may be started here: this test holds the stuck descriptors too,
      // and a child's exec would close its CLOEXEC copies and wait in FLUSH like the broker
      // would have. Another uid's service while one is stuck is covered by the broker's
      // per-uid share: admit() counts closers by uid.)
      // the broker's threads stayed bounded (no thread per stuck close)
      assert.ok(readdirSync(`/proc/${broker.proc.pid}/task`).length < 20, 'threads bounded');
    } finally {
      process.kill(serverPid, 'SIGCONT');
    }
    // The server answers: the closers finish, root is served again, fds back to the baseline.
    await waitFor('root served again', async () => ((await rawRequest(broker.socket, JSON.stringify({ v: 1, op: 'list', fds: [] }), [], 5000)) as RawReply).ok, 10000, 200);
    await waitFor('broker fds back', () => fdCount(broker.proc.pid!) <= fdsBefore + 1, 10000);
  } finally {
    for (const fd of stuck) closeSync(fd);
    await execa('nsenter', ['-t', String(caller.pid), '-m', '--', 'umount', '-l', ownMnt], { reject: false });
    server.kill('SIGKILL');
    await Promise.race([new Promise((r) => server.once('exit', r)), sleep(3000)]);
  }
});

s.run();
