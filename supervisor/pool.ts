// A small pool of launchers started ahead of requests. Each has already joined a fresh set of
// instance cgroups (a migration costs an RCU grace period per hierarchy, 10-15 ms here) and
// waits on a socket for its spec and the request's descriptors. A mount takes one and the
// pool refills after the reply; with none ready, the broker spawns a launcher as before.
import { closeSync, openSync, readFileSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import * as sock from '../helper/native/socket.js';
import { CgroupError, POOL_ID_BASE, removeCgroups } from './cgroups.js';
import { onPidfdExit, readReady, type InstanceDir, type LaunchResult } from './instances.js';
import { log } from './log.js';
import { renderSpec, type SpecRecord } from './launch-spec.js';
import { withPrecompiledSeccomp } from './seccomp-programs.js';

/** Ids for the cgroups of pooled launchers: far above instance ids, never the same. */
export { POOL_ID_BASE };

/**
 * Pool ids: one counter for the pools of every server definition (so two definitions never
 * share a cgroup name or a pool-N.log), started from the clock in microseconds at broker start,
 * so a restarted broker never reuses an id of the previous one's launchers, which may still be
 * ending in their cgroups: a broker would have to start more than one launcher per microsecond
 * to catch up with the next start. Below 2^53 until the year 2255. A name found taken anyway
 * (a clock set back) is skipped: `spawn` takes the next id on EEXIST.
 */
export class PoolIds {
  private next: number;
  constructor(nowMs = Date.now()) {
    this.next = POOL_ID_BASE + Math.floor(nowMs) * 1000;
  }
  take(): number {
    return this.next++;
  }
}

/** The one allocator of this broker process, shared by every definition's pool. */
export const brokerPoolIds = new PoolIds();

type Entry = {
  poolId: number;
  pid: number;
  pidfd: number;
  sock: number;
  readyRd: number;
  logFile: string;
  cgroups: string[];
  watcher: sock.Watcher;
  /** The launcher said it joined its cgroups: only then may they be renamed and it be used. */
  joined: boolean;
  joinWatcher?: sock.Watcher;
};

export type Claimed = { pid: number; pidfd: number; cgroups: string[]; ready: Promise<LaunchResult> };

export class LauncherPool {
  private readonly entries: Entry[] = [];
  /** Launchers being prepared (their cgroups are created asynchronously). */
  private pending = 0;
  private closed = false;
  private failures = 0;
  private refillTimer?: NodeJS.Timeout;

  constructor(
    private readonly launcher: string,
    private readonly dir: InstanceDir,
    private readonly size: number,
    /** Creates the instance cgroups for a pool id (empty when cgroups are off or unusable). */
    private readonly makeCgroups: (poolId: number) => Promise<string[]>,
    private readonly poolIds: PoolIds = brokerPoolIds,
  ) {}

  /** Pool ids in use (also while being prepared), so a cgroup sweep never takes their cgroups. */
  ids(): number[] {
    return [...this.entries.map((e) => e.poolId), ...this.preparing];
  }
  private readonly preparing = new Set<number>();

  fill(): void {
    while (!this.closed && this.entries.length + this.pending < this.size) {
      this.pending++;
      // The id stays in `preparing` until the entry is in `entries` (or gone): a cgroup sweep
      // between the two would otherwise see its empty cgroups as nobody's.
      const ids: number[] = [];
      this.spawn(ids)
        .then((e) => {
          if (this.closed) void this.discard(e);
          else this.entries.push(e);
        })
        .catch((err: Error) => {
          log.warn(`launcher pool: cannot start a launcher: ${err.message}`);
          this.later();
        })
        .finally(() => {
          this.pending--;
          for (const id of ids) this.preparing.delete(id);
        });
    }
  }

  /** Refills after a failure, with a back-off so a broken setup does not spin. */
  private later(): void {
    if (this.refillTimer || this.closed) return;
    const delay = Math.min(30000, 500 * 2 ** Math.min(this.failures++, 6));
    this.refillTimer = setTimeout(() => {
      this.refillTimer = undefined;
      this.fill();
    }, delay);
    this.refillTimer.unref();
  }

  /** Prepares one launcher; every id it tried is pushed to `ids` (kept from the sweep meanwhile). */
  private async spawn(ids: number[]): Promise<Entry> {
    let poolId: number;
    let cgroups: string[];
    let logFile: string;
    let logFd: number;
    for (let attempt = 0; ; attempt++) {
      poolId = this.poolIds.take();
      ids.push(poolId);
      this.preparing.add(poolId);
      try {
        cgroups = await this.makeCgroups(poolId);
      } catch (e) {
        if (e instanceof CgroupError && e.code === 'EEXIST' && attempt < 5) continue; // taken: next id
        throw e;
      }
      logFile = this.dir.file(poolId, 'log').replace(/\/(\d+)\.log$/, '/pool-$1.log');
      try {
        logFd = openSync(logFile, 'wx', 0o600); // never append to another launcher's log
        break;
      } catch (e) {
        removeCgroups(cgroups);
        if ((e as NodeJS.ErrnoException).code === 'EEXIST' && attempt < 5) continue;
        throw e;
      }
    }
    const [mine, theirs] = sock.socketpair();
    const [readyRd, readyWr] = sock.pipe();
    let pid: number;
    try {
      pid = sock.spawnDetached(this.launcher, [this.launcher, 'instance', '--pooled', ...cgroups.flatMap((d) => ['--cgroup', d])], [-1, readyWr, logFd, theirs]);
    } catch (e) {
      for (const fd of [mine, readyRd]) closeSync(fd);
      removeCgroups(cgroups);
      rmSync(logFile, { force: true });
      throw e;
    } finally {
      for (const fd of [theirs, readyWr, logFd]) closeSync(fd);
    }
    // Our unreaped child: the pid cannot be reused, so this pidfd is that launcher.
    const pidfd = sock.pidfdOpen(pid);
    const entry: Entry = { poolId, pid, pidfd, sock: mine, readyRd, logFile, cgroups, watcher: undefined as never, joined: false };
    entry.watcher = onPidfdExit(pidfd, () => this.died(entry));
    entry.joinWatcher = sock.poll(mine, 'readable', () => {
      let r: sock.Received | null = null;
      try {
        r = sock.recv(mine, 64, 0);
      } catch {
        /* its exit is handled by the pidfd watcher */
      }
      if (r === null) return;
      entry.joinWatcher?.stop();
      entry.joinWatcher = undefined;
      if (!r.eof && r.data.toString() === 'joined') entry.joined = true;
    });
    return entry;
  }

  /** A pooled launcher ended before it was used (it failed, or the pool was closed). */
  private died(e: Entry): void {
    const i = this.entries.indexOf(e);
    if (i < 0) return;
    this.entries.splice(i, 1);
    // Also when claim() found it dead before its exit was polled: a watcher left on a closed
    // pidfd keeps the number in libuv's table, and the next poll on that number (a request's
    // readiness pipe) fails EEXIST (a fault run: "EINTERNAL: uv_poll_init: File exists").
    e.watcher.stop();
    e.joinWatcher?.stop();
    for (const fd of [e.sock, e.readyRd, e.pidfd]) closeSync(fd);
    removeCgroups(e.cgroups);
    if (!this.closed) {
      const tail = this.tail(e.logFile);
      log.warn(`launcher pool: launcher ${e.pid} ended before use${tail ? `: ${tail}` : ''}`);
      this.later();
    }
    rmSync(e.logFile, { force: true });
  }

  private tail(file: string): string {
    try {
      return readFileSync(file, 'utf8').slice(-400).trim().split('\n').pop() ?? '';
    } catch {
      return '';
    }
  }

  /**
   * Hands a request to a pooled launcher: its log becomes `logFile`, the spec and the
   * descriptors go over its socket. Undefined when none is ready (or it died meanwhile).
   */
  claim(spec: (cgroups: string[]) => SpecRecord[], fds: number[], logFile: string, readyTimeoutMs: number, cgroupName: string): Claimed | undefined {
    for (;;) {
      // The oldest launcher that has joined its cgroups; one still joining is left to finish.
      const i = this.entries.findIndex((x) => x.joined);
      if (i < 0) return undefined;
      const e = this.entries[i];
      if (!sock.pidfdIsAlive(e.pidfd)) {
        this.died(e);
        continue;
      }
      this.entries.splice(i, 1);
      e.watcher.stop();
      // Its cgroups take the instance's name, like those of a launcher spawned for the request
      // (cgroup v1 can rename a directory in place; where that fails the pool name stays).
      const poolNames = e.cgroups;
      e.cgroups = e.cgroups.map((d) => {
        const named = path.join(path.dirname(d), cgroupName);
        try {
          renameSync(d, named);
          return named;
        } catch {
          return d;
        }
      });
      try {
        renameSync(e.logFile, logFile);
        sock.send(e.sock, renderSpec(withPrecompiledSeccomp(this.launcher, spec(e.cgroups))), fds);
      } catch (err) {
        log.warn(`launcher pool: launcher ${e.pid} could not take the request (${(err as Error).message}); spawning one`);
        sock.pidfdSendSignal(e.pidfd, 9);
        for (const fd of [e.sock, e.readyRd]) closeSync(fd);
        // The instance's name goes back to the pool's (unique) one before the next launcher
        // or a spawn takes it: a dead launcher's cgroup kept under it until its exit is
        // polled made the spawn's mkdir of the same name fail EEXIST (a fault run: ESANDBOX
        // mkdir(.../HASH-508): EEXIST). Where it cannot go back, it is removed at once.
        const { pidfd } = e;
        const cgroups = e.cgroups.map((d, k) => {
          if (d === poolNames[k]) return d;
          try {
            renameSync(d, poolNames[k]);
            return poolNames[k];
          } catch (re) {
            // Still holding the killed launcher: rmdir fails EBUSY; then the name is lost
            // for this id and the spawn refuses (fail closed) rather than share it.
            removeCgroups([d]);
            log.warn(`launcher pool: cannot give ${d} its pool name back (${(re as NodeJS.ErrnoException).code ?? (re as Error).message})`);
            return d;
          }
        });
        onPidfdExit(pidfd, () => {
          closeSync(pidfd);
          removeCgroups(cgroups);
        });
        continue;
      }
      closeSync(e.sock);
      this.failures = 0;
      return { pid: e.pid, pidfd: e.pidfd, cgroups: e.cgroups, ready: readReady(e.readyRd, readyTimeoutMs) };
    }
  }

  /** Ends a launcher that is not needed (the pool closed while it was being prepared). */
  private discard(e: Entry): Promise<void> {
    e.watcher.stop();
    e.joinWatcher?.stop();
    for (const fd of [e.sock, e.readyRd]) closeSync(fd);
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 1000);
      // Reap it when it is gone; its cgroups can only be removed after that.
      onPidfdExit(e.pidfd, () => {
        clearTimeout(timer);
        closeSync(e.pidfd);
        removeCgroups(e.cgroups);
        rmSync(e.logFile, { force: true });
        resolve();
      });
    });
  }

  /**
   * Closing the sockets ends the idle launchers (EOF before a spec: they exit quietly).
   * Resolves when they are gone and reaped (at most 1 s each), so an exiting broker leaves none.
   */
  close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.refillTimer);
    const gone = this.entries.splice(0).map((e) => this.discard(e));
    return Promise.all(gone).then(() => undefined);
  }
}
