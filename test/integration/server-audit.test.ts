/**
 * One audit row per action: every admin and device action of the server, once succeeding and once
 * failing, appends exactly one row — with the action's event, its outcome and, for a failure, the
 * error code as the reason. Real swtpm TPM and SQLite, in-process server.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import type { AuditRow, EnrollStartResponse } from '../../protocol/api.js';
import { showDevice } from '../../enroll-server/services/devices.js';
import { DEFAULT_CLAIMS, TestDevice, injectTransport, b64 } from '../helpers/device.js';
import { startInProcessServer, type TestServer } from '../helpers/server.js';
import { extendBootPcrs, startSwtpm } from '../../scripts/harness/swtpm.js';

async function lastSeq(s: TestServer): Promise<number> {
  const rows = await s.server.ctx.store.listAudit({ limit: 1_000_000 });
  return rows.at(-1)?.seq ?? 0;
}

/** Runs `fn` and returns the audit rows it appended. */
async function rowsOf(s: TestServer, fn: () => Promise<unknown>): Promise<AuditRow[]> {
  const before = await lastSeq(s);
  await fn();
  return s.server.ctx.store.listAudit({ afterSeq: before, limit: 1_000_000 });
}

/**
 * Asserts that `fn` wrote exactly one row: `event` with `outcome` (and `reason` for a failure;
 * `code` when the caller is answered with another, generic code).
 */
async function oneRow(
  s: TestServer,
  what: string,
  fn: () => Promise<{ status: number; body: any }>,
  want: { event: string; status: number; reason?: string; code?: string },
) {
  let res: { status: number; body: any } | undefined;
  const rows = await rowsOf(s, async () => {
    res = await fn();
  });
  assert.equal(res!.status, want.status, `${what}: ${JSON.stringify(res!.body).slice(0, 300)}`);
  if (want.reason) assert.equal(res!.body.error.code, want.code ?? want.reason, what);
  assert.equal(rows.length, 1, `${what} wrote ${rows.length} rows: ${rows.map((r) => `${r.event}/${r.outcome}/${r.reason}`).join(', ')}`);
  const [row] = rows;
  assert.equal(row!.event, want.event, what);
  assert.equal(row!.outcome, want.reason ? 'fail' : 'ok', what);
  assert.equal(row!.reason, want.reason ?? null, what);
  return { row: row!, body: res!.body };
}

