// Fault injection (issue 10): callers in two mount namespaces (uid 1000 and root) mount and
// unmount without pause through the static client, so requests really are in flight, while the
// broker is SIGKILLed (sometimes SIGTERMed) at seeded random moments and restarted on the same
// runtime dir, and instance launchers, idle pooled launchers and servers are SIGKILLed in
// between. Then the invariants of test/lib/fault-invariants.ts. The seed fixes the schedule of
// faults and of each worker's choices (timing still varies with the machine); every failure
// message carries it. Used by test/faults-inject.test.ts (bounded) and, as a longer run, by
//   node dist/test/lib/fault-run.js --seed S --seconds N   (npm run faults:long)
import { readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { sweepRuntimeDir } from '../../supervisor/cgroups.js';
import { CLIENT, DAEMON, ROOT, instanceProcesses, makeDir, makeImage, newCaller, sleep, startBroker, tmpdir, waitFor, type Broker, type Caller, madeRuntimeDir } from './harness.js';
import { prng } from './prng.js';
import { checkAccounted, checkCgroups, checkCollected, checkNothingLeft, checkProcesses, fuseMountIdsAt, fuseMountsOf, isOrphan, listAll, pooledOf, type Listed, type Party } from './fault-invariants.js';

export type FaultOptions = { seed: number; seconds: number; workersPerCaller?: number; poolSize?: number; log?: (s: string) => void; keepLog?: boolean };

export type FaultResult = {
  seed: number;
  seconds: number;
  rounds: number;
  faults: Record<string, number>;
  mounts: number;
  unmounts: number;
  refusals: Record<string, number>;
  readopted: number;
  /** Mounts found at the end: live, and dead ones left by killed launchers. */
  endLive: number;
  endOrphans: number;
  violations: string[];
  /** Unmounts answered ok while every FUSE mount at the target stayed (the lie the run checks for). */
  okButMounted: string[];
  /** Where the timeline and every broker's log went when something broke. */
  logFile?: string;
};


const codeOf = (stderr: string) => {
  const code = /fuse-svc-request: ([A-Z][A-Z0-9_]+):/.exec(stderr)?.[1];
  if (code) return code;
  if (/cannot connect/.test(stderr)) return 'no broker listening';
  if (/closed the connection/.test(stderr)) return 'broker died before answering';
  return (stderr.trim().split('\n').pop() ?? '').slice(0, 60);
};

export async function runFaults(o: FaultOptions): Promise<FaultResult> {
  const say = o.log ?? (() => {});
  const t0 = Date.now();
  const timeline: string[] = [];
  const note = (s: string) => timeline.push(`${((Date.now() - t0) / 1000).toFixed(3)} ${s}`);
  const rnd = prng(o.seed);
  const res: FaultResult = { seed: o.seed, seconds: o.seconds, rounds: 0, faults: {}, mounts: 0, unmounts: 0, refusals: {}, readopted: 0, endLive: 0, endOrphans: 0, violations: [], okButMounted: [] };
  const fault = (k: string) => (res.faults[k] = (res.faults[k] ?? 0) + 1);
  const refused = (k: string, stderr = '') => {
    res.refusals[k] = (res.refusals[k] ?? 0) + 1;
    // The broker being away is the fault itself; anything else is worth its whole line.
    if (stderr && !/cannot connect|closed the connection/.test(stderr)) note(`${k}: ${stderr.trim()}`);
  };
  const dir = tmpdir('fuse-svc-faults-');
  const runtimeDir = madeRuntimeDir();
  const socket = path.join(runtimeDir, 'public', 'broker.sock');
  const config = { pool_size: o.poolSize ?? 1 };
  const def = JSON.parse(readFileSync(path.join(ROOT, 'server', 'fuse2fs.json'), 'utf8')) as { cgroup?: { pidsMax?: number; memoryMax?: number } };
  const brokers: Broker[] = [];
  const parties: Party[] = [];
  let current: Broker | undefined;
  const start = async (): Promise<Broker> => {
    // The killed broker's lock goes with its process: a refusal (75) here would be a bug.
    const b = await startBroker({ runtimeDir, config });
    brokers.push(b);
    note(`broker ${b.proc.pid} listening`);
    return b;
  };
  // Outside the try: a failed run must stop its workers too, or they retry for ever.
  let running = true;
  let workers: Promise<void>[] = [];
  try {
    for (const [name, uid] of [['uid1000', 1000], ['root', 0]] as const) {
      const caller = await newCaller();
      parties.push({ name, caller, uid, dir: makeDir(path.join(dir, name), uid) });
    }
    type Slot = { p: Party; img: string; mnt: string; rnd: () => number };
    const slots: Slot[] = [];
    const per = o.workersPerCaller ?? 3;
    for (const p of parties) {
      for (let i = 0; i < per; i++) {
        slots.push({ p, img: await makeImage(p.dir, `img-${i}`, 8, 'ext4', p.uid), mnt: makeDir(path.join(p.dir, `mnt-${i}`), p.uid), rnd: prng(o.seed * 31 + slots.length + 1) });
      }
    }
    const deadline = t0 + o.seconds * 1000;
    const client = (s: Slot, ...args: string[]) => s.p.caller.run([CLIENT, '--socket', socket, ...args], { uid: s.p.uid, timeout: 40000 });
    // An unmount answered ok removed a mount: some FUSE mount at the target before it is gone
    // after it. (A mount that a lost reply left in flight may attach meanwhile: only a removal
    // counts, never the count.) A launcher killed mid-unmount must not be answered ok.
    const unmount = async (s: Slot, ...args: string[]) => {
      const before = fuseMountIdsAt(s.p, s.mnt);
      const u = await client(s, 'unmount', ...args);
      if (u.exitCode === 0) {
        res.unmounts++;
        const after = new Set(fuseMountIdsAt(s.p, s.mnt));
        if (before.length && before.every((id) => after.has(id))) {
          res.okButMounted.push(`unmount ${args.join(' ')} (${s.p.name}) answered ok, but every FUSE mount at ${s.mnt} (mount ids ${before.join(',')}) is still there`);
          note(`LIE: ${res.okButMounted[res.okButMounted.length - 1]}`);
        }
      } else refused(`unmount:${codeOf(u.stderr)}`, u.stderr);
      return u;
    };
    // One worker per slot: mount, use, unmount by path or id; a mount it lost track of (the
    // broker died before answering) is unmounted by path first.
    const worker = async (s: Slot) => {
      while (running) {
        if (fuseMountsOf(s.p).includes(s.mnt)) {
          const u = await unmount(s, s.mnt);
          await sleep(u.exitCode === 0 ? 0 : 50 + s.rnd() * 150);
          continue;
        }
        const ro = s.rnd() < 0.7;
        const m = await client(s, '--json', 'mount', ...(ro ? ['-o', 'ro'] : []), s.img, s.mnt);
        if (m.exitCode !== 0) {
          refused(`mount:${codeOf(m.stderr)}`, m.stderr);
          await sleep(20 + s.rnd() * 100);
          continue;
        }
        res.mounts++;
        // The run is ending: this mount stays for the invariants to find.
        if (!running) return;
        const id = (JSON.parse(m.stdout) as { id: number }).id;
        const use = ro ? ['ls', s.mnt] : ['sh', '-c', `echo ${id} > '${s.mnt}/w' && cat '${s.mnt}/w'`];
        await s.p.caller.run(['timeout', '10', ...use], { uid: s.p.uid, timeout: 15000 });
        await sleep(s.rnd() * 200);
        const byId = s.rnd() < 0.5;
        await unmount(s, ...(byId ? ['--id', String(id)] : [s.mnt]));
      }
    };
    // Covered mount points (the injector's), and when each is uncovered.
    const covers = new Map<Slot, number>();
    const uncover = async (s: Slot) => {
      // Whatever mounted on the cover meanwhile (a mount in flight) goes first: umount(2) of
      // the top, which ends a broker instance as any umount does.
      for (let i = 0; i < 6 && s.p.caller.mountinfo().split('\n').some((l) => l.split(' ')[4] === s.mnt && l.includes(` - tmpfs ${COVER} `)); i++) {
        await s.p.caller.run(['umount', s.mnt], { uid: 0, timeout: 10000 });
      }
      covers.delete(s);
      note(`uncover ${s.p.name} ${s.mnt}`);
    };
    const coverOne = async (until: number) => {
      const open = slots.filter((x) => !covers.has(x) && fuseMountsOf(x.p).includes(x.mnt));
      const s = open[Math.floor(rnd() * open.length)];
      if (!s) return;
      const c = await s.p.caller.run(['mount', '-t', 'tmpfs', '-o', 'mode=1777,size=1m', COVER, s.mnt], { uid: 0, timeout: 10000 });
      if (c.exitCode !== 0) return;
      note(`cover ${s.p.name} ${s.mnt}`);
      fault('mount point covered');
      covers.set(s, until);
    };
    current = await start();
    workers = slots.map((s) => worker(s));
    // The injector: rounds of one broker's life with launcher and server kills in them.
    for (;;) {
      res.rounds++;
      const roundEnd = Math.min(deadline, Date.now() + 300 + rnd() * 2700);
      while (Date.now() < roundEnd) {
        await sleep(80 + rnd() * 300);
        for (const [s, until] of covers) if (Date.now() >= until) await uncover(s);
        const r = rnd();
        const inst = instanceProcesses(runtimeDir);
        const pick = <T>(xs: T[]) => xs[Math.floor(rnd() * xs.length)];
        if (r < 0.15) {
          const l = pick(inst.filter((p) => p.comm.startsWith('fuse-svc-launch')));
          if (l) {
            note(`SIGKILL launcher ${l.pid}`);
            fault('launcher SIGKILL');
            try {
              process.kill(l.pid, 'SIGKILL');
            } catch {
              /* gone meanwhile */
            }
          }
        } else if (r < 0.22) {
          const l = pick(pooledOf(runtimeDir));
          if (l) {
            note(`SIGKILL pooled launcher ${l}`);
            fault('pooled launcher SIGKILL');
            try {
              process.kill(l, 'SIGKILL');
            } catch {
              /* gone */
            }
          }
        } else if (r < 0.34) {
          // A caller covers its own mount point (what a lost mount reply does: the worker
          // mounts again over its first mount). The covered mount's end, by a stop or its
          // server's death, must leave a record its owner can remove once it is uncovered.
          await coverOne(Date.now() + 300 + rnd() * 1500);
        } else if (r < 0.42) {
          const sv = pick(inst.filter((p) => p.comm.startsWith('fuse2fs')));
          if (sv) {
            note(`SIGKILL server ${sv.pid}`);
            fault('server SIGKILL');
            try {
              process.kill(sv.pid, 'SIGKILL');
            } catch {
              /* gone */
            }
          }
        }
      }
      // The last fault is always a SIGKILL with requests in flight: what it leaves is checked.
      const lastRound = Date.now() >= deadline;
      // Every run, however short, covers a mount point at least once (the case of seed
      // 1023004967): here, with requests in flight, kept until the workers are done.
      if (lastRound && !res.faults['mount point covered']) {
        await waitFor('a mounted slot to cover', () => slots.some((x) => fuseMountsOf(x.p).includes(x.mnt)), 5000, 20).catch(() => note('no mount to cover'));
        await coverOne(Infinity);
      }
      if (lastRound) running = false;
      const term = !lastRound && rnd() < 0.2;
      const b = current;
      // Half the time, the moment a launcher is between spawn and readiness (its record has no
      // mount ids yet), the window where a broker used to lose the mount; bounded.
      if (!term && (lastRound || rnd() < 0.5)) {
        const found = await waitFor('a mount in flight', () => inFlight(runtimeDir).length > 0, 2000, 2).catch(() => false);
        note(found ? `in flight: ${inFlight(runtimeDir).join(',')}` : 'no mount caught in flight');
        if (found) fault('broker SIGKILL with a mount in flight');
      }
      note(`${term ? 'SIGTERM' : 'SIGKILL'} broker ${b.proc.pid}`);
      fault(term ? 'broker SIGTERM' : 'broker SIGKILL');
      if (term) await b.exit();
      else {
        b.proc.kill('SIGKILL');
        await waitFor(`broker ${b.proc.pid} to die (seed ${o.seed})`, () => b.proc.exitCode !== null || b.proc.signalCode !== null, 5000);
      }
      // No broker for a moment: requests fail, instances may end with no one watching.
      if (lastRound) {
        note('faults stop; waiting for the workers');
        await Promise.all(workers);
        for (const s of [...covers.keys()]) await uncover(s);
      } else await sleep(rnd() * 500);
      current = await start();
      if (lastRound) break;
    }
    const b = current;
    say(`    seed ${o.seed}: ${res.rounds} rounds, ${res.mounts} mounts, ${res.unmounts} unmounts, faults ${JSON.stringify(res.faults)}`);

    // ---- the invariants ---------------------------------------------------------------------
    const v = res.violations;
    v.push(...res.okButMounted.map((x) => `honest: ${x}`));
    const via = parties[1].caller;
    await waitFor(`no instance still starting (seed ${o.seed})`, async () => (await listAll(b, 0, via)).every((l) => l.state === 'starting' ? false : true), 25000, 200).catch((e: Error) => v.push(`settle: ${e.message}`));
    // A launcher ending right now (its server was killed) must finish its own teardown first.
    await sleep(300);
    const listed = await listAll(b, 0, via);
    note(`listed: ${listed.map((l) => `${l.id}:${l.state}${isOrphan(l) ? '(orphan)' : ''}`).join(' ')}`);
    v.push(...checkAccounted(parties, listed));
    v.push(...checkProcesses(runtimeDir, b, listed));
    v.push(...checkCgroups(runtimeDir, listed, def.cgroup ?? {}));
    res.endLive = listed.filter((l) => l.state !== 'exited').length;
    res.endOrphans = listed.filter(isOrphan).length;

    // Every mount can be unmounted by its owner: live ones by id or path, dead ones by path.
    for (const p of parties) {
      for (let pass = 0; pass < 3 && fuseMountsOf(p).length; pass++) {
        const now = await listAll(b, 0, via);
        for (const m of [...new Set(fuseMountsOf(p))]) {
          // A worker whose mount reply was lost to a broker kill mounts again on the same
          // directory: stacked mounts, the newest on top. Those are unmounted by id, top first
          // (by path only the top one is reachable: "not the root of broker mount N").
          const rows = now.filter((l) => l.target === m && l.owner_uid === p.uid && l.state !== 'exited').sort((a, b) => b.id - a.id);
          const row = rows[0];
          const calls = rows.length > 1 ? rows.map((r) => ['--id', String(r.id)]) : [row && pass === 0 && row.id % 2 ? ['--id', String(row.id)] : [m]];
          for (const args of calls) {
            const u = await p.caller.run([CLIENT, '--socket', socket, 'unmount', ...args], { uid: p.uid, timeout: 30000 });
            if (u.exitCode !== 0) note(`final unmount ${p.name} ${args.join(' ')}: ${u.stderr.trim()}`);
            if (u.exitCode !== 0 && pass === 2) v.push(`unmountable: ${p.name}: unmount ${args.join(' ')} (owner uid ${p.uid}) failed: ${u.stderr.trim()}`);
          }
        }
      }
      const left = fuseMountsOf(p);
      if (left.length) v.push(`unmountable: ${p.name}: still mounted after unmounting everything: ${left.join(' ')}`);
    }
    await waitFor('instances gone after the unmounts', () => instanceProcesses(runtimeDir).length === 0, 15000).catch(() => v.push(`unmountable: instance processes left after every unmount: ${instanceProcesses(runtimeDir).map((p) => `${p.pid} ${p.comm}`).join(', ')}`));
    const after = await listAll(b, 0, via);
    for (const l of after.filter((x) => x.state !== 'exited')) v.push(`unmountable: instance ${l.id} (${l.target}) still listed ${l.state} after every mount was unmounted`);

    // The final full stop, then nothing left; then a broker collects the rest.
    await b.stop();
    v.push(...(await checkNothingLeft(runtimeDir, brokers)));
    const last = await start();
    for (const p of parties) await listAll(last, p.uid, p.caller).catch((e: Error) => v.push(`collected: ${e.message}`));
    await last.stop();
    v.push(...checkCollected(runtimeDir));
    v.push(...(await checkNothingLeft(runtimeDir, brokers)));
    res.readopted = brokers.reduce((n, x) => n + (x.logs().match(/re-adopted/g) ?? []).length, 0);
  } catch (e) {
    res.violations.push(`run: ${(e as Error).message}`);
  } finally {
    running = false;
    await Promise.race([Promise.allSettled(workers), sleep(60000)]);
    if (res.violations.length || o.keepLog) {
      res.logFile = path.join(os.tmpdir(), `fuse-svc-faults-seed-${o.seed}.log`);
      writeFileSync(res.logFile, [`seed ${o.seed}, ${o.seconds} s`, ...res.violations.map((x) => `VIOLATION ${x}`), '', ...timeline, '', ...brokers.map((x) => `---- broker ${x.proc.pid}\n${x.logs()}`)].join('\n'));
    }
    // Clean up whatever the run or a failed check left: full stop, then by pid, mounts, cgroups.
    for (const x of brokers) if (x.proc.exitCode === null && x.proc.signalCode === null) x.proc.kill('SIGKILL');
    await execa(process.execPath, [DAEMON, 'stop', '--runtime-dir', runtimeDir, '--timeout', '10000'], { reject: false, timeout: 30000 });
    for (const p of [...instanceProcesses(runtimeDir).map((q) => q.pid), ...pooledOf(runtimeDir)]) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const p of parties) {
      for (const m of p.caller.fuseMounts()) await p.caller.run(['umount', '-l', m], { uid: 0 });
      await p.caller.close();
    }
    await sleep(100);
    sweepRuntimeDir(runtimeDir);
    rmSync(dir, { recursive: true, force: true });
    rmSync(runtimeDir, { recursive: true, force: true });
  }
  return res;
}

