// Server definitions for test/native/fuse-hang (a FUSE server that misbehaves on purpose), for
// the suites that reach it through the broker's doors (hung-server.test.ts, doors.test.ts).
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { NATIVE, ROOT } from './harness.js';

export type HangDef = { type: string; mode: string; readyMs: number; stopMs: number; daemonizes?: boolean };

/** Writes SERVER_DIR/TYPE.json serving fstype TYPE with `fuse-hang MODE` (sandbox: fuse2fs's). */
export function writeHangDef(serverDir: string, d: HangDef, sandbox = path.relative(serverDir, path.join(ROOT, 'server', 'fuse2fs.sandbox'))): void {
  writeFileSync(
    path.join(serverDir, `${d.type}.json`),
    JSON.stringify({
      name: d.type,
      description: `fuse-hang test server (${d.mode})`,
      fstypes: [d.type],
      exec: '/opt/fuse-hang',
      argv: ['fuse-hang', d.mode, '{source}', '{mountpoint}'],
      fuseFd: 'devfd',
      source: 'seccomp-notify',
      seccompPolicy: 'fuse2fs',
      sandbox,
      paths: [{ src: path.join(NATIVE, 'fuse-hang'), dst: '/opt/fuse-hang' }],
      readyTimeoutMs: d.readyMs,
      stopTimeoutMs: d.stopMs,
      ...(d.daemonizes ? { daemonizes: true } : {}),
    }),
  );
}

/**
 * A server directory holding the shipped definitions named in `shipped` (with their sandbox
 * files) and one fuse-hang definition per entry of `hangs`: a broker given it serves the real
 * servers and the hanging ones side by side.
 */
export function serverDirWith(dir: string, shipped: string[], hangs: HangDef[]): string {
  const serverDir = path.join(dir, 'server');
  mkdirSync(serverDir, { recursive: true });
  for (const f of shipped) copyFileSync(path.join(ROOT, 'server', f), path.join(serverDir, f));
  for (const h of hangs) writeHangDef(serverDir, h);
  return serverDir;
}