test('every admin and device action writes exactly one audit row, success or failure', { timeout: 180_000 }, async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const s = await startInProcessServer({ zones: { default: {} } });
  t.after(() => s.close());
  const http = injectTransport(s.server.app);
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  const unknown = 'dev-00000000000000ff';

  // --- admin actions without a device -----------------------------------------------------------
  const created = await oneRow(s, 'token create', () => s.admin('POST', '/v1/admin/tokens', { zone: 'default', owner: 'ops' }), {
    event: 'token.create',
    status: 200,
  });
  await oneRow(s, 'token create, unknown zone', () => s.admin('POST', '/v1/admin/tokens', { zone: 'nope', owner: 'ops' }), {
    event: 'token.create',
    status: 403,
    reason: 'zone_unknown',
  });
  await oneRow(s, 'token create, bad ttl', () => s.admin('POST', '/v1/admin/tokens', { zone: 'default', owner: 'ops', ttlSeconds: 5 }), {
    event: 'token.create',
    status: 400,
    reason: 'token_ttl_invalid',
  });
  await oneRow(s, 'tokens list', () => s.admin('GET', '/v1/admin/tokens'), { event: 'admin.tokens.list', status: 200 });
  await oneRow(s, 'devices list', () => s.admin('GET', '/v1/admin/devices'), { event: 'admin.devices.list', status: 200 });
  await oneRow(s, 'device show, unknown', () => s.admin('GET', `/v1/admin/devices/${unknown}`), {
    event: 'admin.device.show',
    status: 404,
    reason: 'device_not_found',
  });
  await oneRow(s, 'revoke, unknown', () => s.admin('POST', `/v1/admin/devices/${unknown}/revoke`, { reason: 'superseded' }), {
    event: 'device.revoke',
    status: 404,
    reason: 'device_not_found',
  });
  await oneRow(s, 'retire, unknown', () => s.admin('POST', `/v1/admin/devices/${unknown}/retire`, {}), {
    event: 'device.retire',
    status: 404,
    reason: 'device_not_found',
  });
  await oneRow(s, 'approve, unknown', () => s.admin('POST', `/v1/admin/devices/${unknown}/approve-baseline`, {}), {
    event: 'device.approve_baseline',
    status: 404,
    reason: 'device_not_found',
  });
  await oneRow(s, 'control, unknown', () => s.admin('POST', `/v1/admin/devices/${unknown}/control`, { type: 'renew-now' }), {
    event: 'admin.control.sign',
    status: 404,
    reason: 'device_not_found',
  });
  await oneRow(s, 'audit export', () => s.admin('GET', '/v1/admin/audit?after=0'), { event: 'admin.audit.export', status: 200 });
  await oneRow(s, 'audit verify', () => s.admin('GET', '/v1/admin/audit/verify'), { event: 'admin.audit.verify', status: 200 });
  await oneRow(s, 'crl regenerate', () => s.admin('POST', '/v1/admin/crl/regenerate', {}), { event: 'admin.crl.regenerate', status: 200 });
  await oneRow(s, 'broker reconcile without a broker', () => s.admin('POST', '/v1/admin/broker/reconcile', {}), {
    event: 'admin.broker.reconcile',
    status: 409,
    reason: 'broker_not_configured',
  });
  await oneRow(s, 'broker CRL status without a broker', () => s.admin('GET', '/v1/admin/broker/crl'), {
    event: 'admin.broker.crl_status',
    status: 409,
    reason: 'broker_not_configured',
  });
  await oneRow(s, 'broker CRL reload without a broker', () => s.admin('POST', '/v1/admin/broker/crl/reload', {}), {
    event: 'admin.broker.crl_reload',
    status: 409,
    reason: 'broker_not_configured',
  });
  const spki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
  await oneRow(s, 'broker certificate', () => s.admin('POST', '/v1/admin/broker/certificate', { spki, hostnames: ['broker.test'] }), {
    event: 'admin.broker.certificate',
    status: 200,
  });
  await oneRow(
    s,
    'broker certificate, not a key',
    () => s.admin('POST', '/v1/admin/broker/certificate', { spki: 'A'.repeat(64), hostnames: ['broker.test'] }),
    {
      event: 'admin.broker.certificate',
      status: 400,
      reason: 'bad_request',
    },
  );

  // refusals before any service ran are audited once by the HTTP layer
  await oneRow(s, 'devices list, bad filter', () => s.admin('GET', '/v1/admin/devices?status=lost'), {
    event: 'admin.http.devices',
    status: 400,
    reason: 'bad_request',
  });
  await oneRow(
    s,
    'no admin token',
    async () => {
      const r = await s.server.app.inject({ method: 'GET', url: '/v1/admin/tokens' });
      return { status: r.statusCode, body: r.json() };
    },
    { event: 'admin.http.tokens', status: 401, reason: 'admin_unauthorized' },
  );

  // --- device actions -------------------------------------------------------------------------
  await oneRow(s, 'enroll start, bad token', () => http.post('/v1/enroll/start', dev.startRequest(`${'0'.repeat(16)}.${'A'.repeat(43)}`)), {
    event: 'enroll.start',
    status: 401,
    reason: 'token_invalid',
  });
  const start = await oneRow(
    s,
    'enroll start',
    () => http.post<EnrollStartResponse>('/v1/enroll/start', dev.startRequest(created.body.token)),
    {
      event: 'enroll.start',
      status: 200,
    },
  );
  const secret = await dev.activate(start.body);
  const { evidence, sessionKey } = await dev.evidence(start.body.nonce);
  await oneRow(
    s,
    'enroll finish, unknown session',
    () => http.post('/v1/enroll/finish', { session: 'nope', secret: b64(secret), ...evidence }),
    {
      event: 'enroll.finish',
      status: 401,
      reason: 'session_invalid',
    },
  );
  const finish = await oneRow(
    s,
    'enroll finish',
    () => http.post('/v1/enroll/finish', { session: start.body.session, secret: b64(secret), ...evidence }),
    {
      event: 'enroll.finish',
      status: 200,
    },
  );
  dev.accept(finish.body, sessionKey);
  assert.equal(finish.row.deviceId, dev.deviceId);

  await oneRow(s, 'challenge, unknown device', () => http.post('/v1/renew/challenge', { deviceId: unknown }), {
    event: 'renew.challenge',
    status: 403,
    code: 'renewal_refused',
    reason: 'device_not_found',
  });
  const ch = await oneRow(s, 'challenge', () => dev.challenge(http), { event: 'renew.challenge', status: 200 });
  assert.equal(ch.row.deviceId, dev.deviceId);
  const wrong = (await dev.renewRequest({ nonce: Buffer.alloc(32, 7).toString('base64') })).request;
  await oneRow(s, 'renew, unknown nonce', () => http.post('/v1/renew', wrong), { event: 'renew', status: 401, reason: 'nonce_unknown' });
  await oneRow(s, 'renew', () => dev.renew(http), { event: 'renew', status: 200 });
  // a posture mismatch quarantines the device in the transaction that writes the failure's row
  await extendBootPcrs(tpm.tcti, 'new-firmware', [0]);
  await oneRow(s, 'renew, changed PCR 0', () => dev.renew(http), { event: 'renew', status: 403, reason: 'posture_pcr_mismatch' });

  // --- admin actions on the device --------------------------------------------------------------
  const id = dev.deviceId!;
  const shown = await oneRow(s, 'device show', () => s.admin('GET', `/v1/admin/devices/${id}`), {
    event: 'admin.device.show',
    status: 200,
  });
  // responses are serialised from their protocol schemas: nothing the service returned is dropped
  const direct = JSON.parse(JSON.stringify(await showDevice(s.server.ctx, id, { actor: 'test', ip: null })));
  assert.deepEqual(shown.body, direct);
  assert.deepEqual(shown.body.device.claims, DEFAULT_CLAIMS);
  assert.equal(Object.keys(shown.body.device.baseline).length, 8);
  const exported = await s.admin('GET', '/v1/admin/audit?after=0&limit=10000');
  assert.deepEqual(exported.body.rows.slice(0, -1), await s.server.ctx.store.listAudit({ limit: exported.body.rows.length - 1 }));
  await oneRow(s, 'control', () => s.admin('POST', `/v1/admin/devices/${id}/control`, { type: 'renew-now' }), {
    event: 'admin.control.sign',
    status: 200,
  });
  await oneRow(s, 'approve baseline', () => s.admin('POST', `/v1/admin/devices/${id}/approve-baseline`, {}), {
    event: 'device.approve_baseline',
    status: 200,
  });
  await oneRow(s, 'revoke', () => s.admin('POST', `/v1/admin/devices/${id}/revoke`, { reason: 'key-compromise' }), {
    event: 'device.revoke',
    status: 200,
  });
  await oneRow(s, 'revoke again', () => s.admin('POST', `/v1/admin/devices/${id}/revoke`, { reason: 'key-compromise' }), {
    event: 'device.revoke',
    status: 409,
    reason: 'device_state_conflict',
  });
  await oneRow(s, 'approve a revoked device', () => s.admin('POST', `/v1/admin/devices/${id}/approve-baseline`, {}), {
    event: 'device.approve_baseline',
    status: 409,
    reason: 'device_state_conflict',
  });
  await oneRow(s, 'retire a revoked device', () => s.admin('POST', `/v1/admin/devices/${id}/retire`, {}), {
    event: 'device.retire',
    status: 409,
    reason: 'device_state_conflict',
  });
  assert.deepEqual(await s.server.ctx.store.verifyAudit(), { ok: true, rows: await lastSeq(s) });
});

test('retire writes exactly one row', { timeout: 120_000 }, async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const s = await startInProcessServer();
  t.after(() => s.close());
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  await dev.enroll(injectTransport(s.server.app), await s.token());
  await oneRow(s, 'retire', () => s.admin('POST', `/v1/admin/devices/${dev.deviceId}/retire`, {}), { event: 'device.retire', status: 200 });
});
