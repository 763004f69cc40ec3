// Benchmark for upstream sockets (issue 13 §2): one ext4 image, served by the same broker
// (fuse2fs in its sandbox) through two doors, interleaved in one run:
//   upstream:  the helper side of libfuse's contained-service protocol (test/native/service-client.c,
//              as fuservicemount3 does it) on BROKER's upstream socket UPSTREAM_DIR/ext4
//   broker:    fuse-svc-request mount / unmount on the broker socket
// Measured per cycle (root, private mount namespace): mount (command start -> it exited with the
// mount in place), then stat of the root, then unmount until the instance has ended (server
// exited: umount(8) + the launcher gone for upstream; `unmount` answers only then for broker).
// Usage: unshare -m --propagation private node dist/bench/upstream.js [--n 20] [--write-doc]
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { CLIENT, ROOT, instanceProcesses, makeDir, makeImage, sleep, startBroker, tmpdir } from '../test/lib/harness.js';
import { SERVICE_CLIENT } from '../test/lib/upstream.js';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const p90 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.9))];
const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

async function untilNoInstance(runtimeDir: string): Promise<void> {
  const end = Date.now() + 20000;
  while (instanceProcesses(runtimeDir).length) {
    if (Date.now() > end) throw new Error('the instance did not end within 20 s');
    await sleep(1);
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('run as root');
  const n = arg('n', 20);
  const dir = tmpdir('fuse-svc-bench-upstream-');
  const fsDir = path.join(dir, 'fs');
  const broker = await startBroker({ args: ['--upstream-sockets'], config: { upstream_socket_dir: fsDir, fstypes: ['ext4'], rate_per_second: 100000, rate_burst: 100000 } });
  try {
    const img = await makeImage(dir, 'disk.img', 64, 'ext4', 0);
    const mnt = makeDir(path.join(dir, 'mnt'), 0);
    const sockPath = path.join(fsDir, 'ext4');
    const t = { upstream: { mount: [] as number[], cycle: [] as number[] }, broker: { mount: [] as number[], cycle: [] as number[] } };
    const upstream = async () => {
      const t0 = process.hrtime.bigint();
      const r = await execa(SERVICE_CLIENT, ['--just-mount', sockPath, 'ext4', img, mnt], { reject: false, timeout: 60000 });
      if (r.exitCode !== 0) throw new Error(`upstream mount: ${r.stderr}`);
      const m = ms(t0);
      statSync(mnt);
      await execa('umount', [mnt], { timeout: 30000 });
      await untilNoInstance(broker.runtimeDir);
      return [m, ms(t0)];
    };
    const viaBroker = async () => {
      const t0 = process.hrtime.bigint();
      const r = await execa(CLIENT, ['--socket', broker.socket, 'mount', '-t', 'ext4', img, mnt], { reject: false, timeout: 60000 });
      if (r.exitCode !== 0) throw new Error(`broker mount: ${r.stderr}`);
      const m = ms(t0);
      statSync(mnt);
      await execa(CLIENT, ['--socket', broker.socket, 'unmount', mnt], { timeout: 30000 });
      await untilNoInstance(broker.runtimeDir);
      return [m, ms(t0)];
    };
    for (let i = 0; i < 3; i++) {
      await upstream();
      await viaBroker();
    }
    for (let i = 0; i < n; i++) {
      const [um, uc] = await upstream();
      t.upstream.mount.push(um);
      t.upstream.cycle.push(uc);
      const [bm, bc] = await viaBroker();
      t.broker.mount.push(bm);
      t.broker.cycle.push(bc);
    }
    const fix = (xs: number[]) => ({ median: +median(xs).toFixed(1), p90: +p90(xs).toFixed(1) });
    const load = os.loadavg()[0].toFixed(2);
    const result = { host: `${os.cpus().length} cpus, ${os.release()}, load ${load} at the end`, n, upstream: { mount: fix(t.upstream.mount), cycle: fix(t.upstream.cycle) }, broker: { mount: fix(t.broker.mount), cycle: fix(t.broker.cycle) } };
    process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    if (process.argv.includes('--write-doc')) writeDoc(result);
  } finally {
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

type Stat = { median: number; p90: number };
type Result = { host: string; n: number; upstream: { mount: Stat; cycle: Stat }; broker: { mount: Stat; cycle: Stat } };

/** Replaces (or appends) the "## Upstream sockets" section of docs/performance.md. */
function writeDoc(r: Result): void {
  const file = path.join(ROOT, 'docs', 'performance.md');
  const cur = existsSync(file) ? readFileSync(file, 'utf8') : '# Performance\n';
  const section = `## Upstream sockets

The same broker serving one 64 MiB ext4 image (fuse2fs in its sandbox, pooled launcher) through
libfuse's contained-service protocol on its upstream socket (test/native/service-client.c as
fuservicemount3) and through its own socket (fuse-svc-request), interleaved. Measured by
\`npm run bench:upstream -- --n ${r.n} --write-doc\` (as root; ${r.host}; ${new Date().toISOString().slice(0, 10)}).

| median (p90) of ${r.n} | upstream socket | broker socket |
|---|---|---|
| mount: command start -> exited with the mount in place | ${r.upstream.mount.median} ms (${r.upstream.mount.p90}) | ${r.broker.mount.median} ms (${r.broker.mount.p90}) |
| cycle: mount, stat, unmount until the server has exited | ${r.upstream.cycle.median} ms (${r.upstream.cycle.p90}) | ${r.broker.cycle.median} ms (${r.broker.cycle.p90}) |

The upstream door has more round trips (HELLO, argv, fusedev, OPEN, six mount steps, BYEE) and
the launcher looks the helper's mount up in the caller's mount table (one child entering the
namespace, then the ready checker finds it again by id); the broker door sends one request. Both
share the rest: policy, a pooled launcher, the sandbox, fuse2fs. The machine was shared with
other sessions' test runs (load above): figures vary by some milliseconds between runs.
`;
  const re = /## Upstream sockets\n[\s\S]*?(?=\n## |$)/;
  const next = re.test(cur) ? cur.replace(re, section.trimEnd() + '\n') : `${cur.trimEnd()}\n\n${section}`;
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, next);
}

main().catch((e) => {
  process.stderr.write(`bench/upstream: ${(e as Error).message}\n`);
  process.exit(1);
});
