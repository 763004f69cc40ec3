// CPU of one brokered mount cycle, for comparing two builds on the same machine:
//   node dist/bench/cpu-compare.js [--build DIR] [--cycles N]
// DIR is a built checkout (default: this one); its own harness starts its own broker, and the
// in-process client of that build mounts and unmounts N times. Printed per cycle: the broker's
// CPU (all threads' se.sum_exec_runtime, exact), its user/system split (/proc stat ticks), and the
// reaped children's (launchers, which reap their servers) cutime+cstime, and the broker's minor
// page faults (a fork of its address space shows there). Run as root, in a
// private mount namespace: `unshare -m --propagation private node dist/bench/cpu-compare.js`.
import { mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}
const here = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const build = path.resolve(arg('build', here));
const N = Number(arg('cycles', '60'));

const schedMs = (pid: number) =>
  readdirSync(`/proc/${pid}/task`).reduce((a, t) => a + Number(/se\.sum_exec_runtime\s*:\s*([\d.]+)/.exec(readFileSync(`/proc/${pid}/task/${t}/sched`, 'utf8'))?.[1] ?? 0), 0);
const statMs = (pid: number) => {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return { minflt: Number(f[7]), user: Number(f[11]) * 10, sys: Number(f[12]) * 10, children: (Number(f[13]) + Number(f[14])) * 10 };
};

async function main(): Promise<void> {
  const { startBroker, makeImage, tmpdir } = await import(path.join(build, 'dist/test/lib/harness.js'));
  const { BrokerClient } = await import(path.join(build, 'dist/helper/client.js'));
  const dir: string = tmpdir('fuse-svc-cpu-');
  const b = await startBroker({ config: { rate_per_second: 100000, rate_burst: 100000 } });
  try {
    const img: string = await makeImage(dir, 'd.img', 16);
    const mnt = path.join(dir, 'm');
    mkdirSync(mnt);
    const c = new BrokerClient({ socket: b.socket });
    const cycle = async () => {
      await c.mount(img, mnt, { options: 'rw' });
      await c.unmount(mnt);
    };
    for (let i = 0; i < 5; i++) await cycle(); // warm-up (pool, JIT)
    await new Promise((r) => setTimeout(r, 500));
    const pid: number = b.proc.pid;
    const s0 = schedMs(pid), t0 = statMs(pid), w0 = performance.now();
    for (let i = 0; i < N; i++) await cycle();
    const w1 = performance.now();
    await new Promise((r) => setTimeout(r, 1000)); // the last launcher reaped
    const s1 = schedMs(pid), t1 = statMs(pid);
    const per = (x: number) => (x / N).toFixed(2);
    console.log(`${build}: ${N} cycles; per cycle: broker ${per(s1 - s0)} ms CPU (user ${per(t1.user - t0.user)}, sys ${per(t1.sys - t0.sys)}, ${per(t1.minflt - t0.minflt)} minor faults), launchers+servers ${per(t1.children - t0.children)} ms, wall ${((w1 - w0) / N).toFixed(1)} ms`);
  } finally {
    await b.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
