// Seccomp filters compiled once per definition (issue 12 §2, 16 §2): what `fuse-svc-launcher
// compile-seccomp` gives, and a launcher handed a program that was cut, altered or built for
// another architecture refuses to start, with one line, before it builds any sandbox.
// (That the compiled filters refuse what the launcher-built ones did: test/probe.test.ts.)
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { DEFAULTS } from '../supervisor/config.js';
import { InstanceDir, spawnLauncher, waitPidfd } from '../supervisor/instances.js';
import { commandSpec, mountSpec, renderSpec, seccompRecords, type SpecRecord } from '../supervisor/launch-spec.js';
import { withPrecompiledSeccomp } from '../supervisor/seccomp-programs.js';
import { loadServers } from '../supervisor/servers.js';
import * as sock from '../helper/native/socket.js';
import { instanceProcesses, NATIVE, ROOT, tmpdir } from './lib/harness.js';

const LAUNCHER = path.join(NATIVE, 'fuse-svc-launcher');
const AUDIT_ARCH_X86_64 = 0xc000003e;
const AUDIT_ARCH_AARCH64 = 0xc00000b7;

function compileCli(records: SpecRecord[]): { status: number | null; out: string; err: string } {
  // the spec goes on fd 3, as the broker gives it
  const res = spawnSync('sh', ['-c', `exec "${LAUNCHER}" compile-seccomp 3<&0`], { input: renderSpec(records), timeout: 20000 });
  return { status: res.status, out: res.stdout.toString(), err: res.stderr.toString() };
}

function fnv1a64(b: Buffer): string {
  let h = 0xcbf29ce484222325n;
  for (const x of b) {
    h ^= BigInt(x);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, '0');
}

/** A program record rebuilt from (possibly altered) instruction bytes, checksum matching. */
function programRecord(kind: string, insns: Buffer): SpecRecord {
  return ['seccomp_program', kind, insns.length / 8, fnv1a64(insns), insns.toString('hex')];
}

test('compile-seccomp: every policy compiles, the same bytes every time, and only the filter records are read', () => {
  for (const f of readdirSync(DEFAULTS.policyDir).filter((n) => n.endsWith('.json'))) {
    const rules = seccompRecords(DEFAULTS.policyDir, f.replace(/\.json$/, ''));
    const a = compileCli([['version', 1], ['source_sentinel', '/dev/fuse-svc/source'], ...rules]);
    const b = compileCli([['version', 1], ['source_sentinel', '/dev/fuse-svc/source'], ...rules]);
    assert.is(a.status, 0, `${f}: ${a.out}${a.err}`);
    assert.is(a.out, b.out, `${f}: deterministic`);
    const lines = a.out.trim().split('\n').map((l) => l.split('\t'));
    assert.equal(lines.map((l) => l[1]), ['policy', 'notify'], f);
    for (const l of lines) {
      assert.is(l[4].length, Number(l[2]) * 16, `${f} ${l[1]}: LEN instructions of hex`);
      assert.is(l[3], fnv1a64(Buffer.from(l[4], 'hex')), `${f} ${l[1]}: checksum`);
    }
  }
  const none = compileCli([['version', 1], ['seccomp_default', 'errno', 1]]);
  assert.is(none.status, 0, none.out + none.err);
  assert.is(none.out.trim().split('\n').length, 1, 'no sentinel: a policy program only');
  const bad = compileCli([['version', 1], ['exec', '/bin/sh'], ['seccomp_default', 'allow']]);
  assert.is(bad.status, 64);
  assert.match(bad.out, /^error\tEINTERNAL\tspec line 2: compile-seccomp: exec is not a seccomp record\n$/);
});

test('compile-seccomp: fuse_handover notify adds mount(2) to the notify filter, nothing else changes', () => {
  const rules = seccompRecords(DEFAULTS.policyDir, 'fuse-mount');
  const plain = compileCli([['version', 1], ['source_sentinel', '/s'], ...rules]).out.trim().split('\n');
  const notify = compileCli([['version', 1], ['source_sentinel', '/s'], ['fuse_handover', 'notify'], ...rules]).out.trim().split('\n');
  assert.is(plain[0], notify[0], 'the same policy program');
  assert.ok(Number(notify[1].split('\t')[2]) > Number(plain[1].split('\t')[2]), 'the notify program grew by the mount check');
});

