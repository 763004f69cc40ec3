// Benchmark: a full mount cycle through the broker (in-process client) against plain fuse2fs,
// in one run, as medians and a ratio; plus sequential throughput through both.
// Run as root: `npm run bench` (it enters a private mount namespace itself).
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { BrokerClient } from '../helper/client.js';
import { startBroker } from '../test/lib/harness.js';
import { STATIC_CLIENT } from '../test/lib/load.js';

const N = Number(process.env.BENCH_RUNS ?? 30);
const MiB = 64;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
function p(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}
const now = () => Number(process.hrtime.bigint()) / 1e6;

function mounted(dir: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${dir} `);
}
async function until(f: () => boolean, ms = 10000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('timeout');
    await new Promise((r) => setImmediate(r));
  }
}

/** fuse2fs in the foreground, stat, fusermount -u, wait for the server to exit. */
async function plainCycle(img: string, dir: string, waitExit: boolean): Promise<number> {
  const t0 = now();
  const args = waitExit ? ['-f', '-o', 'fakeroot', img, dir] : ['-o', 'fakeroot', img, dir];
  const child = spawn('fuse2fs', args, { stdio: 'ignore' });
  const exited = new Promise((r) => child.once('exit', r));
  await until(() => mounted(dir));
  statSync(path.join(dir, 'file'));
  await execa('fusermount', ['-u', dir]);
  if (waitExit) await exited;
  else await exited; // the daemonizing parent exits at once; the daemon is not waited for
  return now() - t0;
}

async function brokerCycle(c: BrokerClient, img: string, dir: string): Promise<number> {
  const t0 = now();
  await c.mount(img, dir, { options: 'rw' });
  statSync(path.join(dir, 'file'));
  await c.unmount(dir);
  return now() - t0;
}

/** The cycle as a user lives it: the installed static client as a separate process for mount
 * and for unmount (which returns once the server has flushed and exited). */
async function cliCycle(socket: string, img: string, dir: string): Promise<number> {
  const t0 = now();
  await execa(STATIC_CLIENT, ['--socket', socket, 'mount', '-o', 'rw', img, dir]);
  statSync(path.join(dir, 'file'));
  await execa(STATIC_CLIENT, ['--socket', socket, 'unmount', dir]);
  return now() - t0;
}

async function throughput(dir: string): Promise<{ write: number; read: number }> {
  const f = path.join(dir, 'tp.bin');
  const w = await execa('dd', ['if=/dev/zero', `of=${f}`, 'bs=1M', `count=${MiB}`, 'conv=fsync'], { reject: true });
  const r = await execa('dd', [`if=${f}`, 'of=/dev/null', 'bs=1M']);
  const rate = (s: string) => {
    const m = /,\s*([\d.]+) s,/.exec(s);
    return m ? (MiB * 1.048576) / Number(m[1]) : NaN;
  };
  rmSync(f);
  return { write: rate(w.stderr), read: rate(r.stderr) };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('run as root');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fuse-svc-bench-'));
  chmodSync(dir, 0o755);
  const img = path.join(dir, 'disk.img');
  await execa('mkfs.ext4', ['-q', '-F', img, '256M']);
  const mnt = path.join(dir, 'mnt');
  mkdirSync(mnt);
  // Put one file in the image for the stat.
  {
    const c = spawn('fuse2fs', ['-f', '-o', 'fakeroot', img, mnt], { stdio: 'ignore' });
    const ex = new Promise((r) => c.once('exit', r));
    await until(() => mounted(mnt));
    writeFileSync(path.join(mnt, 'file'), 'x');
    await execa('fusermount', ['-u', mnt]);
    await ex;
  }
  // BENCH_CGROUPS=none measures without per-instance cgroups (their attach is most of the gap).
  const cgroups = process.env.BENCH_CGROUPS === 'none' ? 'none' : 'auto';
  const broker = await startBroker({ config: { rate_per_second: 100000, rate_burst: 100000, cgroups } });
  const client = new BrokerClient({ socket: broker.socket });
  try {
    const plain: number[] = [];
    const plainDaemon: number[] = [];
    const brokered: number[] = [];
    const cli: number[] = [];
    for (let i = 0; i < 3; i++) {
      await plainCycle(img, mnt, true);
      await brokerCycle(client, img, mnt);
      await cliCycle(broker.socket, img, mnt);
    }
    // Interleaved, so drift and noise hit both alike.
    for (let i = 0; i < N; i++) {
      plain.push(await plainCycle(img, mnt, true));
      brokered.push(await brokerCycle(client, img, mnt));
      cli.push(await cliCycle(broker.socket, img, mnt));
      plainDaemon.push(await plainCycle(img, mnt, false));
      await until(() => !mounted(mnt));
    }
    const plainTp = await (async () => {
      const c = spawn('fuse2fs', ['-f', '-o', 'fakeroot', img, mnt], { stdio: 'ignore' });
      const ex = new Promise((r) => c.once('exit', r));
      await until(() => mounted(mnt));
      const t = await throughput(mnt);
      await execa('fusermount', ['-u', mnt]);
      await ex;
      return t;
    })();
    await client.mount(img, mnt, { options: 'rw' });
    const brokerTp = await throughput(mnt);
    await client.unmount(mnt);

    const mp = median(plain);
    const mb = median(brokered);
    const lines = [
      `runs: ${N} interleaved cycles (mount, stat a file, unmount, server exited), ${os.cpus().length} cores, Linux ${os.release()}, instance cgroups: ${cgroups}`,
      `plain fuse2fs -f + stat + fusermount -u + wait: median ${mp.toFixed(2)} ms (p90 ${p(plain, 0.9).toFixed(2)})`,
      `plain daemonizing fuse2fs (exit not awaited):   median ${median(plainDaemon).toFixed(2)} ms (p90 ${p(plainDaemon, 0.9).toFixed(2)})`,
      `brokered (sandboxed) cycle:                     median ${mb.toFixed(2)} ms (p90 ${p(brokered, 0.9).toFixed(2)})`,
      `brokered, static client as separate processes: median ${median(cli).toFixed(2)} ms (p90 ${p(cli, 0.9).toFixed(2)})`,
      `ratio brokered / plain: in-process client ${(mb / mp).toFixed(2)}x, static client (what users run) ${(median(cli) / mp).toFixed(2)}x (target <= 1.2x)`,
      `throughput ${MiB} MiB dd bs=1M: plain write ${plainTp.write.toFixed(0)} MB/s read ${plainTp.read.toFixed(0)} MB/s; brokered write ${brokerTp.write.toFixed(0)} MB/s read ${brokerTp.read.toFixed(0)} MB/s`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`bench: ${(e as Error).stack}\n`);
  process.exit(1);
});
