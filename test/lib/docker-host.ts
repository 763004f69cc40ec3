// Test support for the container tests (test/docker.test.ts, test/initsys.test.ts):
// a private dockerd per test file, a debootstrap base image cached on disk, command runners
// with timeouts, and mount-table helpers. Nothing here is skipped silently: every failure throws
// with the command, its exit status and its output.
//
// Layout (stable, so a second run reuses images):
//   /var/tmp/fuse-svc-docker/                    (env FUSE_SVC_DOCKER_CACHE)
//     bookworm-minbase.tar                       debootstrap --variant=minbase, apt sources copied
//     NAME/{data,exec,docker.sock,dockerd.pid,dockerd.log}   one dockerd per test file
// Each test file has its own daemon, so test files may run in parallel.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const CACHE_ROOT = process.env.FUSE_SVC_DOCKER_CACHE ?? '/var/tmp/fuse-svc-docker';
export const BASE_IMAGE = 'local/bookworm:base';

/** The repository root (this file is test/lib/docker-host.ts, compiled to dist/test/lib/). */
export function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'compose.yaml'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the repository root (package.json + compose.yaml) above ' + import.meta.url);
    dir = up;
  }
}

export function log(msg: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 23)}] ${msg}\n`);
}

export interface RunResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; ms: number }
export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  timeoutMs?: number;
  input?: string;
  /** do not throw on a non-zero exit */
  allowFail?: boolean;
  /** print output as it comes (long builds) */
  echo?: boolean;
}

function describe(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
}

function tail(s: string, n = 4000): string {
  return s.length > n ? '…' + s.slice(-n) : s;
}

/**
 * Run a command (no shell) in its own process group; on timeout the whole group is killed.
 * Throws unless it exits 0 (or allowFail).
 */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const started = Date.now();
  return new Promise((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(cmd, args, {
        env: opts.env ?? process.env,
        cwd: opts.cwd,
        detached: true,
        stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      });
    } catch (e) {
      reject(new Error(`${describe(cmd, args)}: ${(e as Error).message}`));
      return;
    }
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { stdout += d; if (opts.echo) process.stderr.write(d); });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr += d; if (opts.echo) process.stderr.write(d); });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    const timer = setTimeout(() => {
      timedOut = true;
      try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ }
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`${describe(cmd, args)}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const ms = Date.now() - started;
      const res: RunResult = { code, signal, stdout, stderr, ms };
      if (timedOut) {
        reject(new Error(`${describe(cmd, args)}: timed out after ${timeoutMs} ms\nstdout: ${tail(stdout)}\nstderr: ${tail(stderr)}`));
      } else if (code !== 0 && !opts.allowFail) {
        reject(new Error(`${describe(cmd, args)}: exit ${code ?? signal}\nstdout: ${tail(stdout)}\nstderr: ${tail(stderr)}`));
      } else {
        resolve(res);
      }
    });
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Poll fn until it returns a truthy value; throws `what` with the last error after timeoutMs. */
export async function waitFor<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined | false | null> | T | undefined | false | null, everyMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ': ' + (last as Error).message : ''}`);
    }
    await sleep(everyMs);
  }
}

export function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

/** Mount points (field 5 of mountinfo) in the given mount table. */
export function mountPoints(mountinfo = '/proc/self/mountinfo'): { mountPoint: string; fstype: string; source: string }[] {
  const out: { mountPoint: string; fstype: string; source: string }[] = [];
  for (const line of fs.readFileSync(mountinfo, 'utf8').split('\n')) {
    if (!line) continue;
    const [pre, post] = line.split(' - ');
    const f = pre.split(' ');
    const g = (post ?? '').split(' ');
    const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    out.push({ mountPoint: unescape(f[4]), fstype: g[0], source: unescape(g[1] ?? '') });
  }
  return out;
}

/** Lazily unmount everything mounted at or below dir (deepest first). */
export async function unmountBelow(dir: string): Promise<void> {
  const mps = mountPoints().map((m) => m.mountPoint).filter((m) => m === dir || m.startsWith(dir + '/'));
  mps.sort((a, b) => b.length - a.length);
  for (const mp of mps) await run('umount', ['-l', mp], { allowFail: true, timeoutMs: 10_000 });
}

// ---------------------------------------------------------------------------------------------
// The base image

/** The Debian mirror URI, read at run time from the host's apt sources (never written down). */
export function debianMirror(): string {
  const text = fs.readFileSync('/etc/apt/sources.list.d/debian.sources', 'utf8');
  for (const stanza of text.split(/\n\s*\n/)) {
    const uri = /^URIs:\s*(\S+)/m.exec(stanza)?.[1];
    const suites = /^Suites:\s*(.*)$/m.exec(stanza)?.[1] ?? '';
    if (uri && /(^|\s)bookworm(\s|$)/.test(suites)) return uri;
  }
  throw new Error('no bookworm stanza with URIs: in /etc/apt/sources.list.d/debian.sources');
}

async function withLock<T>(name: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  const lock = path.join(CACHE_ROOT, name + '.lock');
  fs.mkdirSync(CACHE_ROOT, { recursive: true });
  await waitFor(`lock ${lock}`, timeoutMs, () => {
    try {
      fs.mkdirSync(lock);
      fs.writeFileSync(path.join(lock, 'pid'), String(process.pid));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let owner = 0;
      try { owner = Number(fs.readFileSync(path.join(lock, 'pid'), 'utf8')); } catch { /* being written */ }
      if (owner > 0 && !pidAlive(owner)) fs.rmSync(lock, { recursive: true, force: true });
      return false;
    }
  }, 500);
  try {
    return await fn();
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}

/** A tarball of a debootstrap minbase bookworm with the host's apt sources; built once and cached. */
export async function baseTarball(): Promise<string> {
  const tarball = path.join(CACHE_ROOT, 'bookworm-minbase.tar');
  if (fs.existsSync(tarball)) return tarball;
  return withLock('base', 900_000, async () => {
    if (fs.existsSync(tarball)) return tarball;
    const rootfs = fs.mkdtempSync(path.join(CACHE_ROOT, 'rootfs-'));
    try {
      const mirror = debianMirror();
      log(`debootstrap --variant=minbase bookworm (mirror from debian.sources) into ${rootfs}`);
      await run('debootstrap', ['--variant=minbase', 'bookworm', rootfs, mirror], { timeoutMs: 600_000 });
      await unmountBelow(rootfs);
      fs.copyFileSync('/etc/apt/sources.list.d/debian.sources', path.join(rootfs, 'etc/apt/sources.list.d/debian.sources'));
      fs.rmSync(path.join(rootfs, 'etc/apt/sources.list'), { force: true });
      for (const d of ['var/lib/apt/lists', 'var/cache/apt/archives']) {
        const dir = path.join(rootfs, d);
        for (const e of fs.readdirSync(dir)) {
          if (e === 'partial' || e === 'lock') continue;
          fs.rmSync(path.join(dir, e), { recursive: true, force: true });
        }
      }
      await run('tar', ['-C', rootfs, '--numeric-owner', '-cf', tarball + '.tmp', '.'], { timeoutMs: 300_000 });
      fs.renameSync(tarball + '.tmp', tarball);
      return tarball;
    } finally {
      await unmountBelow(rootfs);
      fs.rmSync(rootfs, { recursive: true, force: true });
      fs.rmSync(tarball + '.tmp', { force: true });
    }
  });
}

// ---------------------------------------------------------------------------------------------
// A private dockerd

export interface Dockerd {
  name: string;
  dir: string;
  /** environment for docker / docker-compose: DOCKER_HOST, legacy builder */
  env: NodeJS.ProcessEnv;
  pid: number;
  docker(args: readonly string[], opts?: RunOptions): Promise<RunResult>;
  stop(): Promise<void>;
}

function readPid(file: string): number {
  try { return Number(fs.readFileSync(file, 'utf8').trim()) || 0; } catch { return 0; }
}

async function stopPid(pid: number, what: string, timeoutMs: number): Promise<void> {
  if (!pid || !pidAlive(pid)) return;
  try { process.kill(pid, 'SIGTERM'); } catch { return; }
  try {
    await waitFor(`${what} (pid ${pid}) to exit`, timeoutMs, () => !pidAlive(pid), 100);
  } catch {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    await waitFor(`${what} (pid ${pid}) to die`, 5000, () => !pidAlive(pid), 100);
  }
}

/** Start a dockerd with its own data-root and exec-root under CACHE_ROOT/name. */
export async function startDockerd(name: string): Promise<Dockerd> {
  const dir = path.join(CACHE_ROOT, name);
  const pidfile = path.join(dir, 'dockerd.pid');
  const sock = path.join(dir, 'docker.sock');
  fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'exec'), { recursive: true });

  // A dockerd left by an earlier, killed run of this same test (same data root): stop it.
  const stale = readPid(pidfile);
  if (stale && pidAlive(stale)) {
    let cmdline = '';
    try { cmdline = fs.readFileSync(`/proc/${stale}/cmdline`, 'utf8'); } catch { /* gone */ }
    if (cmdline.includes(`--data-root=${dir}/data`)) {
      log(`stopping a dockerd left by an earlier run (pid ${stale})`);
      await stopPid(stale, 'stale dockerd', 30_000);
    }
  }
  await unmountBelow(path.join(dir, 'exec'));
  fs.rmSync(sock, { force: true });

  const logFile = path.join(dir, 'dockerd.log');
  const logFd = fs.openSync(logFile, 'w');
  const child = spawn('dockerd', [
    `--data-root=${dir}/data`, `--exec-root=${dir}/exec`, `--pidfile=${pidfile}`, `--host=unix://${sock}`,
    '--storage-driver=overlay2', '--bridge=none', '--iptables=false', '--ip6tables=false', '--ip-masq=false',
  ], { detached: true, stdio: ['ignore', logFd, logFd] });
  fs.closeSync(logFd);
  let exited: string | null = null;
  child.on('exit', (code, sig) => { exited = `dockerd exited (${code ?? sig})`; });
  child.on('error', (e) => { exited = `dockerd: ${e.message}`; });
  child.unref();

  const env: NodeJS.ProcessEnv = {
    ...process.env,
    DOCKER_HOST: `unix://${sock}`,
    DOCKER_BUILDKIT: '0', // no buildx here: the legacy builder
    COMPOSE_DOCKER_CLI_BUILD: '0',
    DOCKER_CLI_HINTS: 'false',
  };
  const docker = (args: readonly string[], opts: RunOptions = {}) => run('docker', args, { ...opts, env: { ...env, ...opts.env } });
  const started = Date.now();
  await waitFor('dockerd to answer', 60_000, async () => {
    if (exited) throw new Error(`${exited}; log:\n${tail(fs.readFileSync(logFile, 'utf8'))}`);
    const r = await docker(['version', '--format', '{{.Server.Version}}'], { allowFail: true, timeoutMs: 10_000 });
    return r.code === 0;
  }, 200).catch((e: Error) => {
    throw new Error(`${e.message}\ndockerd log:\n${tail(fs.readFileSync(logFile, 'utf8'))}`);
  });
  log(`dockerd ${name} up in ${Date.now() - started} ms (pid ${child.pid})`);

  const pid = child.pid!;
  let stopped = false;
  return {
    name, dir, env, pid, docker,
    async stop() {
      if (stopped) return;
      stopped = true;
      const t = Date.now();
      await stopPid(pid, 'dockerd', 30_000);
      // containerd started by dockerd exits with it; if it did not, its pid file tells.
      const ctrd = readPid(path.join(dir, 'exec/containerd/containerd.pid'));
      if (ctrd) await stopPid(ctrd, 'containerd', 10_000);
      await unmountBelow(path.join(dir, 'exec'));
      await unmountBelow(path.join(dir, 'data'));
      log(`dockerd ${name} stopped in ${Date.now() - t} ms`);
    },
  };
}

