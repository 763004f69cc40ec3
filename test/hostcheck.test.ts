// Host checks (issue 6, part 7): `fuse-svcd check --json` on this machine, and the refusal at
// start (exit 78, with the check's line) when a required feature is really missing: the broker
// runs in a mount namespace where /dev/fuse is /dev/null bind-mounted over it.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { DAEMON, madeRuntimeDir } from './lib/harness.js';

type Check = { name: string; required: boolean; ok: boolean; detail: string; fix?: string };

test('fuse-svcd check --json: every feature named, required ones present here, cgroups reported', async () => {
  const r = await execa(process.execPath, [DAEMON, 'check', '--json'], { reject: false, timeout: 15000 });
  assert.is(r.exitCode, 0, r.stderr);
  const checks = JSON.parse(r.stdout) as Check[];
  const names = checks.map((c) => c.name);
  for (const n of ['root', 'kernel', 'user namespaces', '/dev/fuse', 'fuse filesystem', 'seccomp filters', 'seccomp user notification', 'cgroups', 'AppArmor userns restriction', 'SO_PEERPIDFD']) assert.ok(names.includes(n), `check ${n}`);
  for (const c of checks) {
    assert.type(c.required, 'boolean');
    assert.type(c.ok, 'boolean');
    assert.ok(c.detail.length > 0, c.name);
    if (!c.ok) assert.ok(c.fix, `${c.name}: says what to do`);
    if (c.required) assert.ok(c.ok, `${c.name} is present on this machine: ${c.detail}`);
  }
  const cg = checks.find((c) => c.name === 'cgroups')!;
  assert.match(cg.detail, /v1 memory at \/sys\/fs\/cgroup\/memory/);
  assert.match(cg.detail, /v2 .* at \/sys\/fs\/cgroup\/unified/);
  assert.match(cg.detail, /instance limits: cpu, memory, pids/);
  const text = await execa(process.execPath, [DAEMON, 'check'], { reject: false, timeout: 15000 });
  assert.match(text.stdout, /^ok {4}\/dev\/fuse: character device 10:229/m);
});

/** Runs argv in a private mount namespace where /dev/fuse is /dev/null. */
function withoutFuse(argv: string[]) {
  return execa('unshare', ['-m', '--propagation', 'private', '--', 'sh', '-c', 'mount --bind /dev/null /dev/fuse && exec "$@"', 'sh', ...argv], { reject: false, timeout: 20000 });
}

test('a missing /dev/fuse: check fails (exit 1) and the broker refuses to start (exit 78) with that line', async () => {
  const c = await withoutFuse([process.execPath, DAEMON, 'check', '--json']);
  assert.is(c.exitCode, 1, c.stderr);
  const fuse = (JSON.parse(c.stdout) as Check[]).find((x) => x.name === '/dev/fuse')!;
  assert.is(fuse.ok, false);
  assert.match(fuse.detail, /not the FUSE device 10:229/);
  const runtimeDir = madeRuntimeDir();
  try {
    const r = await withoutFuse([process.execPath, DAEMON, '--runtime-dir', runtimeDir]);
    assert.is(r.exitCode, 78, r.stderr);
    assert.match(r.stderr, /^fuse-svcd: error: host check failed: \/dev\/fuse: not the FUSE device 10:229 -> modprobe fuse/m);
    assert.not.match(r.stderr, /listening on/);
  } finally {
    rmSync(runtimeDir, { recursive: true, force: true });
  }
  void path;
});

test.run();
