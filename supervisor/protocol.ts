// The request protocol in one place: limits, the error table, the decoder and the encoder.
// docs/protocol.md is checked against ERRORS by test/protocol.test.ts.

export const PROTOCOL_VERSION = 1;
export const MAX_MESSAGE_BYTES = 16384;
export const MAX_FDS = 4;
export const MAX_NAME_BYTES = 1024;
/** A reply is one packet: both clients read at most this many bytes. */
export const MAX_REPLY_BYTES = 65536;
/**
 * What the entries of one `list` page may take: the reply's cap less room for the envelope
 * (`{"v":1,"ok":true,"mounts":[],"next":2147483647}`), so a page is never cut.
 */
export const LIST_PAGE_BYTES = MAX_REPLY_BYTES - 512;
/**
 * In an entry too large for a page, strings are cut to this many UTF-16 units: even escaped at
 * 6 bytes each, an entry's six strings then fit a page. Names the broker accepts (at most
 * MAX_NAME_BYTES) are never cut.
 */
export const LIST_FIELD_TRIM = 1024;

export const ERRORS = {
  EPROTO_JSON: 'the message is not a JSON object',
  EPROTO_SIZE: 'the message is empty, larger than the limit, or was truncated',
  EPROTO_VERSION: 'the protocol version is not supported',
  EPROTO_FIELD: 'a field is missing, unknown, or of the wrong type',
  EPROTO_FDS: 'the descriptors attached do not match the roles named in "fds"',
  EOP: 'the operation is unknown',
  EPEER: 'the caller could not be identified by the kernel (no pidfd)',
  EBADFD_SOURCE: 'the source descriptor is not an open regular file or block device',
  EROFS_SOURCE: 'rw was asked for, but the source descriptor is open read-only',
  EBADFD_TARGET: 'the target descriptor is not a directory (symlinks are never followed)',
  EPERM_TARGET: 'the caller may not mount on the target (needs write access; owner in a sticky directory)',
  EFSTYPE_TARGET: 'the target lies on a filesystem that may not be mounted over',
  EFSTYPE: 'the filesystem type is not allowed by the configuration',
  EOPTION: 'a mount option is unknown, malformed or not allowed',
  ELIMIT_MOUNTS: 'the caller has reached the per-user limit of live mounts',
  ELIMIT_TOTAL: 'the broker has reached its limit of live mounts (mount_max)',
  ELIMIT_RATE: 'the caller sends requests faster than the per-user rate limit',
  ELIMIT_CONN: 'the caller (or all callers) hold the limit of open connections',
  ELIMIT_STUCK: 'descriptors the caller sent earlier are still stuck closing on its own FUSE server',
  EUIDS_EXHAUSTED: 'no dynamic uid is free in the configured range',
  EUID_BUSY: 'the dynamic uid picked for the sandbox was taken by another instance',
  ESERVER_START: 'the filesystem server failed before it answered FUSE_INIT',
  ETIMEDOUT_SERVER: 'the filesystem server did not answer FUSE_INIT in time',
  ESERVER_TIMEOUT: 'the launcher did not answer by the broker\'s deadline and was killed',
  EMOUNT: 'the kernel refused to create the FUSE mount',
  EATTACH: "the mount could not be attached in the caller's mount namespace",
  ESANDBOX: 'the sandbox could not be set up',
  ENOENT_MOUNT: 'no broker mount matches (not a mount root made by the broker, or no such id)',
  EPERM_MOUNT: 'the mount belongs to another user',
  EMOUNT_LEFT: "the instance ended but its mount is still in the caller's namespace (covered by another mount, or its launcher was killed before it detached): unmount it by path once it is uncovered",
  ESHUTDOWN: 'the broker is stopping',
  EINTERNAL: 'an internal error; the broker log has details',
  EROFS_SERVER: 'rw was asked for, but the server of this filesystem type is read-only (mount with -o ro)',
  EPROTO_SERVICE: "a packet of libfuse's contained-service protocol is malformed, truncated, oversized or out of order (upstream sockets)",
  EBADFD_FUSE: 'the fusedev descriptor the helper sent is not an open /dev/fuse (upstream sockets)',
  EBADFD_ARGV: 'the argv descriptor the helper sent is not a small memfd holding an ARGS block (upstream sockets)',
  EMOUNT_GIVEN: "the helper's own mount is refused: not found, mounted twice, lacking nosuid/nodev, or not owned by the caller (upstream sockets)",
  EMOUNT_HELPER: 'the helper answered a mount step (TYPE, NAME, MNTP, OPTS, MTAB, DOIT) with an error (upstream sockets)',
  EBADFD_TRANSPORT: 'the transport descriptor is not a connected AF_UNIX stream socket',
  ESOURCE_KIND: 'the request carries a source image where the server takes a transport (--via), or the reverse',
} as const;

