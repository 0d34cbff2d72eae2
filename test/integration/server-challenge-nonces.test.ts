/**
 * /v1/renew/challenge is anonymous: challenge nonces are kept per device and requesting network
 * (five each, an IPv6 /64 counting as one network), so strangers asking for challenges for a
 * device between its own challenge and its renewal displace only their own nonces, never the
 * device's (an agent takes the challenge path whenever its issued nonce is stale).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TestDevice, injectTransport } from '../helpers/device.js';
import { startInProcessServer } from '../helpers/server.js';
import { startSwtpm, extendBootPcrs } from '../../scripts/harness/swtpm.js';

test("strangers' challenges for a device do not evict the nonce of the device's own challenge", async (t) => {
  const srv = await startInProcessServer();
  t.after(() => srv.close());
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  const device = injectTransport(srv.server.app, { remoteAddress: '10.1.1.1' });
  await dev.enroll(device, await srv.token());

  // the device's issued nonce is stale: it asks for a challenge
  const ch = await dev.challenge(device);
  assert.equal(ch.status, 200, JSON.stringify(ch.body));

  // six strangers, one challenge each, while the device's TPM is quoting
  for (let i = 0; i < 6; i++) {
    const r = await injectTransport(srv.server.app, { remoteAddress: `192.0.2.${10 + i}` }).post('/v1/renew/challenge', {
      deviceId: dev.deviceId,
    });
    assert.equal(r.status, 200, 'each stranger is far under every limit');
  }
  const r = await dev.renew(device);
  assert.equal(r.status, 200, `the device renews with its own challenge: ${JSON.stringify(r.body)}`);
});
