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
export const NATIVE = path.join(ROOT, 'build', 'Release');
/** fuse-svc-request, the one client (the static C build, helper/native/client.c). */
export const CLIENT = path.join(NATIVE, 'fuse-svc-client');
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
export async function waitFor<T>(what: string, fn: () => T | Promise<T>, ms = 10000, every = 50): Promise<NonNullable<T>> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>; // truthy, so neither null nor undefined
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

/**
 * Runtime dirs the harness made are removed when the test process exits, not at stop(): tests
 * restart brokers on the same dir (re-adoption) after stopping or killing the first one. They
 * hold only state files and sockets (mounts and cgroups live elsewhere and are checked apart).
 */
const madeRuntimeDirs: string[] = [];
export function madeRuntimeDir(): string {
  const d = tmpdir('fuse-svc-run-');
  if (madeRuntimeDirs.push(d) === 1) process.once('exit', () => madeRuntimeDirs.forEach((x) => rmSync(x, { recursive: true, force: true })));
  return d;
}

export async function startBroker(opts: { runtimeDir?: string; args?: string[]; config?: Record<string, unknown>; env?: Record<string, string> } = {}): Promise<Broker> {
  const runtimeDir = opts.runtimeDir ?? madeRuntimeDir();
  const socket = path.join(runtimeDir, 'public', 'broker.sock');
  const args = [DAEMON, '--runtime-dir', runtimeDir, '--socket', socket, ...(opts.args ?? [])];
  if (opts.config) {
    const f = path.join(runtimeDir, 'config.json');
    writeFileSync(f, JSON.stringify(opts.config));
    args.push('--config', f);
  }
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...opts.env } });
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
/**
 * /dev/fuse is 0666 on ordinary distributions (0600 here): a 0666 node of the same device bound
 * over it inside the caller's namespace only (the host's stays as it is, for everyone else's
 * tests), so the caller's uids can run their own FUSE servers and fusermount3. The node lives on
 * a small tmpfs mounted at DIR/devs in that namespace.
 */
export async function worldFuseInCaller(caller: Caller, dir: string): Promise<void> {
  const devs = path.join(dir, 'devs');
  mkdirSync(devs, { recursive: true });
  const inNs = (...argv: string[]) => execa('nsenter', ['-t', String(caller.pid), '-m', '--', ...argv], { timeout: 10000 });
  await inNs('mount', '-t', 'tmpfs', '-o', 'size=64k,mode=0755', 'devs', devs);
  await inNs('mknod', '-m', '0666', path.join(devs, 'fuse'), 'c', '10', '229');
  await inNs('mount', '--bind', path.join(devs, 'fuse'), '/dev/fuse');
}

/**
 * fusermount3 refuses a uid without a passwd entry ("could not determine username"), and this
 * machine has only uid 1000: a copy of /etc/passwd with an entry for each of UIDS is bound over
 * it inside the caller's namespace only (the host's file is not touched).
 */
export async function usersInCaller(caller: Caller, dir: string, uids: number[]): Promise<void> {
  const have = new Set(readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => Number(l.split(':')[2])));
  const extra = uids.filter((u) => !have.has(u)).map((u) => `load${u}:x:${u}:${u}::/nonexistent:/usr/sbin/nologin\n`);
  const file = path.join(dir, 'passwd');
  writeFileSync(file, readFileSync('/etc/passwd', 'utf8') + extra.join(''), { mode: 0o644 });
  await execa('nsenter', ['-t', String(caller.pid), '-m', '--', 'mount', '--bind', file, '/etc/passwd'], { timeout: 10000 });
}

/** What most suites begin with: a temp dir, a broker started with OPTS, a caller namespace. */
export type Env = { dir: string; broker: Broker; caller: Caller };

export async function openEnv(opts: Parameters<typeof startBroker>[0] = {}, prefix?: string): Promise<Env> {
  const dir = tmpdir(prefix);
  const broker = await startBroker(opts);
  const caller = await newCaller();
  return { dir, broker, caller };
}

/** Stops and removes what openEnv made, whatever part of it exists (a failed before() leaves parts). */
export async function closeEnv(e: Partial<Env>): Promise<void> {
  await e.broker?.stop();
  await e.caller?.close();
  if (e.dir) rmSync(e.dir, { recursive: true, force: true });
}

/**
 * `cpu`: made on that CPU only (taskset). Linux 6.18 numbers namespaces from per-CPU batches
 * (ns_tree_gen_id: gen_cookie_next), so ids follow creation order only among namespaces made
 * on one CPU; the bind of an nsfs file is allowed only into a namespace with a smaller id
 * (mnt_ns_loop), which a test of that needs to be the older one.
 */
export async function newCaller(o: { cpu?: number } = {}): Promise<Caller> {
  const argv = [...onCpu(o.cpu), 'unshare', '--mount', '--propagation', 'private', '--', 'sleep', '3600'];
  const holder = spawn(argv[0], argv.slice(1), { stdio: 'ignore' });
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
  // FUSE mounts the namespace was born with are the host's (other suites' live mounts, copied
  // by unshare), not this caller's: fuseMounts() leaves them out, by mount id.
  const fuseLines = () => mountinfo().split('\n').filter((l) => / - fuse(\.|blk| )/.test(l));
  const inherited = new Set(fuseLines().map((l) => l.split(' ')[0]));
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
    fuseMounts: () => fuseLines().filter((l) => !inherited.has(l.split(' ')[0])).map((l) => l.split(' ')[4]),
    close: async () => {
      holder.kill('SIGKILL');
      await Promise.race([new Promise((r) => holder.once('exit', r)), sleep(2000)]);
    },
  };
}