/** Import the cached debootstrap tarball as local/bookworm:base unless the daemon has it. */
export async function ensureBaseImage(d: Dockerd): Promise<void> {
  const has = await d.docker(['image', 'inspect', '--format', '{{.Id}}', BASE_IMAGE], { allowFail: true });
  if (has.code === 0) return;
  const tarball = await baseTarball();
  const t = Date.now();
  await d.docker(['import', tarball, BASE_IMAGE], { timeoutMs: 300_000 });
  log(`imported ${BASE_IMAGE} in ${Date.now() - t} ms`);
}

/** Build the broker image from this checkout with docker/build-image.sh. */
export async function buildBrokerImage(d: Dockerd, tag: string): Promise<void> {
  const root = repoRoot();
  const t = Date.now();
  await run('bash', [path.join(root, 'docker/build-image.sh'), '--tag', tag, '--base', BASE_IMAGE], {
    env: d.env, cwd: root, timeoutMs: 900_000,
  });
  log(`built ${tag} in ${Date.now() - t} ms`);
}

/** `docker inspect` one field of a container, '' when it does not exist. */
export async function inspect(d: Dockerd, container: string, format: string): Promise<string> {
  const r = await d.docker(['inspect', '--format', format, container], { allowFail: true, timeoutMs: 20_000 });
  return r.code === 0 ? r.stdout.trim() : '';
}

/** Make an ext4 image owned (file and root directory) by uid:gid. */
export async function makeExt4(file: string, sizeMiB: number, uid: number, gid: number): Promise<void> {
  await run('mkfs.ext4', ['-q', '-F', '-E', `root_owner=${uid}:${gid}`, file, `${sizeMiB}M`], { timeoutMs: 30_000 });
  fs.chownSync(file, uid, gid);
}
