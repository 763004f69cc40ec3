// Servers that fork into the background (issue 11, "What to build" 2): with `daemonizes: true`
// pid 1 of the sandbox's pid namespace is the launcher's reaper and the server its child, so
// the server's first process exiting 0 after the fork is not the end of the instance; the
// process holding the FUSE fd serves, is named as the server, and its end (kill -9) detaches
// the mount. Real servers without their foreground flag: the shipped exfat-fuse (it has none
// but -d) and fuse2fs without -f; the reaper is as sealed as the server.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { DEFAULTS } from '../supervisor/config.js';
import { ROOT, clientArgs, instanceProcesses, makeDir, makeImage, newCaller, procStatus, startBroker, tmpdir, waitFor, type Broker, type Caller } from './lib/harness.js';
import { failedStart, makeTree } from './lib/servers.js';

const SERVER_DIR = path.join(ROOT, 'server');
const fuse2fsDef = () => JSON.parse(readFileSync(path.join(SERVER_DIR, 'fuse2fs.json'), 'utf8')) as Record<string, unknown>;

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

const ppid = (pid: number) => Number(procStatus(pid).PPid);
const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).map((f) => [Number(f), readlinkSync(`/proc/${pid}/fd/${f}`)] as const);

async function checksums(run: (argv: string[]) => Promise<{ stdout: string; stderr: string; exitCode: number }>, root: string): Promise<string> {
  const r = await run(['sh', '-c', `cd "${root}" && find . -type f | LC_ALL=C sort | xargs -d '\\n' sha256sum`]);
  assert.is(r.exitCode, 0, `checksums under ${root}: ${r.stderr}`);
  return r.stdout;
}

/**
 * The sandbox evidence of a daemonized server and of the reaper above it, from the host's /proc:
 * the server is not pid 1 of its namespace, the reaper is, both with the dynamic uid, no
 * capability, NoNewPrivs, seccomp filtering and namespaces of their own; the reaper holds
 * nothing but the log, the server the FUSE fd and the image.
 */
function assertSealed(broker: Broker, server: number, uid: number, img: string): number {
  const reaper = ppid(server);
  const launcher = ppid(reaper);
  assert.is(procStatus(reaper).Name, 'fuse-svc-launch', 'the server runs under the reaper');
  assert.is(procStatus(launcher).Name, 'fuse-svc-launch', 'whose parent is the launcher');
  const [lo, hi] = DEFAULTS.uidRange;
  assert.ok(uid >= lo && uid <= hi, `uid ${uid} in the dynamic range`);
  for (const pid of [server, reaper]) {
    const st = procStatus(pid);
    assert.equal(st.Uid.split(/\s+/).map(Number), [uid, uid, uid, uid], `${pid}: uid`);
    for (const k of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) assert.is(st[k], '0000000000000000', `${pid}: ${k}`);
    assert.is(st.NoNewPrivs, '1');
    assert.is(st.Seccomp, '2');
    for (const ns of ['mnt', 'net', 'pid', 'ipc', 'uts', 'user', 'cgroup']) {
      assert.is.not(readlinkSync(`/proc/${pid}/ns/${ns}`), readlinkSync(`/proc/${broker.proc.pid}/ns/${ns}`), `${pid}: ${ns} namespace differs`);
      assert.is(readlinkSync(`/proc/${pid}/ns/${ns}`), readlinkSync(`/proc/${server}/ns/${ns}`), `reaper and server share the ${ns} namespace`);
    }
  }
  assert.is(procStatus(reaper).NSpid.split(/\s+/).pop(), '1', 'the reaper is pid 1 of the sandbox');
  assert.ok(Number(procStatus(server).NSpid.split(/\s+/).pop()) > 2, 'the serving process is a forked child (pid > 2 in the sandbox)');
  const rf = fds(reaper);
  assert.equal(rf.map(([n]) => n), [2], `the reaper holds only its log: ${JSON.stringify(rf)}`);
  assert.match(rf[0][1], /^pipe:/);
  const sf = fds(server).map(([, l]) => l);
  assert.ok(sf.includes('/dev/fuse'), `the server holds the FUSE fd: ${sf.join(', ')}`);
  assert.ok(sf.includes(img), `the server holds the injected image: ${sf.join(', ')}`);
  assert.not.ok(readdirSync(`/proc/${server}/root/dev`).includes('fuse'), 'no /dev/fuse in its root');
  return reaper;
}

const t = suite('servers that fork into the background');
let dir: string;
let broker: Broker;
let caller: Caller;
let tree: string;
let want: string;

