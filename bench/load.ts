// Load benchmark (issue 16): U uids x L concurrent loops x C cycles of mount -o ro + stat +
// unmount, each command a separate process (test/lib/load.ts), plain fuse2fs + fusermount3
// against the broker with the published static client, interleaved in one run, with the broker's
// runtime dir on tmpfs (/dev/shm) and on a disk filesystem (a directory under /var/tmp).
// Run as root: `npm run bench:load -- --uids 8 --loops 4 --cycles 25 --rounds 2`.
// The plain loops get /dev/fuse 0666 (as on ordinary machines) inside the caller's namespace only.
import { chmodSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { fdCount, instanceProcesses, newCaller, startBroker, tmpdir, usersInCaller, worldFuseInCaller, type Broker } from '../test/lib/harness.js';
import { machineBusy, prepareLoad, processCpu, quantile, runLoad, type LoadResult } from '../test/lib/load.js';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}
const U = arg('uids', 8);
const L = arg('loops', 4);
const C = arg('cycles', 25);
const ROUNDS = arg('rounds', 1);

function line(label: string, r: LoadResult, cpu: number, extra = ''): string {
  return `| ${label} | ${(r.cycles / r.wall).toFixed(1)} | ${quantile(r.lat, 0.5).toFixed(0)} ms | ${quantile(r.lat, 0.99).toFixed(0)} ms | ${r.cycles - r.ok} | ${(cpu / r.cycles * 1000).toFixed(1)} ms | ${extra} |`;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('run as root');
  const uids = Array.from({ length: U }, (_, i) => 1000 + i);
  const dir = tmpdir('fuse-svc-bench-load-');
  const caller = await newCaller();
  // Plain runs as on ordinary machines, /dev/fuse 0666, but only in the caller's namespace.
  await worldFuseInCaller(caller, dir);
  await usersInCaller(caller, dir, uids);
  const runDirs = { tmpfs: mkdtempSync('/dev/shm/fuse-svc-bench-run-'), disk: mkdtempSync('/var/tmp/fuse-svc-bench-run-') };
  const brokers: Record<string, Broker> = {};
  const rows: string[] = [];
  try {
    const setup = await prepareLoad(dir, uids, L);
    for (const [k, d] of Object.entries(runDirs)) {
      chmodSync(d, 0o755);
      brokers[k] = await startBroker({ runtimeDir: d, config: { rate_per_second: 100000, rate_burst: 100000, max_mounts_per_user: 1000 } });
    }
    // warm-up, one cycle per loop each
    for (const b of Object.values(brokers)) await runLoad('brokered', setup, caller, 1, b.socket);
    for (let round = 0; round < ROUNDS; round++) {
      let m0 = machineBusy();
      const plain = await runLoad('plain', setup, caller, C);
      if (plain.failures.length) console.error(`plain failures:\n${plain.failures.slice(0, 20).join('\n')}`);
      rows.push(line(`plain fuse2fs + fusermount3 (round ${round + 1})`, plain, machineBusy() - m0, `loops ${plain.loopCpu.toFixed(2)} s`));
      for (const [k, b] of Object.entries(brokers)) {
        const fds0 = fdCount(b.proc.pid!);
        const b0 = processCpu(b.proc.pid!);
        m0 = machineBusy();
        const r = await runLoad('brokered', setup, caller, C, b.socket);
        const cpu = machineBusy() - m0;
        const bcpu = processCpu(b.proc.pid!) - b0;
        await new Promise((res) => setTimeout(res, 1000));
        rows.push(line(`broker, runtime dir on ${k} (round ${round + 1})`, r, cpu, `broker+launchers+servers ${(bcpu / r.cycles * 1000).toFixed(1)} ms/cycle, clients ${(r.loopCpu / r.cycles * 1000).toFixed(1)} ms/cycle; left: ${caller.fuseMounts().length} mounts, ${instanceProcesses(b.runtimeDir).length} processes, broker fds ${fdCount(b.proc.pid!) - fds0 >= 0 ? '+' : ''}${fdCount(b.proc.pid!) - fds0}`));
        if (r.failures.length) console.error(`${k} failures:\n${r.failures.slice(0, 20).join('\n')}`);
      }
    }
  } finally {
    for (const b of Object.values(brokers)) await b.stop();
    await caller.close();
    for (const d of [...Object.values(runDirs), dir]) rmSync(d, { recursive: true, force: true });
  }
  console.log(`${U} uids x ${L} loops x ${C} cycles = ${U * L * C} cycles per row; CPU/cycle = busy time of the whole machine (all cores) / cycles`);
  console.log('| run | cycles/s | p50 | p99 | failed | CPU/cycle | detail |\n|---|---|---|---|---|---|---|');
  console.log(rows.join('\n'));
  void readdirSync;
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
