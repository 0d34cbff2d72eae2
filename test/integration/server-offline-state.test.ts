/**
 * "Anonymous callers learn nothing about a device's state": the time a device has been offline
 * (device_offline_too_long, whose message dates the last certificate) is judged only after the
 * evidence proved the device's AK; a renewal signed by another TPM gets the same answer whether or
 * not the device was offline too long.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TestDevice, injectTransport } from '../helpers/device.js';
import { startInProcessServer } from '../helpers/server.js';
import { startSwtpm, extendBootPcrs } from '../../scripts/harness/swtpm.js';

test("a stranger's renewal for a device offline too long does not learn the device's offline state", async (t) => {
  const srv = await startInProcessServer();
  t.after(() => srv.close());
  const tpms = [await startSwtpm(), await startSwtpm()];
  t.after(async () => {
    for (const s of tpms) await s.stop();
  });
  const devs: TestDevice[] = [];
  t.after(async () => {
    for (const d of devs) await d.close();
  });
  const http = injectTransport(srv.server.app, { remoteAddress: '10.1.1.1' });
  for (const s of tpms) {
    await extendBootPcrs(s.tcti);
    const d = await TestDevice.create(s.tcti);
    devs.push(d);
    await d.enroll(http, await srv.token());
  }
  const [victim, stranger] = devs as [TestDevice, TestDevice];
  const strangerHttp = injectTransport(srv.server.app, { remoteAddress: '192.0.2.66' });

  const answerFor = async (): Promise<unknown> => {
    const ch = await strangerHttp.post('/v1/renew/challenge', { deviceId: victim.deviceId });
    assert.equal(ch.status, 200);
    const { request } = await stranger.renewRequest({ nonce: ch.body.nonce, deviceId: victim.deviceId! });
    const r = await strangerHttp.post('/v1/renew', request);
    return { status: r.status, code: r.body.error?.code, message: r.body.error?.message };
  };
  const online = await answerFor();
  srv.clock.offset = 8 * 86400_000; // past the default maxOffline (7 days)
  const offline = await answerFor();
  assert.deepEqual(offline, online, 'the answer does not depend on how long the device was offline');
});