t.before(async () => {
  dir = tmpdir();
  const d = path.join(dir, 'server');
  mkdirSync(d);
  for (const f of readdirSync(SERVER_DIR)) copyFileSync(path.join(SERVER_DIR, f), path.join(d, f));
  const argv = (fuse2fsDef().argv as string[]).filter((a) => a !== '-f');
  // fuse2fs without -f forks into the background like any libfuse2 server (fuse_daemonize).
  writeFileSync(path.join(d, 'z-bg.json'), JSON.stringify({ ...fuse2fsDef(), name: 'fuse2fs-bg', fstypes: ['ext4bg'], argv, daemonizes: true }, null, 2));
  // A helper that outlives the server and holds no FUSE fd (sleep, backgrounded first).
  writeFileSync(path.join(d, 'z-linger.json'), JSON.stringify({ ...fuse2fsDef(), name: 'fuse2fs-linger', fstypes: ['ext4linger'], exec: '/usr/bin/sh', argv: ['sh', '-c', `sleep 600 </dev/null >/dev/null 2>&1 3>&- & exec ${argv.join(' ')}`], daemonizes: true }, null, 2));
  writeFileSync(path.join(d, 'z-fg.json'), JSON.stringify({ ...fuse2fsDef(), name: 'fuse2fs-nobg', fstypes: ['ext4nobg'], argv }, null, 2));
  broker = await startBroker({ config: { server_dir: d } });
  caller = await newCaller();
  tree = await makeTree(dir);
  want = await checksums((a) => execa(a[0], a.slice(1), { reject: false }) as never, tree);
});

t.after(async () => {
  await broker?.stop();
  await caller?.close();
  rmSync(dir, { recursive: true, force: true });
});

t('without daemonizes a server that forks is gone at once (pid 1 takes its child with it): ESERVER_START, nothing left', async () => {
  const img = await makeImage(dir, 'nobg.img', 32);
  const mnt = makeDir(path.join(dir, 'nobg-mnt'));
  const m = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'ext4nobg', img, mnt));
  assert.is(m.exitCode, 2, m.stderr);
  assert.match(m.stderr, /ESERVER_START/);
  assert.equal(caller.fuseMounts(), []);
  await waitFor('nothing left of the instance', () => instanceProcesses(broker.runtimeDir).length === 0, 10000);
});

