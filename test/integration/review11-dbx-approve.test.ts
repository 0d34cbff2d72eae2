/**
 * Review (outside reviewer): dbxNoRollback (on by default) against the approved log. A device whose
 * dbx shrank (e.g. firmware settings reset to factory defaults) is quarantined naming the rollback;
 * the operator inspects it and runs approve-baseline, the documented way out of quarantine
 * (docs/ERRORS.md, posture_eventlog_rejected). Asserts the expected outcome (the approved state
 * renews), so it FAILS while approval cannot accept a dbx change. Real swtpm, in-process server.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { deflateSync } from 'node:zlib';
import { buildEventLog, extendEvents, syntheticBootEvents, type SyntheticBoot } from '../../scripts/harness/eventlog.js';
import { startSwtpm, type Swtpm } from '../../scripts/harness/swtpm.js';
import { TestDevice, injectTransport } from '../helpers/device.js';
import { startInProcessServer } from '../helpers/server.js';

const wire = (log: Buffer) => ({ sha256: createHash('sha256').update(log).digest('hex'), deflate: deflateSync(log).toString('base64') });
async function boot(tpm: Swtpm, spec: SyntheticBoot): Promise<Buffer> {
  await tpm.restart();
  const events = syntheticBootEvents(spec);
  await extendEvents(tpm.tcti, events);
  return buildEventLog(events);
}

test('dbx rolled back: quarantined naming it; approve-baseline lets the approved boot renew', async (t) => {
  const srv = await startInProcessServer({ zones: { default: { pcrs: [0, 1, 2, 3, 4, 5, 6, 7] } } });
  t.after(() => srv.close());
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const http = injectTransport(srv.server.app);
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  dev.eventLog = wire(await boot(tpm, { dbxEntries: 3 }));
  const { deviceId } = await dev.enroll(http, await srv.token());

  const reset = await boot(tpm, { dbxEntries: 1 });
  const after = await TestDevice.create(tpm.tcti);
  t.after(() => after.close());
  Object.assign(after, { ak: dev.ak, deviceId: dev.deviceId, nonce: dev.nonce, pcrs: dev.pcrs });
  after.eventLog = wire(reset);
  const r = await after.renew(http);
  assert.equal(r.body.error?.code, 'posture_eventlog_rejected', JSON.stringify(r.body));
  assert.match(r.body.error.message, /dbx rolled back/);

  assert.equal((await srv.admin('POST', `/v1/admin/devices/${deviceId}/approve-baseline`, {})).status, 200);
  const renewed = await after.renew(http);
  assert.equal(renewed.status, 200, `after approve-baseline: ${JSON.stringify(renewed.body)}`);
});
