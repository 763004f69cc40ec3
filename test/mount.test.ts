// End to end: a real broker, a caller (uid 1000) in its own mount namespace, real fuse2fs in
// a real sandbox. Covers issue 2's user story, the sandbox evidence and teardown.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync, chownSync, existsSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { DEFAULTS } from '../supervisor/config.js';
import { clientArgs, instanceProcesses, makeDir, makeImage, procStatus, waitFor, type Broker, type Caller, USER, openEnv, closeEnv } from './lib/harness.js';

const s = suite('brokered mount, end to end');
let broker: Broker;
let caller: Caller;
let dir: string;

s.before(async () => {
  ({ dir, broker, caller } = await openEnv());
});

s.after(async () => {
  await closeEnv({ dir, broker, caller });
});

/** sha256 of every file under root, relative names, sorted. */
async function checksums(run: (argv: string[]) => Promise<{ stdout: string; exitCode: number }>, root: string): Promise<string> {
  const r = await run(['sh', '-c', `cd "${root}" && find . -type f ! -path './lost+found/*' | LC_ALL=C sort | xargs -d '\\n' sha256sum`]);
  assert.is(r.exitCode, 0, `checksums under ${root}`);
  return r.stdout;
}

s('uid 1000 mounts a 0600 image rw, writes a tree with a 20 MiB file, unmounts cleanly, mounts ro', async () => {
  const img = await makeImage(dir, 'disk.img', 96);
  const mnt = makeDir(path.join(dir, 'mnt'));
  const src = makeDir(path.join(dir, 'src'));
  for (let i = 0; i < 200; i++) {
    const sub = path.join(src, `d${i % 10}`);
    if (!existsSync(sub)) mkdirSync(sub);
    writeFileSync(path.join(sub, `f${i}`), `file ${i}\n`.repeat(i + 1));
  }
  await execa('head', ['-c', String(20 << 20), '/dev/urandom'], { encoding: 'buffer' }).then((r) => writeFileSync(path.join(src, 'big.bin'), r.stdout as Uint8Array));
  await execa('chown', ['-R', '1000:1000', src]);
  const want = await checksums((argv) => execa(argv[0], argv.slice(1), { reject: false }) as never, src);

  const m = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'ext4', '-o', 'rw', img, mnt));
  assert.is(m.exitCode, 0, m.stderr);
  assert.match(m.stdout, new RegExp(`^mounted ${mnt} \\(id \\d+\\)`));
  assert.ok(caller.fuseMounts().includes(mnt), 'the mount is in the caller namespace');
  assert.not.ok(readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${mnt} `), 'and not in the broker namespace');

  const cp = await caller.run(['sh', '-c', `cp -r "${src}/." "${mnt}/" && sync`]);
  assert.is(cp.exitCode, 0, cp.stderr);
  assert.is(await checksums((argv) => caller.run(argv), mnt), want);

  const l = await caller.run(clientArgs(broker.socket, 'list', '--json'));
  const mounts = JSON.parse(l.stdout).mounts;
  assert.is(mounts.length, 1);
  assert.is(mounts[0].state, 'running');
  assert.is(mounts[0].target, mnt);

  const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
  assert.is(u.exitCode, 0, u.stderr);
  assert.not.ok(caller.fuseMounts().includes(mnt), 'detached');
  const fsck = await execa('e2fsck', ['-fn', img], { reject: false });
  assert.is(fsck.exitCode, 0, `e2fsck -fn: ${fsck.stdout}`);

  const ro = await caller.run(clientArgs(broker.socket, 'mount', '-o', 'ro', img, mnt));
  assert.is(ro.exitCode, 0, ro.stderr);
  assert.is(await checksums((argv) => caller.run(argv), mnt), want, 'data still there read-only');
  const w = await caller.run(['sh', '-c', `echo x > "${mnt}/new-file"`]);
  assert.is.not(w.exitCode, 0, 'writes are refused');
  assert.match(w.stderr, /Read-only file system/);
  const u2 = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
  assert.is(u2.exitCode, 0, u2.stderr);
  assert.equal(caller.fuseMounts(), []);
});

s('the running server is sandboxed: dynamic uid, no capabilities, NNP, seccomp, own namespaces, minimal root', async () => {
  const img = await makeImage(dir, 'sandbox.img', 16);
  const mnt = makeDir(path.join(dir, 'mnt-sandbox'));
  const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', img, mnt));
  assert.is(m.exitCode, 0, m.stderr);
  const { server_pid: pid, uid } = JSON.parse(m.stdout) as { server_pid: number; uid: number };
  try {
    const st = procStatus(pid);
    assert.is(st.Name, 'fuse2fs');
    const [lo, hi] = DEFAULTS.uidRange;
    assert.ok(uid >= lo && uid <= hi, `uid ${uid} in the dynamic range`);
    assert.equal(st.Uid.split(/\s+/).map(Number), [uid, uid, uid, uid]);
    assert.equal(st.Gid.split(/\s+/).map(Number), [uid, uid, uid, uid]);
    for (const k of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) assert.is(st[k], '0000000000000000', k);
    assert.is(st.NoNewPrivs, '1');
    assert.is(st.Seccomp, '2');
    const brokerPid = broker.proc.pid!;
    for (const ns of ['mnt', 'net', 'pid', 'ipc', 'uts', 'user', 'cgroup']) {
      assert.is.not(readlinkSync(`/proc/${pid}/ns/${ns}`), readlinkSync(`/proc/${brokerPid}/ns/${ns}`), `${ns} namespace differs`);
    }
    assert.is(readFileSync(`/proc/${pid}/uid_map`, 'utf8').trim().split('\n').length, 1, 'one uid_map line');
    const rootDir = `/proc/${pid}/root`;
    assert.not.ok(existsSync(`${rootDir}/home`), 'no /home');
    assert.not.ok(existsSync(`${rootDir}/root`), 'no /root');
    const dev = readdirSync(`${rootDir}/dev`).sort();
    for (const d of dev) assert.not.match(d, /^(sd|vd|nvme|loop|mem|kmsg|fuse$)/, `no host device ${d}`);
    assert.ok(dev.includes('null'));
    // Only the server's own fds: stdio, the FUSE fd, the image; nothing of the broker's.
    const fds = readdirSync(`/proc/${pid}/fd`).map((f) => readlinkSync(`/proc/${pid}/fd/${f}`));
    assert.ok(fds.length <= 12, `few fds: ${fds.join(', ')}`);
    assert.ok(fds.some((f) => f === '/dev/fuse'), 'holds the FUSE fd');
    assert.ok(fds.some((f) => f.endsWith('sandbox.img')), 'holds the injected image');
  } finally {
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
  }
  await waitFor('the server to be gone', () => instanceProcesses(broker.runtimeDir).length === 0, 5000);
});

s('ext2 and ext3 images mount too', async () => {
  for (const t of ['ext2', 'ext3']) {
    const img = await makeImage(dir, `${t}.img`, 16, t);
    const mnt = makeDir(path.join(dir, `mnt-${t}`));
    const m = await caller.run(clientArgs(broker.socket, 'mount', '-t', t, img, mnt));
    assert.is(m.exitCode, 0, m.stderr);
    const w = await caller.run(['sh', '-c', `echo hello > "${mnt}/hello" && cat "${mnt}/hello"`]);
    assert.is(w.stdout.trim(), 'hello');
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
    assert.is((await execa('e2fsck', ['-fn', img], { reject: false })).exitCode, 0);
  }
});

s('a uid 1000 caller in its own user namespace (unshare -Ur -m) gets its mount', async () => {
  // The superblock belongs to the caller's user namespace, so image ids are read through its map
  // (0 -> 1000 under unshare -Ur): a root-owned image root is the caller's own directory there.
  const img = await makeImage(dir, 'userns.img', 16, 'ext4', 0);
  chownSync(img, USER, USER);
  const mnt = makeDir(path.join(dir, 'mnt-userns'));
  const script = `${clientArgs(broker.socket, 'mount', img, mnt).map((a) => `'${a}'`).join(' ')} && echo data > '${mnt}/f' && cat '${mnt}/f' && grep -c ' ${mnt} ' /proc/self/mountinfo && ${clientArgs(broker.socket, 'unmount', mnt).map((a) => `'${a}'`).join(' ')}`;
  const r = await execa('setpriv', ['--reuid', '1000', '--regid', '1000', '--clear-groups', '--', 'unshare', '-Ur', '-m', '--', 'sh', '-c', script], { reject: false, timeout: 60000 });
  assert.is(r.exitCode, 0, r.stderr);
  assert.match(r.stdout, /mounted .* \(id \d+\)\ndata\n1\nunmounted/);
});

s('mounts of two callers stay apart; list shows only your own; others cannot unmount yours', async () => {
  const img = await makeImage(dir, 'own.img', 16);
  const mnt = makeDir(path.join(dir, 'mnt-own'));
  const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', img, mnt));
  assert.is(m.exitCode, 0, m.stderr);
  const id = JSON.parse(m.stdout).id as number;
  try {
    const other = await caller.run(clientArgs(broker.socket, '--json', 'list'), { uid: 1001 });
    assert.equal(JSON.parse(other.stdout).mounts, []);
    const steal = await caller.run(clientArgs(broker.socket, 'unmount', '--id', String(id)), { uid: 1001 });
    assert.is(steal.exitCode, 2);
    assert.match(steal.stderr, /EPERM_MOUNT/);
    const notRoot = await caller.run(clientArgs(broker.socket, 'unmount', dir), { uid: 1000 });
    assert.match(notRoot.stderr, /ENOENT_MOUNT/);
  } finally {
    const u = await caller.run(clientArgs(broker.socket, 'unmount', '--id', String(id)));
    assert.is(u.exitCode, 0, u.stderr);
  }
});

s('a server that cannot start (not an ext4 image) is reported with its stderr and leaves nothing', async () => {
  const bad = path.join(dir, 'zeros.img');
  writeFileSync(bad, Buffer.alloc(4 << 20));
  chownSync(bad, 1000, 1000);
  const mnt = makeDir(path.join(dir, 'mnt-bad'));
  const r = await caller.run(clientArgs(broker.socket, 'mount', bad, mnt));
  assert.is(r.exitCode, 2);
  assert.match(r.stderr, /ESERVER_START: .*(superblock|Bad magic|bad magic|ext2)/i);
  assert.equal(caller.fuseMounts(), []);
  await waitFor('no leftover processes', () => instanceProcesses(broker.runtimeDir).length === 0, 5000);
  // The broker keeps serving.
  const l = await caller.run(clientArgs(broker.socket, 'list'));
  assert.is(l.exitCode, 0, l.stderr);
});

s.run();
