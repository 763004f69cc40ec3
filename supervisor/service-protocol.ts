// The wire format of libfuse's contained-service protocol (libfuse include/fuse_service_priv.h;
// facts in docs/units.md, "Upstream sockets"), server side: what fuse-svcd sends as the server
// and how it reads the helper's packets. Pure functions of buffers; every integer big-endian,
// one message per SOCK_SEQPACKET packet. A malformed packet is EPROTO_SERVICE.
import { RequestError } from './protocol.js';

/** The largest packet either side sends (libfuse's limit). */
export const SERVICE_MAX_PACKET = 65536;
export const SERVICE_VERSION = 1;
/** The argv memfd: at most this many bytes, arguments, and bytes per argument. */
export const ARGV_MAX_BYTES = 65536;
export const ARGV_MAX_ARGS = 64;
export const ARGV_MAX_ARG_BYTES = 4096;

export const MAGIC = {
  HELLO: 'SAFT',
  HELLO_REPLY: 'LAST',
  OPEN: 'OPEN',
  TYPE: 'TYPE',
  NAME: 'NAME',
  OPTS: 'OPTS',
  MNTP: 'MNTP',
  DOIT: 'DOIT',
  BYE: 'BYEE',
  MTAB: 'MTAB',
  FILE: 'FILE',
  REPL: 'REPL',
  ARGS: 'ARGS',
} as const;

/** HELLO flags: what the helper claims about its caller. fuse-svcd decides both itself. */
export const HELLO_ALLOW_OTHER = 1;
export const HELLO_FUSEBLK = 2;

const S_IFDIR = 0o040000;

function bad(what: string): RequestError {
  return new RequestError('EPROTO_SERVICE', what);
}

function magicOf(b: Buffer): string {
  return b.length >= 4 ? b.toString('latin1', 0, 4) : '';
}

function u32(magic: string, ...vals: number[]): Buffer {
  const b = Buffer.alloc(4 + 4 * vals.length);
  b.write(magic, 0, 'latin1');
  vals.forEach((v, i) => b.writeUInt32BE(v >>> 0, 4 + 4 * i));
  return b;
}

function cstring(s: string): Buffer {
  if (s.includes('\0')) throw bad('a string holds a NUL');
  return Buffer.concat([Buffer.from(s, 'utf8'), Buffer.alloc(1)]);
}

function packet(...parts: Buffer[]): Buffer {
  const b = Buffer.concat(parts);
  if (b.length > SERVICE_MAX_PACKET) throw bad(`a packet of ${b.length} bytes would pass the ${SERVICE_MAX_PACKET}-byte limit`);
  return b;
}

export type Hello = { minVersion: number; maxVersion: number; flags: number };

/** HELLO: magic, min and max version (u16 each), flags (u32). */
export function decodeHello(b: Buffer): Hello {
  if (b.length !== 12 || magicOf(b) !== MAGIC.HELLO) throw bad(`expected HELLO (12 bytes, ${MAGIC.HELLO}), got ${b.length} bytes`);
  const h = { minVersion: b.readUInt16BE(4), maxVersion: b.readUInt16BE(6), flags: b.readUInt32BE(8) };
  if (h.minVersion > SERVICE_VERSION || h.maxVersion < SERVICE_VERSION) throw bad(`no common protocol version (helper ${h.minVersion}..${h.maxVersion}, fuse-svcd ${SERVICE_VERSION})`);
  return h;
}

export function encodeHelloReply(): Buffer {
  const b = Buffer.alloc(8);
  b.write(MAGIC.HELLO_REPLY, 0, 'latin1');
  b.writeUInt16BE(SERVICE_VERSION, 4);
  return b;
}

export type FilePacket = { error: number; name: string };

/** FILE: magic, error (u32, a positive errno or 0), NUL-terminated name. */
export function decodeFile(b: Buffer): FilePacket {
  if (b.length < 9 || magicOf(b) !== MAGIC.FILE) throw bad(`expected a FILE packet, got ${b.length} bytes (${JSON.stringify(magicOf(b))})`);
  const end = b.indexOf(0, 8);
  if (end !== b.length - 1) throw bad('FILE: the name is not one NUL-terminated string');
  return { error: b.readUInt32BE(4), name: b.toString('utf8', 8, end) };
}

