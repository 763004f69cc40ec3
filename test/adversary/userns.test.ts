// Issue 9 section 1: device nodes and set-id files of an image stay powerless, whatever a caller
// in its own user namespace remounts, and ordinary use keeps working.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { chownSync, chmodSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { clientArgs, makeDir, makeImage, newCaller, startBroker, tmpdir, USER, type Broker, type Caller } from '../lib/harness.js';

const s = suite('adversary: user namespaces, devices and set-id files');
let broker: Broker;
let dir: string;
let caller: Caller;

/** An image whose root is root-owned, holding a 0666 copy of /dev/fuse and a setuid-root binary. */
async function hostileImage(name: string, rootOwner: number): Promise<string> {
  const img = await makeImage(dir, name, 16, 'ext4', rootOwner);
  const cmds = path.join(dir, `${name}.debugfs`);
  writeFileSync(cmds, ['mknod fusedev c 10 229', 'sif fusedev mode 020666', 'write /usr/bin/id suidid', 'sif suidid mode 0104755', 'sif suidid uid 0', 'sif suidid gid 0'].join('\n') + '\n');
  await execa('debugfs', ['-w', '-f', cmds, img], { timeout: 30000 });
  chownSync(img, USER, USER);
  chmodSync(img, 0o600);
  return img;
}

const q = (a: string[]) => a.map((x) => `'${x}'`).join(' ');

s.before(async () => {
  dir = tmpdir('fuse-svc-userns-');
  chmodSync(dir, 0o755);
  broker = await startBroker();
  caller = await newCaller();
});

s.after(async () => {
  await caller?.close();
  await broker?.stop();
  rmSync(dir, { recursive: true, force: true });
});

s('userns caller: remount,bind,dev and a fresh bind with dev do not make device nodes usable; setuid gives nothing', async () => {
  const img = await hostileImage('userns.img', 0);
  const mnt = makeDir(path.join(dir, 'mnt-userns'));
  const bind = makeDir(path.join(dir, 'bind-userns'));
  const script = [
    `${q(clientArgs(broker.socket, 'mount', img, mnt))} || exit 10`,
    `grep ' ${mnt} ' /proc/self/mountinfo | grep -q nodev || exit 11`,
    `stat -c 'owner=%u' '${mnt}/suidid'`,
    `echo data > '${mnt}/f' && cat '${mnt}/f'`,
    `cat '${mnt}/fusedev' > /dev/null && echo OPEN0`,
    `mount -o remount,bind,dev,suid '${mnt}' && echo REMOUNTED`,
    `grep ' ${mnt} ' /proc/self/mountinfo | grep -q nodev || echo DEVFLAG`,
    `cat '${mnt}/fusedev' > /dev/null && echo OPEN1`,
    `mount --bind '${mnt}' '${bind}' && mount -o remount,bind,dev,suid '${bind}' && echo BOUND`,
    `cat '${bind}/fusedev' > /dev/null && echo OPEN2`,
    `'${mnt}/suidid' -u; '${mnt}/suidid' -u -r`,
    `umount '${bind}'`,
    q(clientArgs(broker.socket, 'unmount', mnt)),
  ].join('\n');
  const r = await execa('setpriv', ['--reuid', '1000', '--regid', '1000', '--clear-groups', '--', 'unshare', '-Urm', '--propagation', 'private', '--', 'sh', '-c', script], { reject: false, timeout: 60000 });
  assert.is(r.exitCode, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /owner=0\n/, 'root-owned image files show as the namespace root');
  assert.match(r.stdout, /data\n/);
  assert.match(r.stdout, /REMOUNTED/, 'the caller may change its own mount flags');
  assert.match(r.stdout, /DEVFLAG/, 'nodev was really cleared');
  assert.match(r.stdout, /BOUND/);
  assert.not.match(r.stdout, /OPEN\d/, 'a device node of the image opened');
  // the setuid binary runs as the caller: uid 0 of its namespace (its own uid outside), never more
  assert.match(r.stdout, /\n0\n0\n/);
  assert.match(r.stderr, /fusedev: Permission denied/);
});

s('plain uid 1000 cannot remount dev; its mount stays nosuid,nodev', async () => {
  const img = await hostileImage('plain.img', USER);
  const mnt = makeDir(path.join(dir, 'mnt-plain'));
  const m = await caller.run(clientArgs(broker.socket, 'mount', img, mnt));
  assert.is(m.exitCode, 0, m.stderr);
  try {
    const line = caller.mountinfo().split('\n').find((l) => l.split(' ')[4] === mnt) ?? '';
    assert.match(line, /nosuid,nodev/);
    const re = await caller.run(['mount', '-o', 'remount,bind,dev', mnt]);
    assert.is.not(re.exitCode, 0);
    const open = await caller.run(['sh', '-c', `: < '${mnt}/fusedev'`]);
    assert.is.not(open.exitCode, 0);
    assert.match(open.stderr, /Permission denied/);
    const id = await caller.run([`${mnt}/suidid`, '-u']);
    assert.is(id.stdout.trim(), String(USER), 'setuid bit ignored');
    const w = await caller.run(['sh', '-c', `echo x > '${mnt}/g' && cat '${mnt}/g'`]);
    assert.is(w.stdout.trim(), 'x', w.stderr);
  } finally {
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
  }
});

s('userns caller moves its mount away and puts a decoy where it was: unmount by the old path is refused, by id detaches the moved mount only', async () => {
  const img = await hostileImage('moved.img', 0);
  const mnt = makeDir(path.join(dir, 'mnt-moved'));
  const away = makeDir(path.join(dir, 'away-moved'));
  const cli = (...a: string[]) => q(clientArgs(broker.socket, ...a));
  // Inside its own user and mount namespace the caller may move the mount and mount over the
  // old path; the broker's detach must follow the mount it made (by mount id), never a path.
  const script = [
    `ID=$(${cli('--json', 'mount', img, mnt)} | sed -n 's/.*"id":\\([0-9]*\\).*/\\1/p'); [ -n "$ID" ] || exit 10`,
    `echo data > '${mnt}/f' || exit 11`,
    `mount -n --move '${mnt}' '${away}' || exit 12`,
    `mount -n -t tmpfs decoy '${mnt}' && echo keep > '${mnt}/decoy' || exit 13`,
    `${cli('unmount', mnt)}; echo "OLDPATH=$?"`,
    `cat '${mnt}/decoy'`,
    `cat '${away}/f'`,
    `${cli('unmount', '--id', '$ID')} >/dev/null && echo BYID`,
    `grep -c ' ${away} ' /proc/self/mountinfo; grep -q ' ${mnt} .* - tmpfs decoy' /proc/self/mountinfo && echo DECOY_STAYS`,
    `umount -n '${mnt}'`,
  ].join('\n').replace("'$ID'", '"$ID"');
  const r = await execa('setpriv', ['--reuid', '1000', '--regid', '1000', '--clear-groups', '--', 'unshare', '-Urm', '--propagation', 'private', '--', 'sh', '-c', script], { reject: false, timeout: 60000 });
  assert.is(r.exitCode, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /OLDPATH=2\n/, 'the old path (now the decoy tmpfs) is not a broker mount');
  assert.match(r.stderr, /ENOENT_MOUNT/);
  assert.match(r.stdout, /keep\ndata\n/, 'decoy and moved mount both readable before');
  assert.match(r.stdout, /BYID\n0\nDECOY_STAYS/, 'by id: the moved mount went, the decoy stayed');
  const l = await caller.run(clientArgs(broker.socket, 'list'), { uid: USER });
  assert.not.match(l.stdout, /running/, l.stdout);
});

s.run();
