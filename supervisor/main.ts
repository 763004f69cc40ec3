#!/usr/bin/env node
// fuse-svcd: the command line. `run` (default) serves requests; `stop` is the full stop;
// `check` reports the host's kernel features.
import { chmodSync, existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { execa } from 'execa';
import { ConfigError, DEFAULTS, loadConfigFile, parseMode, parseUidRange, readFuseConf, type Config } from './config.js';
import { hostChecks, formatChecks, serverChecks } from './check.js';
import { formatProblem, loadServerDefs, unservedTypes } from './server-check.js';
import { Broker } from './broker.js';
import { atomicWrite, openPidfdChecked, stopAll, waitPidfd, signalLauncher } from './instances.js';
import { log } from './log.js';
import { sweepRuntimeDir } from './cgroups.js';
import * as sock from '../helper/native/socket.js';
import { processStartTime } from './instances.js';
// issue 3 (units): socket activation and `security`
import { UnitActivator } from './units/activation.js';
import { acquirePluginLock, DockerPlugin, pluginLockFile } from './docker-plugin.js';
import { UnitError } from './units/parser.js';
import { runSecurity } from './units/security.js';
// issue 13 §2: upstream libfuse's helper reaches fuse-svcd's servers
import { UpstreamSockets } from './upstream.js';
import { acquireBrokerLock, brokerLockHolders, checkSecureDir, checkSeparated, EXIT_BROKER_RUNNING, EXIT_INSECURE_DIR, InsecurePathError, pidFileText } from './rundir.js';
import { openDirNoFollow, openSubdir, readFileNoFollow, UnsafePathError, writeFileNoFollow } from './safefile.js';
import { profileServer, type BrokerHandle } from './profile.js';

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
  'upstream-sockets'?: boolean;
  'docker-plugin'?: boolean;
};

function buildConfig(a: RunArgs): Config {
  let cfg: Config = { ...DEFAULTS, rate: { ...DEFAULTS.rate } };
  const fc = readFuseConf();
  if (fc.mountMax !== undefined) cfg.maxMounts = fc.mountMax;
  if (fc.userAllowOther) cfg.userAllowOther = true;
  const file = a.config ?? (existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : undefined);
  if (file) cfg = loadConfigFile(file, cfg);
  if (a['runtime-dir']) cfg.runtimeDir = path.resolve(a['runtime-dir']);
  if (a.socket) cfg.socket = path.resolve(a.socket);
  // A state dir named without a socket keeps that broker self-contained: its public part is
  // RUNDIR/public (a directory of its own, which clients may be given; the state stays above).
  else if (cfg.socket === DEFAULTS.socket && cfg.runtimeDir !== DEFAULTS.runtimeDir) cfg.socket = path.join(cfg.runtimeDir, 'public', 'broker.sock');
  if (a['socket-mode']) cfg.socketMode = parseMode(a['socket-mode']);
  if (a['socket-group']) cfg.socketGroup = a['socket-group'];
  if (a['uid-range']) cfg.uidRange = parseUidRange(a['uid-range']);
  if (a['upstream-sockets']) cfg.upstreamSockets = true;
  if (a['docker-plugin']) cfg.dockerPlugin = true;
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
  // mount(8) follows links: RUNDIR/proc must be a real directory of root's (a planted link
  // would put a procfs over its target).
  stateSubdir(cfg, 'proc', 0o555);
  await execa('mount', ['-t', 'proc', '-o', 'nosuid,nodev,noexec', 'proc', dir], { env: {}, extendEnv: false });
  log.info(`/proc is partly masked (container); mounted an unmasked procfs at ${dir} so sandboxes can mount their own`);
}

/**
 * The static client goes to PUBLIC/bin (PUBLIC: the socket's directory, what client containers
 * mount), written fresh and renamed into place: a client running the old copy keeps it, and a
 * link planted at bin/ or its entries is replaced or refused, never written through.
 */
/** Makes or checks RUNDIR/NAME: a real directory of root's, writable by root alone (safefile.ts). */
function stateSubdir(cfg: Config, name: string, mode: number): void {
  const root = openDirNoFollow(cfg.runtimeDir);
  try {
    sock.close(openSubdir(root, name, mode, path.join(cfg.runtimeDir, name)));
  } finally {
    sock.close(root);
  }
}

