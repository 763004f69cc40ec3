// Attacks on the mount(8) path (docs/security.md, "Attacks tried"): mount(8) is setuid root,
// fstab is root's, and the helper runs as the user. Each attack must get what the user could
// get with fuse-svc-request alone, and nothing more.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { lstatSync, statSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { CLIENT, USER, instanceProcesses, makeDir, makeImage, type Broker } from '../lib/harness.js';
import { closeMountSuite, fsckClean, instancesGone, openMountSuite, type MountEnv } from '../lib/mount-helper-env.js';

const OTHER = 1001;
let broker: Broker;
let env: MountEnv;
let dir: string;

test.before(async () => {
  ({ dir, broker, env } = await openMountSuite('fuse-svc-mounthelper-adv-'));
});

test.after(() => closeMountSuite({ dir, broker, env }));

test('the helper is never setuid: the link target has no setuid/setgid bit', () => {
  assert.ok(lstatSync(path.join(dir, 'sbin', 'mount.fuse-svc')).isSymbolicLink());
  assert.is(statSync(CLIENT).mode & 0o6000, 0);
});

test("a user line naming another user's image: EACCES by the image's own permissions, nothing mounted", async () => {
  const odir = makeDir(path.join(dir, 'other'), OTHER, 0o755);
  const img = await makeImage(odir, 'secret.img', 16, 'ext4', OTHER); // 0600, uid 1001
  const mnt = makeDir(path.join(dir, 'steal'), USER);
  env.fstab([`${img} ${mnt} fuse-svc.ext4 users,noauto,rw,socket=${broker.socket} 0 0`]);
  for (const opts of ['', '-o ro']) {
    const r = await env.sh(`mount ${opts} ${mnt}`, USER);
    assert.is(r.exitCode, 32, r.stderr);
    assert.match(r.stderr.trim(), /^mount\.fuse-svc: cannot open source .*EACCES[^\n]*$/);
    assert.not.ok(env.caller.fuseMounts().includes(mnt));
  }
  assert.equal(instanceProcesses(broker.runtimeDir), []);
});

test('options injection from the command line: a second socket= is refused (the fstab line stands); quotes and escapes are refused', async () => {
  const udir = makeDir(path.join(dir, 'inj'), USER);
  const img = await makeImage(udir, 'disk.img', 16);
  const mnt = makeDir(path.join(udir, 'mnt'), USER);
  env.fstab([`${img} ${mnt} fuse-svc.ext4 user,noauto,rw,socket=${broker.socket} 0 0`]);
  // util-linux 2.38 appends the user's -o after the line's options.
  const s = await env.sh(`mount -o socket=${udir}/fake.sock ${mnt}`, USER);
  assert.is(s.exitCode, 1, s.stderr);
  assert.match(s.stderr, /socket= is given twice/);
  // libmount keeps commas inside double quotes: "x,dev" must not split differently here.
  const q = await env.sh(`mount -o 'norecovery="x,dev"' ${mnt}`, USER);
  assert.is(q.exitCode, 1, q.stderr);
  assert.match(q.stderr, /holds a quote/);
  assert.not.ok(env.caller.fuseMounts().includes(mnt));
  // A comma smuggled into one option (fstab's \\054 escape) arrives split: dev is refused by the broker.
  env.fstab([`${img} ${mnt} fuse-svc.ext4 user,noauto,rw,norecovery\\054dev,socket=${broker.socket} 0 0`]);
  const e = await env.sh(`mount ${mnt}`, USER);
  assert.is(e.exitCode, 32, e.stderr);
  assert.match(e.stderr.trim(), /^mount\.fuse-svc: EOPTION: option "dev"[^\n]+$/);
  assert.not.ok(env.caller.fuseMounts().includes(mnt));
  // exec from the command line lifts user's implied noexec, but suid/dev stay refused.
  env.fstab([`${img} ${mnt} fuse-svc.ext4 user,noauto,rw,socket=${broker.socket} 0 0`]);
  const d = await env.sh(`mount -o exec,suid ${mnt}`, USER);
  assert.is(d.exitCode, 32, d.stderr);
  assert.match(d.stderr.trim(), /^mount\.fuse-svc: EOPTION: [^\n]+$/);
  assert.equal(instanceProcesses(broker.runtimeDir), []);
});

test('no fstab line: mount(8) still runs the helper for a user (it leaves helper types to the helper), as the user: no more than fuse-svc-request', async () => {
  const udir = makeDir(path.join(dir, 'noline'), USER);
  const img = await makeImage(udir, 'disk.img', 16);
  const mnt = makeDir(path.join(udir, 'mnt'), USER);
  const secret = await makeImage(makeDir(path.join(dir, 'other2'), OTHER, 0o755), 'secret.img', 16, 'ext4', OTHER);
  env.fstab([]);
  const steal = await env.sh(`mount -t fuse-svc.ext4 -o socket=${broker.socket} ${secret} ${mnt}`, USER);
  assert.is(steal.exitCode, 32, steal.stderr);
  assert.match(steal.stderr, /EACCES/);
  const r = await env.sh(`mount -t fuse-svc.ext4 -o socket=${broker.socket} ${img} ${mnt}`, USER);
  assert.is(r.exitCode, 0, r.stderr);
  const l = await execa(CLIENT, ['--socket', broker.socket, '--json', 'list'], { timeout: 30000 });
  const live = (JSON.parse(l.stdout) as { mounts: { owner_uid: number; state: string }[] }).mounts.filter((x) => x.state === 'running');
  assert.equal(live.map((x) => x.owner_uid), [USER], 'the mount is the user\'s, not root\'s');
  const u = await env.sh(`umount ${mnt}`, USER);
  assert.is(u.exitCode, 0, u.stderr);
  await instancesGone(broker);
  const fsck = await fsckClean(img);
  assert.ok(fsck.ok, fsck.out);
});

test("a user cannot unmount root's mount: not with umount(8), not by calling umount.fuse-svc directly (EPERM_MOUNT)", async () => {
  const img = await makeImage(dir, 'root.img', 16, 'ext4', 0);
  const mnt = makeDir(path.join(dir, 'rootmnt'), 0);
  env.fstab([]);
  const m = await env.sh(`mount -t fuse-svc.ext4 -o rw,helper=fuse-svc,socket=${broker.socket} ${img} ${mnt}`);
  assert.is(m.exitCode, 0, m.stderr);
  const u = await env.sh(`umount ${mnt}`, USER);
  assert.is.not(u.exitCode, 0);
  assert.ok(env.caller.fuseMounts().includes(mnt), 'still mounted');
  const h = await env.sh(`/sbin/umount.fuse-svc ${mnt}`, USER, { FUSE_SVC_SOCKET: broker.socket });
  assert.is(h.exitCode, 32, h.stderr);
  assert.match(h.stderr.trim(), /^umount\.fuse-svc: EPERM_MOUNT: [^\n]+$/);
  assert.ok(env.caller.fuseMounts().includes(mnt), 'still mounted');
  const r = await env.sh(`umount ${mnt}`, 0, { FUSE_SVC_SOCKET: broker.socket });
  assert.is(r.exitCode, 0, r.stderr);
  await instancesGone(broker);
  const fsck = await fsckClean(img);
  assert.ok(fsck.ok, fsck.out);
});

test.run();
