// Property tests of the policy checks (issue 6, part 5): parseMountOptions with random option
// strings (commas, newlines, NULs, escapes, `..`, `=`), and fsnameFor. Every answer is a clean
// RequestError with a documented code and one line, or options that are safe to pass on.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fc from 'fast-check';
import path from 'node:path';
import { DEFAULTS, type Config } from '../supervisor/config.js';
import { fsnameFor, parseMountOptions, type Caller } from '../supervisor/policy.js';
import { ERRORS, RequestError } from '../supervisor/protocol.js';
import { renderSpec } from '../supervisor/launch-spec.js';
import { loadServers } from '../supervisor/servers.js';
import { ROOT } from './lib/harness.js';

const server = loadServers(path.join(ROOT, 'server')).get('ext4')!;
const cfg: Config = { ...DEFAULTS, rate: { ...DEFAULTS.rate } };
const user: Caller = { uid: 1000, gid: 1000, pid: 1, pidfd: -1, groups: [1000] };
const root: Caller = { ...user, uid: 0, gid: 0, groups: [0] };
const FORBIDDEN = /^(suid|dev|allow_other|allow_root|blkdev|blksize=.*|fd=.*|rootmode=.*|user_id=.*|group_id=.*|fsname=.*|subtype=.*)$/;
const allowedServer = new Set([...server.options.always, ...server.options.readOnly, ...server.options.readWriteNonRoot, ...server.options.allowed]);

const pieces = fc.constantFrom('ro', 'rw', 'suid', 'dev', 'nosuid', 'nodev', 'allow_other', 'fd=3', 'user_id=0', 'max_read=4096', 'max_read=1', 'max_read=99999999', 'norecovery', 'errors=continue', 'errors=panic', 'fakeroot', 'auto_unmount', 'fsname=x', 'subtype=y', '..', '../..', '/etc/passwd', 'a\nb', 'x\u0000y', '\\,', '\\x2c', '%2c', 'ro\\', '=', 'a=b=c', ',', ',,', ' ', '\t', 'RO', 'Rw', 'é', '🙂', 'default_permissions', 'blksize=512', 'rootmode=40000');
const optionString = fc.oneof(
  fc.array(pieces, { maxLength: 8 }).map((a) => a.join(',')),
  fc.tuple(fc.array(fc.oneof(pieces, fc.string({ maxLength: 12 })), { maxLength: 6 }), fc.constantFrom(',', ',,', '\n', '\u0000', '\\,')).map(([a, sep]) => a.join(sep)),
  fc.string({ maxLength: 64 }),
  fc.string({ unit: 'binary', maxLength: 64 }),
  fc.string({ maxLength: 1100 }),
);

function check(opts: string, caller: Caller): true {
  let r;
  try {
    r = parseMountOptions(opts, server, caller, cfg);
  } catch (e) {
    assert.instance(e, RequestError, `only RequestError, for ${JSON.stringify(opts)}`);
    const err = e as RequestError;
    assert.ok(err.code in ERRORS, err.code);
    assert.is(err.code, 'EOPTION');
    assert.not.match(err.message, /[\n\0]/);
    return true;
  }
  // Accepted: nothing a caller may not ask for, everything known, nothing that breaks a
  // comma list, an argv or the launcher spec.
  for (const o of r.serverOptions) {
    assert.ok(allowedServer.has(o), `server option ${o} comes from the definition`);
    assert.not.match(o, FORBIDDEN);
    assert.not.match(o, /[,\s\0\\]|\.\./);
  }
  if (r.maxRead !== undefined) assert.ok(Number.isInteger(r.maxRead) && r.maxRead >= 4096 && r.maxRead <= 1 << 20);
  if (caller.uid !== 0 && !r.readOnly) assert.ok(r.serverOptions.includes('fakeroot'), 'rw for a user means fakeroot');
  if (r.readOnly) assert.ok(r.serverOptions.includes('ro'));
  // every raw piece the caller sent that survived is a plain, allowed token
  for (const piece of opts.split(',').filter(Boolean)) {
    assert.match(piece, /^[a-z0-9_]+(=[a-z0-9_.-]+)?$/i);
    assert.not.match(piece, FORBIDDEN);
  }
  renderSpec([['arg', r.serverOptions.join(',')]]); // throws on TAB, LF, NUL
  return true;
}

test('examples', () => {
  assert.equal(parseMountOptions('ro', server, user, cfg).readOnly, true);
  assert.equal(parseMountOptions('ro,rw', server, user, cfg).readOnly, false);
  assert.ok(parseMountOptions('', server, user, cfg).serverOptions.includes('fakeroot'));
  assert.not.ok(parseMountOptions('', server, root, cfg).serverOptions.includes('fakeroot'));
  for (const bad of ['suid', 'dev', 'allow_other', 'fd=3', 'ro,user_id=0', 'a\nb', 'x\u0000', '..', 'errors=../x', 'fsname=a', 'ro\\,suid', 'max_read=1']) {
    assert.throws(() => parseMountOptions(bad, server, user, cfg), (e: unknown) => e instanceof RequestError && e.code === 'EOPTION', bad);
  }
});

test('property: random option strings (commas, newlines, NULs, escapes, ..) as a user and as root', () => {
  fc.assert(fc.property(optionString, (o) => check(o, user) && check(o, root)), { numRuns: 5000 });
});

test('property: fsnameFor gives a printable token without separators, never empty, at most 200', () => {
  fc.assert(
    fc.property(fc.oneof(fc.string({ maxLength: 300 }), fc.string({ unit: 'binary', maxLength: 300 }), fc.constantFrom('', '..', '../../etc/shadow', 'a,b', 'a b', 'x\ny', 'n\u0000l', 'a\\b', 'é', '\t')), fc.boolean(), (name, undef) => {
      const f = fsnameFor(undef ? undefined : name);
      assert.match(f, /^[A-Za-z0-9._/@:+-]{1,200}$/);
      assert.not.match(f, /[,\s\0\\]/);
      renderSpec([['mount_fsname', f]]);
      return true;
    }),
    { numRuns: 5000 },
  );
});

test.run();
