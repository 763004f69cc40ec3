// fusermount's mount point and option rules (issue 9 sections 2 and 6), against a real broker,
// as uid 1000 in a private mount namespace. Each attack is asserted to fail with its code, and
// ordinary use next to it to still work. Rules: docs/security.md "What a caller may mount".
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, constants, openSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { clientArgs, fdCount, makeDir, makeImage, ROOT, waitFor, type Broker, type Caller, openEnv, closeEnv } from '../lib/harness.js';
import { rawRequest, type RawReply } from '../lib/raw.js';

const s = suite('fusermount rules');
let broker: Broker;
let caller: Caller;
let dir: string;
let img: string;

s.before(async () => {
  ({ dir, broker, caller } = await openEnv());
  img = await makeImage(dir, 'disk.img', 16);
});

s.after(async () => {
  await closeEnv({ dir, broker, caller });
});

const mount = (target: string, opts = 'ro', source = img) => caller.run(clientArgs(broker.socket, 'mount', '-t', 'ext4', '-o', opts, source, target));

async function refused(target: string, code: string, opts = 'ro'): Promise<void> {
  const r = await mount(target, opts);
  assert.is(r.exitCode, 2, `${target}: refused (${r.stdout}${r.stderr})`);
  assert.match(r.stderr, new RegExp(`fuse-svc-request: ${code}: `), `${target}: ${r.stderr}`);
  assert.not.ok(caller.fuseMounts().includes(target), `${target}: nothing mounted`);
}

async function mountsAndUnmounts(target: string, opts = 'ro'): Promise<void> {
  const r = await mount(target, opts);
  assert.is(r.exitCode, 0, `${target}: ${r.stderr}`);
  assert.ok(caller.fuseMounts().includes(target), `${target} is mounted`);
  const u = await caller.run(clientArgs(broker.socket, 'unmount', target));
  assert.is(u.exitCode, 0, u.stderr);
}

s('T4: uid 1000 cannot mount over /tmp, /var/tmp, /dev/shm, /run/lock (sticky, owned by root)', async () => {
  const fds = fdCount(broker.proc.pid!);
  for (const t of ['/tmp', '/var/tmp', '/dev/shm', '/run/lock']) await refused(t, 'EPERM_TARGET');
  // The broker drops a caller's descriptors just after the reply (fdsafe.ts): the static client
  // can exit before that, so wait (bounded) for the count to come back.
  await waitFor('no broker descriptor kept', () => fdCount(broker.proc.pid!) <= fds, 5000).catch(() => {
    assert.is(fdCount(broker.proc.pid!), fds, 'no broker descriptor kept');
  });
});

s('T4: a sticky directory the caller owns may be its mount point', async () => {
  await mountsAndUnmounts(makeDir(path.join(dir, 'own-sticky'), 1000, 0o1777));
});

s('T4: a sticky directory owned by root, mode 1777, is refused even though the caller may write it', async () => {
  await refused(makeDir(path.join(dir, 'root-sticky'), 0, 0o1777), 'EPERM_TARGET');
});

s('T4/T5: the parent plays no part: a root-owned 0777 dir inside a root-owned sticky dir is allowed (fusermount allows it)', async () => {
  const parent = makeDir(path.join(dir, 'sticky-parent'), 0, 0o1777);
  await mountsAndUnmounts(makeDir(path.join(parent, 'open'), 0, 0o777));
  await mountsAndUnmounts(makeDir(path.join(parent, 'mine'), 1000, 0o755));
  await refused(makeDir(path.join(parent, 'roots'), 0, 0o755), 'EPERM_TARGET');
});

s('T5: no write permission on the mount point is refused (root-owned 0755, own 0555, group without w)', async () => {
  await refused(makeDir(path.join(dir, 'root-755'), 0, 0o755), 'EPERM_TARGET');
  await refused(makeDir(path.join(dir, 'own-555'), 1000, 0o555), 'EPERM_TARGET');
  // the owner class decides: 0077 owned by the caller is not writable for it
  await refused(makeDir(path.join(dir, 'own-077'), 1000, 0o077), 'EPERM_TARGET');
  await mountsAndUnmounts(makeDir(path.join(dir, 'other-777'), 0, 0o777));
});

