// Adversary suite, the doors other than the broker socket (issues 13 and 15): the upstream
// sockets (test/native/service-client as libfuse's helper), the mount(8)/umount(8) helper, `--via`
// transports for sshfs, and the Docker plugin socket (direct VolumeDriver requests, as dockerd
// would send them; test/docker-plugin.test.ts runs a real dockerd). Through each:
//  1. an INIT-only server and a server that hangs after ready: the request ends by its deadline
//     with its code, unmount returns, nothing is left (/proc, mounts, the broker's fds), and an
//     ordinary mount through the same door still works;
//  2. descriptors on the caller's own stopped FUSE server (fusedev, source, argv, transport):
//     another uid is served meanwhile, the uid's stuck share holds (ELIMIT_STUCK), all is
//     released when the server goes on;
//  3. uid 1000 as root of its own user namespace at each door: refused with a code, or served
//     with nosuid/nodev holding.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { execa } from 'execa';
import { CLIENT, ROOT, USER, clientArgs, fdTable, fdsBackTo, makeDir, makeImage, processes, sleep, startBroker, tmpdir, waitFor, worldFuseInCaller, type Broker } from '../lib/harness.js';
import { serverDirWith } from '../lib/hang.js';
import { fsckClean, mountEnv, unmountAll, type MountEnv } from '../lib/mount-helper-env.js';
import { instanceTree } from '../lib/servers.js';
import { SERVICE_CLIENT, helperRun } from '../lib/upstream.js';

const READY_MS = 1500;
const STOP_MS = 2000;
/** The sshfs definition's ready timeout here (the shipped one waits 15 s for a slow ssh). */
const SSHFS_READY_MS = 3000;
/** A request through any door ends within its server's ready timeout plus this (the broker's margin and the client's). */
const DOOR_MARGIN_MS = 8000;
/** Another uid's request must be served within this while a uid's descriptors are stuck (docs/security.md). */
const OTHER_UID_BOUND_MS = 10000;
const STUCK_SHARE = 3;
const SFTP_SERVER = '/usr/lib/openssh/sftp-server';
const WORKER = path.join(ROOT, 'dist', 'test', 'lib', 'transport-worker.js');
const OTHER = 1001;

const s = suite('adversary: the doors (upstream, mount(8), --via, Docker plugin)');
let dir: string;
let broker: Broker;
let env: MountEnv;
let fsDir: string;
let pluginSock: string;
let src: string;
const hangPids0 = new Set<number>();