function publishClient(cfg: Config): void {
  const src = path.join(cfg.nativeDir, 'fuse-svc-client');
  if (!cfg.publishClient || !existsSync(src)) return;
  const pub = openDirNoFollow(path.dirname(cfg.socket));
  try {
    const bin = openSubdir(pub, 'bin', 0o755, path.join(path.dirname(cfg.socket), 'bin'));
    try {
      writeFileNoFollow(bin, 'fuse-svc-request', readFileSync(src), 0o755);
    } finally {
      sock.close(bin);
    }
  } finally {
    sock.close(pub);
  }
}

/**
 * The state dir and the socket's dir must be secure paths (supervisor/rundir.ts) and apart
 * (the socket's dir neither the state dir nor above it), or exit 77. `stop` touches only the
 * state dir.
 */
function secureDirsOrExit(cfg: Config, create: boolean, socketToo = true): void {
  try {
    if (socketToo) checkSeparated(cfg.runtimeDir, path.dirname(cfg.socket));
    checkSecureDir(cfg.runtimeDir, create);
    if (socketToo) checkSecureDir(path.dirname(cfg.socket), create);
  } catch (e) {
    if (!(e instanceof InsecurePathError) && !(e instanceof UnsafePathError)) throw e;
    log.error(`refusing to use an insecure runtime path: ${e.message}`);
    process.exit(EXIT_INSECURE_DIR);
  }
}

/** What a planted link or foreign directory found while setting up costs: exit 77, one line. */
function orExitInsecure<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (!(e instanceof UnsafePathError)) throw e;
    log.error(`refusing to use an insecure runtime path: ${e.message}`);
    process.exit(EXIT_INSECURE_DIR);
  }
}

/**
 * The server definitions, each checked with its policy and sandbox: a bad one disables only
 * its types (one line each). Without configured fstypes, every type of every valid definition
 * is served.
 */
function loadDefinitions(cfg: Config): ReturnType<typeof loadServerDefs>['servers'] {
  const { servers, problems } = loadServerDefs(cfg.serverDir, cfg.policyDir);
  for (const p of problems) log.error(`server definition refused: ${formatProblem(p)}`);
  if (cfg.fstypes.length === 0) cfg.fstypes = [...servers.keys()].sort();
  else {
    const missing = unservedTypes(cfg.fstypes, servers);
    if (missing.length) log.warn(`configured fstypes without a valid server definition in ${cfg.serverDir}: ${missing.join(', ')} (refused with EFSTYPE)`);
  }
  return servers;
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
  if (orExitInsecure(() => acquireBrokerLock(cfg.runtimeDir)) === undefined) {
    log.error(`another broker (pid ${pidFileText(cfg.runtimeDir)}) is serving ${cfg.runtimeDir}; exiting`);
    process.exit(EXIT_BROKER_RUNNING);
  }
  // The plugin socket is a global path: its lock is taken before anything else is set up, and
  // a live broker holding it makes this one exit as a second broker on the same state does.
  if (cfg.dockerPlugin && orExitInsecure(() => acquirePluginLock(cfg)) === undefined) {
    log.error(`another live broker holds the Docker plugin socket ${cfg.dockerPluginSocket} (lock ${pluginLockFile(cfg.dockerPluginSocket)}); exiting`);
    process.exit(EXIT_BROKER_RUNNING);
  }
  const servers = loadDefinitions(cfg);
  // Units are loaded (and refused with FILE:LINE) before anything listens.
  const broker = orExitInsecure(() => new Broker(cfg, servers));
  let units: UnitActivator | undefined;
  try {
    units = a.units ? new UnitActivator({ dir: path.resolve(a.units), runtimeDir: cfg.runtimeDir, nativeDir: cfg.nativeDir, uids: broker.uids }) : undefined;
  } catch (e) {
    throw e instanceof UnitError ? new ConfigError(e.message) : e;
  }
  // Search only: sandboxes reach RUNDIR/empty (units) and callers a nested RUNDIR/public by
  // name; no one but root lists or opens the state itself (instances/ and uids/ are 0700).
  // Bound read-only into unit sandboxes as their empty directories: no planted link there.
  if (units) orExitInsecure(() => stateSubdir(cfg, 'empty', 0o555));
  chmodSync(cfg.runtimeDir, 0o711);
  await orExitInsecure(() => ensureVisibleProc(cfg));
  orExitInsecure(() => publishClient(cfg));
  // Said once everything is checked, so a refused start is still exactly one line.
  log.info(`serving ${cfg.fstypes.filter((t) => servers.has(t)).join(', ') || 'no filesystem type'}`);
  broker.start();
  units?.start();
  // After the units: a socket a unit names explicitly is the unit's.
  // Image types only: upstream's helper hands over files it opened, never a transport (sshfs).
  const upstream = cfg.upstreamSockets ? new UpstreamSockets(cfg, broker, cfg.fstypes.filter((t) => servers.has(t) && servers.get(t)!.source !== 'transport')) : undefined;
  try {
    orExitInsecure(() => upstream?.start());
  } catch (e) {
    if (!(e instanceof InsecurePathError)) throw e;
    log.error(`refusing to use an insecure upstream socket dir: ${e.message}`);
    process.exit(EXIT_INSECURE_DIR);
  }
  // After broker.start(): instances are re-adopted, so live volumes are recognised.
  const plugin = cfg.dockerPlugin ? new DockerPlugin(cfg, broker) : undefined;
  orExitInsecure(() => plugin?.start());
  orExitInsecure(() => atomicWrite(path.join(cfg.runtimeDir, 'broker.pid'), `${process.pid} ${processStartTime(process.pid)}\n`));
  let exiting = false;
  const exit = (sig: string) => {
    if (exiting) return;
    exiting = true;
    log.info(`${sig}: exiting; ${broker.liveCount()} live mount(s) keep running (full stop: fuse-svcd stop)`);
    plugin?.close();
    const closed = broker.close();
    units?.close();
    upstream?.close();
    rmSync(path.join(cfg.runtimeDir, 'broker.pid'), { force: true });
    // Idle pooled launchers end when their sockets close: reap them before leaving.
    void closed.then(() => process.exit(0));
  };
  process.on('SIGTERM', () => exit('SIGTERM'));
  process.on('SIGINT', () => exit('SIGINT'));
  process.on('SIGHUP', () => log.info('SIGHUP ignored (restart the broker to reload; mounts survive)'));
}

