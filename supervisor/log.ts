// One line per event on stderr, prefixed so journald/svlogd/docker logs read well. Names a
// caller chose (source and target names, options) reach these lines: every control character
// (C0, DEL, C1) and the Unicode line and paragraph separators are escaped, so no caller can
// start a forged log line or hide text from a terminal.
let quiet = false;

/** Escapes what could break a line or a terminal: \xNN for C0/DEL/C1, \uNNNN for U+2028/9 and bidi controls. */
export function escapeText(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, (c) => {
    const n = c.charCodeAt(0);
    return n <= 0xff ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`;
  });
}

function write(level: string, msg: string): void {
  if (quiet && level === 'debug') return;
  process.stderr.write(`fuse-svcd: ${level === 'info' ? '' : level + ': '}${escapeText(msg)}\n`);
}

/** Repeated lines of one kind: the first is written, the rest counted and summed up once per interval. */
const LIMIT_INTERVAL_MS = 10000;
const limited = new Map<string, { until: number; suppressed: number; level: string }>();

function writeLimited(key: string, level: string, msg: string): void {
  const now = Date.now();
  const e = limited.get(key);
  if (e && now < e.until) {
    e.suppressed++;
    return;
  }
  if (e?.suppressed) write(e.level, `${e.suppressed} more "${key}" line(s) suppressed in the last ${LIMIT_INTERVAL_MS / 1000} s`);
  limited.set(key, { until: now + LIMIT_INTERVAL_MS, suppressed: 0, level });
  if (limited.size > 1000) limited.clear(); // keys are few and fixed; never let them grow
  write(level, msg);
}

export const log = {
  info: (m: string) => write('info', m),
  warn: (m: string) => write('warning', m),
  error: (m: string) => write('error', m),
  debug: (m: string) => write('debug', m),
  /** At most one line per `key` per 10 s; the rest are counted in the next line of that key. */
  limited: (key: string, m: string) => writeLimited(key, 'warning', m),
  setQuiet(q: boolean) {
    quiet = q;
  },
};
