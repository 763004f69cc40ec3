// Writes the generated parts of the docs from the code that owns them (the error table of
// supervisor/protocol.ts into docs/protocol.md). `--check` exits 1 when a doc is stale.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ERRORS, PLUGIN_ERRORS } from '../supervisor/protocol.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export function errorTable(table: Record<string, string> = ERRORS): string {
  return ['| code | meaning |', '|---|---|', ...Object.entries(table).map(([c, m]) => `| \`${c}\` | ${m} |`)].join('\n');
}

/** Replaces the generated block between `<!-- NAME:BEGIN ... -->` and `<!-- NAME:END -->`. */
function renderBlock(text: string, name: string, table: Record<string, string>): string {
  const begin = text.indexOf(`<!-- ${name}:BEGIN`);
  const end = text.indexOf(`<!-- ${name}:END -->`);
  if (begin < 0 || end < 0) throw new Error(`docs/protocol.md lacks the ${name} markers`);
  const head = text.slice(0, text.indexOf('\n', begin) + 1);
  return `${head}${errorTable(table)}\n${text.slice(end)}`;
}

export function renderProtocolDoc(text: string): string {
  return renderBlock(renderBlock(text, 'ERRORS', ERRORS), 'PLUGIN_ERRORS', PLUGIN_ERRORS);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const file = path.join(root, 'docs', 'protocol.md');
  const now = readFileSync(file, 'utf8');
  const want = renderProtocolDoc(now);
  if (process.argv.includes('--check')) {
    if (now !== want) {
      process.stderr.write('docs/protocol.md is stale: run npm run docs\n');
      process.exit(1);
    }
  } else writeFileSync(file, want);
}