/**
 * Codes only the Docker volume plugin answers (supervisor/docker-plugin.ts), as
 * {"Err":"CODE: line"}. The plugin also answers the codes of ERRORS its mounts refuse with
 * (EFSTYPE, EOPTION, EBADFD_SOURCE...). Clients of broker.sock never see these, so the static
 * client's table does not carry them.
 */
export const PLUGIN_ERRORS = {
  EPERM_PLUGIN: 'the plugin socket answers uid 0 (dockerd) only',
  EPLUGIN_HTTP: 'the plugin request is not a POST with a JSON body within the size and time limits',
  EVOLUME_NAME: 'the volume name is not 1-128 letters, digits, "_", "." or "-", starting with a letter or digit',
  EVOLUME_OPTION: 'a volume option (-o) is unknown, missing, repeated or malformed',
  EVOLUME_SOURCE: 'the source is not an absolute path, without symbolic links, of a regular file or block device',
  ENOENT_VOLUME: 'no volume of that name is defined',
  EEXIST_VOLUME: 'a volume of that name is already defined with other options',
  EBUSY_VOLUME: 'the volume is mounted by a container (Remove waits for its last Unmount)',
  EVOLUME_UNSEEN: "dockerd would not see the volume's mount: no mount propagation from the broker's mount namespace to dockerd's",
} as const;

export type ErrorCode = keyof typeof ERRORS | keyof typeof PLUGIN_ERRORS;

/** An error with a stable protocol code; `message` is one line for the caller. */
export class RequestError extends Error {
  constructor(
    readonly code: ErrorCode,
    message?: string,
  ) {
    super(oneLine(message ?? errorText(code)));
    this.name = 'RequestError';
  }
}

export function isErrorCode(s: unknown): s is ErrorCode {
  return typeof s === 'string' && (Object.prototype.hasOwnProperty.call(ERRORS, s) || Object.prototype.hasOwnProperty.call(PLUGIN_ERRORS, s));
}

export function errorText(code: ErrorCode): string {
  return code in PLUGIN_ERRORS ? PLUGIN_ERRORS[code as keyof typeof PLUGIN_ERRORS] : ERRORS[code as keyof typeof ERRORS];
}

/** Collapses anything into one printable line of bounded length. */
export function oneLine(s: string, max = 512): string {
  // eslint-disable-next-line no-control-regex
  const flat = s.replace(/[\x00-\x1f\x7f]+/g, ' ').replace(/\s+/g, ' ').trim();
  return flat.length > max ? flat.slice(0, max - 1) + '…' : flat;
}

/**
 * `transport`: for servers that speak a protocol instead of reading an image (sshfs: SFTP), one
 * end of a connected AF_UNIX stream socket whose other end the caller serves (`--via COMMAND`).
 */
export type FdRole = 'source' | 'target' | 'transport';

export type MountRequest = {
  op: 'mount';
  fstype: string;
  options: string;
  fds: FdRole[];
  sourceName?: string;
  targetName?: string;
};
export type UnmountRequest = { op: 'unmount'; fds: FdRole[]; id?: number; timeoutMs?: number };
export type ListRequest = { op: 'list'; fds: []; after?: number };
export type Request = MountRequest | UnmountRequest | ListRequest;

const FIELDS: Record<Request['op'], readonly string[]> = {
  mount: ['v', 'op', 'fstype', 'options', 'fds', 'source_name', 'target_name'],
  unmount: ['v', 'op', 'fds', 'id', 'timeout_ms'],
  list: ['v', 'op', 'fds', 'after'],
};
const ROLES: Record<Request['op'], { required: readonly FdRole[]; optional: readonly FdRole[] }> = {
  // A mount carries exactly one of source and transport (checked below): which one the server
  // definition takes is the broker's to check (ESOURCE_KIND).
  mount: { required: ['target'], optional: ['source', 'transport'] },
  unmount: { required: [], optional: ['target'] },
  list: { required: [], optional: [] },
};

/** What came off the socket for one packet. */
export type Packet = { data: Buffer; fds: number[]; truncated: boolean };

