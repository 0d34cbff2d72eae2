/**
 * Issue 4 §8: the esbuild bundle runs with plain `node` from a directory with no node_modules,
 * finds the TPM addon beside itself, enrolls, and reports its own SHA-256 as the posture agentHash.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { extendBootPcrs, startSwtpm } from '../../scripts/harness/swtpm.js';
import { REPO, tmpDir } from '../../scripts/harness/fs.js';
import { createToken, startServerProcess } from '../../scripts/harness/server.js';

const run = promisify(execFile);

function bundled(bundle: string, args: string[], cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const env = { ...process.env };
    delete env.EDGEID_TPM_ADDON;
    delete env.NODE_OPTIONS;
    const child = spawn(process.execPath, [bundle, ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

test('the bundle runs with plain node from anywhere, loads the addon beside itself, enrolls and reports its own hash', async (t) => {
  const out = await tmpDir('edgeid-agent-bundle-', t);
  await run(process.execPath, [path.join(REPO, 'scripts/bundle.mjs'), '--outdir', out, '--only', 'agent'], { cwd: REPO });
  const files = (await readdir(out)).sort();
  assert.deepEqual(files, ['edgeid-agent.js', 'edgeid_tpm.node']);
  const bundle = path.join(out, 'edgeid-agent.js');
  const size = (await stat(bundle)).size;
  t.diagnostic(`bundle ${(size / 1024).toFixed(0)} KiB`);
  assert.ok(size <= 2 * 1024 * 1024, `bundle ≤ 2 MB (is ${size} bytes)`);
  assert.match((await readFile(bundle, 'utf8')).split('\n')[0]!, /^#!\/usr\/bin\/env node$/);

  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const srv = await startServerProcess();
  t.after(() => srv.close());
  const { uri } = await createToken(srv);
  const stateDir = path.join(out, 'state');

  const info = await bundled(bundle, ['tpm', 'info', '--tcti', tpm.tcti, '--json'], out);
  assert.equal(info.code, 0, info.stderr);
  const enrolled = await bundled(bundle, ['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--json'], out);
  assert.equal(enrolled.code, 0, enrolled.stderr);
  const { deviceId } = JSON.parse(enrolled.stdout) as { deviceId: string };
  const device = await srv.admin<any>('GET', `/v1/admin/devices/${deviceId}`);
  assert.equal(device.status, 200);
  const claims = (device.body.device ?? device.body).claims;
  assert.equal(
    claims.agentHash,
    createHash('sha256')
      .update(await readFile(bundle))
      .digest('hex'),
    'posture carries the bundle hash',
  );
  assert.equal(claims.agentVersion, JSON.parse(await readFile(path.join(REPO, 'package.json'), 'utf8')).version);
  const status = await bundled(bundle, ['status', '--state', stateDir, '--json'], out);
  assert.equal(status.code, 0, status.stderr);
  assert.equal(JSON.parse(status.stdout).device.id, deviceId);
});
