// Crash containment (issue 6, part 2): a server killed with -9 ends as "mount detached in the
// caller's namespace within 1 s, no ENOTCONN left, dynamic uid released, `list` shows the exit
// status, one log line"; deliberately corrupted ext4 images are refused at start or fail
// contained, while the broker and another mount keep working and nothing hangs.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { copyFileSync, chownSync, chmodSync, mkdirSync, openSync, closeSync, writeSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { clientArgs, instanceProcesses, makeDir, makeImage, sleep, uidLocked, waitFor, type Broker, type Caller, openEnv, closeEnv } from './lib/harness.js';
import { cgroupName, existingInstanceCgroups } from '../supervisor/cgroups.js';

const s = suite('crash containment');
let broker: Broker;
let caller: Caller;
let dir: string;
let healthy: string;

s.before(async () => {
  ({ dir, broker, caller } = await openEnv());
  // A mount that must keep working whatever happens to the others.
  const img = await makeImage(dir, 'healthy.img', 16);
  healthy = makeDir(path.join(dir, 'mnt-healthy'));
  const m = await caller.run(clientArgs(broker.socket, 'mount', img, healthy));
  assert.is(m.exitCode, 0, m.stderr);
  const w = await caller.run(['sh', '-c', `echo alive > '${healthy}/canary'`]);
  assert.is(w.exitCode, 0, w.stderr);
});

s.after(async () => {
  await closeEnv({ dir, broker, caller });
});

/** The healthy mount still reads and writes, and the broker answers list, all within 5 s. */
async function stillHealthy(what: string): Promise<void> {
  const r = await caller.run(['sh', '-c', `cat '${healthy}/canary' && echo more >> '${healthy}/canary.log'`], { timeout: 5000 });
  assert.is(r.exitCode, 0, `${what}: the other mount broke: ${r.stderr}`);
  assert.is(r.stdout.trim(), 'alive');
  const l = await caller.run(clientArgs(broker.socket, '--json', 'list'), { timeout: 5000 });
  assert.is(l.exitCode, 0, `${what}: the broker stopped answering: ${l.stderr}`);
}

const uidLockHeld = (uid: number) => uidLocked(broker.runtimeDir, uid);

function processesOfUid(uid: number): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      if (new RegExp(`^Uid:\\s+${uid}\\s`, 'm').test(readFileSync(`/proc/${p}/status`, 'utf8'))) out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}

s('kill -9 of fuse2fs: detached within 1 s, no ENOTCONN, uid released, list shows signal 9, one log line', async () => {
  const img = await makeImage(dir, 'victim.img', 16);
  const mnt = makeDir(path.join(dir, 'mnt-victim'));
  const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', img, mnt));
  assert.is(m.exitCode, 0, m.stderr);
  const { id, uid, server_pid: pid } = JSON.parse(m.stdout) as { id: number; uid: number; server_pid: number };
  assert.ok(await uidLockHeld(uid), 'the uid is held while the instance lives');
  assert.ok(existingInstanceCgroups(broker.runtimeDir).length > 0, 'the instance has cgroups');

  const t0 = process.hrtime.bigint();
  process.kill(pid, 'SIGKILL');
  await waitFor('the mount to be detached', () => !caller.fuseMounts().includes(mnt), 1000, 5);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  console.log(`    kill -9 -> detached in the caller's namespace after ${ms.toFixed(1)} ms`);
  assert.ok(ms < 1000, `detached within 1 s (${ms} ms)`);

  const st = await caller.run(['stat', '-c', '%u', mnt], { timeout: 5000 });
  assert.is(st.exitCode, 0, `the mount point is a plain directory again: ${st.stderr}`);
  await waitFor('the list to show the end', async () => {
    const l = await caller.run(clientArgs(broker.socket, '--json', 'list'));
    const e = (JSON.parse(l.stdout).mounts as { id: number; state: string; exit_signal: number | null; reason: string }[]).find((x) => x.id === id);
    if (!e || e.state !== 'exited') return false;
    assert.is(e.exit_signal, 9);
    assert.match(e.reason, /killed by signal 9/);
    return true;
  }, 5000);
  assert.not.ok(await uidLockHeld(uid), 'the dynamic uid is released');
  assert.equal(processesOfUid(uid), [], 'no process runs as the sandbox uid');
  const lines = broker.logs().split('\n').filter((l) => new RegExp(`instance ${id}: .*ended`).test(l));
  assert.is(lines.length, 1, `one log line: ${lines.join(' | ')}`);
  assert.match(lines[0], /killed by signal 9.*mount detached, sandbox uid \d+ released/);
  const mine = cgroupName(broker.runtimeDir, id);
  assert.equal(existingInstanceCgroups(broker.runtimeDir).filter((d) => path.basename(d) === mine), [], 'its cgroups were removed');
  await stillHealthy('after kill -9');
});

