// Benchmark for socket-activated units (issue 3), in one run against the same test server:
//   fuse-svc:  fuse-svcd --units DIR   (service_ll units: the full sandbox of every directive)
//   baseline:  systemd-socket-activate --accept --seqpacket -l SOCKET service-server (no sandbox)
// Measured:
//   latency     connect -> the instance answered HELLO (LAST received): connection to a running
//               instance speaking the protocol. Sequential, median and p90 of --n.
//   instances/s --c concurrent full cycles (service-client: connect, HELLO, argv + /dev/fuse,
//               OPEN, mount, stat + read a file, detach), wall time of the batch.
// Usage: node dist/bench/units.js [--n 40] [--c 50] [--write-doc]   (root; prints JSON)
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import * as sock from '../helper/native/socket.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const NATIVE = path.join(ROOT, 'build', 'Release');
const SERVER = path.join(NATIVE, 'service-server');
const CLIENT = path.join(NATIVE, 'service-client');

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const p90 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.9))];

async function waitSocket(p: string, proc: ChildProcess, ms = 15000): Promise<void> {
  const end = Date.now() + ms;
  while (!existsSync(p)) {
    if (proc.exitCode !== null) throw new Error(`${p}: the activator exited (${proc.exitCode})`);
    if (Date.now() > end) throw new Error(`${p}: not listening after ${ms} ms`);
    await sleep(20);
  }
}

/** connect + HELLO + LAST, blocking (the activators are other processes). ms. */
function helloLatency(socket: string): number {
  const t0 = process.hrtime.bigint();
  const fd = sock.connectSeqpacket(socket);
  try {
    const hello = Buffer.alloc(12);
    hello.writeUInt32BE(0x53414654, 0);
    hello.writeUInt16BE(1, 4);
    hello.writeUInt16BE(1, 6);
    sock.send(fd, hello, []);
    const r = sock.recv(fd, 64, 0);
    if (!r || r.data.length !== 8 || r.data.readUInt32BE(0) !== 0x4c415354) throw new Error('no LAST reply');
    return Number(process.hrtime.bigint() - t0) / 1e6;
  } finally {
    sock.close(fd);
  }
}

async function batch(socket: string, dir: string, c: number, tag: string): Promise<{ seconds: number; ok: number }> {
  const src = path.join(dir, 'source.txt');
  writeFileSync(src, 'bench\n');
  const mps = Array.from({ length: c }, (_, i) => {
    const mp = path.join(dir, `${tag}-mnt${i}`);
    mkdirSync(mp, { recursive: true });
    return mp;
  });
  const t0 = process.hrtime.bigint();
  const rs = await Promise.all(mps.map((mp) => execa('unshare', ['--mount', '--propagation', 'private', '--', CLIENT, socket, 'service_ll', src, mp], { reject: false, timeout: 120000 })));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { seconds, ok: rs.filter((r) => r.exitCode === 0).length };
}

