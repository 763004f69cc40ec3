// Test helpers of the device / set-id attacks (test/adversary/podman.test.ts,
// userns-mountapi.test.ts): a hostile image, a root-only loop device, and a rootless Podman of
// uid 1000 whose every file (storage, run root, config, /etc/subuid lines it needs) is temporary.
// Every child has a timeout; every setup has a teardown that runs when the test failed.
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { execa } from 'execa';
import { NATIVE, USER, waitFor } from './harness.js';

export const PRIV_PROBE = path.join(NATIVE, 'priv-probe');
export const MOUNT_PROBE = path.join(NATIVE, 'mount-probe');

/** security.capability, VFS_CAP_REVISION_2 with the effective bit: DAC_OVERRIDE, DAC_READ_SEARCH, SETUID. */
export const FILE_CAPS = 0x86;
function capXattr(): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32LE(0x02000001, 0);
  b.writeUInt32LE(FILE_CAPS, 4);
  return b;
}

export type Loop = { dev: string; major: number; minor: number; secret: string; detach: () => Promise<void> };

/**
 * A loop device over a root-only (0600) file holding a random secret: a block device node of an
 * image that names it (b MAJOR MINOR) would read what only root may read.
 */
export async function rootOnlyLoop(dir: string): Promise<Loop> {
  const secret = `LOOPSECRET-${randomBytes(6).toString('hex')}`;
  const file = path.join(dir, 'loop-secret.bin');
  const data = Buffer.alloc(1 << 20);
  data.write(secret);
  writeFileSync(file, data, { mode: 0o600 });
  chmodSync(file, 0o600);
  const r = await execa('losetup', ['--find', '--show', file], { timeout: 15000 });
  const dev = r.stdout.trim();
  const rdev = statSync(dev).rdev;
  const major = (rdev >> 8) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
  return {
    dev,
    major,
    minor,
    secret,
    detach: async () => {
      await execa('losetup', ['--detach', dev], { timeout: 15000, reject: false });
    },
  };
}

/**
 * An ext4 image (owned by uid 1000, mode 0600) whose root and files are owned by the image's root,
 * holding what a caller must never get power from:
 *   fusedev    c 10 229, 0666 (a usable copy of the host's 0600 /dev/fuse)
 *   loopdev    b MAJOR MINOR, 0666 (the root-only loop device)
 *   suidprobe  priv-probe, setuid root (04755, uid 0)
 *   suid5probe priv-probe, setuid to the image's uid 5
 *   capprobe   priv-probe with security.capability = FILE_CAPS (permitted + effective)
 *   rootonly   0600, uid 0, "image-root-only"
 *   pub/       0777
 */
export async function deviceImage(dir: string, name: string, loop: Loop): Promise<string> {
  const img = path.join(dir, name);
  await execa('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', img, '16M'], { timeout: 30000 });
  const caps = path.join(dir, `${name}.cap`);
  writeFileSync(caps, capXattr());
  const text = path.join(dir, `${name}.rootonly`);
  writeFileSync(text, 'image-root-only\n');
  const cmds = path.join(dir, `${name}.debugfs`);
  writeFileSync(
    cmds,
    [
      'mknod fusedev c 10 229',
      'sif fusedev mode 020666',
      `mknod loopdev b ${loop.major} ${loop.minor}`,
      'sif loopdev mode 060666',
      `write ${PRIV_PROBE} suidprobe`,
      'sif suidprobe mode 0104755',
      `write ${PRIV_PROBE} suid5probe`,
      'sif suid5probe mode 0104755',
      'sif suid5probe uid 5',
      'sif suid5probe gid 5',
      `write ${PRIV_PROBE} capprobe`,
      'sif capprobe mode 0100755',
      `ea_set -f ${caps} capprobe security.capability`,
      `write ${text} rootonly`,
      'sif rootonly mode 0100600',
      'mkdir pub',
      'sif pub mode 040777',
    ].join('\n') + '\n',
  );
  await execa('debugfs', ['-w', '-f', cmds, img], { timeout: 30000 });
  const check = await execa('debugfs', ['-R', 'ea_list capprobe', img], { timeout: 30000 });
  if (!/security\.capability \(20\)/.test(check.stdout)) throw new Error(`debugfs did not set security.capability: ${check.stdout}`);
  chownSync(img, USER, USER);
  chmodSync(img, 0o600);
  return img;
}

