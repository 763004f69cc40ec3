// Issue 9 §5 (list) and §6 (escaping): `list` answers with any number of mounts, by pages that
// never pass the reply cap, and names a caller chose cannot drive the terminal of whoever lists
// them. A real broker, real mounts: one uid makes N ended mounts whose source and target names
// are about 1 KiB and hold C1 controls, U+2028/9 and bidi controls; root's `list` answers, every
// mount is there exactly once (library, raw pages, static client --json and table), the owner's
// list forgets them page by page without losing one, and ordinary use still works after.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import * as sock from '../../helper/native/socket.js';
import { BrokerClient, receivePacket } from '../../helper/client.js';
import { MAX_NAME_BYTES, MAX_REPLY_BYTES } from '../../supervisor/protocol.js';
import { rawRequest } from '../lib/raw.js';
import { NATIVE, ROOT, USER, fdCount, instanceProcesses, makeDir, makeImage, newCaller, startBroker, tmpdir, waitFor, type Broker, type Caller } from '../lib/harness.js';

const CLIENT = path.join(NATIVE, 'fuse-svc-client');
const WORKER = path.join(ROOT, 'dist', 'test', 'lib', 'list-worker.js');
const N = 40;
// What must never reach a terminal raw: C1 (NEL, CSI), the line/paragraph separators, bidi overrides.
const HOSTILE = '\u0085\u009b31m\u2028\u2029\u202e\u2066';
const RAW_BAD = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/;
const FIELDS = ['id', 'owner_uid', 'fstype', 'options', 'source', 'target', 'uid', 'state', 'started_at', 'server_pid', 'exit_code', 'exit_signal', 'reason'];

const s = suite('adversary: list answers with any number of mounts; names are escaped on output');
let dir: string;
let broker: Broker;
let caller: Caller;
let image: string;
let target: string;
let ids: number[] = [];

/** A directory path of about `bytes` bytes under base, in components of at most 200 bytes. */
function deepDir(base: string, bytes: number): string {
  let p = base;
  while (Buffer.byteLength(p) < bytes) p = path.join(p, 'n'.repeat(Math.min(200, Math.max(1, bytes - Buffer.byteLength(p) - 1))));
  mkdirSync(p, { recursive: true, mode: 0o755 });
  return p;
}

type Page = { ok: boolean; mounts: Record<string, unknown>[]; next: number | null; code?: string };

/** One raw list request as root; the reply's size and body. */
async function rawList(body: Record<string, unknown>): Promise<{ bytes: number; page: Page }> {
  const fd = sock.connectSeqpacket(broker.socket);
  try {
    sock.send(fd, Buffer.from(JSON.stringify({ v: 1, op: 'list', ...body })), []);
    const r = await receivePacket(fd, 10000);
    return { bytes: r.data.length, page: JSON.parse(r.data.toString('utf8')) as Page };
  } finally {
    sock.close(fd);
  }
}

function once(list: number[]): void {
  assert.equal([...list].sort((a, b) => a - b), [...ids].sort((a, b) => a - b), 'every mount exactly once');
}

s.before(async () => {
  dir = tmpdir('fuse-svc-adv-list-');
  // Names of about 1 KiB (the broker's limit is 1024 bytes), the hostile characters at the end.
  const deep = deepDir(dir, MAX_NAME_BYTES - 40);
  image = await makeImage(deep, `d${HOSTILE}.img`, 4);
  target = makeDir(path.join(deep, `m${HOSTILE}`));
  assert.ok(Buffer.byteLength(image) > 1000 && Buffer.byteLength(image) <= MAX_NAME_BYTES, `source name ${Buffer.byteLength(image)} bytes`);
  assert.ok(Buffer.byteLength(target) > 1000 && Buffer.byteLength(target) <= MAX_NAME_BYTES, `target name ${Buffer.byteLength(target)} bytes`);
  broker = await startBroker({ config: { rate_per_second: 10000, rate_burst: 10000 } });
  caller = await newCaller();
});

