/**
 * The static client's JSON reader (helper/native/json.c):
 * 1. what it accepts and refuses, case by case (test/fuzz/json_check.c, built with ASan+UBSan);
 * 2. libFuzzer (test/fuzz/json_fuzz.c) from the committed corpus test/fuzz/corpus/json, for a
 *    bounded time: it must exit 0 and leave no crash, leak, timeout or OOM artifact.
 * Needs clang and libclang-rt-14-dev (Debian). Everything is built in a temporary directory;
 * the committed corpus is read, never written.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './lib/harness.js';

const CORPUS = join(ROOT, 'test/fuzz/corpus/json');
const FUZZ_SECONDS = Number(process.env.FUSE_SVC_FUZZ_SECONDS ?? 20);
const dir = mkdtempSync(join(tmpdir(), 'fuse-svc-fuzz-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

function clang(args: string[]): void {
  const r = spawnSync('clang', args, { encoding: 'utf8', timeout: 120000, cwd: ROOT });
  if (r.error) throw new Error(`clang: ${r.error.message} (install clang and libclang-rt-14-dev)`);
  assert.is(r.status, 0, `clang ${args.join(' ')}\n${r.stderr}`);
  assert.is(r.stderr, '', 'no compiler warnings');
}
const COMMON = ['-std=gnu11', '-g', '-O1', '-D_GNU_SOURCE', '-Wall', '-Wextra', '-Wshadow', '-Ihelper/native'];

let n = 0;
function check(texts: (string | Buffer)[]): string[] {
  const files = texts.map((t) => {
    const f = join(dir, `case${n++}.json`);
    writeFileSync(f, t);
    return f;
  });
  return runCheck(files);
}
function runCheck(files: string[]): string[] {
  const r = spawnSync(join(dir, 'json_check'), files, { encoding: 'utf8', timeout: 60000, env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1' } });
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stderr, '', 'no sanitizer reports');
  const lines = r.stdout.split('\n');
  lines.pop();
  assert.is(lines.length, files.length);
  return lines;
}

test('build the checker and the fuzzer (ASan, UBSan, libFuzzer)', () => {
  clang([...COMMON, '-fsanitize=address,undefined', '-fno-sanitize-recover=undefined', 'test/fuzz/json_check.c', 'helper/native/json.c', '-o', join(dir, 'json_check')]);
  clang([...COMMON, '-fsanitize=fuzzer,address,undefined', '-fno-sanitize-recover=undefined', 'test/fuzz/json_fuzz.c', 'helper/native/json.c', '-o', join(dir, 'json_fuzz')]);
});

test('the committed corpus: *-bad.json refused, every other file accepted', () => {
  const names = readdirSync(CORPUS).sort();
  assert.ok(names.length >= 12, 'a dozen seeds at least');
  const out = runCheck(names.map((f) => join(CORPUS, f)));
  names.forEach((name, i) => {
    if (name.endsWith('-bad.json')) assert.match(out[i], /^ERR /, `${name} must be refused: ${out[i]}`);
    else assert.match(out[i], /^OK /, `${name} must be accepted: ${out[i]}`);
  });
});

test('strict: what is accepted, and how it is re-serialized', () => {
  const cases: [string | Buffer, string][] = [
    ['{"v":1,"ok":true}', '{"v":1,"ok":true}'],
    [' \t\r\n[1 , -0 , 0.5e-3 , 1E+2 ] \n', '[1,-0,0.5e-3,1E+2]'],
    ['"\\u00e9\\u20ac\\ud83d\\ude00"', '"é€😀"'],
    ['"\\"\\\\\\/\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f"', '"\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u001f\u007f"'],
    ['"é😀"', '"é😀"'],
    ['{"":null,"a":{"a":[]}}', '{"":null,"a":{"a":[]}}'],
    ['9223372036854775808', '9223372036854775808'],
    ['"\\u0000"', '"\\u0000"'],
    ['[' + '['.repeat(31) + ']'.repeat(31) + ']', '[' + '['.repeat(31) + ']'.repeat(31) + ']'],
  ];
  const out = check(cases.map((c) => c[0]));
  cases.forEach(([input, want], i) => assert.is(out[i], `OK ${want}`, String(input)));
});

test('strict: everything malformed is refused', () => {
  const bad: (string | Buffer)[] = [
    '', ' ', '{', '}', '[1,]', '{"a":1,}', '[,1]', '{"a"}', '{"a":}', '{a:1}', "{'a':1}", '[1 2]', '{"a":1 "b":2}',
    '01', '-', '-01', '1.', '.5', '1e', '1e+', '+1', '0x10', 'NaN', 'Infinity', '-Infinity', '1_0',
    'tru', 'true false', 'nul', 'nulll', 'True', '[true', '"abc', '"\\"', '"\\x41"', '"\\u12"', '"\\u12g4"', '"\\U0041"',
    '"\\ud800"', '"\\udc00"', '"\\ud800\\u0041"', '"\\ud800x"', '"a\nb"', '"a\tb"', '"\u0000"',
    Buffer.from([0x22, 0xff, 0x22]), Buffer.from([0x22, 0xc0, 0xaf, 0x22]), Buffer.from([0x22, 0xe0, 0x80, 0xaf, 0x22]),
    Buffer.from([0x22, 0xed, 0xa0, 0x80, 0x22]), Buffer.from([0x22, 0xf4, 0x90, 0x80, 0x80, 0x22]), Buffer.from([0x22, 0xc3, 0x22]),
    '{"a":1,"a":2}', '{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"a":10}', '{"\\u0061":1,"a":2}',
    '[' + '['.repeat(32) + ']'.repeat(32) + ']', '{"a":'.repeat(33) + '1' + '}'.repeat(33),
    '// c\n1', '/* c */ 1', '1 // c', '\ufeff1', '[1]\u0000', '\u00a01', '{"a":1}{"b":2}', '"a" "b"',
  ];
  const out = check(bad);
  bad.forEach((input, i) => assert.match(out[i], /^ERR \d+ \S/, `must be refused: ${JSON.stringify(input.toString())} -> ${out[i]}`));
});

test('size limit: more than 1 MiB is refused before parsing', () => {
  const big = '[' + '1,'.repeat(600000) + '1]';
  const [out] = check([big]);
  assert.match(out, /^ERR 1048576 input longer than 1048576 bytes/);
});

test(`libFuzzer: ${FUZZ_SECONDS} s from the committed corpus, no crash, leak or timeout`, () => {
  const work = join(dir, 'corpus');
  const artifacts = join(dir, 'artifacts');
  mkdirSync(work);
  mkdirSync(artifacts);
  const r = spawnSync(
    join(dir, 'json_fuzz'),
    [
      `-max_total_time=${FUZZ_SECONDS}`, '-runs=50000000', '-max_len=8192', '-timeout=10', '-rss_limit_mb=2048',
      '-print_final_stats=1', `-artifact_prefix=${artifacts}/`, work, CORPUS,
    ],
    { encoding: 'utf8', timeout: (FUZZ_SECONDS + 60) * 1000, maxBuffer: 64 << 20 },
  );
  if (r.error) throw r.error;
  const tail = r.stderr.split('\n').slice(-40).join('\n');
  assert.is(r.status, 0, tail);
  assert.equal(readdirSync(artifacts), [], 'no crash-/leak-/timeout-/oom- files');
  const runs = Number(/stat::number_of_executed_units:\s+(\d+)/.exec(r.stderr)?.[1] ?? 0);
  assert.ok(runs > 1000, `the fuzzer ran (${runs} inputs)`);
});

test.run();
