// Runtime-dir attacks (issue 9 §3): a broker given a runtime dir or socket dir a user can write
// to, or a path through a group-writable parent or a symlink, refuses to start (exit 77) and
// touches nothing outside; `stop` signals no process a forged broker.pid names. Links planted
// in a pre-made state or public dir (by someone who could write there once) are refused or
// replaced, never followed; forged records are not believed; and a client container's view
// (the public dir bound read-only) reaches nothing of the state and cannot change the public
// dir, while ordinary mounts through it work.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, linkSync, lstatSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { DAEMON, NATIVE, USER, fdCount, instanceProcesses, makeDir, makeImage, newCaller, sleep, startBroker, tmpdir, waitFor, type Broker, type Caller } from '../lib/harness.js';
import { processStartTime } from '../../supervisor/instances.js';

const s = suite('runtime dir attacks');
let base: string;

s.before(() => {
  base = tmpdir('fuse-svc-rundir-');
});
s.after(() => {
  rmSync(base, { recursive: true, force: true });
});

async function runBroker(args: string[]): Promise<{ exitCode: number; stderr: string }> {
  const r = await execa(process.execPath, [DAEMON, ...args], { reject: false, timeout: 20000, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, extendEnv: false });
  return { exitCode: r.exitCode ?? -1, stderr: String(r.stderr) };
}

