// Caps on the instance logs in the runtime directory (issue 9 §5): one on all of them and one
// per owner uid. The launcher caps each log (1 MiB of server output + 16 KiB of its own last
// lines); these caps bound how many such logs a uid, or everyone, may keep on the runtime
// tmpfs. Ended logs are dropped oldest first; only when live logs alone are over a cap are
// live logs truncated, largest first. The planning is pure (tested without a broker); the
// broker applies it.

/** The most bytes one instance log can reach (the launcher's LOG_CAP + LOG_RESERVE). */
export const INSTANCE_LOG_MAX = 1024 * 1024 + 16 * 1024;

export type LogEntry = {
  id: number;
  uid: number;
  /** Bytes now, or for a live log the most it may reach (what the caps must leave room for). */
  bytes: number;
  live: boolean;
  /** Unix ms: when it ended (ended logs) or started (live). */
  at: number;
};

export type LogPlan = { drop: LogEntry[]; truncate: LogEntry[] };

/**
 * What to remove so that every uid's logs fit `perUser` and all fit `total`. Ended logs go
 * first, oldest first; then live ones, largest first (truncated to nothing, which the caller
 * notes in the log). Entries planned are counted as 0 bytes afterwards.
 */
export function planLogCaps(entries: LogEntry[], total: number, perUser: number): LogPlan {
  const drop = new Set<LogEntry>();
  const truncate = new Set<LogEntry>();
  const size = (e: LogEntry) => (drop.has(e) || truncate.has(e) ? 0 : e.bytes);
  const fit = (list: LogEntry[], cap: number) => {
    let sum = list.reduce((a, e) => a + size(e), 0);
    if (sum <= cap) return;
    const ended = list.filter((e) => !e.live && size(e) > 0).sort((a, b) => a.at - b.at || a.id - b.id);
    for (const e of ended) {
      if (sum <= cap) return;
      sum -= size(e);
      drop.add(e);
    }
    const live = list.filter((e) => e.live && size(e) > 0).sort((a, b) => b.bytes - a.bytes || a.id - b.id);
    for (const e of live) {
      if (sum <= cap) return;
      sum -= size(e);
      truncate.add(e);
    }
  };
  const byUid = new Map<number, LogEntry[]>();
  for (const e of entries) {
    const list = byUid.get(e.uid);
    if (list) list.push(e);
    else byUid.set(e.uid, [e]);
  }
  for (const list of byUid.values()) fit(list, perUser);
  fit(entries, total);
  return { drop: [...drop], truncate: [...truncate] };
}
