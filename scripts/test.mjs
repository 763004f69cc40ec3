#!/usr/bin/env node
// Runs every uvu suite in dist/test, then checks this machine for anything a test left behind
// (FUSE mounts, servers, launchers), and ends with the line "N passed, N failed".
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync, rmdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const uvu = path.join(root, 'node_modules', 'uvu', 'bin.js');
const pattern = process.argv[2] ?? '\\.test\\.js$';

function leftovers() {
  const found = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let comm = '';
    try {
      comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    // A zombie holds nothing but its pid; this machine's PID 1 reaps orphans late.
    let zombie = false;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      zombie = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
    } catch {
      continue;
    }
    if (!zombie && /^(fuse2fs|fuse-svc-launch|sandbox-probe|service-server|service-client)/.test(comm)) found.push(`process ${pid} ${comm}`);
    try {
      for (const line of readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n')) {
        const f = line.split(' - ');
        if (f[1] && /^fuse(\.|blk| )/.test(f[1]) && /fuse-svc|ext[234]|service_ll/.test(f[1])) found.push(`mount ${line.split(' ')[4]} (ns of pid ${pid})`);
      }
    } catch {
      /* gone */
    }
  }
  // Instance cgroups of test brokers (named HASH-ID, see supervisor/cgroups.ts).
  for (const parent of cgroupParents()) {
    for (const n of readdirSync(parent)) {
      if (/^[0-9a-f]{8}-\d+$/.test(n)) found.push(`cgroup ${parent}/${n}`);
    }
  }
  return [...new Set(found)];
}

/** Every `fuse-svc` cgroup parent on this machine (v1 hierarchies nest it below a cgroup). */
function cgroupParents() {
  const out = [];
  const walk = (dir, depth) => {
    let names = [];
    try {
      names = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const d of names) {
      if (!d.isDirectory()) continue;
      // `fuse-svc`, or `fuse-svc-HASH` for a runtime dir other than /run/fuse-svc (supervisor/cgroups.ts)
      if (d.name === 'fuse-svc' || /^fuse-svc-[0-9a-f]{8}$/.test(d.name)) out.push(`${dir}/${d.name}`);
      else if (depth < 4) walk(`${dir}/${d.name}`, depth + 1);
    }
  };
  walk('/sys/fs/cgroup', 0);
  return out;
}

/**
 * After a crashed suite (its teardown never ran), ends what it left: a full stop of every
 * runtime directory a leftover launcher logs into, then SIGKILL for anything still there.
 */
function sweep() {
  const dirs = new Set();
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      if (!readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('fuse-svc-launch')) continue;
      const log = readlinkSync(`/proc/${pid}/fd/2`);
      const m = /^(.*)\/instances\/\d+\.log$/.exec(log);
      if (m) dirs.add(m[1]);
    } catch {
      /* gone */
    }
  }
  for (const d of dirs) {
    spawnSync(process.execPath, [path.join(root, 'dist/supervisor/main.js'), 'stop', '--runtime-dir', d, '--timeout', '10000'], { stdio: 'inherit', timeout: 30000 });
  }
  for (const parent of cgroupParents()) {
    for (const n of readdirSync(parent)) {
      try {
        if (/^[0-9a-f]{8}-\d+$/.test(n)) rmdirSync(`${parent}/${n}`);
      } catch {
        /* still busy */
      }
    }
  }
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      if (/^(fuse2fs|fuse-svc-launch|sandbox-probe|service-server|service-client)/.test(readFileSync(`/proc/${pid}/comm`, 'utf8'))) process.kill(Number(pid), 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

const child = spawn(process.execPath, [uvu, 'dist/test', pattern], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
let out = '';
child.stdout.on('data', (d) => {
  out += d;
  process.stdout.write(d);
});
child.on('close', (code) => {
  const num = (k) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(out)?.[1] ?? NaN);
  let total = num('Total');
  let passed = num('Passed');
  const skipped = num('Skipped') || 0;
  if (Number.isNaN(total) || Number.isNaN(passed)) {
    total = 1;
    passed = 0;
    process.stdout.write('\nthe test runner ended without a summary (crash?)\n');
  }
  let failed = total - passed - skipped;
  const left = leftovers();
  if (left.length) {
    failed += 1;
    process.stdout.write(`\nleft behind by the tests (counted as one failure):\n  ${left.join('\n  ')}\n`);
    if (!process.env.FUSE_SVC_TEST_KEEP) sweep();
  } else passed += 1; // the leak check itself
  process.stdout.write(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
  process.exit(failed > 0 || code !== 0 ? 1 : 0);
});
