// Deterministic corruptions of each shipped format (issue 11): seeded byte flips in the head
// and the tail of the image (where these formats keep their metadata), a zeroed superblock /
// volume descriptor / central directory, a truncation. Each is contained: the start is refused
// with a documented code and one line, or the mount serves (errors allowed) and unmounts, or the
// server dies and its mount is detached. The broker keeps serving (a good image mounts after),
// its descriptor count returns, and no server or launcher is left.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { ERRORS } from '../../supervisor/protocol.js';
import { clientArgs, fdCount, makeDir, waitFor, type Broker, type Caller, openEnv, closeEnv } from '../lib/harness.js';
import { prng } from '../lib/prng.js';
import { instanceTree, makeFormatImage, makeTree, type Format } from '../lib/servers.js';

const s = suite('corrupted images of every shipped read-only format are contained');
let dir: string;
let broker: Broker;
let caller: Caller;
let tree: string;

s.before(async () => {
  ({ dir, broker, caller } = await openEnv({ config: { pool_size: 0 } }));
  tree = await makeTree(dir);
});

s.after(async () => {
  await closeEnv({ dir, broker, caller });
});


type Corruption = { name: string; apply: (b: Buffer, fstype: Format) => Buffer };
const WINDOW = 128 << 10;
const flips = (seed: number, where: 'head' | 'tail'): Corruption => ({
  name: `64 seeded byte flips in the ${where} (seed ${seed})`,
  apply: (b) => {
    const r = prng(seed);
    const out = Buffer.from(b);
    const span = Math.min(WINDOW, out.length);
    const base = where === 'head' ? 0 : out.length - span;
    for (let i = 0; i < 64; i++) out[base + Math.floor(r() * span)] ^= 1 + Math.floor(r() * 255);
    return out;
  },
});
const CORRUPTIONS: Corruption[] = [
  flips(1, 'head'),
  flips(2, 'tail'),
  flips(3, 'head'),
  {
    name: 'the superblock / volume descriptor / central directory zeroed',
    apply: (b, t) => {
      const out = Buffer.from(b);
      const at = t === 'iso9660' ? 32768 : t === 'zip' ? Math.max(0, out.length - 4096) : 0;
      out.fill(0, at, Math.min(out.length, at + 4096));
      return out;
    },
  },
  { name: 'truncated to half', apply: (b) => b.subarray(0, Math.floor(b.length / 2)) },
];

const FORMATS: Format[] = ['squashfs', 'iso9660', 'zip', 'archive'];

s('every corruption of every format: refused cleanly, served, or its server dies detached; the broker keeps serving', async () => {
  const brokerPid = broker.proc.pid!;
  const fdBase = fdCount(brokerPid);
  const outcomes: string[] = [];
  let n = 0;
  for (const fstype of FORMATS) {
    const sub = path.join(dir, fstype);
    mkdirSync(sub);
    const good = await makeFormatImage(sub, fstype, tree);
    const bytes = readFileSync(good);
    for (const c of CORRUPTIONS) {
      const img = path.join(sub, `bad-${n}.img`);
      writeFileSync(img, c.apply(bytes, fstype), { mode: 0o600 });
      await execa('chown', ['1000:1000', img]);
      const mnt = makeDir(path.join(sub, `mnt-${n++}`));
      const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', '-t', fstype, '-o', 'ro', img, mnt));
      if (m.exitCode !== 0) {
        const code = /^fuse-svc-request: ([A-Z_]+): /.exec(m.stderr)?.[1] ?? '';
        assert.ok(code in ERRORS, `${fstype}, ${c.name}: a documented code: ${m.stderr}`);
        assert.is(m.stderr.trim().split('\n').length, 1, 'one line');
        assert.equal(caller.fuseMounts().filter((x) => x === mnt), [], 'nothing mounted');
        outcomes.push(`${fstype} / ${c.name}: refused ${code}`);
        continue;
      }
      const { server_pid: pid } = JSON.parse(m.stdout) as { server_pid: number };
      // Read everything; errors are fine, an answer is what is asked (bounded).
      const r = await caller.run(['timeout', '30', 'sh', '-c', `find "${mnt}" -type f -exec cat {} + > /dev/null 2>&1; echo done`], { timeout: 40000 });
      const died = !caller.fuseMounts().includes(mnt) || !isAlive(pid);
      if (died) {
        await waitFor(`${fstype}, ${c.name}: the dead server's mount to be detached`, () => !caller.fuseMounts().includes(mnt), 10000);
        outcomes.push(`${fstype} / ${c.name}: the server died, its mount was detached`);
      } else {
        assert.match(r.stdout, /done/, `${fstype}, ${c.name}: reading finished within 30 s`);
        const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
        assert.is(u.exitCode, 0, `${fstype}, ${c.name}: unmount: ${u.stderr}`);
        outcomes.push(`${fstype} / ${c.name}: served and unmounted`);
      }
      await waitFor('the server to be gone', () => !isAlive(pid), 15000);
    }
    // Ordinary use still works: the good image mounts and reads.
    const mnt = makeDir(path.join(sub, 'mnt-good'));
    const g = await caller.run(clientArgs(broker.socket, 'mount', '-t', fstype, '-o', 'ro', good, mnt));
    assert.is(g.exitCode, 0, g.stderr);
    assert.is((await caller.run(['cat', path.join(mnt, 'name with space')])).stdout, 'spaced');
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
  }
  await waitFor('no instance process left', () => instanceTree(broker.runtimeDir).length === 0, 15000);
  await waitFor('the broker to give its descriptors back', () => fdCount(brokerPid) <= fdBase + 2, 10000);
  assert.equal(caller.fuseMounts(), []);
  if (process.env.FUSE_SVC_TEST_VERBOSE) process.stderr.write(outcomes.join('\n') + '\n');
  assert.is(outcomes.length, FORMATS.length * CORRUPTIONS.length);
});

function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

s.run();