// ---- corrupted images --------------------------------------------------------------------

type Geometry = { blockSize: number; inodeTable: number; inodeSize: number; rootDirBlock: number; fileInode: { block: number; offset: number }; rootInode: { block: number; offset: number } };

async function geometry(img: string): Promise<Geometry> {
  const d = (await execa('dumpe2fs', [img], { timeout: 10000, reject: false })).stdout;
  const num = (re: RegExp) => Number(re.exec(d)?.[1]);
  const imap = async (spec: string) => {
    const r = await execa('debugfs', ['-R', `imap ${spec}`, img], { timeout: 10000, reject: false });
    const m = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(r.stdout + r.stderr)!;
    return { block: Number(m[1]), offset: parseInt(m[2], 16) };
  };
  const blocks = await execa('debugfs', ['-R', 'blocks /', img], { timeout: 10000, reject: false });
  return {
    blockSize: num(/^Block size:\s+(\d+)/m),
    inodeTable: num(/Inode table at (\d+)-/),
    inodeSize: num(/^Inode size:\s+(\d+)/m),
    rootDirBlock: Number(blocks.stdout.trim().split(/\s+/)[0]),
    fileInode: await imap('/d/big.bin'),
    rootInode: await imap('<2>'),
  };
}

type Flip = { at: number; bytes: number[] };

/** Deterministic corruptions of a small (1 KiB block) image, by what they hit. */
function corruptions(g: Geometry): { name: string; flips: Flip[] }[] {
  const bs = g.blockSize;
  const sb = 1024;
  const gdt = 2 * bs; // 1 KiB blocks: superblock in block 1, descriptors in block 2
  const root = g.rootInode.block * bs + g.rootInode.offset;
  const file = g.fileInode.block * bs + g.fileInode.offset;
  const u32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
  const cases = [
    { name: 'superblock magic', flips: [{ at: sb + 56, bytes: [0x00, 0x00] }] },
    { name: 'superblock log_block_size', flips: [{ at: sb + 24, bytes: u32(20) }] },
    { name: 'superblock inodes_per_group 0', flips: [{ at: sb + 40, bytes: u32(0) }] },
    { name: 'superblock blocks_count huge', flips: [{ at: sb + 4, bytes: u32(0xfffffff0) }] },
    { name: 'group descriptor: inode table beyond the end', flips: [{ at: gdt + 8, bytes: u32(0x7ffffff0) }] },
    { name: 'group descriptor: block bitmap 0', flips: [{ at: gdt + 0, bytes: u32(0) }] },
    { name: 'group descriptor: free counts garbage', flips: [{ at: gdt + 12, bytes: [0xff, 0xff, 0xff, 0xff] }] },
    { name: 'root inode: mode not a directory', flips: [{ at: root + 0, bytes: [0xa4, 0x81] }] },
    { name: 'root inode: extent header magic', flips: [{ at: root + 40, bytes: [0x00, 0x00] }] },
    { name: 'root inode: extent depth 5 with garbage', flips: [{ at: root + 46, bytes: [5, 0] }] },
    { name: 'file inode: extent start beyond the end', flips: [{ at: file + 40 + 20, bytes: u32(0x7ffffff0) }] },
    { name: 'file inode: size 2^62', flips: [{ at: file + 4, bytes: [0, 0, 0, 0] }, { at: file + 108, bytes: u32(0x40000000) }] },
    { name: 'file inode: extent entries 500', flips: [{ at: file + 42, bytes: [0xf4, 0x01] }] },
    { name: 'root directory block: all 0xff', flips: [{ at: g.rootDirBlock * bs, bytes: Array(bs).fill(0xff) }] },
    { name: 'root directory block: rec_len 0', flips: [{ at: g.rootDirBlock * bs + 4, bytes: [0, 0] }] },
  ];
  // Seeded byte flips over the metadata (superblock .. end of the inode table).
  const end = (g.inodeTable + 16) * bs;
  for (const seed of [1, 2, 3, 4]) {
    let x = seed * 2654435761;
    const rnd = () => ((x = (Math.imul(x ^ (x >>> 15), 2246822507) + 0x9e3779b9) >>> 0), x);
    const flips: Flip[] = [];
    for (let i = 0; i < 48; i++) flips.push({ at: sb + (rnd() % (end - sb)), bytes: [rnd() & 0xff] });
    cases.push({ name: `seed ${seed}: 48 random byte flips in the metadata`, flips });
  }
  return cases;
}

function applyFlips(img: string, flips: Flip[]): void {
  const fd = openSync(img, 'r+');
  try {
    for (const f of flips) writeSync(fd, Buffer.from(f.bytes), 0, f.bytes.length, f.at);
  } finally {
    closeSync(fd);
  }
}

