// sshfs without network (issue 11 §4): Debian's unmodified sshfs -o passive in the same sandbox
// as every server, speaking SFTP over a socketpair whose other end is the caller's own
// `--via COMMAND` (here a local sftp-server as uid 1000). Read back by checksum, a write lands
// in the remote directory, the server's network namespace holds lo only, and a transport that
// dies ends the mount and the instance with nothing left.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import path from 'node:path';
import { clientArgs, makeDir, newCaller, startBroker, tmpdir, waitFor, USER, type Broker, type Caller } from './lib/harness.js';
import { instanceTree, makeTree } from './lib/servers.js';

const SFTP_SERVER = '/usr/lib/openssh/sftp-server';
const test = suite('sshfs over a caller-served transport');
let dir: string;
let broker: Broker;
let caller: Caller;

test.before(async () => {
  dir = tmpdir();
  broker = await startBroker();
  caller = await newCaller();
});
test.after(async () => {
  await broker?.stop();
  await caller?.close();
  rmSync(dir, { recursive: true, force: true });
});

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
/** COMMAND for --via: the sftp-server records its pid (sh's $$ survives exec), stderr to a file. */
const via = (remote: string, pidFile: string) => `echo $$ > ${pidFile}; exec ${SFTP_SERVER} -d ${remote} 2>>${pidFile}.err`;
const pidOf = (pidFile: string) => Number(readFileSync(pidFile, 'utf8').trim());
const alive = (pid: number) => existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));

async function listJson(): Promise<{ id: number; state: string; source: string; fstype: string; exit_code: number | null }[]> {
  const r = await caller.run(clientArgs(broker.socket, '--json', 'list'));
  assert.is(r.exitCode, 0, r.stderr);
  return (JSON.parse(r.stdout) as { mounts: never[] }).mounts;
}

test('reads (checksum) and writes through the sandboxed sshfs; the write lands in the remote dir; no network but lo', async () => {
  const remote = makeDir(path.join(dir, 'remote'));
  const tree = await makeTree(remote);
  const work = makeDir(path.join(dir, 'work'));
  const mnt = makeDir(path.join(dir, 'mnt'));
  const pidFile = path.join(work, 'sftp.pid');
  const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', '-t', 'sshfs', '--via', via(remote, pidFile), 'alice@example.org:', mnt));
  assert.is(m.exitCode, 0, m.stderr);
  const reply = JSON.parse(m.stdout) as { id: number; server_pid: number };
  try {
    const sftp = pidOf(pidFile);
    assert.ok(alive(sftp), 'the --via command runs on after the client returned');
    assert.is(Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${sftp}/status`, 'utf8'))?.[1]), USER, 'COMMAND runs as the caller');
    // The mount table shows the caller's SOURCE; the server is sshfs.
    const line = caller.mountinfo().split('\n').find((l) => l.split(' ')[4] === mnt);
    assert.ok(line, caller.mountinfo());
    assert.match(line!, / - fuse\.sshfs alice@example\.org: .*user_id=1000/);
    // Read: every byte, by checksum (the server reads through SFTP, as uid 1000 remotely).
    const inside = path.join(mnt, 'tree', 'big.bin');
    const r = await caller.run(['sha256sum', inside]);
    assert.is(r.exitCode, 0, r.stderr);
    assert.is(r.stdout.split(' ')[0], sha(path.join(tree, 'big.bin')));
    const ls = await caller.run(['ls', path.join(mnt, 'tree', 'sub', 'deeper')]);
    assert.match(ls.stdout, /f0\.txt/);
    // Write: it lands in the remote directory, with the caller's ownership there.
    const w = await caller.run(['sh', '-c', `head -c 1048576 /dev/urandom > ${mnt}/new.bin && sha256sum ${mnt}/new.bin`]);
    assert.is(w.exitCode, 0, w.stderr);
    assert.is(sha(path.join(remote, 'new.bin')), w.stdout.split(' ')[0]);
    assert.is(Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${sftp}/status`, 'utf8'))?.[1]), USER);
    // The server: its own network namespace, holding only lo.
    const srv = reply.server_pid;
    assert.ok(readFileSync(`/proc/${srv}/cmdline`, 'utf8').startsWith('sshfs\0'), 'the server is sshfs');
    assert.is.not(readlinkSync(`/proc/${srv}/ns/net`), readlinkSync('/proc/self/ns/net'));
    const ifaces = readFileSync(`/proc/${srv}/net/dev`, 'utf8').split('\n').slice(2).filter(Boolean).map((l) => l.split(':')[0].trim());
    assert.equal(ifaces, ['lo']);
    // Its descriptors: stdin and stdout the transport socket, no other socket at all.
    const fd0 = readlinkSync(`/proc/${srv}/fd/0`);
    assert.match(fd0, /^socket:/);
    assert.is(readlinkSync(`/proc/${srv}/fd/1`), fd0);
    const sockets = new Set<string>();
    for (const f of ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) {
      try {
        const t = readlinkSync(`/proc/${srv}/fd/${f}`);
        if (t.startsWith('socket:')) sockets.add(t);
      } catch {
        /* not open */
      }
    }
    assert.equal([...sockets], [fd0]);
    const l = (await listJson()).find((x) => x.id === reply.id);
    assert.is(l?.fstype, 'sshfs');
    assert.is(l?.source, 'alice@example.org:');
    // unmount: the server exits, the COMMAND sees EOF and ends too.
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
    await waitFor('the sftp-server to see EOF and exit', () => !alive(sftp), 10000);
    assert.equal(instanceTree(broker.runtimeDir), []);
  } finally {
    await caller.run(clientArgs(broker.socket, 'unmount', mnt));
  }
});

test('a remote PATH after HOST: is the directory served; a transport that dies ends the mount and the instance', async () => {
  const remote = makeDir(path.join(dir, 'remote2'));
  makeDir(path.join(remote, 'sub'));
  await caller.run(['sh', '-c', `echo deep > ${remote}/sub/only-here`]);
  const work = makeDir(path.join(dir, 'work2'));
  const mnt = makeDir(path.join(dir, 'mnt2'));
  const pidFile = path.join(work, 'sftp.pid');
  const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', '-t', 'sshfs', '--via', via(remote, pidFile), `h:${remote}/sub`, mnt));
  assert.is(m.exitCode, 0, m.stderr);
  const id = (JSON.parse(m.stdout) as { id: number }).id;
  try {
    const r = await caller.run(['cat', path.join(mnt, 'only-here')]);
    assert.is(r.stdout.trim(), 'deep', r.stderr);
    assert.ok(instanceTree(broker.runtimeDir).length > 0);
    process.kill(pidOf(pidFile), 'SIGKILL');
    await waitFor('the mount to be detached', () => !caller.fuseMounts().includes(mnt), 15000);
    await waitFor('the instance to end', async () => (await listJson()).find((x) => x.id === id)?.state === 'exited', 15000);
    await waitFor('nothing of the instance left', () => instanceTree(broker.runtimeDir).length === 0, 10000);
    assert.match(broker.logs(), new RegExp(`instance ${id}: .* ended: .*mount detached`));
  } finally {
    await caller.run(clientArgs(broker.socket, 'unmount', mnt));
  }
});

test.run();
