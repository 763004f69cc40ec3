/**
 * Tests of the static C client (helper/native/client.c -> build/Release/fuse-svc-client) that
 * need no broker: usage, local errors, and a fake broker (python3, AF_UNIX SOCK_SEQPACKET,
 * socket.recv_fds) that records the request and the descriptors it received and answers with a
 * canned reply. Also: the binary is static and runs in an empty root; its error-code list is the
 * protocol's table; an end-to-end mount through the real broker when one can run here.
 * Every child has a timeout; every server is killed in teardown.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { ERRORS } from '../supervisor/protocol.js';
import { ROOT, makeDir, makeImage, newCaller, startBroker, tmpdir as harnessTmpdir, type Broker, type Caller } from './lib/harness.js';

const CLIENT = process.env.FUSE_SVC_TEST_CLIENT ?? join(ROOT, 'build/Release/fuse-svc-client');
const dir = mkdtempSync(join(tmpdir(), 'fuse-svc-client-test-'));
const servers: ChildProcess[] = [];
let serial = 0;

const O_ACCMODE = 3;
const O_RDONLY = 0;
const O_RDWR = 2;
const O_PATH = 0o10000000;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;

type Result = { status: number | null; stdout: string; stderr: string; ms: number };
function client(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 15000): Result {
  const t0 = Date.now();
  const r = spawnSync(CLIENT, args, { encoding: 'utf8', timeout: timeoutMs, env: { PATH: process.env.PATH, ...env }, cwd: dir });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - t0 };
}

// The fake broker: accepts one connection, records what arrived, then replies / closes / hangs.
const FAKE = `
import fcntl, json, os, socket, sys, time
path, mode = sys.argv[1], sys.argv[2]
reply = sys.argv[3] if len(sys.argv) > 3 else ''
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(path)
s.listen(4)
print('ready', flush=True)
s.settimeout(20)
# mode "pages": reply is a JSON array, one reply per connection, in order
replies = json.loads(reply) if mode == 'pages' else [reply]
for r in replies:
    c, _ = s.accept()
    c.settimeout(20)
    msg, fds, flags, _ = socket.recv_fds(c, 65536, 8)
    info = []
    for fd in fds:
        st = os.fstat(fd)
        info.append({'mode': st.st_mode, 'dev': st.st_dev, 'ino': st.st_ino, 'flags': fcntl.fcntl(fd, fcntl.F_GETFL)})
        os.close(fd)
    print(json.dumps({'request': msg.decode('utf-8', 'replace'), 'fds': info, 'flags': flags}), flush=True)
    if mode in ('reply', 'pages'):
        c.send((r if isinstance(r, str) else json.dumps(r)).encode('utf-8'))
    elif mode == 'hang':
        time.sleep(30)
    c.close()
`;
const fakePy = join(dir, 'fake-broker.py');
writeFileSync(fakePy, FAKE);

type Seen = { request: string; fds: { mode: number; dev: number; ino: number; flags: number }[]; flags: number };
type Fake = { path: string; seen: () => Promise<Seen> };

async function fakeBroker(mode: 'reply' | 'close' | 'hang' | 'pages', reply: unknown = '', path = join(dir, `b${serial++}.sock`)): Promise<Fake> {
  const text = typeof reply === 'string' ? reply : JSON.stringify(reply);
  const p = spawn('python3', [fakePy, path, mode, text], { stdio: ['ignore', 'pipe', 'inherit'] });
  servers.push(p);
  const lines = createInterface({ input: p.stdout! });
  const queue: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  lines.on('line', (l) => (waiters.length ? waiters.shift()!(l) : queue.push(l)));
  const next = (what: string): Promise<string> =>
    new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`fake broker: timed out waiting for ${what}`)), 10000);
      const done = (l: string): void => (clearTimeout(t), resolve(l));
      if (queue.length) done(queue.shift()!);
      else waiters.push(done);
    });
  assert.is(await next('ready'), 'ready');
  return { path, seen: async () => JSON.parse(await next('the request')) as Seen };
}

test.after.each(() => {
  for (const p of servers.splice(0)) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
});
test.after(() => rmSync(dir, { recursive: true, force: true }));

const image = join(dir, 'disk.img');
writeFileSync(image, Buffer.alloc(4096));
const mnt = join(dir, 'mnt');
mkdirSync(mnt);

test('--help: a manual page on stdout, exit 0; --version', () => {
  const r = client(['--help']);
  assert.is(r.status, 0);
  for (const s of ['SYNOPSIS', 'mount [-t TYPE] [-o OPTS] SOURCE TARGET', 'unmount [--wait SEC] --id N', 'list', 'FUSE_SVC_SOCKET', '/run/fuse-svc/broker.sock', 'EXIT STATUS', '64  usage error']) {
    assert.ok(r.stdout.includes(s), `help mentions ${s}`);
  }
  assert.is(r.stderr, '');
  assert.is(client(['list', '--help']).status, 0);
  const v = client(['--version']);
  assert.is(v.status, 0);
  assert.match(v.stdout, /^\d+\.\d+\.\d+\n$/);
});

test('bad arguments: exit 64 with a one-line reason and a pointer to --help', () => {
  const cases: [string[], RegExp][] = [
    [[], /give a command: mount, unmount or list/],
    [['frob'], /unknown command: frob/],
    [['mount', image], /mount takes SOURCE and TARGET/],
    [['mount', image, mnt, 'extra'], /mount takes SOURCE and TARGET/],
    [['unmount'], /give either TARGET or --id/],
    [['unmount', mnt, '--id', '3'], /give either TARGET or --id/],
    [['unmount', '--id', '0'], /--id must be a mount id/],
    [['unmount', '--id', '1x'], /--id must be a mount id/],
    [['list', 'x'], /list takes no arguments/],
    [['list', '--bogus'], /unknown option: --bogus/],
    [['--timeout', 'abc', 'list'], /--timeout must be a number of seconds/],
    [['--timeout', '-1', 'list'], /--timeout must be a number of seconds/],
    [['list', '-t', 'ext4'], /-t and -o are options of mount/],
    [['list', '--socket'], /--socket needs a value/],
  ];
  for (const [args, re] of cases) {
    const r = client(args);
    assert.is(r.status, 64, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re);
    assert.match(r.stderr, /Try fuse-svc-request --help\.\n$/);
    assert.is(r.stdout, '');
  }
});

test('a missing socket: exit 1, the error names the path (from --socket and from FUSE_SVC_SOCKET)', () => {
  const p = join(dir, 'no-such-dir', 'broker.sock');
  const r = client(['--socket', p, 'list']);
  assert.is(r.status, 1);
  assert.is(r.stderr, `fuse-svc-request: cannot connect to ${p}: ENOENT (No such file or directory) (is fuse-svcd running? set --socket or FUSE_SVC_SOCKET)\n`);
  const e = client(['list'], { FUSE_SVC_SOCKET: p });
  assert.is(e.status, 1);
  assert.ok(e.stderr.includes(`cannot connect to ${p}:`), e.stderr);
  const notSock = client(['--socket', image, 'list']);
  assert.is(notSock.status, 1);
  assert.ok(notSock.stderr.includes(`cannot connect to ${image}: ECONNREFUSED`), notSock.stderr);
  const long = client(['--socket', '/' + 'x'.repeat(200), 'list']);
  assert.is(long.status, 1);
  assert.match(long.stderr, /the path is longer than 107 bytes/);
});

test('local errors before connecting: missing source, target a symlink or not a directory', () => {
  const sock = join(dir, 'never-used.sock'); // nothing listens: the opens fail first
  const r = client(['--socket', sock, 'mount', join(dir, 'missing.img'), mnt]);
  assert.is(r.status, 1);
  assert.is(r.stderr, `fuse-svc-request: cannot open source ${join(dir, 'missing.img')}: ENOENT (No such file or directory)\n`);
  const link = join(dir, 'mnt-link');
  symlinkSync(mnt, link);
  const l = client(['--socket', sock, 'mount', image, link]);
  assert.is(l.status, 1);
  assert.is(l.stderr, `fuse-svc-request: cannot open target ${link}: it is a symbolic link (never followed)\n`);
  const f = client(['--socket', sock, 'mount', image, image]);
  assert.is(f.status, 1);
  assert.is(f.stderr, `fuse-svc-request: cannot open target ${image}: not a directory\n`);
});

test('mount: the request JSON and the two descriptors the broker receives; ok reply', async () => {
  const b = await fakeBroker('reply', { v: 1, ok: true, id: 7, uid: 61184, server_pid: 4242, mnt_id: 99 });
  const r = client(['--socket', b.path, 'mount', '-t', 'ext4', image, mnt]);
  const seen = await b.seen();
  assert.is(r.stderr, '');
  assert.is(r.stdout, `mounted ${mnt} (id 7)\n`);
  assert.is(r.status, 0);
  // byte for byte what the TypeScript client sends (encodeRequest = JSON.stringify({v:1, ...body}))
  assert.is(seen.request, JSON.stringify({ v: 1, op: 'mount', fstype: 'ext4', options: 'rw', fds: ['source', 'target'], source_name: image, target_name: mnt }));
  assert.is(seen.fds.length, 2);
  const [src, tgt] = seen.fds;
  const si = statSync(image);
  const ti = statSync(mnt);
  assert.is(src.mode & S_IFMT, S_IFREG);
  assert.is(src.ino, si.ino);
  assert.is(src.dev, si.dev);
  assert.is(src.flags & O_ACCMODE, O_RDWR, 'source opened read-write for rw');
  assert.is(tgt.mode & S_IFMT, S_IFDIR);
  assert.is(tgt.ino, ti.ino);
  assert.ok(tgt.flags & O_PATH, 'target is an O_PATH descriptor');
  assert.is(seen.flags & 0x28, 0, 'nothing truncated (MSG_TRUNC|MSG_CTRUNC)');
});

test('mount -o ro: read-only source; names with quotes, backslashes, UTF-8 and bad UTF-8 are valid JSON', async () => {
  const odd = join(dir, 'd"i\\sk é😀.img');
  copyFileSync(image, odd);
  const b = await fakeBroker('reply', { v: 1, ok: true, id: 8 });
  const r = client(['--socket', b.path, '--json', 'mount', '-o', 'ro,norecovery', '--type=ext2', odd, mnt + '/']);
  const seen = await b.seen();
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout, '{"v":1,"ok":true,"id":8}\n', '--json prints the reply');
  assert.is(seen.request, JSON.stringify({ v: 1, op: 'mount', fstype: 'ext2', options: 'ro,norecovery', fds: ['source', 'target'], source_name: odd, target_name: mnt + '/' }));
  assert.is(seen.fds[0].flags & O_ACCMODE, O_RDONLY, 'source opened read-only for ro');
  // "ro,rw": the last one wins, as in the TypeScript client
  const b2 = await fakeBroker('reply', { v: 1, ok: true, id: 9 });
  assert.is(client(['--socket', b2.path, 'mount', '-o', 'ro,rw', image, mnt]).status, 0);
  assert.is((await b2.seen()).fds[0].flags & O_ACCMODE, O_RDWR);
  // an argument that is not UTF-8 is sent as U+FFFD (as Node decodes argv), never as bad JSON
  const b3 = await fakeBroker('reply', { v: 1, ok: true, id: 10 });
  const exec = 'import os, sys; a = sys.argv; os.execv(a[1], [a[1], "--socket", a[2], "mount", "-t", b"e\\xffx", a[3], a[4]])';
  const bad = spawnSync('python3', ['-c', exec, CLIENT, b3.path, image, mnt], { encoding: 'utf8', timeout: 15000 });
  assert.is(bad.status, 0, bad.stderr);
  const req3 = JSON.parse((await b3.seen()).request);
  assert.is(req3.fstype, 'e\ufffdx');
});

test('error replies: "fuse-svc-request: CODE: message" on stderr, exit 2', async () => {
  const b = await fakeBroker('reply', { v: 1, ok: false, code: 'EPERM_TARGET', message: 'you may not mount on /x' });
  const r = client(['--socket', b.path, 'mount', image, mnt]);
  await b.seen();
  assert.is(r.status, 2);
  assert.is(r.stdout, '');
  assert.is(r.stderr, 'fuse-svc-request: EPERM_TARGET: you may not mount on /x\n');

  const u = await fakeBroker('reply', { v: 1, ok: false, code: 'ENOT_A_CODE', message: 'm' });
  const ru = client(['--socket', u.path, 'list']);
  assert.is(ru.status, 2);
  assert.is(ru.stderr, 'fuse-svc-request: EINTERNAL: m\n', 'an unknown code is shown as EINTERNAL');

  const g = await fakeBroker('reply', 'not json {');
  const rg = client(['--socket', g.path, 'list']);
  assert.is(rg.status, 2);
  assert.is(rg.stderr, 'fuse-svc-request: EPROTO_JSON: the broker sent a reply that is not JSON\n');

  const v = await fakeBroker('reply', { v: 2, ok: true });
  const rv = client(['--socket', v.path, 'list']);
  assert.is(rv.status, 2);
  assert.is(rv.stderr, 'fuse-svc-request: EPROTO_VERSION: the broker speaks another protocol version\n');

  const nomsg = await fakeBroker('reply', { v: 1, ok: false, code: 'ELIMIT_RATE' });
  const rn = client(['--socket', nomsg.path, 'list']);
  assert.is(rn.status, 2);
  assert.is(rn.stderr, `fuse-svc-request: ELIMIT_RATE: ${ERRORS.ELIMIT_RATE}\n`, "a reply without a message gets the code's text");

  const esc = await fakeBroker('reply', { v: 1, ok: false, code: 'EOPTION', message: 'bad \u001b[31m option' });
  const re = client(['--socket', esc.path, 'list']);
  assert.is(re.stderr, 'fuse-svc-request: EOPTION: bad \\x1b[31m option\n', 'control characters are escaped, as in the broker log');
});

test('no reply: --timeout is honoured (exit 1); a connection closed without a reply (exit 1)', async () => {
  const h = await fakeBroker('hang');
  const r = client(['--socket', h.path, '--timeout', '0.5', 'list']);
  assert.is(r.status, 1);
  assert.is(r.stderr, 'fuse-svc-request: no reply from the broker within 500 ms\n');
  assert.ok(r.ms < 5000, `took ${r.ms} ms`);
  const c = await fakeBroker('close');
  const rc = client(['--socket', c.path, 'list']);
  await c.seen();
  assert.is(rc.status, 1);
  assert.is(rc.stderr, 'fuse-svc-request: the broker closed the connection without a reply\n');
});

test('list: the table, "no mounts", --json', async () => {
  const mounts = [
    { id: 7, owner_uid: 1000, fstype: 'ext4', options: 'rw', source: './disk.img', target: './mnt', uid: 61184, state: 'running', started_at: 1, server_pid: 5, exit_code: null, exit_signal: null, reason: null },
    { id: 12, owner_uid: 0, fstype: 'ext2', options: 'ro,norecovery', source: '/srv/é.img', target: '/m', uid: 61185, state: 'exited', started_at: 2, server_pid: null, exit_code: null, exit_signal: 9, reason: 'killed by signal 9' },
    { id: 13, owner_uid: 0, fstype: 'ext4', options: 'rw', source: 's', target: 't', uid: 61186, state: 'exited', started_at: 3, server_pid: null, exit_code: 0, exit_signal: 0, reason: 'unmounted' },
  ];
  const b = await fakeBroker('reply', { v: 1, ok: true, mounts });
  const r = client(['list', '--socket', b.path]);
  assert.is((await b.seen()).request, '{"v":1,"op":"list"}');
  assert.is(r.status, 0, r.stderr);
  assert.is(
    r.stdout,
    [
      'ID  STATE    TYPE  OPTS           SOURCE      TARGET  UID   SANDBOX  EXIT',
      '7   running  ext4  rw             ./disk.img  ./mnt   1000  61184',
      '12  exited   ext2  ro,norecovery  /srv/é.img  /m      0     61185    signal 9',
      '13  exited   ext4  rw             s           t       0     61186    status 0',
      '',
    ].join('\n'),
  );
  const e = await fakeBroker('reply', { v: 1, ok: true, mounts: [] });
  const re = client(['--socket', e.path, 'list']);
  assert.is(re.stdout, 'no mounts\n');
  const j = await fakeBroker('reply', { v: 1, ok: true, mounts });
  const rj = client(['--socket', j.path, '--json', 'list']);
  assert.is(rj.status, 0);
  assert.equal(JSON.parse(rj.stdout), { mounts });
  assert.is(rj.stdout, JSON.stringify({ mounts }) + '\n', 'the bytes JSON.stringify writes (nothing here needs escaping)');
});

test('list follows the pages: "after" is the last "next", one table / one {"mounts"} of all; a bad "next" is refused', async () => {
  const m = (id: number) => ({ id, owner_uid: 1000, fstype: 'ext4', options: 'rw', source: `s${id}`, target: `t${id}`, uid: 61184, state: 'exited', started_at: id, server_pid: null, exit_code: 0, exit_signal: 0, reason: 'unmounted' });
  const pages = [
    { v: 1, ok: true, mounts: [m(3), m(7)], next: 7 },
    { v: 1, ok: true, mounts: [m(9)], next: 9 },
    { v: 1, ok: true, mounts: [m(40)], next: null },
  ];
  const b = await fakeBroker('pages', pages);
  const r = client(['--socket', b.path, '--json', 'list']);
  assert.equal([(await b.seen()).request, (await b.seen()).request, (await b.seen()).request], ['{"v":1,"op":"list"}', '{"v":1,"op":"list","after":7}', '{"v":1,"op":"list","after":9}']);
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout, JSON.stringify({ mounts: [m(3), m(7), m(9), m(40)] }) + '\n');
  const t = await fakeBroker('pages', pages);
  const rt = client(['--socket', t.path, 'list']);
  assert.is(rt.status, 0, rt.stderr);
  assert.equal(rt.stdout.trimEnd().split('\n').slice(1).map((l) => Number(l.split(' ')[0])), [3, 7, 9, 40]);
  // A broker from before paging: no "next", one page.
  const old = await fakeBroker('reply', { v: 1, ok: true, mounts: [m(1)] });
  assert.is(client(['--socket', old.path, '--json', 'list']).stdout, JSON.stringify({ mounts: [m(1)] }) + '\n');
  // A "next" that does not grow would loop for ever: refused, exit 2.
  for (const next of [7, 2, 'x', 1.5]) {
    const bad = await fakeBroker('pages', [{ v: 1, ok: true, mounts: [m(3), m(7)], next: 7 }, { v: 1, ok: true, mounts: [m(8)], next }]);
    const rb = client(['--socket', bad.path, 'list']);
    assert.is(rb.status, 2, `next ${JSON.stringify(next)}: ${rb.stderr}`);
    assert.is(rb.stderr, 'fuse-svc-request: EPROTO_FIELD: the broker\'s list reply has a bad "next"\n');
    assert.is(rb.stdout, '', 'nothing printed from a walk that failed');
  }
});

test('names on output: C0, DEL, C1, U+2028/9 and bidi controls escaped as the broker log does; --json stays valid JSON with the same values', async () => {
  const hostile = 'a\u001b]0;x\u0007\u007f\u0085\u009b\u2028\u2029\u200e\u200f\u202a\u202e\u2066\u2069é\\b';
  const mounts = [{ id: 5, owner_uid: 1000, fstype: 'ext4', options: 'rw', source: hostile, target: `t${hostile}`, uid: 61184, state: 'running', started_at: 1, server_pid: 5, exit_code: null, exit_signal: null, reason: null }];
  const esc = 'a\\x1b]0;x\\x07\\x7f\\x85\\x9b\\u2028\\u2029\\u200e\\u200f\\u202a\\u202e\\u2066\\u2069é\\b';
  const rawBad = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/;
  const b = await fakeBroker('reply', { v: 1, ok: true, mounts });
  const r = client(['--socket', b.path, 'list']);
  assert.is(r.status, 0, r.stderr);
  assert.not.match(r.stdout, rawBad);
  assert.is(r.stdout.split('\n')[1], `5   running  ext4  rw    ${esc}  t${esc}  1000  61184`);
  const j = await fakeBroker('reply', { v: 1, ok: true, mounts });
  const rj = client(['--socket', j.path, '--json', 'list']);
  assert.is(rj.status, 0, rj.stderr);
  assert.not.match(rj.stdout, rawBad, 'JSON escapes, not the characters');
  assert.equal(JSON.parse(rj.stdout), { mounts }, 'the same values');
  // the echo of a mount point and a refusal's message are escaped too
  const target = join(dir, `m\u2028\u202e\u0085`);
  mkdirSync(target);
  const mb = await fakeBroker('reply', { v: 1, ok: true, id: 2 });
  const rm = client(['--socket', mb.path, 'mount', image, target]);
  await mb.seen();
  assert.is(rm.stdout, `mounted ${join(dir, 'm\\u2028\\u202e\\x85')} (id 2)\n`);
  const eb = await fakeBroker('reply', { v: 1, ok: false, code: 'EOPTION', message: `x${hostile}` });
  const re = client(['--socket', eb.path, 'list']);
  assert.is(re.stderr, `fuse-svc-request: EOPTION: x${esc}\n`);
  // a local error naming an argument
  const miss = client(['--socket', join(dir, 'none.sock'), 'mount', join(dir, 'n\u009b2J'), target]);
  assert.is(miss.status, 1);
  assert.is(miss.stderr, `fuse-svc-request: cannot open source ${join(dir, 'n\\x9b2J')}: ENOENT (No such file or directory)\n`);
});

test('unmount by id and by target: request JSON, O_PATH descriptor, --wait', async () => {
  const b = await fakeBroker('reply', { v: 1, ok: true, id: 7, exit_code: 0, exit_signal: 0 });
  const r = client(['--socket', b.path, 'unmount', '--id', '7', '--wait', '2.5']);
  const seen = await b.seen();
  assert.is(seen.request, '{"v":1,"op":"unmount","id":7,"timeout_ms":2500}');
  assert.is(seen.fds.length, 0);
  assert.is(r.stdout, 'unmounted id 7 (id 7)\n');
  assert.is(r.status, 0);
  const t = await fakeBroker('reply', { v: 1, ok: true, id: 3, exit_code: 0, exit_signal: 0 });
  const rt = client(['--socket', t.path, 'umount', mnt]);
  const st = await t.seen();
  assert.is(st.request, '{"v":1,"op":"unmount","fds":["target"]}');
  assert.is(st.fds.length, 1);
  assert.ok(st.fds[0].flags & O_PATH);
  assert.is(st.fds[0].ino, statSync(mnt).ino);
  assert.is(rt.stdout, `unmounted ${mnt} (id 3)\n`);
});

test('the binary is static and works in an empty root (chroot)', async () => {
  const re = spawnSync('readelf', ['-lW', CLIENT], { encoding: 'utf8', timeout: 10000 });
  if (re.error) throw new Error(`readelf: ${re.error.message}`);
  assert.not.match(re.stdout, /INTERP|Requesting program interpreter/, 'no dynamic loader');
  const dyn = spawnSync('readelf', ['-dW', CLIENT], { encoding: 'utf8', timeout: 10000 });
  assert.not.match(dyn.stdout, /NEEDED/, 'no shared libraries');
  const root = join(dir, 'emptyroot');
  mkdirSync(root);
  copyFileSync(CLIENT, join(root, 'fuse-svc-request'));
  const h = spawnSync('chroot', [root, '/fuse-svc-request', '--help'], { encoding: 'utf8', timeout: 10000 });
  assert.is(h.status, 0, h.stderr);
  assert.match(h.stdout, /SYNOPSIS/);
  const m = spawnSync('chroot', [root, '/fuse-svc-request', 'list'], { encoding: 'utf8', timeout: 10000 });
  assert.is(m.status, 1);
  assert.match(m.stderr, /cannot connect to \/run\/fuse-svc\/broker.sock: ENOENT/);
  const b = await fakeBroker('reply', { v: 1, ok: true, mounts: [] }, join(root, 'broker.sock'));
  const l = spawnSync('chroot', [root, '/fuse-svc-request', '--socket', '/broker.sock', 'list'], { encoding: 'utf8', timeout: 10000 });
  await b.seen();
  assert.is(l.status, 0, l.stderr);
  assert.is(l.stdout, 'no mounts\n');
});

test('the client carries exactly the protocol error table (supervisor/protocol.ts ERRORS)', () => {
  const src = readFileSync(join(ROOT, 'helper/native/client.c'), 'utf8');
  const block = /error_table\[\] = \{([\s\S]*?)\n\};/.exec(src);
  assert.ok(block, 'error_table[] found in client.c');
  const entries = [...block![1].matchAll(/\{"([A-Z_]+)", "((?:[^"\\]|\\.)*)"\}/g)].map((m) => [m[1], JSON.parse(`"${m[2]}"`) as string]);
  assert.equal(Object.fromEntries(entries), { ...ERRORS });
  assert.equal(entries.map((e) => e[0]), Object.keys(ERRORS), 'same order');
});

test("exit status and error codes: docs/protocol.md's tables = client.c = --help, and each status happens", async () => {
  const doc = readFileSync(join(ROOT, 'docs/protocol.md'), 'utf8');
  const exitBlock = /<!-- EXIT:BEGIN[^>]*-->([\s\S]*?)<!-- EXIT:END -->/.exec(doc);
  assert.ok(exitBlock, 'docs/protocol.md has the exit status table');
  const documented = [...exitBlock![1].matchAll(/^\| (\d+) \| (.+) \|$/gm)].map((m) => Number(m[1]));
  assert.equal(documented, [0, 1, 2, 64]);
  const src = readFileSync(join(ROOT, 'helper/native/client.c'), 'utf8');
  const defined = [...src.matchAll(/^#define EXIT_[A-Z]+ (\d+)$/gm)].map((m) => Number(m[1]));
  assert.equal([0, ...defined].sort((a, b) => a - b), documented, 'client.c defines exactly the documented statuses');
  const help = client(['--help']).stdout;
  const exitSection = /\nEXIT STATUS\n([\s\S]*?)\n\n/.exec(help)![1];
  assert.equal([...exitSection.matchAll(/^ {4}(\d+) /gm)].map((m) => Number(m[1])), documented, '--help lists the same statuses');
  // --help's ERRORS are docs/protocol.md's error table, code and meaning, in order.
  const errBlock = /<!-- ERRORS:BEGIN[^>]*-->([\s\S]*?)<!-- ERRORS:END -->/.exec(doc)![1];
  const docErrors = [...errBlock.matchAll(/^\| `([A-Z_]+)` \| (.+) \|$/gm)].map((m) => [m[1], m[2]]);
  const helpErrors = [...(/\nERRORS\n([\s\S]*?)\n\n/.exec(help)![1]).matchAll(/^ {4}([A-Z_]+) +(.+)$/gm)].map((m) => [m[1], m[2]]);
  assert.equal(helpErrors, docErrors);
  assert.is(docErrors.length, Object.keys(ERRORS).length);
  // Each status, as it really happens.
  const ok = await fakeBroker('reply', { v: 1, ok: true, mounts: [] });
  assert.is(client(['--socket', ok.path, 'list']).status, 0);
  assert.is(client(['--socket', join(dir, 'absent.sock'), 'list']).status, 1);
  for (const code of Object.keys(ERRORS)) {
    const b = await fakeBroker('reply', { v: 1, ok: false, code, message: `m ${code}` });
    const r = client(['--socket', b.path, 'list']);
    assert.is(r.status, 2, code);
    assert.is(r.stderr, `fuse-svc-request: ${code}: m ${code}\n`);
  }
  assert.is(client(['frob']).status, 64);
});

test('one client: package.json bin, the image, install-service.sh and the published copy are all this binary; no Node CLI', () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { bin: Record<string, string> };
  assert.is(pkg.bin['fuse-svc-request'], 'build/Release/fuse-svc-client');
  assert.equal(Object.keys(pkg.bin).sort(), ['fuse-svc-request', 'fuse-svcd'], 'no second client command');
  assert.not.ok(existsSync(join(ROOT, 'helper/request.ts')), 'the Node CLI is gone');
  const dockerfile = readFileSync(join(ROOT, 'docker/Dockerfile'), 'utf8');
  assert.match(dockerfile, /ln -sf \/opt\/fuse-svc\/build\/Release\/fuse-svc-client \/usr\/local\/bin\/fuse-svc-request;/);
  assert.match(readFileSync(join(ROOT, 'supervisor/main.ts'), 'utf8'), /'fuse-svc-client'[\s\S]*'fuse-svc-request'/, 'the broker publishes it as bin/fuse-svc-request');
  const dest = join(dir, 'destdir');
  const r = spawnSync('sh', [join(ROOT, 'scripts/install-service.sh'), 'runit', '--destdir', dest], { encoding: 'utf8', timeout: 15000 });
  assert.is(r.status, 0, r.stderr);
  assert.ok(readFileSync(join(dest, 'usr/local/bin/fuse-svc-request')).equals(readFileSync(CLIENT)), 'install-service.sh puts this binary on PATH');
  assert.is(statSync(join(dest, 'usr/local/bin/fuse-svc-request')).mode & 0o777, 0o755);
  // mount(8)'s and umount(8)'s helpers are the same binary, by name (test/mount-helper.test.ts)
  for (const h of ['mount.fuse-svc', 'umount.fuse-svc']) {
    assert.is(readlinkSync(join(dest, 'sbin', h)), '/usr/local/bin/fuse-svc-request', `sbin/${h}`);
    assert.match(dockerfile, new RegExp(`ln -sf /usr/local/bin/fuse-svc-request /sbin/${h.replace('.', '\\.')};`));
  }
});

test('end to end: the static client mounts, lists and unmounts through the real broker (uid 1000, own mount ns)', async () => {
  const work = harnessTmpdir('fuse-svc-client-e2e-');
  const bin = join(work, 'fuse-svc-request');
  copyFileSync(CLIENT, bin);
  chmodSync(bin, 0o755);
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  try {
    broker = await startBroker();
    caller = await newCaller();
    const sockArgs = [bin, '--socket', broker.socket];
    const img = await makeImage(work, 'disk.img', 16);
    const mnt2 = makeDir(join(work, 'mnt'));
    const m = await caller.run([...sockArgs, 'mount', '-t', 'ext4', '-o', 'rw', img, mnt2]);
    assert.is(m.exitCode, 0, `${m.stderr}\n${broker.logs()}`);
    const id = /^mounted (.*) \(id (\d+)\)\n$/.exec(m.stdout + '\n');
    assert.ok(id && id[1] === mnt2, m.stdout);
    assert.ok(caller.fuseMounts().includes(mnt2), 'mounted in the caller namespace');
    const w = await caller.run(['sh', '-c', `echo hello > "${mnt2}/f" && cat "${mnt2}/f"`]);
    assert.is(w.stdout, 'hello', w.stderr);

    const l = await caller.run([...sockArgs, 'list']);
    assert.is(l.exitCode, 0, l.stderr);
    const row = l.stdout.split('\n')[1] ?? '';
    assert.match(row, new RegExp(`^${id![2]}\\s+running\\s+ext4\\s+rw\\s+${img}\\s+${mnt2}\\s+1000\\s+\\d+$`), l.stdout);
    const lj = await caller.run([...sockArgs, '--json', 'list']);
    const mounts = JSON.parse(lj.stdout).mounts as { id: number; target: string; state: string }[];
    assert.equal(mounts.map((x) => [x.id, x.target, x.state]), [[Number(id![2]), mnt2, 'running']]);

    const again = await caller.run([...sockArgs, 'mount', img, mnt2]);
    assert.is(again.exitCode, 2, 'a refusal exits 2');
    assert.match(again.stderr, /^fuse-svc-request: [A-Z_]+: .+$/, 'execa strips the final newline');

    const ui = await caller.run([...sockArgs, 'unmount', '--id', id![2]]);
    assert.is(ui.exitCode, 0, ui.stderr);
    assert.is(ui.stdout, `unmounted id ${id![2]} (id ${id![2]})`, 'execa strips the final newline');
    assert.not.ok(caller.fuseMounts().includes(mnt2), 'detached');

    // again, read-only, and unmounted by its mount point
    const ro = await caller.run([...sockArgs, 'mount', '-o', 'ro', img, mnt2]);
    assert.is(ro.exitCode, 0, ro.stderr);
    const r2 = await caller.run(['cat', `${mnt2}/f`]);
    assert.is(r2.stdout, 'hello', 'the data is still there');
    const u = await caller.run([...sockArgs, 'unmount', mnt2]);
    assert.is(u.exitCode, 0, u.stderr);
    assert.match(u.stdout, new RegExp(`^unmounted ${mnt2} \\(id \\d+\\)$`));
    assert.not.ok(caller.fuseMounts().includes(mnt2), 'detached');
  } finally {
    await broker?.stop();
    await caller?.close();
    rmSync(work, { recursive: true, force: true });
  }
});

test.run();
