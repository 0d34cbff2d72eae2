/**
 * The audit chain survives any input: lone surrogates, NUL, overlong strings, control characters
 * and odd keys in every field of every route (device and admin, with and without the admin token)
 * leave `audit verify` green, every stored text well-formed, no unvalidated device id in a row —
 * and a real edit in a later row is still reported after the hostile ones. In-process server,
 * real SQLite.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import * as W from '../../protocol/api.js';
import { startInProcessServer, type TestServer } from '../helpers/server.js';

const LONE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const DEVICE_ID = /^dev-[0-9a-f]{16}$/;

/** Hostile strings: a table of the known classes, then random UTF-16 code-unit soup (fast-check). */
const HOSTILE: string[] = [
  '\ud800',
  '\udfff',
  'a\ud800b',
  '\udc00\ud800',
  '\u0000',
  'dev-\u00000000000000000',
  'x'.repeat(5000),
  '\ud83d'.repeat(3000),
  '\u001b]52;c;SGVsbG8=\u0007\u001b[2K\u001b[1A',
  '\u0085\u009b31m\u202e',
  '\r\n\t\u0008\u007f',
  ...fc.sample(fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), minLength: 1, maxLength: 24 }), {
    numRuns: 12,
    seed: 20261130,
  }),
];
/** Non-string values for a string field, and objects with hostile keys. */
const HOSTILE_VALUES: unknown[] = [...HOSTILE, 12, null, ['\ud800'], { '\ud800': '\u0000' }];
/** URL path / query pieces: percent-encoded invalid UTF-8 (an encoded lone surrogate, an overlong NUL), NUL, escapes. */
const HOSTILE_URL = ['%ED%A0%80', '%00', '%C0%80', '%FF%FE', '%1B%5D52%3Bc%3Bx%07', 'x'.repeat(3000), '%E2%80%AE'];

/** The names of a TypeBox object's properties (nested objects as a.b). */
function fields(schema: unknown, prefix = ''): string[] {
  const props = (schema as { properties?: Record<string, unknown> }).properties ?? {};
  return Object.entries(props).flatMap(([k, v]) => {
    const nested = (v as { properties?: unknown }).properties ? fields(v, `${prefix}${k}.`) : [];
    return [`${prefix}${k}`, ...nested];
  });
}

function withField(base: Record<string, unknown>, path: string, value: unknown): Record<string, unknown> {
  const out = structuredClone(base);
  const parts = path.split('.');
  let o: Record<string, unknown> = out;
  for (const p of parts.slice(0, -1)) {
    if (!o[p] || typeof o[p] !== 'object') o[p] = {};
    o = o[p] as Record<string, unknown>;
  }
  o[parts.at(-1)!] = value;
  return out;
}

