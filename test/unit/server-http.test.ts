import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startInProcessServer, type TestServer } from '../helpers/server.js';

// These tests look at each refusal's own audit row: aggregation of repeated anonymous refusals
// (one row, then a count per minute) is off here and tested in server-unauth-bounds.test.ts.
async function server(t: { after: (fn: () => Promise<void>) => void }, cfg: Record<string, unknown> = {}): Promise<TestServer> {
  const s = await startInProcessServer({ audit: { aggregateRefusals: false }, ...cfg });
  t.after(() => s.close());
  return s;
}

async function lastAudit(s: TestServer) {
  const rows = (await s.server.ctx.store.listAudit({ limit: 100000 })) ?? [];
  return rows[rows.length - 1]!;
}

/** The audit rows `fn` appended (a refusal writes exactly one: the last row alone cannot tell). */
async function auditRowsOf(s: TestServer, fn: () => Promise<unknown>) {
  const before = (await lastAudit(s))?.seq ?? 0;
  await fn();
  return s.server.ctx.store.listAudit({ afterSeq: before, limit: 100000 });
}

test('healthz, the CA chain and the CRL are served without authentication', async (t) => {
  const s = await server(t);
  const app = s.server.app;
  const h = await app.inject({ method: 'GET', url: '/healthz' });
  assert.equal(h.statusCode, 200);
  assert.equal(h.json().caFingerprint, s.server.ctx.ca.fingerprint);
  assert.match(h.headers['x-request-id'] as string, /^[0-9a-f-]{36}$/);
  const ca = await app.inject({ method: 'GET', url: '/v1/ca' });
  assert.equal((ca.body.match(/BEGIN CERTIFICATE/g) ?? []).length, 2);
  const der = await app.inject({ method: 'GET', url: '/v1/crl' });
  assert.equal(der.headers['content-type'], 'application/pkix-crl');
  assert.equal(der.rawPayload[0], 0x30);
  const pem = await app.inject({ method: 'GET', url: '/v1/crl?format=pem' });
  assert.match(pem.body, /BEGIN X509 CRL/);
  const bad = await app.inject({ method: 'GET', url: '/v1/crl?format=xml' });
  assert.equal(bad.statusCode, 400);
  assert.equal(bad.json().error.code, 'bad_request');
});

test('unknown routes answer 404 not_found in the error format', async (t) => {
  const s = await server(t);
  const r = await s.server.app.inject({ method: 'GET', url: '/v1/nope' });
  assert.equal(r.statusCode, 404);
  assert.equal(r.json().error.code, 'not_found');
});

test('malformed JSON, a wrong content type and an oversized body get their own 4xx codes and audit rows', async (t) => {
  const s = await server(t);
  const app = s.server.app;
  const cases: [string, string, string, number, string][] = [
    ['/v1/enroll/start', 'application/json', '{"token":', 400, 'malformed_json'],
    ['/v1/enroll/start', 'application/json', '', 400, 'malformed_json'],
    ['/v1/enroll/start', 'text/plain', 'hello', 415, 'unsupported_media_type'],
    ['/v1/renew', 'application/json', JSON.stringify({ pad: 'x'.repeat(65 * 1024) }), 413, 'body_too_large'],
    ['/v1/renew/challenge', 'application/json', '[]', 400, 'bad_request'],
    ['/v1/renew/challenge', 'application/json', '{"deviceId":"dev-0000000000000000","x":1}', 400, 'bad_request'],
  ];
  for (const [url, type, payload, status, code] of cases) {
    let r: Awaited<ReturnType<typeof app.inject>> | undefined;
    const rows = await auditRowsOf(s, async () => {
      r = await app.inject({ method: 'POST', url, headers: { 'content-type': type }, payload });
    });
    assert.equal(r!.statusCode, status, `${url} ${payload.slice(0, 20)}: ${r!.body}`);
    assert.equal(r!.json().error.code, code);
    assert.deepEqual(
      rows.map((a) => [a.outcome, a.reason]),
      [['fail', code]],
      `${url} ${payload.slice(0, 20)}: one audit row`,
    );
  }
});

