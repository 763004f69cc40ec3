// A private mount namespace in which util-linux's own mount(8)/umount(8) find fuse-svc's
// helpers and read a test fstab, without touching the host: /usr/sbin (= /sbin) is a read-only
// overlay of a directory holding the two helper links over the real /usr/sbin, /etc/fstab is a
// bind mount of the test's file, and /run is a tmpfs so libmount's utab stays inside.
import { mkdirSync, rmSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { CLIENT, newCaller, instanceProcesses, startBroker, tmpdir, waitFor, type Broker, type Caller } from './harness.js';

export type MountEnv = {
  caller: Caller;
  /** Writes the namespace's /etc/fstab (the bind mount shows the new text at once). */
  fstab: (lines: string[]) => void;
  /** A command in the namespace as uid (default root), with an environment of its own. */
  sh: (script: string, uid?: number, env?: Record<string, string>, timeoutMs?: number) => Promise<{ stdout: string; stderr: string; exitCode: number }>;
  close: () => Promise<void>;
};

export async function mountEnv(dir: string): Promise<MountEnv> {
  const sbin = path.join(dir, 'sbin');
  mkdirSync(sbin);
  chmodSync(sbin, 0o755);
  for (const h of ['mount.fuse-svc', 'umount.fuse-svc']) symlinkSync(CLIENT, path.join(sbin, h));
  const fstabFile = path.join(dir, 'fstab');
  writeFileSync(fstabFile, '');
  chmodSync(fstabFile, 0o644);
  const caller = await newCaller();
  const setup = await caller.run(['sh', '-c',
    `mount -t tmpfs -o mode=0755 tmpfs /run && mount -t overlay overlay -o lowerdir=${sbin}:/usr/sbin /usr/sbin && mount --bind ${fstabFile} /etc/fstab`], { uid: 0 });
  if (setup.exitCode !== 0) {
    await caller.close();
    throw new Error(`mount namespace setup failed: ${setup.stderr}`);
  }
  return {
    caller,
    fstab: (lines) => writeFileSync(fstabFile, lines.join('\n') + '\n'),
    sh: async (script, uid = 0, env = {}, timeoutMs = 60000) => {
      const r = await execa('nsenter', ['-t', String(caller.pid), '-m', '--', 'setpriv', '--reuid', String(uid), '--regid', String(uid), '--clear-groups', '--', 'sh', '-c', script], {
        reject: false, timeout: timeoutMs, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/', ...env }, extendEnv: false,
      });
      return { stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? ''), exitCode: r.exitCode ?? -1 };
    },
    close: () => caller.close(),
  };
}

/** Waits until the broker runs no instance for this runtime dir (servers flushed and exited). */
export async function instancesGone(broker: Broker, ms = 15000): Promise<void> {
  await waitFor('every instance to end', () => instanceProcesses(broker.runtimeDir).length === 0, ms);
}

/** Unmounts, through the broker, every live mount it has (cleanup after a failed test). */
export async function unmountAll(broker: Broker, caller: Caller): Promise<void> {
  const l = await execa(CLIENT, ['--socket', broker.socket, '--json', 'list'], { reject: false, timeout: 30000 });
  const ms = l.exitCode === 0 ? (JSON.parse(String(l.stdout)) as { mounts: { id: number; state: string }[] }).mounts : [];
  for (const m of ms.filter((x) => x.state === 'running')) {
    await caller.run([CLIENT, '--socket', broker.socket, 'unmount', '--id', String(m.id)], { uid: 0 });
  }
}

export async function fsckClean(img: string): Promise<{ ok: boolean; out: string }> {
  const r = await execa('e2fsck', ['-fn', img], { reject: false, timeout: 60000 });
  return { ok: r.exitCode === 0, out: `${r.stdout}\n${r.stderr}` };
}

/** A mount-helper suite's set-up: a temp dir, a broker, and mountEnv's namespace in the dir. */
export type MountSuite = { dir: string; broker: Broker; env: MountEnv };

export async function openMountSuite(prefix: string): Promise<MountSuite> {
  const dir = tmpdir(prefix);
  const broker = await startBroker();
  const env = await mountEnv(dir);
  return { dir, broker, env };
}

/** Unmounts what is left, stops the broker, leaves the namespace and removes the dir. */
export async function closeMountSuite(s: Partial<MountSuite>): Promise<void> {
  if (s.env && s.broker) await unmountAll(s.broker, s.env.caller);
  await s.broker?.stop();
  await s.env?.close();
  if (s.dir) rmSync(s.dir, { recursive: true, force: true });
}
