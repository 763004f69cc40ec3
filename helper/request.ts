#!/usr/bin/env node
// fuse-svc-request: ask fuse-svcd to mount, unmount or list, from any unprivileged process.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { BrokerClient, ClientError, DEFAULT_SOCKET, type MountInfo } from './client.js';
import { RequestError } from '../supervisor/protocol.js';

type Common = { socket?: string; json: boolean; timeout: number };

function client(a: Common): BrokerClient {
  return new BrokerClient({ socket: a.socket, timeoutMs: a.timeout * 1000 });
}

function print(a: Common, human: string, obj: unknown): void {
  process.stdout.write(a.json ? JSON.stringify(obj) + '\n' : human + '\n');
}

function table(ms: MountInfo[]): string {
  const rows = [['ID', 'STATE', 'TYPE', 'OPTS', 'SOURCE', 'TARGET', 'UID', 'SANDBOX', 'EXIT']];
  for (const m of ms) {
    const exit = m.state === 'exited' ? (m.exit_signal ? `signal ${m.exit_signal}` : `status ${m.exit_code ?? '?'}`) : '';
    rows.push([String(m.id), m.state, m.fstype, m.options, m.source, m.target, String(m.owner_uid), String(m.uid), exit]);
  }
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(w[i])).join('  ').trimEnd()).join('\n');
}

async function main(): Promise<void> {
  await yargs(hideBin(process.argv))
    .scriptName('fuse-svc-request')
    .usage(
      'fuse-svc-request - mount filesystem images through fuse-svcd, without privileges\n\n' +
        'The image and the mount point are opened here, with your own rights, and passed to the\n' +
        'broker as descriptors; the mount appears in your own mount namespace. You need neither\n' +
        'CAP_SYS_ADMIN nor /dev/fuse, only access to the broker socket.',
    )
    .option('socket', { type: 'string', describe: `broker socket (default $FUSE_SVC_SOCKET or ${DEFAULT_SOCKET})` })
    .option('json', { type: 'boolean', default: false, describe: 'print the broker reply as JSON' })
    .option('timeout', { type: 'number', default: 60, describe: 'seconds to wait for the broker' })
    .command(
      'mount SOURCE TARGET',
      'mount the image SOURCE on the directory TARGET',
      (y) =>
        y
          .positional('SOURCE', { type: 'string', demandOption: true, describe: 'image file or block device (opened read-write for rw)' })
          .positional('TARGET', { type: 'string', demandOption: true, describe: 'empty directory you may write to; never a symlink' })
          .option('t', { alias: 'type', type: 'string', default: 'ext4', describe: 'filesystem type (ext2, ext3, ext4)' })
          .option('o', { alias: 'options', type: 'string', default: 'rw', describe: 'comma-separated: ro or rw, plus server options (e.g. norecovery)' }),
      async (a) => {
        const r = await client(a).mount(a.SOURCE as string, a.TARGET as string, { fstype: a.t, options: a.o });
        print(a, `mounted ${a.TARGET} (id ${r.id})`, r);
      },
    )
    .command(
      'unmount [TARGET]',
      'unmount a broker mount you own (by mount point or --id); waits for the server to exit',
      (y) =>
        y
          .positional('TARGET', { type: 'string', describe: 'the mount point' })
          .option('id', { type: 'number', describe: 'the mount id shown by mount and list' })
          .option('wait', { type: 'number', describe: 'seconds the server gets to exit before it is terminated (default 10)' })
          .check((a) => {
            if ((a.TARGET === undefined) === (a.id === undefined)) throw new Error('give either TARGET or --id');
            return true;
          }),
      async (a) => {
        const r = await client(a).unmount(a.id !== undefined ? { id: a.id } : (a.TARGET as string), { timeoutMs: a.wait === undefined ? undefined : a.wait * 1000 });
        print(a, `unmounted ${a.TARGET ?? `id ${a.id}`} (id ${r.id})`, r);
      },
    )
    .command('list', 'list your mounts (root: all), including ones that ended since the last list', {}, async (argv) => {
      const a = argv as unknown as Common;
      const ms = await client(a).list();
      print(a, ms.length ? table(ms) : 'no mounts', { mounts: ms });
    })
    .alias('umount', 'unmount')
    .demandCommand(1, 'give a command: mount, unmount or list')
    .epilogue(
      'Exit status: 0 done; 1 a local error (cannot open a file, cannot reach the broker);\n2 the broker refused (the error code and reason are printed, see docs/protocol.md); 64 usage.\n\n' +
        'Examples:\n  fuse-svc-request mount -t ext4 -o rw ./disk.img ./mnt\n  fuse-svc-request list\n  fuse-svc-request unmount ./mnt',
    )
    .strict()
    .wrap(Math.min(100, process.stdout.columns || 100))
    .fail((msg, err) => {
      if (err) throw err;
      process.stderr.write(`fuse-svc-request: ${msg}\nTry fuse-svc-request --help.\n`);
      process.exit(64);
    })
    .help()
    .version()
    .parseAsync();
}

main().catch((e) => {
  if (e instanceof RequestError) {
    process.stderr.write(`fuse-svc-request: ${e.code}: ${e.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`fuse-svc-request: ${e instanceof ClientError ? e.message : (e as Error).message}\n`);
  process.exit(1);
});
