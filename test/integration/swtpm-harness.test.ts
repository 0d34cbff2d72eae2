import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startSwtpm, extendBootPcrs, bootMeasurement, transientHandleCountViaTools } from '../../scripts/harness/swtpm.js';
import { createHash } from 'node:crypto';

const run = promisify(execFile);

test('a manufactured swtpm carries both EKs and their certificates, with empty transient slots', async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const { stdout } = await run('tpm2_getcap', ['-T', tpm.tcti, 'handles-persistent']);
  assert.match(stdout, /0x81010001/);
  assert.match(stdout, /0x81010016/);
  const nv = await run('tpm2_getcap', ['-T', tpm.tcti, 'handles-nv-index']);
  assert.match(nv.stdout, /0x1C00002/i);
  assert.match(nv.stdout, /0x1C00016/i);
  assert.equal(await transientHandleCountViaTools(tpm.tcti), 0);
});

test('extendBootPcrs emulates measured boot and a restart resets the PCRs', async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti, 'board-a', [0]);
  const expected = createHash('sha256').update(Buffer.alloc(32)).update(bootMeasurement(0, 'board-a')).digest('hex');
  const { stdout } = await run('tpm2_pcrread', ['-T', tpm.tcti, 'sha256:0']);
  assert.match(stdout.toLowerCase(), new RegExp(`0x${expected}`));
  await tpm.restart();
  const after = await run('tpm2_pcrread', ['-T', tpm.tcti, 'sha256:0']);
  assert.match(after.stdout, /0x0{64}/);
});
