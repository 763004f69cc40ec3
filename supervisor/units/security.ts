// `fuse-svcd security [--json] UNIT_FILE`: builds the real sandbox from a service unit (or a
// sandbox fragment such as server/fuse2fs.sandbox), runs the probe (test/native/sandbox-probe.c)
// inside it in place of ExecStart=, and reports per directive: its setting, whether the probe
// showed that it holds, and the evidence. The exposure score uses systemd-analyze security's
// 0-10 scale with the weights of ../shared/reference/directives.md (src/analyze/analyze-security.c),
// computed from what the probe showed, not from what the file says.
import { mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { UidAllocator } from '../uids.js';
import { spawnInstance } from './activation.js';
import { DIRECTIVE_BY_NAME, identifierOf, loadServiceFile, serviceSpec, type Attempt, type Evidence, type ServiceConfig, type Verdict } from './directives.js';
import { parseBool } from './parser.js';
import { nameParts } from './specifiers.js';

export type Row = { directive: string; value: string; holds: boolean | null; evidence: string };
export type Report = { unit: string; rows: Row[]; score: number; level: string; items: { name: string; weight: number; bad: boolean; evidence: string }[]; probeOk: boolean };

export type SecurityOptions = {
  runtimeDir: string;
  nativeDir: string;
  uidRange: [number, number];
  /** The probe binary (default: NATIVEDIR/sandbox-probe). */
  probe?: string;
  timeoutMs?: number;
};

export { loadServiceFile };

/** Whether fuse-svcd's effective capability set has capability `bit`. */
export function hasCap(bit: number): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return !!m && ((BigInt('0x' + m[1]) >> BigInt(bit)) & 1n) === 1n;
}

function hostNs(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const ns of ['user', 'mnt', 'pid', 'net', 'uts', 'ipc', 'cgroup']) {
    try {
      out[ns] = readlinkSync(`/proc/self/ns/${ns}`);
    } catch {
      /* absent */
    }
  }
  return out;
}