const b64 = Buffer.alloc(64, 1).toString('base64');
const dev = 'dev-0123456789abcdef';
const BODY_ROUTES: { url: string; schema: unknown; base: Record<string, unknown>; admin?: boolean }[] = [
  { url: '/v1/enroll/start', schema: W.EnrollStartRequest, base: { token: 'abc.def', ekPub: b64, akPub: b64 } },
  { url: '/v1/enroll/finish', schema: W.EnrollFinishRequest, base: { session: 'sess', secret: b64 } },
  { url: '/v1/renew/challenge', schema: W.RenewChallengeRequest, base: { deviceId: dev } },
  { url: '/v1/renew', schema: W.RenewRequest, base: { deviceId: dev, nonce: Buffer.alloc(32).toString('base64') } },
  { url: '/v1/admin/tokens', schema: W.TokenCreateRequest, base: { zone: 'default', owner: 'ops' }, admin: true },
  { url: `/v1/admin/devices/${dev}/revoke`, schema: W.RevokeRequest, base: { reason: 'superseded' }, admin: true },
  { url: `/v1/admin/devices/${dev}/retire`, schema: W.EmptyBody, base: {}, admin: true },
  { url: `/v1/admin/devices/${dev}/approve-baseline`, schema: W.EmptyBody, base: {}, admin: true },
  { url: `/v1/admin/devices/${dev}/control`, schema: W.ControlRequest, base: { type: 'renew-now' }, admin: true },
  { url: '/v1/admin/crl/regenerate', schema: W.EmptyBody, base: {}, admin: true },
  { url: '/v1/admin/broker/reconcile', schema: W.EmptyBody, base: {}, admin: true },
  {
    url: '/v1/admin/broker/certificate',
    schema: W.BrokerCertificateRequest,
    base: { spki: b64, hostnames: ['broker.example'] },
    admin: true,
  },
];
const GET_ROUTES: { url: string; params: string[]; admin?: boolean }[] = [
  { url: '/v1/crl', params: ['format'] },
  { url: '/v1/ca', params: ['format'] },
  { url: '/healthz', params: ['x'] },
  { url: '/metrics', params: ['x'] },
  { url: '/v1/admin/tokens', params: ['x', 'limit', 'after'], admin: true },
  { url: '/v1/admin/devices', params: ['status', 'zone', 'stale', 'limit', 'after'], admin: true },
  { url: `/v1/admin/devices/${dev}`, params: ['x'], admin: true },
  { url: '/v1/admin/audit', params: ['after', 'limit', 'deviceId'], admin: true },
  { url: '/v1/admin/audit/verify', params: ['x'], admin: true },
];
const PATH_ROUTES = ['/v1/admin/devices/:id', '/v1/admin/devices/:id/revoke', '/v1/admin/devices/:id/control'];

async function send(
  s: TestServer,
  method: 'GET' | 'POST',
  url: string,
  payload: string | Buffer | undefined,
  auth: boolean,
  contentType = 'application/json',
) {
  const res = await s.server.app.inject({
    method,
    url,
    headers: {
      ...(auth ? { authorization: `Bearer ${s.adminToken}` } : {}),
      ...(payload !== undefined ? { 'content-type': contentType } : {}),
    },
    ...(payload !== undefined ? { payload } : {}),
  });
  assert.ok(res.statusCode < 500, `${method} ${url.slice(0, 120)} answered ${res.statusCode}: ${res.body.slice(0, 300)}`);
  return res;
}

