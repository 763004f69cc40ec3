// A launcher killed outright (its container was killed) takes its server with it and leaves
// the mount dead (ENOTCONN) in the caller's namespace, where the caller cannot remove it. A
// later broker lists it and detaches it when its owner asks.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { clientArgs, instanceProcesses, makeDir, makeImage, newCaller, startBroker, tmpdir, waitFor, madeRuntimeDir, type Broker, type Caller } from './lib/harness.js';

/** The end of every test here: the processes it killed or stopped, its broker, any mount left in
 * the caller's namespace, the caller and the directory; each step runs even when one before failed. */
async function teardown(dir: string, broker: Broker | undefined, caller: Caller | undefined, pids: (number | undefined)[] = []): Promise<void> {
  for (const pid of pids) if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  try {
    await broker?.stop();
  } finally {
    for (const m of caller?.fuseMounts() ?? []) await caller!.run(['umount', '-l', m], { uid: 0 }).catch(() => undefined);
    await caller?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('a mount left dead by a killed launcher is listed and its owner can unmount it', async () => {
  const dir = tmpdir();
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  try {
    broker = await startBroker();
    caller = await newCaller();
    const img = await makeImage(dir, 'disk.img', 16);
    const mnt = makeDir(path.join(dir, 'mnt'));
    const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', img, mnt));
    assert.is(m.exitCode, 0, m.stderr);
    const runtimeDir = broker.runtimeDir;
    await broker.exit();
    const launcher = instanceProcesses(runtimeDir).find((p) => p.comm.startsWith('fuse-svc-launch'));
    assert.ok(launcher, 'the launcher outlived the broker');
    process.kill(launcher!.pid, 'SIGKILL');
    await waitFor('the server to die with its launcher', () => instanceProcesses(runtimeDir).length === 0, 5000);
    const stat = await caller.run(['stat', mnt]);
    assert.match(stat.stderr, /Transport endpoint is not connected/, 'the mount is dead');
    // (On a host, util-linux's setuid umount would let uid 1000 remove its own FUSE mount;
    // in a container with no_new_privs, which is where launchers get killed, nothing can.)

    broker = await startBroker({ runtimeDir });
    const l = await caller.run(clientArgs(broker.socket, '--json', 'list'));
    const listed = JSON.parse(l.stdout).mounts;
    assert.is(listed.length, 1);
    assert.is(listed[0].state, 'exited');
    assert.match(listed[0].reason, /launcher was killed/);
    // Listed again: an orphan stays until its owner unmounts it.
    assert.is(JSON.parse((await caller.run(clientArgs(broker.socket, '--json', 'list'))).stdout).mounts.length, 1);
    const other = await caller.run(clientArgs(broker.socket, 'unmount', mnt), { uid: 1001 });
    assert.is.not(other.exitCode, 0, 'nobody else may');
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
    assert.not.ok(caller.fuseMounts().includes(mnt), 'detached');
    assert.not.match(readFileSync(`/proc/${caller.pid}/mountinfo`, 'utf8'), new RegExp(` ${mnt} `));
    assert.match(broker.logs(), /detached the dead mount/);
    assert.equal(JSON.parse((await caller.run(clientArgs(broker.socket, '--json', 'list'))).stdout).mounts, []);
  } finally {
    await teardown(dir, broker, caller);
  }
});

test('a launcher killed after it detached its mount (its server still flushing) leaves no dead-mount record; the next broker lists it once and collects it', async () => {
  const dir = tmpdir();
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  let server: number | undefined;
  try {
    broker = await startBroker({ config: { pool_size: 0 } });
    caller = await newCaller();
    const img = await makeImage(dir, 'disk.img', 16);
    const mnt = makeDir(path.join(dir, 'mnt'));
    const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', img, mnt));
    assert.is(m.exitCode, 0, m.stderr);
    const { id, server_pid } = JSON.parse(m.stdout) as { id: number; server_pid: number };
    server = server_pid;
    const runtimeDir = broker.runtimeDir;
    const state = path.join(runtimeDir, 'instances', `${id}.state`);
    // A stopped server cannot exit: the launcher detaches, then waits for it.
    process.kill(server_pid, 'SIGSTOP');
    const unmount = caller.run(clientArgs(broker.socket, 'unmount', mnt), { timeout: 30000 });
    await waitFor('the launcher to say it detached', () => /^state=stopping$/m.test(readFileSync(state, 'utf8')) && /^detached=1$/m.test(readFileSync(state, 'utf8')), 10000);
    assert.not.ok(caller.fuseMounts().includes(mnt), 'the mount is gone from the caller\'s namespace');
    const launcher = instanceProcesses(runtimeDir).find((p) => p.comm.startsWith('fuse-svc-launch'));
    assert.ok(launcher, 'the launcher is still waiting for its server');
    process.kill(launcher!.pid, 'SIGKILL');
    await unmount;
    await waitFor('the server to die with its launcher', () => instanceProcesses(runtimeDir).length === 0, 5000);
    const l = await caller.run(clientArgs(broker.socket, '--json', 'list'), { uid: 0 });
    const row = (JSON.parse(l.stdout).mounts as { id: number; state: string; reason: string }[]).find((x) => x.id === id);
    assert.ok(row, 'still listed once');
    assert.is(row!.state, 'exited');
    assert.not.match(row!.reason, /left dead/, `not a dead mount: ${row!.reason}`);
    assert.match(row!.reason, /after it detached/);
    // Without a broker the same: the next one lists it for the usual window, then collects it.
    await broker.exit();
    broker = await startBroker({ runtimeDir, config: { pool_size: 0 } });
    const l2 = await caller.run(clientArgs(broker.socket, '--json', 'list'));
    const rows = JSON.parse(l2.stdout).mounts as { id: number; reason: string }[];
    assert.is(rows.length, 1, JSON.stringify(rows));
    assert.not.match(rows[0].reason, /left dead/);
    await waitFor('its files collected once its owner saw it', () => !existsSync(state) && !existsSync(path.join(runtimeDir, 'instances', `${id}.json`)), 5000);
  } finally {
    await teardown(dir, broker, caller, [server]);
  }
});

test('an unmount cut short by a SIGKILL of the launcher before it detached is not answered ok: EMOUNT_LEFT, listed, and the owner\'s next unmount removes the dead mount', async () => {
  const dir = tmpdir();
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  let launcherPid: number | undefined;
  try {
    broker = await startBroker({ config: { pool_size: 0 } });
    caller = await newCaller();
    const img = await makeImage(dir, 'disk.img', 16);
    const mnt = makeDir(path.join(dir, 'mnt'));
    const m = await caller.run(clientArgs(broker.socket, '--json', 'mount', img, mnt));
    assert.is(m.exitCode, 0, m.stderr);
    const { id } = JSON.parse(m.stdout) as { id: number };
    const runtimeDir = broker.runtimeDir;
    const launcher = instanceProcesses(runtimeDir).find((p) => p.comm.startsWith('fuse-svc-launch'));
    assert.ok(launcher);
    launcherPid = launcher!.pid;
    // A stopped launcher cannot act on the broker's SIGTERM: the unmount is in flight, nothing
    // is detached yet; then the launcher is killed, as a container kill or the OOM killer does.
    process.kill(launcherPid, 'SIGSTOP');
    const unmount = caller.run(clientArgs(broker.socket, 'unmount', '--id', String(id)), { timeout: 30000 });
    await waitFor('the broker to ask the launcher', () => /SigPnd:\s*0*[1-9a-f]|ShdPnd:\s*0*[1-9a-f]/.test(readFileSync(`/proc/${launcherPid}/status`, 'utf8')), 10000);
    process.kill(launcherPid, 'SIGKILL');
    const u = await unmount;
    assert.is(u.exitCode, 2, `not ok: ${u.stdout} ${u.stderr}`);
    assert.ok(/^fuse-svc-request: EMOUNT_LEFT: /.test(u.stderr), u.stderr);
    await waitFor('the server to die with its launcher', () => instanceProcesses(runtimeDir).length === 0, 5000);
    assert.ok(caller.fuseMounts().includes(mnt), 'the dead mount is really still there: the refusal told the truth');
    const rows = JSON.parse((await caller.run(clientArgs(broker.socket, '--json', 'list'))).stdout).mounts as { id: number; state: string; reason: string }[];
    assert.is(rows.length, 1);
    assert.match(rows[0].reason, /launcher was killed/);
    // Removed behind the broker's back (root's umount(8) in that namespace): the owner's next
    // list, from that namespace, finds no mount of that id there; reported once, then collected.
    const um = await caller.run(['umount', '-l', mnt], { uid: 0 });
    assert.is(um.exitCode, 0, um.stderr);
    const after = JSON.parse((await caller.run(clientArgs(broker.socket, '--json', 'list'))).stdout).mounts as { id: number; state: string; reason: string }[];
    assert.is(after.length, 1);
    assert.is(after[0].state, 'exited');
    assert.match(after[0].reason, /not in the caller's namespace/);
    assert.equal(JSON.parse((await caller.run(clientArgs(broker.socket, '--json', 'list'))).stdout).mounts, [], 'collected once reported');
    await waitFor('its files collected', () => !existsSync(path.join(runtimeDir, 'instances', `${id}.json`)), 5000);
  } finally {
    await teardown(dir, broker, caller, [launcherPid]);
  }
});

test('unmount by path picks the instance whose recorded mount point it is: a stale dead-mount record that names the same (reused) mount id elsewhere is not taken, for a live mount nor for a dead one', async () => {
  const dir = tmpdir();
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  try {
    const runtimeDir = madeRuntimeDir();
    broker = await startBroker({ runtimeDir, config: { pool_size: 0 } });
    await broker.exit();
    // Real instances get ids from 10: the stale records below (ids 5, 6) come first in the
    // broker's table, as the older records of reused mount ids do.
    writeFileSync(path.join(runtimeDir, 'instances', 'next-id'), '10\n');
    broker = await startBroker({ runtimeDir, config: { pool_size: 0 } });
    caller = await newCaller();
    const mountAt = async (name: string) => {
      const img = await makeImage(dir, `${name}.img`, 16);
      const mnt = makeDir(path.join(dir, name));
      const m = await caller!.run(clientArgs(broker!.socket, '--json', 'mount', img, mnt));
      assert.is(m.exitCode, 0, m.stderr);
      const mntId = caller!.mountinfo().split('\n').find((l) => l.split(' ')[4] === mnt && / - fuse/.test(l))!.split(' ')[0];
      return { mnt, id: (JSON.parse(m.stdout) as { id: number }).id, mntId };
    };
    const live = await mountAt('live');
    const dead = await mountAt('dead');
    // dead's launcher is killed: its mount is left dead, its record a dead-mount record.
    const rec = JSON.parse(readFileSync(path.join(runtimeDir, 'instances', `${dead.id}.json`), 'utf8')) as { launcher_pid: number };
    await broker.exit();
    process.kill(rec.launcher_pid, 'SIGKILL');
    await waitFor('dead\'s server gone with its launcher', () => instanceProcesses(runtimeDir).filter((p) => p.comm.startsWith('fuse2fs')).length === 1 && !existsSync(`/proc/${rec.launcher_pid}`), 5000);
    // Records of mounts long gone elsewhere whose mount ids the kernel has since reused for these two.
    for (const [id, mntId] of [[5, live.mntId], [6, dead.mntId]] as const) {
      const stale = { id, owner_uid: 1000, owner_gid: 1000, fstype: 'ext4', options: 'rw', source: '/old.img', target: `/gone-${id}`, uid: 61999, server: 'fuse2fs', started_at: Date.now() - 1000, launcher_pid: 999999, launcher_start: '1', mnt_id: '1', mnt_id_old: mntId, target_path: `/gone-${id}` };
      writeFileSync(path.join(runtimeDir, 'instances', `${id}.json`), JSON.stringify(stale));
      writeFileSync(path.join(runtimeDir, 'instances', `${id}.state`), `state=running\nlauncher_pid=999999\nlauncher_start=1\nmnt_id_old=${mntId}\n`);
    }
    broker = await startBroker({ runtimeDir, config: { pool_size: 0 } });
    const rows = JSON.parse((await caller.run(clientArgs(broker.socket, '--json', 'list'))).stdout).mounts as { id: number; state: string; reason: string }[];
    assert.equal(rows.map((r) => [r.id, r.state]), [[5, 'exited'], [6, 'exited'], [live.id, 'running'], [dead.id, 'exited']], JSON.stringify(rows));
    const u1 = await caller.run(clientArgs(broker.socket, 'unmount', live.mnt));
    assert.is(u1.exitCode, 0, `the live mount, not stale record 5: ${u1.stderr}`);
    assert.not.ok(caller.fuseMounts().includes(live.mnt));
    const u2 = await caller.run(clientArgs(broker.socket, 'unmount', dead.mnt));
    assert.is(u2.exitCode, 0, `the dead mount, not stale record 6: ${u2.stderr}`);
    assert.not.ok(caller.fuseMounts().includes(dead.mnt));
    assert.match(broker.logs(), new RegExp(`instance ${dead.id}: detached the dead mount`));
    const left = (JSON.parse((await caller.run(clientArgs(broker.socket, '--json', 'list'))).stdout).mounts as { id: number }[]).map((r) => r.id);
    assert.ok(left.includes(5) && left.includes(6), 'the stale records are still there, untouched');
  } finally {
    await teardown(dir, broker, caller);
  }
});

test.run();
