// Test harness: a real broker in a temporary runtime directory, callers in their own mount
// namespaces, and counters for what must not leak (fds, mounts, processes). Every wait has a
// timeout; every start has a stop that runs even when the test failed.
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type Options as ExecaOptions } from 'execa';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const DAEMON = path.join(ROOT, 'dist', 'supervisor', 'main.js');
export const CLIENT = path.join(ROOT, 'dist', 'helper', 'request.js');
export const NATIVE = path.join(ROOT, 'build', 'Release');
export const USER = 1000;

export function tmpdir(prefix = 'fuse-svc-test-'): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  chmodSync(d, 0o755);
  return d;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls until fn returns a truthy value or ms pass; throws with `what` on timeout. */
export async function waitFor<T>(what: string, fn: () => T | Promise<T>, ms = 10000, every = 50): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every);
  }
}

export type Broker = {
  proc: ChildProcess;
  runtimeDir: string;
  socket: string;
  logs: () => string;
  /** SIGTERM: the broker exits, instances keep running. */
  exit: () => Promise<void>;
  /** Full stop (`fuse-svcd stop`) then make sure the process is gone. */
  stop: () => Promise<void>;
};

export async function startBroker(opts: { runtimeDir?: string; args?: string[]; config?: Record<string, unknown> } = {}): Promise<Broker> {
  const runtimeDir = opts.runtimeDir ?? tmpdir('fuse-svc-run-');
  const socket = path.join(runtimeDir, 'broker.sock');
  const args = [DAEMON, '--runtime-dir', runtimeDir, '--socket', socket, ...(opts.args ?? [])];
  if (opts.config) {
    const f = path.join(runtimeDir, 'config.json');
    writeFileSync(f, JSON.stringify(opts.config));
    args.push('--config', f);
  }
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  let logs = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => {
    logs += d;
    if (process.env.FUSE_SVC_TEST_VERBOSE) process.stderr.write(d);
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  await waitFor('the broker to listen', () => logs.includes('listening on') || proc.exitCode !== null, 15000);
  if (proc.exitCode !== null) throw new Error(`the broker exited at start (${proc.exitCode}): ${logs}`);
  const exit = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await Promise.race([exited, sleep(2000)]);
    }
  };
  return {
    proc,
    runtimeDir,
    socket,
    logs: () => logs,
    exit,
    stop: async () => {
      await execa(process.execPath, [DAEMON, 'stop', '--runtime-dir', runtimeDir, '--timeout', '20000'], { reject: false, timeout: 30000 });
      await exit();
    },
  };
}

/** A caller: a process holding its own mount namespace, in which commands run as some uid. */
export type Caller = {
  pid: number;
  run: (argv: string[], o?: { uid?: number; input?: string; timeout?: number; reject?: boolean }) => Promise<{ stdout: string; stderr: string; exitCode: number }>;
  mountinfo: () => string;
  fuseMounts: () => string[];
  close: () => Promise<void>;
};

/**
 * A new mount namespace (made by root with private propagation, like a container's), held by a
 * sleeping process; commands enter it with nsenter and drop to `uid` with setpriv.
 */
export async function newCaller(): Promise<Caller> {
  const holder = spawn('unshare', ['--mount', '--propagation', 'private', '--', 'sleep', '3600'], { stdio: 'ignore' });
  const pid = holder.pid!;
  const myNs = readlinkSync('/proc/self/ns/mnt');
  await waitFor('the caller namespace', () => {
    try {
      return readlinkSync(`/proc/${pid}/ns/mnt`) !== myNs && readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('sleep');
    } catch {
      return false;
    }
  }, 5000);
  const mountinfo = () => {
    try {
      return readFileSync(`/proc/${pid}/mountinfo`, 'utf8');
    } catch {
      return '';
    }
  };
  return {
    pid,
    run: async (argv, o = {}) => {
      const uid = o.uid ?? USER;
      const pre = ['nsenter', '-t', String(pid), '-m', '--', 'setpriv', '--reuid', String(uid), '--regid', String(uid), '--clear-groups', '--'];
      const r = await execa(pre[0], [...pre.slice(1), ...argv], {
        reject: o.reject ?? false,
        input: o.input,
        timeout: o.timeout ?? 60000,
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/' },
        extendEnv: false,
      } as ExecaOptions);
      return { stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? ''), exitCode: r.exitCode ?? -1 };
    },
    mountinfo,
    fuseMounts: () => mountinfo().split('\n').filter((l) => / - fuse(\.|blk| )/.test(l)).map((l) => l.split(' ')[4]),
    close: async () => {
      holder.kill('SIGKILL');
      await Promise.race([new Promise((r) => holder.once('exit', r)), sleep(2000)]);
    },
  };
}

/** Runs the node client as a caller. */
export function clientArgs(socket: string, ...args: string[]): string[] {
  return [process.execPath, CLIENT, '--socket', socket, ...args];
}

/** An ext4 image owned by uid (mode 0600), and a mount point owned by uid. */
export async function makeImage(dir: string, name = 'disk.img', sizeMiB = 64, fsType = 'ext4', uid = USER): Promise<string> {
  const img = path.join(dir, name);
  await execa(`mkfs.${fsType}`, ['-q', '-F', '-E', `root_owner=${uid}:${uid}`, img, `${sizeMiB}M`], { timeout: 30000 });
  chownSync(img, uid, uid);
  chmodSync(img, 0o600);
  return img;
}

export function makeDir(p: string, uid = USER, mode = 0o755): string {
  rmSync(p, { recursive: true, force: true });
  mkdirSync(p);
  chownSync(p, uid, uid);
  chmodSync(p, mode);
  return p;
}

export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Processes whose comm starts with one of the names (fuse2fs, launchers, probes). */
export function processes(names = ['fuse2fs', 'fuse-svc-launch', 'sandbox-probe']): { pid: number; comm: string }[] {
  const out: { pid: number; comm: string }[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const comm = readFileSync(`/proc/${p}/comm`, 'utf8').trim();
      if (names.some((n) => comm.startsWith(n))) out.push({ pid: Number(p), comm });
    } catch {
      /* gone */
    }
  }
  return out;
}

/**
 * The launchers serving runtimeDir (their fd 2 is an instance log there) and their servers:
 * what a test must not leave behind, told apart from other tests' instances and from the
 * broker's idle pooled launchers.
 */
export function instanceProcesses(runtimeDir: string): { pid: number; comm: string }[] {
  const launchers = new Set<number>();
  const all = processes();
  for (const p of all) {
    try {
      const log = readlinkSync(`/proc/${p.pid}/fd/2`);
      // Idle pooled launchers (log pool-N.log) are the broker's stock, not an instance.
      if (p.comm.startsWith('fuse-svc-launch') && log.startsWith(runtimeDir + '/') && !/\/pool-\d+\.log$/.test(log)) launchers.add(p.pid);
    } catch {
      /* gone */
    }
  }
  return all.filter((p) => {
    if (launchers.has(p.pid)) return true;
    try {
      const ppid = Number(/^PPid:\s*(\d+)/m.exec(readFileSync(`/proc/${p.pid}/status`, 'utf8'))?.[1]);
      return launchers.has(ppid);
    } catch {
      return false;
    }
  });
}

export function procStatus(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const l of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const i = l.indexOf(':');
    if (i > 0) out[l.slice(0, i)] = l.slice(i + 1).trim();
  }
  return out;
}

export function exists(p: string): boolean {
  return existsSync(p);
}
