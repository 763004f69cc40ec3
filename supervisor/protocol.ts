// The request protocol in one place: limits, the error table, the decoder and the encoder.
// docs/protocol.md is checked against ERRORS by test/protocol.test.ts.

export const PROTOCOL_VERSION = 1;
export const MAX_MESSAGE_BYTES = 16384;
export const MAX_FDS = 4;
export const MAX_NAME_BYTES = 1024;

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
  ESHUTDOWN: 'the broker is stopping',
  EINTERNAL: 'an internal error; the broker log has details',
} as const;

export type ErrorCode = keyof typeof ERRORS;

/** An error with a stable protocol code; `message` is one line for the caller. */
export class RequestError extends Error {
  constructor(
    readonly code: ErrorCode,
    message?: string,
  ) {
    super(oneLine(message ?? ERRORS[code]));
    this.name = 'RequestError';
  }
}

export function isErrorCode(s: unknown): s is ErrorCode {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(ERRORS, s);
}

/** Collapses anything into one printable line of bounded length. */
export function oneLine(s: string, max = 512): string {
  // eslint-disable-next-line no-control-regex
  const flat = s.replace(/[\x00-\x1f\x7f]+/g, ' ').replace(/\s+/g, ' ').trim();
  return flat.length > max ? flat.slice(0, max - 1) + '…' : flat;
}

export type FdRole = 'source' | 'target';

export type MountRequest = {
  op: 'mount';
  fstype: string;
  options: string;
  fds: FdRole[];
  sourceName?: string;
  targetName?: string;
};
export type UnmountRequest = { op: 'unmount'; fds: FdRole[]; id?: number; timeoutMs?: number };
export type ListRequest = { op: 'list'; fds: [] };
export type Request = MountRequest | UnmountRequest | ListRequest;

const FIELDS: Record<Request['op'], readonly string[]> = {
  mount: ['v', 'op', 'fstype', 'options', 'fds', 'source_name', 'target_name'],
  unmount: ['v', 'op', 'fds', 'id', 'timeout_ms'],
  list: ['v', 'op', 'fds'],
};
const ROLES: Record<Request['op'], { required: readonly FdRole[]; optional: readonly FdRole[] }> = {
  mount: { required: ['source', 'target'], optional: [] },
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
    case 'list':
      decodeRoles(o.fds, op, packet.fds.length);
      return { op, fds: [] };
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

export type Reply = { ok: true; [k: string]: unknown } | { ok: false; code: ErrorCode; message: string };

export function encodeReply(r: Reply): Buffer {
  const b = Buffer.from(JSON.stringify({ v: PROTOCOL_VERSION, ...r }));
  if (b.length > 65536) throw new Error('reply too large');
  return b;
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
  throw new RequestError(code, typeof r.message === 'string' ? r.message : ERRORS[code]);
}

/** Client side: the request body. */
export function encodeRequest(body: Record<string, unknown>): Buffer {
  const b = Buffer.from(JSON.stringify({ v: PROTOCOL_VERSION, ...body }));
  if (b.length > MAX_MESSAGE_BYTES) throw new RequestError('EPROTO_SIZE', 'request too large');
  return b;
}
