// Issue 9 section 1 from a rootless Podman container (Debian's podman, uid 1000, a busybox image
// made with `podman import`, the broker's socket directory and the published static client bound
// in): ordinary use works and shows the image's root as the container's root; no remount, bind,
// mount_setattr, open_tree clone or mknod makes a device node of the image usable; set-id and
// file-capability files grant nothing beyond the container's user namespace.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { chmodSync, existsSync, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { clientArgs, fdCount, instanceProcesses, makeDir, newCaller, startBroker, tmpdir, USER, waitFor, type Broker } from '../lib/harness.js';
import { FILE_CAPS, deviceImage, hostSecret, podmanProcesses, rootOnlyLoop, rootlessPodman, type Loop, type Podman } from '../lib/podman.js';

const s = suite('adversary: rootless Podman container');
let broker: Broker;
let work: string; // root-owned 0755: podman's home, run dir, storage, image rootfs
let dir: string; // images, mount points, loop file
let data: string; // bound at /data (owned by uid 1000 = the container's root)
let loop: Loop | undefined;
let pm: Podman | undefined;
let client: string;
let sockName: string;
let serial = 0;

/** The static client the broker publishes for containers (the runtime dir's bin/). */
function publishedClient(b: Broker): string {
  for (const d of [path.dirname(b.socket), b.runtimeDir]) {
    const p = path.join(d, 'bin', 'fuse-svc-request');
    if (existsSync(p)) return p;
  }
  throw new Error(`the broker published no static client under ${b.runtimeDir}: ${b.logs()}`);
}

/** Bind mounts of every container: the socket's directory and the client read-only, data read-write. */
function volumes(): string[] {
  return ['--network', 'none', '-v', `${path.dirname(broker.socket)}:/run/fuse-svc:ro`, '-v', `${client}:/bin/fuse-svc-request:ro`, '-v', `${data}:/data`];
}

const C = () => `fuse-svc-request --socket /run/fuse-svc/${sockName}`;

/** A fresh hostile image and empty mount points in /data, for one test. */
async function freshImage(): Promise<string> {
  const name = `disk${serial++}.img`;
  await deviceImage(data, name, loop!);
  for (const m of ['mnt', 'mnt2', 'mnt3']) makeDir(path.join(data, m), USER);
  return `/data/${name}`;
}

/** What the broker and the host hold before a test, to compare after it. */
const brokerPid = (): number => broker.proc.pid ?? -1;
function snapshot(): { fds: number } {
  return { fds: fdCount(brokerPid()) };
}
async function assertNothingLeft(before: { fds: number }): Promise<void> {
  await waitFor('no instance process of this broker', () => instanceProcesses(broker.runtimeDir).length === 0, 15000);
  await waitFor(`broker fds back to ${before.fds} (now ${fdCount(brokerPid())})`, () => fdCount(brokerPid()) <= before.fds, 10000);
  const [node, ...args] = clientArgs(broker.socket, '--json', 'list');
  const live = await execa(node, args, { timeout: 15000 });
  const mounts = (JSON.parse(live.stdout) as { mounts: { state: string }[] }).mounts.filter((m) => m.state === 'running');
  assert.is(mounts.length, 0, `running mounts left: ${live.stdout}`);
}

s.before(async () => {
  const which = await execa('sh', ['-c', 'command -v podman && command -v newuidmap && test -x /bin/busybox'], { reject: false, timeout: 10000 });
  if (which.exitCode !== 0) throw new Error(`podman, uidmap and busybox-static are needed (apt-get install podman uidmap busybox-static): ${which.stdout}${which.stderr}`);
  dir = tmpdir('fuse-svc-podman-');
  work = path.join(dir, 'podman');
  mkdirSync(work, { mode: 0o755 });
  chmodSync(work, 0o755);
  data = makeDir(path.join(dir, 'data'), USER);
  loop = await rootOnlyLoop(dir);
  broker = await startBroker();
  client = publishedClient(broker);
  sockName = path.basename(broker.socket);
  pm = await rootlessPodman(work);
});

