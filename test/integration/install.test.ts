/**
 * The README's install step: `scripts/install` links the three bundles onto the PATH, and the
 * README's own checks (test/unit/readme.test.ts: the operator's block run as typed) pass against
 * those installed commands — plain `node` bundles found by PATH lookup, not the sources through tsx.
 * Uses the bundles in dist/ that scripts/setup (run by scripts/test) builds.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { lstat, readFile, readlink } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO, tmpDir } from '../../scripts/harness/fs.js';

const run = promisify(execFile);
const PROGRAMS = ['edgeid-server', 'edgeid-admin', 'edgeid-agent'];

test('scripts/install puts the three bundles on the PATH and the README runs as typed against them', { timeout: 300_000 }, async (t) => {
  for (const p of PROGRAMS) {
    assert.ok(existsSync(path.join(REPO, 'dist', `${p}.js`)), `dist/${p}.js exists (scripts/setup or node scripts/bundle.mjs builds it)`);
  }
  const prefix = await tmpDir('edgeid-install-', t);
  await run(path.join(REPO, 'scripts/install'), ['--prefix', prefix, '--no-setup'], { cwd: REPO });
  const bin = path.join(prefix, 'bin');
  for (const p of PROGRAMS) {
    assert.ok((await lstat(path.join(bin, p))).isSymbolicLink(), `${p} is a link`);
    assert.equal(await readlink(path.join(bin, p)), path.join(REPO, 'dist', `${p}.js`));
    assert.equal((await readFile(path.join(bin, p), 'utf8')).split('\n')[0], '#!/usr/bin/env node', `${p}: plain node shebang`);
  }
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${process.env.PATH}`, EDGEID_TEST_BINS: 'installed' };
  delete env.NODE_OPTIONS;
  delete env.NODE_TEST_CONTEXT; // a test file of its own, not a subtest of this runner
  // each program answers --help by its PATH name, without tsx
  for (const p of PROGRAMS) {
    const r = await run(p, ['--help'], { env, cwd: prefix }).catch((e: { code: number; stdout: string; stderr: string }) => e);
    assert.match(`${r.stdout}${r.stderr}`, new RegExp(`usage: ${p}`), `${p} --help`);
  }

  // the README test file, whose CLI runs go through BINS, with BINS = the installed commands
  const child = spawn(process.execPath, ['--import', 'tsx', '--test', '--test-reporter=tap', path.join(REPO, 'test/unit/readme.test.ts')], {
    cwd: REPO,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  assert.equal(code, 0, out);
  assert.match(out, /^ok \d+ - the operator's commands run as typed against edgeid-server/m, out);

  // --uninstall removes exactly its links
  await run(path.join(REPO, 'scripts/install'), ['--prefix', prefix, '--uninstall'], { cwd: REPO });
  for (const p of PROGRAMS) assert.equal(existsSync(path.join(bin, p)), false, `${p} link removed`);
});
