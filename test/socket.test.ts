/**
 * Tests of the socket addon (helper/native/socket.c) through its typed wrapper.
 * Needs root for the pid-namespace cases (unshare -p); every wait has a timeout.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync } from 'node:child_process';
import {
  closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync,
  writeFileSync, writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sock from '../helper/native/socket.js';

const { constants } = sock;
const dir = mkdtempSync(join(tmpdir(), 'fuse-svc-socket-test-'));
let serial = 0;
const sockPath = (): string => join(dir, `s${serial++}.sock`);

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

function fdinfoField(fd: number, field: string, procPid: number | 'self' = 'self'): string | undefined {
  const line = readFileSync(`/proc/${procPid}/fdinfo/${fd}`, 'utf8').split('\n').find((l) => l.startsWith(`${field}:`));
  return line?.slice(field.length + 1).trim();
}

/** A real pipe: a FIFO opened once for reading (non-blocking) and once for writing, then unlinked. */
function makePipe(): { r: number; w: number } {
  const fifo = join(dir, `fifo${serial++}`);
  const made = spawnSync('mkfifo', ['-m', '600', fifo]);
  assert.is(made.status, 0, 'mkfifo');
  const r = sock.openat(constants.AT_FDCWD, fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  const w = sock.openat(constants.AT_FDCWD, fifo, constants.O_WRONLY);
  rmSync(fifo);
  return { r, w };
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves on the first readable callback (the watcher is stopped), rejects after `ms`. */
function readable(fd: number, ms: number, what: string): Promise<number> {
  let watcher: sock.Watcher | undefined;
  const p = new Promise<number>((resolve, reject) => {
    watcher = sock.poll(fd, 'readable', (err, events) => {
      watcher?.stop();
      if (err) reject(err);
      else resolve(events);
    });
  });
  return withTimeout(p, ms, what).finally(() => watcher?.stop());
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A listening socket and one accepted connection (server side non-blocking). */
function connectedPair(): { lfd: number; client: number; server: sock.Peer; path: string } {
  const path = sockPath();
  const lfd = sock.listenSeqpacket(path, 8);
  const client = sock.connectSeqpacket(path);
  const server = sock.accept(lfd, true);
  assert.ok(server, 'a connection is waiting');
  return { lfd, client, server, path };
}

function closePair(p: { lfd: number; client: number; server: sock.Peer }): void {
  for (const fd of [p.lfd, p.client, p.server.fd]) sock.close(fd);
  if (p.server.pidfd >= 0) sock.close(p.server.pidfd);
}

test('listenSeqpacket: 0600 socket file even with umask 0; umask restored', () => {
  const path = sockPath();
  const old = process.umask(0);
  try {
    const lfd = sock.listenSeqpacket(path, 4);
    assert.is(process.umask(), 0, 'umask restored to what it was');
    assert.is(statSync(path).mode & 0o777, 0o600);
    assert.ok(statSync(path).isSocket());
    const info = sock.fdInfo(lfd);
    assert.is(info.type, 'sock');
    assert.ok(info.cloexec);
    assert.ok(info.flags & constants.O_NONBLOCK, 'listening socket is non-blocking');
    assert.is(sock.accept(lfd, true), null, 'nothing to accept');
    sock.close(lfd);
  } finally {
    process.umask(old);
  }
});

test('listen errors: ENAMETOOLONG, EADDRINUSE, error shape', () => {
  const long = join(dir, 'x'.repeat(120));
  try {
    sock.listenSeqpacket(long, 4);
    assert.unreachable('long path accepted');
  } catch (e) {
    assert.ok(sock.isSyscallError(e, 'ENAMETOOLONG'), String(e));
  }
  // 107 bytes is the limit: exactly 107 works.
  const exact = join(dir, 'y'.repeat(107 - dir.length - 1));
  assert.is(Buffer.byteLength(exact), 107);
  sock.close(sock.listenSeqpacket(exact, 1));
  const path = sockPath();
  const lfd = sock.listenSeqpacket(path, 4);
  try {
    sock.listenSeqpacket(path, 4);
    assert.unreachable('second bind');
  } catch (e) {
    assert.ok(sock.isSyscallError(e, 'EADDRINUSE'), String(e));
    const err = e as sock.SyscallError;
    assert.is(err.errno, 98);
    assert.is(err.syscall, 'bind');
    assert.is(err.message, 'bind: Address already in use');
  }
  sock.close(lfd);
  try {
    sock.connectSeqpacket(join(dir, 'absent.sock'));
    assert.unreachable('connect to nothing');
  } catch (e) {
    assert.ok(sock.isSyscallError(e, 'ENOENT'), String(e));
  }
});

test('argument validation: TypeError / RangeError', () => {
  const any = sock as unknown as Record<string, (...a: unknown[]) => unknown>;
  const typeErrors: [string, unknown[]][] = [
    ['close', ['3']], ['close', [1.5]], ['close', [NaN]], ['close', []],
    ['listenSeqpacket', [42, 4]], ['listenSeqpacket', ['/tmp/a\0b', 4]], ['listenSeqpacket', ['', 4]],
    ['accept', [3, 'yes']], ['send', [3, 'text', []]], ['send', [3, Buffer.alloc(1), [1.5]]],
    ['send', [3, Buffer.alloc(1), 7]], ['recv', [3, '10', 1]], ['openat', [-100, 5, 0]],
    ['flock', [3, 1, false]], ['pidfdSendSignal', [3, 'SIGTERM']],
  ];
  for (const [fn, args] of typeErrors) {
    assert.throws(() => any[fn]!(...args), (e: unknown) => e instanceof TypeError, `${fn}(${String(args)})`);
  }
  const rangeErrors: [string, unknown[]][] = [
    ['close', [-1]], ['close', [2 ** 31]], ['recv', [3, -1, 0]], ['recv', [3, 10, 254]],
    ['listenSeqpacket', [sockPath(), 0]], ['openat', [-5, '/', 0]], ['pidfdOpen', [0]],
    ['send', [3, Buffer.alloc(1), new Array(254).fill(0)]],
  ];
  for (const [fn, args] of rangeErrors) {
    assert.throws(() => any[fn]!(...args), (e: unknown) => e instanceof RangeError, `${fn}(${String(args)})`);
  }
  assert.throws(() => new sock.Watcher(0, 'sideways' as sock.PollEvents, () => {}), (e: unknown) => e instanceof TypeError);
  assert.throws(() => new sock.Watcher(0, 'readable', 5 as unknown as sock.PollCallback), (e: unknown) => e instanceof TypeError);
});

test('send/recv with 0..4 pipe descriptors; they work on the other side', () => {
  const p = connectedPair();
  for (let n = 0; n <= 4; n++) {
    const pipes = Array.from({ length: n }, makePipe);
    const msg = Buffer.from(JSON.stringify({ n }));
    assert.is(sock.send(p.client, msg, pipes.map((x) => x.w)), msg.length);
    const got = sock.recv(p.server.fd, 16384, 4);
    assert.ok(got);
    assert.is(got.truncated, false);
    assert.is(got.eof, false);
    assert.is(got.data.toString(), msg.toString());
    assert.is(got.fds.length, n);
    got.fds.forEach((fd, i) => {
      const info = sock.fdInfo(fd);
      assert.is(info.type, 'fifo');
      assert.is(info.accmode, 'w');
      assert.ok(info.cloexec, 'received with MSG_CMSG_CLOEXEC');
      const text = `through pipe ${i} of ${n}`;
      writeSync(fd, text);
      const buf = Buffer.alloc(100);
      const len = readSync(pipes[i]!.r, buf, 0, buf.length, null);
      assert.is(buf.subarray(0, len).toString(), text);
      sock.close(fd);
    });
    for (const x of pipes) { sock.close(x.r); sock.close(x.w); }
  }
  // Nothing more waiting on a non-blocking socket: null. The other direction works too.
  assert.is(sock.recv(p.server.fd, 100, 4), null);
  sock.send(p.server.fd, Buffer.from('reply'));
  const reply = sock.recv(p.client, 100, 0);
  assert.is(reply?.data.toString(), 'reply');
  // Peer closes: eof.
  sock.close(p.client);
  const eof = sock.recv(p.server.fd, 100, 4);
  assert.equal(eof && { n: eof.data.length, fds: eof.fds, eof: eof.eof, t: eof.truncated }, { n: 0, fds: [], eof: true, t: false });
  try {
    sock.send(p.server.fd, Buffer.from('x'));
    assert.unreachable('send to a closed peer');
  } catch (e) {
    assert.ok(sock.isSyscallError(e, 'EPIPE'), String(e)); // MSG_NOSIGNAL: an error, not SIGPIPE
  }
  sock.close(p.lfd); sock.close(p.server.fd); sock.close(p.server.pidfd);
});

test('truncated message: 20000 bytes into 16384', () => {
  const p = connectedPair();
  const big = Buffer.alloc(20000, 0x61);
  assert.is(sock.send(p.client, big), 20000);
  const got = sock.recv(p.server.fd, 16384, 4);
  assert.ok(got);
  assert.is(got.truncated, true);
  assert.is(got.eof, false);
  assert.is(got.data.length, 16384);
  assert.is(sock.recv(p.server.fd, 16384, 4), null, 'the rest of a packet is discarded');
  closePair(p);
});

test('MSG_CTRUNC: 6 fds with maxFds 4 -> truncated, nothing leaked; odd and zero maxFds too', () => {
  const p = connectedPair();
  const cases: [send: number, maxFds: number, expect: number][] = [[6, 4, 4], [4, 3, 3], [2, 0, 0], [5, 1, 1]];
  for (const [nsend, maxFds, expect] of cases) {
    const before = fdCount();
    const pipes = Array.from({ length: Math.ceil(nsend / 2) }, makePipe);
    const fds = pipes.flatMap((x) => [x.r, x.w]).slice(0, nsend);
    sock.send(p.client, Buffer.from('many'), fds);
    const got = sock.recv(p.server.fd, 100, maxFds);
    assert.ok(got);
    assert.is(got.truncated, true, `send ${nsend}, maxFds ${maxFds}`);
    assert.is(got.fds.length, expect);
    assert.is(got.data.toString(), 'many');
    for (const fd of got.fds) sock.close(fd);
    for (const x of pipes) { sock.close(x.r); sock.close(x.w); }
    assert.is(fdCount(), before, `no descriptor leaked (send ${nsend}, maxFds ${maxFds})`);
  }
  closePair(p);
});

test('peer credentials and pidfd of this process', () => {
  const p = connectedPair();
  assert.is(p.server.uid, process.getuid!());
  assert.is(p.server.gid, process.getgid!());
  assert.is(p.server.pid, process.pid);
  assert.ok(p.server.pidfd >= 0);
  assert.is(p.server.pidfdSource, 'SO_PEERPIDFD');
  assert.is(p.server.pidfdError, null);
  assert.is(fdinfoField(p.server.pidfd, 'Pid'), String(process.pid));
  assert.ok(sock.fdInfo(p.server.pidfd).cloexec, 'pidfd is close-on-exec');
  assert.ok(sock.fdInfo(p.server.fd).cloexec, 'accepted fd is close-on-exec');
  assert.ok(sock.fdInfo(p.server.fd).flags & constants.O_NONBLOCK, 'accept(nonblock=true)');
  sock.pidfdSendSignal(p.server.pidfd, 0);
  // A blocking accept when asked for one.
  const c2 = sock.connectSeqpacket(p.path);
  const blocking = sock.accept(p.lfd, false);
  assert.ok(blocking);
  assert.is(sock.fdInfo(blocking.fd).flags & constants.O_NONBLOCK, 0);
  for (const fd of [c2, blocking.fd, blocking.pidfd]) sock.close(fd);
  closePair(p);
});

test('client in a child pid namespace: visible pid, pidfd names it (NSpid ... 1)', async () => {
  const path = sockPath();
  const lfd = sock.listenSeqpacket(path, 4);
  const py = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
  const script = [
    'import socket, sys',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)',
    's.connect(sys.argv[1])',
    's.send(b"hello")',
    's.recv(100)',
  ].join('\n');
  const child = spawn('unshare', ['-p', '-f', '--mount-proc', py, '-c', script, path], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    await readable(lfd, 5000, `connection from the namespaced client (${stderr})`);
    const peer = sock.accept(lfd, true);
    assert.ok(peer);
    assert.ok(peer.pid > 0, 'a child namespace is visible from here');
    assert.ok(peer.pidfd >= 0);
    assert.is(fdinfoField(peer.pidfd, 'Pid'), String(peer.pid));
    assert.is(fdinfoField(peer.pidfd, 'NSpid')?.split(/\s+/).at(-1), '1', 'pid 1 in its own namespace');
    await readable(peer.fd, 5000, 'hello');
    assert.is(sock.recv(peer.fd, 100, 0)?.data.toString(), 'hello');
    sock.send(peer.fd, Buffer.from('bye'));
    await readable(peer.pidfd, 5000, 'client exit seen on the pidfd');
    assert.is(await withTimeout(exited, 5000, 'unshare exit'), 0, stderr);
    sock.close(peer.fd); sock.close(peer.pidfd);
  } finally {
    child.kill('SIGKILL');
    sock.close(lfd);
  }
});

test('broker in another pid namespace: SO_PEERCRED pid 0, SO_PEERPIDFD still names the client', async () => {
  // The acceptor runs under unshare -p (as a broker container would); this process, outside
  // that namespace, is the client. The acceptor sends back what it saw plus the pidfd itself.
  const path = sockPath();
  const script = join(dir, 'acceptor.mjs');
  const lib = new URL('../helper/native/socket.js', import.meta.url).href;
  writeFileSync(script, `
    import * as sock from ${JSON.stringify(lib)};
    import { readFileSync } from 'node:fs';
    const lfd = sock.listenSeqpacket(process.argv[2], 4);
    process.stdout.write('ready\\n');
    const t = setTimeout(() => process.exit(3), 5000);
    const w = sock.poll(lfd, 'readable', () => {
      const peer = sock.accept(lfd, false);
      if (!peer) return;
      w.stop();
      let signal = 'ok';
      try { sock.pidfdSendSignal(peer.pidfd, 0); } catch (e) { signal = e.code; }
      const alive = sock.pidfdIsAlive(peer.pidfd);
      const fdinfoPid = readFileSync('/proc/self/fdinfo/' + peer.pidfd, 'utf8').split('\\n').find((l) => l.startsWith('Pid:'))?.slice(4).trim();
      const body = JSON.stringify({ uid: peer.uid, gid: peer.gid, pid: peer.pid, source: peer.pidfdSource, alive, signal, fdinfoPid, myPid: process.pid });
      sock.send(peer.fd, Buffer.from(body), peer.pidfd >= 0 ? [peer.pidfd] : []);
      clearTimeout(t);
    });
  `);
  const child = spawn('unshare', ['-p', '-f', '--mount-proc', process.execPath, script, path], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let client = -1;
  try {
    await withTimeout(new Promise<void>((resolve) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); if (out.includes('ready\n')) resolve(); });
    }), 10000, 'acceptor ready');
    client = sock.connectSeqpacket(path);
    await readable(client, 5000, `acceptor reply (${stderr})`);
    const got = sock.recv(client, 1000, 1);
    assert.ok(got && !got.truncated);
    const seen = JSON.parse(got.data.toString()) as {
      uid: number; gid: number; pid: number; source: string; alive: boolean; signal: string; fdinfoPid: string; myPid: number;
    };
    assert.is(seen.myPid, 1, 'the acceptor is pid 1 of its namespace');
    assert.is(seen.pid, 0, 'SO_PEERCRED cannot name a pid outside the namespace');
    assert.is(seen.uid, process.getuid!());
    assert.is(seen.gid, process.getgid!());
    assert.is(seen.source, 'SO_PEERPIDFD');
    assert.ok(seen.alive, 'pidfdIsAlive works across namespaces');
    assert.is(seen.fdinfoPid, '0', 'inside, the pidfd shows no pid (this process is invisible there)');
    assert.is(seen.signal, 'EINVAL', 'pidfd_send_signal refuses a target outside the namespace');
    assert.is(got.fds.length, 1);
    assert.is(fdinfoField(got.fds[0]!, 'Pid'), String(process.pid), 'the pidfd names this very process');
    sock.close(got.fds[0]!);
    assert.is(await withTimeout(exited, 5000, 'acceptor exit'), 0, stderr);
  } finally {
    if (client >= 0) sock.close(client);
    child.kill('SIGKILL');
  }
});