function refused(r: { exitCode: number; stderr: string }, re: RegExp): void {
  assert.is(r.exitCode, 77, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.is(lines.length, 1, `one line: ${r.stderr}`);
  assert.match(lines[0], re);
}

s('a user-owned runtime dir is refused (exit 77), nothing is created in it', async () => {
  const d = path.join(base, 'userdir');
  mkdirSync(d);
  chownSync(d, USER, USER);
  const r = await runBroker(['--runtime-dir', d]);
  refused(r, /userdir \(owner uid 1000, mode 0755\) is not owned by root/);
  assert.equal(readdirSync(d), []);
});

s('a runtime dir writable by group/other is refused, even root-owned', async () => {
  const d = path.join(base, 'gw');
  mkdirSync(d);
  chmodSync(d, 0o775);
  refused(await runBroker(['--runtime-dir', d]), /gw .*mode 0775.* is writable by group or others/);
  chmodSync(d, 0o1777); // sticky is fine for a parent, never for the runtime dir itself
  refused(await runBroker(['--runtime-dir', d]), /is writable by group or others$/);
});

s('a group-writable, non-sticky parent is refused; a sticky one (/tmp) is fine', async () => {
  const p = path.join(base, 'gwparent');
  mkdirSync(p);
  chmodSync(p, 0o770);
  refused(await runBroker(['--runtime-dir', path.join(p, 'run')]), /gwparent .* is writable by group or others and not sticky/);
  assert.equal(readdirSync(p), [], 'no runtime dir was made under an insecure parent');
  // A user-owned parent is refused too, even at 0755.
  const u = path.join(base, 'uparent');
  mkdirSync(u);
  chownSync(u, USER, USER);
  refused(await runBroker(['--runtime-dir', path.join(u, 'run')]), /uparent .* is not owned by root/);
});

s('a symlinked component is refused, never followed', async () => {
  const real = path.join(base, 'real');
  mkdirSync(real);
  symlinkSync(real, path.join(base, 'link'));
  refused(await runBroker(['--runtime-dir', path.join(base, 'link', 'run')]), /link is a symbolic link/);
  assert.equal(readdirSync(real), []);
  symlinkSync(real, path.join(base, 'rlink')); // the runtime dir itself a link
  refused(await runBroker(['--runtime-dir', path.join(base, 'rlink')]), /rlink is a symbolic link/);
});

s('links planted in a user-made dir at root-only files: refused, targets untouched', async () => {
  const secret = path.join(base, 'secret');
  mkdirSync(secret, { mode: 0o700 });
  const victim = path.join(secret, 'shadow');
  writeFileSync(victim, 'root only\n', { mode: 0o600 });
  const victimDir = path.join(secret, 'dir');
  mkdirSync(victimDir, { mode: 0o700 });
  const d = path.join(base, 'planted');
  mkdirSync(d);
  for (const [name, target] of [['broker.pid', victim], ['broker.lock', victim], ['bin', victimDir], ['instances', victimDir], ['uids', victimDir], ['proc', victimDir], ['broker.sock', victim]]) symlinkSync(target, path.join(d, name));
  chownSync(d, USER, USER);
  const before = { text: readFileSync(victim, 'utf8'), mode: statSync(victim).mode, dmode: statSync(victimDir).mode, ls: readdirSync(victimDir) };
  refused(await runBroker(['--runtime-dir', d]), /planted .* is not owned by root/);
  // The same links in a secure runtime dir with a user-owned socket dir: refused as well.
  refused(await runBroker(['--runtime-dir', path.join(base, 'okrun'), '--socket', path.join(d, 'broker.sock')]), /planted .* is not owned by root/);
  assert.equal({ text: readFileSync(victim, 'utf8'), mode: statSync(victim).mode, dmode: statSync(victimDir).mode, ls: readdirSync(victimDir) }, before);
});

s('a socket dir the user owns is refused (the user could replace the socket)', async () => {
  const sd = path.join(base, 'sockdir');
  mkdirSync(sd);
  chownSync(sd, USER, USER);
  refused(await runBroker(['--runtime-dir', path.join(base, 'run2'), '--socket', path.join(sd, 'broker.sock')]), /sockdir .* is not owned by root/);
  assert.equal(readdirSync(sd), []);
});

s('stop: a forged broker.pid naming another live root process does not signal it', async () => {
  const d = path.join(base, 'forged');
  mkdirSync(d, { mode: 0o755 });
  const victim = spawn('sleep', ['60'], { stdio: 'ignore' });
  try {
    await sleep(100);
    const pid = victim.pid!;
    // Correct pid and start time: a pidfd plus start-time check alone would pass this.
    writeFileSync(path.join(d, 'broker.pid'), `${pid} ${processStartTime(pid)}\n`);
    const r = await execa(process.execPath, [DAEMON, 'stop', '--runtime-dir', d, '--timeout', '2000'], { reject: false, timeout: 20000 });
    assert.is(r.exitCode, 0, String(r.stderr));
    await sleep(200);
    assert.is(victim.exitCode, null, 'victim still running');
    assert.is(victim.signalCode, null, 'victim not signalled');
    assert.ok(processStartTime(pid) !== undefined);
  } finally {
    victim.kill('SIGKILL');
  }
});

s('stop refuses an insecure runtime dir (exit 77) and signals no one', async () => {
  const d = path.join(base, 'ustop');
  mkdirSync(d);
  const victim = spawn('sleep', ['60'], { stdio: 'ignore' });
  try {
    await sleep(100);
    writeFileSync(path.join(d, 'broker.pid'), `${victim.pid} ${processStartTime(victim.pid!)}\n`);
    chownSync(d, USER, USER);
    const r = await execa(process.execPath, [DAEMON, 'stop', '--runtime-dir', d, '--timeout', '2000'], { reject: false, timeout: 20000 });
    assert.is(r.exitCode, 77, String(r.stderr));
    await sleep(200);
    assert.is(victim.signalCode, null);
  } finally {
    victim.kill('SIGKILL');
  }
});

// ---- planted links and a client container's view -------------------------------------------

const CLIENT_BIN = path.join(NATIVE, 'fuse-svc-client');

/** A root-only place with a file and an empty directory, and a snapshot of all of it. */
function victims(name: string): { file: string; dir: string; dangling: string; snap: () => unknown } {
  const secret = path.join(base, `${name}-secret`);
  mkdirSync(secret, { mode: 0o700 });
  const file = path.join(secret, 'shadow');
  writeFileSync(file, 'root only\n', { mode: 0o600 });
  const dir = path.join(secret, 'dir');
  mkdirSync(dir, { mode: 0o700 });
  const dangling = path.join(secret, 'created-through-a-link');
  const snap = () => ({ text: readFileSync(file, 'utf8'), mode: statSync(file).mode, nlink: statSync(file).nlink, dmode: statSync(dir).mode, ls: readdirSync(dir), secret: readdirSync(secret).sort() });
  return { file, dir, dangling, snap };
}

for (const [where, name] of [['state', 'instances'], ['state', 'uids'], ['public', 'bin']] as const) {
  s(`a link planted at ${where === 'state' ? 'RUNDIR' : 'PUBLIC'}/${name} in a pre-made dir: exit 77, never followed`, async () => {
    const v = victims(`sub-${name}`);
    const before = v.snap();
    const d = path.join(base, `pre-${name}`);
    mkdirSync(d, { mode: 0o755 }); // root's, 0755: passes the path check; the link inside is the attack
    const pub = path.join(d, 'public');
    if (where === 'public') mkdirSync(pub, { mode: 0o755 });
    symlinkSync(v.dir, path.join(where === 'state' ? d : pub, name));
    refused(await runBroker(['--runtime-dir', d]), new RegExp(`${name} is a symbolic link or not a directory`));
    assert.equal(v.snap(), before, 'nothing created or changed behind the link');
  });
}

s('a pre-made instances/ of a user, or a uids/ anyone may write: exit 77, nothing used', async () => {
  const d = path.join(base, 'foreign-sub');
  mkdirSync(d, { mode: 0o755 });
  mkdirSync(path.join(d, 'instances'), { mode: 0o700 });
  chownSync(path.join(d, 'instances'), USER, USER);
  refused(await runBroker(['--runtime-dir', d]), /instances \(owner uid 1000, mode 0700\) is not owned by root/);
  rmSync(path.join(d, 'instances'), { recursive: true });
  mkdirSync(path.join(d, 'uids'));
  chmodSync(path.join(d, 'uids'), 0o777);
  refused(await runBroker(['--runtime-dir', d]), /uids \(mode 0777\) is writable by group or others/);
  assert.equal(readdirSync(path.join(d, 'uids')), []);
});

s('broker.lock a hard link to a root-only file, or a FIFO: exit 77, the file untouched', async () => {
  const v = victims('lockfile');
  const d = path.join(base, 'planted-brokerlock');
  mkdirSync(d, { mode: 0o755 });
  linkSync(v.file, path.join(d, 'broker.lock'));
  const before = v.snap();
  refused(await runBroker(['--runtime-dir', d]), /broker\.lock is not a regular file of root's with one link/);
  assert.equal(v.snap(), before);
  rmSync(path.join(d, 'broker.lock'));
  await execa('mkfifo', [path.join(d, 'broker.lock')]);
  refused(await runBroker(['--runtime-dir', d]), /broker\.lock is not a regular file/);
});

s('the socket dir may not hold the state dir (a client given it would reach the state): exit 77', async () => {
  const d = path.join(base, 'together');
  mkdirSync(d, { mode: 0o755 });
  refused(await runBroker(['--runtime-dir', d, '--socket', path.join(d, 'broker.sock')]), /socket's directory .*together holds the broker's state dir/);
  refused(await runBroker(['--runtime-dir', path.join(d, 'state'), '--socket', path.join(d, 'broker.sock')]), /holds the broker's state dir/);
  assert.equal(readdirSync(d), [], 'nothing made');
});

s('links planted at the file names root writes (pid file, records, logs, state, published client): replaced, never written through; mounts work', async () => {
  const v = victims('files');
  const d = path.join(base, 'planted-files');
  mkdirSync(d, { mode: 0o755 });
  const inst = path.join(d, 'instances');
  mkdirSync(inst, { mode: 0o700 });
  const pubBin = path.join(d, 'public', 'bin');
  mkdirSync(pubBin, { recursive: true, mode: 0o755 });
  // The first instance ids a broker hands out: every name root creates for them.
  const links: string[] = [path.join(d, 'broker.pid'), path.join(d, 'broker.pid.tmp'), path.join(pubBin, 'fuse-svc-request'), path.join(pubBin, 'fuse-svc-request.tmp')];
  for (let id = 1; id <= 3; id++) for (const ext of ['json.tmp', 'log', 'state.tmp', 'state']) links.push(path.join(inst, `${id}.${ext}`));
  links.forEach((l, i) => symlinkSync(i % 2 ? v.file : v.dangling, l));
  const before = v.snap();
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  const work = tmpdir('fuse-svc-rundir-files-');
  try {
    broker = await startBroker({ runtimeDir: d });
    caller = await newCaller();
    const fds0 = fdCount(broker.proc.pid!);
    const img = await makeImage(work, 'disk.img', 16);
    const mnt = makeDir(path.join(work, 'mnt'));
    const m = await caller.run([path.join(pubBin, 'fuse-svc-request'), '--socket', broker.socket, 'mount', '-t', 'ext4', '-o', 'rw', img, mnt]);
    assert.is(m.exitCode, 0, `${m.stderr}\n${broker.logs()}`);
    const w = await caller.run(['sh', '-c', `echo through > ${mnt}/f && cat ${mnt}/f`]);
    assert.is(w.stdout.trim(), 'through', w.stderr);
    const u = await caller.run([path.join(pubBin, 'fuse-svc-request'), '--socket', broker.socket, 'unmount', mnt]);
    assert.is(u.exitCode, 0, u.stderr);
    await waitFor('the instance to end', () => instanceProcesses(d).length === 0, 10000);
    assert.equal(v.snap(), before, 'no victim written, chmodded or created');
    assert.not.ok(existsSync(v.dangling), 'nothing created at a dangling link target');
    assert.ok(lstatSync(path.join(d, 'broker.pid')).isFile(), 'broker.pid is the broker\'s own file now');
    assert.match(readFileSync(path.join(d, 'broker.pid'), 'utf8'), new RegExp(`^${broker.proc.pid} `));
    const binSt = lstatSync(path.join(pubBin, 'fuse-svc-request'));
    assert.ok(binSt.isFile() && (binSt.mode & 0o7777) === 0o755 && binSt.uid === 0, 'the published client is a fresh root file, 0755');
    // The names root wrote (the pid file, the client, instance 1's files) are root's own now;
    // links for ids not yet used stay as they were, unfollowed.
    for (const l of links.filter((x) => !/\/instances\/[23]\./.test(x))) assert.not.ok(existsSync(l) && lstatSync(l).isSymbolicLink(), `${l} is no longer a link`);
    // The pool refills after a mount (its new launcher's pidfd, socket, pipe): allow it time.
    await waitFor('broker fds back to where they were', () => fdCount(broker!.proc.pid!) === fds0, 5000).catch(() => undefined);
    assert.is(fdCount(broker.proc.pid!), fds0, 'broker fds back to where they were');
  } finally {
    await broker?.stop();
    await caller?.close();
    rmSync(work, { recursive: true, force: true });
  }
});

s('a link or a shared hard link at a uid lock: that uid is refused, nothing made or opened behind it; then the uid works', async () => {
  const v = victims('lock');
  const d = path.join(base, 'planted-lock');
  mkdirSync(d, { mode: 0o755 });
  const uids = path.join(d, 'uids');
  mkdirSync(uids, { mode: 0o700 });
  const lock = path.join(uids, '61300.lock');
  symlinkSync(v.dangling, lock);
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  const work = tmpdir('fuse-svc-rundir-lock-');
  try {
    broker = await startBroker({ runtimeDir: d, args: ['--uid-range', '61300-61300'], config: { pool_size: 0 } });
    caller = await newCaller();
    const img = await makeImage(work, 'disk.img', 16);
    const mnt = makeDir(path.join(work, 'mnt'));
    const mount = () => caller!.run([CLIENT_BIN, '--socket', broker!.socket, 'mount', '-t', 'ext4', '-o', 'ro', img, mnt]);
    const r1 = await mount();
    assert.is.not(r1.exitCode, 0, 'refused while the lock is a link');
    assert.match(r1.stderr, /EINTERNAL.*uids\/61300\.lock.*(symbolic links|O_NOFOLLOW)/, r1.stderr);
    assert.not.ok(existsSync(v.dangling), 'no file created through the link');
    rmSync(lock);
    linkSync(v.file, lock); // a hard link to a root-only file (protected_hardlinks stops users; not root-made leftovers)
    const before = v.snap();
    const r2 = await mount();
    assert.is.not(r2.exitCode, 0, 'refused while the lock is a shared hard link');
    assert.match(r2.stderr, /EINTERNAL.*uids\/61300\.lock is not a regular file of root's with one link/, r2.stderr);
    assert.equal(v.snap(), before, 'the linked file untouched');
    assert.is(readFileSync(v.file, 'utf8'), 'root only\n');
    rmSync(lock);
    const r3 = await mount();
    assert.is(r3.exitCode, 0, `ordinary use once the lock is the broker's own: ${r3.stderr}\n${broker.logs()}`);
    assert.is((await caller.run([CLIENT_BIN, '--socket', broker.socket, 'unmount', mnt])).exitCode, 0);
    await waitFor('the instance to end', () => instanceProcesses(d).length === 0, 10000);
  } finally {
    await broker?.stop();
    await caller?.close();
    rmSync(work, { recursive: true, force: true });
  }
});

s('forged instance records (a root process that is no launcher; a user-owned file; a link) are not re-adopted, and stop signals no one', async () => {
  const d = path.join(base, 'forged-records');
  mkdirSync(d, { mode: 0o755 });
  const inst = path.join(d, 'instances');
  mkdirSync(inst, { mode: 0o700 });
  const victim = spawn('sleep', ['60'], { stdio: 'ignore' });
  try {
    await sleep(100);
    const pid = victim.pid!;
    const rec = (id: number) => JSON.stringify({ id, owner_uid: 1000, owner_gid: 1000, fstype: 'ext4', options: 'ro', source: '/x.img', target: '/x', uid: 61400 + id, server: 'fuse2fs', started_at: Date.now(), launcher_pid: pid, launcher_start: processStartTime(pid) }) + '\n';
    // Right pid and start time, root, and even a record root wrote: still not a launcher.
    writeFileSync(path.join(inst, '5.json'), rec(5), { mode: 0o600 });
    writeFileSync(path.join(inst, '5.state'), 'state=running\n', { mode: 0o600 });
    writeFileSync(path.join(inst, '6.json'), rec(6), { mode: 0o600 });
    chownSync(path.join(inst, '6.json'), USER, USER);
    const elsewhere = path.join(base, 'forged-elsewhere.json');
    const text7 = rec(7);
    writeFileSync(elsewhere, text7, { mode: 0o600 });
    symlinkSync(elsewhere, path.join(inst, '7.json'));
    const broker = await startBroker({ runtimeDir: d });
    try {
      assert.not.match(broker.logs(), /re-adopted/, broker.logs());
      assert.ok(!existsSync(path.join(inst, '6.json')) && !existsSync(path.join(inst, '7.json')), 'untrusted records dropped');
      assert.is(readFileSync(elsewhere, 'utf8'), text7, 'the link target untouched');
    } finally {
      await broker.stop();
    }
    await sleep(200);
    assert.is(victim.exitCode, null, 'victim still running');
    assert.is(victim.signalCode, null, 'victim not signalled');
  } finally {
    victim.kill('SIGKILL');
  }
});

s("a client container's view: the public dir bound read-only reaches no state and cannot be changed by a capability-less root; mounts through it work", async () => {
  const d = path.join(base, 'container-view');
  mkdirSync(d, { mode: 0o755 });
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  const work = tmpdir('fuse-svc-rundir-view-');
  try {
    broker = await startBroker({ runtimeDir: d });
    caller = await newCaller();
    const pub = path.dirname(broker.socket);
    // The client's tree, as Docker builds it: a root of its own, the volume at /run/fuse-svc.
    const root = path.join(work, 'root');
    mkdirSync(root);
    const view = path.join(root, 'run', 'fuse-svc');
    const asRoot = (script: string, caps = false) =>
      caller!.run(caps ? ['sh', '-c', script] : ['setpriv', '--bounding-set=-all', '--inh-caps=-all', '--', 'sh', '-c', script], { uid: 0, timeout: 20000 });
    const setup = await asRoot(`mount -t tmpfs -o mode=0755 none ${root} && mkdir -p ${view} && mount --bind ${pub} ${view} && mount -o remount,bind,ro ${view}`, true);
    assert.is(setup.exitCode, 0, setup.stderr);
    const fds0 = fdCount(broker.proc.pid!);
    const stateBefore = readdirSync(d).sort();
    // Root of the container without capabilities (cap_drop ALL, no user namespace): uid 0 on
    // the host, owner of every file here. Each write must fail on the read-only bind.
    for (const attack of [
      `touch ${view}/planted`,
      `rm -f ${view}/broker.sock`,
      `mv ${view}/broker.sock ${view}/old.sock`,
      `ln -s /etc/shadow ${view}/bin/fuse-svc-request.tmp`,
      `cp /bin/true ${view}/bin/fuse-svc-request`,
      `chmod 0777 ${view}`,
      `mount -o remount,bind,rw ${view}`,
    ]) {
      const r = await asRoot(attack);
      assert.is.not(r.exitCode, 0, `${attack}: must fail`);
      assert.match(r.stderr, /Read-only file system|Operation not permitted|must be superuser|permission denied/i, `${attack}: ${r.stderr}`);
    }
    // Nothing of the state is below or beside the public dir in the client's tree.
    const ls = await asRoot(`ls -A ${view}; echo --; ls -A ${view}/..; echo --; ls -A ${view}/../..`);
    assert.equal(ls.stdout.trim().split('\n'), ['bin', 'broker.sock', '--', 'fuse-svc', '--', 'run'], ls.stdout);
    assert.equal(readdirSync(d).sort(), stateBefore, 'the state dir unchanged');
    assert.ok(lstatSync(broker.socket).isSocket() && lstatSync(path.join(pub, 'bin', 'fuse-svc-request')).isFile());
    // The control: the same capability-less root CAN write a root-owned 0755 dir bound
    // read-write; this is why clients must get the public dir read-only.
    const rwDir = path.join(root, 'rw');
    const ctl = await asRoot(`mkdir ${rwDir} && touch ${rwDir}/x && echo wrote`, true);
    assert.is(ctl.exitCode, 0, ctl.stderr);
    const ctl2 = await asRoot(`touch ${rwDir}/y && echo wrote`);
    assert.match(ctl2.stdout, /wrote/, `capability-less root writes a root dir bound rw: ${ctl2.stderr}`);
    // Ordinary use through the read-only view: uid 1000, the published static client.
    const img = await makeImage(work, 'disk.img', 16);
    const mnt = makeDir(path.join(work, 'mnt'));
    const m = await caller.run([`${view}/bin/fuse-svc-request`, '--socket', `${view}/broker.sock`, 'mount', '-t', 'ext4', '-o', 'rw', img, mnt]);
    assert.is(m.exitCode, 0, `${m.stderr}\n${broker.logs()}`);
    assert.ok(caller.fuseMounts().includes(mnt));
    const u = await caller.run([`${view}/bin/fuse-svc-request`, '--socket', `${view}/broker.sock`, 'unmount', mnt]);
    assert.is(u.exitCode, 0, u.stderr);
    await waitFor('the instance to end', () => instanceProcesses(d).length === 0, 10000);
    // The pool refills after a mount (its new launcher's pidfd, socket, pipe): allow it time.
    await waitFor('broker fds back to where they were', () => fdCount(broker!.proc.pid!) === fds0, 5000).catch(() => undefined);
    assert.is(fdCount(broker.proc.pid!), fds0, 'broker fds back to where they were');
  } finally {
    await broker?.stop();
    await caller?.close(); // its mount namespace (tmpfs root, binds) goes with it
    rmSync(work, { recursive: true, force: true });
  }
});

s.run();
