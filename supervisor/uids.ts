// Dynamic uids for sandboxes: one per live instance, from a configured range, never a uid or
// gid the host names or a process uses. The launcher's flock on RUNDIR/uids/UID.lock is the
// authority (it survives broker restarts); this class only picks good candidates.
import { readFileSync, readdirSync } from 'node:fs';

export class UidAllocator {
  private readonly inUse = new Set<number>();
  private cursor: number;
  private hostIds: Set<number> = new Set();
  private hostIdsReadAt = 0;

  constructor(readonly first: number, readonly last: number) {
    this.cursor = first;
  }

  get size(): number {
    return this.last - this.first + 1;
  }
  get used(): number {
    return this.inUse.size;
  }
  allocated(): number[] {
    return [...this.inUse].sort((a, b) => a - b);
  }

  /** Marks a uid taken (by a new or re-adopted instance). */
  hold(uid: number): void {
    this.inUse.add(uid);
  }
  release(uid: number): void {
    this.inUse.delete(uid);
  }

  /**
   * The next free candidate after the last one handed out, so a released uid is not reused at
   * once. Returns undefined when the range is exhausted.
   */
  pick(): number | undefined {
    const avoid = this.hostIdsNow();
    for (let i = 0; i < this.size; i++) {
      const uid = this.first + ((this.cursor - this.first + i) % this.size);
      if (uid === 0 || this.inUse.has(uid) || avoid.has(uid)) continue;
      this.cursor = uid + 1 > this.last ? this.first : uid + 1;
      this.inUse.add(uid);
      return uid;
    }
    return undefined;
  }

  /** uids and gids in /etc/passwd and /etc/group, and uids of live processes (cached 1 s). */
  private hostIdsNow(): Set<number> {
    const now = Date.now();
    if (now - this.hostIdsReadAt < 1000) return this.hostIds;
    const ids = new Set<number>();
    for (const [file, col] of [['/etc/passwd', 2], ['/etc/group', 2]] as const) {
      try {
        for (const line of readFileSync(file, 'utf8').split('\n')) {
          const n = Number(line.split(':')[col]);
          if (Number.isInteger(n)) ids.add(n);
        }
      } catch {
        /* absent in minimal containers */
      }
    }
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      try {
        const m = /^Uid:\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
        if (m) for (const v of m.slice(1)) ids.add(Number(v));
      } catch {
        /* exited meanwhile */
      }
    }
    // Instances' own uids are running processes too, but they are ours and tracked in inUse.
    for (const u of this.inUse) ids.delete(u);
    this.hostIds = ids;
    this.hostIdsReadAt = now;
    return ids;
  }
}