test('the broker-side cache: one compile per definition, the rules replaced by programs', () => {
  const server = loadServers(path.join(ROOT, 'server')).get('ext4')!;
  const mk = (id: number) => commandSpec({ id, runtimeDir: '/run/x', uid: 65010, server, policyDir: DEFAULTS.policyDir, standin: '/s', exec: '/usr/bin/true', argv: ['true'] });
  const a = withPrecompiledSeccomp(LAUNCHER, mk(1));
  const b = withPrecompiledSeccomp(LAUNCHER, mk(2));
  assert.not.ok(a.some((r) => r[0] === 'seccomp_rule' || r[0] === 'seccomp_default'));
  assert.equal(a.filter((r) => r[0] === 'seccomp_program').map((r) => r[1]), ['policy']);
  // The same record object: the second spec reused the first compile, no second spawn.
  assert.ok(a.find((r) => r[0] === 'seccomp_program') === b.find((r) => r[0] === 'seccomp_program'), 'the second spec reuses the first compile');
  assert.equal(a.filter((r) => r[0] !== 'seccomp_program'), mk(1).filter((r) => !String(r[0]).startsWith('seccomp_')), 'every other record as it was');
});

/** Starts a launcher on `spec` as given (no broker-side compile) and returns its readiness. */
async function launchAsIs(spec: SpecRecord[], uid: number, fds: number[] = []): Promise<{ r: Awaited<ReturnType<typeof spawnLauncher>['ready']>; log: string }> {
  const runtimeDir = tmpdir('fuse-svc-seccomp-prog-');
  const dir = new InstanceDir(runtimeDir);
  const fixed = spec.map((r) => (r[0] === 'rundir' ? ['rundir', runtimeDir] : r[0] === 'uid' || r[0] === 'gid' ? [r[0], uid] : r));
  const { pid, ready } = spawnLauncher({ launcher: LAUNCHER, spec: fixed, fds, logFile: dir.file(1, 'log'), readyTimeoutMs: 10000, precompileSeccomp: false });
  const pidfd = sock.pidfdOpen(pid);
  try {
    const r = await ready;
    if (r.ok) sock.pidfdSendSignal(pidfd, 15);
    assert.ok(await waitPidfd(pidfd, 10000), 'the launcher exited');
    assert.is(instanceProcesses(runtimeDir).length, 0, 'nothing left running');
    return { r, log: readFileSync(dir.file(1, 'log'), 'utf8') };
  } finally {
    try {
      sock.pidfdSendSignal(pidfd, 9);
    } catch {
      /* gone */
    }
    sock.close(pidfd);
    rmSync(runtimeDir, { recursive: true, force: true });
  }
}