/** The source name of the injector's covering tmpfs mounts. */
const COVER = 'faultcover';

/** Ids whose launcher runs but whose record has no mount ids yet: a mount in flight. */
function inFlight(runtimeDir: string): number[] {
  const out: number[] = [];
  for (const p of instanceProcesses(runtimeDir)) {
    try {
      const id = /\/instances\/(\d+)\.log$/.exec(readlinkSync(`/proc/${p.pid}/fd/2`))?.[1];
      if (id && !readFileSync(path.join(runtimeDir, 'instances', `${id}.json`), 'utf8').includes('mnt_id')) out.push(Number(id));
    } catch {
      /* gone, or no record */
    }
  }
  return out;
}

export function describe(r: FaultResult): string {
  const refusals = Object.entries(r.refusals).sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ${n}`).join(', ');
  return `seed ${r.seed}, ${r.seconds} s: ${r.rounds} broker lives, faults ${Object.entries(r.faults).map(([k, n]) => `${k} ${n}`).join(', ')}; ${r.mounts} mounts and ${r.unmounts} unmounts answered ok, ${r.readopted} re-adoptions; at the end ${r.endLive} live and ${r.endOrphans} dead (launcher killed) mount(s) accounted for; refused/failed: ${refusals || 'none'}`;
}

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const seed = arg('seed', Math.floor(Math.random() * 2 ** 31));
  const seconds = arg('seconds', 300);
  console.log(`fault run: seed ${seed}, ${seconds} s (rerun: node dist/test/lib/fault-run.js --seed ${seed} --seconds ${seconds})`);
  const r = await runFaults({ seed, seconds, workersPerCaller: arg('workers', 3), poolSize: arg('pool', 1), log: (s) => console.log(s), keepLog: true });
  console.log(describe(r));
  if (r.violations.length) {
    console.log(`${r.violations.length} invariant violation(s) (seed ${seed}; timeline and broker logs in ${r.logFile}):\n  ${r.violations.join('\n  ')}`);
    process.exit(1);
  }
  console.log('every invariant held');
}
