// Adversary suite, issue 15 §3: before Linux 6.5 the broker has no SO_PEERPIDFD and takes the
// caller's pidfd from pidfd_open(SO_PEERCRED's pid). That pid may name another process by the
// time the request is read. FUSE_SVC_NO_PEERPIDFD=1 takes that path here. A caller that sends a
// mount and exits while the broker is stopped, its pid then given (ns_last_pid) to another
// uid's process: the broker must not act on that process (EPEER), and ordinary mounts through
// the fallback still work.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { NATIVE, killAndWait, makeDir, makeImage, newCaller, sleep, startBroker, tmpdir, waitFor, type Broker, type Caller } from '../lib/harness.js';

const CLIENT = path.join(NATIVE, 'fuse-svc-client');
let broker: Broker;
let caller: Caller;
let dir: string;

test.before(async () => {
  dir = tmpdir('fuse-svc-pidfd-');
  broker = await startBroker({ env: { FUSE_SVC_NO_PEERPIDFD: '1' } });
  caller = await newCaller();
});

test.after(async () => {
  await broker?.stop();
  await caller?.close();
  rmSync(dir, { recursive: true, force: true });
});

const uidOf = (pid: number) => Number(/^Uid:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);

test('without SO_PEERPIDFD an ordinary mount works through pidfd_open', async () => {
  const img = await makeImage(dir, 'ok.img', 16);
  const mnt = makeDir(path.join(dir, 'ok'));
  const m = await caller.run([CLIENT, '--socket', broker.socket, 'mount', '-t', 'ext4', '-o', 'ro', img, mnt]);
  assert.is(m.exitCode, 0, m.stderr);
  assert.ok(caller.fuseMounts().includes(mnt), 'mounted in the caller namespace');
  assert.is((await caller.run([CLIENT, '--socket', broker.socket, 'unmount', mnt])).exitCode, 0);
});

test('a caller whose pid is reused by another uid before its request is read: EPEER, nothing done to the other', async () => {
  const img = await makeImage(dir, 'race.img', 16);
  const mnt = makeDir(path.join(dir, 'race'));
  const bpid = broker.proc.pid!;
  let other: ChildProcess | undefined;
  process.kill(bpid, 'SIGSTOP');
  try {
    // The request is queued on the stopped broker's socket (connect and send need no accept);
    // then the caller is killed. `exec` keeps the shell's pid for the client.
    const quitter = spawn('nsenter', ['-t', String(caller.pid), '-m', '--', 'setpriv', '--reuid', '1000', '--regid', '1000', '--clear-groups', '--',
      '/bin/sh', '-c', `echo $$; exec ${CLIENT} --socket ${broker.socket} mount -t ext4 -o ro ${img} ${mnt}`], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    quitter.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor('the client\'s pid', () => /\d+\n/.test(out), 5000);
    const clientPid = Number(out.trim());
    await waitFor('the client to have connected', () => {
      try {
        return readFileSync(`/proc/${clientPid}/comm`, 'utf8').startsWith('fuse-svc-client') && readFileSync(`/proc/${clientPid}/wchan`, 'utf8') !== '0';
      } catch {
        return false;
      }
    }, 5000);
    await sleep(300);
    await killAndWait(quitter);
    // Give clientPid to a process of uid 1001 (ns_last_pid: the next pid is that + 1). Other
    // processes on the machine may take it first: try again a few times.
    for (let i = 0; i < 200 && !other; i++) {
      writeFileSync('/proc/sys/kernel/ns_last_pid', String(clientPid - 1));
      const p = spawn('setpriv', ['--reuid', '1001', '--regid', '1001', '--clear-groups', '--', 'sleep', '30'], { stdio: 'ignore' });
      if (p.pid === clientPid) other = p;
      else p.kill('SIGKILL');
    }
    assert.ok(other, `pid ${clientPid} could be given to another process`);
    await waitFor('the other process to run as uid 1001', () => uidOf(clientPid) === 1001, 5000);
  } finally {
    process.kill(bpid, 'SIGCONT');
  }
  try {
    await waitFor('the broker to read the request', () => /names another process now/.test(broker.logs()), 10000);
    assert.match(broker.logs(), /EPEER: the caller's pid \d+ names another process now/);
    assert.equal(caller.fuseMounts().filter((m) => m === mnt), [], 'nothing mounted for the gone caller');
    const ns1001 = readFileSync(`/proc/${other!.pid}/mountinfo`, 'utf8');
    assert.not.match(ns1001, /fuse\.ext4|race\.img/, 'nothing mounted in the namespace of the process that took the pid');
  } finally {
    other?.kill('SIGKILL');
  }
  // The broker serves on.
  const m = await caller.run([CLIENT, '--socket', broker.socket, 'mount', '-t', 'ext4', '-o', 'ro', img, mnt]);
  assert.is(m.exitCode, 0, m.stderr);
  assert.is((await caller.run([CLIENT, '--socket', broker.socket, 'unmount', mnt])).exitCode, 0);
});

test.run();
