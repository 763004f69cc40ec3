// One broker per runtime dir (issue 10): a second broker on a held runtime dir exits at once with
// status 75 and one line naming the first; the first keeps serving (it still mounts) and
// `fuse-svcd stop` still ends it.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { DAEMON, clientArgs, makeDir, makeImage, newCaller, startBroker, tmpdir, type Broker, type Caller } from './lib/harness.js';

const s = suite('broker lock');
let dir: string;
let caller: Caller | undefined;
let b: Broker | undefined;

s.before(() => {
  dir = tmpdir();
});
s.after(async () => {
  await b?.stop();
  await caller?.close();
  rmSync(dir, { recursive: true, force: true });
});

s('a second broker on a held runtime dir exits 75 naming the first; the first still mounts; stop works', async () => {
  b = await startBroker();
  caller = await newCaller();
  const r = await execa(process.execPath, [DAEMON, '--runtime-dir', b.runtimeDir, '--socket', b.socket], { reject: false, timeout: 15000, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, extendEnv: false });
  assert.is(r.exitCode, 75, String(r.stderr));
  const lines = String(r.stderr).trim().split('\n');
  assert.is(lines.length, 1, String(r.stderr));
  assert.match(lines[0], new RegExp(`another broker \\(pid ${b.proc.pid}\\) is serving`));
  assert.is(b.proc.exitCode, null, 'the first broker is still running');

  const img = await makeImage(dir);
  const mnt = makeDir(path.join(dir, 'mnt'));
  const m = await caller.run(clientArgs(b.socket, 'mount', img, mnt));
  assert.is(m.exitCode, 0, m.stderr);
  assert.ok(caller.fuseMounts().includes(mnt), 'the first broker mounted after the refusal');

  const stop = await execa(process.execPath, [DAEMON, 'stop', '--runtime-dir', b.runtimeDir, '--timeout', '20000'], { reject: false, timeout: 30000 });
  assert.is(stop.exitCode, 0, String(stop.stderr));
  assert.match(String(stop.stderr), /full stop: 1 instance\(s\) unmounted and ended/);
  await new Promise((res) => setTimeout(res, 300));
  assert.ok(b.proc.exitCode !== null || b.proc.signalCode !== null, 'stop ended the broker (it held the lock)');
  assert.not.ok(caller.fuseMounts().includes(mnt));
});

s.run();