/** The argv of fuse-svc-request against socket, for a caller to run. */
export function clientArgs(socket: string, ...args: string[]): string[] {
  return [CLIENT, '--socket', socket, ...args];
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

/** fd number -> what it is (readlink of /proc/PID/fd/N). */
export function fdTable(pid: number): Map<number, string> {
  const t = new Map<number, string>();
  for (const f of readdirSync(`/proc/${pid}/fd`)) {
    try {
      t.set(Number(f), readlinkSync(`/proc/${pid}/fd/${f}`));
    } catch {
      /* closed meanwhile */
    }
  }
  return t;
}

/**
 * Waits until PID holds at most `slack` descriptors more than `before` had; on timeout the
 * error names every descriptor that is new since then, so a leak says what leaked.
 */
export async function fdsBackTo(pid: number, before: Map<number, string>, ms = 10000, slack = 0): Promise<void> {
  try {
    await waitFor(`pid ${pid}'s descriptors back to ${before.size}${slack ? ` (+${slack})` : ''}`, () => fdCount(pid) <= before.size + slack, ms);
  } catch (e) {
    const now = fdTable(pid);
    const added = [...now].filter(([fd, what]) => before.get(fd) !== what).map(([fd, what]) => `${fd} -> ${what}`);
    throw new Error(`${(e as Error).message}; now ${now.size}, new: ${added.join(', ') || '(none; others closed)'}`);
  }
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
      if (p.comm.startsWith('fuse-svc-launch') && log.startsWith(runtimeDir + '/') && !/\/pool-\d+\.log( \(deleted\))?$/.test(log)) launchers.add(p.pid);
    } catch {
      /* gone */
    }
  }
  const ppidOf = new Map<number, number>();
  for (const p of all) {
    try {
      ppidOf.set(p.pid, Number(/^PPid:\s*(\d+)/m.exec(readFileSync(`/proc/${p.pid}/status`, 'utf8'))?.[1]));
    } catch {
      /* gone */
    }
  }
  // Descendants too: a server that forks into the background runs under its sandbox's reaper
  // (the launcher's child), so it is the launcher's grandchild.
  const mine = new Set(launchers);
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of all) if (!mine.has(p.pid) && mine.has(ppidOf.get(p.pid) ?? -1)) (mine.add(p.pid), (grew = true));
  }
  return all.filter((p) => mine.has(p.pid));
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

/** Whether a launcher holds the lock of sandbox uid `uid` in runtimeDir (flock -n fails then). */
export function uidLocked(runtimeDir: string, uid: number): Promise<boolean> {
  return execa('flock', ['-n', path.join(runtimeDir, 'uids', `${uid}.lock`), 'true'], { reject: false, timeout: 5000 }).then((r) => r.exitCode !== 0);
}

/**
 * A shell alone in a mount namespace of its own that it mounts from and then leaves, as an
 * ended `unshare -m` shell or a stopped container does: `script` runs first (as uid 1000),
 * then the shell prints READY and waits on its stdin; `exit()` closes stdin so the shell, the
 * namespace's only process, exits by itself. `userns`: `unshare -Urm` run by uid 1000 (the
 * namespace belongs to the user's own user namespace); else root's `unshare -m` with private
 * propagation, then setpriv to uid 1000.
 */
export type NsShell = { pid: number; ns: string; out: () => string; exit: () => Promise<void> };

/** taskset's prefix pinning a command (and what it starts) to one CPU, or nothing. */
function onCpu(cpu: number | undefined): string[] {
  return cpu === undefined ? [] : ['taskset', '-c', String(cpu)];
}

/** `cpu`: the namespace is made on that CPU (see newCaller). */
export async function nsShell(script: string, o: { userns?: boolean; cpu?: number } = {}): Promise<NsShell> {
  const body = `${script}\necho READY\nread x\n`;
  const drop = ['setpriv', '--reuid', String(USER), '--regid', String(USER), '--clear-groups', '--'];
  const argv = o.userns
    ? [...onCpu(o.cpu), ...drop, 'unshare', '-Urm', '--propagation', 'private', '--', 'sh', '-c', body]
    : [...onCpu(o.cpu), 'unshare', '--mount', '--propagation', 'private', '--', ...drop, 'sh', '-c', body];
  const proc = spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/' } });
  let out = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const exit = async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    proc.stdin!.end();
    await Promise.race([exited, sleep(5000)]);
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await Promise.race([exited, sleep(2000)]);
  };
  try {
    await waitFor('the namespace shell to be ready', () => out.includes('READY\n') || proc.exitCode !== null, 60000);
    if (!out.includes('READY\n')) throw new Error(`the namespace shell failed (${proc.exitCode}): ${out}`);
  } catch (e) {
    await exit();
    throw e;
  }
  // unshare and setpriv exec, so the shell is the process spawned
  return { pid: proc.pid!, ns: readlinkSync(`/proc/${proc.pid}/ns/mnt`), out: () => out, exit };
}

/** SIGKILL to a child, then its exit awaited at most 3 s (it may have exited already). */
export async function killAndWait(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const gone = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  await Promise.race([gone, sleep(3000)]);
}