test('a launcher handed a cut, altered or foreign-arch program refuses to start, with one line', async () => {
  const server = loadServers(path.join(ROOT, 'server')).get('ext4')!;
  const base = withPrecompiledSeccomp(LAUNCHER, commandSpec({ id: 1, runtimeDir: '/run/x', uid: 65020, server, policyDir: DEFAULTS.policyDir, standin: path.join(NATIVE, 'fusermount-standin'), exec: '/usr/bin/sleep', argv: ['sleep', '30'] }));
  const i = base.findIndex((r) => r[0] === 'seccomp_program' && r[1] === 'policy');
  const prog = base[i];
  const insns = Buffer.from(String(prog[4]), 'hex');
  const swap = (rec: SpecRecord) => base.map((r, k) => (k === i ? rec : r));

  // The untouched program starts (the control: the refusals below are the alterations').
  const ok = await launchAsIs(base, 65020);
  assert.ok(ok.r.ok, JSON.stringify(ok.r));

  const nativeArch = Buffer.alloc(4);
  nativeArch.writeUInt32LE(AUDIT_ARCH_X86_64);
  const foreign = Buffer.from(insns);
  for (let off = 0; off + 8 <= foreign.length; off += 8) {
    // jeq #AUDIT_ARCH_X86_64: the arch check, now for aarch64 (as that machine's compile would say)
    if (foreign.readUInt16LE(off) === 0x15 && foreign.readUInt32LE(off + 4) === AUDIT_ARCH_X86_64) foreign.writeUInt32LE(AUDIT_ARCH_AARCH64, off + 4);
  }
  assert.not.equal(foreign, insns);
  const flipped = Buffer.from(insns);
  flipped[insns.length - 4] ^= 1; // the last ret's value: the checksum no longer matches
  const half = insns.subarray(0, Math.floor(insns.length / 16) * 8);

  const cases: [string, SpecRecord[], string, RegExp][] = [
    ['hex cut short', swap([...prog.slice(0, 4), String(prog[4]).slice(0, -16)]), 'EINTERNAL', /seccomp_program policy: \d+ hex digits for \d+ instructions/],
    ['one byte altered', swap([...prog.slice(0, 4), flipped.toString('hex')]), 'EINTERNAL', /seccomp_program policy: checksum mismatch/],
    ['built for aarch64', swap(programRecord('policy', foreign)), 'EINTERNAL', /seccomp_program policy: built for another architecture/],
    ['cut in half, checksum recomputed (the kernel refuses it)', swap(programRecord('policy', half)), 'ESANDBOX', /seccomp\(SECCOMP_SET_MODE_FILTER, policy\): Invalid argument/],
    ['program and rules at once', [...swap(prog), ['seccomp_default', 'allow']], 'EINTERNAL', /seccomp_program excludes seccomp_default/],
    ['not hex', swap([...prog.slice(0, 4), 'zz' + String(prog[4]).slice(2)]), 'EINTERNAL', /checksum mismatch|not lowercase hex/],
  ];
  for (const [what, spec, code, msg] of cases) {
    const { r, log } = await launchAsIs(spec, 65021);
    assert.not.ok(r.ok, `${what}: refused`);
    if (r.ok) continue;
    assert.is(r.code, code, `${what}: ${r.message}`);
    assert.match(r.message, msg, what);
    assert.not.match(r.message, /\n/, `${what}: one line`);
    assert.not.match(log, /server started/, `${what}: no server ran`);
  }
});

test('a mount spec: its notify program must be there, notify openat(2), and mount(2) for fuse_handover notify', async () => {
  const servers = loadServers(path.join(ROOT, 'server'));
  const spec = (name: string) =>
    withPrecompiledSeccomp(LAUNCHER, mountSpec({
      id: 1, runtimeDir: '/run/x', uid: 65030, server: servers.get(name)!, policyDir: DEFAULTS.policyDir, standin: path.join(NATIVE, 'fusermount-standin'),
      callerUid: 0, callerGid: 0, readOnly: true, serverOptions: [], fsname: 'img', fstype: name,
    }));
  const ext4 = spec('ext4');
  const ntfs = spec('ntfs');
  assert.equal(ext4.filter((r) => r[0] === 'seccomp_program').map((r) => r[1]), ['policy', 'notify']);
  const notifyOf = (s: SpecRecord[]) => s.find((r) => r[0] === 'seccomp_program' && r[1] === 'notify')!;
  const cases: [string, SpecRecord[], RegExp][] = [
    ['no notify program', ext4.filter((r) => r !== notifyOf(ext4)), /source_sentinel with precompiled filters needs seccomp_program notify/],
    // The policy program in the notify slot: checksum and arch are right, it notifies nothing.
    ['a program that notifies no open', ext4.map((r) => (r === notifyOf(ext4) ? ['seccomp_program', 'notify', ...ext4.find((x) => x[0] === 'seccomp_program' && x[1] === 'policy')!.slice(2)] : r)), /seccomp_program notify does not notify openat/],
    // ntfs-3g mounts through the notifier; the ext4 notify program has no mount(2) check.
    ['fuse_handover notify without mount(2) in the program', ntfs.map((r) => (r === notifyOf(ntfs) ? notifyOf(ext4) : r)), /needs a seccomp_program notify that notifies mount/],
  ];
  // Refused while reading the spec, before the descriptors it names are used: stand-ins do.
  const targetDir = tmpdir('fuse-svc-seccomp-prog-t-');
  const fds = [openSync('/dev/null', 'r'), openSync(targetDir, 'r'), sock.pidfdOpen(process.pid)];
  try {
    for (const [what, s, msg] of cases) {
      const { r } = await launchAsIs(s, 65031, fds);
      assert.not.ok(r.ok, what);
      if (!r.ok) assert.match(r.message, msg, `${what}: ${r.message}`);
    }
  } finally {
    for (const fd of fds) closeSync(fd);
    rmSync(targetDir, { recursive: true, force: true });
  }
});

test.run();
