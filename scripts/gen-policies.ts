// Writes the seccomp policies in policies/seccomp/ from their directive-level definitions.
//
//   node dist/scripts/gen-policies.js           write them
//   node dist/scripts/gen-policies.js --check   exit 1 if a file on disk differs (nothing written)
//   ... [--root DIR]                             package root (default: the one this file is in)
//
// fuse2fs.json is the brokered fuse2fs sandbox: the seccomp part of server/fuse2fs.sandbox, the
// directive set upstream libfuse's service units carry (example/service_ll@.service and siblings;
// see ../shared/reference/directives.md, docs/units.md), with one documented difference:
// RestrictAddressFamilies=AF_UNIX instead of =none. libfuse2 gets the FUSE fd from the fusermount stand-in over socketpair(AF_UNIX);
// systemd's rule only filters socket(), so socketpair works under =none too, but AF_UNIX keeps the
// sandbox usable for anything in libfuse2/glibc that opens an AF_UNIX socket() (and is the
// definition the design fixes).
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { formatProfile, systemCallFilterToProfile, type FilterToProfileOptions } from '../supervisor/sandbox/seccomp.js';
import { packageRoot } from '../supervisor/paths.js';
import { loadServiceFile, seccompOptions } from '../supervisor/units/directives.js';

/**
 * The seccomp-relevant directives of the brokered fuse2fs sandbox, read from its directive file
 * server/fuse2fs.sandbox (upstream's unit directives with fuse-svc's documented difference,
 * RestrictAddressFamilies=AF_UNIX): the one source of truth for what that sandbox is.
 */
export const FUSE2FS_SANDBOX = path.join(packageRoot, 'server', 'fuse2fs.sandbox');
export const FUSE2FS_SECCOMP: FilterToProfileOptions = seccompOptions(loadServiceFile(FUSE2FS_SANDBOX).svc);

/** Servers that call mount(2) themselves (fuseFd "notify"): fuse2fs's sandbox, mount(2) left to the notifier. */
export const FUSE_MOUNT_SANDBOX = path.join(packageRoot, 'server', 'fuse-mount.sandbox');

/** File name (in policies/seccomp/) -> its definition. */
export const POLICIES: Readonly<Record<string, FilterToProfileOptions>> = {
  'fuse2fs.json': FUSE2FS_SECCOMP,
  'fuse-mount.json': seccompOptions(loadServiceFile(FUSE_MOUNT_SANDBOX).svc),
  'ntfs-3g.json': seccompOptions(loadServiceFile(path.join(packageRoot, 'server', 'ntfs-3g.sandbox')).svc),
  'sshfs.json': seccompOptions(loadServiceFile(path.join(packageRoot, 'server', 'sshfs.sandbox')).svc),
};

/** The text each policy file must have. */
export function renderPolicies(): Map<string, string> {
  const out = new Map<string, string>();
  for (const [file, def] of Object.entries(POLICIES)) out.set(file, formatProfile(systemCallFilterToProfile(def)));
  return out;
}

function main(argv: string[]): number {
  let check = false;
  let root = fileURLToPath(new URL('../..', import.meta.url));
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--check') check = true;
    else if (a === '--root' && i + 1 < argv.length) root = path.resolve(argv[++i]);
    else {
      process.stderr.write(`gen-policies: unknown argument ${a}\nusage: gen-policies [--check] [--root DIR]\n`);
      return 2;
    }
  }
  const dir = path.join(root, 'policies', 'seccomp');
  let stale = 0;
  for (const [file, text] of renderPolicies()) {
    const target = path.join(dir, file);
    if (check) {
      let cur: string | undefined;
      try {
        cur = readFileSync(target, 'utf8');
      } catch {
        cur = undefined;
      }
      if (cur !== text) {
        process.stderr.write(`gen-policies: ${target} is ${cur === undefined ? 'missing' : 'out of date'}; run node dist/scripts/gen-policies.js\n`);
        stale++;
      }
    } else {
      mkdirSync(dir, { recursive: true });
      writeFileSync(target, text);
      process.stdout.write(`wrote ${target}\n`);
    }
  }
  return stale ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  process.exitCode = main(process.argv.slice(2));
}
