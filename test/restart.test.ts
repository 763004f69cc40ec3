// Broker restarts keep mounts (issue 6, part 1): SIGKILL and SIGTERM of fuse-svcd leave live
// mounts working, a new broker on the same runtime dir re-adopts them (and never a process
// whose pid was reused), `fuse-svcd stop` detaches everything in the callers' namespaces, and
// under `fuse-svc-launcher init` a crashed broker is restarted while SIGTERM is a full stop.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { DAEMON, NATIVE, clientArgs, instanceProcesses, makeDir, makeImage, newCaller, sleep, startBroker, tmpdir, waitFor, type Broker, type Caller, madeRuntimeDir } from './lib/harness.js';
import { existingInstanceCgroups } from '../supervisor/cgroups.js';

const s = suite('broker restart keeps mounts');
let caller: Caller;
let caller2: Caller;
let dir: string;
const brokers: Broker[] = [];
const others: ChildProcess[] = [];

s.before(async () => {
  dir = tmpdir();
  caller = await newCaller();
  caller2 = await newCaller();
});

s.after(async () => {
  for (const p of others) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  // Full stop of every runtime dir used, even when a test failed half-way.
  for (const b of brokers) await b.stop().catch(() => {});
  await caller?.close();
  await caller2?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function broker(runtimeDir?: string): Promise<Broker> {
  const b = await startBroker({ runtimeDir });
  brokers.push(b);
  return b;
}

/** Writes a line as the caller and reads the file back; throws on any error (e.g. ENOTCONN). */
async function useMount(c: Caller, mnt: string, line: string): Promise<string> {
  const r = await c.run(['sh', '-c', `echo '${line}' >> '${mnt}/log' && sync '${mnt}/log' && cat '${mnt}/log'`], { timeout: 10000 });
  assert.is(r.exitCode, 0, `write+read on ${mnt}: ${r.stderr}`);
  return r.stdout;
}

/** No mount in the caller's table answers ENOTCONN (stat of each FUSE mount point works or it is gone). */
async function noEnotconn(c: Caller): Promise<void> {
  for (const m of c.fuseMounts()) {
    const r = await c.run(['stat', '-c', '%i', m], { timeout: 5000 });
    assert.not.match(r.stderr, /not connected/i, `${m} answers ENOTCONN`);
  }
}

s('SIGKILL and SIGTERM of fuse-svcd leave the mount working; the next broker re-adopts it; list/unmount work', async () => {
  const b1 = await broker();
  const img = await makeImage(dir, 'restart.img', 32);
  const mnt = makeDir(path.join(dir, 'mnt-restart'));
  const m = await caller.run(clientArgs(b1.socket, '--json', 'mount', img, mnt));
  assert.is(m.exitCode, 0, m.stderr);
  const { id } = JSON.parse(m.stdout) as { id: number };
  await useMount(caller, mnt, 'before');

  // A writer that keeps going through both restarts.
  const writer = caller.run(['sh', '-c', `i=0; while [ $i -lt 60 ]; do echo w$i >> '${mnt}/stream' || exit 1; i=$((i+1)); sleep 0.05; done`], { timeout: 30000 });

  b1.proc.kill('SIGKILL');
  await waitFor('broker 1 to die', () => b1.proc.signalCode !== null, 5000);
  assert.ok(caller.fuseMounts().includes(mnt), 'mount still there after SIGKILL of the broker');
  await useMount(caller, mnt, 'after-kill');

  const b2 = await broker(b1.runtimeDir);
  assert.match(b2.logs(), new RegExp(`instance ${id}: re-adopted`), 'log line of the adoption');
  const l = await caller.run(clientArgs(b2.socket, '--json', 'list'));
  const mounts = JSON.parse(l.stdout).mounts as { id: number; state: string }[];
  assert.equal(mounts.map((x) => [x.id, x.state]), [[id, 'running']]);

  await b2.exit(); // SIGTERM
  assert.match(b2.logs(), /SIGTERM: exiting; 1 live mount\(s\) keep running/);
  assert.ok(caller.fuseMounts().includes(mnt), 'mount still there after SIGTERM of the broker');
  await useMount(caller, mnt, 'after-term');

  const b3 = await broker(b1.runtimeDir);
  assert.match(b3.logs(), new RegExp(`instance ${id}: re-adopted`));
  const w = await writer;
  assert.is(w.exitCode, 0, `the writer never saw an error: ${w.stderr}`);
  const text = await useMount(caller, mnt, 'after-restarts');
  assert.equal(text.trim().split('\n'), ['before', 'after-kill', 'after-term', 'after-restarts']);
  const stream = await caller.run(['cat', `${mnt}/stream`]);
  assert.is(stream.stdout.trim().split('\n').length, 60, 'every streamed write landed');

  const u = await caller.run(clientArgs(b3.socket, 'unmount', mnt));
  assert.is(u.exitCode, 0, u.stderr);
  assert.not.ok(caller.fuseMounts().includes(mnt));
  await waitFor('instance processes gone', () => instanceProcesses(b3.runtimeDir).length === 0, 5000);
  const fsck = await execa('e2fsck', ['-fn', img], { reject: false });
  assert.is(fsck.exitCode, 0, fsck.stdout);
  assert.equal(existingInstanceCgroups(b3.runtimeDir), [], 'instance cgroups removed');
});

s('a state file naming a live but unrelated process (pid reused) is not adopted and never signalled', async () => {
  const runtimeDir = madeRuntimeDir();
  const victim = spawn('sleep', ['600'], { stdio: 'ignore' });
  others.push(victim);
  await waitFor('the victim', () => victim.pid !== undefined, 2000);
  const instances = path.join(runtimeDir, 'instances');
  const b0 = await broker(runtimeDir); // creates the directories
  await b0.exit();
  // What a dead launcher left behind, after the kernel gave its pid to someone else.
  const rec = { id: 41, owner_uid: 1000, owner_gid: 1000, fstype: 'ext4', options: 'rw', source: '/fake.img', target: '/fake', uid: 61999, server: 'fuse2fs', started_at: Date.now() - 1000, launcher_pid: victim.pid, launcher_start: '1', mnt_id: '1', mnt_id_old: '1', target_path: '/fake' };
  writeFileSync(path.join(instances, '41.json'), JSON.stringify(rec));
  writeFileSync(path.join(instances, '41.state'), `state=running\nlauncher_pid=${victim.pid}\nserver_pid=${victim.pid}\nmnt_id=1\nexit_code=-1\nexit_signal=0\nreason=\nended_at=0\n`);
  const b = await broker(runtimeDir);
  assert.not.match(b.logs(), /instance 41: re-adopted/);
  const l = await caller.run(clientArgs(b.socket, '--json', 'list'), { uid: 0 });
  const m = (JSON.parse(l.stdout).mounts as { id: number; state: string; reason: string }[]).find((x) => x.id === 41);
  assert.ok(m, 'listed once');
  assert.is(m!.state, 'exited');
  const un = await caller.run(clientArgs(b.socket, 'unmount', '--id', '41'), { uid: 0 });
  assert.match(un.stderr, /ENOENT_MOUNT/);
  await b.stop(); // full stop must not touch it either
  await sleep(200);
  assert.is(victim.exitCode, null, 'the unrelated process is alive');
  assert.is(victim.signalCode, null);
  victim.kill('SIGKILL');
});

s('fuse-svcd stop detaches every mount in every caller namespace, ends every server, leaves no ENOTCONN', async () => {
  const b = await broker();
  const targets: [Caller, string][] = [];
  for (const [i, c] of [caller, caller, caller2].entries()) {
    const img = await makeImage(dir, `stop${i}.img`, 16);
    const mnt = makeDir(path.join(dir, `mnt-stop${i}`));
    const m = await c.run(clientArgs(b.socket, 'mount', img, mnt));
    assert.is(m.exitCode, 0, m.stderr);
    await useMount(c, mnt, `data${i}`);
    targets.push([c, mnt]);
  }
  await b.exit(); // a full stop works without a running broker too
  const stop = await execa(process.execPath, [DAEMON, 'stop', '--runtime-dir', b.runtimeDir, '--timeout', '20000'], { reject: false, timeout: 30000 });
  assert.is(stop.exitCode, 0, stop.stderr);
  assert.match(stop.stderr, /full stop: 3 instance\(s\) unmounted and ended/);
  for (const [c, mnt] of targets) assert.not.ok(c.fuseMounts().includes(mnt), `${mnt} detached`);
  await noEnotconn(caller);
  await noEnotconn(caller2);
  assert.equal(instanceProcesses(b.runtimeDir), []);
  for (let i = 0; i < 3; i++) {
    const fsck = await execa('e2fsck', ['-fn', path.join(dir, `stop${i}.img`)], { reject: false });
    assert.is(fsck.exitCode, 0, `image ${i} clean after the full stop: ${fsck.stdout}`);
  }
});

s('container: under fuse-svc-launcher init a killed broker is restarted and mounts survive; SIGTERM to init is a full stop', async () => {
  const runtimeDir = madeRuntimeDir();
  const socket = path.join(runtimeDir, 'public', 'broker.sock');
  const daemon = [process.execPath, DAEMON, '--runtime-dir', runtimeDir, '--socket', socket];
  const init = spawn(path.join(NATIVE, 'fuse-svc-launcher'), ['init', '--restart-delay-ms', '200', ...['--stop-cmd', process.execPath, '--stop-cmd', DAEMON, '--stop-cmd', 'stop', '--stop-cmd', '--runtime-dir', '--stop-cmd', runtimeDir], '--', ...daemon], { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  others.push(init);
  let logs = '';
  init.stderr!.on('data', (d: Buffer) => (logs += d.toString()));
  const exited = new Promise<number | null>((r) => init.once('exit', (code) => r(code)));
  try {
    await waitFor('the broker under init to listen', () => (logs.match(/listening on/g) ?? []).length >= 1, 15000);
    const img = await makeImage(dir, 'init.img', 16);
    const mnt = makeDir(path.join(dir, 'mnt-init'));
    const m = await caller.run(clientArgs(socket, '--json', 'mount', img, mnt));
    assert.is(m.exitCode, 0, m.stderr);
    const { id } = JSON.parse(m.stdout) as { id: number };
    const brokerPid = Number(readFileSync(path.join(runtimeDir, 'broker.pid'), 'utf8').split(' ')[0]);
    process.kill(brokerPid, 'SIGKILL');
    await waitFor('init to restart the broker', () => /killed by signal 9; restarting/.test(logs) && (logs.match(/listening on/g) ?? []).length >= 2, 15000);
    assert.match(logs, new RegExp(`instance ${id}: re-adopted`));
    await useMount(caller, mnt, 'survived');
    const l = await caller.run(clientArgs(socket, '--json', 'list'));
    assert.is(JSON.parse(l.stdout).mounts[0].state, 'running');

    init.kill('SIGTERM');
    let t: NodeJS.Timeout | undefined;
    const code = await Promise.race([exited, new Promise<'timeout'>((r) => (t = setTimeout(() => r('timeout'), 40000)))]);
    clearTimeout(t);
    assert.is(code, 0, `init exits 0 after the full stop; log:\n${logs}`);
    assert.match(logs, /full stop: 1 instance\(s\) unmounted and ended/);
    assert.not.ok(caller.fuseMounts().includes(mnt), 'detached by the full stop');
    await noEnotconn(caller);
    assert.equal(instanceProcesses(runtimeDir), []);
  } finally {
    if (init.exitCode === null) {
      init.kill('SIGKILL');
      await execa(process.execPath, [DAEMON, 'stop', '--runtime-dir', runtimeDir], { reject: false, timeout: 30000 });
    }
  }
});

s.run();