s.after(async () => {
  await broker?.stop();
  await caller?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

s(`one uid makes ${N} ended mounts with 1 KiB names; root's list answers, by pages under the cap, each mount once`, async () => {
  const fds0 = fdCount(broker.proc.pid!);
  const t0 = Date.now();
  const w = await caller.run([process.execPath, WORKER, 'cycles', broker.socket, image, target, String(N)], { uid: USER, timeout: 180000 });
  assert.is(w.exitCode, 0, `worker: ${w.stderr}\n${broker.logs().slice(-2000)}`);
  ids = JSON.parse(w.stdout) as number[];
  assert.is(ids.length, N);
  console.log(`    ${N} mount+unmount cycles in ${Date.now() - t0} ms`);
  await waitFor('the instances to end', () => instanceProcesses(broker.runtimeDir).length === 0, 20000);

  // Raw pages: each reply under the cap, says whether more follow, ids strictly ascending.
  const seen: number[] = [];
  let after = 0;
  let pages = 0;
  let biggest = 0;
  for (;;) {
    const { bytes, page } = await rawList(pages === 0 ? {} : { after });
    pages++;
    assert.ok(page.ok, JSON.stringify(page).slice(0, 300));
    assert.ok(bytes <= MAX_REPLY_BYTES, `page ${pages}: ${bytes} bytes`);
    biggest = Math.max(biggest, bytes);
    assert.ok('next' in page, 'the reply says whether more follow');
    for (const m of page.mounts) {
      assert.ok((m.id as number) > after, 'ids ascend across pages');
      seen.push(m.id as number);
      assert.is(m.source, image, 'the name is whole, not trimmed');
      assert.is(m.target, target);
      assert.is(m.state, 'exited');
      assert.not.ok('trimmed' in m);
    }
    if (page.next === null) break;
    assert.is(page.next, page.mounts.at(-1)!.id, 'next is the last id of the page');
    after = page.next;
    assert.ok(pages < N, 'the walk ends');
  }
  console.log(`    root's list: ${pages} pages, the largest ${biggest} bytes`);
  assert.ok(pages >= 2, 'the mounts did not fit one reply: paging was exercised');
  once(seen);

  // The library follows the pages.
  const lib = await new BrokerClient({ socket: broker.socket }).list();
  once(lib.map((m) => m.id));

  // The static client: one object holding every mount, with the documented fields, valid JSON,
  // no raw hostile character anywhere in its bytes.
  const t1 = Date.now();
  const j = spawnSync(CLIENT, ['--socket', broker.socket, '--json', 'list'], { encoding: 'utf8', timeout: 30000 });
  const jms = Date.now() - t1;
  assert.is(j.status, 0, j.stderr);
  assert.not.match(j.stdout, RAW_BAD, 'JSON output holds escapes, not the characters');
  assert.ok(j.stdout.includes('\\u2028') && j.stdout.includes('\\u0085') && j.stdout.includes('\\u202e'), 'escaped as JSON \\u');
  const doc = JSON.parse(j.stdout) as { mounts: Record<string, unknown>[] };
  assert.equal(Object.keys(doc), ['mounts'], 'one object {"mounts":[...]}');
  once(doc.mounts.map((m) => m.id as number));
  for (const m of doc.mounts) {
    assert.equal(Object.keys(m), FIELDS, "docs/protocol.md's fields");
    assert.is(m.source, image, 'the value survives the escaping');
    assert.is(m.target, target);
  }
  console.log(`    static client --json list of ${N}: ${jms} ms, ${j.stdout.length} bytes`);

  // The table: one row per mount, names escaped by the broker log's rule.
  const t = spawnSync(CLIENT, ['--socket', broker.socket, 'list'], { encoding: 'utf8', timeout: 30000 });
  assert.is(t.status, 0, t.stderr);
  assert.not.match(t.stdout, RAW_BAD, 'no raw control, separator or bidi character reaches the terminal');
  const rows = t.stdout.trimEnd().split('\n');
  assert.is(rows.length, N + 1, 'a header and one row per mount');
  const esc = '\\x85\\x9b31m\\u2028\\u2029\\u202e\\u2066';
  for (const row of rows.slice(1)) {
    assert.ok(row.includes(`d${esc}.img`) && row.includes(`m${esc}`), row.slice(-200));
    assert.match(row, /exited/);
  }
  assert.equal(rows.slice(1).map((r) => Number(r.split(' ')[0])).sort((a, b) => a - b), [...ids].sort((a, b) => a - b));
  await waitFor('the broker fd count back to its baseline', () => fdCount(broker.proc.pid!) <= fds0, 10000);
});

s('hostile cursors are refused with EPROTO_FIELD; a cursor past the end is an empty last page', async () => {
  for (const after of [-1, 'x', 2 ** 31, 1.5, null, {}]) {
    const r = await rawRequest(broker.socket, JSON.stringify({ v: 1, op: 'list', after }));
    assert.ok(r !== 'closed' && !r.ok && r.code === 'EPROTO_FIELD', `after ${JSON.stringify(after)}: ${JSON.stringify(r)}`);
  }
  const end = await rawList({ after: 2 ** 31 - 1 });
  assert.equal([end.page.mounts, end.page.next], [[], null]);
  const mid = await rawList({ after: ids[N - 2]! });
  assert.equal(mid.page.mounts.map((m) => m.id), [ids[N - 1]], 'after names where the page starts');
});

s("the owner's list follows the pages while it forgets what it was shown: nothing lost, then nothing left", async () => {
  const run = (args: string[]) => caller.run([CLIENT, '--socket', broker.socket, ...args], { uid: USER, timeout: 30000 });
  const first = await run(['--json', 'list']);
  assert.is(first.exitCode, 0, first.stderr);
  once((JSON.parse(first.stdout) as { mounts: { id: number }[] }).mounts.map((m) => m.id));
  const again = await run(['--json', 'list']);
  assert.equal(JSON.parse(again.stdout), { mounts: [] }, 'each ended mount was shown to its owner once');
  const root = await rawList({});
  assert.equal([root.page.mounts.length, root.page.next], [0, null], 'and is forgotten');

  // Ordinary use still works: a mount, listed (in its table) by its owner, then unmounted.
  const m = await run(['mount', image, target]);
  assert.is(m.exitCode, 0, m.stderr);
  assert.ok(m.stdout.startsWith('mounted ') && !RAW_BAD.test(m.stdout), `the echo of the target is escaped: ${m.stdout.slice(-80)}`);
  const l = await run(['list']);
  assert.match(l.stdout.split('\n')[1] ?? '', /^\d+\s+running\s+ext4/);
  const u = await run(['unmount', target]);
  assert.is(u.exitCode, 0, u.stderr);
  assert.is(caller.fuseMounts().length, 0, 'no mount left');
});

s.run();
