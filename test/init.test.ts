/**
 * Tests of `fuse-svc-launcher init` (helper/native/launcher-init.c), the container's PID 1:
 * restart with back-off, full stop on SIGTERM (CMD first, then the stop command), orphans
 * reaped (as a subreaper and as PID 1 of a pid namespace), signal forwarding.
 * Uses build/Release/fuse-svc-launcher (`npm run native`). Every wait has a deadline; every
 * process a test starts is killed in teardown, also when the test fails.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './lib/harness.js';


const LAUNCHER = process.env.FUSE_SVC_TEST_LAUNCHER ?? join(ROOT, 'build/Release/fuse-svc-launcher');
const dir = mkdtempSync(join(tmpdir(), 'fuse-svc-init-test-'));
const started: ChildProcess[] = [];
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Run = { proc: ChildProcess; stderr: () => string; exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }> };

function startInit(args: string[], argv0: string[] = [LAUNCHER, 'init']): Run {
  const proc = spawn(argv0[0], [...argv0.slice(1), ...args], { stdio: ['ignore', 'ignore', 'pipe'], cwd: dir });
  started.push(proc);
  let err = '';
  proc.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return { proc, stderr: () => err, exit };
}

async function waitFor<T>(what: string, ms: number, f: () => T | undefined | false): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await sleep(20);
  }
}

async function exited(r: Run, ms: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, rej) => (t = setTimeout(() => rej(new Error(`init did not exit within ${ms} ms; stderr:\n${r.stderr()}`)), ms)));
  try {
    return await Promise.race([r.exit, timeout]);
  } finally {
    clearTimeout(t);
  }
}

type Stat = { pid: number; state: string; ppid: number; pgrp: number; comm: string };
function procStat(pid: number): Stat | undefined {
  let s: string;
  try {
    s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const close = s.lastIndexOf(')');
  const f = s.slice(close + 2).split(' ');
  return { pid, comm: s.slice(s.indexOf('(') + 1, close), state: f[0], ppid: Number(f[1]), pgrp: Number(f[2]) };
}
function allStats(): Stat[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map((n) => procStat(Number(n)))
    .filter((s): s is Stat => s !== undefined);
}
const childrenOf = (pid: number): Stat[] => allStats().filter((s) => s.ppid === pid);
function descendants(pid: number): number[] {
  const all = allStats();
  const out: number[] = [];
  const walk = (p: number): void => {
    for (const s of all) if (s.ppid === p) (out.push(s.pid), walk(s.pid));
  };
  walk(pid);
  return out;
}

function script(name: string, body: string): string {
  const p = join(dir, name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`);
  chmodSync(p, 0o755);
  return p;
}
const read = (name: string): string => (existsSync(join(dir, name)) ? readFileSync(join(dir, name), 'utf8') : '');

test.after.each(() => {
  for (const p of started.splice(0)) {
    if (p.pid === undefined) continue;
    for (const d of descendants(p.pid).reverse()) {
      try {
        process.kill(d, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
});
test.after(() => rmSync(dir, { recursive: true, force: true }));

test('usage: --help exits 0; no command or a bad option exits 64; a missing CMD exits 127', async () => {
  const help = startInit(['--help']);
  assert.is((await exited(help, 5000)).code, 0);
  const none = startInit([]);
  assert.is((await exited(none, 5000)).code, 64);
  assert.match(none.stderr(), /no command given/);
  const bad = startInit(['--bogus', '--', 'true']);
  assert.is((await exited(bad, 5000)).code, 64);
  const delay = startInit(['--restart-delay-ms', '0', '--', 'true']);
  assert.is((await exited(delay, 5000)).code, 64);
  const missing = startInit(['--', join(dir, 'no-such-program')]);
  assert.is((await exited(missing, 5000)).code, 127);
  assert.match(missing.stderr(), /cannot execute .*no-such-program: No such file or directory/);
});

test('a crashing CMD is restarted with a doubling back-off; SIGTERM then stops cleanly', async () => {
  const crash = script('crash.sh', `echo run >> "${dir}/crash.count"\nexit 3`);
  const r = startInit(['--restart-delay-ms', '50', '--', crash]);
  await waitFor('4 runs of the crashing CMD', 10000, () => read('crash.count').split('\n').length > 4);
  const err = r.stderr();
  assert.match(err, new RegExp(`init: ${crash} exited with status 3; restarting in 50 ms\n`));
  assert.match(err, /exited with status 3; restarting in 100 ms\n/);
  assert.match(err, /exited with status 3; restarting in 200 ms\n/);
  r.proc.kill('SIGTERM');
  const e = await exited(r, 5000);
  assert.is(e.code, 0, r.stderr());
});

test('a CMD killed by a signal is reported and restarted', async () => {
  const selfkill = script('selfkill.sh', `echo run >> "${dir}/selfkill.count"\nkill -SEGV $$\nsleep 5`);
  const r = startInit(['--restart-delay-ms', '30', '--', selfkill]);
  await waitFor('2 runs', 5000, () => read('selfkill.count').split('\n').length > 2);
  assert.match(r.stderr(), new RegExp(`init: ${selfkill} killed by signal 11; restarting in 30 ms\n`));
  r.proc.kill('SIGINT');
  assert.is((await exited(r, 5000)).code, 0, r.stderr());
  assert.match(r.stderr(), /SIGINT received: stopping/);
});

test('a CMD exiting 64 or 78 (usage or missing host feature) is not restarted: init exits with it', async () => {
  for (const code of [64, 78]) {
    const cfg = script(`cfg${code}.sh`, `echo run >> "${dir}/cfg${code}.count"\nexit ${code}`);
    const r = startInit(['--restart-delay-ms', '30', '--', cfg]);
    assert.is((await exited(r, 5000)).code, code, r.stderr());
    assert.is(read(`cfg${code}.count`), 'run\n', 'started once');
    assert.match(r.stderr(), /a configuration error, not restarting/);
  }
});

test('SIGTERM: CMD gets SIGTERM, then the stop command runs after CMD ended, init exits 0', async () => {
  const cmd = script(
    'broker.sh',
    `trap 'echo term > "${dir}/term"; kill $pid 2>/dev/null; exit 0' TERM
echo ready > "${dir}/ready"
sleep 30 & pid=$!
wait $pid`,
  );
  // the stop command: no shell string, an argv; it records whether CMD had already ended
  const stop = script('stop.sh', `if [ -f "${dir}/term" ]; then echo "after $1" > "${dir}/marker"; else echo before > "${dir}/marker"; fi`);
  const r = startInit(['--stop-cmd', stop, '--stop-cmd', 'arg-one', '--', cmd]);
  await waitFor('CMD ready', 5000, () => read('ready') !== '');
  const cmdPid = await waitFor('CMD is a child of init', 2000, () => childrenOf(r.proc.pid!).find((s) => s.comm === 'broker.sh'));
  assert.is(procStat(cmdPid.pid)!.pgrp, cmdPid.pid, 'CMD runs in its own process group');
  r.proc.kill('SIGTERM');
  const e = await exited(r, 15000);
  assert.is(e.code, 0, r.stderr());
  assert.is(read('term'), 'term\n', 'CMD got SIGTERM');
  assert.is(read('marker'), 'after arg-one\n', 'the stop command ran after CMD ended, with its argv');
  assert.match(r.stderr(), /SIGTERM received: stopping/);
  assert.not.match(r.stderr(), /restarting/);
});

test('a failing stop command makes init exit 1', async () => {
  const cmd = script('idle.sh', 'exec sleep 30');
  const r = startInit(['--stop-cmd', 'false', '--', cmd]);
  await waitFor('CMD started', 5000, () => childrenOf(r.proc.pid!).length > 0);
  r.proc.kill('SIGTERM');
  const e = await exited(r, 15000);
  assert.is(e.code, 1, r.stderr());
  assert.match(r.stderr(), /stop command false exited with status 1/);
});

test('SIGTERM during the restart back-off: no restart, the stop command runs at once', async () => {
  const crash = script('crash2.sh', `echo run >> "${dir}/crash2.count"\nexit 1`);
  const r = startInit(['--restart-delay-ms', '5000', '--stop-cmd', 'touch', '--stop-cmd', join(dir, 'stop2'), '--', crash]);
  await waitFor('first crash logged', 5000, () => /restarting in 5000 ms/.test(r.stderr()));
  const t0 = Date.now();
  r.proc.kill('SIGTERM');
  assert.is((await exited(r, 5000)).code, 0, r.stderr());
  assert.ok(Date.now() - t0 < 2000, 'did not wait for the back-off');
  assert.ok(existsSync(join(dir, 'stop2')));
  assert.is(read('crash2.count'), 'run\n', 'not restarted');
});

test('orphans re-parented to init (subreaper, not PID 1) are reaped and never killed', async () => {
  // the subshell forks `sleep 1` and exits: the sleep is an orphan and comes to init
  const cmd = script('orphans.sh', `(sleep 1 & echo $! > "${dir}/orphan.pid")\nexec sleep 30`);
  const r = startInit(['--', cmd]);
  const pid = await waitFor('orphan pid written', 5000, () => Number(read('orphan.pid').trim()) || undefined);
  const st = await waitFor('the orphan is re-parented to init', 900, () => {
    const s = procStat(pid);
    return s && s.ppid === r.proc.pid ? s : undefined;
  });
  assert.is(st.state === 'Z', false, 'the orphan is still running (not killed)');
  await waitFor('the orphan is gone (reaped, not a zombie)', 5000, () => procStat(pid) === undefined);
  const zombies = childrenOf(r.proc.pid!).filter((s) => s.state === 'Z');
  assert.equal(zombies, [], 'no zombie children of init');
  assert.is(childrenOf(r.proc.pid!).length, 1, 'only CMD is left');
  r.proc.kill('SIGTERM');
  assert.is((await exited(r, 15000)).code, 0, r.stderr());
});

test('as PID 1 of a pid namespace: orphans are reaped, SIGTERM from outside stops it', async () => {
  const cmd = script('pid1.sh', `echo $$ > "${dir}/pid1.cmd"\n(sleep 0.2 &)\n(sleep 0.2 &)\nexec sleep 30`);
  const r = startInit(['--', cmd], ['unshare', '--pid', '--fork', '--kill-child', LAUNCHER, 'init']);
  const init = await waitFor('init inside the namespace', 5000, () => childrenOf(r.proc.pid!)[0]);
  await waitFor('CMD started', 5000, () => read('pid1.cmd') !== '');
  assert.is(read('pid1.cmd').trim(), '2', 'CMD is pid 2 in the namespace, so init is pid 1');
  // both orphans end after 0.2 s; then only CMD may be left under PID 1, and no zombie
  await waitFor('the orphans reaped', 5000, () => childrenOf(init.pid).length === 1);
  await sleep(200);
  const kids = childrenOf(init.pid);
  assert.equal(kids.filter((s) => s.state === 'Z'), [], 'no zombies under PID 1');
  assert.is(kids.length, 1, 'only CMD is left under PID 1');
  process.kill(init.pid, 'SIGTERM');
  const e = await exited(r, 15000);
  assert.is(e.code, 0, r.stderr());
  assert.match(r.stderr(), /SIGTERM received: stopping/);
});

test('SIGHUP and SIGUSR1 are forwarded to CMD; CMD is not restarted for them', async () => {
  const cmd = script(
    'fwd.sh',
    `trap 'echo hup >> "${dir}/signals"; kill $pid 2>/dev/null' HUP
trap 'echo usr1 >> "${dir}/signals"; kill $pid 2>/dev/null' USR1
trap 'kill $pid 2>/dev/null; exit 0' TERM
echo $$ >> "${dir}/fwd.runs"
while :; do sleep 30 & pid=$!; wait $pid; done`,
  );
  const r = startInit(['--', cmd]);
  await waitFor('CMD running', 5000, () => read('fwd.runs') !== '');
  await sleep(100);
  r.proc.kill('SIGHUP');
  await waitFor('CMD got SIGHUP', 5000, () => read('signals').includes('hup'));
  r.proc.kill('SIGUSR1');
  await waitFor('CMD got SIGUSR1', 5000, () => read('signals').includes('usr1'));
  assert.is(read('signals'), 'hup\nusr1\n');
  assert.is(read('fwd.runs').trim().split('\n').length, 1, 'still the first run');
  r.proc.kill('SIGTERM');
  assert.is((await exited(r, 15000)).code, 0, r.stderr());
});

test.run();
