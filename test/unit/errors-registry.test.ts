import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ERRORS, EdgeidError } from '../../protocol/errors/index.js';
import { ERRORS_MD, renderErrorsMarkdown } from '../../scripts/errors-doc.js';

test('every registered error code has a status, a message and a fix a person can act on', () => {
  for (const [code, e] of Object.entries(ERRORS)) {
    assert.match(code, /^[a-z][a-z0-9_]*$/, `code ${code} is snake_case`);
    assert.ok(e.status >= 400 && e.status <= 599, `${code}: status ${e.status}`);
    assert.ok(e.message.length >= 10, `${code}: message too short`);
    assert.ok(e.fix.length >= 10, `${code}: fix too short`);
  }
});

test('docs/ERRORS.md is generated from the registry and up to date', () => {
  assert.equal(readFileSync(ERRORS_MD, 'utf8'), renderErrorsMarkdown(), 'run: node --import tsx scripts/errors-doc.ts');
  for (const code of Object.keys(ERRORS)) assert.ok(readFileSync(ERRORS_MD, 'utf8').includes(`\`${code}\``));
});

test('EdgeidError carries the code and the registry status', () => {
  const e = new EdgeidError('tpm_malformed');
  assert.equal(e.code, 'tpm_malformed');
  assert.equal(e.status, ERRORS.tpm_malformed.status);
});
