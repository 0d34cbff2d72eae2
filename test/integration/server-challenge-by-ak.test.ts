/**
 * An agent killed after the server issued its first certificate, but before it stored the answer,
 * knows only its AK: /v1/renew/challenge finds the device by the AK's TPM name, and the renewal
 * that follows proves possession of that AK.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { objectName, parsePublic } from '../../protocol/tpm/public.js';
import { TestDevice, injectTransport } from '../helpers/device.js';
import { startInProcessServer } from '../helpers/server.js';
import { startSwtpm, extendBootPcrs } from '../../scripts/harness/swtpm.js';

test('renew/challenge by AK name recovers the device id, and the renewal with that nonce succeeds', async (t) => {
  const srv = await startInProcessServer();
  t.after(() => srv.close());
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  const http = injectTransport(srv.server.app);
  const enrolled = await dev.enroll(http, await srv.token());

  const akName = objectName(parsePublic(dev.ak.public)).toString('hex');
  const ch = await http.post('/v1/renew/challenge', { akName });
  assert.equal(ch.status, 200);
  assert.equal(ch.body.deviceId, enrolled.deviceId);
  assert.equal(ch.body.zone, 'default');
  const r = await dev.renew(http, { nonce: ch.body.nonce });
  assert.equal(r.status, 200, JSON.stringify(r.body));
});

test('renew/challenge answers an unknown AK name with the generic renewal_refused and malformed requests with bad_request', async (t) => {
  const srv = await startInProcessServer();
  t.after(() => srv.close());
  const http = injectTransport(srv.server.app);
  const unknown = await http.post('/v1/renew/challenge', { akName: '000b' + 'ab'.repeat(32) });
  assert.equal(unknown.status, 403);
  assert.equal(unknown.body.error.code, 'renewal_refused');
  for (const body of [{}, { akName: 'zz' }, { akName: '000b00', deviceId: 'x' }, { deviceId: 'dev-1', akName: '000b' + '00'.repeat(32) }]) {
    const r = await http.post('/v1/renew/challenge', body);
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal(r.body.error.code, 'bad_request');
  }
});
