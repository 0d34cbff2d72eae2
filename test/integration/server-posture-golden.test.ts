/**
 * Golden-value zones judge every quote against the zone's values: enrollment records no
 * device-specific baseline, so a device whose PCRs leave the golden values is quarantined.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { TestDevice, injectTransport } from '../helpers/device.js';
import { startInProcessServer } from '../helpers/server.js';
import { startSwtpm, extendBootPcrs, bootMeasurement } from '../../scripts/harness/swtpm.js';

const run = promisify(execFile);

test('a golden zone keeps no per-device baseline and quarantines a device whose PCRs leave the golden values', async (t) => {
  const golden: Record<string, string> = {};
  for (const pcr of [0, 7])
    golden[pcr] = createHash('sha256').update(Buffer.alloc(32)).update(bootMeasurement(pcr, 'golden-board')).digest('hex');
  const srv = await startInProcessServer({ zones: { default: { pcrs: [0, 7], posture: { golden } } } });
  t.after(() => srv.close());
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti, 'golden-board', [0, 7]);
  const http = injectTransport(srv.server.app);

  const dev = await TestDevice.create(tpm.tcti);
  const enrolled = await dev.enroll(http, await srv.token());
  const shown = await srv.admin('GET', `/v1/admin/devices/${enrolled.deviceId}`);
  assert.equal(shown.body.device.baseline, null);
  assert.equal((await dev.renew(http)).status, 200);
  await dev.close();

  // new firmware: PCR 0 no longer matches the golden value
  await run('tpm2_pcrextend', ['-T', tpm.tcti, `0:sha256=${bootMeasurement(0, 'unapproved').toString('hex')}`]);
  const again = await TestDevice.create(tpm.tcti);
  t.after(() => again.close());
  Object.assign(again, { ak: dev.ak, deviceId: dev.deviceId, nonce: dev.nonce, pcrs: dev.pcrs });
  const r = await again.renew(http);
  assert.equal(r.status, 403, JSON.stringify(r.body));
  assert.equal(r.body.error.code, 'posture_pcr_mismatch');
  assert.match(r.body.error.message, /PCRs 0 differ from the zone's golden values/);
  assert.equal((await srv.admin('GET', `/v1/admin/devices/${enrolled.deviceId}`)).body.device.status, 'quarantined');
});
