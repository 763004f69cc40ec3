#!/usr/bin/env node
// After tsc: makes fuse-svcd executable (tsc does not keep modes), and makes sure the static
// client exists. package.json's bin `fuse-svc-request` is build/Release/fuse-svc-client, and
// npm links bins after `prepare` but before `install` (which runs node-gyp): installed from a
// fresh checkout, the binary must already be there when prepare ends, or npm skips the link.
import { chmodSync, existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

chmodSync('dist/supervisor/main.js', 0o755);
if (!existsSync('build/Release/fuse-svc-client')) {
  // npm puts its node-gyp on PATH for every script.
  const r = spawnSync('node-gyp', ['rebuild'], { stdio: 'inherit' });
  if (r.status !== 0) {
    process.stderr.write(`postbuild: node-gyp rebuild failed (${r.error?.message ?? `exit ${r.status}`}); fuse-svc-request is not built\n`);
    process.exit(1);
  }
}
