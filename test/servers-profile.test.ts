// `fuse-svcd profile` (issue 11, "For server authors"): fuse2fs runs in its sandbox with no
// policy, every call recorded by the launcher's notifier, over a workload; the written .sandbox
// and policy then mount and serve that workload (real fuse2fs, real kernel mount, uid 1000),
// and a call the workload did not need is not in the policy: the read-only profile has no
// pwrite64, and under it the same server cannot write the image.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { execa } from 'execa';
import { DAEMON, ROOT, clientArgs, instanceProcesses, makeDir, makeImage, newCaller, startBroker, tmpdir, waitFor, type Broker, type Caller } from './lib/harness.js';
import { makeTree } from './lib/servers.js';

const SERVER_DIR = path.join(ROOT, 'server');
const POLICY_DIR = path.join(ROOT, 'policies', 'seccomp');
const fuse2fsDef = () => JSON.parse(readFileSync(path.join(SERVER_DIR, 'fuse2fs.json'), 'utf8')) as Record<string, unknown>;
/** Names the policy file's ALLOW rules name. */
const allowed = (file: string) => new Set((JSON.parse(readFileSync(file, 'utf8')) as { syscalls: { names: string[]; action: string }[] }).syscalls.filter((s) => s.action === 'SCMP_ACT_ALLOW').flatMap((s) => s.names));

// $MNT is the mount point (the profile command sets it; the broker test below sets it too).
const WRITE = 'mkdir "$MNT/w" && cp -r "$TREE/." "$MNT/w/" && sync -f "$MNT/w/big.bin" && cd "$MNT/w" && find . -type f | LC_ALL=C sort | xargs -d "\\n" sha256sum';
const READ = 'cd "$MNT" && find . -type f | LC_ALL=C sort | xargs -d "\\n" sha256sum';

const t = suite('fuse-svcd profile');
let dir: string;
let tree: string;
let out: string;

t.before(async () => {
  dir = tmpdir();
  chmodSync(dir, 0o755);
  tree = await makeTree(dir);
  out = path.join(dir, 'out');
});
t.after(() => rmSync(dir, { recursive: true, force: true }));

const profile = (img: string, workload: string, name: string, o: string[] = []) =>
  execa(process.execPath, [DAEMON, 'profile', '-t', 'ext4', '--source', img, '--uid', '1000', '--workload', workload.replaceAll('$TREE', tree), '--out', out, '--name', name, ...o], { reject: false, timeout: 180000 });

t('--help is a manual page: what it does, what it writes, the exit status', async () => {
  const h = await execa(process.execPath, [DAEMON, 'profile', '--help'], { reject: false, timeout: 30000 });
  assert.is(h.exitCode, 0);
  for (const s of ['--workload', '--source', '--out', '$MNT', 'NAME.sandbox', 'NAME.json', 'EL3RST', 'Exit status']) assert.ok(h.stdout.includes(s), `${s} in:\n${h.stdout}`);
  const bad = await execa(process.execPath, [DAEMON, 'profile', '-t', 'nosuchfs', '--source', '/dev/null', '--workload', 'true', '--out', out], { reject: false, timeout: 30000 });
  assert.is(bad.exitCode, 64, bad.stderr);
  assert.match(bad.stderr, /no valid server definition .* serves type nosuchfs/);
});

