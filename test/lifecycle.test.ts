// Instance lifecycle through broker kills and restarts (issue 10; issue 9 §5 logs): a SIGKILL of
// the broker while mounts are in flight (the static client, so requests really are) leaves
// records the next broker adopts; ids are never reused; `fuse-svcd stop` ends socket-activated
// unit instances that serve after their connection closed; a starting broker collects what
// instances and launchers left; instance logs stay within their caps under a flood.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { chownSync, existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { DAEMON, NATIVE, ROOT, clientArgs, instanceProcesses, makeDir, makeImage, newCaller, sleep, startBroker, tmpdir, waitFor, type Broker, type Caller } from './lib/harness.js';
import { INSTANCE_LOG_MAX, planLogCaps } from '../supervisor/logcap.js';

const STATIC = path.join(NATIVE, 'fuse-svc-client');
const s = suite('instance lifecycle');
let caller: Caller;
let dir: string;
const brokers: Broker[] = [];

s.before(async () => {
  dir = tmpdir();
  caller = await newCaller();
});

s.after(async () => {
  for (const b of brokers) await b.stop().catch(() => {});
  // Whatever a failed test left mounted in the caller's namespace.
  for (const m of caller?.fuseMounts() ?? []) await caller.run(['umount', '-l', m], { uid: 0 });
  await caller?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function broker(o: { runtimeDir?: string; config?: Record<string, unknown>; args?: string[] } = {}): Promise<Broker> {
  const b = await startBroker(o);
  brokers.push(b);
  return b;
}

type Listed = { id: number; owner_uid: number; target: string; state: string; reason: string | null };
async function list(b: Broker, uid = 0): Promise<Listed[]> {
  const r = await caller.run([STATIC, '--socket', b.socket, '--json', 'list'], { uid, timeout: 15000 });
  assert.is(r.exitCode, 0, `list: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { mounts: Listed[] }).mounts;
}

const instDir = (b: Broker) => path.join(b.runtimeDir, 'instances');

/** Ids whose launcher runs (its fd 2 is the instance log) but whose record has no mount ids yet. */
function inFlight(b: Broker): number[] {
  const running = new Set(instanceProcesses(b.runtimeDir).map((p) => {
    try {
      return /\/(\d+)\.log$/.exec(readlinkSync(`/proc/${p.pid}/fd/2`))?.[1];
    } catch {
      return undefined;
    }
  }));
  return files(b)
    .map((f) => /^(\d+)\.json$/.exec(f)?.[1])
    .filter((id): id is string => id !== undefined && running.has(id))
    .filter((id) => {
      try {
        return !readFileSync(path.join(instDir(b), `${id}.json`), 'utf8').includes('mnt_id');
      } catch {
        return false;
      }
    })
    .map(Number);
}
const files = (b: Broker) => readdirSync(instDir(b)).sort();

s('SIGKILL of the broker during in-flight mounts: every mount is adopted, listed once with a unique id, and unmountable', async () => {
  const cfg = { pool_size: 0 };
  const b1 = await broker({ config: cfg });
  const n = 6;
  const imgs: string[] = [];
  const mnts: string[] = [];
  for (let i = 0; i < n; i++) {
    imgs.push(await makeImage(dir, `flight-${i}.img`, 8));
    mnts.push(makeDir(path.join(dir, `mnt-flight-${i}`)));
  }
  // Earlier ids, forgotten before the kill: the next broker must not hand them out again.
  const pre = await caller.run([STATIC, '--socket', b1.socket, '--json', 'mount', imgs[0], mnts[0]]);
  assert.is(pre.exitCode, 0, pre.stderr);
  const preId = (JSON.parse(pre.stdout) as { id: number }).id;
  assert.is((await caller.run([STATIC, '--socket', b1.socket, 'unmount', mnts[0]])).exitCode, 0);
  await list(b1, 1000); // reported once to its owner, then forgotten (its files removed)
  await waitFor('the ended instance forgotten', () => !existsSync(path.join(instDir(b1), `${preId}.json`)), 5000);

  const clients = mnts.map((m, i) => caller.run([STATIC, '--socket', b1.socket, '--json', 'mount', imgs[i], m], { timeout: 30000 }));
  // In flight: a record is on disk and its launcher has not answered yet (no mount ids).
  await waitFor('a mount in flight', () => inFlight(b1).length >= 2, 20000, 2);
  b1.proc.kill('SIGKILL');
  await waitFor('broker 1 to die', () => b1.proc.signalCode !== null, 5000);
  const answers = await Promise.all(clients);
  const answered = answers.filter((a) => a.exitCode === 0).length;

  const b2 = await broker({ runtimeDir: b1.runtimeDir, config: cfg });
  // Launchers the killed broker started finish on their own; the new one follows their state.
  await waitFor('no instance still starting', async () => (await list(b2)).every((m) => m.state !== 'starting'), 20000, 200);
  const mounted = caller.fuseMounts().filter((m) => mnts.includes(m));
  const listed = (await list(b2)).filter((m) => m.state === 'running');
  assert.ok(mounted.length > answered, `some mount completed after its broker died (${mounted.length} mounted, ${answered} answered)\n${b2.logs()}`);
  for (const m of mounted) assert.is(listed.filter((l) => l.target === m).length, 1, `${m} listed exactly once: ${JSON.stringify(listed)}`);
  assert.is(listed.length, mounted.length, 'nothing listed that is not mounted');
  const ids = listed.map((l) => l.id);
  assert.is(new Set(ids).size, ids.length, 'ids are unique');
  assert.ok(ids.every((id) => id > preId), `no id reused (${ids.join(',')} after ${preId})`);
  assert.match(b2.logs(), /re-adopted/);

  // A mount through the new broker: a fresh id too.
  const extra = makeDir(path.join(dir, 'mnt-flight-extra'));
  const x = await caller.run([STATIC, '--socket', b2.socket, '--json', 'mount', await makeImage(dir, 'flight-extra.img', 8), extra]);
  assert.is(x.exitCode, 0, x.stderr);
  const xid = (JSON.parse(x.stdout) as { id: number }).id;
  assert.ok(!ids.includes(xid) && xid > preId, `new id ${xid}`);
  listed.push({ id: xid, owner_uid: 1000, target: extra, state: 'running', reason: null });

  // Every one unmountable, alternately by path and by id.
  for (const [i, l] of listed.entries()) {
    const u = await caller.run(i % 2 ? [STATIC, '--socket', b2.socket, 'unmount', '--id', String(l.id)] : [STATIC, '--socket', b2.socket, 'unmount', l.target], { timeout: 20000 });
    assert.is(u.exitCode, 0, `unmount ${l.id} (${i % 2 ? 'id' : 'path'}): ${u.stderr}`);
  }
  assert.equal(caller.fuseMounts().filter((m) => m.startsWith(dir)), [], 'no mount left');
  await waitFor('no instance process left', () => instanceProcesses(b2.runtimeDir).length === 0, 10000);
  for (const img of [...imgs, path.join(dir, 'flight-extra.img')]) {
    const fsck = await execa('e2fsck', ['-fn', img], { reject: false });
    assert.is(fsck.exitCode, 0, `${img}: ${fsck.stdout}`);
  }
  await b2.stop();
});

s('a broker restart never reuses an id, also of an instance that ended and was forgotten', async () => {
  const b1 = await broker({ config: { pool_size: 0 } });
  const img = await makeImage(dir, 'ids.img', 8);
  const mnt = makeDir(path.join(dir, 'mnt-ids'));
  const seen: number[] = [];
  let b = b1;
  for (let round = 0; round < 3; round++) {
    const m = await caller.run([STATIC, '--socket', b.socket, '--json', 'mount', img, mnt]);
    assert.is(m.exitCode, 0, m.stderr);
    seen.push((JSON.parse(m.stdout) as { id: number }).id);
    assert.is((await caller.run([STATIC, '--socket', b.socket, 'unmount', mnt])).exitCode, 0);
    await list(b, 1000); // forgotten: no file names the id any more
    b.proc.kill('SIGKILL');
    await waitFor('the broker to die', () => b.proc.signalCode !== null, 5000);
    b = await broker({ runtimeDir: b1.runtimeDir, config: { pool_size: 0 } });
  }
  assert.is(new Set(seen).size, seen.length, `ids ${seen.join(',')}`);
  assert.ok(seen.every((id, i) => i === 0 || id > seen[i - 1]), `ids grow: ${seen.join(',')}`);
  assert.ok(seen.every((id) => String(id).length <= 4), `ids stay short: ${seen.join(',')}`);
  await b.stop();
});

s('fuse-svcd stop ends a socket-activated unit instance that serves after its connection closed', async () => {
  const udir = path.join(dir, 'units-stop');
  const unitDir = path.join(udir, 'units');
  mkdirSync(unitDir, { recursive: true });
  const socket = path.join(udir, 'sock', 'service_ll');
  const fixtures = path.join(ROOT, 'test', 'fixtures', 'units');
  writeFileSync(path.join(unitDir, 'service_ll.socket'), readFileSync(path.join(fixtures, 'service_ll.socket'), 'utf8').replace(/^ListenSequentialPacket=.*$/m, `ListenSequentialPacket=${socket}`));
  writeFileSync(path.join(unitDir, 'service_ll@.service'), readFileSync(path.join(fixtures, 'service_ll@.service'), 'utf8').replace(/^ExecStart=.*$/m, `ExecStart=${path.join(NATIVE, 'service-server')}`));
  const b = await broker({ args: ['--units', unitDir] });
  await waitFor('the unit socket', () => b.logs().includes('service_ll.socket: listening'), 10000);
  const src = path.join(udir, 'source.txt');
  writeFileSync(src, 'served after BYE\n');
  const mp = makeDir(path.join(udir, 'mnt'), 0);
  // Upstream's helper: the server sends BYE, the connection closes, the server serves on.
  const c = await caller.run([path.join(NATIVE, 'service-client'), '--no-umount', socket, 'service_ll', src, mp], { uid: 0, timeout: 30000 });
  assert.is(c.exitCode, 0, `${c.stdout} ${c.stderr}\n${b.logs()}`);
  assert.ok(caller.fuseMounts().includes(mp), 'the unit mount is there');
  const unitFiles = files(b).filter((f) => f.endsWith('.unit'));
  assert.is(unitFiles.length, 1, `one unit record: ${files(b).join(' ')}`);
  const rec = JSON.parse(readFileSync(path.join(instDir(b), unitFiles[0]), 'utf8')) as { launcher_pid: number; unit: string };
  assert.ok(existsSync(`/proc/${rec.launcher_pid}`), 'its launcher runs');
  const still = await caller.run(['cat', path.join(mp, 'hello')], { uid: 0 });
  assert.is(still.stdout.trim(), 'served after BYE', 'served after the connection closed');

  const stop = await execa(process.execPath, [DAEMON, 'stop', '--runtime-dir', b.runtimeDir, '--timeout', '20000'], { reject: false, timeout: 30000 });
  assert.is(stop.exitCode, 0, stop.stderr);
  assert.match(stop.stderr, new RegExp(`stop: unit instance \\d+ \\(${rec.unit.replace(/[.@]/g, '\\$&')}`));
  assert.match(stop.stderr, /full stop: 1 instance\(s\) unmounted and ended/);
  await waitFor('the unit launcher gone', () => {
    try {
      return readFileSync(`/proc/${rec.launcher_pid}/stat`, 'utf8').split(') ')[1][0] === 'Z';
    } catch {
      return true;
    }
  }, 5000);
  assert.equal(files(b).filter((f) => f.endsWith('.unit')), [], 'its record removed');
  await b.exit();
  // The server is gone: the mount it served is dead; its owner (root) removes it.
  await caller.run(['umount', '-l', mp], { uid: 0 });
  assert.not.ok(caller.fuseMounts().includes(mp));
});

s('a starting broker collects state files, pool logs and orphan files; ended records are listed for the usual window', async () => {
  const b1 = await broker({ config: { pool_size: 1 } });
  await waitFor('a pooled launcher', () => files(b1).some((f) => /^pool-\d+\.log$/.test(f)), 10000);
  const img = await makeImage(dir, 'gc.img', 8);
  const mnt = makeDir(path.join(dir, 'mnt-gc'));
  const m = await caller.run([STATIC, '--socket', b1.socket, '--json', 'mount', img, mnt]);
  assert.is(m.exitCode, 0, m.stderr);
  const id = (JSON.parse(m.stdout) as { id: number }).id;
  // The pool refills after the reply: a new idle launcher with its pool log.
  await waitFor('the pool refilled', () => files(b1).some((f) => /^pool-\d+\.log$/.test(f)), 10000);
  b1.proc.kill('SIGKILL');
  await waitFor('broker 1 to die', () => b1.proc.signalCode !== null, 5000);
  // The instance ends while no broker runs: its launcher unmounts on SIGTERM.
  const rec = JSON.parse(readFileSync(path.join(instDir(b1), `${id}.json`), 'utf8')) as { launcher_pid: number };
  process.kill(rec.launcher_pid, 'SIGTERM');
  await waitFor('the instance to end', () => readFileSync(path.join(instDir(b1), `${id}.state`), 'utf8').includes('state=exited'), 15000);
  await waitFor('no instance process', () => instanceProcesses(b1.runtimeDir).length === 0, 10000);
  const pools = files(b1).filter((f) => /^pool-\d+\.log$/.test(f));
  assert.ok(pools.length > 0, 'the killed broker left pool logs');
  // What else piles up: a state file whose launcher is gone and that has no record, a lone
  // log, a temporary file left half-way, and an instance that ended long ago.
  const d = instDir(b1);
  const old = (Date.now() - 3600_000) / 1000;
  writeFileSync(path.join(d, '9001.state'), 'state=running\nlauncher_pid=999999\nlauncher_start=1\nserver_pid=0\nmnt_id=0\nmnt_id_old=0\nexit_code=-1\nexit_signal=0\nreason=\nended_at=0\n');
  writeFileSync(path.join(d, '9002.log'), 'a log nothing names\n');
  utimesSync(path.join(d, '9002.log'), old, old);
  writeFileSync(path.join(d, '9003.state.tmp'), 'state=');
  utimesSync(path.join(d, '9003.state.tmp'), old, old);
  // A killed broker's half-written record: only a broker writes those, and the new one holds
  // the lock, so it goes at once however recent.
  writeFileSync(path.join(d, '9006.json.tmp'), '{"id":9006');
  const ancient = { id: 9004, owner_uid: 1000, owner_gid: 1000, fstype: 'ext4', options: 'rw', source: '/old.img', target: '/old', uid: 61999, server: 'fuse2fs', started_at: Date.now() - 3600_000 };
  writeFileSync(path.join(d, '9004.json'), JSON.stringify(ancient));
  writeFileSync(path.join(d, '9004.state'), `state=exited\nlauncher_pid=1\nlauncher_start=1\nserver_pid=0\nmnt_id=0\nmnt_id_old=0\nexit_code=0\nexit_signal=0\nreason=unmounted\nended_at=${Date.now() - 11 * 60_000}\n`);
  writeFileSync(path.join(d, '9004.log'), 'ended 11 minutes ago\n');
  const recent = { ...ancient, id: 9005 };
  writeFileSync(path.join(d, '9005.json'), JSON.stringify(recent));
  writeFileSync(path.join(d, '9005.state'), `state=exited\nlauncher_pid=1\nlauncher_start=1\nserver_pid=0\nmnt_id=0\nmnt_id_old=0\nexit_code=0\nexit_signal=0\nreason=unmounted\nended_at=${Date.now() - 9 * 60_000}\n`);

  const b2 = await broker({ runtimeDir: b1.runtimeDir, config: { pool_size: 0 } });
  const left = files(b2);
  for (const f of [...pools, '9001.state', '9002.log', '9003.state.tmp', '9006.json.tmp', '9004.json', '9004.state', '9004.log']) assert.not.ok(left.includes(f), `${f} collected (left: ${left.join(' ')})`);
  assert.match(b2.logs(), /runtime dir: removed \d+ file\(s\)/);
  const l = await list(b2);
  assert.equal(l.map((x) => [x.id, x.state]).sort(), [[id, 'exited'], [9005, 'exited']], 'the two recently ended instances are listed');
  assert.not.ok(l.some((x) => x.id === 9004), 'the one ended 11 minutes ago is not');
  assert.ok(left.includes(`${id}.json`) && left.includes('9005.json'), 'ended records kept for their window');
  // Listed to their owner once, then forgotten (as any ended instance).
  await list(b2, 1000);
  await waitFor('records removed after the owner saw them', () => !files(b2).includes(`${id}.json`) && !files(b2).includes('9005.json'), 5000);
  assert.not.ok(caller.fuseMounts().includes(mnt));
  const fsck = await execa('e2fsck', ['-fn', img], { reject: false });
  assert.is(fsck.exitCode, 0, fsck.stdout);
  await b2.stop();
});

s('log caps: the plan drops ended logs oldest first, then truncates live ones, per uid and in all', () => {
  const M = 1 << 20;
  const e = (id: number, uid: number, mib: number, live: boolean, at: number) => ({ id, uid, bytes: mib * M, live, at });
  const entries = [e(1, 1000, 1, false, 10), e(2, 1000, 1, false, 20), e(3, 1000, 1, false, 30), e(4, 0, 1, false, 5), e(5, 0, 1, true, 40)];
  const p = planLogCaps(entries, 3 * M, 2 * M);
  assert.equal(p.drop.map((x) => x.id).sort(), [1, 4], 'uid 1000 over 2 MiB loses its oldest; in all, the oldest of anyone');
  assert.equal(p.truncate, []);
  const live = planLogCaps([e(1, 1000, 1, true, 1), e(2, 1000, 2, true, 2), e(3, 1000, 0.5, false, 3)], 8 * M, 2 * M);
  assert.equal(live.drop.map((x) => x.id), [3], 'ended first');
  assert.equal(live.truncate.map((x) => x.id), [2], 'then the largest live one');
});

s('a server that floods its log over many instances: the logs stay within the per-uid and total caps, oldest ended dropped first', async () => {
  const serverDir = path.join(dir, 'flood-server');
  mkdirSync(serverDir, { recursive: true });
  writeFileSync(
    path.join(serverDir, 'hang.json'),
    JSON.stringify({
      name: 'hang',
      description: 'fuse-hang test server, flooding',
      fstypes: ['hang'],
      exec: '/opt/fuse-hang',
      argv: ['fuse-hang', 'flood', '{source}', '{mountpoint}'],
      fuseFd: 'devfd',
      source: 'seccomp-notify',
      seccompPolicy: 'fuse2fs',
      sandbox: path.relative(serverDir, path.join(ROOT, 'server', 'fuse2fs.sandbox')),
      paths: [{ src: path.join(NATIVE, 'fuse-hang'), dst: '/opt/fuse-hang' }],
      readyTimeoutMs: 5000,
      stopTimeoutMs: 2000,
    }),
  );
  const perUser = 2 * INSTANCE_LOG_MAX + 64 * 1024; // room for two full logs per uid
  const total = 3 * INSTANCE_LOG_MAX + 64 * 1024;
  const b = await broker({ config: { server_dir: serverDir, fstypes: ['hang'], pool_size: 0, log_cap_bytes: total, log_cap_bytes_per_user: perUser } });
  const src = path.join(dir, 'flood-source');
  writeFileSync(src, 'source\n');
  chownSync(src, 1000, 1000);
  const mnt = makeDir(path.join(dir, 'mnt-flood'));
  const rootMnt = makeDir(path.join(dir, 'mnt-flood-root'), 0);
  // Sizes of the instance logs, sampled all along (per owner, from the records).
  const owner = new Map<number, number>();
  let maxTotal = 0;
  const maxPer = new Map<number, number>();
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      let sum = 0;
      const per = new Map<number, number>();
      for (const f of readdirSync(instDir(b))) {
        const m = /^(\d+)\.log$/.exec(f);
        if (!m) continue;
        let size = 0;
        try {
          size = statSync(path.join(instDir(b), f)).size;
        } catch {
          continue;
        }
        const uid = owner.get(Number(m[1])) ?? -1;
        sum += size;
        per.set(uid, (per.get(uid) ?? 0) + size);
      }
      maxTotal = Math.max(maxTotal, sum);
      for (const [u, v] of per) maxPer.set(u, Math.max(maxPer.get(u) ?? 0, v));
      await sleep(10);
    }
  })();
  const ids: { id: number; uid: number }[] = [];
  const flood = async (uid: number, target: string) => {
    const m = await caller.run([STATIC, '--socket', b.socket, '--json', 'mount', '-t', 'hang', '-o', 'ro', src, target], { uid, timeout: 20000 });
    assert.is(m.exitCode, 0, m.stderr);
    const id = (JSON.parse(m.stdout) as { id: number }).id;
    owner.set(id, uid);
    ids.push({ id, uid });
    // Let it fill its log to the launcher's 1 MiB cap.
    await waitFor(`log ${id} full`, () => readFileSync(path.join(instDir(b), `${id}.log`), 'utf8').includes('dropping the rest'), 10000, 20);
    const u = await caller.run([STATIC, '--socket', b.socket, 'unmount', target], { uid, timeout: 20000 });
    assert.is(u.exitCode, 0, u.stderr);
  };
  try {
    for (let i = 0; i < 5; i++) await flood(1000, mnt);
    for (let i = 0; i < 3; i++) await flood(0, rootMnt);
  } finally {
    sampling = false;
    await sampler;
  }
  assert.ok((maxPer.get(1000) ?? 0) <= perUser, `uid 1000's logs peaked at ${maxPer.get(1000)} bytes (cap ${perUser})`);
  assert.ok(maxTotal <= total, `all logs peaked at ${maxTotal} bytes (cap ${total})`);
  assert.ok(maxTotal > 2 * 1024 * 1024, `the flood really filled logs (${maxTotal} bytes)`);
  const present = ids.filter((x) => existsSync(path.join(instDir(b), `${x.id}.log`))).map((x) => x.id);
  // Oldest ended first, per uid and in all: uid 1000 kept its two newest until uid 0's
  // second instance needed room in all (its oldest went, then uid 0's own oldest, past its
  // per-uid cap); what is left: uid 1000's last and uid 0's last two.
  assert.equal(present, [ids[4].id, ids[6].id, ids[7].id], `kept ${present.join(',')} of ${ids.map((x) => x.id).join(',')}`);
  // Records stay listed (only logs went).
  const l = await list(b);
  assert.ok(ids.every((x) => l.some((m) => m.id === x.id && m.state === 'exited')), 'ended instances still listed');
  assert.match(b.logs(), /instance logs over their cap/);
  await b.stop();
});

s.run();
