// A second kind of server, added by a definition file only: libfuse3's `hello` example (from
// Debian's libfuse3-dev, compiled here) gets its FUSE fd as the mount point /dev/fd/N instead
// of through the fusermount stand-in. The broker has no per-server code.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { clientArgs, instanceProcesses, makeDir, newCaller, startBroker, tmpdir, waitFor, ROOT, type Broker, type Caller } from './lib/harness.js';

const EXAMPLE = '/usr/share/doc/libfuse3-dev/examples/hello.c';

test('a libfuse3 server defined in its own server file mounts through /dev/fd/N', async () => {
  const dir = tmpdir();
  let broker: Broker | undefined;
  let caller: Caller | undefined;
  try {
    const bin = path.join(dir, 'hello');
    const flags = (await execa('pkg-config', ['fuse3', '--cflags', '--libs'])).stdout.split(/\s+/).filter(Boolean);
    await execa('cc', ['-Wall', '-O2', EXAMPLE, ...flags, '-o', bin], { timeout: 60000 });
    const serverDir = path.join(dir, 'server');
    mkdirSync(serverDir);
    writeFileSync(
      path.join(serverDir, 'hello.json'),
      JSON.stringify({
        name: 'hello',
        description: "libfuse3's hello example",
        fstypes: ['hello'],
        exec: '/opt/hello',
        argv: ['hello', '-f', '{mountpoint}'],
        fuseFd: 'devfd',
        source: 'seccomp-notify',
        seccompPolicy: 'fuse2fs',
        sandbox: path.relative(serverDir, path.join(ROOT, 'server', 'fuse2fs.sandbox')),
        paths: [{ src: bin, dst: '/opt/hello' }],
      }),
    );
    broker = await startBroker({ config: { server_dir: serverDir, fstypes: ['hello'] } });
    caller = await newCaller();
    const src = path.join(dir, 'unused-source');
    writeFileSync(src, 'hello needs no image; the broker still wants a source descriptor\n');
    await execa('chown', ['1000:1000', src]);
    const mnt = makeDir(path.join(dir, 'mnt'));
    const m = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'hello', '-o', 'ro', src, mnt));
    assert.is(m.exitCode, 0, m.stderr);
    const cat = await caller.run(['cat', path.join(mnt, 'hello')]);
    assert.is(cat.stdout, 'Hello World!');
    assert.ok(caller.fuseMounts().includes(mnt));
    const u = await caller.run(clientArgs(broker.socket, 'unmount', mnt));
    assert.is(u.exitCode, 0, u.stderr);
    assert.equal(caller.fuseMounts(), []);
    const ext4 = await caller.run(clientArgs(broker.socket, 'mount', '-t', 'ext4', src, mnt));
    assert.match(ext4.stderr, /EFSTYPE/, 'only the configured types are served');
    await waitFor('the server to exit', () => instanceProcesses(broker!.runtimeDir).length === 0, 5000);
  } finally {
    await broker?.stop();
    await caller?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