t('profile fuse2fs over a write workload and over a read workload; the written policies hold what each needed and serve it', async () => {
  const img = await makeImage(dir, 'profile.img', 64);
  const pw = await profile(img, WRITE, 'ext4-write');
  assert.is(pw.exitCode, 0, `${pw.stdout}\n${pw.stderr}`);
  assert.match(pw.stdout, /recorded \d+ system calls; \d+ in the allow-list/);
  const pr = await profile(img, READ, 'ext4-read', ['-o', 'ro']);
  assert.is(pr.exitCode, 0, `${pr.stdout}\n${pr.stderr}`);
  assert.equal(readdirSync(out).sort(), ['ext4-read.json', 'ext4-read.sandbox', 'ext4-write.json', 'ext4-write.sandbox']);

  // The policies are generated from the written .sandbox files, as the shipped ones are.
  const base = allowed(path.join(POLICY_DIR, 'fuse2fs.json'));
  const w = allowed(path.join(out, 'ext4-write.json'));
  const r = allowed(path.join(out, 'ext4-read.json'));
  for (const n of w) assert.ok(base.has(n), `${n}: never wider than the definition's policy`);
  assert.ok(w.size < base.size, `narrower than the definition's policy (${w.size} < ${base.size})`);
  for (const n of ['read', 'pread64', 'pwrite64', 'execve', 'socketpair', 'recvmsg']) assert.ok(w.has(n), `the write profile has ${n}`);
  assert.not.ok(r.has('pwrite64'), 'a read-only mount never wrote the image: no pwrite64 in its profile');
  for (const n of ['socket', 'connect', 'inotify_init1', 'setxattr', 'mount']) assert.not.ok(w.has(n), `${n}: fuse2fs never called it`);
  const sb = readFileSync(path.join(out, 'ext4-write.sandbox'), 'utf8');
  assert.match(sb, /^# Written by fuse-svcd profile \(fuse2fs, type ext4\)/m);
  assert.match(sb, /^SystemCallFilter=\S+( \S+)*$/m);
  assert.not.match(sb, /^SystemCallFilter=@system-service$/m, 'the group lines are replaced');
  assert.match(sb, /^RestrictAddressFamilies=AF_UNIX$/m, 'the other directives stay');

  // A broker whose fuse2fs copies use the written files: the write workload is served under
  // its own profile, and fails under the read profile (pwrite64 is refused with EL3RST).
  const sd = path.join(dir, 'server');
  const pd = path.join(dir, 'policies');
  mkdirSync(sd);
  mkdirSync(pd);
  for (const n of ['ext4-write', 'ext4-read']) {
    copyFileSync(path.join(out, `${n}.sandbox`), path.join(sd, `${n}.sandbox`));
    copyFileSync(path.join(out, `${n}.json`), path.join(pd, `${n}.json`));
    writeFileSync(path.join(sd, `${n}.json`), JSON.stringify({ ...fuse2fsDef(), name: n, fstypes: [n.replace('-', '')], seccompPolicy: n, sandbox: `${n}.sandbox` }, null, 2));
  }
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  const mnt = makeDir(path.join(dir, 'mnt'));
  try {
    broker = await startBroker({ config: { server_dir: sd, policy_dir: pd } });
    assert.not.match(broker.logs(), /definition refused/, broker.logs());
    caller = await newCaller();
    const img2 = await makeImage(dir, 'served.img', 64);
    const sh = (script: string) => caller!.run(['env', `MNT=${mnt}`, `TREE=${tree}`, 'sh', '-c', script]);
    const m = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'ext4write', img2, mnt));
    assert.is(m.exitCode, 0, `${m.stderr}\n${broker.logs().slice(-1500)}`);
    const ww = await sh(WRITE);
    assert.is(ww.exitCode, 0, ww.stderr);
    const want = (await execa('sh', ['-c', `cd "${tree}" && find . -type f | LC_ALL=C sort | xargs -d '\\n' sha256sum`])).stdout;
    assert.is(ww.stdout.trim(), want.trim(), 'the workload reads back what it wrote');
    assert.is((await caller.run(clientArgs(broker.socket, 'unmount', mnt))).exitCode, 0);
    await waitFor('the instance to end', () => instanceProcesses(broker!.runtimeDir).length === 0, 10000);
    const fsck = await execa('e2fsck', ['-fn', img2], { reject: false });
    assert.is(fsck.exitCode, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);

    const img3 = await makeImage(dir, 'refused.img', 64);
    const m2 = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'ext4read', img3, mnt));
    let wrote = false;
    if (m2.exitCode === 0) {
      wrote = (await sh(WRITE)).exitCode === 0;
      await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    }
    assert.not.ok(m2.exitCode === 0 && wrote, 'the read profile cannot serve the write workload');
    await waitFor('the instance to end', () => instanceProcesses(broker!.runtimeDir).length === 0, 10000);
  } finally {
    if (caller?.fuseMounts().includes(mnt)) await caller.run(clientArgs(broker!.socket, 'unmount', mnt));
    await broker?.stop();
    await caller?.close();
  }
});