t('fuse2fs without -f (daemonizes): rw write and checksums, unmount ends it (e2fsck clean), ro reads back, kill -9 of the daemon detaches; nothing left', async () => {
  const img = await makeImage(dir, 'bg.img', 64);
  const mnt = makeDir(path.join(dir, 'bg-mnt'));
  const mount = async (o: string) => {
    const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', '-t', 'ext4bg', '-o', o, img, mnt));
    assert.is(m.exitCode, 0, `${m.stderr}\n${broker.logs().slice(-2000)}`);
    return JSON.parse(m.stdout) as { server_pid: number; uid: number; id: number };
  };
  try {
    const r = await mount('rw');
    assert.is(procStatus(r.server_pid).Name, 'fuse2fs');
    const reaper = assertSealed(broker, r.server_pid, r.uid, img);
    const launcher = ppid(reaper);
    const cp = await caller.run(['sh', '-c', `cp -r "${tree}/." "${mnt}/" && sync`]);
    assert.is(cp.exitCode, 0, cp.stderr);
    assert.is(await checksums((a) => caller.run(a), mnt), want, 'the written tree reads back');
    const log = readFileSync(path.join(broker.runtimeDir, 'instances', `${r.id}.log`), 'utf8');
    assert.match(log, /reaper: the server's first process exited 0/, log);
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
    await waitFor('the daemon, the reaper and the launcher to exit', () => ![r.server_pid, reaper, launcher].some(alive), 10000);
    const l = JSON.parse((await caller.run(clientArgs(broker.socket, '--json', 'list'))).stdout) as { mounts: { id: number; state: string; reason: string | null }[] };
    const rec = l.mounts.find((x) => String(x.id) === String(r.id));
    assert.ok(rec && rec.state === 'exited' && rec.reason === 'unmounted', JSON.stringify(rec));
    const fsck = await execa('e2fsck', ['-fn', img], { reject: false });
    assert.is(fsck.exitCode, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);

    const k = await mount('ro');
    assert.is(await checksums((a) => caller.run(a), mnt), want, 'the tree reads back after a remount');
    const kreaper = ppid(k.server_pid);
    const klauncher = ppid(kreaper);
    process.kill(k.server_pid, 'SIGKILL');
    await waitFor('the mount to be detached', () => !caller.fuseMounts().includes(mnt), 10000);
    await waitFor('the instance to end', () => ![k.server_pid, kreaper, klauncher].some(alive), 10000);
    const l2 = JSON.parse((await caller.run(clientArgs(broker.socket, '--json', 'list'))).stdout) as { mounts: { id: number; state: string; exit_signal: number | null }[] };
    const krec = l2.mounts.find((x) => String(x.id) === String(k.id));
    assert.ok(krec && krec.state === 'exited' && krec.exit_signal === 9, JSON.stringify(krec));
    await waitFor('nothing left of any instance', () => instanceProcesses(broker.runtimeDir).length === 0, 10000);
  } finally {
    if (caller.fuseMounts().includes(mnt)) await caller.run(clientArgs(broker.socket, 'unmount', mnt));
  }
});

t('a helper that lingers after the server: once no process holds the FUSE fd, the launcher ends the instance (detached, nothing left)', async () => {
  const img = await makeImage(dir, 'linger.img', 32);
  const mnt = makeDir(path.join(dir, 'linger-mnt'));
  try {
    const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', '-t', 'ext4linger', '-o', 'ro', img, mnt));
    assert.is(m.exitCode, 0, `${m.stderr}\n${broker.logs().slice(-2000)}`);
    const r = JSON.parse(m.stdout) as { server_pid: number; id: number };
    assert.is(procStatus(r.server_pid).Name, 'fuse2fs');
    const reaper = ppid(r.server_pid);
    const launcher = ppid(reaper);
    const kids = readFileSync(`/proc/${reaper}/task/${reaper}/children`, 'utf8').trim().split(/\s+/).map(Number);
    const sleep = kids.find((k) => procStatus(k).Name === 'sleep');
    assert.ok(sleep, `the lingering helper runs under the reaper: ${kids.join(' ')}`);
    process.kill(r.server_pid, 'SIGKILL');
    await waitFor('the mount to be detached', () => !caller.fuseMounts().includes(mnt), 10000);
    await waitFor('the instance to end, the helper with it', () => ![r.server_pid, reaper, launcher, sleep!].some(alive), 10000);
    const l = JSON.parse((await caller.run(clientArgs(broker.socket, '--json', 'list'))).stdout) as { mounts: { id: number; state: string; reason: string | null }[] };
    const rec = l.mounts.find((x) => String(x.id) === String(r.id));
    assert.ok(rec && rec.state === 'exited' && /no process of the sandbox held the FUSE connection/.test(rec.reason ?? ''), JSON.stringify(rec));
  } finally {
    if (caller.fuseMounts().includes(mnt)) await caller.run(clientArgs(broker.socket, 'unmount', mnt));
  }
});

t('exfat-fuse as shipped (no -d: it forks into the background): rw write, fsck.exfat -n clean, ro reads back, kill -9 of the daemon detaches; nothing left', async () => {
  const sub = path.join(dir, 'exfat');
  mkdirSync(sub);
  const img = path.join(sub, 'fs.img');
  await execa('truncate', ['-s', '64M', img]);
  await execa('mkfs.exfat', [img], { timeout: 30000 });
  await execa('chown', ['1000:1000', img]);
  await execa('chmod', ['600', img]);
  const mnt = makeDir(path.join(sub, 'mnt'));
  const mount = async (o: string) => {
    const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', '-t', 'exfat', '-o', o, img, mnt));
    assert.is(m.exitCode, 0, `${m.stderr}\n${broker.logs().slice(-2000)}`);
    return JSON.parse(m.stdout) as { server_pid: number; uid: number; id: number };
  };
  try {
    const r = await mount('rw');
    const cmd = readFileSync(`/proc/${r.server_pid}/cmdline`, 'utf8').split('\0');
    assert.not.ok(cmd.includes('-d'), `no -d: ${cmd.join(' ')}`);
    const reaper = assertSealed(broker, r.server_pid, r.uid, img);
    const launcher = ppid(reaper);
    const data = path.join(sub, 'data.bin');
    writeFileSync(data, randomBytes(2 << 20));
    await execa('chown', ['1000:1000', data]);
    const w = await caller.run(['sh', '-c', `cp -r "${tree}/." "${mnt}/" && cp "${data}" "${mnt}/data.bin" && sync`]);
    assert.is(w.exitCode, 0, w.stderr);
    const log = readFileSync(path.join(broker.runtimeDir, 'instances', `${r.id}.log`), 'utf8');
    assert.not.match(log, /unique: \d+, opcode/, 'no libfuse request tracing (that was -d)');
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
    await waitFor('the daemon, the reaper and the launcher to exit', () => ![r.server_pid, reaper, launcher].some(alive), 10000);
    const fsck = await execa('fsck.exfat', ['-n', img], { reject: false });
    assert.is(fsck.exitCode, 0, `fsck.exfat -n: ${fsck.stdout}${fsck.stderr}`);

    const k = await mount('ro');
    const got = await checksums((a) => caller.run(a), mnt);
    for (const line of want.trim().split('\n')) assert.ok(got.includes(line), `reads back after a remount: ${line}`);
    const sums = (await caller.run(['sha256sum', data, `${mnt}/data.bin`])).stdout.split('\n').map((l) => l.split(' ')[0]);
    assert.is(sums[0], sums[1], 'the written file reads back after a remount');
    const kreaper = ppid(k.server_pid);
    const klauncher = ppid(kreaper);
    process.kill(k.server_pid, 'SIGKILL');
    await waitFor('the mount to be detached', () => !caller.fuseMounts().includes(mnt), 10000);
    await waitFor('the instance to end', () => ![k.server_pid, kreaper, klauncher].some(alive), 10000);
    const l = JSON.parse((await caller.run(clientArgs(broker.socket, '--json', 'list'))).stdout) as { mounts: { id: number; state: string; exit_signal: number | null }[] };
    const krec = l.mounts.find((x) => String(x.id) === String(k.id));
    assert.ok(krec && krec.state === 'exited' && krec.exit_signal === 9, JSON.stringify(krec));
    await waitFor('nothing left of any instance', () => instanceProcesses(broker.runtimeDir).length === 0, 10000);
  } finally {
    if (caller.fuseMounts().includes(mnt)) await caller.run(clientArgs(broker.socket, 'unmount', mnt));
  }
});

t('a daemonizing server attacks its reaper (pid 1): SIGKILL and SIGSTOP are dropped, its fds and memory unreadable; the start fails cleanly', async () => {
  // A hostile "server" under the reaper (python3 from the host's /usr): it cannot end, stop or
  // read pid 1, then fails its start; the reaper passes its status on and nothing is left.
  const script = [
    'import os, signal, sys, time',
    'def probe(k, f):',
    '    try:',
    '        print("probe", k, f())',
    '    except OSError as e:',
    '        print("probe", k, e.strerror)',
    '    sys.stdout.flush()',
    'probe("pid", lambda: os.getpid())',
    'probe("ppid", lambda: os.getppid())',
    'probe("fd", lambda: os.readlink("/proc/1/fd/2"))',
    'probe("mem", lambda: os.open("/proc/1/mem", os.O_RDONLY))',
    'probe("environ", lambda: open("/proc/1/environ", "rb").read())',
    'probe("sigkill", lambda: os.kill(1, signal.SIGKILL))',
    'probe("sigstop", lambda: os.kill(1, signal.SIGSTOP))',
    'time.sleep(0.3)',
    'probe("alive-after", lambda: "yes")',
    'sys.exit(5)',
  ].join('\n');
  const d = path.join(dir, 'hostile-server');
  mkdirSync(d);
  copyFileSync(path.join(SERVER_DIR, 'fuse2fs.sandbox'), path.join(d, 'fuse2fs.sandbox'));
  writeFileSync(path.join(d, 'h.json'), JSON.stringify({ ...fuse2fsDef(), name: 'hostile', fstypes: ['hostile'], exec: '/usr/bin/python3', argv: ['python3', '-c', `exec(${JSON.stringify(script)})`], fuseFd: 'devfd', daemonizes: true, options: { always: [], readOnly: [], readWriteNonRoot: [], allowed: [] } }, null, 2));
  let b: Broker | undefined;
  try {
    b = await startBroker({ config: { server_dir: d, pool_size: 0 } });
    const { m, log } = await failedStart(b, caller, dir, 'hostile');
    assert.match(m.stderr, /ESERVER_START/);
    const probe = Object.fromEntries([...log.matchAll(/^probe (\S+) (.*)$/gm)].map((x) => [x[1], x[2]]));
    assert.is(probe.pid, '2', `the server is pid 2 under the reaper:\n${log}`);
    assert.is(probe.ppid, '1');
    for (const k of ['fd', 'mem', 'environ']) assert.ok(probe[k] === 'Permission denied' || probe[k] === 'No such file or directory', `${k}: ${probe[k]}`);
    assert.is(probe.sigkill, 'None', 'kill(1, SIGKILL) returns, and is dropped');
    assert.is(probe['alive-after'], 'yes', 'the reaper survived SIGKILL and SIGSTOP from inside (or the server would have died with it)');
    assert.match(m.stderr, /ESERVER_START: .*probe alive-after yes/, 'the first process\'s failure ends the start, with its last lines');
    assert.equal(caller.fuseMounts(), []);
    await waitFor('nothing left of the instance', () => instanceProcesses(b!.runtimeDir).length === 0, 10000);
  } finally {
    await b?.stop();
  }
});

t.run();