s('T3: procfs and sysfs (not on the allowed magic list) are refused before any permission check', async () => {
  await refused('/proc', 'EFSTYPE_TARGET');
  await refused('/sys', 'EFSTYPE_TARGET');
  await refused('/sys/kernel', 'EFSTYPE_TARGET');
});

s('S3: a write-only source descriptor is refused with EBADFD_SOURCE for ro and rw', async () => {
  // O_WRONLY without O_TRUNC: the image must survive for the tests after this one
  const src = openSync(img, constants.O_WRONLY);
  const tgt = openSync(makeDir(path.join(dir, 'wo-target'), 1000), 'r');
  try {
    for (const options of ['ro', 'rw']) {
      const r = await rawRequest(broker.socket, JSON.stringify({ v: 1, op: 'mount', fstype: 'ext4', options, fds: ['source', 'target'] }), [src, tgt]);
      assert.ok((r as unknown) !== 'closed', 'a reply');
      assert.is((r as RawReply).ok, false);
      const rep = r as RawReply;
      assert.is(rep.code, 'EBADFD_SOURCE', `${options}: ${rep.code}: ${rep.message}`);
      assert.match(rep.message!, /write-only/);
    }
  } finally {
    closeSync(src);
    closeSync(tgt);
  }
});

s('noexec is applied: exec of a file on the mount fails with EACCES; without it exec works', async () => {
  for (const noexec of [false, true]) {
    const mnt = makeDir(path.join(dir, `exec-${noexec}`), 1000);
    const r = await mount(mnt, noexec ? 'rw,noexec' : 'rw');
    assert.is(r.exitCode, 0, r.stderr);
    try {
      const line = caller.mountinfo().split('\n').find((l) => l.split(' ')[4] === mnt)!;
      assert.is(/[ ,]noexec[ ,]/.test(line.split(' ')[5] + ' '), noexec, line);
      const e = await caller.run(['sh', '-c', `cp /usr/bin/true "${mnt}/t" && chmod 755 "${mnt}/t" && "${mnt}/t"; echo "rc=$?"`]);
      // sh reports EACCES of execve as "Permission denied", status 126
      if (noexec) {
        assert.match(e.stdout, /rc=126/, e.stdout + e.stderr);
        assert.match(e.stderr, /Permission denied/);
      } else assert.match(e.stdout, /rc=0/, e.stdout + e.stderr);
    } finally {
      await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    }
  }
});

s('default_permissions is applied as a FUSE mount option: the kernel refuses a 0000 file to its owner', async () => {
  const mnt = makeDir(path.join(dir, 'dp'), 1000);
  const r = await mount(mnt, 'rw,default_permissions');
  assert.is(r.exitCode, 0, r.stderr);
  try {
    const line = caller.mountinfo().split('\n').find((l) => l.split(' ')[4] === mnt)!;
    assert.match(line.split(' - ')[1], /default_permissions/);
    const e = await caller.run(['sh', '-c', `echo x > "${mnt}/f" && chmod 000 "${mnt}/f" && cat "${mnt}/f"`]);
    assert.is.not(e.exitCode, 0, 'cat of a 0000 file fails');
    assert.match(e.stderr, /Permission denied/);
  } finally {
    await caller.run(clientArgs(broker.socket, 'unmount', mnt));
  }
});

s('every allowed option of every server definition mounts (data-driven from server/*.json)', async () => {
  const defs = readdirSync(path.join(ROOT, 'server')).filter((f) => f.endsWith('.json'));
  assert.ok(defs.length > 0);
  let n = 0;
  for (const f of defs) {
    const def = JSON.parse(readFileSync(path.join(ROOT, 'server', f), 'utf8')) as { fstypes: string[]; options: { allowed: string[] } };
    // The image here is ext4: test/servers.test.ts mounts the other definitions' options on images of their own format.
    if (!def.fstypes.includes('ext4')) continue;
    for (const opt of def.options.allowed) {
      const mnt = makeDir(path.join(dir, `opt-${n++}`), 1000);
      const r = await caller.run(clientArgs(broker.socket, 'mount', '-t', def.fstypes[0], '-o', `ro,${opt}`, img, mnt));
      assert.is(r.exitCode, 0, `${f}: -o ${opt}: ${r.stderr}`);
      const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
      assert.is(u.exitCode, 0, u.stderr);
    }
  }
  assert.ok(n > 0, 'some options were tried');
});

s.run();
