// Load (issue 16): U uids x L concurrent loops x C cycles of mount -o ro + stat + unmount, each
// command a separate process, run as the uid in one caller mount namespace. Shared by
// bench/load.ts (plain against brokered, interleaved) and test/load.test.ts (brokered, bounded).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { NATIVE, makeDir, makeImage, type Caller } from './harness.js';

export const STATIC_CLIENT = path.join(NATIVE, 'fuse-svc-client');

// A loop in bash so that nothing but the measured commands forks: $EPOCHREALTIME and `times`
// are builtins. Each cycle prints "ok T0 T1" or "fail I STEP"; the last line is `times`.
const BROKERED = String.raw`
client=$1 sock=$2 img=$3 dir=$4 n=$5
for ((i=0;i<n;i++)); do
  t0=$EPOCHREALTIME; f=
  if ! "$client" --socket "$sock" mount -o ro "$img" "$dir" >/dev/null; then echo "fail $i mount"; continue; fi
  stat -c %i "$dir/lost+found" >/dev/null || f=stat
  "$client" --socket "$sock" unmount "$dir" >/dev/null || f="$f unmount"
  if [ -n "$f" ]; then echo "fail $i $f"; else echo "ok $t0 $EPOCHREALTIME"; fi
done
echo times; times
`;

// Plain: what an ordinary machine does (fuse2fs in the foreground, setuid fusermount3), and waits
// for the server to exit as the brokered unmount does. The mount is polled in /proc/self/mountinfo
// (read by a builtin) every 2 ms; read -t on a pipe that nobody writes is a sleep without a fork.
const PLAIN = String.raw`
img=$1 dir=$2 n=$3
exec {w}<> <(:)
for ((i=0;i<n;i++)); do
  t0=$EPOCHREALTIME; f=
  fuse2fs -f -o ro "$img" "$dir" 2>/dev/null & p=$!
  k=0
  until IFS= read -r -d '' mi < /proc/self/mountinfo; [[ "$mi" == *" $dir "* ]]; do
    if ((k++ > 5000)); then f=mount; break; fi
    read -t 0.002 -u $w
  done
  if [ -z "$f" ]; then
    stat -c %i "$dir/lost+found" >/dev/null || f=stat
    fusermount3 -u "$dir" || f="$f unmount"
  else
    kill $p 2>/dev/null
  fi
  wait $p
  if [ -n "$f" ]; then echo "fail $i $f"; else echo "ok $t0 $EPOCHREALTIME"; fi
done
echo times; times
`;

export type LoadResult = {
  kind: 'plain' | 'brokered';
  cycles: number;
  ok: number;
  failures: string[];
  wall: number;
  /** latencies of good cycles, ms, sorted */
  lat: number[];
  /** CPU seconds the loops' own processes used (client/stat or fuse2fs/fusermount3), from `times` */
  loopCpu: number;
};

export type LoadSetup = { uids: number[]; loops: number; dir: string; images: string[][]; mounts: string[][] };

/** One image (8 MiB ext4, owned by the uid, mode 0600) and one mount point per loop. */
export async function prepareLoad(dir: string, uids: number[], loops: number): Promise<LoadSetup> {
  const images: string[][] = [];
  const mounts: string[][] = [];
  for (const u of uids) {
    images.push(await Promise.all(Array.from({ length: loops }, (_, l) => makeImage(dir, `img-${u}-${l}.img`, 8, 'ext4', u))));
    mounts.push(Array.from({ length: loops }, (_, l) => makeDir(path.join(dir, `m-${u}-${l}`), u)));
  }
  return { uids, loops, dir, images, mounts };
}

function runLoop(caller: Caller, uid: number, script: string, args: string[], timeoutMs: number): Promise<{ out: string; err: string; code: number | null }> {
  const argv = ['-t', String(caller.pid), '-m', '--', 'setpriv', '--reuid', String(uid), '--regid', String(uid), '--clear-groups', '--', 'bash', '-c', script, 'load', ...args];
  return new Promise((resolve) => {
    const p = spawn('nsenter', argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/' } });
    let out = '';
    let err = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.once('close', (code) => {
      clearTimeout(t);
      resolve({ out, err, code });
    });
  });
}

/** `times`' second line: children's user and system time, as "XmY.YYYs XmY.YYYs". */
function parseTimes(line: string): number {
  let s = 0;
  for (const m of line.matchAll(/(\d+)m([\d.]+)s/g)) s += Number(m[1]) * 60 + Number(m[2]);
  return s;
}

/** Runs every loop at once and waits for all; failures carry the commands' own messages. */
export async function runLoad(kind: 'plain' | 'brokered', setup: LoadSetup, caller: Caller, cycles: number, socket = '', timeoutMs = 600000): Promise<LoadResult> {
  const t0 = performance.now();
  const jobs: Promise<{ out: string; err: string; code: number | null }>[] = [];
  setup.uids.forEach((u, ui) => {
    for (let l = 0; l < setup.loops; l++) {
      const img = setup.images[ui][l];
      const dir = setup.mounts[ui][l];
      jobs.push(kind === 'brokered' ? runLoop(caller, u, BROKERED, [STATIC_CLIENT, socket, img, dir, String(cycles)], timeoutMs) : runLoop(caller, u, PLAIN, [img, dir, String(cycles)], timeoutMs));
    }
  });
  const res = await Promise.all(jobs);
  const wall = (performance.now() - t0) / 1000;
  const lat: number[] = [];
  const failures: string[] = [];
  let loopCpu = 0;
  for (const r of res) {
    const lines = r.out.split('\n');
    for (const [i, line] of lines.entries()) {
      const f = line.split(' ');
      if (f[0] === 'ok') lat.push((Number(f[2]) - Number(f[1])) * 1000);
      else if (f[0] === 'fail') failures.push(line);
      else if (f[0] === 'times') loopCpu += parseTimes(lines[i + 2] ?? ''); // the children's line
    }
    if (r.code !== 0) failures.push(`loop exited ${r.code}`);
    // The commands' own messages (refusal codes) explain the failures.
    for (const l of r.err.split('\n')) if (l.trim()) failures.push(`  ${l.trim()}`);
  }
  lat.sort((a, b) => a - b);
  return { kind, cycles: setup.uids.length * setup.loops * cycles, ok: lat.length, failures, wall, lat, loopCpu };
}

export function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/** utime+stime+cutime+cstime of a process, in seconds: the broker reaps its launchers, and each
 * launcher reaps its server, so this is broker + launchers + sandbox set-up + servers. */
export function processCpu(pid: number): number {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  // fields 14-17 (utime stime cutime cstime) are at 11-14 after the state field (3)
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / 100;
}

/** Busy CPU seconds of the whole machine (all cores) from /proc/stat. */
export function machineBusy(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3] + f[4];
  return (f.slice(0, 8).reduce((a, b) => a + b, 0) - idle) / 100;
}
