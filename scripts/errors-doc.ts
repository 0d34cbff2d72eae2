/**
 * Generates docs/ERRORS.md from the one error registry (protocol/errors).
 *   node --import tsx scripts/errors-doc.ts          writes docs/ERRORS.md
 *   node --import tsx scripts/errors-doc.ts --check  exits 1 if docs/ERRORS.md is out of date
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ERRORS } from '../protocol/errors/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ERRORS_MD = path.join(here, '..', 'docs', 'ERRORS.md');

const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');

export function renderErrorsMarkdown(): string {
  const rows = Object.entries(ERRORS).sort(([a], [b]) => a.localeCompare(b));
  return [
    '# Error codes',
    '',
    'Generated from `protocol/errors/` by `node --import tsx scripts/errors-doc.ts`; a test fails when this file',
    'and the registry disagree. The server answers `{"error": {"code", "message"}}` with the status below; the',
    'agent and `edgeid-admin` print the message and the fix.',
    '',
    '| code | HTTP | what it means | what to do |',
    '|---|---|---|---|',
    ...rows.map(([code, e]) => `| \`${code}\` | ${e.status} | ${cell(e.message)} | ${cell(e.fix)} |`),
    '',
  ].join('\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const want = renderErrorsMarkdown();
  if (process.argv.includes('--check')) {
    let have = '';
    try {
      have = readFileSync(ERRORS_MD, 'utf8');
    } catch {
      /* missing */
    }
    if (have !== want) {
      console.error('docs/ERRORS.md is out of date: run node --import tsx scripts/errors-doc.ts');
      process.exit(1);
    }
  } else {
    writeFileSync(ERRORS_MD, want);
    console.log(`wrote ${ERRORS_MD} (${Object.keys(ERRORS).length} codes)`);
  }
}