/** A host file only the host's root may read (owner 0, 0600), for "nothing beyond the namespace". */
export function hostSecret(file: string): string {
  const secret = `HOSTSECRET-${randomBytes(6).toString('hex')}`;
  writeFileSync(file, secret + '\n', { mode: 0o600 });
  chownSync(file, 0, 0);
  chmodSync(file, 0o600);
  return secret;
}

type IdRange = { start: number; count: number };

/**
 * Makes sure /etc/subuid and /etc/subgid give uid 1000 a range (rootless Podman needs one) and
 * returns how to put both files back as they were. A range is chosen past every existing one.
 */
export function ensureSubids(user: string, uid = USER): { range: IdRange; restore: () => void } {
  const files = ['/etc/subuid', '/etc/subgid'];
  const saved = new Map<string, string | null>();
  let range: IdRange | undefined;
  for (const f of files) {
    const text = existsSync(f) ? readFileSync(f, 'utf8') : null;
    saved.set(f, text);
    const lines = (text ?? '').split('\n').filter((l) => l.trim() && !l.startsWith('#'));
    const mine = lines.map((l) => l.split(':')).find((p) => p[0] === user || p[0] === String(uid));
    if (mine && f === '/etc/subuid') range = { start: Number(mine[1]), count: Number(mine[2]) };
  }
  const restore = () => {
    for (const [f, text] of saved) {
      if (text === null) rmSync(f, { force: true });
      else writeFileSync(f, text);
    }
  };
  if (range) {
    const g = (saved.get('/etc/subgid') ?? '').split('\n').find((l) => l.split(':')[0] === user || l.split(':')[0] === String(uid));
    if (g) return { range, restore: () => {} };
  }
  let end = 200000;
  for (const f of files) {
    for (const l of (saved.get(f) ?? '').split('\n')) {
      const p = l.split(':');
      if (p.length === 3 && /^\d+$/.test(p[1]) && /^\d+$/.test(p[2])) end = Math.max(end, Number(p[1]) + Number(p[2]));
    }
  }
  range = { start: end, count: 65536 };
  for (const f of files) {
    const text = saved.get(f) ?? '';
    writeFileSync(f, `${text}${text && !text.endsWith('\n') ? '\n' : ''}${user}:${range.start}:${range.count}\n`, { mode: 0o644 });
  }
  return { range, restore };
}

export type Podman = {
  image: string;
  /** The host uid that container uid N (N >= 1) maps to. */
  subuid: (n: number) => number;
  /** podman ARGS as uid 1000 with the temporary storage; never rejects. */
  podman: (args: string[], timeoutMs?: number) => Promise<{ exitCode: number; stdout: string; stderr: string }>;
  /** `podman run --rm --name NAME ... IMAGE /bin/sh -c SCRIPT`; the container is removed after, whatever happened. */
  run: (name: string, flags: string[], script: string, timeoutMs?: number) => Promise<{ exitCode: number; stdout: string; stderr: string }>;
  /** Every container removed, the pause process ended, the storage deleted, /etc/sub[ug]id restored. */
  cleanup: () => Promise<void>;
};

/**
 * A rootless Podman for uid 1000 in `work` (root-owned 0755): HOME, XDG_RUNTIME_DIR (0700),
 * storage (--root, vfs driver: no kernel overlay in a user namespace needed) and run root all
 * inside it. The image is made with `podman import` from Debian's static busybox and its applet
 * links, plus the two probes; no registry is used.
 */
