// compose.yaml: valid Compose v2 (the Compose Specification JSON schema, draft-07), accepted by
// docker-compose v1 (`config -q`), inside the intersection of the two, least privilege for the
// broker and none for the example client; the seccomp profile and the DaemonSet manifest too.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import AjvModule from 'ajv';
import * as YAML from 'yaml';
import { repoRoot } from './lib/docker-host.js';
import { Namespace, Pod } from 'kubernetes-models/v1';
import { DaemonSet } from 'kubernetes-models/apps/v1';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Obj = { [k: string]: Json };

const root = repoRoot();
const composeText = fs.readFileSync(path.join(root, 'compose.yaml'), 'utf8');
const raw = YAML.parse(composeText) as Obj;

/** Compose's interpolation of ${VAR:-default} / ${VAR-default} / ${VAR} / $$ (env unset). */
function interpolate(v: Json, env: Record<string, string> = {}): Json {
  if (typeof v === 'string') {
    return v.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}/g, (m, name: string | undefined, def: string | undefined) =>
      m === '$$' ? '$' : (env[name!] ?? def ?? ''));
  }
  if (Array.isArray(v)) return v.map((x) => interpolate(x, env));
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, interpolate(x, env)]));
  return v;
}
const doc = interpolate(raw) as Obj;
const services = doc.services as Record<string, Obj>;
const broker = services['mount-broker'];
const client = services['example-client'];

function specPath(): string {
  const candidates = [
    process.env.COMPOSE_SPEC_JSON,
    path.join(root, '../shared/data/compose-spec.json'),
    '/work/shared/data/compose-spec.json',
  ].filter((p): p is string => !!p);
  for (const p of candidates) if (fs.existsSync(p)) return p;
  throw new Error(`compose-spec.json not found; looked at ${candidates.join(', ')}`);
}

test('compose.yaml is valid against the Compose Specification schema (Compose v2)', () => {
  const schema = JSON.parse(fs.readFileSync(specPath(), 'utf8')) as Obj;
  delete schema.$schema; // draft-07 is Ajv's default; the file names it by an https URI Ajv does not know
  delete schema.$id;
  const Ajv = (AjvModule as unknown as { default?: typeof AjvModule }).default ?? AjvModule;
  const ajv = new (Ajv as unknown as new (o: object) => { compile(s: object): ((d: unknown) => boolean) & { errors?: unknown[] | null } })(
    { strict: false, allErrors: true, validateFormats: false });
  const validate = ajv.compile(schema);
  for (const [what, d] of [['as written', raw], ['interpolated', doc]] as const) {
    const ok = validate(d);
    assert.ok(ok, `compose.yaml (${what}) fails the schema: ${JSON.stringify(validate.errors, null, 1)}`);
  }
});

test('docker/compose.volume-example.yaml (the volume driver example): the schema, docker-compose v1, driver fuse-svc', () => {
  const file = path.join(root, 'docker', 'compose.volume-example.yaml');
  const ex = YAML.parse(fs.readFileSync(file, 'utf8')) as Obj;
  const schema = JSON.parse(fs.readFileSync(specPath(), 'utf8')) as Obj;
  delete schema.$schema;
  delete schema.$id;
  const Ajv = (AjvModule as unknown as { default?: typeof AjvModule }).default ?? AjvModule;
  const ajv = new (Ajv as unknown as new (o: object) => { compile(s: object): ((d: unknown) => boolean) & { errors?: unknown[] | null } })(
    { strict: false, allErrors: true, validateFormats: false });
  const validate = ajv.compile(schema);
  for (const d of [ex, interpolate(ex)]) assert.ok(validate(d), JSON.stringify(validate.errors, null, 1));
  for (const k of ['version', 'name', 'include']) assert.not.ok(k in ex, `top-level ${k}`);
  const vol = (ex.volumes as Obj).data as Obj;
  assert.is(vol.driver, 'fuse-svc');
  assert.equal(Object.keys(vol.driver_opts as Obj).sort(), ['source', 'type']);
  const r = spawnSync('docker-compose', ['-f', file, 'config', '-q'], { cwd: root, encoding: 'utf8', timeout: 60_000 });
  assert.is(r.status, 0, `docker-compose config: ${r.stderr}`);
});