test('poll: fires on readable, never after stop', async () => {
  const p = connectedPair();
  let calls = 0;
  const first = new Promise<number>((resolve) => {
    const w = sock.poll(p.server.fd, 'readable', (err, events) => {
      calls++;
      assert.is(err, null);
      w.stop();
      assert.ok(w.stopped);
      resolve(events);
    });
  });
  await sleep(50);
  assert.is(calls, 0, 'nothing readable yet');
  sock.send(p.client, Buffer.from('one'));
  const events = await withTimeout(first, 2000, 'readable callback');
  assert.is(events & constants.POLL_READABLE, constants.POLL_READABLE);
  // The packet is still unread (level-triggered would fire again), and more arrive: stopped.
  sock.send(p.client, Buffer.from('two'));
  await sleep(100);
  assert.is(calls, 1);

  // Level-triggered while running: several callbacks until drained, then quiet.
  let calls2 = 0;
  const w2 = sock.poll(p.server.fd, 'readable', () => {
    calls2++;
    if (calls2 === 3) while (sock.recv(p.server.fd, 100, 0)) { /* drain */ }
  });
  await sleep(100);
  assert.is(calls2, 3, 'fired until drained');
  w2.stop();
  w2.stop(); // idempotent
  await sleep(20);
  // A stopped watcher frees the fd for a new watcher; writable fires at once.
  const wr = await withTimeout(new Promise<number>((resolve) => {
    const w3 = sock.poll(p.client, 'writable', (_e, ev) => { w3.stop(); resolve(ev); });
  }), 2000, 'writable');
  assert.is(wr & constants.POLL_WRITABLE, constants.POLL_WRITABLE);
  closePair(p);
});