s.after(async () => {
  try {
    await pm?.cleanup();
  } finally {
    await broker?.stop();
    await loop?.detach();
    await execa('rm', ['-rf', dir], { reject: false, timeout: 60000 });
  }
  assert.equal(podmanProcesses(), [], 'no podman, conmon or runtime process of uid 1000 left');
});

s('ordinary container (no capabilities, no-new-privileges): mount, owners as the container root, write, list, unmount, read back', async () => {
  const before = snapshot();
  const img = await freshImage();
  const script = [
    `${C()} mount ${img} /data/mnt || exit 10`,
    `grep ' /data/mnt ' /proc/self/mountinfo`,
    `stat -c 'owner=%u:%g %n' /data/mnt /data/mnt/rootonly /data/mnt/fusedev`,
    `cat /data/mnt/rootonly`,
    `echo hello-from-podman > /data/mnt/hello && cat /data/mnt/hello`,
    `${C()} list`,
    `mount -o remount,bind,dev /data/mnt 2>/dev/null && echo REMOUNTED`,
    `mount-probe setattr /data/mnt /data/mnt/fusedev`,
    `priv-probe -d /data/mnt/fusedev -d /data/mnt/loopdev`,
    `${C()} unmount /data/mnt || exit 11`,
    `grep -q ' /data/mnt ' /proc/self/mountinfo && echo STILL-MOUNTED`,
    `${C()} mount -o ro ${img} /data/mnt || exit 12`,
    `cat /data/mnt/hello`,
    `${C()} unmount /data/mnt || exit 13`,
  ].join('\n');
  const r = await pm!.run(`fsvc-ordinary-${process.pid}`, [...volumes(), '--cap-drop', 'ALL', '--security-opt', 'no-new-privileges'], script);
  assert.is(r.exitCode, 0, `${r.stdout}\n${r.stderr}\n${broker.logs()}`);
  assert.match(r.stdout, /^mounted \/data\/mnt \(id \d+\)$/m);
  assert.match(r.stdout, / \/data\/mnt rw,nosuid,nodev\S* .*- fuse\.ext4 /, 'a FUSE mount with nosuid,nodev in the container');
  assert.match(r.stdout, /user_id=0,group_id=0/, "the superblock's ids are the container's root");
  // the image's root-owned files show as the container's root, not as the overflow id 65534
  assert.match(r.stdout, /^owner=0:0 \/data\/mnt$/m);
  assert.match(r.stdout, /^owner=0:0 \/data\/mnt\/rootonly$/m);
  assert.not.match(r.stdout, /owner=65534/);
  assert.match(r.stdout, /^image-root-only$/m, "the image's root-only file reads for the container's root");
  assert.match(r.stdout, /^hello-from-podman$\n[\s\S]*^hello-from-podman$/m, 'written, and read back after a read-only mount');
  assert.match(r.stdout, new RegExp(`running\\s+ext4\\s+rw\\s+${img.replace(/[.]/g, '\\.')}\\s+/data/mnt\\s+${USER}\\s`), 'list shows the mount as uid 1000');
  assert.not.match(r.stdout, /REMOUNTED/, 'no capabilities: no remount');
  assert.match(r.stdout, /^mount_setattr failed: EPERM$/m);
  assert.match(r.stdout, /^open \/data\/mnt\/fusedev failed: EACCES$/m);
  assert.match(r.stdout, /^open \/data\/mnt\/loopdev failed: EACCES$/m);
  assert.match(r.stdout, /^unmounted \/data\/mnt \(id \d+\)$/m);
  assert.not.match(r.stdout, /STILL-MOUNTED/);
  await assertNothingLeft(before);
  const fsck = await execa('e2fsck', ['-fn', path.join(data, path.basename(img))], { reject: false, timeout: 30000 });
  assert.is(fsck.exitCode, 0, `the image is clean after unmount: ${fsck.stdout}`);
});

