// A probe program started through the same launcher and sandbox as fuse2fs tries what a
// compromised server would: every attempt must be refused, and the sandbox must look as designed.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { DEFAULTS } from '../supervisor/config.js';
import { InstanceDir, spawnLauncher, waitPidfd } from '../supervisor/instances.js';
import { commandSpec } from '../supervisor/launch-spec.js';
import { loadServers } from '../supervisor/servers.js';
import * as sock from '../helper/native/socket.js';
import { NATIVE, ROOT, tmpdir } from './lib/harness.js';

type Attempt = { check: string; allowed: boolean; errno: string; errno_num: number; detail: string };

/**
 * Runs the probe in the fuse2fs sandbox and returns its report, keyed by check. precompiled:
 * the filters as the broker hands them (compiled once per definition); false: the launcher
 * compiles the rules itself.
 */
export async function runProbe(uid = 65000, precompiled = true): Promise<Map<string, Attempt>> {
  const runtimeDir = tmpdir('fuse-svc-probe-');
  try {
    const dir = new InstanceDir(runtimeDir);
    const server = loadServers(path.join(ROOT, 'server')).get('ext4')!;
    const spec = commandSpec({
      id: 1,
      runtimeDir,
      uid,
      server,
      policyDir: DEFAULTS.policyDir,
      standin: path.join(NATIVE, 'fusermount-standin'),
      exec: '/probe',
      argv: ['sandbox-probe'],
      binds: [{ src: path.join(NATIVE, 'sandbox-probe'), dst: '/probe' }],
    });
    const { pid, ready } = spawnLauncher({ launcher: path.join(NATIVE, 'fuse-svc-launcher'), spec, fds: [], logFile: dir.file(1, 'log'), readyTimeoutMs: 10000, precompileSeccomp: precompiled });
    const pidfd = sock.pidfdOpen(pid);
    try {
      const r = await ready;
      assert.ok(r.ok, `the probe started: ${JSON.stringify(r)}`);
      assert.ok(await waitPidfd(pidfd, 20000), 'the probe finished within 20 s');
    } finally {
      try {
        sock.pidfdSendSignal(pidfd, 9);
      } catch {
        /* already gone */
      }
      sock.close(pidfd);
    }
    const log = readFileSync(dir.file(1, 'log'), 'utf8');
    const out = new Map<string, Attempt>();
    for (const line of log.split('\n')) {
      if (!line.startsWith('{"check"')) continue;
      const a = JSON.parse(line) as Attempt;
      out.set(a.check, a);
    }
    assert.ok(out.has('done'), `the probe ran to the end; log:\n${log}`);
    return out;
  } finally {
    rmSync(runtimeDir, { recursive: true, force: true });
  }
}

test('the fuse2fs sandbox refuses what a compromised server would try', async () => {
  const uid = 65001;
  const p = await runProbe(uid);
  const get = (k: string) => {
    const a = p.get(k);
    assert.ok(a, `probe reported ${k}`);
    return a!;
  };
  assert.is(get('Uid').detail, `${uid} ${uid} ${uid} ${uid}`);
  for (const k of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) assert.is(get(k).detail, '0000000000000000', k);
  assert.is(get('NoNewPrivs').detail, '1');
  assert.is(get('Seccomp').detail, '2');
  assert.match(get('uid_map').detail.trim(), new RegExp(`^${uid}\\s+${uid}\\s+1\\s*$`));
  const refused = ['socket_inet', 'socket_inet6', 'socket_netlink', 'mount_tmpfs', 'ptrace_attach', 'open_etc_shadow', 'unshare_user', 'unshare_mnt', 'setuid_0', 'write_usr', 'write_root', 'write_etc', 'chmod_suid', 'mmap_wx', 'personality', 'clock_settime', 'sethostname', 'sched_fifo', 'init_module', 'syslog', 'open_dev_kmsg', 'reboot', 'swapon', 'write_proc_sys', 'write_cgroup', 'int80_syscall', 'ls_home'];
  for (const k of refused) assert.is(get(k).allowed, false, `${k} must be refused (${get(k).errno})`);
  assert.is(get('socket_inet').errno, 'EAFNOSUPPORT');
  assert.is(get('mount_tmpfs').errno, 'EL3RST', 'denied by the syscall filter with SystemCallErrorNumber=EL3RST');
  assert.is(get('open_etc_shadow').errno, 'ENOENT', 'the host /etc is not in the root');
  assert.match(get('write_usr').errno, /^(EROFS|EACCES)$/);
  assert.is(get('write_root').errno, 'EROFS');
  assert.is(get('socket_unix').allowed, true, 'AF_UNIX stays allowed (libfuse2 needs socketpair)');
  assert.is(get('tmp_file_mode').detail, '0600', 'umask 0077');
  const dev = get('ls_dev').detail.trim().split(' ').sort();
  assert.equal(dev.filter((d) => !['fuse-svc', 'fd', 'stdin', 'stdout', 'stderr'].includes(d)), ['full', 'null', 'random', 'urandom', 'zero']);
  const procEntries = get('ls_proc').detail.trim().split(' ');
  assert.ok(procEntries.every((e) => /^\d+$/.test(e) || e === 'self' || e === 'thread-self'), `only pids in /proc: ${procEntries.join(' ')}`);
  assert.ok(procEntries.includes('1') && !procEntries.includes('sys'), 'pid 1 is the probe; no /proc/sys');
  const ifaces = get('net_dev').detail.split(/\s+/).filter((w) => w.endsWith(':')).map((w) => w.slice(0, -1));
  assert.equal(ifaces, ['lo'], 'only loopback');
  assert.is(get('hostname').detail, 'fuse-svc');
});

test('the filters compiled once per definition refuse exactly what the launcher-built ones did', async () => {
  const pre = await runProbe(65002, true);
  const built = await runProbe(65003, false);
  assert.is(pre.get('Seccomp')?.detail, '2');
  // Everything the probe tried, with its outcome and errno (details hold pids and uids).
  const outcome = (p: Map<string, Attempt>) => [...p.values()].map((a) => `${a.check} ${a.allowed} ${a.errno}`).sort();
  assert.equal(outcome(pre), outcome(built));
  assert.ok(pre.size > 30, `the probe tried ${pre.size} things`);
});

test.run();
