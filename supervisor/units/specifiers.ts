// Unit specifiers (systemd.unit(5) "Specifiers"), resolved for one unit name. fuse-svcd resolves
// them in the directives that take free text (see directives.ts: `spec: true`). An unknown
// specifier, or one that needs systemd's user database or manager state, is an error; the caller
// adds file:line.
import { readFileSync } from 'node:fs';
import os from 'node:os';

export type UnitName = {
  /** Full unit name, e.g. `service_ll@0-1234-1000.service` or `service_ll.socket`. */
  name: string;
};

/** systemd's unit_name_unescape(): `\xNN` -> byte, `-` -> `/`. */
export function unescapeName(s: string): string {
  return s.replace(/-/g, '/').replace(/\\x([0-9a-fA-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
}

function readTrim(file: string): string {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    return '';
  }
}

/** The parts of a unit name that the specifiers name. */
export function nameParts(name: string): { prefix: string; instance: string; suffix: string; withoutSuffix: string } {
  const dot = name.lastIndexOf('.');
  const withoutSuffix = dot > 0 ? name.slice(0, dot) : name;
  const suffix = dot > 0 ? name.slice(dot + 1) : '';
  const at = withoutSuffix.indexOf('@');
  return {
    prefix: at >= 0 ? withoutSuffix.slice(0, at) : withoutSuffix,
    instance: at >= 0 ? withoutSuffix.slice(at + 1) : '',
    suffix,
    withoutSuffix,
  };
}

/** The specifiers fuse-svcd knows, with their meaning (docs/units.md prints this table). */
export const SPECIFIERS: Readonly<Record<string, string>> = {
  '%': 'a literal %',
  n: 'full unit name',
  N: 'full unit name without the type suffix',
  p: 'prefix (the part before @)',
  P: 'unescaped prefix',
  i: 'instance (the part after @; for Accept=yes connections NR-PEERPID-PEERUID)',
  I: 'unescaped instance',
  j: 'final component of the prefix (after the last -)',
  J: 'unescaped final component of the prefix',
  f: 'unescaped filename: /%I, or /%P without an instance',
  t: 'runtime directory (/run)',
  T: 'temporary directory (/tmp)',
  V: 'persistent temporary directory (/var/tmp)',
  E: 'configuration directory (/etc)',
  S: 'state directory (/var/lib)',
  C: 'cache directory (/var/cache)',
  L: 'log directory (/var/log)',
  H: 'host name',
  l: 'short host name',
  v: 'kernel release',
  a: 'architecture (systemd names: x86-64, arm64)',
  m: 'machine id',
  b: 'boot id',
};

/** Why fuse-svcd refuses the specifiers systemd has and it does not. */
const REFUSED: Readonly<Record<string, string>> = {
  u: 'the user name of a DynamicUser= instance is only known when a connection arrives',
  U: 'the uid of a DynamicUser= instance is only known when a connection arrives',
  g: 'the group of a DynamicUser= instance is only known when a connection arrives',
  G: 'the gid of a DynamicUser= instance is only known when a connection arrives',
  h: 'there is no home directory (ProtectHome=, DynamicUser=)',
  s: 'there is no user shell',
  d: 'credentials (LoadCredential=) are not supported',
  M: 'OS image versions are not supported',
  A: 'OS image versions are not supported',
  B: 'OS build ids are not supported',
  o: 'os-release fields are not supported',
  w: 'os-release fields are not supported',
  W: 'os-release fields are not supported',
  q: 'pretty host names are not supported',
};

const ARCH: Readonly<Record<string, string>> = { x64: 'x86-64', arm64: 'arm64', ia32: 'x86', arm: 'arm', ppc64: 'ppc64-le', s390x: 's390x', riscv64: 'riscv64' };

/**
 * Replaces every %X in `text` for unit `unit`. Throws Error(message) for an unknown or refused
 * specifier and for a lone % at the end.
 */
export function expandSpecifiers(text: string, unit: UnitName): string {
  if (!text.includes('%')) return text;
  const p = nameParts(unit.name);
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c !== '%') {
      out += c;
      continue;
    }
    const s = text[++i];
    if (s === undefined) throw new Error(`lone % at the end of ${JSON.stringify(text)} (write %% for a literal %)`);
    switch (s) {
      case '%': out += '%'; break;
      case 'n': out += unit.name; break;
      case 'N': out += p.withoutSuffix; break;
      case 'p': out += p.prefix; break;
      case 'P': out += unescapeName(p.prefix); break;
      case 'i': out += p.instance; break;
      case 'I': out += unescapeName(p.instance); break;
      case 'j': out += p.prefix.slice(p.prefix.lastIndexOf('-') + 1); break;
      case 'J': out += unescapeName(p.prefix.slice(p.prefix.lastIndexOf('-') + 1)); break;
      case 'f': {
        const u = unescapeName(p.instance || p.prefix);
        out += u.startsWith('/') ? u : `/${u}`;
        break;
      }
      case 't': out += '/run'; break;
      case 'T': out += '/tmp'; break;
      case 'V': out += '/var/tmp'; break;
      case 'E': out += '/etc'; break;
      case 'S': out += '/var/lib'; break;
      case 'C': out += '/var/cache'; break;
      case 'L': out += '/var/log'; break;
      case 'H': out += os.hostname(); break;
      case 'l': out += os.hostname().split('.')[0]; break;
      case 'v': out += os.release(); break;
      case 'a': out += ARCH[process.arch] ?? process.arch; break;
      case 'm': out += readTrim('/etc/machine-id'); break;
      case 'b': out += readTrim('/proc/sys/kernel/random/boot_id').replace(/-/g, ''); break;
      default:
        if (s in REFUSED) throw new Error(`specifier %${s} is not supported by fuse-svcd: ${REFUSED[s]}`);
        throw new Error(`unknown specifier %${s}`);
    }
  }
  return out;
}
