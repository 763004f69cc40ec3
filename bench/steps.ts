// Per-step time and CPU of brokered mount cycles (issue 12 §2, 16 §2): N cycles (mount rw, stat,
// unmount) through the broker with the in-process client, then each instance's step trace (the
// launcher's "steps" line: µs of wall clock / launcher CPU / CPU of its reaped children since
// the previous mark) and the broker's own CPU per cycle (its threads' se.sum_exec_runtime).
// Run as root: `npm run bench:steps` (BENCH_RUNS=N, default 20).
import { mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { BrokerClient } from '../helper/client.js';
import { makeImage, startBroker, tmpdir } from '../test/lib/harness.js';

const N = Number(process.env.BENCH_RUNS ?? 20);

/** Sum of se.sum_exec_runtime (ms) over a process's threads: precise, unlike /proc/PID/stat's ticks. */
function threadsCpuMs(pid: number): number {
  let ms = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    const m = /se\.sum_exec_runtime\s*:\s*([\d.]+)/.exec(readFileSync(`/proc/${pid}/task/${t}/sched`, 'utf8'));
    if (m) ms += Number(m[1]);
  }
  return ms;
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  const dir = tmpdir('fuse-svc-bench-steps-');
  const img = await makeImage(dir, 'disk.img', 64, 'ext4', 0);
  const mnt = path.join(dir, 'mnt');
  mkdirSync(mnt);
  const b = await startBroker({ config: { rate_per_second: 100000, rate_burst: 100000 } });
  const c = new BrokerClient({ socket: b.socket });
  try {
    await c.mount(img, mnt, { options: 'rw' });
    await c.unmount(mnt);
    const cpu0 = threadsCpuMs(b.proc.pid!);
    for (let i = 0; i < N; i++) {
      await c.mount(img, mnt, { options: 'rw' });
      statSync(mnt);
      await c.unmount(mnt);
    }
    await new Promise((r) => setTimeout(r, 500));
    const brokerMs = (threadsCpuMs(b.proc.pid!) - cpu0) / N;
    const d = path.join(b.runtimeDir, 'instances');
    const per = new Map<string, { wall: number[]; self: number[]; kids: number[] }>();
    for (const f of readdirSync(d).filter((n) => /^\d+\.log$/.test(n) && n !== '1.log')) {
      const line = readFileSync(path.join(d, f), 'utf8').split('\n').find((l) => l.includes(' steps '));
      for (const m of line?.matchAll(/ (\w+) \+(\d+)\/(\d+)\/(\d+)/g) ?? []) {
        const e = per.get(m[1]) ?? { wall: [], self: [], kids: [] };
        e.wall.push(Number(m[2]) / 1000), e.self.push(Number(m[3]) / 1000), e.kids.push(Number(m[4]) / 1000);
        per.set(m[1], e);
      }
    }
    console.log(`${N} brokered cycles; medians per instance, ms (the first step of a pooled launcher is its time idle in the pool)`);
    console.log('| step (until) | wall | launcher CPU | children CPU |\n|---|---|---|---|');
    for (const [k, e] of per) console.log(`| ${k} | ${median(e.wall).toFixed(2)} | ${median(e.self).toFixed(2)} | ${median(e.kids).toFixed(2)} |`);
    console.log(`broker (Node, all threads) CPU per cycle: ${brokerMs.toFixed(2)} ms`);
  } finally {
    await b.stop();
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
