// Benchmark per shipped server (issue 11): mount + stat + unmount through the broker against the
// same server unsandboxed (foreground, stat, fusermount -u, wait for it to exit), interleaved in
// one run; and a sequential read of one 64 MiB file through both.
// Run as root in a private mount namespace:
//   unshare -m --propagation private node dist/bench/servers.js
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { BrokerClient } from '../helper/client.js';
import { startBroker } from '../test/lib/harness.js';
import * as sock from '../helper/native/socket.js';

const N = Number(process.env.BENCH_RUNS ?? 15);
const MiB = 64;
const now = () => Number(process.hrtime.bigint()) / 1e6;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const mounted = (dir: string) => readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${dir} `);
async function until(f: () => boolean, ms = 15000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('timeout');
    await new Promise((r) => setTimeout(r, 1));
  }
}

type Server = { fstype: string; make: (src: string, img: string) => Promise<void>; plain: (img: string, dir: string) => string[] };
const SERVERS: Server[] = [
  { fstype: 'squashfs', make: async (s, i) => void (await execa('mksquashfs', [s, i, '-noappend', '-quiet', '-no-progress'])), plain: (i, d) => ['squashfuse', '-f', i, d] },
  { fstype: 'iso9660', make: async (s, i) => void (await execa('genisoimage', ['-quiet', '-R', '-J', '-o', i, s])), plain: (i, d) => ['fuseiso', '-n', i, d, '-f'] },
  { fstype: 'zip', make: async (s, i) => void (await execa('sh', ['-c', `cd "${s}" && zip -q0r "${i}" .`])), plain: (i, d) => ['fuse-zip', '-f', '-r', i, d] },
  { fstype: 'archive', make: async (s, i) => void (await execa('tar', ['-cf', i, '-C', s, '.'])), plain: (i, d) => ['archivemount', i, d, '-f', '-o', 'readonly'] },
  {
    fstype: 'vfat',
    make: async (s, i) => {
      await execa('mkfs.vfat', ['-C', i, String(96 * 1024)]);
      await execa('mcopy', ['-i', i, path.join(s, 'FILE'), path.join(s, 'BIG.BIN'), '::/']);
    },
    plain: (i, d) => ['fusefat', '-f', '-o', 'ro', i, d],
  },
];

async function plainCycle(argv: string[], dir: string): Promise<number> {
  const t0 = now();
  const child = spawn(argv[0], argv.slice(1), { stdio: 'ignore' });
  const exited = new Promise((r) => child.once('exit', r));
  await until(() => mounted(dir)).catch((e) => {
    child.kill('SIGKILL');
    throw new Error(`${argv.join(' ')}: not mounted: ${(e as Error).message}`);
  });
  statSync(path.join(dir, 'FILE'));
  await execa('fusermount', ['-u', dir]);
  await exited;
  return now() - t0;
}

async function brokerCycle(c: BrokerClient, fstype: string, img: string, dir: string): Promise<number> {
  const t0 = now();
  await c.mount(img, dir, { fstype, options: 'ro' });
  statSync(path.join(dir, 'FILE'));
  await c.unmount(dir);
  return now() - t0;
}

// sshfs has no image: both sides speak SFTP to a local sftp-server over a socketpair (the
// plain sshfs -o passive on its stdio, the brokered one through mountTransport, --via's path).
const SFTP = ['/usr/lib/openssh/sftp-server', '-d'];
function sftpServer(remote: string): { end: number; exited: Promise<unknown> } {
  const [a, b] = sock.socketpairStream();
  const child = spawn(SFTP[0], [SFTP[1], remote], { stdio: [a, a, 'ignore'] });
  sock.close(a);
  return { end: b, exited: new Promise((r) => child.once('exit', r)) };
}

async function plainSshfs(remote: string, dir: string, during?: () => Promise<void>): Promise<number> {
  const t0 = now();
  const sftp = sftpServer(remote);
  const child = spawn('sshfs', ['-f', '-o', 'passive', 'x:', dir], { stdio: [sftp.end, sftp.end, 'ignore'] });
  sock.close(sftp.end);
  const exited = new Promise((r) => child.once('exit', r));
  await until(() => mounted(dir));
  statSync(path.join(dir, 'FILE'));
  await during?.();
  await execa('fusermount', ['-u', dir]);
  await Promise.all([exited, sftp.exited]);
  return now() - t0;
}

async function brokerSshfs(c: BrokerClient, remote: string, dir: string, during?: () => Promise<void>): Promise<number> {
  const t0 = now();
  const sftp = sftpServer(remote);
  try {
    await c.mountTransport(sftp.end, ':', dir);
  } finally {
    sock.close(sftp.end);
  }
  statSync(path.join(dir, 'FILE'));
  await during?.();
  await c.unmount(dir);
  await sftp.exited;
  return now() - t0;
}

async function sshfsRow(c: BrokerClient, remote: string, mnt: string): Promise<string> {
  const plain: number[] = [];
  const brokered: number[] = [];
  for (let i = 0; i < 2; i++) {
    await plainSshfs(remote, mnt);
    await brokerSshfs(c, remote, mnt);
  }
  for (let i = 0; i < N; i++) {
    plain.push(await plainSshfs(remote, mnt));
    brokered.push(await brokerSshfs(c, remote, mnt));
  }
  let plainRead = NaN;
  let brokerRead = NaN;
  await plainSshfs(remote, mnt, async () => void (plainRead = await readRate(mnt)));
  await brokerSshfs(c, remote, mnt, async () => void (brokerRead = await readRate(mnt)));
  const [mp, mb] = [median(plain), median(brokered)];
  return `| sshfs (SFTP to a local sftp-server over a socketpair) | sshfs -o passive | ${mp.toFixed(2)} ms | ${mb.toFixed(2)} ms | ${(mb / mp).toFixed(2)}x | ${plainRead.toFixed(0)} MB/s | ${brokerRead.toFixed(0)} MB/s |`;
}

async function readRate(dir: string): Promise<number> {
  const r = await execa('dd', [`if=${path.join(dir, 'BIG.BIN')}`, 'of=/dev/null', 'bs=1M']);
  const m = /,\s*([\d.]+) s,/.exec(r.stderr);
  return m ? (MiB * 1.048576) / Number(m[1]) : NaN;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('run as root');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fuse-svc-bench-servers-'));
  chmodSync(dir, 0o755);
  const src = path.join(dir, 'src');
  mkdirSync(src);
  writeFileSync(path.join(src, 'FILE'), 'x');
  writeFileSync(path.join(src, 'BIG.BIN'), randomBytes(MiB << 20));
  const mnt = path.join(dir, 'mnt');
  mkdirSync(mnt);
  const broker = await startBroker({ config: { rate_per_second: 100000, rate_burst: 100000 } });
  const client = new BrokerClient({ socket: broker.socket });
  const rows: string[] = [];
  try {
    // BENCH_SERVERS=sshfs,zip: only those rows.
    const only = process.env.BENCH_SERVERS?.split(',');
    for (const s of SERVERS.filter((x) => !only || only.includes(x.fstype))) {
      process.stderr.write(`bench: ${s.fstype}\n`);
      const img = path.join(dir, `img.${s.fstype}`);
      await s.make(src, img);
      const plain: number[] = [];
      const brokered: number[] = [];
      for (let i = 0; i < 2; i++) {
        await plainCycle(s.plain(img, mnt), mnt);
        await brokerCycle(client, s.fstype, img, mnt);
      }
      for (let i = 0; i < N; i++) {
        plain.push(await plainCycle(s.plain(img, mnt), mnt));
        brokered.push(await brokerCycle(client, s.fstype, img, mnt));
      }
      const argv = s.plain(img, mnt);
      const child = spawn(argv[0], argv.slice(1), { stdio: 'ignore' });
      const exited = new Promise((r) => child.once('exit', r));
      await until(() => mounted(mnt));
      const plainRead = await readRate(mnt);
      await execa('fusermount', ['-u', mnt]);
      await exited;
      await client.mount(img, mnt, { fstype: s.fstype, options: 'ro' });
      const brokerRead = await readRate(mnt);
      await client.unmount(mnt);
      const [mp, mb] = [median(plain), median(brokered)];
      rows.push(`| ${s.fstype} | ${argv[0]} | ${mp.toFixed(2)} ms | ${mb.toFixed(2)} ms | ${(mb / mp).toFixed(2)}x | ${plainRead.toFixed(0)} MB/s | ${brokerRead.toFixed(0)} MB/s |`);
    }
    if (!only || only.includes('sshfs')) {
      process.stderr.write('bench: sshfs\n');
      rows.push(await sshfsRow(client, src, mnt));
    }
    process.stdout.write(
      [
        `runs: ${N} interleaved cycles per server (mount, stat a file, unmount, server exited), ${os.cpus().length} cores, Linux ${os.release()}`,
        '| type | server | plain: foreground + stat + fusermount -u + wait (median) | brokered, sandboxed (median) | ratio | sequential read 64 MiB, plain | brokered |',
        '|---|---|---|---|---|---|---|',
        ...rows,
      ].join('\n') + '\n',
    );
  } finally {
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`bench: ${(e as Error).stack}\n`);
  process.exit(1);
});
