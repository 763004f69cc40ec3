// The whole log of a failed start, kept for whoever has to find out why (a server author: the
// real cause, ntfs-3g's for one, is often many lines above the last two). The instance's own
// files go with the instance; its log moves to RUNDIR/failed/ID.log, root-only. Bounded: the
// newest FAILED_KEEP logs, each at most FAILED_LOG_MAX bytes (head and tail kept, with a
// marker between them), so failing on purpose cannot fill the runtime directory.
import { closeSync, fstatSync, mkdirSync, openSync, readdirSync, readSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export const FAILED_KEEP = 32;
export const FAILED_LOG_MAX = 1 << 20;

export function failedDir(runtimeDir: string): string {
  return path.join(runtimeDir, 'failed');
}

/**
 * Moves `logFile` (the instance log of a start that failed) to RUNDIR/failed/ID.log and drops
 * the oldest beyond FAILED_KEEP. Returns where it is now, or undefined when there was no log.
 */
export function keepFailedLog(runtimeDir: string, id: number, logFile: string): string | undefined {
  const dir = failedDir(runtimeDir);
  const dst = path.join(dir, `${id}.log`);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    renameSync(logFile, dst);
  } catch {
    return undefined;
  }
  try {
    shorten(dst);
    prune(dir);
  } catch {
    /* the log is kept whole; bounding it again happens at the next failure */
  }
  return dst;
}

/** Over FAILED_LOG_MAX: the first quarter and the last three quarters of the budget stay. */
function shorten(file: string): void {
  const fd = openSync(file, 'r');
  let text: Buffer;
  try {
    const size = fstatSync(fd).size;
    if (size <= FAILED_LOG_MAX) return;
    const head = Buffer.alloc(FAILED_LOG_MAX / 4);
    const tail = Buffer.alloc((FAILED_LOG_MAX * 3) / 4);
    readSync(fd, head, 0, head.length, 0);
    readSync(fd, tail, 0, tail.length, size - tail.length);
    text = Buffer.concat([head, Buffer.from(`\nfuse-svcd: ${size - head.length - tail.length} bytes of this log left out (failed-start logs are kept up to ${FAILED_LOG_MAX} bytes)\n`), tail]);
  } finally {
    closeSync(fd);
  }
  writeFileSync(file, text, { mode: 0o600 });
}

function prune(dir: string): void {
  const logs = readdirSync(dir)
    .filter((n) => /^\d+\.log$/.test(n))
    .map((n) => ({ n, t: statSync(path.join(dir, n)).mtimeMs, id: Number(n.slice(0, -4)) }))
    .sort((a, b) => b.t - a.t || b.id - a.id);
  for (const l of logs.slice(FAILED_KEEP)) rmSync(path.join(dir, l.n), { force: true });
}