/**
 * Decodes one request packet. Never throws anything but RequestError; never trusts a field's
 * type. The caller owns (and must close) packet.fds whatever happens.
 */
export function decodeRequest(packet: Packet): Request {
  if (packet.truncated || packet.data.length === 0 || packet.data.length > MAX_MESSAGE_BYTES) {
    throw new RequestError('EPROTO_SIZE', `request must be 1-${MAX_MESSAGE_BYTES} bytes in one packet with at most ${MAX_FDS} descriptors`);
  }
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(packet.data));
  } catch {
    throw new RequestError('EPROTO_JSON', 'request is not valid UTF-8 JSON');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new RequestError('EPROTO_JSON', 'request is not a JSON object');
  }
  const o = body as Record<string, unknown>;
  if (o.v !== PROTOCOL_VERSION) {
    throw new RequestError('EPROTO_VERSION', `protocol version must be ${PROTOCOL_VERSION}`);
  }
  const op = o.op;
  if (op !== 'mount' && op !== 'unmount' && op !== 'list') {
    throw new RequestError('EOP', typeof op === 'string' ? `unknown operation "${oneLine(op, 40)}"` : 'field "op" must be a string');
  }
  for (const k of Object.keys(o)) {
    if (!FIELDS[op].includes(k)) throw new RequestError('EPROTO_FIELD', `unknown field "${oneLine(k, 40)}" for ${op}`);
  }
  // Fields first, then descriptors: a malformed body is reported as such whatever came with it.
  switch (op) {
    case 'mount': {
      const fstype = str(o, 'fstype', 64, true)!;
      const options = str(o, 'options', 1024, false) ?? 'rw';
      const sourceName = str(o, 'source_name', MAX_NAME_BYTES, false);
      const targetName = str(o, 'target_name', MAX_NAME_BYTES, false);
      return { op, fstype, options, fds: decodeRoles(o.fds, op, packet.fds.length), sourceName, targetName };
    }
    case 'unmount': {
      const id = int(o, 'id', 1, 2 ** 31 - 1);
      const timeoutMs = int(o, 'timeout_ms', 0, 600_000);
      const fds = decodeRoles(o.fds, op, packet.fds.length);
      if ((id === undefined) === (fds.length === 0)) {
        throw new RequestError('EPROTO_FIELD', 'unmount takes either a "target" descriptor or an "id", exactly one');
      }
      return { op, fds, id, timeoutMs };
    }
    case 'list': {
      const after = int(o, 'after', 0, 2 ** 31 - 1);
      decodeRoles(o.fds, op, packet.fds.length);
      return after === undefined ? { op, fds: [] } : { op, fds: [], after };
    }
  }
}

function decodeRoles(v: unknown, op: Request['op'], received: number): FdRole[] {
  const roles = v === undefined ? [] : v;
  if (!Array.isArray(roles) || !roles.every((r) => typeof r === 'string')) {
    throw new RequestError('EPROTO_FIELD', 'field "fds" must be an array of role names');
  }
  const spec = ROLES[op];
  const seen = new Set<string>();
  for (const r of roles as string[]) {
    if (!spec.required.includes(r as FdRole) && !spec.optional.includes(r as FdRole)) {
      throw new RequestError('EPROTO_FDS', `descriptor role "${oneLine(r, 40)}" is not taken by ${op}`);
    }
    if (seen.has(r)) throw new RequestError('EPROTO_FDS', `descriptor role "${r}" named twice`);
    seen.add(r);
  }
  for (const r of spec.required) {
    if (!seen.has(r)) throw new RequestError('EPROTO_FDS', `${op} needs a "${r}" descriptor`);
  }
  if (op === 'mount' && seen.has('source') === seen.has('transport')) {
    throw new RequestError('EPROTO_FDS', 'mount needs exactly one of a "source" and a "transport" descriptor');
  }
  if (roles.length !== received) {
    throw new RequestError('EPROTO_FDS', `"fds" names ${roles.length} descriptor(s) but ${received} arrived`);
  }
  return roles as FdRole[];
}

function str(o: Record<string, unknown>, k: string, max: number, required: boolean): string | undefined {
  const v = o[k];
  if (v === undefined && !required) return undefined;
  if (typeof v !== 'string') throw new RequestError('EPROTO_FIELD', `field "${k}" must be a string`);
  if (Buffer.byteLength(v) > max) throw new RequestError('EPROTO_FIELD', `field "${k}" is longer than ${max} bytes`);
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(v)) throw new RequestError('EPROTO_FIELD', `field "${k}" contains control characters`);
  return v;
}

