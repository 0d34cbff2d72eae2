import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { DEPENDENCIES_MD, permissive, productionPackages, renderDependenciesMarkdown } from '../../scripts/deps-doc.js';

test('docs/DEPENDENCIES.md lists the production tree of package-lock.json and is up to date', () => {
  assert.equal(readFileSync(DEPENDENCIES_MD, 'utf8'), renderDependenciesMarkdown(), 'run: node --import tsx scripts/deps-doc.ts');
  const names = productionPackages().map((p) => p.name);
  for (const dev of ['typescript', 'tsx', 'esbuild', 'prettier', 'fast-check'])
    assert.ok(!names.includes(dev), `${dev} is a dev dependency`);
  for (const prod of ['fastify', 'mqtt', 'better-sqlite3', '@peculiar/x509', 'pino']) assert.ok(names.includes(prod), prod);
});

test('every production package has a permissive license', () => {
  const bad = productionPackages().filter((p) => !permissive(p.license));
  assert.deepEqual(bad, [], bad.map((p) => `${p.name}@${p.version}: ${p.license}`).join('\n'));
  assert.equal(permissive('(MIT OR WTFPL)'), true);
  assert.equal(permissive('GPL-3.0-only'), false);
  assert.equal(permissive('(MIT AND GPL-2.0)'), false);
  assert.equal(permissive('UNKNOWN'), false);
});
