// Memory (issue 12 §4): the broker's RSS and PSS idle, with N live mounts and after they are
// gone; per instance, the launcher's and the server's (fuse2fs), each from /proc/PID/status
// (VmRSS) and /proc/PID/smaps_rollup (Pss, split into anonymous and file-backed), of real
// mounts through a real broker with the in-process client.
// Run as root: `npm run bench:memory` (BENCH_MOUNTS=N, default 100).
import { mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import path from 'node:path';
import { BrokerClient } from '../helper/client.js';
import { instanceProcesses, makeImage, startBroker, tmpdir } from '../test/lib/harness.js';

const N = Number(process.env.BENCH_MOUNTS ?? 100);

type Mem = { rss: number; pss: number; anon: number; file: number };
/** kB figures of one process; undefined if it is gone. */
function mem(pid: number): Mem | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const kb = (text: string, key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
    return { rss: kb(status, 'VmRSS'), pss: kb(rollup, 'Pss'), anon: kb(rollup, 'Pss_Anon'), file: kb(rollup, 'Pss_File') + kb(rollup, 'Pss_Shmem') };
  } catch {
    return undefined;
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
const mib = (kb: number) => (kb / 1024).toFixed(1);
const row = (label: string, m: Mem | undefined, extra = '') =>
  m ? `| ${label} | ${mib(m.rss)} | ${mib(m.pss)} | ${mib(m.anon)} | ${mib(m.file)} | ${extra} |` : `| ${label} | gone | | | | ${extra} |`;
/** The broker's stock of idle launchers: their log is pool-N.log in the runtime dir. */
function pooledLaunchers(runtimeDir: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      if (!readFileSync(`/proc/${e}/comm`, 'utf8').startsWith('fuse-svc-launch')) continue;
      if (/\/pool-\d+\.log$/.test(readlinkSync(`/proc/${e}/fd/2`)) && readlinkSync(`/proc/${e}/fd/2`).startsWith(runtimeDir + '/')) out.push(Number(e));
    } catch {
      /* gone */
    }
  }
  return out;
}
const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('run as root');
  const dir = tmpdir('fuse-svc-bench-memory-');
  const b = await startBroker({ config: { rate_per_second: 100000, rate_burst: 100000, max_mounts_per_user: 100000 } });
  const c = new BrokerClient({ socket: b.socket });
  const rows: string[] = [];
  const mounted: string[] = [];
  try {
    // Images are small and sparse: what a server holds is its own state, not the image's size.
    const imgs: string[] = [];
    for (let i = 0; i < N; i += 10) {
      imgs.push(...(await Promise.all(Array.from({ length: Math.min(10, N - i) }, (_, k) => makeImage(dir, `d${i + k}.img`, 8, 'ext4', 0)))));
    }
    await settle(1500); // the launcher pool fills
    rows.push(row('broker, idle (started, nothing mounted yet)', mem(b.proc.pid!)));
    const pool = pooledLaunchers(b.runtimeDir).map(mem).filter((m): m is Mem => m !== undefined);
    if (pool.length) rows.push(row(`idle pooled launcher (median of ${pool.length})`, { rss: median(pool.map((m) => m.rss)), pss: median(pool.map((m) => m.pss)), anon: median(pool.map((m) => m.anon)), file: median(pool.map((m) => m.file)) }));
    const m0 = path.join(dir, 'm-warm');
    mkdirSync(m0);
    await c.mount(imgs[0], m0, { options: 'rw' });
    await c.unmount(m0);
    await settle(1000);
    rows.push(row('broker, idle after one mount cycle', mem(b.proc.pid!)));
    for (let i = 0; i < N; i++) {
      const m = path.join(dir, `m${i}`);
      mkdirSync(m);
      await c.mount(imgs[i], m, { options: 'rw' });
      mounted.push(m);
    }
    await settle(1500);
    rows.push(row(`broker, ${N} live mounts`, mem(b.proc.pid!)));
    const procs = instanceProcesses(b.runtimeDir);
    const byComm = new Map<string, Mem[]>();
    for (const p of procs) {
      const m = mem(p.pid);
      if (!m) continue;
      const list = byComm.get(p.comm) ?? [];
      list.push(m);
      byComm.set(p.comm, list);
    }
    for (const [comm, ms] of byComm) {
      const med: Mem = { rss: median(ms.map((m) => m.rss)), pss: median(ms.map((m) => m.pss)), anon: median(ms.map((m) => m.anon)), file: median(ms.map((m) => m.file)) };
      const sumPss = ms.reduce((s, m) => s + m.pss, 0);
      rows.push(row(`per instance: ${comm} (median of ${ms.length})`, med, `sum of Pss over all ${ms.length}: ${mib(sumPss)} MiB`));
    }
    for (const m of mounted.splice(0)) await c.unmount(m);
    await settle(1500);
    rows.push(row(`broker, after the ${N} unmounts`, mem(b.proc.pid!)));
    console.log(`${N} live mounts (fuse2fs rw, 8 MiB ext4 images), ${pool.length} idle pooled launchers; MiB; load: ${readFileSync('/proc/loadavg', 'utf8').trim()}`);
    console.log('| process | VmRSS | Pss | Pss anon | Pss file+shmem | note |\n|---|---|---|---|---|---|');
    console.log(rows.join('\n'));
  } finally {
    for (const m of mounted) await c.unmount(m).catch(() => undefined);
    await b.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
