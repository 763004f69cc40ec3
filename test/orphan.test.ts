// A launcher killed outright (its container was killed) takes its server with it and leaves
// the mount dead (ENOTCONN) in the caller's namespace, where the caller cannot remove it. A
// later broker lists it and detaches it when its owner asks.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { clientArgs, instanceProcesses, makeDir, makeImage, newCaller, startBroker, tmpdir, waitFor, type Broker, type Caller } from './lib/harness.js';

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
    await broker?.stop();
    await caller?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