test('compose.yaml stays inside what docker-compose v1 accepts', () => {
  for (const k of ['version', 'name', 'include', 'models']) assert.not.ok(k in raw, `top-level ${k}: rejected by v1 or needless`);
  for (const [name, s] of Object.entries(services)) {
    const hc = s.healthcheck as Obj | undefined;
    if (hc) assert.not.ok('start_interval' in hc, `${name}: healthcheck.start_interval is rejected by v1`);
    const dep = s.depends_on;
    if (dep && typeof dep === 'object' && !Array.isArray(dep)) {
      for (const [d, v] of Object.entries(dep)) {
        assert.not.ok(v && typeof v === 'object' && 'required' in (v as Obj), `${name}.depends_on.${d}.required is rejected by v1`);
        assert.not.ok(v && typeof v === 'object' && 'restart' in (v as Obj), `${name}.depends_on.${d}.restart is rejected by v1`);
      }
    }
    for (const k of ['develop', 'models', 'provider', 'gpus', 'post_start', 'pre_stop', 'use_api_socket']) {
      assert.not.ok(k in s, `${name}.${k} is not known to v1`);
    }
  }
  // the real v1 parser, no daemon needed
  const r = spawnSync('docker-compose', ['-f', 'compose.yaml', 'config', '-q'], { cwd: root, encoding: 'utf8', timeout: 60_000 });
  assert.is(r.error, undefined, `docker-compose could not run: ${r.error?.message}`);
  assert.is(r.status, 0, `docker-compose config: ${r.stderr}`);
  const p = spawnSync('docker-compose', ['-f', 'compose.yaml', '--profile', 'example', 'config', '--services'], { cwd: root, encoding: 'utf8', timeout: 60_000 });
  assert.is(p.status, 0, p.stderr);
  assert.equal(p.stdout.trim().split('\n').sort(), ['example-client', 'mount-broker']);
});

const ALLOWED_BROKER_CAPS = new Set(['SYS_ADMIN', 'SYS_PTRACE', 'SYS_CHROOT', 'SETUID', 'SETGID']);