type ProfileArgs = { type: string; source: string; via?: string; workload: string; options?: string; uid: number; out: string; name?: string; timeout: number; config?: string };

/**
 * `profile`: the definition serving TYPE runs under a private broker (the same set-up as `run`,
 * in a fresh root-only directory) with no policy, its calls recorded; see supervisor/profile.ts.
 */
async function profile(a: ProfileArgs): Promise<void> {
  const base = buildConfig({ config: a.config });
  const servers = loadDefinitions({ ...base, fstypes: [] });
  const def = servers.get(a.type);
  if (!def) throw new ConfigError(`profile: no valid server definition in ${base.serverDir} serves type ${a.type} (fuse-svcd check names the refused ones)`);
  const start = async (cfg: Config): Promise<BrokerHandle> => {
    secureDirsOrExit(cfg, true);
    if (orExitInsecure(() => acquireBrokerLock(cfg.runtimeDir)) === undefined) throw new Error('profile: the private broker\'s lock is taken');
    const broker = orExitInsecure(() => new Broker(cfg, new Map([[a.type, def]])));
    chmodSync(cfg.runtimeDir, 0o711);
    await orExitInsecure(() => ensureVisibleProc(cfg));
    log.warn(`profile: instances of ${def.name} run with no seccomp policy, every call recorded (private broker, ${cfg.socket})`);
    broker.start();
    return { socket: cfg.socket, close: () => broker.close() };
  };
  const r = await profileServer(base, {
    def,
    fstype: a.type,
    // a transport's SOURCE names the remote side (PATH, :PATH or HOST:PATH), not a local file
    source: a.via !== undefined || def.source === 'transport' ? a.source : path.resolve(a.source),
    via: a.via,
    workload: a.workload,
    options: a.options ?? '',
    uid: a.uid,
    gid: a.uid,
    outDir: path.resolve(a.out),
    name: a.name ?? `${def.name}-profiled`,
    timeoutMs: a.timeout,
  }, start);
  process.stdout.write(
    `recorded ${r.recorded.length} system calls; ${r.kept.length} in the allow-list\n` +
      (r.answered.length ? `answered with the current policy's own errno, kept so: ${r.answered.join(' ')}\n` : '') +
      (r.beyond.length ? `refused by the current policy ${def.seccompPolicy}, left out: ${r.beyond.join(' ')}\n` : '') +
      `wrote ${r.sandboxFile}\nwrote ${r.policyFile}\n` +
      `use: put ${path.basename(r.sandboxFile)} next to the definition and ${path.basename(r.policyFile)} in the policy directory, then set "sandbox": "${path.basename(r.sandboxFile)}" and "seccompPolicy": "${path.basename(r.policyFile, '.json')}"\n`,
  );
}

