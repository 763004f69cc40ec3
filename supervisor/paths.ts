// Where the package lives, found from this file (works from dist/ and from an installed copy).
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(start: string): string {
  let dir = start;
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'server'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`fuse-svc: cannot find the package root above ${start}`);
    dir = up;
  }
}

export const packageRoot = findRoot(path.dirname(fileURLToPath(import.meta.url)));
