// Test helpers for the shipped server definitions (test/servers.test.ts): images of each format
// made from a tree, and the processes of a runtime directory's instances whatever their names.
import { chmodSync, chownSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import * as assert from 'uvu/assert';
import { USER, clientArgs, makeDir, waitFor, type Broker, type Caller } from './harness.js';

/** A small tree with nested directories, a name with a space and a 3 MiB random file; owned by uid. */
export async function makeTree(dir: string, uid = USER): Promise<string> {
  const src = path.join(dir, 'tree');
  mkdirSync(path.join(src, 'sub', 'deeper'), { recursive: true });
  for (let i = 0; i < 20; i++) writeFileSync(path.join(src, i % 2 ? 'sub' : 'sub/deeper', `f${i}.txt`), `file ${i}\n`.repeat(i * 37 + 1));
  writeFileSync(path.join(src, 'name with space'), 'spaced\n');
  writeFileSync(path.join(src, 'big.bin'), randomBytes(3 << 20));
  await execa('chown', ['-R', `${uid}:${uid}`, src]);
  await execa('chmod', ['-R', 'u+rwX,go+rX', src]);
  return src;
}

export type Format = 'squashfs' | 'iso9660' | 'zip' | 'archive';

/** An image of `src` in the given format, owned by uid, mode 0600. */
export async function makeFormatImage(dir: string, fstype: Format, src: string, uid = USER): Promise<string> {
  const img = path.join(dir, `image.${fstype}`);
  const t = { timeout: 60000 };
  if (fstype === 'squashfs') await execa('mksquashfs', [src, img, '-noappend', '-quiet', '-no-progress'], t);
  else if (fstype === 'iso9660') await execa('genisoimage', ['-quiet', '-R', '-J', '-o', img, src], t);
  else if (fstype === 'zip') await execa('sh', ['-c', `cd "${src}" && zip -qr -X "${img}" .`], t);
  else await execa('tar', ['-cf', img, '-C', src, '.'], t);
  chownSync(img, uid, uid);
  chmodSync(img, 0o600);
  return img;
}

/**
 * The launchers serving runtimeDir's instances (fd 2 is an instance log there; pooled idle
 * launchers excluded unless `pooled`) and their descendants, whatever the server binary is called.
 */
export function instanceTree(runtimeDir: string, o: { pooled?: boolean } = {}): { pid: number; comm: string }[] {
  const all: { pid: number; comm: string; ppid: number }[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (rest[0] === 'Z') continue;
      all.push({ pid: Number(p), comm: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), ppid: Number(rest[1]) });
    } catch {
      /* gone */
    }
  }
  const launchers = new Set<number>();
  for (const p of all) {
    if (!p.comm.startsWith('fuse-svc-launch')) continue;
    try {
      const log = readlinkSync(`/proc/${p.pid}/fd/2`);
      if (log.startsWith(runtimeDir + '/') && (o.pooled || !/\/pool-\d+\.log$/.test(log))) launchers.add(p.pid);
    } catch {
      /* gone */
    }
  }
  // Descendants too: a server that forks into the background is the grandchild of its
  // launcher (its parent, the sandbox's reaper, is the launcher's child).
  const mine = new Set(launchers);
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of all) if (!mine.has(p.pid) && mine.has(p.ppid)) (mine.add(p.pid), (grew = true));
  }
  return all.filter((p) => mine.has(p.pid)).map(({ pid, comm }) => ({ pid, comm }));
}

/**
 * A mount of TYPE by `caller` (uid 1000, source and mount point made here) that must fail to
 * start: asserts exit 2, then returns the client's result and the kept whole log of the failed
 * start (RUNDIR/failed/ID.log), which the broker names in its log line.
 */
export async function failedStart(broker: Broker, caller: Caller, dir: string, type: string): Promise<{ m: { exitCode?: number; stdout: string; stderr: string }; where: string; log: string }> {
  const src = path.join(dir, `${type}.src`);
  writeFileSync(src, 'x');
  chownSync(src, USER, USER);
  const mnt = makeDir(path.join(dir, `${type}-mnt`));
  const m = await caller.run(clientArgs(broker.socket, 'mount', '-t', type, '-o', 'ro', src, mnt));
  assert.is(m.exitCode, 2, m.stderr);
  const where: string = await waitFor('the failed start in the broker log', () => /start failed: .*; whole log: (\S+)/.exec(broker.logs())?.[1] ?? '', 10000);
  return { m, where, log: readFileSync(where, 'utf8') };
}
