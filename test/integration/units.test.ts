/**
 * The systemd units as far as systemd can check them without being PID 1: `systemd-analyze verify`
 * (syntax, directives this systemd knows, ExecStart binary present; --man=no: the manual pages of
 * Documentation= come with the packages, which lintian checks) says nothing, and `systemd-analyze
 * security --offline` rates their sandbox at most 2.0 ("OK"). Running the ExecStart under the
 * emulated sandbox is in packages.test.ts (scripts/unit-run); what neither covers is listed in
 * docs/PACKAGING.md.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO, tmpDir } from '../../scripts/harness/fs.js';

const run = promisify(execFile);
const UNITS = ['edgeid-agent.service', 'edgeid-server.service'];

async function verify(file: string): Promise<string> {
  const r = await run('systemd-analyze', ['verify', '--man=no', file]).catch((e: { stdout: string; stderr: string }) => ({
    stdout: e.stdout,
    stderr: `${e.stderr}(exit non-zero)`,
  }));
  return (r.stdout + r.stderr).trim();
}

test('systemd-analyze verify accepts both units and rates their exposure at most 2.0', async (t) => {
  const dir = await tmpDir('edgeid-units-', t);
  for (const u of UNITS) {
    // verify wants the unit under its own name
    const f = path.join(dir, u);
    await copyFile(path.join(REPO, 'scripts', u), f);
    assert.equal(await verify(f), '', `${u}: systemd-analyze verify is silent`);
    const sec = await run('systemd-analyze', ['security', '--offline=yes', f]);
    const m = /Overall exposure level for \S+: ([\d.]+)/.exec(sec.stdout + sec.stderr);
    assert.ok(m, sec.stdout);
    t.diagnostic(`${u}: exposure ${m[1]}`);
    assert.ok(Number(m[1]) <= 2.0, `${u}: exposure ${m[1]} ≤ 2.0`);
  }
  // the check can fail: a misspelt directive is reported
  const bad = path.join(dir, 'edgeid-server.service');
  await writeFile(bad, (await readFile(bad, 'utf8')).replace('ProtectHome=yes', 'ProtectHomee=yes'));
  assert.match(await verify(bad), /Unknown key 'ProtectHomee'/);
});