test('poll: an exception in the callback reaches uncaughtException; microtasks run after it', async () => {
  const p = connectedPair();
  const listeners = process.listeners('uncaughtException');
  process.removeAllListeners('uncaughtException');
  try {
    const caught = new Promise<unknown>((resolve) => process.once('uncaughtException', resolve));
    let microtask = false;
    const w = sock.poll(p.server.fd, 'readable', () => {
      w.stop();
      queueMicrotask(() => { microtask = true; });
      throw new Error('boom from poll');
    });
    sock.send(p.client, Buffer.from('x'));
    const err = await withTimeout(caught, 2000, 'uncaughtException');
    assert.is((err as Error).message, 'boom from poll');
    await sleep(10);
    assert.ok(microtask);
  } finally {
    for (const l of listeners) process.on('uncaughtException', l);
    closePair(p);
  }
});

test('pidfd: readable after the process exits; pidfdSendSignal', async () => {
  const child = spawn('sleep', ['0.2'], { stdio: 'ignore' });
  const pidfd = sock.pidfdOpen(child.pid!);
  assert.ok(sock.fdInfo(pidfd).cloexec);
  assert.is(sock.pidfdIsAlive(pidfd), true);
  const t0 = Date.now();
  await readable(pidfd, 5000, 'sleep 0.2 exit');
  assert.is(sock.pidfdIsAlive(pidfd), false);
  assert.ok(Date.now() - t0 >= 100, 'not before the exit');
  sock.close(pidfd);

  const long = spawn('sleep', ['30'], { stdio: 'ignore' });
  const pidfd2 = sock.pidfdOpen(long.pid!);
  const exited = new Promise<NodeJS.Signals | null>((resolve) => long.on('exit', (_c, sig) => resolve(sig)));
  sock.pidfdSendSignal(pidfd2, 15);
  await readable(pidfd2, 5000, 'SIGTERM exit');
  assert.is(await withTimeout(exited, 5000, 'exit event'), 'SIGTERM');
  try {
    sock.pidfdSendSignal(pidfd2, 15);
    assert.unreachable('signal to a dead process');
  } catch (e) {
    assert.ok(sock.isSyscallError(e, 'ESRCH'), String(e));
  }
  sock.close(pidfd2);
});