async function stop(a: RunArgs & { timeout: number }): Promise<void> {
  const cfg = buildConfig(a);
  secureDirsOrExit(cfg, false, false);
  // First the broker, so no new mount arrives while the others are taken down. broker.pid is
  // believed only for the process holding the broker lock (/proc/locks), for a root process with the recorded start
  // time (checked after the pidfd pins the pid): a stale or forged file signals no one.
  try {
    const [pid, start] = (readFileNoFollow(cfg.runtimeDir, 'broker.pid') ?? '').trim().split(' ');
    const pidfd = brokerLockHolders(cfg.runtimeDir).includes(Number(pid)) ? openPidfdChecked(Number(pid), start) : undefined;
    if (pidfd !== undefined) {
      signalLauncher(pidfd);
      if (!(await waitPidfd(pidfd, 5000))) log.warn(`the broker (pid ${pid}) did not exit within 5 s`);
      sock.close(pidfd);
    }
  } catch {
    /* no broker running */
  }
  let r: Awaited<ReturnType<typeof stopAll>>;
  try {
    r = await stopAll(cfg.runtimeDir, a.timeout);
  } catch (e) {
    if (!(e instanceof UnsafePathError)) throw e;
    log.error(`refusing to use an insecure runtime path: ${e.message}`);
    process.exit(EXIT_INSECURE_DIR);
  }
  // Instance cgroups a killed launcher could not remove; the parents unless a broker still runs.
  sweepRuntimeDir(cfg.runtimeDir, { parents: brokerLockHolders(cfg.runtimeDir).length === 0 });
  log.info(`full stop: ${r.stopped} instance(s) unmounted and ended${r.gone ? `, ${r.gone} already gone` : ''}`);
}

