#!/usr/bin/env node
// fuse-svcd: the command line. `run` (default) serves requests; `stop` is the full stop;
// `check` reports the host's kernel features.
import { copyFileSync, chmodSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { execa } from 'execa';
import { ConfigError, DEFAULTS, loadConfigFile, parseMode, parseUidRange, readFuseConf, type Config } from './config.js';
import { hostChecks, formatChecks } from './check.js';
import { loadServers } from './servers.js';
import { Broker } from './broker.js';
import { atomicWrite, openLauncherPidfd, stopAll, waitPidfd, signalLauncher } from './instances.js';
import { log } from './log.js';
import { sweepRuntimeDir } from './cgroups.js';
import * as sock from '../helper/native/socket.js';
import { processStartTime } from './instances.js';
// issue 3 (units): socket activation and `security`
import { UnitActivator } from './units/activation.js';
import { UnitError } from './units/parser.js';
import { runSecurity } from './units/security.js';
import { acquireBrokerLock, brokerLockHolders, checkSecureDir, EXIT_BROKER_RUNNING, EXIT_INSECURE_DIR, InsecurePathError, pidFileText, processUid } from './rundir.js';

const DEFAULT_CONFIG_FILE = '/etc/fuse-svc/config.json';

type RunArgs = {
  socket?: string;
  'socket-mode'?: string;
  'socket-group'?: string;
  'runtime-dir'?: string;
  config?: string;
  'uid-range'?: string;
  'proc-source'?: string;
  units?: string;
};

function buildConfig(a: RunArgs): Config {
  let cfg: Config = { ...DEFAULTS, rate: { ...DEFAULTS.rate } };
  const fc = readFuseConf();
  if (fc.mountMax !== undefined) cfg.maxMounts = fc.mountMax;
  if (fc.userAllowOther) cfg.userAllowOther = true;
  const file = a.config ?? (existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : undefined);
  if (file) cfg = loadConfigFile(file, cfg);
  if (a['runtime-dir']) {
    cfg.runtimeDir = path.resolve(a['runtime-dir']);
    // The socket follows the runtime directory unless it was named (flag or file).
    if (!a.socket && cfg.socket === DEFAULTS.socket) cfg.socket = path.join(cfg.runtimeDir, 'broker.sock');
  }
  if (a.socket) cfg.socket = path.resolve(a.socket);
  if (a['socket-mode']) cfg.socketMode = parseMode(a['socket-mode']);
  if (a['socket-group']) cfg.socketGroup = a['socket-group'];
  if (a['uid-range']) cfg.uidRange = parseUidRange(a['uid-range']);
  if (a['proc-source']) {
    if (a['proc-source'] !== 'auto' && a['proc-source'] !== 'none') throw new ConfigError('--proc-source: expected auto or none');
    cfg.procSource = a['proc-source'];
  }
  return cfg;
}

/**
 * Inside Docker, /proc has paths masked by over-mounts, and the kernel refuses a fresh procfs in
 * a user namespace unless a fully visible one exists in the mount namespace. The broker (it has
 * CAP_SYS_ADMIN there) mounts one private, unmasked procfs of its own for the sandboxes' sake.
 */
async function ensureVisibleProc(cfg: Config): Promise<void> {
  if (cfg.procSource === 'none') return;
  const mi = readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
  const points = mi.map((l) => l.split(' ')[4]).filter(Boolean);
  const dir = path.join(cfg.runtimeDir, 'proc');
  if (points.includes(dir)) return;
  if (!points.some((p) => p.startsWith('/proc/'))) return;
  mkdirSync(dir, { recursive: true, mode: 0o555 });
  await execa('mount', ['-t', 'proc', '-o', 'nosuid,nodev,noexec', 'proc', dir], { env: {}, extendEnv: false });
  log.info(`/proc is partly masked (container); mounted an unmasked procfs at ${dir} so sandboxes can mount their own`);
}

function publishClient(cfg: Config): void {
  const src = path.join(cfg.nativeDir, 'fuse-svc-client');
  if (!cfg.publishClient || !existsSync(src)) return;
  const dir = path.join(cfg.runtimeDir, 'bin');
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const dst = path.join(dir, 'fuse-svc-request');
  copyFileSync(src, `${dst}.tmp`);
  chmodSync(`${dst}.tmp`, 0o755);
  rmSync(dst, { force: true });
  copyFileSync(`${dst}.tmp`, dst);
  chmodSync(dst, 0o755);
  rmSync(`${dst}.tmp`, { force: true });
}

/** The runtime dir and the socket's dir must be secure paths (supervisor/rundir.ts), or exit 77. */
function secureDirsOrExit(cfg: Config, create: boolean): void {
  try {
    checkSecureDir(cfg.runtimeDir, create);
    checkSecureDir(path.dirname(cfg.socket), create);
  } catch (e) {
    if (!(e instanceof InsecurePathError)) throw e;
    log.error(`refusing to use an insecure runtime path: ${e.message}`);
    process.exit(EXIT_INSECURE_DIR);
  }
}

async function run(a: RunArgs): Promise<void> {
  const cfg = buildConfig(a);
  const checks = hostChecks();
  const missing = checks.filter((c) => c.required && !c.ok);
  if (missing.length) {
    for (const c of missing) log.error(`host check failed: ${c.name}: ${c.detail} -> ${c.fix}`);
    process.exit(78);
  }
  secureDirsOrExit(cfg, true);
  // Held (never closed) for the broker's life; the kernel drops it when the process ends.
  if (acquireBrokerLock(cfg.runtimeDir) === undefined) {
    log.error(`another broker (pid ${pidFileText(cfg.runtimeDir)}) is serving ${cfg.runtimeDir}; exiting`);
    process.exit(EXIT_BROKER_RUNNING);
  }
  const servers = loadServers(cfg.serverDir);
  // Units are loaded (and refused with FILE:LINE) before anything listens.
  const broker = new Broker(cfg, servers);
  let units: UnitActivator | undefined;
  try {
    units = a.units ? new UnitActivator({ dir: path.resolve(a.units), runtimeDir: cfg.runtimeDir, nativeDir: cfg.nativeDir, uids: broker.uids }) : undefined;
  } catch (e) {
    throw e instanceof UnitError ? new ConfigError(e.message) : e;
  }
  chmodSync(cfg.runtimeDir, 0o755);
  await ensureVisibleProc(cfg);
  publishClient(cfg);
  broker.start();
  units?.start();
  atomicWrite(path.join(cfg.runtimeDir, 'broker.pid'), `${process.pid} ${processStartTime(process.pid)}\n`);
  let exiting = false;
  const exit = (sig: string) => {
    if (exiting) return;
    exiting = true;
    log.info(`${sig}: exiting; ${broker.liveCount()} live mount(s) keep running (full stop: fuse-svcd stop)`);
    const closed = broker.close();
    units?.close();
    rmSync(path.join(cfg.runtimeDir, 'broker.pid'), { force: true });
    // Idle pooled launchers end when their sockets close: reap them before leaving.
    void closed.then(() => process.exit(0));
  };
  process.on('SIGTERM', () => exit('SIGTERM'));
  process.on('SIGINT', () => exit('SIGINT'));
  process.on('SIGHUP', () => log.info('SIGHUP ignored (restart the broker to reload; mounts survive)'));
}

async function stop(a: RunArgs & { timeout: number }): Promise<void> {
  const cfg = buildConfig(a);
  secureDirsOrExit(cfg, false);
  // First the broker, so no new mount arrives while the others are taken down. broker.pid is
  // believed only for the process holding the broker lock (/proc/locks), for a root process with the recorded start
  // time (checked after the pidfd pins the pid): a stale or forged file signals no one.
  try {
    const [pid, start] = readFileSync(path.join(cfg.runtimeDir, 'broker.pid'), 'utf8').trim().split(' ');
    const pidfd = brokerLockHolders(cfg.runtimeDir).includes(Number(pid)) ? openLauncherPidfd({ launcher_pid: Number(pid), launcher_start: start } as never) : undefined;
    if (pidfd !== undefined && processUid(Number(pid)) !== 0) {
      log.warn(`broker.pid names pid ${pid}, not a root process: not signalled`);
      sock.close(pidfd);
    } else if (pidfd !== undefined) {
      signalLauncher(pidfd);
      if (!(await waitPidfd(pidfd, 5000))) log.warn(`the broker (pid ${pid}) did not exit within 5 s`);
      sock.close(pidfd);
    }
  } catch {
    /* no broker running */
  }
  const r = await stopAll(cfg.runtimeDir, a.timeout);
  sweepRuntimeDir(cfg.runtimeDir); // instance cgroups a killed launcher could not remove
  log.info(`full stop: ${r.stopped} instance(s) unmounted and ended${r.gone ? `, ${r.gone} already gone` : ''}`);
}

const runOptions = {
  socket: { type: 'string', describe: `socket path (default ${DEFAULTS.socket})` },
  'socket-mode': { type: 'string', describe: 'socket permissions, octal (default 0666: every local user may ask; the policy decides)' },
  'socket-group': { type: 'string', describe: 'group owning the socket (name or gid)' },
  'runtime-dir': { type: 'string', describe: `instance state, uid locks, published client (default ${DEFAULTS.runtimeDir})` },
  config: { type: 'string', describe: `JSON configuration file (default ${DEFAULT_CONFIG_FILE} if present; keys in docs/configuration.md)` },
  'uid-range': { type: 'string', describe: `dynamic uids for sandboxes, FIRST-LAST (default ${DEFAULTS.uidRange.join('-')})` },
  'proc-source': { type: 'string', describe: 'auto: mount an unmasked procfs when /proc is masked (Docker); none: never' },
  units: { type: 'string', describe: 'also socket-activate every NAME.socket + NAME@.service pair in DIR (docs/units.md)' },
} as const;

async function main(): Promise<void> {
  await yargs(hideBin(process.argv))
    .scriptName('fuse-svcd')
    .usage(
      'fuse-svcd - mount FUSE filesystems for unprivileged callers, each server in its own sandbox\n\n' +
        'Listens on an AF_UNIX SOCK_SEQPACKET socket. For each mount request it checks the caller\n' +
        '(identity from the kernel), creates the FUSE mount, starts the filesystem server (fuse2fs)\n' +
        "in fresh user/mount/pid/net/ipc/uts/cgroup namespaces with seccomp and no capabilities, and\n" +
        "attaches the mount in the caller's own mount namespace. Mounts outlive the broker: SIGTERM\n" +
        'stops the broker only; `fuse-svcd stop` unmounts everything.',
    )
    .command(['run', '$0'], 'serve requests in the foreground (logs to stderr)', runOptions, (a) => run(a as RunArgs))
    .command(
      'stop',
      'full stop: end the broker, detach every mount it made in its callers\' namespaces, end every server',
      { ...runOptions, timeout: { type: 'number', default: 30000, describe: 'ms to wait for the instances' } },
      (a) => stop(a as RunArgs & { timeout: number }),
    )
    .command(
      'security <unit>',
      'run the probe in the sandbox built from a unit file; per directive: setting, holds?, evidence; exposure 0-10',
      { unit: { type: 'string', demandOption: true, describe: 'a NAME@.service (or .sandbox) file' }, json: { type: 'boolean', default: false, describe: 'print [{directive, value, holds, evidence}]' }, 'runtime-dir': runOptions['runtime-dir'], 'uid-range': runOptions['uid-range'] },
      async (a) => {
        const cfg = buildConfig(a as RunArgs);
        try {
          process.exitCode = await runSecurity(String(a.unit), Boolean(a.json), { runtimeDir: cfg.runtimeDir, nativeDir: cfg.nativeDir, uidRange: cfg.uidRange });
        } catch (e) {
          throw e instanceof UnitError ? new ConfigError(e.message) : e;
        }
      },
    )
    .command(
      'check',
      'report the kernel features the broker needs, and what to do about missing ones',
      { json: { type: 'boolean', default: false, describe: 'print JSON' } },
      (a) => {
        const checks = hostChecks();
        process.stdout.write(a.json ? JSON.stringify(checks, null, 2) + '\n' : formatChecks(checks) + '\n');
        process.exitCode = checks.some((c) => c.required && !c.ok) ? 1 : 0;
      },
    )
    .epilogue(
      'Files:\n  /run/fuse-svc/broker.sock     the request socket\n  /run/fuse-svc/instances/      one state file and log per instance (survives restarts)\n  /etc/fuse-svc/config.json     optional configuration\n  /etc/fuse.conf                mount_max, user_allow_other (as fusermount)\n\n' +
        'Signals: SIGTERM/SIGINT end the broker; live mounts keep running and are re-adopted by the next\nbroker. Exit status 78: a required host feature is missing (see `fuse-svcd check`);\n77: the runtime dir or socket dir (or a parent) is not root-owned and writable by root alone\n(parents may be sticky), or is reached through a symlink; 75: another broker holds the runtime\ndir\'s lock; 64: bad configuration.\n\nDocs: docs/protocol.md, docs/security.md, docs/deploy.md',
    )
    .strict()
    .wrap(Math.min(100, process.stdout.columns || 100))
    .fail((msg, err) => {
      process.stderr.write(`fuse-svcd: ${err ? err.message : msg}\n`);
      process.exit(err instanceof ConfigError || !err ? 64 : 1);
    })
    .help()
    .version()
    .parseAsync();
}

main().catch((e) => {
  process.stderr.write(`fuse-svcd: ${(e as Error).message}\n`);
  process.exit(e instanceof ConfigError ? 64 : 1);
});