s.before(async () => {
  dir = tmpdir('fuse-svc-doors-');
  const serverDir = serverDirWith(dir, ['fuse2fs.json', 'fuse2fs.sandbox', 'sshfs.sandbox'], [
    { type: 'hanginit', mode: 'init', readyMs: READY_MS, stopMs: STOP_MS },
    { type: 'hangready', mode: 'ready', readyMs: READY_MS, stopMs: STOP_MS },
  ]);
  const sshfs = JSON.parse(readFileSync(path.join(ROOT, 'server', 'sshfs.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(path.join(serverDir, 'sshfs.json'), JSON.stringify({ ...sshfs, readyTimeoutMs: SSHFS_READY_MS, stopTimeoutMs: STOP_MS }));
  fsDir = path.join(dir, 'filesystems');
  pluginSock = path.join(makeDir(path.join(dir, 'plugins'), 0), 'fuse-svc.sock');
  broker = await startBroker({
    args: ['--upstream-sockets', '--docker-plugin'],
    config: {
      server_dir: serverDir,
      fstypes: ['ext4', 'sshfs', 'hanginit', 'hangready'],
      pool_size: 0,
      // 0666: uid 1000's own non-setuid helper may connect, so its descriptors can be tried.
      upstream_socket_dir: fsDir,
      upstream_socket_mode: '0666',
      request_timeout_ms: 4000,
      target_statfs_timeout_ms: 1000,
      max_stuck_per_user: STUCK_SHARE,
      docker_plugin_socket: pluginSock,
      docker_state_dir: path.join(dir, 'docker-state'),
      docker_mount_dir: path.join(dir, 'docker-mnt'),
    },
  });
  env = await mountEnv(dir);
  src = path.join(dir, 'hang-source');
  writeFileSync(src, 'a source for fuse-hang\n');
  chownSync(src, USER, USER);
  for (const p of processes(['fuse-hang'])) hangPids0.add(p.pid);
});

s.after(async () => {
  if (broker && env) await unmountAll(broker, env.caller).catch(() => undefined);
  await broker?.stop();
  await env?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** What a door must not leave: this broker's launchers and servers, fuse-hang processes that were not there before. */
const left = () => {
  const all = [...instanceTree(broker.runtimeDir), ...processes(['fuse-hang']).filter((p) => !hangPids0.has(p.pid))];
  return all.filter((p, i) => all.findIndex((x) => x.pid === p.pid) === i);
};

async function nothingLeft(mnt: string, fds: Map<number, string>): Promise<void> {
  await waitFor('no launcher, server or checker', () => left().length === 0, STOP_MS + 8000).catch((e: Error) => {
    throw new Error(`${e.message}: ${left().map((p) => `${p.pid} ${p.comm}`).join(', ')}`);
  });
  await waitFor(`no mount left on ${mnt}`, () => !env.caller.fuseMounts().includes(mnt) && !hostMounts().includes(mnt), 5000);
  await fdsBackTo(broker.proc.pid!, fds, 10000);
}

const hostMounts = () => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]);
const brokerLog = (mark: number) => broker.logs().slice(mark);
/**
 * After a failed test, what it left is ended here (SIGKILL to this broker's servers: their
 * launchers then finish), so that the next test starts from nothing.
 */
async function endLeftovers(): Promise<void> {
  const servers = left().filter((p) => !p.comm.startsWith('fuse-svc-launch'));
  for (const p of servers) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  if (servers.length) await waitFor('the leftovers to end', () => left().length === 0, 10000).catch(() => undefined);
}
s.after.each(endLeftovers);

let seq = 0;
const freshDir = (uid = 0) => makeDir(path.join(dir, `m${seq++}`), uid);

async function took<T>(f: () => Promise<T>): Promise<[T, number]> {
  const t0 = Date.now();
  const r = await f();
  return [r, Date.now() - t0];
}

// ---- 1a. the upstream socket ----------------------------------------------------------------

const upSock = (type: string) => path.join(fsDir, type);

s('upstream socket, INIT-only server: BYEE(1) by the ready deadline, ETIMEDOUT_SERVER, the helper\'s mount detached, nothing left', async () => {
  const fds = fdTable(broker.proc.pid!);
  const mnt = freshDir();
  const mark = broker.logs().length;
  const [r, ms] = await took(() => helperRun(env.caller, SERVICE_CLIENT, upSock('hanginit'), 'hanginit', src, mnt));
  assert.match(r.stdout, /bye 1/, r.stderr);
  assert.ok(ms < READY_MS + DOOR_MARGIN_MS, `took ${ms} ms`);
  assert.match(brokerLog(mark), /upstream hanginit: uid 0: refused at start: (ETIMEDOUT_SERVER|ESERVER_TIMEOUT): [^\n]+\n/);
  await nothingLeft(mnt, fds);
});

// The helper's own umount(2) is all upstream's tools have: the launcher's unmount watch
// (docs/launcher.md) must end a server that stays once its connection ended.
s('upstream socket, a server that hangs after ready: the helper\'s umount returns, the instance ends, nothing left', async () => {
  const fds = fdTable(broker.proc.pid!);
  const mnt = freshDir();
  const r = await helperRun(env.caller, SERVICE_CLIENT, upSock('hangready'), 'hangready', src, mnt);
  assert.match(r.stdout, /bye 0/, r.stderr + brokerLog(0).slice(-2000));
  assert.ok(env.caller.fuseMounts().includes(mnt));
  // --no-canonicalize: util-linux's umount(8) otherwise stats DIR first, and that GETATTR waits
  // for the hung server forever (no broker involved yet); docs/security.md says so.
  const [u, ms] = await took(() => env.caller.run(['umount', '--no-canonicalize', mnt], { uid: 0, timeout: 20000 }));
  assert.is(u.exitCode, 0, u.stderr);
  assert.ok(ms < 5000, `umount took ${ms} ms`);
  await nothingLeft(mnt, fds);
});

s('upstream socket after those: an ordinary ext4 mount works, is written, unmounted by the helper, fsck clean', async () => {
  const fds = fdTable(broker.proc.pid!);
  const img = await makeImage(dir, 'up.img', 16, 'ext4', 0);
  const ok = freshDir();
  const m = await helperRun(env.caller, SERVICE_CLIENT, upSock('ext4'), 'ext4', img, ok);
  assert.is(m.exitCode, 0, m.stderr);
  const w = await env.caller.run(['sh', '-c', `echo door > ${ok}/f && cat ${ok}/f`], { uid: 0 });
  assert.is(w.stdout.trim(), 'door');
  assert.is((await env.caller.run(['umount', ok], { uid: 0 })).exitCode, 0);
  await nothingLeft(ok, fds);
  const fsck = await fsckClean(img);
  assert.ok(fsck.ok, fsck.out);
});

// ---- 1b. the mount(8) helper ----------------------------------------------------------------

s('mount(8), INIT-only server: `mount -t fuse-svc.hanginit` fails by the deadline with the code on one line, nothing left', async () => {
  env.fstab([]);
  const fds = fdTable(broker.proc.pid!);
  const mnt = freshDir();
  const [r, ms] = await took(() => env.sh(`mount -t fuse-svc.hanginit -o ro,socket=${broker.socket} ${src} ${mnt}`));
  assert.is.not(r.exitCode, 0);
  assert.match(r.stderr.trim(), /^mount\.fuse-svc: (ETIMEDOUT_SERVER|ESERVER_TIMEOUT): [^\n]+$/);
  assert.ok(ms < READY_MS + DOOR_MARGIN_MS, `took ${ms} ms`);
  await nothingLeft(mnt, fds);
});

s('mount(8), a server that hangs after ready: umount(8) returns, the instance ends, nothing left; an ordinary fstab mount still works', async () => {
  const fds = fdTable(broker.proc.pid!);
  const mnt = freshDir();
  // helper=fuse-svc: umount(8) asks the broker (umount.fuse-svc); a plain umount(2) is the
  // upstream door's case above.
  env.fstab([`${src} ${mnt} fuse-svc.hangready noauto,ro,helper=fuse-svc,socket=${broker.socket} 0 0`]);
  const m = await env.sh(`mount ${mnt}`);
  assert.is(m.exitCode, 0, m.stderr);
  const [u, ms] = await took(() => env.sh(`umount --no-canonicalize ${mnt}`, 0, {}, 20000));
  assert.is(u.exitCode, 0, u.stderr);
  assert.ok(ms < STOP_MS + 5000, `umount took ${ms} ms`);
  await nothingLeft(mnt, fds);
  const udir = makeDir(path.join(dir, 'mh-user'), USER);
  const img = await makeImage(udir, 'disk.img', 16);
  const ok = makeDir(path.join(udir, 'mnt'), USER);
  env.fstab([`${img} ${ok} fuse-svc.ext4 user,noauto,rw,socket=${broker.socket} 0 0`]);
  const mu = await env.sh(`mount ${ok} && echo door > ${ok}/f && cat ${ok}/f`, USER);
  assert.is(mu.stdout.trim(), 'door', mu.stderr);
  assert.is((await env.sh(`umount ${ok}`, USER)).exitCode, 0);
  await nothingLeft(ok, fds);
  const fsck = await fsckClean(img);
  assert.ok(fsck.ok, fsck.out);
});

// ---- 1c. --via (sshfs) ------------------------------------------------------------------------

/** sshfs's SSH_FXP_INIT (9 bytes) answered with VERSION 3, then every request read and none answered. */
const INIT_ONLY_SFTP = (pidFile: string) => `echo $$ > ${pidFile}; head -c 9 >/dev/null; printf '\\000\\000\\000\\005\\002\\000\\000\\000\\003'; exec cat >/dev/null`;

s('--via, a COMMAND that answers the SFTP init and nothing more: ETIMEDOUT_SERVER by sshfs\'s ready timeout, the COMMAND ended, nothing left', async () => {
  const fds = fdTable(broker.proc.pid!);
  const mnt = freshDir(USER);
  const pidFile = path.join(freshDir(USER), 'pid');
  const [r, ms] = await took(() => env.caller.run(clientArgs(broker.socket, 'mount', '-t', 'sshfs', '--via', INIT_ONLY_SFTP(pidFile), ':', mnt), { timeout: 40000 }));
  assert.is(r.exitCode, 2, r.stderr);
  assert.match(r.stderr.trim(), /^fuse-svc-request: (ETIMEDOUT_SERVER|ESERVER_TIMEOUT): [^\n]+$/);
  assert.ok(ms < SSHFS_READY_MS + DOOR_MARGIN_MS, `took ${ms} ms`);
  const pid = Number(readFileSync(pidFile, 'utf8'));
  await waitFor('the COMMAND to end', () => !existsSync(`/proc/${pid}`) || /^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')), 5000);
  await nothingLeft(mnt, fds);
});

s('--via, its sftp-server stopped after ready: unmount returns, the instance ends, nothing left; an ordinary --via mount still works', async () => {
  const fds = fdTable(broker.proc.pid!);
  const remote = freshDir(USER);
  const mnt = freshDir(USER);
  const pidFile = path.join(freshDir(USER), 'pid');
  const m = await env.caller.run(clientArgs(broker.socket, 'mount', '-t', 'sshfs', '--via', `echo $$ > ${pidFile}; exec ${SFTP_SERVER} -d ${remote} 2>/dev/null`, ':', mnt), { timeout: 40000 });
  assert.is(m.exitCode, 0, m.stderr);
  const pid = Number(readFileSync(pidFile, 'utf8'));
  process.kill(pid, 'SIGSTOP');
  try {
    const [u, ms] = await took(() => env.caller.run(clientArgs(broker.socket, 'unmount', mnt), { timeout: 30000 }));
    assert.is(u.exitCode, 0, u.stderr);
    assert.ok(ms < STOP_MS + 5000, `unmount took ${ms} ms`);
    await nothingLeft(mnt, fds);
  } finally {
    try {
      process.kill(pid, 'SIGCONT');
      process.kill(pid, 'SIGTERM');
    } catch {
      /* ended with its transport */
    }
  }
  const ok = freshDir(USER);
  const g = await env.caller.run(clientArgs(broker.socket, 'mount', '-t', 'sshfs', '--via', `exec ${SFTP_SERVER} -d ${remote} 2>/dev/null`, ':', ok), { timeout: 40000 });
  assert.is(g.exitCode, 0, g.stderr);
  const w = await env.caller.run(['sh', '-c', `echo door > ${ok}/f && cat ${remote}/f`]);
  assert.is(w.stdout.trim(), 'door', w.stderr);
  assert.is((await env.caller.run(clientArgs(broker.socket, 'unmount', ok))).exitCode, 0);
  await nothingLeft(ok, fds);
});

// ---- 1d. the Docker plugin socket -------------------------------------------------------------

/** One VolumeDriver request on the plugin socket as root (what dockerd sends). */
function plugin(endpoint: string, body: unknown, timeoutMs = 40000): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: pluginSock, path: `/${endpoint}`, method: 'POST', headers: { 'content-type': 'application/json' }, timeout: timeoutMs }, (res) => {
      let data = '';
      res.setEncoding('utf8').on('data', (d: string) => (data += d)).on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(data || '{}') as Record<string, unknown> }));
    });
    req.on('timeout', () => req.destroy(new Error(`${endpoint}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

s('Docker plugin, INIT-only server: VolumeDriver.Mount answers Err with the code by the deadline, nothing left, Remove works', async () => {
  const fds = fdTable(broker.proc.pid!);
  const c = await plugin('VolumeDriver.Create', { Name: 'hinit', Opts: { source: src, type: 'hanginit', ro: '' } });
  assert.is(c.body.Err, '', JSON.stringify(c.body));
  const [m, ms] = await took(() => plugin('VolumeDriver.Mount', { Name: 'hinit', ID: 'c1' }));
  assert.match(String(m.body.Err), /^(ETIMEDOUT_SERVER|ESERVER_TIMEOUT): [^\n]+$/);
  assert.ok(ms < READY_MS + DOOR_MARGIN_MS, `took ${ms} ms`);
  await nothingLeft(path.join(dir, 'docker-mnt', 'hinit'), fds);
  const p = await plugin('VolumeDriver.Path', { Name: 'hinit' });
  assert.is(p.body.Mountpoint, '');
  assert.is((await plugin('VolumeDriver.Remove', { Name: 'hinit' })).body.Err, '');
});

s('Docker plugin, a server that hangs after ready: VolumeDriver.Unmount returns, the instance ends, nothing left; an ordinary ext4 volume still works', async () => {
  const fds = fdTable(broker.proc.pid!);
  assert.is((await plugin('VolumeDriver.Create', { Name: 'hready', Opts: { source: src, type: 'hangready', ro: '' } })).body.Err, '');
  const m = await plugin('VolumeDriver.Mount', { Name: 'hready', ID: 'c1' });
  assert.is(m.body.Err, '', JSON.stringify(m.body));
  const where = String(m.body.Mountpoint);
  assert.ok(hostMounts().includes(where), `mounted on ${where}`);
  const [u, ms] = await took(() => plugin('VolumeDriver.Unmount', { Name: 'hready', ID: 'c1' }));
  assert.is(u.body.Err, '', JSON.stringify(u.body));
  assert.ok(ms < STOP_MS + 5000, `Unmount took ${ms} ms`);
  await nothingLeft(where, fds);
  assert.is((await plugin('VolumeDriver.Remove', { Name: 'hready' })).body.Err, '');
  const img = await makeImage(dir, 'vol.img', 16, 'ext4', 0);
  assert.is((await plugin('VolumeDriver.Create', { Name: 'plain', Opts: { source: img, type: 'ext4' } })).body.Err, '');
  const g = await plugin('VolumeDriver.Mount', { Name: 'plain', ID: 'c2' });
  assert.is(g.body.Err, '', JSON.stringify(g.body));
  writeFileSync(path.join(String(g.body.Mountpoint), 'f'), 'door\n');
  assert.is(readFileSync(path.join(String(g.body.Mountpoint), 'f'), 'utf8'), 'door\n');
  assert.is((await plugin('VolumeDriver.Unmount', { Name: 'plain', ID: 'c2' })).body.Err, '');
  assert.is((await plugin('VolumeDriver.Remove', { Name: 'plain' })).body.Err, '');
  await nothingLeft(String(g.body.Mountpoint), fds);
  const fsck = await fsckClean(img);
  assert.ok(fsck.ok, fsck.out);
});

// ---- 2. descriptors on the caller's own stopped FUSE server, through the other doors ---------

/**
 * uid 1000 in the caller's namespace: mounts a squashfs image with its own `squashfuse -f`,
 * opens a file in it, stops the server, prints `ready PID FD`, then runs every line it is given
 * (`sh -c`, `{fd}` replaced) in the background with that descriptor inherited. Python, not a
 * shell: a shell's `exec 7<` dups and closes, and the FLUSH of that close (answered ENOSYS
 * while the server runs) turns FLUSH off for the whole connection; then no close could stick.
 * Each such process stays in its own exit, closing the descriptor, until the server goes on:
 * the attacker's own cost, not the broker's.
 */
const ATTACKER_PY = `
import os, subprocess, sys, time
image, own = sys.argv[1], sys.argv[2]
srv = subprocess.Popen(['squashfuse', '-f', image, own], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
end = time.time() + 10
while not any(l.split(' ')[4] == own for l in open('/proc/self/mountinfo')):
    if time.time() > end:
        print('nomount', flush=True); sys.exit(2)
    time.sleep(0.05)
fd = os.open(own + '/f', os.O_RDONLY)
os.set_inheritable(fd, True)
os.kill(srv.pid, 19)
print('ready %d %d' % (srv.pid, fd), flush=True)
for line in sys.stdin:
    subprocess.Popen(['sh', '-c', line.strip().replace('{fd}', str(fd))], pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
`;

async function stoppedServerAttacker(image: string, own: string): Promise<{ proc: ChildProcess; serverPid: number; send: (cmd: string) => void; end: () => Promise<void> }> {
  const py = path.join(dir, 'stuck-attacker.py');
  writeFileSync(py, ATTACKER_PY, { mode: 0o644 });
  const proc = spawn('nsenter', ['-t', String(env.caller.pid), '-m', '--', 'setpriv', '--reuid', String(USER), '--regid', String(USER), '--clear-groups', '--', '/usr/bin/python3', py, image, own], { stdio: ['pipe', 'pipe', 'inherit'], env: { PATH: '/usr/bin:/bin' } });
  const lines: string[] = [];
  createInterface({ input: proc.stdout! }).on('line', (l) => lines.push(l));
  const ready = await waitFor('the attacker\'s stopped squashfuse', () => lines.find((l) => /^(ready|nomount)/.test(l)) ?? (proc.exitCode !== null ? 'exited' : undefined), 20000);
  assert.match(ready, /^ready \d+ \d+$/, `the attacker mounted and stopped its server: ${ready}`);
  const serverPid = Number(ready.split(' ')[1]);
  return {
    proc,
    serverPid,
    send: (cmd) => proc.stdin!.write(`${cmd}\n`),
    end: async () => {
      try {
        process.kill(serverPid, 'SIGCONT');
      } catch {
        /* gone */
      }
      proc.stdin!.end();
      await Promise.race([new Promise((r) => proc.once('exit', r)), sleep(10000)]);
      await execa('nsenter', ['-t', String(env.caller.pid), '-m', '--', 'umount', '-l', own], { reject: false, timeout: 10000 });
      try {
        process.kill(serverPid, 'SIGKILL');
      } catch {
        /* ended with its mount */
      }
    },
  };
}

/** The broker's children that wait in a FUSE request: its closers and statfs helpers stuck on a server. */
function stuckChildren(): number {
  const bpid = String(broker.proc.pid);
  return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
    try {
      return /^PPid:\s*(\d+)$/m.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] === bpid && readFileSync(`/proc/${p}/wchan`, 'utf8') === 'request_wait_answer';
    } catch {
      return false;
    }
  }).length;
}

s('a file on the caller\'s stopped squashfuse as upstream fusedev, argv and source, and as a --via transport: refused by the deadline, another uid served meanwhile, the share holds (ELIMIT_STUCK), all released on SIGCONT', async () => {
  await worldFuseInCaller(env.caller, dir);
  const seed = path.join(dir, 'seed');
  mkdirSync(seed, { recursive: true });
  writeFileSync(path.join(seed, 'f'), 'stuck\n');
  const squash = path.join(dir, 'own.sqfs');
  await execa('mksquashfs', [seed, squash, '-quiet', '-noappend'], { timeout: 30000 });
  chownSync(squash, USER, USER);
  const own = freshDir(USER);
  const img = await makeImage(dir, 'stuck-up.img', 16);
  const fds = fdTable(broker.proc.pid!);
  const a = await stoppedServerAttacker(squash, own);
  const mark = broker.logs().length;
  const refusal = (stage: string, code: string) => new RegExp(`upstream ext4: uid ${USER}: refused at ${stage}: ${code}: [^\\n]+\\n`);
  const awaitLine = (what: string, re: RegExp, ms: number) =>
    waitFor(what, () => re.test(brokerLog(mark)), ms).catch((e: Error) => {
      throw new Error(`${e.message}; the broker said:\n${brokerLog(mark).slice(-3000)}`);
    });
  try {
    const sc = (opt: string) => `${SERVICE_CLIENT} --just-mount ${opt} @{fd} ${upSock('ext4')} ext4 ${img} ${freshDir(USER)}`;
    let t0 = Date.now();
    a.send(sc('--fusedev'));
    await awaitLine('the fusedev refusal', refusal('fusedev', 'EBADFD_FUSE'), 5000);
    assert.ok(Date.now() - t0 < 5000);
    // fuse2fs would read it (and wait): refused first, a FUSE mount without allow_other
    a.send(sc('--answer-open'));
    await awaitLine('the source refusal', refusal('OPEN', 'EBADFD_SOURCE'), 10000);
    // FUSE refuses the broker's statx of another uid's mount (EACCES, no request sent); had it
    // passed, its statfs would wait: refused by request_timeout_ms (4 s) either way
    t0 = Date.now();
    a.send(sc('--argv-file'));
    await awaitLine('the argv refusal', refusal('argv', 'EBADFD_ARGV'), 15000);
    assert.ok(Date.now() - t0 < 4000 + DOOR_MARGIN_MS, `argv refused in ${Date.now() - t0} ms`);
    // the broker socket's --via door
    const out = path.join(freshDir(USER), 'transport.json');
    a.send(`${process.execPath} ${WORKER} fd ${broker.socket} {fd} ${freshDir(USER)} > ${out}`);
    const tr = await waitFor('the transport answer', () => (existsSync(out) && readFileSync(out, 'utf8')) || undefined, 15000);
    const code = (JSON.parse(tr) as { code?: string }).code;
    assert.ok(code === 'EBADFD_TRANSPORT' || code === 'ELIMIT_STUCK', `the transport refused: ${tr}`);
    // More of the same until the share is used up: then the uid is refused at connect.
    for (let i = 0; i < 2 * STUCK_SHARE && !/refused at connect: ELIMIT_STUCK/.test(brokerLog(mark)); i++) {
      a.send(sc('--fusedev'));
      await sleep(500);
    }
    await awaitLine('ELIMIT_STUCK for the uid', new RegExp(`upstream ext4: uid ${USER}: refused at connect: ELIMIT_STUCK: [^\\n]+\\n`), 5000);
    const stuck = stuckChildren();
    assert.ok(stuck >= 1 && stuck <= STUCK_SHARE, `the broker's stuck children within the uid's share (${stuck}, share ${STUCK_SHARE})`);
    const l = await env.caller.run(clientArgs(broker.socket, 'list'), { uid: USER, timeout: 10000 });
    assert.match(l.stderr, /ELIMIT_STUCK/, 'the same uid on the broker socket: refused too');
    // Another uid meanwhile, through the broker socket and through the upstream socket.
    const other = await makeImage(dir, 'other.img', 16, 'ext4', OTHER);
    const otherMnt = freshDir(OTHER);
    const [m, ms] = await took(() => env.caller.run(clientArgs(broker.socket, 'mount', '-t', 'ext4', '-o', 'ro', other, otherMnt), { uid: OTHER, timeout: 30000 }));
    assert.is(m.exitCode, 0, m.stderr);
    assert.ok(ms < OTHER_UID_BOUND_MS, `uid ${OTHER}'s mount took ${ms} ms (bound ${OTHER_UID_BOUND_MS})`);
    assert.is((await env.caller.run(clientArgs(broker.socket, 'unmount', otherMnt), { uid: OTHER })).exitCode, 0);
    const rootImg = await makeImage(dir, 'root-up.img', 16, 'ext4', 0);
    const rootMnt = freshDir();
    const [r, rms] = await took(() => helperRun(env.caller, SERVICE_CLIENT, upSock('ext4'), 'ext4', rootImg, rootMnt));
    assert.is(r.exitCode, 0, r.stderr);
    assert.ok(rms < OTHER_UID_BOUND_MS, `root's upstream mount took ${rms} ms`);
    assert.is((await env.caller.run(['umount', rootMnt], { uid: 0 })).exitCode, 0);
  } finally {
    await a.end();
  }
  // The server went on: every stuck close and statfs ends, the uid is served again.
  await waitFor('no stuck children', () => stuckChildren() === 0, 20000);
  await nothingLeft(own, fds);
  const again = freshDir(USER);
  const g = await env.caller.run(clientArgs(broker.socket, 'mount', '-t', 'ext4', img, again), { uid: USER, timeout: 30000 });
  assert.is(g.exitCode, 0, `uid ${USER} is served again: ${g.stderr}`);
  assert.is((await env.caller.run(clientArgs(broker.socket, 'unmount', again), { uid: USER })).exitCode, 0);
  await nothingLeft(again, fds);
});

// ---- 3. uid 1000 as root of its own user namespace, at each door ------------------------------

const q = (a: string[]) => a.map((x) => `'${x}'`).join(' ');
/** SCRIPT run by uid 1000 as root of a new user namespace (`unshare -Urm`) made inside the caller's namespace. */
async function asNsRoot(script: string, envv: Record<string, string> = {}) {
  const f = path.join(dir, `ns-script-${seq++}.sh`);
  writeFileSync(f, script + '\n', { mode: 0o644 });
  return env.sh(`unshare -Urm --propagation private -- sh ${f}`, USER, envv, 60000);
}

async function liveOwners(): Promise<number[]> {
  const l = await execa(CLIENT, ['--socket', broker.socket, '--json', 'list'], { timeout: 30000 });
  return (JSON.parse(l.stdout) as { mounts: { owner_uid: number; state: string }[] }).mounts.filter((m) => m.state === 'running').map((m) => m.owner_uid);
}

s('user namespace root on --via: served as uid 1000 (not 0), nosuid,nodev on the mount, its own unmount works', async () => {
  const fds = fdTable(broker.proc.pid!);
  const remote = freshDir(USER);
  const mnt = freshDir(USER);
  const r = await asNsRoot([
    `${q(clientArgs(broker.socket, 'mount', '-t', 'sshfs', '--via', `exec ${SFTP_SERVER} -d ${remote} 2>/dev/null`, ':', mnt))} || exit 10`,
    `grep " ${mnt} " /proc/self/mountinfo | grep -q "nosuid,nodev" || exit 11`,
    `echo ns > ${mnt}/f || exit 12`,
    `${q([CLIENT, '--socket', broker.socket, '--json', 'list'])} > ${remote}/list.json`,
    `${q(clientArgs(broker.socket, 'unmount', mnt))} || exit 13`,
  ].join('\n'));
  assert.is(r.exitCode, 0, r.stderr);
  assert.is(readFileSync(path.join(remote, 'f'), 'utf8'), 'ns\n');
  const listed = (JSON.parse(readFileSync(path.join(remote, 'list.json'), 'utf8')) as { mounts: { owner_uid: number; fstype: string; state: string }[] }).mounts.filter((m) => m.state === 'running');
  assert.equal(listed.map((m) => [m.owner_uid, m.fstype]), [[USER, 'sshfs']], 'the broker saw uid 1000, not the namespace\'s 0');
  await nothingLeft(mnt, fds);
});

s('user namespace root through mount(8): -o dev and suid are served nosuid,nodev as uid 1000; allow_other, user_id=0 and an fstab `user,dev` line are refused EOPTION on one line; an ordinary mount and umount work', async () => {
  const fds = fdTable(broker.proc.pid!);
  const udir = makeDir(path.join(dir, 'ns-mh'), USER);
  const img = await makeImage(udir, 'disk.img', 16);
  const mnt = makeDir(path.join(udir, 'mnt'), USER);
  env.fstab([`${img} ${mnt} fuse-svc.ext4 user,noauto,dev,socket=${broker.socket} 0 0`]);
  // dev and suid: mount(8), being "root", keeps them to itself (VFS flags the helper never
  // gets), so the mount is served with the broker's rules: nosuid,nodev, no allow_other, owned
  // by uid 1000. allow_other and user_id=0 reach the helper and are refused EOPTION. Each
  // outcome is pinned: a refusal turned into a mount (or the reverse) fails here.
  const expected: Record<string, 'served' | 'refused'> = { dev: 'served', suid: 'served', allow_other: 'refused', 'user_id=0': 'refused' };
  for (const [o, want] of Object.entries(expected)) {
    const r = await asNsRoot(`mount -t fuse-svc.ext4 -o ${o},socket=${broker.socket} ${img} ${mnt} || exit $?\ngrep " ${mnt} " /proc/self/mountinfo\n${CLIENT} --socket ${broker.socket} --json list\numount ${mnt}`);
    assert.is(r.exitCode === 0 ? 'served' : 'refused', want, `${o}: ${r.stdout} ${r.stderr}`);
    if (r.exitCode === 0) {
      // user_id=0 here is the namespace's 0: the superblock is owned by the caller's user namespace
      assert.match(r.stdout, /[ ,]nosuid,nodev[, ][^\n]* - fuse\.ext4 /, `${o} served: ${r.stdout}`);
      assert.not.match(r.stdout, /allow_other/, `${o} served: ${r.stdout}`);
      const owners = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { mounts: { owner_uid: number; state: string }[] }).mounts.filter((m) => m.state === 'running').map((m) => m.owner_uid);
      assert.equal(owners, [USER], `${o} served, owned by uid 1000`);
    } else {
      assert.is(r.exitCode, 32, `${o}: ${r.stderr}`);
      assert.match(r.stderr.trim(), /^mount\.fuse-svc: EOPTION: [^\n]+$/, o);
    }
    await waitFor('the instance to end', () => left().length === 0, 15000);
  }
  const f = await asNsRoot(`mount ${mnt}`);
  assert.is(f.exitCode, 32, f.stderr);
  assert.match(f.stderr.trim(), /^mount\.fuse-svc: EOPTION: [^\n]+$/);
  assert.equal(await liveOwners(), []);
  const ok = await asNsRoot(`mount -t fuse-svc.ext4 -o socket=${broker.socket} ${img} ${mnt} && grep " ${mnt} " /proc/self/mountinfo | grep -q "nosuid,nodev" && echo ns > ${mnt}/f && umount ${mnt} && echo DONE`);
  assert.match(ok.stdout, /DONE/, ok.stderr);
  await nothingLeft(mnt, fds);
  const fsck = await fsckClean(img);
  assert.ok(fsck.ok, fsck.out);
});

s('user namespace root runs umount.fuse-svc on root\'s mount: refused with a code, the mount stays', async () => {
  const img = await makeImage(dir, 'root-mh.img', 16, 'ext4', 0);
  const mnt = freshDir();
  env.fstab([]);
  const m = await env.sh(`mount -t fuse-svc.ext4 -o rw,socket=${broker.socket} ${img} ${mnt}`);
  assert.is(m.exitCode, 0, m.stderr);
  let um: { exitCode?: number; stderr: string };
  try {
    const r = await asNsRoot(`/sbin/umount.fuse-svc ${mnt}`, { FUSE_SVC_SOCKET: broker.socket });
    assert.is(r.exitCode, 32, r.stderr);
    assert.match(r.stderr.trim(), /^umount\.fuse-svc: E[A-Z_]+: [^\n]+$/);
    assert.ok(env.caller.fuseMounts().includes(mnt), 'root\'s mount stays');
    assert.equal(await liveOwners(), [0]);
  } finally {
    um = await env.sh(`umount ${mnt}`); // asserted after: a failure above must not be hidden
  }
  assert.is(um.exitCode, 0, um.stderr);
  await waitFor('the instance to end', () => left().length === 0, 15000);
  const fsck = await fsckClean(img);
  assert.ok(fsck.ok, fsck.out);
});

s('user namespace root on the Docker plugin socket: cannot connect (0600 root), nothing defined; root still served', async () => {
  const r = await asNsRoot(`curl -s -S --max-time 10 --unix-socket ${pluginSock} -X POST --data-binary '{"Name":"x","Opts":{"source":"/etc/shadow","type":"ext4"}}' http://plugin/VolumeDriver.Create`);
  assert.is.not(r.exitCode, 0);
  assert.match(r.stderr, /Permission denied|Couldn't connect|Failed to connect/i);
  const l = await plugin('VolumeDriver.List', {});
  assert.equal(l.body.Volumes, []);
});

s.run();