t('a daemonizing server (exfat-fuse, the /dev/fuse hand-over) profiled: its policy holds the reaper\'s calls and mount(2), and serves the workload', async () => {
  const img = path.join(dir, 'exfat.img');
  await execa('truncate', ['-s', '64M', img]);
  await execa('mkfs.exfat', [img], { timeout: 30000 });
  await execa('chown', ['1000:1000', img]);
  await execa('chmod', ['600', img]);
  const p = await execa(process.execPath, [DAEMON, 'profile', '-t', 'exfat', '--source', img, '--uid', '1000', '--workload', WRITE.replaceAll('$TREE', tree), '--out', out, '--name', 'exfat-write'], { reject: false, timeout: 180000 });
  assert.is(p.exitCode, 0, `${p.stdout}\n${p.stderr}`);
  const a = allowed(path.join(out, 'exfat-write.json'));
  for (const n of ['mount', 'kill', 'wait4', 'rt_sigtimedwait', 'setsid']) assert.ok(a.has(n), `${n} in the profile`);
  const sd = path.join(dir, 'server-exfat');
  const pd = path.join(dir, 'policies-exfat');
  mkdirSync(sd);
  mkdirSync(pd);
  copyFileSync(path.join(out, 'exfat-write.sandbox'), path.join(sd, 'exfat-write.sandbox'));
  copyFileSync(path.join(out, 'exfat-write.json'), path.join(pd, 'exfat-write.json'));
  const def = JSON.parse(readFileSync(path.join(SERVER_DIR, 'exfat-fuse.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(path.join(sd, 'exfat.json'), JSON.stringify({ ...def, seccompPolicy: 'exfat-write', sandbox: 'exfat-write.sandbox' }, null, 2));
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  const mnt = makeDir(path.join(dir, 'mnt-exfat'));
  try {
    broker = await startBroker({ config: { server_dir: sd, policy_dir: pd } });
    assert.not.match(broker.logs(), /definition refused/, broker.logs());
    caller = await newCaller();
    const img2 = path.join(dir, 'exfat2.img');
    await execa('truncate', ['-s', '64M', img2]);
    await execa('mkfs.exfat', [img2], { timeout: 30000 });
    await execa('chown', ['1000:1000', img2]);
    const m = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'exfat', img2, mnt));
    assert.is(m.exitCode, 0, `${m.stderr}\n${broker.logs().slice(-1500)}`);
    const w = await caller.run(['env', `MNT=${mnt}`, 'sh', '-c', WRITE.replaceAll('$TREE', tree)]);
    assert.is(w.exitCode, 0, w.stderr);
    const want = (await execa('sh', ['-c', `cd "${tree}" && find . -type f | LC_ALL=C sort | xargs -d '\\n' sha256sum`])).stdout;
    assert.is(w.stdout.trim(), want.trim());
    assert.is((await caller.run(clientArgs(broker.socket, 'unmount', mnt))).exitCode, 0);
    await waitFor('the instance to end', () => instanceProcesses(broker!.runtimeDir).length === 0, 10000);
    const fsck = await execa('fsck.exfat', ['-n', img2], { reject: false });
    assert.is(fsck.exitCode, 0, `${fsck.stdout}${fsck.stderr}`);
  } finally {
    if (caller?.fuseMounts().includes(mnt)) await caller.run(clientArgs(broker!.socket, 'unmount', mnt));
    await broker?.stop();
    await caller?.close();
  }
});

t('a transport server (sshfs --via a local sftp-server) profiled: a narrower policy that serves the same reads and writes', async () => {
  const remote = path.join(dir, 'remote');
  mkdirSync(remote);
  await execa('cp', ['-r', `${tree}/.`, remote]);
  await execa('chown', ['-R', '1000:1000', remote]);
  // its stderr away from the client's: the COMMAND outlives the client, whose pipes would stay open
  const via = `exec /usr/lib/openssh/sftp-server -d ${remote} 2>/dev/null`;
  const work = 'cat "$MNT"/sub/*.txt >/dev/null && echo written > "$MNT/new.txt" && cat "$MNT/new.txt"';
  const p = await execa(process.execPath, [DAEMON, 'profile', '-t', 'sshfs', '--via', via, '--source', `:${remote}`, '--uid', '1000', '--workload', work, '--out', out, '--name', 'sshfs-rw'], { reject: false, timeout: 180000 });
  assert.is(p.exitCode, 0, `${p.stdout}\n${p.stderr}`);
  assert.is(readFileSync(path.join(remote, 'new.txt'), 'utf8'), 'written\n', 'the profiled write landed on the remote side');
  rmSync(path.join(remote, 'new.txt'));
  const a = allowed(path.join(out, 'sshfs-rw.json'));
  const base = allowed(path.join(POLICY_DIR, 'sshfs.json'));
  for (const n of a) assert.ok(base.has(n), `${n}: within sshfs's policy`);
  for (const n of ['socket', 'connect', 'sendmsg', 'recvmsg']) assert.not.ok(a.has(n), `${n} stays out`);
  const sd = path.join(dir, 'server-sshfs');
  const pd = path.join(dir, 'policies-sshfs');
  mkdirSync(sd);
  mkdirSync(pd);
  copyFileSync(path.join(out, 'sshfs-rw.sandbox'), path.join(sd, 'sshfs-rw.sandbox'));
  copyFileSync(path.join(out, 'sshfs-rw.json'), path.join(pd, 'sshfs-rw.json'));
  const def = JSON.parse(readFileSync(path.join(SERVER_DIR, 'sshfs.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(path.join(sd, 'sshfs.json'), JSON.stringify({ ...def, seccompPolicy: 'sshfs-rw', sandbox: 'sshfs-rw.sandbox' }, null, 2));
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  const mnt = makeDir(path.join(dir, 'mnt-sshfs'));
  try {
    broker = await startBroker({ config: { server_dir: sd, policy_dir: pd } });
    assert.not.match(broker.logs(), /definition refused/, broker.logs());
    caller = await newCaller();
    const m = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'sshfs', '--via', via, `:${remote}`, mnt));
    assert.is(m.exitCode, 0, `${m.stderr}\n${broker.logs().slice(-1500)}`);
    const w = await caller.run(['env', `MNT=${mnt}`, 'sh', '-c', work]);
    assert.is(w.exitCode, 0, w.stderr);
    assert.is(w.stdout, 'written');
    assert.is((await caller.run(clientArgs(broker.socket, 'unmount', mnt))).exitCode, 0);
    await waitFor('the instance to end', () => instanceProcesses(broker!.runtimeDir).length === 0, 10000);
    assert.is(readFileSync(path.join(remote, 'new.txt'), 'utf8'), 'written\n');
  } finally {
    if (caller?.fuseMounts().includes(mnt)) await caller.run(clientArgs(broker!.socket, 'unmount', mnt));
    await broker?.stop();
    await caller?.close();
  }
});

t('the launcher refuses seccomp_profile beside a policy (a profiled instance is never a policed one by mistake)', () => {
  const spec = [
    ['version', '1'], ['id', '7'], ['rundir', dir], ['uid', '61000'], ['gid', '61000'], ['exec', '/usr/bin/true'], ['arg', 'true'],
    ['seccomp_default', 'allow'], ['seccomp_profile', path.join(dir, 'p.syscalls')],
  ].map((r) => r.join('\t')).join('\n') + '\n';
  // the spec on fd 3, as the broker gives it
  const p = spawnSync('sh', ['-c', `exec "${path.join(ROOT, 'build', 'Release', 'fuse-svc-launcher')}" instance 3<&0 </dev/null`], { input: spec, timeout: 10000, encoding: 'utf8' });
  assert.is(p.status, 64, `${p.stdout}${p.stderr}`);
  assert.match(p.stdout + p.stderr, /seccomp_profile records what the server calls: not with a seccomp policy/);
});

t.run();