async function main(): Promise<void> {
  const n = arg('n', 40);
  const c = arg('c', 50);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fuse-svc-bench-units-'));
  const procs: ChildProcess[] = [];
  try {
    // fuse-svcd with our copies of upstream's units
    const unitDir = path.join(dir, 'units');
    mkdirSync(unitDir);
    const fsSock = path.join(dir, 'fs', 'service_ll');
    writeFileSync(path.join(unitDir, 'service_ll.socket'), readFileSync(path.join(ROOT, 'test/fixtures/units/service_ll.socket'), 'utf8').replace(/^ListenSequentialPacket=.*$/m, `ListenSequentialPacket=${fsSock}`));
    writeFileSync(path.join(unitDir, 'service_ll@.service'), readFileSync(path.join(ROOT, 'test/fixtures/units/service_ll@.service'), 'utf8').replace(/^ExecStart=.*$/m, `ExecStart=${SERVER}`));
    const daemon = spawn(process.execPath, [path.join(ROOT, 'dist/supervisor/main.js'), 'run', '--runtime-dir', path.join(dir, 'run'), '--units', unitDir], { stdio: ['ignore', 'ignore', 'ignore'] });
    procs.push(daemon);
    // the baseline: systemd's own activator, no sandbox
    const ssaSock = path.join(dir, 'ssa.sock');
    const ssa = spawn('systemd-socket-activate', ['--accept', '--seqpacket', '-l', ssaSock, SERVER], { stdio: ['ignore', 'ignore', 'ignore'] });
    procs.push(ssa);
    await waitSocket(fsSock, daemon);
    await waitSocket(ssaSock, ssa);
    const version = (await execa('systemd-socket-activate', ['--version'], { reject: false })).stdout.split('\n')[0];

    // warm up, then interleave the two so drift hits both alike
    for (let i = 0; i < 3; i++) {
      helloLatency(fsSock);
      helloLatency(ssaSock);
    }
    const lat = { fuseSvc: [] as number[], baseline: [] as number[] };
    for (let i = 0; i < n; i++) {
      lat.fuseSvc.push(helloLatency(fsSock));
      await sleep(5);
      lat.baseline.push(helloLatency(ssaSock));
      await sleep(5);
    }
    await sleep(500);
    const bFs = await batch(fsSock, dir, c, 'fs');
    await sleep(500);
    const bSsa = await batch(ssaSock, dir, c, 'ssa');
    const result = {
      host: `${os.cpus().length} cpus, ${os.release()}`,
      baseline: version,
      n,
      c,
      latencyMs: {
        fuseSvc: { median: +median(lat.fuseSvc).toFixed(2), p90: +p90(lat.fuseSvc).toFixed(2) },
        baseline: { median: +median(lat.baseline).toFixed(2), p90: +p90(lat.baseline).toFixed(2) },
        ratio: +(median(lat.fuseSvc) / median(lat.baseline)).toFixed(2),
      },
      instancesPerSecond: {
        fuseSvc: +(bFs.ok / bFs.seconds).toFixed(1),
        baseline: +(bSsa.ok / bSsa.seconds).toFixed(1),
        ratio: +((bFs.ok / bFs.seconds) / (bSsa.ok / bSsa.seconds)).toFixed(2),
        ok: { fuseSvc: bFs.ok, baseline: bSsa.ok },
      },
    };
    process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    if (process.argv.includes('--write-doc')) writeDoc(result);
  } finally {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    await sleep(1000);
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

type Result = { host: string; baseline: string; n: number; c: number; latencyMs: { fuseSvc: { median: number; p90: number }; baseline: { median: number; p90: number }; ratio: number }; instancesPerSecond: { fuseSvc: number; baseline: number; ratio: number; ok: { fuseSvc: number; baseline: number } } };

/** Replaces (or appends) the "## Units" section of docs/performance.md. */
function writeDoc(r: Result): void {
  const file = path.join(ROOT, 'docs', 'performance.md');
  const cur = existsSync(file) ? readFileSync(file, 'utf8') : '# Performance\n';
  const section = `## Units

Socket-activated units (docs/units.md), measured by \`node dist/bench/units.js --n ${r.n} --c ${r.c} --write-doc\`
(as root; ${r.host}; ${new Date().toISOString().slice(0, 10)}). Both activators start the same test server
(test/native/service-server.c) per connection: fuse-svcd with our copies of upstream's
\`service_ll.socket\` + \`service_ll@.service\` (every sandbox directive enforced: user/mnt/pid/net/ipc/uts/
cgroup namespaces, pivot_root into a minimal read-only root, dynamic uid, seccomp, no capabilities),
and \`systemd-socket-activate --accept --seqpacket\` (${r.baseline}) without any sandbox.

| | fuse-svcd --units | systemd-socket-activate (no sandbox) | ratio |
|---|---|---|---|
| connection -> running instance answers HELLO, median (p90) of ${r.n} | ${r.latencyMs.fuseSvc.median} ms (${r.latencyMs.fuseSvc.p90}) | ${r.latencyMs.baseline.median} ms (${r.latencyMs.baseline.p90}) | ${r.latencyMs.ratio}x |
| instances/s, ${r.c} concurrent full cycles (HELLO, argv + /dev/fuse, OPEN, mount, stat + read, detach) | ${r.instancesPerSecond.fuseSvc} | ${r.instancesPerSecond.baseline} | ${r.instancesPerSecond.ratio} |

The latency difference is the sandbox (clone into 7 namespaces, uid map, building and pivoting
into the root, ~390 seccomp rules compiled by libseccomp per instance) plus the launcher's exec
and fuse-svcd's accept loop in Node; the baseline only forks and execs.
`;
  const re = /## Units\n[\s\S]*?(?=\n## |$)/;
  const next = re.test(cur) ? cur.replace(re, section.trimEnd() + '\n') : `${cur.trimEnd()}\n\n${section}`;
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, next);
}

main().catch((e) => {
  process.stderr.write(`bench/units: ${(e as Error).message}\n`);
  process.exit(1);
});