/** Host pids running with `uid` outside the pid namespace of `serverPid`. */
function otherPids(uid: number, serverPid: number): number[] {
  let serverNs = '';
  try {
    serverNs = readlinkSync(`/proc/${serverPid}/ns/pid`);
  } catch {
    /* exited already */
  }
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === serverPid) continue;
    try {
      const m = /^Uid:\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(readFileSync(`/proc/${p}/status`, 'utf8'));
      if (!m || !m.slice(1).some((v) => Number(v) === uid)) continue;
      if (serverNs && readlinkSync(`/proc/${p}/ns/pid`) === serverNs) continue; // the probe's own children
      out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** The exposure items (directives.md's weights), each judged from the probe's evidence. */
function exposureItems(svc: ServiceConfig, e: Evidence): Report['items'] {
  const v = (name: string): Verdict => DIRECTIVE_BY_NAME.get(name)!.verify!(svc, e);
  const capBits = BigInt('0x' + (e.probe.get('CapBnd')?.detail.trim() || 'ffffffffffffffff'));
  const cap = (bits: number[], label: string) => {
    const has = bits.some((b) => (capBits >> BigInt(b)) & 1n);
    return { bad: has, evidence: `CapBnd ${e.probe.get('CapBnd')?.detail ?? '?'}: ${label} ${has ? 'present' : 'absent'}` };
  };
  const ref = (check: string) => {
    const a = e.probe.get(check);
    return { bad: !a || a.allowed, evidence: `${check}: ${a ? (a.allowed ? 'ALLOWED' : a.errno || a.detail || 'refused') : 'no result'}` };
  };
  const fromVerdict = (name: string) => {
    const r = v(name);
    return { bad: r.holds !== true, evidence: r.evidence };
  };
  const list: [string, number, { bad: boolean; evidence: string }][] = [
    ['PrivateNetwork=', 2500, fromVerdict('PrivateNetwork')],
    ['DynamicUser=', 2000, fromVerdict('DynamicUser')],
    ['CapabilityBoundingSet=~CAP_SYS_ADMIN', 1500, cap([21], 'CAP_SYS_ADMIN')],
    ['CapabilityBoundingSet=~CAP_SET(UID|GID|PCAP)', 1500, cap([6, 7, 8], 'CAP_SETGID/SETUID/SETPCAP')],
    ['CapabilityBoundingSet=~CAP_SYS_PTRACE', 1500, cap([19], 'CAP_SYS_PTRACE')],
    ['RestrictNamespaces=~user', 1500, ref('unshare_user')],
    ['RestrictAddressFamilies=~AF_(INET|INET6)', 1500, (() => {
      const a = ref('socket_inet'), b = ref('socket_inet6');
      return { bad: a.bad || b.bad, evidence: `${a.evidence}; ${b.evidence}` };
    })()],
    ['PrivateDevices=', 1000, fromVerdict('PrivateDevices')],
    ['PrivateTmp=', 1000, fromVerdict('PrivateTmp')],
    ['PrivateMounts=', 1000, fromVerdict('PrivateMounts')],
    ['PrivateUsers=', 1000, fromVerdict('PrivateUsers')],
    ['ProtectHome=', 1000, fromVerdict('ProtectHome')],
    ['ProtectSystem=', 1000, fromVerdict('ProtectSystem')],
    ['ProtectKernelTunables=', 1000, fromVerdict('ProtectKernelTunables')],
    ['ProtectKernelModules=', 1000, fromVerdict('ProtectKernelModules')],
    ['ProtectKernelLogs=', 1000, fromVerdict('ProtectKernelLogs')],
    ['ProtectControlGroups=', 1000, fromVerdict('ProtectControlGroups')],
    ['ProtectClock=', 1000, fromVerdict('ProtectClock')],
    ['NoNewPrivileges=', 1000, fromVerdict('NoNewPrivileges')],
    ['RestrictSUIDSGID=', 1000, fromVerdict('RestrictSUIDSGID')],
    ['SystemCallArchitectures=', 1000, ref('int80_syscall')],
    ['SystemCallFilter=~@mount', 1000, ref('mount_tmpfs')],
    ['SystemCallFilter=~@debug', 1000, ref('ptrace_attach')],
    ['SystemCallFilter=~@module', 1000, ref('init_module')],
    ['SystemCallFilter=~@raw-io', 1000, ref('ioperm')],
    ['SystemCallFilter=~@reboot', 1000, ref('reboot')],
    ['SystemCallFilter=~@swap', 1000, ref('swapon')],
    ['SystemCallFilter=~@clock', 1000, ref('clock_settime')],
  ];
  return list.map(([name, weight, r]) => ({ name, weight, bad: r.bad, evidence: r.evidence }));
}

/** systemd-analyze security's labels (badness_table in analyze-security.c), score x10. */
function level(score: number): string {
  const x = score * 10;
  if (x >= 100) return 'DANGEROUS';
  if (x >= 90) return 'UNSAFE';
  if (x >= 75) return 'EXPOSED';
  if (x >= 50) return 'MEDIUM';
  if (x >= 10) return 'OK';
  if (x >= 1) return 'SAFE';
  return 'PERFECT';
}

/** Runs the probe in the unit's sandbox and judges every directive of the file. */
export async function securityReport(file: string, o: SecurityOptions): Promise<Report> {
  const { svc, unitName } = loadServiceFile(file);
  for (const d of ['instances', 'uids']) mkdirSync(path.join(o.runtimeDir, d), { recursive: true, mode: 0o700 });
  mkdirSync(path.join(o.runtimeDir, 'empty'), { recursive: true, mode: 0o555 });
  const probe = o.probe ?? path.join(o.nativeDir, 'sandbox-probe');
  const marker = path.join(os.tmpdir(), `fuse-svc-security-${randomBytes(6).toString('hex')}`);
  writeFileSync(marker, 'visible only on the host\n');
  const uids = new UidAllocator(o.uidRange[0], o.uidRange[1]);
  const ident = identifierOf(svc, unitName);
  const lines: string[] = [];
  const hostnameBefore = os.hostname();
  const ns = hostNs();
  let uid = 0;
  let serverPid = 0;
  let others: number[] = [];
  let probeOk = false;
  try {
    for (let attempt = 0; attempt < 5; attempt++) {
      const u = uids.pick();
      if (u === undefined) throw new Error(`no free uid in ${o.uidRange.join('-')}`);
      const id = Date.now() * 1000 + 999;
      const spec = serviceSpec(svc, { id, runtimeDir: o.runtimeDir, uid: u, unitName, emptyDir: path.join(o.runtimeDir, 'empty'), probe: { hostPath: probe, argv: ['sandbox-probe', marker] } });
      lines.length = 0;
      const sp = spawnInstance(path.join(o.nativeDir, 'fuse-svc-launcher'), spec, [], o.timeoutMs ?? 15000, (l) => lines.push(l), path.join(o.runtimeDir, 'instances', `${id}.state`));
      const r = await sp.ready;
      if (r.ok) {
        uid = u;
        serverPid = r.serverPid;
        others = otherPids(u, r.serverPid);
      }
      const timer = setTimeout(() => sp.kill('SIGKILL'), o.timeoutMs ?? 15000);
      await sp.ended;
      clearTimeout(timer);
      rmSync(path.join(o.runtimeDir, 'instances', `${id}.state`), { force: true });
      if (r.ok) break;
      if (r.code !== 'EUID_BUSY') throw new Error(`the sandbox did not start: ${r.code}: ${r.message}${lines.length ? ` (${lines.slice(-2).join(' ')})` : ''}`);
    }
  } finally {
    rmSync(marker, { force: true });
  }
  const probeMap = new Map<string, Attempt>();
  for (const l of lines) {
    if (!l.startsWith('{"check"')) continue;
    try {
      const a = JSON.parse(l) as Attempt;
      probeMap.set(a.check, a);
    } catch {
      /* a torn line */
    }
  }
  probeOk = probeMap.has('done');
  const e: Evidence = {
    probe: probeMap, uid, uidRange: o.uidRange, otherPidsWithUid: others, hostNs: ns, hostnameBefore, hostnameAfter: os.hostname(), tmpMarker: marker,
    hostHasSysResource: hasCap(24),
    taggedLines: lines.filter((l) => l !== '').map((l) => `${ident}[${serverPid}]: ${l}`), identifier: ident,
  };
  const rows: Row[] = [];
  const byKey = new Map<string, string[]>();
  for (const a of svc.assignments) byKey.set(a.key, [...(byKey.get(a.key) ?? []), a.value]);
  for (const [key, values] of byKey) {
    const d = DIRECTIVE_BY_NAME.get(key)!;
    const value = values.join(' ; ');
    let holds: boolean | null = null;
    let evidence: string;
    if (!probeOk) {
      holds = d.verify ? false : null;
      evidence = 'the probe did not run to the end';
    } else if (d.kind === 'lifecycle') {
      evidence = `lifecycle only: ${d.enforce.replace(/^accepted, no effect: /, '')}`;
    } else if (parseBool(values[values.length - 1]) === false && d.verify) {
      evidence = 'not asked for (=no)';
    } else if (values[values.length - 1] === '' && !['CapabilityBoundingSet', 'AmbientCapabilities', 'RestrictFileSystems'].includes(key)) {
      evidence = 'reset (empty assignment)';
    } else if (d.verify) {
      const r = d.verify(svc, e);
      holds = r.holds;
      evidence = r.evidence;
    } else {
      evidence = key === 'ExecStart' ? 'replaced by the probe for this report' : d.enforce;
    }
    rows.push({ directive: key, value, holds, evidence });
  }
  const items = probeOk ? exposureItems(svc, e) : [];
  const total = items.reduce((s, i) => s + i.weight, 0);
  const bad = items.reduce((s, i) => s + (i.bad ? i.weight : 0), 0);
  const score = probeOk && total ? Math.round((100 * bad) / total) / 10 : 10;
  return { unit: nameParts(unitName).withoutSuffix, rows, score, level: level(score), items, probeOk };
}

export function formatReport(r: Report): string {
  const w = Math.max(10, ...r.rows.map((x) => x.directive.length + 1));
  const vw = Math.min(36, Math.max(8, ...r.rows.map((x) => x.value.length)));
  const out = [`${'DIRECTIVE'.padEnd(w)}  ${'SETTING'.padEnd(vw)}  HOLDS  EVIDENCE`];
  for (const x of r.rows) {
    const v = x.value.length > vw ? x.value.slice(0, vw - 1) + '…' : x.value;
    out.push(`${(x.directive + '=').padEnd(w)}  ${v.padEnd(vw)}  ${(x.holds === null ? 'n/a' : x.holds ? 'yes' : 'NO').padEnd(5)}  ${x.evidence}`);
  }
  out.push('');
  out.push('Exposure (what the probe showed; weights of systemd-analyze security):');
  for (const i of r.items) out.push(`  ${i.bad ? '✗' : '✓'} ${i.name.padEnd(44)} ${String(i.weight).padStart(4)}  ${i.evidence}`);
  out.push('');
  out.push(`→ Overall exposure level for ${r.unit}: ${r.score.toFixed(1)} ${r.level}`);
  const failed = r.rows.filter((x) => x.holds === false);
  if (failed.length) out.push(`✗ ${failed.length} directive(s) do not hold: ${failed.map((x) => x.directive).join(', ')}`);
  return out.join('\n') + '\n';
}

/** The CLI: prints the report, returns the exit status (1 if anything asked for does not hold). */
export async function runSecurity(file: string, json: boolean, o: SecurityOptions): Promise<number> {
  const r = await securityReport(file, o);
  if (json) {
    process.stdout.write(JSON.stringify(r.rows.map(({ directive, value, holds, evidence }) => ({ directive, value, holds, evidence })), null, 2) + '\n');
    process.stderr.write(`fuse-svcd: exposure level for ${r.unit}: ${r.score.toFixed(1)} ${r.level}\n`);
  } else process.stdout.write(formatReport(r));
  return !r.probeOk || r.rows.some((x) => x.holds === false) ? 1 : 0;
}