export async function rootlessPodman(work: string, imageName = 'fuse-svc-busybox'): Promise<Podman> {
  // /etc/subuid lines name the user; a machine without a passwd entry for 1000 gets a numeric one
  const pw = await execa('getent', ['passwd', String(USER)], { timeout: 10000, reject: false });
  const user = (pw.exitCode === 0 && String(pw.stdout).split(':')[0]) || String(USER);
  const ids = ensureSubids(user);
  const home = path.join(work, 'home');
  const xdg = path.join(work, 'xdg');
  for (const d of [home, xdg]) {
    mkdirSync(d, { mode: 0o700 });
    chownSync(d, USER, USER);
    chmodSync(d, 0o700);
  }
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: home, XDG_RUNTIME_DIR: xdg, XDG_CONFIG_HOME: path.join(home, '.config'), XDG_DATA_HOME: path.join(home, '.local/share') };
  const global = ['--root', path.join(home, 'storage'), '--runroot', path.join(xdg, 'runroot'), '--storage-driver', 'vfs', '--cgroup-manager', 'cgroupfs', '--events-backend', 'file'];
  const podman = async (args: string[], timeoutMs = 120000) => {
    const r = await execa('setpriv', ['--reuid', String(USER), '--regid', String(USER), '--clear-groups', '--', 'podman', ...global, ...args], {
      env,
      extendEnv: false,
      cwd: work,
      reject: false,
      timeout: timeoutMs,
    });
    return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') + (r.timedOut ? `\n(podman ${args[0]}: timed out after ${timeoutMs} ms)` : '') };
  };
  const cleanup = async () => {
    try {
      await podman(['rm', '--force', '--all', '--time', '0'], 60000);
      const pidFile = path.join(xdg, 'libpod', 'tmp', 'pause.pid');
      // The pause process holds the rootless user namespace between podman commands; it is
      // uid 1000's "podman", started by this setup (its pid file is in our temporary dir).
      const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8').trim()) : NaN;
      if (pid > 1) {
        try {
          const st = readFileSync(`/proc/${pid}/status`, 'utf8');
          if (/^Name:\s*(podman|podman pause|catatonit)\s*$/m.test(st) && new RegExp(`^Uid:\\s+${USER}\\s`, 'm').test(st)) process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
        await waitFor('the podman pause process to end', () => !existsSync(`/proc/${pid}/status`) || /^State:\s*Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')), 10000).catch(() => undefined);
      }
      // vfs storage makes no mounts, but a failed run may leave one under the run root
      for (const l of readFileSync('/proc/self/mountinfo', 'utf8').split('\n').reverse()) {
        const p = l.split(' ')[4];
        if (p && p.startsWith(work + '/')) await execa('umount', ['-l', p], { reject: false, timeout: 10000 });
      }
    } finally {
      rmSync(work, { recursive: true, force: true });
      ids.restore();
    }
  };
  try {
    const rootfs = path.join(work, 'rootfs');
    for (const d of ['bin', 'tmp', 'data', 'proc', 'dev', 'sys', 'etc', 'run/fuse-svc']) mkdirSync(path.join(rootfs, d), { recursive: true });
    chmodSync(path.join(rootfs, 'tmp'), 0o1777);
    const bb = path.join(rootfs, 'bin', 'busybox');
    copyFileSync('/bin/busybox', bb);
    chmodSync(bb, 0o755);
    const applets = (await execa('/bin/busybox', ['--list'], { timeout: 10000 })).stdout.split('\n').filter((a) => a && a !== 'busybox');
    for (const a of applets) symlinkSync('busybox', path.join(rootfs, 'bin', a));
    for (const p of [PRIV_PROBE, MOUNT_PROBE]) {
      copyFileSync(p, path.join(rootfs, 'bin', path.basename(p)));
      chmodSync(path.join(rootfs, 'bin', path.basename(p)), 0o755);
    }
    writeFileSync(path.join(rootfs, 'etc', 'passwd'), 'root:x:0:0:root:/:/bin/sh\n');
    const tar = path.join(work, 'rootfs.tar');
    await execa('tar', ['-C', rootfs, '-cf', tar, '.'], { timeout: 30000 });
    chownSync(tar, USER, USER);
    const imp = await podman(['import', tar, imageName]);
    if (imp.exitCode !== 0) throw new Error(`podman import failed (${imp.exitCode}): ${imp.stderr}`);
  } catch (e) {
    await cleanup();
    throw e;
  }
  return {
    image: imageName,
    subuid: (n: number) => ids.range.start + n - 1,
    podman,
    run: async (name, flags, script, timeoutMs = 120000) => {
      try {
        return await podman(['run', '--rm', '--name', name, ...flags, '-e', 'PATH=/bin', imageName, '/bin/sh', '-c', script], timeoutMs);
      } finally {
        await podman(['rm', '--force', '--time', '0', name], 30000);
      }
    },
    cleanup,
  };
}

/** Processes of uid 1000 named podman/conmon/catatonit (what a rootless Podman may leave). */
export function podmanProcesses(): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const st = readFileSync(`/proc/${p}/status`, 'utf8');
      if (/^Name:\s*(podman|podman pause|conmon|catatonit|runc|crun)\s*$/m.test(st) && new RegExp(`^Uid:\\s+${USER}\\s`, 'm').test(st) && !/^State:\s*Z/m.test(st)) out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}
