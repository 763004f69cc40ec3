// Issue 13 §1: util-linux's own mount(8) and umount(8) with fuse-svc's helpers
// (/sbin/mount.fuse-svc, /sbin/umount.fuse-svc = the static client), in a private mount
// namespace with a test fstab: root's `mount -t fuse-svc.ext4`, fstab `user` lines mounted and
// unmounted by uid 1000, findmnt's view, mount(8)'s exit status for the broker's refusals, and
// images clean (e2fsck -fn) after each umount.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import path from 'node:path';
import { execa } from 'execa';
import { CLIENT, USER, instanceProcesses, makeDir, makeImage, type Broker } from './lib/harness.js';
import { closeMountSuite, fsckClean, instancesGone, openMountSuite, type MountEnv } from './lib/mount-helper-env.js';

let broker: Broker;
let env: MountEnv;
let dir: string;

test.before(async () => {
  ({ dir, broker, env } = await openMountSuite('fuse-svc-mounthelper-'));
});

test.after(() => closeMountSuite({ dir, broker, env }));

async function debugfsCat(img: string, file: string): Promise<string> {
  const r = await execa('debugfs', ['-R', `cat ${file}`, img], { reject: false, timeout: 30000 });
  return String(r.stdout);
}

test('root: mount -t fuse-svc.ext4 -o rw,socket=... IMG DIR; findmnt; umount DIR ends the instance; image clean', async () => {
  const img = await makeImage(dir, 'root.img', 16, 'ext4', 0);
  const mnt = makeDir(path.join(dir, 'rootmnt'), 0);
  const m = await env.sh(`mount -t fuse-svc.ext4 -o rw,socket=${broker.socket} ${img} ${mnt}`);
  assert.is(m.exitCode, 0, m.stderr);
  assert.is(m.stdout + m.stderr, '', 'mount helpers are silent on success');
  const f = await env.sh(`findmnt -n -o SOURCE,FSTYPE,OPTIONS ${mnt}`);
  const [source, fstype, opts] = f.stdout.trim().split(/\s+/);
  assert.is(source, img, 'the source is the image path');
  assert.is(fstype, 'fuse.ext4');
  assert.ok(/(^|,)nosuid(,|$)/.test(opts) && /(^|,)nodev(,|$)/.test(opts) && /user_id=0(,|$)/.test(opts), opts);
  const w = await env.sh(`echo root-data > ${mnt}/f && sync`);
  assert.is(w.exitCode, 0, w.stderr);
  const u = await env.sh(`umount ${mnt}`);
  assert.is(u.exitCode, 0, u.stderr);
  assert.not.ok(env.caller.fuseMounts().includes(mnt), 'gone from the mount table');
  await instancesGone(broker);
  const fsck = await fsckClean(img);
  assert.ok(fsck.ok, fsck.out);
  assert.is((await debugfsCat(img, '/f')).trim(), 'root-data');
});

test('fstab user line: uid 1000 runs mount DIR and umount DIR; the broker sees uid 1000; noexec applied; image clean', async () => {
  const udir = makeDir(path.join(dir, 'u1'), USER);
  const img = await makeImage(udir, 'disk.img', 16);
  const mnt = makeDir(path.join(udir, 'mnt'), USER);
  env.fstab([`${img} ${mnt} fuse-svc.ext4 user,noauto,nofail,_netdev,x-note=1,rw,socket=${broker.socket} 0 0`]);
  const m = await env.sh(`mount ${mnt}`, USER);
  assert.is(m.exitCode, 0, m.stderr);
  const f = await env.sh(`findmnt -n -o SOURCE,FSTYPE,OPTIONS ${mnt}`);
  const [source, fstype, opts] = f.stdout.trim().split(/\s+/);
  assert.is(source, img);
  assert.is(fstype, 'fuse.ext4');
  assert.ok(/(^|,)noexec(,|$)/.test(opts), `user implies noexec: ${opts}`);
  assert.ok(/user_id=1000(,|$)/.test(opts), opts);
  const l = await execa(CLIENT, ['--socket', broker.socket, '--json', 'list'], { timeout: 30000 });
  const mine = (JSON.parse(l.stdout) as { mounts: { owner_uid: number; target: string; state: string }[] }).mounts.filter((x) => x.state === 'running');
  assert.is(mine.length, 1);
  assert.is(mine[0].owner_uid, USER, 'the broker saw the user through SO_PEERCRED, not root');
  const w = await env.sh(`echo user-data > ${mnt}/f && sync`, USER);
  assert.is(w.exitCode, 0, w.stderr);
  const x = await env.sh(`cp /bin/true ${mnt}/t && ${mnt}/t`, USER);
  assert.is.not(x.exitCode, 0, 'noexec is in force');
  const u = await env.sh(`umount ${mnt}`, USER);
  assert.is(u.exitCode, 0, u.stderr);
  assert.not.ok(env.caller.fuseMounts().includes(mnt));
  await instancesGone(broker);
  const fsck = await fsckClean(img);
  assert.ok(fsck.ok, fsck.out);
  assert.is((await debugfsCat(img, '/f')).trim(), 'user-data');
});

