// Runtime-dir attacks (issue 9 §3): a broker given a runtime dir or socket dir a user can write
// to, or a path through a group-writable parent or a symlink, refuses to start (exit 77) and
// touches nothing outside; `stop` signals no process a forged broker.pid names.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { DAEMON, USER, sleep, tmpdir } from '../lib/harness.js';
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

s.run();
