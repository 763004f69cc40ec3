// Adversary suite, "never blocked" (issue 15 §1): an unprivileged caller (uid 1000 in its own
// mount namespace) runs its own squashfuse, stops it, and sends the broker descriptors on it:
// as an extra on `list`, as a mount's source, as a mount's target, then 200 such requests at
// once. Every request is answered (or refused with a code) by its deadline, another uid's mount
// completes meanwhile within a bound, the broker's descriptors and threads stay bounded, and
// once the server goes on nothing is left.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { execa } from 'execa';
import { NATIVE, ROOT, fdCount, instanceProcesses, makeDir, makeImage, newCaller, processes, sleep, startBroker, tmpdir, waitFor, type Broker, type Caller , worldFuseInCaller } from '../lib/harness.js';

const CLIENT = path.join(NATIVE, 'fuse-svc-client');
const ATTACKER = path.join(ROOT, 'dist', 'test', 'lib', 'stuck-attacker.js');
/** Another uid's mount must complete within this while the burst is in flight (docs/security.md). */
const OTHER_UID_BOUND_MS = 10000;

let broker: Broker;
let caller: Caller;
let dir: string;

test.before(async () => {
  dir = tmpdir('fuse-svc-stuck-');
  broker = await startBroker({ config: { max_mounts_per_user: 4, target_statfs_timeout_ms: 1000 } });
  caller = await newCaller();
  await worldFuseInCaller(caller, dir);
});

test.after(async () => {
  await broker?.stop();
  await caller?.close();
  rmSync(dir, { recursive: true, force: true });
});

const threads = (pid: number) => readdirSync(`/proc/${pid}/task`).length;