test('helper=fuse-svc: umount(8) runs umount.fuse-svc as the user, which returns once the server has exited', async () => {
  const udir = makeDir(path.join(dir, 'u2'), USER);
  const img = await makeImage(udir, 'disk.img', 16);
  const mnt = makeDir(path.join(udir, 'mnt'), USER);
  env.fstab([`${img} ${mnt} fuse-svc.ext4 user,noauto,rw,helper=fuse-svc,socket=${broker.socket} 0 0`]);
  const m = await env.sh(`mount ${mnt}`, USER);
  assert.is(m.exitCode, 0, m.stderr);
  const w = await env.sh(`dd if=/dev/urandom of=${mnt}/big bs=1M count=4 status=none && echo tail > ${mnt}/f`, USER);
  assert.is(w.exitCode, 0, w.stderr);
  const u = await env.sh(`umount -v ${mnt}`, USER);
  assert.is(u.exitCode, 0, u.stderr);
  assert.match(u.stdout, /^unmounted .* \(id \d+\)$/m, 'umount.fuse-svc answered (the broker unmounted)');
  // No waiting: the broker's unmount answers after the server flushed and exited.
  assert.equal(instanceProcesses(broker.runtimeDir), [], 'no instance left when umount returns');
  const fsck = await fsckClean(img);
  assert.ok(fsck.ok, fsck.out);
});

test('a refused option: the broker\'s code and one line, mount(8)\'s exit status 32, nothing mounted', async () => {
  const udir = makeDir(path.join(dir, 'u3'), USER);
  const img = await makeImage(udir, 'disk.img', 16);
  const mnt = makeDir(path.join(udir, 'mnt'), USER);
  env.fstab([`${img} ${mnt} fuse-svc.ext4 user,noauto,rw,socket=${broker.socket} 0 0`]);
  for (const opt of ['dev', 'suid', 'allow_other', 'fsname=x']) {
    const r = await env.sh(`mount -o ${opt} ${mnt}`, USER);
    assert.is(r.exitCode, 32, `${opt}: ${r.stderr}`);
    const lines = r.stderr.trim().split('\n');
    assert.is(lines.length, 1, r.stderr);
    assert.match(lines[0], /^mount\.fuse-svc: EOPTION: /);
    assert.not.ok(env.caller.fuseMounts().includes(mnt));
  }
  const t = await env.sh(`mount -t fuse-svc.nosuchfs -o socket=${broker.socket} ${img} ${mnt}`);
  assert.is(t.exitCode, 32, t.stderr);
  assert.match(t.stderr.trim(), /^mount\.fuse-svc: EFSTYPE: [^\n]+$/);
  assert.equal(instanceProcesses(broker.runtimeDir), []);
});

test('mount.fuse-svc --help, -f (fake) and usage errors (exit 1)', async () => {
  const h = await execa(path.join(dir, 'sbin', 'mount.fuse-svc'), ['--help'], { reject: false });
  assert.is(h.exitCode, 0);
  assert.match(h.stdout, /mount -t fuse-svc\.TYPE/);
  assert.match(h.stdout, /EXIT STATUS/);
  const uh = await execa(path.join(dir, 'sbin', 'umount.fuse-svc'), ['--help'], { reject: false });
  assert.is(uh.exitCode, 0);
  assert.match(uh.stdout, /helper=fuse-svc/);
  const fake = await env.sh(`mount -f -t fuse-svc.ext4 -o ro,socket=/nonexistent ${dir}/fstab ${dir}/sbin`);
  assert.is(fake.exitCode, 0, fake.stderr);
  assert.not.ok(env.caller.fuseMounts().includes(`${dir}/sbin`), '-f mounts nothing');
  const bad = await execa(path.join(dir, 'sbin', 'mount.fuse-svc'), ['only-one'], { reject: false });
  assert.is(bad.exitCode, 1);
  const badT = await execa(path.join(dir, 'sbin', 'mount.fuse-svc'), ['a', 'b', '-t', 'ext4'], { reject: false });
  assert.is(badT.exitCode, 1);
  assert.match(badT.stderr, /-t must be fuse-svc\.TYPE/);
});

test.run();
