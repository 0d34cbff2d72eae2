/**
 * Review (outside reviewer): a zero-touch manifest entry can be burned by anyone who knows the
 * device's EK public key (it is public: in the EK certificate, in the supplier's manifest). Without
 * any token or TPM, one enroll/start with the listed EK and no EK certificate (or a finish with a
 * wrong activation secret) spends the entry's internal token; the genuine TPM is then refused with
 * ek_not_allowed. Asserts the SAFE outcome (the genuine TPM still enrolls), so it FAILS while the
 * defect exists. Real swtpm, in-process server, real SQLite.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { EnrollStartRequest } from '../../protocol/api.js';
import { startSwtpm, extendBootPcrs } from '../../scripts/harness/swtpm.js';
import { TestDevice, injectTransport, b64 } from '../helpers/device.js';
import { startInProcessServer } from '../helpers/server.js';

function withoutToken(dev: TestDevice, extra: Partial<EnrollStartRequest> = {}): Partial<EnrollStartRequest> {
  const { token: _t, ...rest } = dev.startRequest('unused', extra);
  return rest;
}

for (const how of ['start without EK certificate', 'finish with a wrong secret'] as const) {
  test(`zero-touch: an outsider who knows only the EK public key burns the entry (${how})`, { timeout: 300_000 }, async (t) => {
    const [victim, attacker] = await Promise.all([startSwtpm(), startSwtpm()]);
    t.after(async () => {
      await victim.stop();
      await attacker.stop();
    });
    for (const s of [victim, attacker]) await extendBootPcrs(s.tcti);
    const srv = await startInProcessServer({ rateLimit: { enroll: { max: 100000 } } });
    t.after(() => srv.close());
    const http = injectTransport(srv.server.app);
    const dev = await TestDevice.create(victim.tcti);
    t.after(() => dev.close());
    const other = await TestDevice.create(attacker.tcti);
    t.after(() => other.close());
    const imp = await srv.admin('POST', '/v1/admin/ek-allow', {
      zone: 'default',
      owner: 'o',
      content: JSON.stringify([{ ekPub: b64(dev.ek.public), name: 'gw-1' }]),
    });
    assert.equal(imp.status, 200, JSON.stringify(imp.body));

    // the outsider: the victim's public EK (and its public certificate), its own AK, no token
    if (how === 'start without EK certificate') {
      const r = await http.post('/v1/enroll/start', { ekPub: b64(dev.ek.public), akPub: b64(other.ak.public) });
      assert.equal(r.body.error?.code, 'ek_cert_required');
    } else {
      const s = await http.post('/v1/enroll/start', withoutToken(dev, { akPub: b64(other.ak.public) }));
      assert.equal(s.status, 200, JSON.stringify(s.body));
      const { evidence } = await other.evidence(s.body.nonce);
      const f = await http.post('/v1/enroll/finish', { session: s.body.session, secret: b64(Buffer.alloc(32)), ...evidence });
      assert.equal(f.body.error?.code, 'activation_secret_mismatch');
    }

    // the genuine TPM arrives at the plant
    const start = await http.post('/v1/enroll/start', withoutToken(dev));
    assert.equal(start.status, 200, `genuine listed TPM refused: ${JSON.stringify(start.body)}`);
  });
}

test('zero-touch: "an operator imports it again" — re-importing a used entry is skipped, so the TPM stays refused', { timeout: 300_000 }, async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const srv = await startInProcessServer({ rateLimit: { enroll: { max: 100000 } } });
  t.after(() => srv.close());
  const http = injectTransport(srv.server.app);
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  const manifest = { zone: 'default', owner: 'o', content: JSON.stringify([{ ekPub: b64(dev.ek.public), name: 'gw-1' }]) };
  assert.equal((await srv.admin('POST', '/v1/admin/ek-allow', manifest)).status, 200);
  // the entry is used up (here: no EK certificate sent, which spends it)
  const r = await http.post('/v1/enroll/start', { ekPub: b64(dev.ek.public), akPub: b64(dev.ak.public) });
  assert.equal(r.body.error?.code, 'ek_cert_required');
  const refused = await http.post('/v1/enroll/start', withoutToken(dev));
  assert.match(refused.body.error?.message ?? '', /imports it again/);
  // follow the message
  const again = await srv.admin('POST', '/v1/admin/ek-allow', manifest);
  assert.equal(again.status, 200, JSON.stringify(again.body));
  const start = await http.post('/v1/enroll/start', withoutToken(dev));
  assert.equal(start.status, 200, `after re-import (${JSON.stringify(again.body)}): ${JSON.stringify(start.body)}`);
});