test('descriptors on the caller\'s own stopped squashfuse: list, source, target, a burst of 200', async () => {
  const seed = path.join(dir, 'seed');
  mkdirSync(seed);
  writeFileSync(path.join(seed, 'f'), 'stuck\n');
  const squash = path.join(dir, 'own.sqfs');
  await execa('mksquashfs', [seed, squash, '-quiet', '-noappend']);
  chownSync(squash, 1000, 1000);
  const ownMnt = makeDir(path.join(dir, 'own-mnt'), 1000);
  const good = await makeImage(dir, 'good.img', 16, 'ext4', 1000);
  const goodMnt = makeDir(path.join(dir, 'good-mnt'), 1000);
  const other = await makeImage(dir, 'other.img', 16, 'ext4', 1001);
  const otherMnt = makeDir(path.join(dir, 'other-mnt'), 1001);

  const bpid = broker.proc.pid!;
  const fds0 = fdCount(bpid);
  const threads0 = threads(bpid);
  const attacker: ChildProcess = spawn('nsenter', ['-t', String(caller.pid), '-m', '--', 'setpriv', '--reuid', '1000', '--regid', '1000', '--clear-groups', '--',
    'env', `STUCK_ATTACKER_DEBUG=${process.env.STUCK_ATTACKER_DEBUG ?? ''}`, process.execPath, ATTACKER, broker.socket, squash, ownMnt, good, goodMnt], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: string[] = [];
  createInterface({ input: attacker.stdout! }).on('line', (l) => lines.push(l));
  // Sends a command; the returned function waits for its answer (the line count is taken at
  // the send, so an answer that comes early is not missed).
  const ask = (cmd: string) => {
    const n = lines.length;
    attacker.stdin!.write(`${cmd}\n`);
    return (what: string, ms: number) => next(n, what, ms);
  };
  const next = async (n: number, what: string, ms: number) => {
    await waitFor(what, () => lines.length > n || attacker.exitCode !== null, ms, 20);
    assert.ok(lines.length > n, `${what}: the attacker answered (exit ${attacker.exitCode})`);
    return lines[n]!;
  };
  let serverPid = 0;
  try {
    await waitFor('the attacker\'s stopped server', () => lines.some((l) => l.startsWith('ready')) || attacker.exitCode !== null, 20000);
    serverPid = Number(lines.find((l) => l.startsWith('ready'))?.split(' ')[1]);
    assert.ok(serverPid > 0, 'the attacker mounted and stopped its squashfuse');

    // One of each, in order. The target's statfs would wait for the stopped server: refused by
    // target_statfs_timeout_ms. A list with the file attached: answered, the close is not ours.
    const target = JSON.parse(await ask('one 2')('a mount onto the stopped mount', 10000)) as { code: string; ms: number };
    assert.is(target.code, 'EPERM_TARGET', 'the target check gave up by its deadline');
    assert.ok(target.ms < 5000, `refused within the statfs deadline (${target.ms} ms)`);
    const list = JSON.parse(await ask('one 0')('a list with the file attached', 10000)) as { code: string; ms: number };
    assert.ok(list.ms < 3000, `answered at once (${list.ms} ms, ${list.code})`);
    // The file as a mount's source: fuse2fs's first read waits for the stopped server; the
    // broker answers by its own deadline (the definition's readyTimeoutMs + 5 s) with a code.
    const source = JSON.parse(await ask('one 1')('a mount from the stopped file', 40000)) as { code: string; ms: number };
    assert.is.not(source.code, 'OK', 'a mount reading from the stopped server cannot succeed');
    assert.ok(/^E[A-Z_]+$/.test(source.code) && source.ms < 30000, `refused with a code by the deadline (${source.code}, ${source.ms} ms)`);

    // 200 at once; meanwhile another uid mounts, and the broker's fds and threads are sampled.
    const burstAnswer = ask('burst 200');
    await sleep(500);
    let maxFds = 0;
    let maxThreads = 0;
    const sampler = setInterval(() => {
      maxFds = Math.max(maxFds, fdCount(bpid));
      maxThreads = Math.max(maxThreads, threads(bpid));
    }, 50);
    try {
      const t0 = Date.now();
      const m = await caller.run([CLIENT, '--socket', broker.socket, 'mount', '-t', 'ext4', '-o', 'ro', other, otherMnt], { uid: 1001, timeout: 30000 });
      const took = Date.now() - t0;
      assert.is(m.exitCode, 0, `uid 1001's mount during the burst: ${m.stderr}`);
      assert.ok(took < OTHER_UID_BOUND_MS, `uid 1001's mount completed in ${took} ms (bound ${OTHER_UID_BOUND_MS} ms)`);
      const u = await caller.run([CLIENT, '--socket', broker.socket, 'unmount', otherMnt], { uid: 1001, timeout: 30000 });
      assert.is(u.exitCode, 0, `and unmounts: ${u.stderr}`);
      const burst = JSON.parse(await burstAnswer('the burst', 60000)) as { answered: number; codes: Record<string, number>; maxMs: number };
      assert.is(burst.answered, 200, `every request answered: ${JSON.stringify(burst.codes)}`);
      assert.ok(burst.maxMs < 30000, `each by its deadline (slowest ${burst.maxMs} ms)`);
      for (const k of Object.keys(burst.codes)) {
        assert.ok(!/^source:OK$/.test(k) && !/closed|client/.test(k), `no mount from the stopped file, no unanswered request: ${k}`);
      }
      // Its share is used up now: at most max_stuck_per_user (8) processes hold its stuck
      // closes and statfs calls, the rest of its descriptors wait; its next request is refused.
      const stuckChildren = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
        try {
          return /^PPid:\s*(\d+)$/m.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] === String(bpid) && readFileSync(`/proc/${p}/wchan`, 'utf8') === 'request_wait_answer';
        } catch {
          return false;
        }
      }).length;
      assert.ok(stuckChildren >= 1 && stuckChildren <= 8, `stuck processes of the broker within the uid's share (${stuckChildren}, share 8)`);
      const after = JSON.parse(await ask('one 0')('a list once the share is used up', 10000)) as { code: string; ms: number };
      assert.is(after.code, 'ELIMIT_STUCK', `past its share the caller is refused with ELIMIT_STUCK (burst: ${JSON.stringify(burst.codes)})`);
    } finally {
      clearInterval(sampler);
    }
    assert.ok(maxThreads <= threads0 + 4, `broker threads bounded (${maxThreads}, baseline ${threads0})`);
    // What one uid can make the broker hold: its connections (cap 64), each with the peer's
    // pidfd and at most 2 descriptors of its own, stuck or waiting (docs/security.md).
    assert.ok(maxFds <= fds0 + 64 * 4, `broker fds bounded (${maxFds}, baseline ${fds0})`);
  } catch (e) {
    if (process.env.STUCK_ATTACKER_DEBUG) {
      for (const t of readdirSync(`/proc/${attacker.pid}/task`)) {
        process.stderr.write(`attacker task ${t}: ${readFileSync(`/proc/${attacker.pid}/task/${t}/wchan`, 'utf8')} ${readFileSync(`/proc/${attacker.pid}/task/${t}/stack`, 'utf8').split('\n').slice(0, 6).join(' | ')}\n`);
      }
      process.stderr.write(`broker fds: ${readdirSync(`/proc/${bpid}/fd`).length}\n`);
    }
    throw e;
  } finally {
    ask('cont');
    await Promise.race([new Promise((r) => attacker.once('exit', r)), sleep(10000)]);
    // Every squashfuse, not only the pid the attacker reported (it may never have said): a
    // stopped one would hold the umount below and this test's process in FLUSH.
    for (const pid of [serverPid, ...processes(['squashfuse']).map((p) => p.pid)]) {
      try {
        if (pid) process.kill(pid, 'SIGCONT');
      } catch {
        /* it ended with the attacker */
      }
    }
    attacker.kill('SIGKILL');
    // --no-canonicalize: umount(8) would otherwise stat the path first, on the FUSE mount.
    await execa('nsenter', ['-t', String(caller.pid), '-m', '--', 'umount', '--no-canonicalize', '-l', ownMnt], { reject: false, timeout: 10000 });
  }
  // The server went on: every stuck close and statfs finishes, nothing is left.
  await waitFor('broker fds back to the baseline', () => fdCount(bpid) <= fds0 + 2, 20000);
  await waitFor('no instance process left', () => instanceProcesses(broker.runtimeDir).length === 0, 20000);
  assert.equal(caller.fuseMounts().filter((m) => m !== ownMnt), [], 'no broker mount left in the caller namespace');
  const again = await caller.run([CLIENT, '--socket', broker.socket, 'mount', '-t', 'ext4', '-o', 'ro', good, goodMnt], { uid: 1000, timeout: 30000 });
  assert.is(again.exitCode, 0, `the attacker's own ordinary mount is served again: ${again.stderr}`);
  assert.is((await caller.run([CLIENT, '--socket', broker.socket, 'unmount', goodMnt], { uid: 1000 })).exitCode, 0);
});

test.run();