s('privileged rootless container: remount,bind,dev, a dev bind (of the mount and of the node alone), mount_setattr, open_tree clone + move_mount, mknod: no device node of the image opens', async () => {
  const before = snapshot();
  const img = await freshImage();
  const M = '/data/mnt';
  const script = [
    `${C()} mount ${img} ${M} || exit 10`,
    `priv-probe -d ${M}/fusedev -d ${M}/loopdev`,
    `mount -o remount,bind,dev,suid ${M} && echo REMOUNTED`,
    `grep ' ${M} ' /proc/self/mountinfo | grep -q nodev || echo NODEV-CLEARED`,
    `priv-probe -d ${M}/fusedev -d ${M}/loopdev`,
    `head -c 64 ${M}/loopdev`,
    `mount --bind ${M} /data/mnt2 && mount -o remount,bind,dev /data/mnt2 && echo BOUND`,
    `priv-probe -d /data/mnt2/fusedev -d /data/mnt2/loopdev`,
    `umount /data/mnt2`,
    // the node alone, bound over a file of the container's own root
    `touch /tmp/node && mount --bind ${M}/fusedev /tmp/node && mount -o remount,bind,dev /tmp/node && echo FILE-BOUND`,
    `priv-probe -d /tmp/node`,
    `umount /tmp/node`,
    `mount-probe setattr ${M} ${M}/loopdev`,
    `mount-probe clone ${M} loopdev /data/mnt2`,
    `mount-probe clone ${M} fusedev /data/mnt3`,
    `umount /data/mnt2; umount /data/mnt3`,
    `mount-probe mknod ${M}/pub/newnode`,
    `${C()} unmount ${M} || exit 11`,
  ].join('\n');
  const r = await pm!.run(`fsvc-devices-${process.pid}`, [...volumes(), '--privileged'], script);
  assert.is(r.exitCode, 0, `${r.stdout}\n${r.stderr}\n${broker.logs()}`);
  // the attacks really ran: the container's root owns its mount namespace and changed the flags
  assert.match(r.stdout, /REMOUNTED/);
  assert.match(r.stdout, /NODEV-CLEARED/);
  assert.match(r.stdout, /^BOUND$/m);
  assert.match(r.stdout, /^FILE-BOUND$/m);
  assert.match(r.stdout, /^mount_setattr ok$/m);
  assert.match(r.stdout, /^open_tree ok$/m);
  assert.match(r.stdout, /^mount_setattr\(clone\) ok$/m);
  assert.match(r.stdout, /^move_mount ok$/m);
  // ...and no node opened, on any copy of the mount
  const opens = r.stdout.split('\n').filter((l) => l.startsWith('open '));
  assert.is(opens.length, 12, r.stdout);
  for (const l of opens) assert.match(l, /^open \S+ failed: EACCES$/, l);
  assert.not.ok(r.stdout.includes(loop!.secret) || r.stderr.includes(loop!.secret), 'the root-only loop file was read');
  assert.match(r.stderr, /loopdev'?: Permission denied/);
  assert.match(r.stdout, /^mknod failed: EPERM$/m, 'no new device node either');
  assert.match(r.stdout, /^unmounted \/data\/mnt \(id \d+\)$/m);
  await assertNothingLeft(before);

  // Control: the node is a real way to the loop device. Uid 1000 on the host cannot read the
  // device, and root (initial user namespace: flags are its only guard, its right) reads the
  // secret through the same node once it remounts dev. So the EACCES above is the kernel's.
  const denied = await execa('setpriv', ['--reuid', String(USER), '--regid', String(USER), '--clear-groups', '--', 'head', '-c', '16', loop!.dev], { reject: false, timeout: 10000 });
  assert.is.not(denied.exitCode, 0, 'uid 1000 cannot read the loop device on the host');
  const root = await newCaller();
  const mnt = makeDir(path.join(dir, 'root-mnt'), 0);
  try {
    const m = await root.run(clientArgs(broker.socket, 'mount', path.join(data, path.basename(img)), mnt), { uid: 0 });
    assert.is(m.exitCode, 0, m.stderr);
    const rd = await root.run(['sh', '-c', `mount -o remount,bind,dev '${mnt}' && head -c 64 '${mnt}/loopdev'`], { uid: 0 });
    assert.ok(rd.stdout.includes(loop!.secret), `root reads the loop device through the node: ${rd.stdout} ${rd.stderr}`);
  } finally {
    await root.run(clientArgs(broker.socket, 'unmount', mnt), { uid: 0 });
    await root.close();
  }
  await assertNothingLeft(before);
});

s('privileged rootless container: set-id and file-capability files grant nothing beyond the container', async () => {
  const before = snapshot();
  const img = await freshImage();
  const out = path.join(data, 'out');
  makeDir(out, USER, 0o777);
  const secret = hostSecret(path.join(data, 'hostsecret'));
  const M = '/data/mnt';
  // priv-probe --nocaps: uid 0 of the container with SECBIT_NOROOT and no capabilities, so what
  // the probe then has came from the file's set-id bit or capabilities alone.
  const script = [
    `${C()} mount ${img} ${M} || exit 10`,
    `echo '== nosuid'`,
    `priv-probe --nocaps ${M}/suidprobe -w /data/out/nosuid-suid`,
    `priv-probe --nocaps ${M}/capprobe -r /data/hostsecret -w /data/out/nosuid-cap`,
    `mount -o remount,bind,suid ${M} && echo REMOUNTED`,
    `echo '== suid'`,
    `priv-probe --nocaps ${M}/suidprobe -r /data/hostsecret -w /data/out/suid-root`,
    `priv-probe --nocaps ${M}/suid5probe -r /data/hostsecret -w /data/out/suid-5`,
    `priv-probe --nocaps ${M}/capprobe -r /data/hostsecret -w /data/out/cap`,
    `${C()} unmount ${M} || exit 11`,
  ].join('\n');
  const r = await pm!.run(`fsvc-setid-${process.pid}`, [...volumes(), '--privileged'], script);
  assert.is(r.exitCode, 0, `${r.stdout}\n${r.stderr}\n${broker.logs()}`);
  const [nosuid, suid] = r.stdout.split('== suid');
  assert.ok(suid !== undefined, r.stdout);
  // nosuid as the broker made it: neither bit nor capabilities count
  assert.is((nosuid.match(/^ruid=0 euid=0 capeff=0000000000000000$/gm) ?? []).length, 2, nosuid);
  assert.match(r.stdout, /REMOUNTED/);
  // after remount,suid the kernel honours them, but within the container's namespace only
  const caps = FILE_CAPS.toString(16).padStart(16, '0');
  assert.match(suid, /^ruid=0 euid=0 capeff=0000000000000000$/m, 'setuid root = the container root, no capability (NOROOT)');
  assert.match(suid, /^ruid=0 euid=5 capeff=0000000000000000$/m, "setuid to the image's uid 5 = the container's uid 5");
  assert.match(suid, new RegExp(`^ruid=0 euid=0 capeff=${caps}$`, 'm'), "the file's capabilities, in the container's namespace");
  assert.is((r.stdout.match(/^read \/data\/hostsecret failed: EACCES$/gm) ?? []).length, 4, 'a host root-only file stays unreadable');
  assert.not.ok(r.stdout.includes(secret), 'the host secret was read');
  // what the probes created shows who they were on the host: never root
  const owner = (f: string) => statSync(path.join(out, f)).uid;
  for (const f of ['nosuid-suid', 'nosuid-cap', 'suid-root', 'cap']) assert.is(owner(f), USER, `${f} made by host uid ${owner(f)}`);
  assert.is(owner('suid-5'), pm!.subuid(5), 'uid 5 of the container is its subordinate uid on the host');
  await assertNothingLeft(before);
});

s('keep-id container (the caller is uid 1000, not root of its namespace, no capabilities): mounts, writes, and the nosuid mount keeps set-id files powerless', async () => {
  const before = snapshot();
  const img = await freshImage();
  const out = path.join(data, 'out-keepid');
  makeDir(out, USER, 0o777);
  const M = '/data/mnt';
  const script = [
    `id -u`,
    `${C()} mount ${img} ${M} || exit 10`,
    `grep ' ${M} ' /proc/self/mountinfo`,
    `stat -c 'owner=%u %n' ${M}/rootonly`,
    `echo keepid > ${M}/pub/k && cat ${M}/pub/k && stat -c 'owner=%u %n' ${M}/pub/k`,
    `mount -o remount,bind,suid ${M} 2>/dev/null && echo REMOUNTED`,
    `${M}/suidprobe -w /data/out-keepid/suid -d ${M}/fusedev`,
    `${C()} unmount ${M} || exit 11`,
  ].join('\n');
  const r = await pm!.run(`fsvc-keepid-${process.pid}`, [...volumes(), '--userns', 'keep-id', '--user', `${USER}:${USER}`, '--cap-drop', 'ALL'], script);
  assert.is(r.exitCode, 0, `${r.stdout}\n${r.stderr}\n${broker.logs()}`);
  assert.match(r.stdout, new RegExp(`^${USER}\n`), 'the caller is uid 1000 inside too');
  assert.match(r.stdout, new RegExp(`user_id=${USER},group_id=${USER}`), "the superblock's ids are the caller's ids in its namespace");
  assert.match(r.stdout, /^owner=0 \/data\/mnt\/rootonly$/m, "the image's root shows as the container's root");
  assert.match(r.stdout, new RegExp(`^keepid\nowner=${USER} /data/mnt/pub/k$`, 'm'));
  assert.not.match(r.stdout, /REMOUNTED/);
  assert.match(r.stdout, new RegExp(`^ruid=${USER} euid=${USER} capeff=0000000000000000$`, 'm'), 'setuid root ignored on the nosuid mount');
  assert.match(r.stdout, /^open \/data\/mnt\/fusedev failed: EACCES$/m);
  assert.is(statSync(path.join(out, 'suid')).uid, USER);
  await assertNothingLeft(before);
});

s('a target descriptor from another mount namespace of the container (via /proc/PID/root): nothing is mounted in either, the broker keeps serving', async () => {
  const before = snapshot();
  const img = await freshImage();
  const M = '/data/mnt';
  const script = [
    `unshare -m --propagation private sleep 60 &`,
    `P=$!`,
    `for i in 1 2 3 4 5 6 7 8 9 10; do [ "$(readlink /proc/$P/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] && break; sleep 0.2; done`,
    `[ "$(readlink /proc/$P/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] || { echo NO-OTHER-NS; kill $P; exit 12; }`,
    `${C()} mount ${img} /proc/$P/root${M}; echo rc=$?`,
    `grep -c ' ${M} ' /proc/self/mountinfo | sed 's/^/mine=/'`,
    `grep -c ' ${M} ' /proc/$P/mountinfo | sed 's/^/other=/'`,
    `kill $P`,
    `${C()} mount ${img} ${M} || exit 10`,
    `cat ${M}/rootonly`,
    `${C()} unmount ${M} || exit 11`,
  ].join('\n');
  const r = await pm!.run(`fsvc-otherns-${process.pid}`, [...volumes(), '--privileged'], script);
  assert.is(r.exitCode, 0, `${r.stdout}\n${r.stderr}\n${broker.logs()}`);
  assert.match(r.stdout, /^rc=2$/m, `refused: ${r.stdout}\n${r.stderr}`);
  assert.match(r.stderr, /^fuse-svc-request: EATTACH: .+$/m, 'the kernel refuses move_mount onto a mount of another namespace');
  assert.match(r.stdout, /^mine=0$/m);
  assert.match(r.stdout, /^other=0$/m);
  assert.match(r.stdout, /^image-root-only$/m, 'ordinary use right after');
  await assertNothingLeft(before);
});

s.run();
