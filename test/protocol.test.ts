// The protocol decoder: examples, the docs agree with the code, and property tests with
// fast-check (any bytes, any JSON shape, any descriptor count: a clean RequestError or a
// valid request, never another exception).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ERRORS, PLUGIN_ERRORS, MAX_MESSAGE_BYTES, RequestError, decodeRequest, encodeReply, errorReply, type Packet } from '../supervisor/protocol.js';
import { renderProtocolDoc } from '../scripts/gen-docs.js';
import { ROOT } from './lib/harness.js';

const pkt = (body: unknown, fds = 0, truncated = false): Packet => ({ data: Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)), fds: Array.from({ length: fds }, (_, i) => 100 + i), truncated });
const codeOf = (p: Packet): string => {
  try {
    decodeRequest(p);
    return 'ok';
  } catch (e) {
    assert.instance(e, RequestError);
    return (e as RequestError).code;
  }
};

test('docs/protocol.md lists exactly the error table of the code', () => {
  const doc = readFileSync(path.join(ROOT, 'docs', 'protocol.md'), 'utf8');
  assert.is(doc, renderProtocolDoc(doc), 'run npm run docs');
  for (const code of [...Object.keys(ERRORS), ...Object.keys(PLUGIN_ERRORS)]) assert.ok(doc.includes(`\`${code}\``), code);
  for (const code of Object.keys(PLUGIN_ERRORS)) assert.not.ok(code in ERRORS, `${code} is in one table only`);
});

test('valid requests decode', () => {
  const m = decodeRequest(pkt({ v: 1, op: 'mount', fstype: 'ext4', options: 'rw', fds: ['source', 'target'], source_name: 'a', target_name: 'b' }, 2));
  assert.equal(m, { op: 'mount', fstype: 'ext4', options: 'rw', fds: ['source', 'target'], sourceName: 'a', targetName: 'b' });
  assert.equal(decodeRequest(pkt({ v: 1, op: 'list' })), { op: 'list', fds: [] });
  assert.equal(decodeRequest(pkt({ v: 1, op: 'unmount', id: 3 })), { op: 'unmount', fds: [], id: 3, timeoutMs: undefined });
  assert.equal(decodeRequest(pkt({ v: 1, op: 'unmount', fds: ['target'] }, 1)).fds, ['target']);
});

test('refusals carry the documented codes', () => {
  assert.is(codeOf(pkt('')), 'EPROTO_SIZE');
  assert.is(codeOf(pkt('x'.repeat(MAX_MESSAGE_BYTES + 1))), 'EPROTO_SIZE');
  assert.is(codeOf(pkt({ v: 1, op: 'list' }, 0, true)), 'EPROTO_SIZE');
  assert.is(codeOf(pkt('{"v":1,')), 'EPROTO_JSON');
  assert.is(codeOf(pkt('null')), 'EPROTO_JSON');
  assert.is(codeOf(pkt({ v: '1', op: 'list' })), 'EPROTO_VERSION');
  assert.is(codeOf(pkt({ v: 1 })), 'EOP');
  assert.is(codeOf(pkt({ v: 1, op: 'list', x: 1 })), 'EPROTO_FIELD');
  assert.is(codeOf(pkt({ v: 1, op: 'list' }, 1)), 'EPROTO_FDS');
  assert.is(codeOf(pkt({ v: 1, op: 'unmount' })), 'EPROTO_FIELD');
  assert.is(codeOf(pkt({ v: 1, op: 'unmount', id: 1, fds: ['target'] }, 1)), 'EPROTO_FIELD');
  assert.is(codeOf(pkt({ v: 1, op: 'unmount', id: 1.5 })), 'EPROTO_FIELD');
  assert.is(codeOf(pkt({ v: 1, op: 'mount', fstype: 'ext4', fds: ['source'] }, 1)), 'EPROTO_FDS');
  assert.is(codeOf(pkt({ v: 1, op: 'mount', fstype: 'ext4', fds: ['source', 'target'], source_name: 'a\u0000b' }, 2)), 'EPROTO_FIELD');
  assert.is(codeOf(pkt({ v: 1, op: 'mount', fstype: 'ext4', fds: ['source', 'target'], __proto__: 1 }, 2)), 'ok');
  assert.is(codeOf(pkt('{"v":1,"op":"list","__proto__":{"x":1}}')), 'EPROTO_FIELD');
});

test('replies: one line, stable code, never a stack', () => {
  const r = errorReply(new Error('boom\nat x'));
  assert.equal(r, { ok: false, code: 'EINTERNAL', message: 'boom at x' });
  const b = encodeReply(errorReply(new RequestError('EPERM_TARGET', 'no\r\nway')));
  assert.equal(JSON.parse(b.toString()), { v: 1, ok: false, code: 'EPERM_TARGET', message: 'no way' });
});

const arbString = fc.oneof(fc.string(), fc.constantFrom('', 'ext4', 'rw', 'ro,suid', '../../etc', 'a,b', 'x\ny', 'nul\u0000', '\\u0000', 'source', 'target', '%n', '🙂'));
const arbValue = fc.letrec((tie) => ({
  v: fc.oneof({ depthSize: 'small' }, fc.integer(), fc.double(), fc.boolean(), fc.constant(null), arbString, fc.array(tie('v'), { maxLength: 4 }), fc.dictionary(arbString, tie('v'), { maxKeys: 4 })),
})).v;
const arbRequest = fc.record(
  { v: fc.oneof(fc.constant(1), arbValue), op: fc.oneof(fc.constantFrom('mount', 'unmount', 'list'), arbValue), fstype: arbValue, options: arbValue, fds: fc.oneof(fc.constant(['source', 'target']), fc.array(arbString, { maxLength: 5 }), arbValue), id: arbValue, source_name: arbValue, timeout_ms: arbValue },
  { requiredKeys: [] },
);

test('property: random bytes never crash the decoder', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 2048 }), fc.nat(6), fc.boolean(), (bytes, n, t) => {
      const c = codeOf({ data: Buffer.from(bytes), fds: Array.from({ length: n }, (_, i) => i), truncated: t });
      return c === 'ok' || c in ERRORS;
    }),
    { numRuns: 3000 },
  );
});

test('property: random JSON shapes give a valid request or a clean refusal', () => {
  fc.assert(
    fc.property(arbRequest, fc.nat(5), (body, n) => {
      const p = pkt(body, n);
      let req;
      try {
        req = decodeRequest(p);
      } catch (e) {
        return e instanceof RequestError && e.code in ERRORS && !e.message.includes('\n');
      }
      // Anything accepted is well-formed: the descriptor count matches the roles.
      return req.fds.length === n && ['mount', 'unmount', 'list'].includes(req.op);
    }),
    { numRuns: 3000 },
  );
});

test.run();