/** REPL: magic, error (u32): the helper's answer to one command. */
export function decodeReply(b: Buffer): number {
  if (b.length !== 8 || magicOf(b) !== MAGIC.REPL) throw bad(`expected REPL (8 bytes), got ${b.length} bytes (${JSON.stringify(magicOf(b))})`);
  return b.readUInt32BE(4);
}

/** OPEN: open_flags, create_mode, request_flags, block_size, path. */
export function encodeOpen(openFlags: number, path: string): Buffer {
  return packet(u32(MAGIC.OPEN, openFlags, 0, 0, 0), cstring(path));
}

export function encodeType(fsopenFlags: number): Buffer {
  return u32(MAGIC.TYPE, fsopenFlags);
}

export function encodeString(magic: typeof MAGIC.NAME | typeof MAGIC.OPTS | typeof MAGIC.MTAB, s: string): Buffer {
  return packet(Buffer.from(magic, 'latin1'), cstring(s));
}

/** MNTP: expected file type (u16), padding (u16), the mount point as the helper's argv has it. */
export function encodeMountpoint(mountpoint: string): Buffer {
  const h = Buffer.alloc(8);
  h.write(MAGIC.MNTP, 0, 'latin1');
  h.writeUInt16BE(S_IFDIR, 4);
  return packet(h, cstring(mountpoint));
}

export function encodeDoit(msFlags: number): Buffer {
  return u32(MAGIC.DOIT, msFlags);
}

export function encodeBye(exitCode: number): Buffer {
  return u32(MAGIC.BYE, exitCode);
}

/**
 * The argv memfd: ARGS, argc, then {offset, len} per argument, then the strings. Bounded: a
 * helper's argv never needs more than ARGV_MAX_* (fuservicemount3 copies its own argv).
 */
export function decodeArgv(b: Buffer): string[] {
  if (b.length < 8 || magicOf(b) !== MAGIC.ARGS) throw new RequestError('EBADFD_ARGV', 'the argv memfd does not start with an ARGS header');
  const argc = b.readUInt32BE(4);
  if (argc < 1 || argc > ARGV_MAX_ARGS) throw new RequestError('EBADFD_ARGV', `argv: argc ${argc} (1 to ${ARGV_MAX_ARGS})`);
  if (8 + 8 * argc > b.length) throw new RequestError('EBADFD_ARGV', 'argv: the offset table passes the end of the memfd');
  const out: string[] = [];
  for (let i = 0; i < argc; i++) {
    const pos = b.readUInt32BE(8 + 8 * i);
    const len = b.readUInt32BE(12 + 8 * i);
    if (len > ARGV_MAX_ARG_BYTES || pos > b.length || len > b.length - pos) throw new RequestError('EBADFD_ARGV', `argv[${i}]: offset ${pos}, length ${len} out of bounds`);
    const s = b.toString('utf8', pos, pos + len);
    if (s.includes('\0')) throw new RequestError('EBADFD_ARGV', `argv[${i}] holds a NUL`);
    out.push(s);
  }
  return out;
}

export type HelperArgs = { subtype: string; source: string; mountpoint: string; options: string };

/**
 * What the helper was asked for: argv[0] = the subtype (its -t, without fuse./fuseblk.),
 * SOURCE and MOUNTPOINT, options from -o (several are joined). Anything else is refused.
 */
export function parseHelperArgs(argv: string[]): HelperArgs {
  const positional: string[] = [];
  const options: string[] = [];
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-o') {
      if (i + 1 >= argv.length) throw new RequestError('EOPTION', 'argv: -o without options');
      options.push(argv[++i]);
    } else if (a.startsWith('-o')) options.push(a.slice(2));
    else if (a.startsWith('-') && a !== '-') throw new RequestError('EOPTION', `argv: unknown helper option "${a.slice(0, 32)}"`);
    else positional.push(a);
  }
  if (positional.length !== 2) throw new RequestError('EPROTO_SERVICE', `argv: expected SOURCE MOUNTPOINT, got ${positional.length} operand(s)`);
  const subtype = argv[0].replace(/^fuse(blk)?\./, '');
  return { subtype, source: positional[0], mountpoint: positional[1], options: options.join(',') };
}
