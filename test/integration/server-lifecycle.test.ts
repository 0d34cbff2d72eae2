/**
 * Lifecycle on real swtpm TPMs with the in-process server: retry after a lost connection, event
 * hooks, automatic retirement, stale devices, maxOffline, claim rules, and a failing hook that
 * must not undo a revocation.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { EnrollStartResponse } from '../../protocol/api.js';
import type { EdgeidHooks } from '../../enroll-server/hooks.js';
import { housekeeping } from '../../enroll-server/services/devices.js';
import { startSwtpm, extendBootPcrs, SWTPM_LOCALCA_ROOT, SWTPM_LOCALCA_ISSUER } from '../../scripts/harness/swtpm.js';
import { TestDevice, injectTransport, b64 } from '../helpers/device.js';
import { startInProcessServer } from '../helpers/server.js';

test('device lifecycle on swtpm', { timeout: 180_000 }, async (t) => {
  const [tpmA, tpmB] = await Promise.all([startSwtpm(), startSwtpm()]);
  t.after(() => tpmA.stop());
  t.after(() => tpmB.stop());
  await extendBootPcrs(tpmA.tcti);
  await extendBootPcrs(tpmB.tcti);

  const events: string[] = [];
  const recorder: EdgeidHooks = {
    name: 'recorder',
    onDeviceEnrolled: (e) => void events.push(`enrolled ${e.device.id} ${e.serial}`),
    onCertificateIssued: (e) => void events.push(`issued ${e.device.id} renewal=${e.renewal}`),
    onDeviceRevoked: (e) => void events.push(`revoked ${e.device.id} ${e.reason} ${e.serials.length}`),
    onDeviceRetired: (e) => void events.push(`retired ${e.device.id} automatic=${e.automatic}`),
    onDeviceQuarantined: (e) => void events.push(`quarantined ${e.device.id} ${e.code}`),
    onCrlChanged: (e) => void events.push(`crl ${e.number}`),
  };
  const broken: EdgeidHooks = {
    name: 'broken-broker',
    onDeviceRevoked: () => {
      throw new Error('broker unreachable');
    },
  };
  const srv = await startInProcessServer(
    {
      staleAfter: '1h',
      zones: { default: {}, temp: { retireAfter: '1h' }, strict: { claims: { minAgentVersion: '2.0.0' } } },
      ek: { roots: [SWTPM_LOCALCA_ROOT], intermediates: [SWTPM_LOCALCA_ISSUER], requireEkCertificate: true },
    },
    [recorder, broken],
  );
  t.after(() => srv.close());
  const http = injectTransport(srv.server.app);
  const devA = await TestDevice.create(tpmA.tcti);
  const devB = await TestDevice.create(tpmB.tcti, { ekKind: 'ecc' });
  t.after(() => devA.close());
  t.after(() => devB.close());

  await t.test('a retry from the same TPM after a lost answer works while the token lives; the superseded session is dead', async () => {
    const token = await srv.token({ name: 'gw-a' });
    const first = await http.post<EnrollStartResponse>('/v1/enroll/start', devA.startRequest(token));
    assert.equal(first.status, 200);
    // the answer "got lost": the device starts again with the same token
    const second = await http.post<EnrollStartResponse>('/v1/enroll/start', devA.startRequest(token));
    assert.equal(second.status, 200);
    const secret = await devA.activate(second.body);
    const { evidence } = await devA.evidence(second.body.nonce);
    const stale = await http.post('/v1/enroll/finish', { session: first.body.session, secret: b64(secret), ...evidence });
    assert.equal(stale.body.error.code, 'session_used');
    const { evidence: ev2 } = await devA.evidence(second.body.nonce);
    const ok = await http.post('/v1/enroll/finish', { session: second.body.session, secret: b64(secret), ...ev2 });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    devA.deviceId = ok.body.deviceId;
    devA.nonce = ok.body.renew.nonce;
    const again = await http.post('/v1/enroll/start', devA.startRequest(token));
    assert.equal(again.body.error.code, 'token_used');
    assert.ok(events.includes(`enrolled ${devA.deviceId} ${(await srv.server.ctx.store.listCertificates(devA.deviceId!))[0]!.serial}`));
  });

  await t.test('a failed check at finish spends the token for good', async () => {
    const token = await srv.token();
    const start = await http.post<EnrollStartResponse>('/v1/enroll/start', devB.startRequest(token));
    const { evidence } = await devB.evidence(start.body.nonce);
    const bad = await http.post('/v1/enroll/finish', { session: start.body.session, secret: b64(randomBytes(32)), ...evidence });
    assert.equal(bad.body.error.code, 'activation_secret_mismatch');
    const retry = await http.post('/v1/enroll/start', devB.startRequest(token));
    assert.equal(retry.body.error.code, 'token_used');
  });

  await t.test('claim rules refuse enrollment with an old agent and name the claim', async () => {
    const start = await http.post<EnrollStartResponse>('/v1/enroll/start', devB.startRequest(await srv.token({ zone: 'strict' })));
    const secret = await devB.activate(start.body);
    const { evidence } = await devB.evidence(start.body.nonce);
    const r = await http.post('/v1/enroll/finish', { session: start.body.session, secret: b64(secret), ...evidence });
    assert.equal(r.status, 403);
    assert.equal(r.body.error.code, 'posture_claims_rejected');
    assert.match(r.body.error.message, /agentVersion 0\.1\.0 < 2\.0\.0/);
  });

  await t.test('a device past retireBy is retired automatically and its certificates revoked', async () => {
    await devB.enroll(http, await srv.token({ zone: 'temp' }));
    srv.clock.offset = 2 * 3600_000;
    try {
      const r = await housekeeping(srv.server.ctx);
      assert.deepEqual(r.retired, [devB.deviceId]);
      const d = (await srv.admin('GET', `/v1/admin/devices/${devB.deviceId}`)).body.device;
      assert.equal(d.status, 'retired');
      assert.equal(
        d.certificates.filter((c: { revokedAt: string | null }) => c.revokedAt).length,
        0,
        'expired certificates need no CRL entry',
      );
      assert.ok(events.includes(`retired ${devB.deviceId} automatic=true`));
    } finally {
      srv.clock.offset = 0;
    }
    const renew = await devB.renew(http);
    assert.equal(renew.body.error.code, 'device_retired');
  });

  await t.test('devices that have not renewed for staleAfter are flagged stale', async () => {
    srv.clock.offset = 2 * 3600_000;
    try {
      const stale = (await srv.admin('GET', '/v1/admin/devices?stale=true')).body.devices.map((d: { id: string }) => d.id);
      assert.deepEqual(stale, [devA.deviceId]);
    } finally {
      srv.clock.offset = 0;
    }
    const fresh = (await srv.admin('GET', '/v1/admin/devices?stale=true')).body.devices;
    assert.deepEqual(fresh, []);
  });

  await t.test('a device offline for longer than maxOffline must enroll again', async () => {
    srv.clock.offset = 8 * 86400_000;
    try {
      await devA.challenge(http);
      const r = await devA.renew(http);
      assert.equal(r.status, 403);
      assert.equal(r.body.error.code, 'device_offline_too_long');
    } finally {
      srv.clock.offset = 0;
    }
    await devA.challenge(http);
    assert.equal((await devA.renew(http)).status, 200);
    assert.ok(events.includes(`issued ${devA.deviceId} renewal=true`));
  });

  await t.test('revocation stands when a hook fails; the failure is audited and reported', async () => {
    const r = await srv.admin('POST', `/v1/admin/devices/${devA.deviceId}/revoke`, { reason: 'key-compromise' });
    assert.equal(r.status, 200);
    assert.equal(r.body.device.status, 'revoked');
    assert.deepEqual(
      r.body.hooks.map((h: { hook: string; ok: boolean }) => [h.hook, h.ok]),
      [
        ['recorder.onDeviceRevoked', true],
        ['broken-broker.onDeviceRevoked', false],
      ],
    );
    assert.ok(events.includes(`revoked ${devA.deviceId} key-compromise 2`));
    const crlEvents = events.filter((e) => e.startsWith('crl '));
    assert.ok(crlEvents.length >= 1, 'CRL regenerated and announced');
    const rows = await srv.server.ctx.store.listAudit({ deviceId: devA.deviceId! });
    assert.ok(rows.some((a) => a.event === 'hook.onDeviceRevoked' && a.outcome === 'fail' && a.details?.hook === 'broken-broker'));
    const again = await srv.admin('POST', `/v1/admin/devices/${devA.deviceId}/revoke`, { reason: 'key-compromise' });
    assert.equal(again.status, 409);
    assert.equal(again.body.error.code, 'device_state_conflict');
    // an anonymous challenge learns only that the device cannot renew
    const challenge = await devA.challenge(http);
    assert.equal(challenge.body.error.code, 'renewal_refused');
  });
});