const runOptions = {
  socket: { type: 'string', describe: `socket path (default ${DEFAULTS.socket}, or RUNDIR/public/broker.sock with --runtime-dir); its directory is the public one clients get, with bin/fuse-svc-request` },
  'socket-mode': { type: 'string', describe: 'socket permissions, octal (default 0666: every local user may ask; the policy decides)' },
  'socket-group': { type: 'string', describe: 'group owning the socket (name or gid)' },
  'runtime-dir': { type: 'string', describe: `the broker's own state: instances, uid locks, pid file, logs; never given to clients (default ${DEFAULTS.runtimeDir})` },
  config: { type: 'string', describe: `JSON configuration file (default ${DEFAULT_CONFIG_FILE} if present; keys in docs/configuration.md)` },
  'uid-range': { type: 'string', describe: `dynamic uids for sandboxes, FIRST-LAST (default ${DEFAULTS.uidRange.join('-')})` },
  'proc-source': { type: 'string', describe: 'auto: mount an unmasked procfs when /proc is masked (Docker); none: never' },
  units: { type: 'string', describe: 'also socket-activate every NAME.socket + NAME@.service pair in DIR (docs/units.md)' },
  'upstream-sockets': { type: 'boolean', describe: "also listen on /run/filesystems/TYPE for every served type and play the server side of libfuse's contained-service protocol for upstream's fuservicemount3 (docs/units.md)" },
  'docker-plugin': { type: 'boolean', describe: 'also serve Docker volume plugin requests on /run/docker/plugins/fuse-svc.sock (driver "fuse-svc", docs/deploy.md)' },
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
      'profile',
      'run a server in its sandbox over a workload, record its system calls, and write its policy and .sandbox',
      (y) =>
        y
          .usage(
            'fuse-svcd profile -t TYPE --source IMAGE --workload COMMAND --out DIR [options]\n' +
              'fuse-svcd profile -t TYPE --via COMMAND --source [HOST:]PATH --workload COMMAND --out DIR [options]\n\n' +
              'For server authors: finds the system calls a filesystem server makes, so its seccomp\n' +
              'policy allows those and nothing else. A private broker (its own state directory and\n' +
              "socket, made fresh and removed after) serves TYPE with the definition that claims it;\n" +
              'the server runs in its usual sandbox (dynamic uid, no capability, NoNewPrivs, its own\n' +
              'namespaces and root) but with no seccomp policy: the launcher\'s seccomp notifier stops\n' +
              'every call of the sandbox, records its number and lets it through. IMAGE is mounted on a\n' +
              'fresh mount point as --uid, COMMAND runs as --uid by /bin/sh -c with $MNT naming the\n' +
              'mount point, then the mount is unmounted and the instance ends. A transport server\n' +
              '(sshfs) takes --via COMMAND, run by the client as --uid, and the remote SOURCE, as\n' +
              'fuse-svc-request mount --via does; COMMAND outlives the client: send its stderr away.\n\n' +
              "Written to DIR: NAME.sandbox, the definition's .sandbox with its SystemCallFilter= lines\n" +
              'replaced by an allow-list of the calls recorded that its current policy allows (the\n' +
              'others are named in a comment and on stdout: add them by name if the server needs\n' +
              'them), and NAME.json, the OCI seccomp policy generated from that file the way the\n' +
              'shipped policies are. Every other directive (address families, W^X, the errno) stays.\n' +
              'A workload that misses a code path leaves its calls out: the server then gets EL3RST\n' +
              '(errno 47, "Level 3 reset") there; profile again with that path in the workload.\n\n' +
              'Exit status: 0 written; 64 a bad argument or no definition for TYPE; 1 the mount, the\n' +
              'workload or the unmount failed (nothing written).',
          )
          .option('type', { alias: 't', type: 'string', demandOption: true, describe: 'the filesystem type whose definition is profiled' })
          .option('source', { type: 'string', demandOption: true, describe: 'an image the server can mount, readable by --uid; with --via the remote SOURCE (PATH, :PATH or HOST:PATH)' })
          .option('via', { type: 'string', describe: 'for a transport server (sshfs): the COMMAND that serves its protocol, run by the client as --uid, as fuse-svc-request mount --via' })
          .option('workload', { type: 'string', demandOption: true, describe: 'shell command run against $MNT as --uid (e.g. "cp -r /usr/share/doc $MNT/ && sha256sum $MNT/*")' })
          .option('options', { alias: 'o', type: 'string', describe: 'mount options, as for fuse-svc-request mount -o' })
          .option('uid', { type: 'number', default: 0, describe: 'the caller: mount and workload run as this uid (and gid); a non-root caller may change the server\'s options (fuse2fs: fakeroot)' })
          .option('out', { type: 'string', demandOption: true, describe: 'directory for NAME.sandbox and NAME.json' })
          .option('name', { type: 'string', describe: 'NAME (default: DEFINITION-profiled)' })
          .option('timeout', { type: 'number', default: 300000, describe: 'ms each of mount, workload and unmount may take' })
          .option('config', runOptions.config),
      (a) => profile(a as unknown as ProfileArgs),
    )
    .command(
      'check',
      'report the kernel features the broker needs, what to do about missing ones, and every server definition that would be refused',
      { json: { type: 'boolean', default: false, describe: 'print JSON' }, config: runOptions.config },
      (a) => {
        const checks = [...hostChecks(), ...serverChecks(buildConfig(a as RunArgs))];
        process.stdout.write(a.json ? JSON.stringify(checks, null, 2) + '\n' : formatChecks(checks) + '\n');
        process.exitCode = checks.some((c) => c.required && !c.ok) ? 1 : 0;
      },
    )
    .epilogue(
      'Files:\n  /run/fuse-svc/broker.sock     the request socket (/run/fuse-svc: the public dir clients get, read-only)\n  /run/fuse-svc/bin/            the published static client\n  /run/fuse-svcd/instances/     one state file and log per instance (survives restarts; never shared)\n  /etc/fuse-svc/config.json     optional configuration\n  /run/docker/plugins/fuse-svc.sock  the Docker volume plugin socket (--docker-plugin; root only)\n  /var/lib/fuse-svc/docker/     Docker volume definitions (--docker-plugin)\n  /etc/fuse.conf                mount_max, user_allow_other (as fusermount)\n\n' +
        'Signals: SIGTERM/SIGINT end the broker; live mounts keep running and are re-adopted by the next\nbroker. Exit status 78: a required host feature is missing (see `fuse-svcd check`);\n77: the runtime dir or socket dir (or a parent) is not root-owned and writable by root alone\n(parents may be sticky), is reached through a symlink, holds a planted link or foreign directory,\nor the socket\'s dir holds the runtime dir; 75: another broker holds the runtime\ndir\'s lock; 64: bad configuration.\n\nDocs: docs/protocol.md, docs/security.md, docs/deploy.md',
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
