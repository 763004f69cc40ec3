// systemd unit file syntax (systemd.syntax(7)), as far as units handed to fuse-svcd need it:
// [Section] headers, `Key=Value` assignments, comment lines starting with `#` or `;`, lines
// continued with a trailing backslash (a continued line may be interrupted by comment lines, as
// systemd allows), repeated keys kept in order (the directive decides whether they append), and
// empty assignments kept (they reset lists). Every error is one line: `FILE:LINE: message`.
// Quoting and specifiers are the business of each directive (see directives.ts, specifiers.ts).

export class UnitError extends Error {
  override name = 'UnitError';
  constructor(
    readonly file: string,
    readonly line: number,
    msg: string,
  ) {
    super(`${file}:${line}: ${msg}`);
  }
}

export type Assignment = {
  section: string;
  key: string;
  /** Value with leading/trailing whitespace removed; continuation lines joined with one space. */
  value: string;
  file: string;
  /** Line of the key (the first line of a continued assignment). */
  line: number;
};

export type UnitFile = {
  file: string;
  /** Every assignment, in file order. */
  assignments: Assignment[];
  /** Section names in order of first appearance. */
  sections: string[];
  /** Line of the first header of each section. */
  sectionLines: Map<string, number>;
};

/** Where an assignment came from, for messages. */
export const where = (a: Pick<Assignment, 'file' | 'line'>): string => `${a.file}:${a.line}`;

const MAX_LINE = 1 << 20; // systemd's LONG_LINE_MAX is 1 MiB
const SECTION = /^\[([^[\]]+)\]$/;
const KEY = /^[A-Za-z0-9_.-]+$/;

/** Parses the text of one unit file. `file` is only used in messages. */
export function parseUnit(file: string, text: string): UnitFile {
  if (text.includes('\0')) throw new UnitError(file, 1 + (text.slice(0, text.indexOf('\0')).match(/\n/g)?.length ?? 0), 'file contains a NUL byte');
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const out: UnitFile = { file, assignments: [], sections: [], sectionLines: new Map() };
  let section: string | undefined;
  let pending: { key: string; parts: string[]; line: number } | undefined;

  const finish = (): void => {
    if (!pending) return;
    const value = pending.parts.join(' ').trim();
    out.assignments.push({ section: section!, key: pending.key, value, file, line: pending.line });
    pending = undefined;
  };

  for (let i = 0; i < lines.length; i++) {
    const n = i + 1;
    const raw = lines[i];
    if (raw.length > MAX_LINE) throw new UnitError(file, n, 'line too long');
    const line = raw.trim();
    if (pending) {
      // Comment lines inside a continuation are skipped (systemd.syntax(7)).
      if (line.startsWith('#') || line.startsWith(';')) continue;
      if (line.endsWith('\\')) {
        pending.parts.push(line.slice(0, -1).trim());
        continue;
      }
      pending.parts.push(line);
      finish();
      continue;
    }
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    if (line.startsWith('[')) {
      const m = SECTION.exec(line);
      if (!m) throw new UnitError(file, n, `invalid section header ${JSON.stringify(line)}`);
      section = m[1];
      if (!out.sections.includes(section)) {
        out.sections.push(section);
        out.sectionLines.set(section, n);
      }
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 0) throw new UnitError(file, n, `expected KEY=VALUE or [Section], got ${JSON.stringify(line.slice(0, 60))}`);
    const key = line.slice(0, eq).trim();
    if (!KEY.test(key)) throw new UnitError(file, n, `invalid key ${JSON.stringify(key.slice(0, 60))}`);
    if (section === undefined) throw new UnitError(file, n, `assignment ${key}= outside of any section`);
    let value = line.slice(eq + 1).trimStart();
    pending = { key, parts: [], line: n };
    if (value.endsWith('\\')) {
      value = value.slice(0, -1).trim();
      pending.parts.push(value);
      if (i === lines.length - 1) finish();
      continue;
    }
    pending.parts.push(value);
    finish();
  }
  finish();
  return out;
}

/**
 * Splits a value into words the way systemd's extract_first_word() does with
 * EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE: whitespace separates, "double" and 'single' quotes group,
 * C escapes (\n \t \\ \" \' \xNN \NNN) are resolved. Throws Error(message) on bad quoting.
 */
export function splitWords(value: string): string[] {
  const words: string[] = [];
  let i = 0;
  const s = value;
  while (i < s.length) {
    while (i < s.length && /\s/.test(s[i])) i++;
    if (i >= s.length) break;
    let word = '';
    let quote: string | undefined;
    for (; i < s.length; i++) {
      const c = s[i];
      if (!quote && /\s/.test(c)) break;
      if (!quote && (c === '"' || c === "'")) {
        quote = c;
        continue;
      }
      if (quote && c === quote) {
        quote = undefined;
        continue;
      }
      if (c === '\\') {
        const [ch, len] = unescapeAt(s, i);
        word += ch;
        i += len - 1;
        continue;
      }
      word += c;
    }
    if (quote) throw new Error(`unterminated ${quote} quote in ${JSON.stringify(value.slice(0, 80))}`);
    words.push(word);
  }
  return words;
}

function unescapeAt(s: string, i: number): [string, number] {
  const n = s[i + 1];
  if (n === undefined) throw new Error('trailing backslash');
  const simple: Record<string, string> = { a: '\x07', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v', '\\': '\\', '"': '"', "'": "'", s: ' ' };
  if (n in simple) return [simple[n], 2];
  if (n === 'x' && /^[0-9a-fA-F]{2}$/.test(s.slice(i + 2, i + 4))) return [String.fromCharCode(parseInt(s.slice(i + 2, i + 4), 16)), 4];
  if (/^[0-7]{3}$/.test(s.slice(i + 1, i + 4))) return [String.fromCharCode(parseInt(s.slice(i + 1, i + 4), 8)), 4];
  throw new Error(`invalid escape \\${n}`);
}

/** systemd's parse_boolean(). */
export function parseBool(v: string): boolean | undefined {
  const s = v.toLowerCase();
  if (['1', 'yes', 'y', 'true', 't', 'on'].includes(s)) return true;
  if (['0', 'no', 'n', 'false', 'f', 'off'].includes(s)) return false;
  return undefined;
}