async function baseImage(name: string, features: string[]): Promise<string> {
  const src = path.join(dir, `src-${name}`);
  mkdirSync(path.join(src, 'd'), { recursive: true });
  for (let i = 0; i < 20; i++) writeFileSync(path.join(src, `f${i}.txt`), `file ${i}\n`.repeat(50 * (i + 1)));
  const big = Buffer.alloc(200000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7919) & 0xff;
  writeFileSync(path.join(src, 'd', 'big.bin'), big);
  const img = path.join(dir, `${name}.img`);
  await execa('mkfs.ext4', ['-q', '-F', '-b', '1024', '-N', '128', ...features, '-E', 'root_owner=1000:1000', '-d', src, img, '8M'], { timeout: 30000 });
  return img;
}

for (const [variant, features] of [['csum', []], ['nocsum', ['-O', '^metadata_csum,^has_journal']]] as const) {
  s(`corrupted images (${variant}): refused at start or contained; the broker and the other mount keep working`, async () => {
    const base = await baseImage(`base-${variant}`, [...features]);
    const g = await geometry(base);
    const mnt = makeDir(path.join(dir, `mnt-corrupt-${variant}`));
    const outcome: string[] = [];
    for (const c of corruptions(g)) {
      const img = path.join(dir, `corrupt-${variant}.img`);
      copyFileSync(base, img);
      applyFlips(img, c.flips);
      chownSync(img, 1000, 1000);
      chmodSync(img, 0o600);
      const t0 = Date.now();
      const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', img, mnt), { timeout: 40000 });
      assert.not.ok(m.exitCode === -1 || /timed out/i.test(m.stderr), `${c.name}: the mount request hung`);
      if (m.exitCode !== 0) {
        assert.is(m.exitCode, 2, `${c.name}: a broker refusal: ${m.stderr}`);
        assert.match(m.stderr, /fuse-svc-request: (ESERVER_START|ETIMEDOUT_SERVER): \S/, `${c.name}: refused with the server's words`);
        outcome.push(`${c.name}: refused at start (${Date.now() - t0} ms): ${m.stderr.trim().replace(/^fuse-svc-request: /, '').slice(0, 110)}`);
      } else {
        const { id } = JSON.parse(m.stdout) as { id: number };
        // Work on it; every command has its own deadline, the whole under `timeout`.
        const w = await caller.run(['timeout', '-s', 'KILL', '20', 'sh', '-c', `ls -laR '${mnt}' >/dev/null 2>&1; for f in '${mnt}'/f*.txt '${mnt}'/d/big.bin; do cat "$f" >/dev/null 2>&1; done; echo new > '${mnt}/new' 2>/dev/null; mkdir '${mnt}/dnew' 2>/dev/null; rm -f '${mnt}/f3.txt' 2>/dev/null; sync 2>/dev/null; ls '${mnt}' >/dev/null 2>&1; echo done`], { timeout: 30000 });
        assert.is.not(w.exitCode, 137, `${c.name}: file operations hung (killed after 20 s)`);
        const u = await caller.run(clientArgs(broker.socket, '--json', 'unmount', '--id', String(id)), { timeout: 30000 });
        const how = u.exitCode === 0 ? `unmounted (exit ${JSON.parse(u.stdout).exit_code ?? '?'}${JSON.parse(u.stdout).exit_signal ? `, signal ${JSON.parse(u.stdout).exit_signal}` : ''})` : `ended by itself (${u.stderr.trim().slice(0, 80)})`;
        if (u.exitCode !== 0) assert.match(u.stderr, /ENOENT_MOUNT/, `${c.name}: unmount: ${u.stderr}`);
        outcome.push(`${c.name}: mounted, operations finished, ${how}`);
      }
      assert.not.ok(caller.fuseMounts().includes(mnt), `${c.name}: nothing left mounted`);
      await waitFor(`${c.name}: no instance process left`, () => instanceProcesses(broker.runtimeDir).length === 2, 10000);
      await stillHealthy(c.name);
    }
    console.log(`    ${variant}:\n      ${outcome.join('\n      ')}`);
    const l = await caller.run(clientArgs(broker.socket, '--json', 'list'));
    const live = (JSON.parse(l.stdout).mounts as { state: string }[]).filter((x) => x.state !== 'exited');
    assert.is(live.length, 1, 'only the healthy mount is left');
  });
}

s('afterwards: only the healthy instance remains; its unmount leaves nothing', async () => {
  const u = await caller.run(clientArgs(broker.socket, 'unmount', healthy));
  assert.is(u.exitCode, 0, u.stderr);
  await waitFor('no instance processes', () => instanceProcesses(broker.runtimeDir).length === 0, 5000);
  assert.equal(caller.fuseMounts(), []);
  await sleep(100);
  assert.equal(existingInstanceCgroups(broker.runtimeDir), [], 'every instance cgroup removed');
});

s.run();