function int(o: Record<string, unknown>, k: string, min: number, max: number): number | undefined {
  const v = o[k];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new RequestError('EPROTO_FIELD', `field "${k}" must be an integer from ${min} to ${max}`);
  }
  return v;
}

/**
 * The SOURCE of a transport mount (`PATH`, `:PATH` or `HOST:PATH`, as scp reads it: a colon
 * before any slash ends a host part). `path` is the remote directory the server is given
 * (empty: the remote side's start directory); `host` is only ever shown.
 */
export function splitRemoteSource(source: string): { host: string; path: string } {
  const colon = source.indexOf(':');
  const slash = source.indexOf('/');
  if (colon < 0 || (slash >= 0 && slash < colon)) return { host: '', path: source };
  return { host: source.slice(0, colon), path: source.slice(colon + 1) };
}

export type Reply = { ok: true; [k: string]: unknown } | { ok: false; code: ErrorCode; message: string };

export function encodeReply(r: Reply): Buffer {
  const b = Buffer.from(JSON.stringify({ v: PROTOCOL_VERSION, ...r }));
  if (b.length > MAX_REPLY_BYTES) throw new Error('reply too large');
  return b;
}

/**
 * One page of a `list` reply. `entries` are the caller's mounts with ids above the request's
 * `after`, in ascending id order. The page holds as many as fit in LIST_PAGE_BYTES; `next` is
 * the id to send as `after` for the rest, or null when this page holds the last one. Ids only
 * grow, so a client that follows `next` sees every mount that lived through its walk exactly
 * once. An entry too large for a page alone (a state file from disk can say anything) has its
 * long strings cut and carries `"trimmed": true`; `taken` counts the entries of `entries` used.
 */
export function listPage<T extends { id: number }>(entries: readonly T[]): { mounts: T[]; next: number | null; taken: number } {
  const mounts: T[] = [];
  let bytes = 0;
  for (const e of entries) {
    let entry = e;
    let size = Buffer.byteLength(JSON.stringify(entry)) + 1;
    if (size > LIST_PAGE_BYTES) {
      entry = trimEntry(entry);
      size = Buffer.byteLength(JSON.stringify(entry)) + 1;
      if (size > LIST_PAGE_BYTES) {
        entry = { id: e.id, trimmed: true } as unknown as T;
        size = Buffer.byteLength(JSON.stringify(entry)) + 1;
      }
    }
    if (bytes + size > LIST_PAGE_BYTES) break;
    mounts.push(entry);
    bytes += size;
  }
  const next = mounts.length < entries.length ? mounts[mounts.length - 1]!.id : null;
  return { mounts, next, taken: mounts.length };
}

function trimEntry<T>(e: T): T {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(e as Record<string, unknown>)) {
    out[k] = typeof v === 'string' && v.length > LIST_FIELD_TRIM ? v.slice(0, LIST_FIELD_TRIM - 1) + '…' : v;
  }
  out.trimmed = true;
  return out as T;
}

export function errorReply(e: unknown): Reply {
  if (e instanceof RequestError) return { ok: false, code: e.code, message: e.message };
  return { ok: false, code: 'EINTERNAL', message: oneLine(String((e as Error)?.message ?? e)) };
}

/** Client side: turns a reply packet into an object or a RequestError. */
export function decodeReply(data: Buffer): { ok: true; [k: string]: unknown } {
  let o: unknown;
  try {
    o = JSON.parse(data.toString('utf8'));
  } catch {
    throw new RequestError('EPROTO_JSON', 'the broker sent a reply that is not JSON');
  }
  const r = o as Record<string, unknown>;
  if (typeof r !== 'object' || r === null || r.v !== PROTOCOL_VERSION) {
    throw new RequestError('EPROTO_VERSION', 'the broker speaks another protocol version');
  }
  if (r.ok === true) return r as { ok: true };
  const code = isErrorCode(r.code) ? r.code : 'EINTERNAL';
  throw new RequestError(code, typeof r.message === 'string' ? r.message : errorText(code));
}

/** Client side: the request body. */
export function encodeRequest(body: Record<string, unknown>): Buffer {
  const b = Buffer.from(JSON.stringify({ v: PROTOCOL_VERSION, ...body }));
  if (b.length > MAX_MESSAGE_BYTES) throw new RequestError('EPROTO_SIZE', 'request too large');
  return b;
}
