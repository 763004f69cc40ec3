// Helpers for the upstream-socket tests: test/native/service-client.c as upstream's
// fuservicemount3 (plain, or installed setuid root as upstream's is).
import { chmodSync, chownSync, copyFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { NATIVE, type Caller } from './harness.js';

export const SERVICE_CLIENT = path.join(NATIVE, 'service-client');

/** The helper side, in the caller's namespace, as `uid` (root by default); leaves the mount. */
export function helperRun(c: Caller, helper: string, socket: string, type: string, source: string, mnt: string, extra: string[] = [], uid = 0) {
  return c.run([helper, '--just-mount', ...extra, socket, type, source, mnt], { uid, timeout: 60000 });
}

/** A copy of service-client installed setuid root in DIR/bin, as fuservicemount3 is. */
export function installSetuidHelper(d: string): string {
  const bin = path.join(d, 'bin');
  mkdirSync(bin, { recursive: true });
  chmodSync(bin, 0o755);
  const p = path.join(bin, 'fuservicemount-test');
  copyFileSync(SERVICE_CLIENT, p);
  chownSync(p, 0, 0);
  chmodSync(p, 0o4755);
  return p;
}