test('admin API refuses a missing or wrong bearer token and audits it', async (t) => {
  const s = await server(t);
  const app = s.server.app;
  for (const headers of [
    {},
    { authorization: 'Bearer nope' },
    { authorization: `Basic ${s.adminToken}` },
    { authorization: `Bearer ${s.adminToken} ` },
  ]) {
    let r: Awaited<ReturnType<typeof app.inject>> | undefined;
    const rows = await auditRowsOf(s, async () => {
      r = await app.inject({ method: 'GET', url: '/v1/admin/devices', headers });
    });
    assert.equal(r!.statusCode, 401);
    assert.equal(r!.json().error.code, 'admin_unauthorized');
    assert.deepEqual(
      rows.map((a) => [a.outcome, a.reason, a.event]),
      [['fail', 'admin_unauthorized', 'admin.http.devices']],
      `${JSON.stringify(headers)}: one audit row`,
    );
  }
  const ok = await s.admin('GET', '/v1/admin/devices');
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.body.devices, []);
  assert.equal((await lastAudit(s)).event, 'admin.devices.list');
});

test('token create checks the zone and ttl, and returns an enrollment URI pinned to the CA fingerprint', async (t) => {
  const s = await server(t);
  const bad = await s.admin('POST', '/v1/admin/tokens', { zone: 'nope', owner: 'o' });
  assert.equal(bad.status, 403);
  assert.equal(bad.body.error.code, 'zone_unknown');
  const ttl = await s.admin('POST', '/v1/admin/tokens', { zone: 'default', owner: 'o', ttlSeconds: 10 });
  assert.equal(ttl.body.error.code, 'token_ttl_invalid');
  const r = await s.admin('POST', '/v1/admin/tokens', { zone: 'default', owner: 'controls', name: 'gw-1', ttlSeconds: 3600 });
  assert.equal(r.status, 200);
  const u = new URL(r.body.uri);
  assert.equal(u.protocol, 'edgeid:');
  assert.equal(u.searchParams.get('token'), r.body.token);
  assert.equal(u.searchParams.get('ca'), s.server.ctx.ca.fingerprint);
  const list = await s.admin('GET', '/v1/admin/tokens');
  assert.equal(list.body.tokens.length, 1);
  assert.equal(JSON.stringify(list.body).includes(r.body.token.split('.')[1]), false, 'the secret is never listed');
  const rows = await s.server.ctx.store.listAudit();
  assert.equal(JSON.stringify(rows).includes(r.body.token.split('.')[1]), false, 'the secret is never audited');
});

test('enrollment requests are rate limited per source IP', async (t) => {
  const s = await server(t, { rateLimit: { enroll: { max: 2, window: '1h' } } });
  const app = s.server.app;
  const codes: number[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await app.inject({ method: 'POST', url: '/v1/enroll/start', payload: { token: 'x', ekPub: 'AA==', akPub: 'AA==' } });
    codes.push(r.statusCode);
    if (r.statusCode === 429) assert.equal(r.json().error.code, 'rate_limited');
  }
  assert.deepEqual(codes, [401, 401, 429]);
  const other = await app.inject({
    method: 'POST',
    url: '/v1/enroll/start',
    remoteAddress: '10.9.9.9',
    payload: { token: 'x', ekPub: 'AA==', akPub: 'AA==' },
  });
  assert.equal(other.statusCode, 401, 'another IP has its own budget');
});

test('renewal requests are rate limited per device', async (t) => {
  const s = await server(t, { rateLimit: { renew: { max: 1, window: '1h' } } });
  const app = s.server.app;
  const ch = (deviceId: string) => app.inject({ method: 'POST', url: '/v1/renew/challenge', payload: { deviceId } });
  // an unknown device gets the one generic refusal anonymous callers get (renewal_refused, 403)
  assert.equal((await ch('dev-000000000000000a')).statusCode, 403);
  assert.equal((await ch('dev-000000000000000a')).statusCode, 429);
  assert.equal((await ch('dev-000000000000000b')).statusCode, 403);
});

test('metrics are served in the Prometheus format', async (t) => {
  const s = await server(t);
  await s.server.app.inject({ method: 'GET', url: '/v1/nope' });
  const r = await s.server.app.inject({ method: 'GET', url: '/metrics' });
  assert.equal(r.statusCode, 200);
  assert.match(r.body, /# TYPE edgeid_enrollments_total counter/);
  assert.match(r.body, /edgeid_devices\{status="active"\} 0/);
  assert.match(r.body, /edgeid_http_request_duration_seconds_bucket/);
});
