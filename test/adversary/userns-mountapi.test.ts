// Issue 9 section 1, the new mount API: a caller in its own user namespace (`unshare -Urm`) owns
// its mount namespace, so mount_setattr and open_tree(OPEN_TREE_CLONE) + move_mount may clear
// nodev/nosuid on its broker mount. The kernel must still refuse the image's device nodes (the
// superblock belongs to the caller's user namespace: SB_I_NODEV), and set-id / file-capability
// files may grant only what the caller already has in its namespace. A plain uid 1000 may not
// use either call at all. Ordinary use (write, read back) keeps working.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { chmodSync, statSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { clientArgs, fdCount, instanceProcesses, makeDir, newCaller, startBroker, tmpdir, USER, waitFor, type Broker, type Caller } from '../lib/harness.js';
import { FILE_CAPS, MOUNT_PROBE, PRIV_PROBE, deviceImage, hostSecret, rootOnlyLoop, type Loop } from '../lib/podman.js';

const s = suite('adversary: user namespaces and the new mount API');
let broker: Broker;
let dir: string;
let loop: Loop | undefined;
let caller: Caller;

const q = (a: string[]) => a.map((x) => `'${x}'`).join(' ');
const brokerPid = (): number => broker.proc.pid ?? -1;

async function asUsernsCaller(script: string): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const r = await execa('setpriv', ['--reuid', String(USER), '--regid', String(USER), '--clear-groups', '--', 'unshare', '-Urm', '--propagation', 'private', '--', 'sh', '-c', script], {
    reject: false,
    timeout: 60000,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/' },
    extendEnv: false,
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') };
}

async function nothingLeft(fds: number): Promise<void> {
  await waitFor('no instance process of this broker', () => instanceProcesses(broker.runtimeDir).length === 0, 15000);
  await waitFor(`broker fds back to ${fds}`, () => fdCount(brokerPid()) <= fds, 10000);
}

s.before(async () => {
  dir = tmpdir('fuse-svc-mountapi-');
  chmodSync(dir, 0o755);
  loop = await rootOnlyLoop(dir);
  broker = await startBroker();
  caller = await newCaller();
});

s.after(async () => {
  await caller?.close();
  await broker?.stop();
  await loop?.detach();
  await execa('rm', ['-rf', dir], { reject: false, timeout: 60000 });
});

s('unshare -Urm: mount_setattr, open_tree clones (of the mount and of its parent) + move_mount, mknod: no device node opens', async () => {
  const fds = fdCount(brokerPid());
  const img = await deviceImage(dir, 'api.img', loop!);
  const top = makeDir(path.join(dir, 'top'));
  const mnt = makeDir(path.join(top, 'mnt'));
  const dest = makeDir(path.join(dir, 'dest'));
  const dest2 = makeDir(path.join(dir, 'dest2'));
  const dest3 = makeDir(path.join(dir, 'dest3'));
  const P = MOUNT_PROBE;
  const script = [
    `${q(clientArgs(broker.socket, 'mount', img, mnt))} || exit 10`,
    `echo data > '${mnt}/pub/f' && cat '${mnt}/pub/f'`,
    `${P} setattr '${mnt}' '${mnt}/loopdev'`,
    `grep ' ${mnt} ' /proc/self/mountinfo | grep -Eq 'nodev|nosuid|noexec' || echo FLAGS-CLEARED`,
    `${P} setattr '${mnt}' '${mnt}/fusedev'`,
    `${P} clone '${mnt}' loopdev '${dest}'`,
    `${P} clone '${mnt}' fusedev '${dest2}'`,
    // a recursive clone of a directory above the mount carries the FUSE mount inside it
    `${P} clone '${top}' mnt/loopdev '${dest3}'`,
    `head -c 64 '${dest3}/mnt/loopdev'`,
    `${P} mknod '${mnt}/pub/newnode'`,
    `umount -R '${dest}'; umount -R '${dest2}'; umount -R '${dest3}'`,
    `cat '${mnt}/pub/f'`,
    q(clientArgs(broker.socket, 'unmount', mnt)),
  ].join('\n');
  const r = await asUsernsCaller(script);
  assert.is(r.exitCode, 0, `${r.stdout}\n${r.stderr}\n${broker.logs()}`);
  assert.match(r.stdout, /^data\n[\s\S]*^data$/m, 'ordinary use: written and read back');
  // the calls themselves succeed: the caller owns its mount namespace
  assert.is((r.stdout.match(/^mount_setattr ok$/gm) ?? []).length, 2, r.stdout);
  assert.match(r.stdout, /FLAGS-CLEARED/, 'nodev, nosuid and noexec were really cleared');
  assert.is((r.stdout.match(/^open_tree ok$/gm) ?? []).length, 3, r.stdout);
  assert.is((r.stdout.match(/^mount_setattr\(clone\) ok$/gm) ?? []).length, 3, r.stdout);
  assert.is((r.stdout.match(/^move_mount ok$/gm) ?? []).length, 3, r.stdout);
  const opens = r.stdout.split('\n').filter((l) => l.startsWith('open '));
  assert.is(opens.length, 8, r.stdout);
  for (const l of opens) assert.match(l, /^open \S+ failed: EACCES$/, l);
  assert.not.ok(r.stdout.includes(loop!.secret), 'the root-only loop file was read');
  assert.match(r.stderr, /loopdev'?( for reading)?: Permission denied/);
  assert.match(r.stdout, /^mknod failed: EPERM$/m);
  await nothingLeft(fds);
});

s('unshare -Urm: set-id and file-capability files after mount_setattr cleared nosuid give nothing beyond the namespace', async () => {
  const fds = fdCount(brokerPid());
  const img = await deviceImage(dir, 'setid.img', loop!);
  const mnt = makeDir(path.join(dir, 'mnt-setid'));
  const out = makeDir(path.join(dir, 'out'), USER, 0o777);
  const secretFile = path.join(dir, 'hostsecret');
  const secret = hostSecret(secretFile);
  const script = [
    `${q(clientArgs(broker.socket, 'mount', img, mnt))} || exit 10`,
    `${PRIV_PROBE} --nocaps '${mnt}/capprobe' -r '${secretFile}' -w '${out}/nosuid-cap'`,
    `${MOUNT_PROBE} setattr '${mnt}' '${mnt}/fusedev'`,
    `echo '== suid'`,
    `${PRIV_PROBE} --nocaps '${mnt}/suidprobe' -r '${secretFile}' -w '${out}/suid-root'`,
    `${PRIV_PROBE} --nocaps '${mnt}/suid5probe' -r '${secretFile}' -w '${out}/suid-5'`,
    `${PRIV_PROBE} --nocaps '${mnt}/capprobe' -r '${secretFile}' -w '${out}/cap'`,
    q(clientArgs(broker.socket, 'unmount', mnt)),
  ].join('\n');
  const r = await asUsernsCaller(script);
  assert.is(r.exitCode, 0, `${r.stdout}\n${r.stderr}\n${broker.logs()}`);
  const [nosuid, suid] = r.stdout.split('== suid');
  assert.ok(suid !== undefined, r.stdout);
  assert.match(nosuid, /^ruid=0 euid=0 capeff=0000000000000000$/m, 'nosuid: the capabilities do not count');
  assert.match(r.stdout, /^mount_setattr ok$/m);
  const caps = FILE_CAPS.toString(16).padStart(16, '0');
  assert.match(suid, new RegExp(`^ruid=0 euid=0 capeff=${caps}$`, 'm'), "the file's capabilities, in the caller's namespace only");
  // uid 5 of the image has no mapping in a namespace that maps only 0: the bit is ignored
  assert.is((suid.match(/^ruid=0 euid=0 capeff=0000000000000000$/gm) ?? []).length, 2, suid);
  assert.is((r.stdout.match(/failed: EACCES$/gm) ?? []).length, 5, 'a host root-only file stays unreadable (4) and the device node closed (1)');
  assert.not.ok(r.stdout.includes(secret), 'the host secret was read');
  for (const f of ['nosuid-cap', 'suid-root', 'suid-5', 'cap']) assert.is(statSync(path.join(out, f)).uid, USER, `${f}: made as host uid ${statSync(path.join(out, f)).uid}`);
  await nothingLeft(fds);
});

s('unshare -Um without any uid_map: refused EATTACH with one line (no id to give the superblock); the broker keeps serving', async () => {
  const fds = fdCount(brokerPid());
  const img = await deviceImage(dir, 'nomap.img', loop!);
  const mnt = makeDir(path.join(dir, 'mnt-nomap'));
  const r = await execa('setpriv', ['--reuid', String(USER), '--regid', String(USER), '--clear-groups', '--', 'unshare', '-Um', '--propagation', 'private', '--', 'sh', '-c', `id -u; ${q(clientArgs(broker.socket, 'mount', img, mnt))}; echo rc=$?; grep -c ' ${mnt} ' /proc/self/mountinfo`], {
    reject: false,
    timeout: 60000,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/' },
    extendEnv: false,
  });
  assert.match(String(r.stdout), /^65534\nrc=2\n0$/, `${r.stdout}\n${r.stderr}`);
  assert.match(String(r.stderr), /^fuse-svc-request: EATTACH: the caller's uid or gid has no mapping in its own user namespace$/m);
  assert.is(String(r.stderr).trim().split('\n').length, 1, 'one line');
  await nothingLeft(fds);
  // the broker still serves the same uid
  const m = await caller.run(clientArgs(broker.socket, 'mount', img, mnt));
  assert.is(m.exitCode, 0, m.stderr);
  const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
  assert.is(u.exitCode, 0, u.stderr);
  await nothingLeft(fds);
});

s('plain uid 1000: mount_setattr and open_tree clone are refused (EPERM); the mount keeps nosuid,nodev', async () => {
  const fds = fdCount(brokerPid());
  const img = await deviceImage(dir, 'plain.img', loop!);
  const mnt = makeDir(path.join(dir, 'mnt-plain'));
  const dest = makeDir(path.join(dir, 'dest-plain'));
  const m = await caller.run(clientArgs(broker.socket, 'mount', img, mnt));
  assert.is(m.exitCode, 0, m.stderr);
  try {
    const a = await caller.run([MOUNT_PROBE, 'setattr', mnt, `${mnt}/loopdev`]);
    assert.match(a.stdout, /^mount_setattr failed: EPERM$/m);
    assert.match(a.stdout, /^open \S+ failed: EACCES$/m);
    const c = await caller.run([MOUNT_PROBE, 'clone', mnt, 'loopdev', dest]);
    assert.match(c.stdout, /^open_tree failed: EPERM$/m);
    const line = caller.mountinfo().split('\n').find((l) => l.split(' ')[4] === mnt) ?? '';
    assert.match(line, /nosuid,nodev/);
    const w = await caller.run(['sh', '-c', `echo x > '${mnt}/pub/g' && cat '${mnt}/pub/g'`]);
    assert.is(w.stdout.trim(), 'x', w.stderr);
  } finally {
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
  }
  await nothingLeft(fds);
});

s.run();