test('mount-broker: least privilege, each capability and security option explained', () => {
  assert.ok(broker, 'service mount-broker');
  assert.not.ok(broker.privileged, 'no privileged: true');
  assert.is(broker.network_mode, 'none');
  assert.equal(broker.devices, ['/dev/fuse:/dev/fuse']);
  assert.equal(broker.cap_drop, ['ALL']);
  const caps = broker.cap_add as string[];
  for (const c of ['SYS_ADMIN', 'SYS_PTRACE']) assert.ok(caps.includes(c), `cap_add ${c}`);
  for (const c of caps) assert.ok(ALLOWED_BROKER_CAPS.has(c), `unexpected capability ${c}`);
  for (const k of ['pid', 'ipc', 'userns_mode', 'cgroup_parent', 'volumes_from']) assert.not.ok(k in broker, `${k} not needed`);
  // every capability and security option has a comment line right above it (or a group above)
  const lines = composeText.split('\n');
  const brokerStart = lines.findIndex((l) => /^  mount-broker:/.test(l));
  const brokerEnd = lines.findIndex((l, i) => i > brokerStart && /^  [a-z]/.test(l));
  const block = lines.slice(brokerStart, brokerEnd);
  for (const item of [...caps, ...(broker.security_opt as string[])]) {
    const i = block.findIndex((l) => l.trim() === `- ${item}`);
    assert.ok(i > 0, `${item} listed`);
    let j = i - 1;
    while (j > 0 && /^\s+- [A-Z_]+$/.test(block[j])) j--; // a group of capabilities under one comment
    assert.ok(/^\s+#/.test(block[j]), `${item}: no comment explains it`);
  }
  const secopts = broker.security_opt as string[];
  assert.ok(secopts.includes('no-new-privileges:true'));
  const seccomp = secopts.find((s) => s.startsWith('seccomp:') || s.startsWith('seccomp='));
  assert.ok(seccomp, 'a seccomp profile');
  assert.ok(fs.existsSync(path.join(root, seccomp!.slice('seccomp:'.length))), `${seccomp} exists relative to the repository root`);
  assert.not.ok(secopts.some((s) => /unconfined/.test(s)), 'nothing unconfined');
  assert.ok(broker.restart, 'restart policy');
  const hc = broker.healthcheck as Obj;
  assert.ok(Array.isArray(hc.test) && (hc.test as string[]).some((a) => /fuse-svc-request|fuse-svc-client/.test(a)), 'healthcheck asks the broker');
  assert.ok((broker.volumes as string[]).some((v) => /^fuse-svc-run:\/run\/fuse-svc$/.test(v)), 'named volume at /run/fuse-svc');
  assert.ok(Object.keys(doc.volumes as Obj).includes('fuse-svc-run'));
  // The state is on a volume of its own (issue 9 §3), apart from the one clients share.
  assert.ok((broker.volumes as string[]).includes('fuse-svc-state:/run/fuse-svcd'), 'state volume at /run/fuse-svcd');
  assert.ok(Object.keys(doc.volumes as Obj).includes('fuse-svc-state'));
});

test('no client volume reaches the broker\'s state, and clients mount the public volume read-only', () => {
  for (const [name, svc] of Object.entries(services)) {
    if (name === 'mount-broker') continue;
    for (const v of (svc.volumes as string[] | undefined) ?? []) {
      assert.not.match(v, /^fuse-svc-state:|fuse-svcd/, `${name}: ${v} reaches the state`);
      if (v.startsWith('fuse-svc-run:')) assert.match(v, /:ro$/, `${name}: ${v} must be read-only`);
    }
  }
});

test('example-client: unprivileged, behind a profile, uses the published static client', () => {
  assert.ok(client, 'service example-client');
  assert.equal(client.profiles, ['example']);
  assert.equal(client.cap_drop, ['ALL']);
  for (const k of ['cap_add', 'devices', 'privileged', 'pid', 'userns_mode']) assert.not.ok(k in client, `${k} must not be set`);
  assert.is(client.network_mode, 'none');
  assert.ok((client.security_opt as string[]).includes('no-new-privileges:true'));
  assert.is(client.user, '1000:1000');
  assert.ok((client.volumes as string[]).includes('fuse-svc-run:/run/fuse-svc:ro'));
  const script = (client.command as string[]).join('\n');
  assert.match(script, /\/run\/fuse-svc\/bin\/fuse-svc-request/);
  assert.match(script, /root_owner=1000:1000/);
  assert.equal((client.depends_on as Obj)['mount-broker'], { condition: 'service_healthy' });
});

test('docker/seccomp-broker.json: Docker 20.10 default + pivot_root - unused CAP_SYS_ADMIN calls', () => {
  const p = JSON.parse(fs.readFileSync(path.join(root, 'docker/seccomp-broker.json'), 'utf8')) as {
    defaultAction: string; syscalls: { names: string[]; action: string; includes?: { caps?: string[] }; excludes?: Obj; args?: unknown[] }[];
  };
  assert.is(p.defaultAction, 'SCMP_ACT_ERRNO', 'an allow-list');
  const allowedUnconditionally = new Set(p.syscalls.filter((r) => r.action === 'SCMP_ACT_ALLOW' && !r.includes?.caps && !(r.args?.length) && !(r.includes as Obj | undefined)?.arches).flatMap((r) => r.names));
  const sysadmin = p.syscalls.filter((r) => r.action === 'SCMP_ACT_ALLOW' && r.includes?.caps?.includes('CAP_SYS_ADMIN')).flatMap((r) => r.names);
  for (const n of ['pivot_root', 'fsopen', 'fsconfig', 'fsmount', 'move_mount', 'open_tree', 'mount_setattr', 'setns', 'unshare', 'mount', 'umount2', 'clone', 'sethostname']) {
    assert.ok(sysadmin.includes(n) || allowedUnconditionally.has(n), `${n} allowed with CAP_SYS_ADMIN`);
  }
  for (const n of ['pivot_root', 'mount', 'setns', 'unshare']) assert.not.ok(allowedUnconditionally.has(n), `${n} only with CAP_SYS_ADMIN`);
  for (const n of ['seccomp', 'pidfd_open', 'pidfd_send_signal', 'close_range', 'statx', 'waitid', 'memfd_create', 'prctl', 'capset', 'sendmsg', 'recvmsg']) {
    assert.ok(allowedUnconditionally.has(n), `${n} allowed`);
  }
  const everything = new Set(p.syscalls.filter((r) => r.action === 'SCMP_ACT_ALLOW').flatMap((r) => r.names));
  for (const n of ['bpf', 'perf_event_open', 'fanotify_init', 'lookup_dcookie', 'quotactl', 'name_to_handle_at', 'kexec_load', 'init_module', 'open_by_handle_at', 'keyctl', 'add_key', 'userfaultfd']) {
    const byOtherCap = p.syscalls.some((r) => r.action === 'SCMP_ACT_ALLOW' && r.names.includes(n) && r.includes?.caps && !r.includes.caps.includes('CAP_SYS_ADMIN'));
    assert.ok(!everything.has(n) || byOtherCap, `${n} not allowed to the broker`);
  }
  const ptrace = p.syscalls.filter((r) => r.includes?.caps?.includes('CAP_SYS_PTRACE')).flatMap((r) => r.names);
  assert.ok(ptrace.includes('process_vm_readv'), 'process_vm_readv with CAP_SYS_PTRACE');
});

// Kubernetes' own API schemas (kubernetes-models: each object validates itself against the
// OpenAPI schema of its kind), not hand-written structure checks.
const K8S_MODELS: Record<string, new (o: never) => { validate: () => void }> = {
  'v1/Namespace': Namespace as never,
  'v1/Pod': Pod as never,
  'apps/v1/DaemonSet': DaemonSet as never,
};

function k8sValidate(doc: Obj): void {
  const key = `${String(doc.apiVersion)}/${String(doc.kind)}`;
  const M = K8S_MODELS[key];
  assert.ok(M, `no Kubernetes schema known for ${key}: add its kubernetes-models class`);
  new M!(doc as never).validate();
}

function daemonsetDocs(): Obj[] {
  return YAML.parseAllDocuments(fs.readFileSync(path.join(root, 'docker/k8s/daemonset.yaml'), 'utf8')).map((d) => {
    assert.equal(d.errors, [], 'YAML errors');
    return d.toJSON() as Obj;
  }).filter((d) => d);
}

test('docker/k8s/daemonset.yaml is valid against the Kubernetes API schemas', () => {
  const docs = daemonsetDocs();
  assert.ok(docs.length >= 3, 'Namespace, DaemonSet and example Pod');
  for (const d of docs) k8sValidate(d);
});

test('the Kubernetes schema check can fail: broken copies of the manifest are refused', () => {
  const ds = daemonsetDocs().find((d) => d.kind === 'DaemonSet')!;
  const broken: [string, (o: Obj) => void][] = [
    ['privileged as a string', (o) => (((((o.spec as Obj).template as Obj).spec as Obj).containers as Obj[])[0].securityContext as Obj).privileged = 'no'],
    ['a container without a name', (o) => delete ((((o.spec as Obj).template as Obj).spec as Obj).containers as Obj[])[0].name],
    ['a DaemonSet without a selector', (o) => delete (o.spec as Obj).selector],
  ];
  for (const [what, mutate] of broken) {
    const copy = JSON.parse(JSON.stringify(ds)) as Obj;
    mutate(copy);
    assert.throws(() => k8sValidate(copy), undefined, what);
  }
});

test('docker/k8s/daemonset.yaml keeps to its documented privileges', () => {
  const docs = daemonsetDocs();
  const ds = docs.find((d) => d.kind === 'DaemonSet') as Obj | undefined;
  assert.ok(ds, 'a DaemonSet');
  const pod = ((ds!.spec as Obj).template as Obj).spec as Obj;
  const c = (pod.containers as Obj[])[0];
  const vols = pod.volumes as Obj[];
  assert.ok(vols.some((v) => (v.hostPath as Obj | undefined)?.path === '/run/fuse-svc'), 'hostPath socket directory');
  const stateVol = vols.find((v) => (v.hostPath as Obj | undefined)?.path === '/run/fuse-svcd');
  assert.ok(stateVol, 'hostPath state directory of its own');
  assert.ok((c.volumeMounts as Obj[]).some((m) => m.name === stateVol!.name && m.mountPath === '/run/fuse-svcd'), 'the broker mounts its state');
  // Every other pod: the public dir read-only, never the state.
  for (const d of docs.filter((x) => x.kind === 'Pod')) {
    const spec = d.spec as Obj;
    const hp = new Map(((spec.volumes as Obj[]) ?? []).map((v) => [v.name, (v.hostPath as Obj | undefined)?.path]));
    for (const ct of spec.containers as Obj[]) {
      for (const m of (ct.volumeMounts as Obj[]) ?? []) {
        const p = hp.get(m.name);
        if (p === undefined) continue;
        assert.is.not(p, '/run/fuse-svcd', 'a client pod mounts the state');
        if (p === '/run/fuse-svc') assert.is(m.readOnly, true, 'a client pod mounts the public dir read-only');
      }
    }
  }
  const limits = ((c.resources as Obj | undefined)?.limits ?? {}) as Obj;
  assert.ok(vols.some((v) => (v.hostPath as Obj | undefined)?.path === '/dev/fuse') || Object.keys(limits).some((k) => /fuse/.test(k)),
    '/dev/fuse from the host or a device plugin');
  assert.not.ok(pod.hostNetwork, 'no host network');
  const sc = c.securityContext as Obj;
  assert.not.ok(sc.privileged, 'not privileged');
  assert.is(sc.allowPrivilegeEscalation, false);
  assert.is((sc.seccompProfile as Obj).type, 'Localhost');
  const caps = (sc.capabilities as Obj).add as string[];
  for (const cap of caps) assert.ok(ALLOWED_BROKER_CAPS.has(cap), `unexpected capability ${cap}`);
  assert.equal((sc.capabilities as Obj).drop, ['ALL']);
});

test.run();