test(
  'hostile text in every field of every route leaves audit verify green; a later real edit is still reported',
  { timeout: 300_000 },
  async (t) => {
    const s = await startInProcessServer({
      zones: { default: {} },
      // this test is about what one request writes, not about how many one address may send
      rateLimit: {
        perAddress: { max: 100_000, window: '1m' },
        enroll: { max: 100_000, window: '1m' },
        renew: { max: 100_000, window: '1m' },
        admin: { max: 100_000, window: '1m' },
      },
      audit: { aggregateRefusals: false },
    });
    t.after(() => s.close());
    let requests = 0;

    for (const r of BODY_ROUTES) {
      for (const auth of r.admin ? [true, false] : [false]) {
        for (const f of [...fields(r.schema), 'extra']) {
          for (const v of HOSTILE_VALUES) {
            await send(s, 'POST', r.url, JSON.stringify(withField(r.base, f, v)), auth);
            requests++;
          }
        }
        for (const k of HOSTILE) {
          await send(s, 'POST', r.url, JSON.stringify({ ...r.base, [k]: 'x' }), auth);
          requests++;
        }
        // raw bytes: invalid UTF-8, an escaped lone surrogate as the request had it, a NUL escape
        for (const raw of [
          Buffer.from([0x7b, 0x22, 0x64, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0xed, 0xa0, 0x80, 0x22, 0x7d]),
          '{"deviceId":"\\ud800"}',
          '{"deviceId":"dev-\\u0000"}',
          '{"a":"\\udc00"',
        ]) {
          await send(s, 'POST', r.url, raw, auth);
          await send(s, 'POST', r.url, raw, auth, 'text/x-\u00e9');
          requests += 2;
        }
      }
    }
    for (const r of GET_ROUTES) {
      for (const auth of r.admin ? [true, false] : [false]) {
        for (const p of r.params) {
          for (const v of HOSTILE_URL) {
            await send(s, 'GET', `${r.url}?${p}=${v}`, undefined, auth);
            requests++;
          }
        }
      }
    }
    for (const tpl of PATH_ROUTES) {
      for (const auth of [true, false]) {
        for (const v of HOSTILE_URL) {
          const method = tpl.endsWith(':id') ? 'GET' : 'POST';
          await send(s, method, tpl.replace(':id', v), method === 'POST' ? '{}' : undefined, auth);
          requests++;
        }
      }
    }

    const store = s.server.ctx.store;
    const rows = await store.listAudit({ limit: 1_000_000 });
    assert.ok(rows.length > requests / 2, `${rows.length} audit rows for ${requests} requests`);
    const v1 = await store.verifyAudit();
    assert.equal(v1.ok, true, JSON.stringify(v1.problems?.slice(0, 5)));
    assert.equal(v1.rows, rows.length);

    for (const r of rows) {
      for (const [k, x] of Object.entries(r)) {
        const text = typeof x === 'string' ? x : x && typeof x === 'object' ? JSON.stringify(x) : '';
        assert.ok(!LONE.test(text), `row ${r.seq} ${k} holds a lone surrogate`);
        assert.ok(!text.includes('\u0000') && !text.includes('\\u0000'), `row ${r.seq} ${k} holds a NUL`);
        assert.ok(text.length <= 40_000, `row ${r.seq} ${k} is ${text.length} long`);
      }
      assert.ok(
        r.deviceId === null || DEVICE_ID.test(r.deviceId),
        `row ${r.seq}: device id ${JSON.stringify(r.deviceId)} was not validated`,
      );
    }
    // the request: refused with its own code, and its row names no device
    const res = await send(s, 'POST', '/v1/renew/challenge', '{"deviceId":"\\ud800"}', false);
    assert.equal(res.statusCode, 400);
    assert.equal(res.json().error.code, 'text_not_well_formed');
    const [last] = await store.listAudit({ afterSeq: rows.at(-1)!.seq });
    assert.equal(last!.reason, 'text_not_well_formed');
    assert.equal(last!.deviceId, null);
    assert.equal(last!.actor, 'anonymous');

    // an insider edits one hostile row and one later, ordinary row: both are reported
    const created = await s.admin('POST', '/v1/admin/tokens', { zone: 'default', owner: 'ops' });
    assert.equal(created.status, 200);
    const after = await store.listAudit({ afterSeq: rows.at(-1)!.seq, limit: 100 });
    const target = after.find((r) => r.event === 'token.create' && r.outcome === 'ok')!;
    const db = (store as unknown as { db: import('better-sqlite3').Database }).db;
    db.prepare(`UPDATE audit SET actor = 'somebody-else' WHERE seq = ?`).run(target.seq);
    db.prepare(`UPDATE audit SET ip = '10.9.9.9' WHERE seq = ?`).run(rows[10]!.seq);
    const v2 = await store.verifyAudit();
    assert.equal(v2.ok, false);
    assert.equal(v2.problem!.seq, rows[10]!.seq);
    assert.deepEqual(
      v2.problems!.map((p) => [p.seq, p.kind]),
      [
        [rows[10]!.seq, 'hash_mismatch'],
        [target.seq, 'hash_mismatch'],
      ],
    );
    const api = await s.admin('GET', '/v1/admin/audit/verify');
    assert.equal(api.status, 200);
    assert.deepEqual(
      api.body.problems.map((p: { seq: number }) => p.seq),
      [rows[10]!.seq, target.seq],
    );
  },
);
