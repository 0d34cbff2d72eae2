/**
 * /v1/renew/challenge is unauthenticated: a stranger who knows a device id must not be able to
 * keep that device from renewing, neither by burning its rate limit nor by evicting its nonce.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TestDevice, injectTransport } from '../helpers/device.js';
import { startInProcessServer } from '../helpers/server.js';
import { startSwtpm, extendBootPcrs } from '../../scripts/harness/swtpm.js';

test('a flood of challenges for a victim device from elsewhere neither rate-limits nor evicts its own renewal', async (t) => {
  const srv = await startInProcessServer({ rateLimit: { renew: { max: 5, window: '1m' } } });
  t.after(() => srv.close());
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  const device = injectTransport(srv.server.app, { remoteAddress: '10.1.1.1' });
  const attacker = injectTransport(srv.server.app, { remoteAddress: '192.0.2.66' });
  await dev.enroll(device, await srv.token());

  const codes: number[] = [];
  for (let i = 0; i < 12; i++) codes.push((await attacker.post('/v1/renew/challenge', { deviceId: dev.deviceId })).status);
  assert.ok(codes.includes(429), `the attacker's own budget runs out (${codes.join(',')})`);

  // The device renews with the nonce it got with its certificate: still there, and not rate-limited.
  const r = await dev.renew(device);
  assert.equal(r.status, 200, JSON.stringify(r.body));
});
