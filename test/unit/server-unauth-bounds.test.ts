/**
 * Unauthenticated work is bounded: a per-address limit answers before parsing or validation on
 * every route, identical unauthenticated refusals become one audit row per source/route/code and
 * minute plus one summary row with the count (authenticated refusals stay one row each), and
 * /metrics answers only the allow-list or the admin token. In-process server, real SQLite.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AuditRow } from '../../protocol/api.js';
import { refusalAggregator } from '../../enroll-server/services/audit.js';
import { startInProcessServer, type TestServer } from '../helpers/server.js';

async function post(s: TestServer, url: string, payload: string, remoteAddress: string, headers: Record<string, string> = {}) {
  return s.server.app.inject({ method: 'POST', url, payload, remoteAddress, headers: { 'content-type': 'application/json', ...headers } });
}

/** How many refusals a set of rows stands for: each row one, plus the count its summary carries. */
const represented = (rows: AuditRow[]) =>
  rows.reduce((n, r) => n + (r.details?.repeated !== undefined ? Number(r.details.repeated) : 1), 0);

test(
  '2,000 bad requests from one address write a bounded number of audit rows that count them all; audit verify stays green',
  { timeout: 300_000 },
  async (t) => {
    const s = await startInProcessServer({ zones: { default: {} }, rateLimit: { perAddress: { max: 600, window: '1m' } } });
    t.after(() => s.close());
    const store = s.server.ctx.store;
    const before = (await store.listAudit({ limit: 1_000_000 })).at(-1)?.seq ?? 0;
    const statuses = new Map<string, number>();
    const kinds = [
      () => post(s, '/v1/admin/tokens', '{"zone":"default","owner":"x"}', '10.1.2.3', { authorization: 'Bearer wrong' }),
      () => post(s, '/v1/renew/challenge', '{"deviceId":"not-a-device"}', '10.1.2.3'),
      () => post(s, '/v1/enroll/start', '{"token":', '10.1.2.3'),
      () => post(s, '/v1/renew/challenge', '{"deviceId":"dev-00000000000000aa"}', '10.1.2.3'),
    ];
    for (let i = 0; i < 2000; i++) {
      const res = await kinds[i % kinds.length]!();
      const key = `${res.statusCode} ${res.json().error?.code}`;
      statuses.set(key, (statuses.get(key) ?? 0) + 1);
    }
    // the per-address limit counted every request before its body was parsed or validated: 600 of
    // 2000 pass it (150 of each kind); of those, the enroll route's own limit (30 per address)
    // and the renew routes' (10 per address and device) refuse the rest of their kinds
    assert.equal(statuses.get('429 rate_limited'), 1400 + 120 + 140, JSON.stringify([...statuses]));
    assert.equal(statuses.get('401 admin_unauthorized'), 150);
    assert.equal(statuses.get('400 bad_request'), 150);
    assert.equal(statuses.get('400 malformed_json'), 30);
    // an unknown device is an unauthenticated failure inside the service: aggregated too
    assert.equal(
      [...statuses].filter(([k]) => k.startsWith('404') || k.startsWith('403')).reduce((n, [, v]) => n + v, 0),
      10,
      JSON.stringify([...statuses]),
    );

    // an authenticated admin's refusals are one row each
    for (let i = 0; i < 5; i++) {
      const res = await post(s, '/v1/admin/tokens', '{"zone":1}', '10.9.9.9', { authorization: `Bearer ${s.adminToken}` });
      assert.equal(res.json().error.code, 'bad_request');
    }
    await refusalAggregator(s.server.ctx)!.flush(true);

    const rows = await store.listAudit({ afterSeq: before, limit: 1_000_000 });
    const anon = rows.filter((r) => r.ip === '10.1.2.3');
    const admin = rows.filter((r) => r.ip === '10.9.9.9');
    assert.equal(admin.length, 5);
    assert.ok(admin.every((r) => r.actor === 'user:admin' && r.details?.role === 'admin' && r.reason === 'bad_request'));
    // at most a first row and a summary per (route, code), twice if a minute boundary fell inside the run
    assert.ok(
      anon.length >= 8 && anon.length <= 20,
      `${anon.length} rows for 2000 refusals: ${anon.map((r) => `${r.event}/${r.reason}`).join(', ')}`,
    );
    assert.equal(represented(anon), 2000);
    const summary = anon.find((r) => r.details?.repeated !== undefined && r.reason === 'rate_limited')!;
    assert.ok(summary, 'a summary row for the rate-limited requests');
    assert.equal(typeof summary.details!.firstSeq, 'number');
    const v = await store.verifyAudit();
    assert.equal(v.ok, true, JSON.stringify(v.problems));
  },
);

test('/metrics answers loopback and the admin token, and refuses other sources (metrics_unauthorized)', async (t) => {
  const s = await startInProcessServer({ zones: { default: {} } });
  t.after(() => s.close());
  const get = (remoteAddress: string, auth?: string) =>
    s.server.app.inject({ method: 'GET', url: '/metrics', remoteAddress, headers: auth ? { authorization: `Bearer ${auth}` } : {} });
  const local = await get('127.0.0.1');
  assert.equal(local.statusCode, 200);
  assert.match(local.body, /edgeid_devices\{status="active"\} 0/);
  assert.equal((await get('::1')).statusCode, 200);
  const remote = await get('10.20.0.7');
  assert.equal(remote.statusCode, 401);
  assert.equal(remote.json().error.code, 'metrics_unauthorized');
  assert.equal((await get('10.20.0.7', 'not-the-token')).json().error.code, 'metrics_unauthorized');
  const bearer = await get('10.20.0.7', s.adminToken);
  assert.equal(bearer.statusCode, 200);
  assert.match(bearer.body, /edgeid_devices/);
});

test('/metrics with an allow-list: its sources answer, loopback does not unless listed', async (t) => {
  const s = await startInProcessServer({ zones: { default: {} }, metrics: { allow: ['10.5.0.0/16', 'fd00::/8'] } });
  t.after(() => s.close());
  const get = (remoteAddress: string) => s.server.app.inject({ method: 'GET', url: '/metrics', remoteAddress });
  assert.equal((await get('10.5.3.4')).statusCode, 200);
  assert.equal((await get('fd00::5')).statusCode, 200);
  assert.equal((await get('10.6.0.1')).json().error.code, 'metrics_unauthorized');
  assert.equal((await get('127.0.0.1')).json().error.code, 'metrics_unauthorized');
});