test('poll: unref lets the process exit; a ref watcher keeps it', async () => {
  const lib = new URL('../helper/native/socket.js', import.meta.url).href;
  const run = (unref: boolean): Promise<number> => {
    const code = `import * as s from ${JSON.stringify(lib)};
      const w = s.poll(s.pidfdOpen(process.pid), 'readable', () => {});
      ${unref ? 'w.unref();' : 'setTimeout(() => { w.stop(); process.stdout.write("stopped"); }, 300).unref();'}`;
    const c = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    const t0 = Date.now();
    return withTimeout(new Promise<number>((resolve) => c.on('exit', (status) => {
      assert.is(status, 0);
      assert.is(out, unref ? '' : 'stopped');
      resolve(Date.now() - t0);
    })), 5000, `node with ${unref ? 'unref' : 'ref'} watcher`);
  };
  await run(true);
  assert.ok((await run(false)) >= 300, 'the ref watcher held the loop until stopped');
});

test('poll: watchers still active when a worker thread ends are closed cleanly', async () => {
  const lib = new URL('../helper/native/socket.js', import.meta.url).href;
  const code = `import * as s from ${JSON.stringify(lib)};
    import { parentPort } from 'node:worker_threads';
    s.poll(s.pidfdOpen(process.pid), 'readable', () => {});
    s.poll(s.pidfdOpen(process.pid), 'readable', () => {}).unref();
    const stopped = s.poll(s.pidfdOpen(process.pid), 'readable', () => {}); stopped.stop();
    parentPort.postMessage('started');
    if (process.env.FUSE_SVC_TEST_EXIT) setTimeout(() => process.exit(0), 20);`;
  for (const how of ['exit', 'terminate'] as const) {
    // Before the async cleanup hook, the close callback ran after the addon was unloaded: SIGSEGV.
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      import { Worker } from 'node:worker_threads';
      for (let i = 0; i < 5; i++) {
        const w = new Worker(new URL('data:text/javascript,' + encodeURIComponent(${JSON.stringify(code)})),
          { env: ${how === 'exit' ? "{ FUSE_SVC_TEST_EXIT: '1' }" : '{}'} });
        await new Promise((r) => w.once('message', r));
        ${how === 'terminate' ? 'await w.terminate();' : "await new Promise((r) => w.once('exit', r));"}
      }
      process.stdout.write('done');`], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    const result = await withTimeout(new Promise<[number | null, string | null]>((resolve) =>
      child.on('exit', (c, sig) => resolve([c, sig]))), 10000, `workers (${how})`);
    assert.equal(result, [0, null], how);
    assert.is(out, 'done');
  }
});

test('fdInfo: pipe, dir, O_PATH, socket', () => {
  const pipe = makePipe();
  const r = sock.fdInfo(pipe.r);
  assert.is(r.type, 'fifo');
  assert.is(r.accmode, 'r');
  assert.is(sock.fdInfo(pipe.w).accmode, 'w');
  sock.close(pipe.r); sock.close(pipe.w);

  const d = sock.openat(constants.AT_FDCWD, dir, constants.O_RDONLY | constants.O_DIRECTORY);
  const di = sock.fdInfo(d);
  assert.is(di.type, 'dir');
  assert.is(di.accmode, 'r');
  assert.ok(di.cloexec, 'openat adds O_CLOEXEC');
  assert.is(di.ino, statSync(dir).ino);
  assert.is(di.uid, statSync(dir).uid);
  assert.is(di.mode, statSync(dir).mode);
  sock.close(d);

  const file = join(dir, 'plain');
  writeFileSync(file, 'abc', { mode: 0o640 });
  const pf = sock.openat(constants.AT_FDCWD, file, constants.O_PATH | constants.O_NOFOLLOW);
  const pi = sock.fdInfo(pf);
  assert.is(pi.type, 'file');
  assert.is(pi.accmode, 'path');
  assert.is(pi.size, 3);
  assert.is(pi.mode & 0o777, 0o640);
  sock.close(pf);
  const rw = sock.openat(constants.AT_FDCWD, file, constants.O_RDWR);
  assert.is(sock.fdInfo(rw).accmode, 'rw');
  sock.close(rw);

  const nul = openSync('/dev/null', 'r');
  const ni = sock.fdInfo(nul);
  assert.is(ni.type, 'chr');
  assert.is([ni.rdevMajor, ni.rdevMinor].join(':'), '1:3');
  closeSync(nul);
  try {
    sock.fdInfo(100000);
    assert.unreachable('fdInfo of a closed fd');
  } catch (e) {
    assert.ok(sock.isSyscallError(e, 'EBADF'), String(e));
  }
});

test('statxMount: "/" is a mount root, a fresh directory is not', () => {
  const root = sock.openat(constants.AT_FDCWD, '/', constants.O_PATH | constants.O_DIRECTORY);
  const m = sock.statxMount(root);
  assert.is(m.isMountRoot, true);
  assert.is(typeof m.mntIdUnique, 'bigint');
  assert.ok(m.mntIdUnique > 0n);
  const line = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.startsWith(`${m.mntId} `));
  assert.is(line?.split(' ')[4], '/', 'mntId is the mountinfo id of /');
  const sub = join(dir, 'sub');
  mkdirSync(sub);
  const s = sock.openat(constants.AT_FDCWD, sub, constants.O_PATH | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  assert.is(sock.statxMount(s).isMountRoot, false);
  // `..` lookup on an O_PATH descriptor.
  const up = sock.openat(s, '..', constants.O_PATH | constants.O_DIRECTORY);
  assert.is(sock.fdInfo(up).ino, statSync(dir).ino);
  assert.is(sock.statxMount(up).mntIdUnique, sock.statxMount(s).mntIdUnique);
  for (const fd of [root, s, up]) sock.close(fd);
});

test('fstatfs, flock, dupCloexec', () => {
  const proc = sock.openat(constants.AT_FDCWD, '/proc', constants.O_PATH | constants.O_DIRECTORY);
  assert.is(sock.fstatfs(proc).type, 0x9fa0); // PROC_SUPER_MAGIC
  sock.close(proc);

  const file = join(dir, 'lock');
  writeFileSync(file, '');
  const a = sock.openat(constants.AT_FDCWD, file, constants.O_RDWR);
  const b = sock.openat(constants.AT_FDCWD, file, constants.O_RDWR);
  assert.is(sock.flock(a, true, true), true);
  assert.is(sock.flock(b, true, true), false, 'held by another open file description');
  assert.is(sock.flock(b, false, true), false, 'shared blocked by exclusive');
  const a2 = sock.dupCloexec(a);
  assert.ok(a2 >= 3 && a2 !== a);
  assert.ok(sock.fdInfo(a2).cloexec);
  sock.close(a);
  assert.is(sock.flock(b, true, true), false, 'the dup still holds the lock');
  sock.close(a2);
  assert.is(sock.flock(b, true, true), true);
  sock.close(b);
});

test('listenStream + connectStream', () => {
  const path = sockPath();
  const lfd = sock.listenStream(path, 4);
  assert.is(statSync(path).mode & 0o777, 0o600);
  const c = sock.connectStream(path);
  const peer = sock.accept(lfd, false);
  assert.ok(peer);
  assert.is(peer.pid, process.pid);
  const pipe = makePipe();
  sock.send(c, Buffer.from('stream'), [pipe.w]);
  const got = sock.recv(peer.fd, 100, 2);
  assert.is(got?.data.toString(), 'stream');
  assert.is(got?.fds.length, 1);
  for (const fd of [...(got?.fds ?? []), pipe.r, pipe.w, c, peer.fd, peer.pidfd, lfd]) sock.close(fd);
});

test.after(() => {
  rmSync(dir, { recursive: true, force: true });
});

test.run();
