/**
 * Review (outside reviewer), end to end with a real swtpm: a device booted with Secure Boot off
 * enrolls into a zone with eventLog.secureBoot by appending to its true log one SecureBoot=1
 * variable event that carries only a SHA-1 digest (the sha256 replay skips it, so the log still
 * replays to the quote). Asserts the SAFE outcome (refused/quarantined), so it FAILS while the
 * defect exists.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { deflateSync } from 'node:zlib';
import { EV, EFI_GLOBAL_VARIABLE } from '../../protocol/eventlog/index.js';
import { buildEventLog, extendEvents, syntheticBootEvents, variableData } from '../../scripts/harness/eventlog.js';
import { startSwtpm } from '../../scripts/harness/swtpm.js';
import { TestDevice, injectTransport } from '../helpers/device.js';
import { startInProcessServer } from '../helpers/server.js';

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

test('Secure Boot off + a SHA-1-only SecureBoot=1 event: enrolled active in a secureBoot zone', async (t) => {
  const srv = await startInProcessServer({ zones: { default: { pcrs: [0, 1, 2, 3, 4, 5, 6, 7], eventLog: { secureBoot: true } } } });
  t.after(() => srv.close());
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const http = injectTransport(srv.server.app);

  await tpm.restart();
  const events = syntheticBootEvents({ secureBoot: 0 });
  await extendEvents(tpm.tcti, events);
  const data = variableData(EFI_GLOBAL_VARIABLE, 'SecureBoot', Buffer.from([1]));
  const alg = Buffer.alloc(2);
  alg.writeUInt16LE(0x0004);
  const extra = Buffer.concat([u32(7), u32(EV.EV_EFI_VARIABLE_DRIVER_CONFIG), u32(1), alg, createHash('sha1').update(data).digest(), u32(data.length), data]);
  const log = Buffer.concat([buildEventLog(events, ['sha1', 'sha256']), extra]);

  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  dev.eventLog = { sha256: createHash('sha256').update(log).digest('hex'), deflate: deflateSync(log).toString('base64') };
  let code: string | undefined;
  try {
    const enrolled = await dev.enroll(http, await srv.token());
    code = (await srv.admin('GET', `/v1/admin/devices/${enrolled.deviceId}`)).body.device.status;
  } catch (e) {
    code = (e as { code?: string }).code ?? String(e);
  }
  assert.notEqual(code, 'active', 'a device with Secure Boot off must not be active in a secureBoot zone');
});
