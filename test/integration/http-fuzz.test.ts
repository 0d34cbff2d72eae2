/**
 * Structure-aware fuzzing of every HTTP route (device, public and admin), seeded: each device route
 * gets FUZZ_RUNS (default 10,000) requests, each public and admin route FUZZ_ADMIN_RUNS (default
 * 1,000, FUZZ_RUNS when that is set: about 1.6 ms a request on this project's 2-core machine), made from a valid one — recorded from a real enrollment and
 * renewal of a swtpm device, or written here for the admin API — with one field replaced by a
 * boundary value (lone surrogates, NUL, huge numbers, deep nesting, `__proto__`, long strings),
 * removed, added, truncated, its TPM bytes flipped or cut, swapped with another request's body, or
 * replaced by random bytes. For every input: no 5xx, a 4xx carries a registered code with the
 * registry's status, nothing is thrown at the process level. The device phase must leave the
 * database as it was (devices, certificates, tokens, EK tables, sessions) except for bounded audit
 * and nonce rows; `audit verify` is green at the end. FUZZ_SEED and FUZZ_RUNS reproduce or deepen a run.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { ERRORS } from '../../protocol/errors/index.js';
import { extendBootPcrs, startSwtpm } from '../../scripts/harness/swtpm.js';
import { TestDevice, injectTransport, type Transport } from '../helpers/device.js';
import { startInProcessServer, type TestServer } from '../helpers/server.js';

const RUNS = Number(process.env.FUZZ_RUNS ?? 10_000);
const ADMIN_RUNS = Number(process.env.FUZZ_ADMIN_RUNS ?? process.env.FUZZ_RUNS ?? 1_000);
const SEED = Number(process.env.FUZZ_SEED ?? 20261201);

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

interface Route {
  method: 'GET' | 'POST';
  /** Path with `:param` placeholders. */
  url: string;
  params?: Record<string, string>;
  body?: Json;
  query?: Record<string, string>;
  admin: boolean;
  /** Fewer runs for a route whose valid request is expensive by design (a backup seals with scrypt). */
  runs?: number;
}

const unhandled: unknown[] = [];
process.on('unhandledRejection', (e) => unhandled.push(e));
process.on('uncaughtException', (e) => unhandled.push(e));

// ---- inputs ------------------------------------------------------------------------------------

const deep = (n: number): string => '['.repeat(n) + ']'.repeat(n);

/** Values at the edges of what JSON and the schemas allow. */
const boundary: fc.Arbitrary<Json | { raw: string }> = fc.oneof(
  fc.constantFrom<Json>(
    '',
    '\u0000',
    '\ud800',
    'a\udc00b',
    '\u001b]52;c;AAAA\u0007',
    '../../../etc/passwd',
    '%00',
    '𝕏'.repeat(300),
    'A'.repeat(70_000),
    -1,
    0,
    1.5,
    2 ** 53 + 1,
    1e308,
    -1e308,
    true,
    false,
    null,
    [],
    {},
    [null],
    { __proto__: null },
  ),
  fc.constantFrom({ raw: deep(5000) }, { raw: '{"__proto__":{"polluted":true}}' }, { raw: '{"constructor":{"prototype":{"x":1}}}' }),
  fc.string({ maxLength: 40 }),
  fc.integer(),
  fc.double(),
);

/** Every path (list of keys/indices) into a JSON value. */
function paths(v: Json, at: (string | number)[] = []): (string | number)[][] {
  const out: (string | number)[][] = [at];
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...paths(x, [...at, i])));
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...at, k]));
  return out;
}

function getAt(v: Json, p: (string | number)[]): Json {
  return p.reduce<Json>((x, k) => (x as Record<string, Json>)[k as string] ?? null, v);
}

/** JSON text of `v` with the value at `p` replaced by `raw` (JSON text) or removed (`raw` undefined). */
function replaced(v: Json, p: (string | number)[], raw: string | undefined): string {
  if (p.length === 0) return raw ?? '';
  const marker = `"\u0000EDGEID_FUZZ_MARKER\u0000"`;
  const copy = structuredClone(v) as Record<string, Json>;
  const parent = getAt(copy as Json, p.slice(0, -1)) as Record<string, Json> | Json[];
  const key = p.at(-1)!;
  if (raw === undefined) {
    if (Array.isArray(parent)) parent.splice(key as number, 1);
    else delete (parent as Record<string, Json>)[key as string];
    return JSON.stringify(copy);
  }
  (parent as Record<string, Json>)[key as string] = '\u0000EDGEID_FUZZ_MARKER\u0000';
  return JSON.stringify(copy).replace(marker, raw);
}

/** Base64 of TPM structures and certificates, mutated as bytes: bits flipped, cut, extended, a length prefix changed. */
function mutateBase64(s: string, pick: { at: number; kind: number; byte: number; len: number }): string {
  const b = Buffer.from(s, 'base64');
  if (b.length === 0) return s;
  const at = pick.at % b.length;
  switch (pick.kind % 5) {
    case 0:
      b[at] = b[at]! ^ (1 << (pick.byte % 8));
      return b.toString('base64');
    case 1:
      return b.subarray(0, at).toString('base64');
    case 2:
      return Buffer.concat([b, Buffer.alloc(pick.len % 64, pick.byte)]).toString('base64');
    case 3:
      // a TPM2B size prefix (big-endian u16) made to lie
      if (b.length >= 2) b.writeUInt16BE((b.readUInt16BE(0) + 1 + pick.len) & 0xffff, 0);
      return b.toString('base64');
    default:
      return s.slice(0, Math.max(0, s.length - 1 - (pick.len % 4))) + '!';
  }
}

const isBase64ish = (s: string) => s.length >= 16 && /^[A-Za-z0-9+/]+=*$/.test(s);

/** One fuzzed request body (JSON text, or raw bytes) made from `body` (and the other routes' bodies). */
function bodyArbitrary(body: Json, others: Json[]): fc.Arbitrary<{ text: string | Buffer; type: string }> {
  const ps = paths(body);
  const json = (text: string | Buffer) => ({ text, type: 'application/json' });
  return fc.oneof(
    // one field replaced by a boundary value
    fc
      .tuple(fc.constantFrom(...ps), boundary)
      .map(([p, b]) =>
        json(replaced(body, p, typeof b === 'object' && b !== null && 'raw' in b ? (b as { raw: string }).raw : JSON.stringify(b))),
      ),
    // one field removed
    fc.constantFrom(...ps.filter((p) => p.length > 0).concat([[]])).map((p) => json(p.length ? replaced(body, p, undefined) : '{}')),
    // an unknown field added
    fc.tuple(fc.string({ minLength: 1, maxLength: 12 }), boundary).map(([k, b]) => {
      const o = body && typeof body === 'object' && !Array.isArray(body) ? { ...body } : {};
      (o as Record<string, unknown>)[k] = typeof b === 'object' && b !== null && 'raw' in b ? 1 : b;
      return json(JSON.stringify(o));
    }),
    // TPM bytes and certificates mutated as bytes
    fc
      .tuple(
        fc.constantFrom(
          ...(ps.filter((p) => typeof getAt(body, p) === 'string' && isBase64ish(getAt(body, p) as string)).length
            ? ps.filter((p) => typeof getAt(body, p) === 'string' && isBase64ish(getAt(body, p) as string))
            : [[] as (string | number)[]]),
        ),
        fc.record({ at: fc.nat(), kind: fc.nat(), byte: fc.nat(255), len: fc.nat(1000) }),
      )
      .map(([p, pick]) => {
        const v = getAt(body, p);
        return json(typeof v === 'string' && p.length ? replaced(body, p, JSON.stringify(mutateBase64(v, pick))) : JSON.stringify(body));
      }),
    // a string cut short
    fc.tuple(fc.constantFrom(...ps), fc.nat()).map(([p, n]) => {
      const v = getAt(body, p);
      return json(
        typeof v === 'string' && p.length ? replaced(body, p, JSON.stringify(v.slice(0, n % (v.length + 1)))) : JSON.stringify(body),
      );
    }),
    // another request's body
    fc.constantFrom(...(others.length ? others : [null])).map((o) => json(JSON.stringify(o))),
    // random bytes, and the body as something that is not JSON
    fc.uint8Array({ maxLength: 2048 }).map((b) => json(Buffer.from(b))),
    fc.constantFrom(
      { text: JSON.stringify(body), type: 'text/plain' },
      { text: JSON.stringify(body), type: 'application/x-www-form-urlencoded' },
      { text: JSON.stringify(body).slice(0, -1), type: 'application/json' },
      { text: '', type: 'application/json' },
    ),
  );
}

/** Path parameters and query strings fuzzed. */
const paramValue: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    '',
    '..',
    '../admin',
    '%00',
    '%2e%2e%2f',
    'dev-' + 'f'.repeat(16),
    'dev-' + 'F'.repeat(16),
    'x'.repeat(5000),
    '\u00e9',
    '%ff%fe',
  ),
  fc.string({ maxLength: 40 }).map(encodeURIComponent),
);

/** "METHOD /path" of every route in fastify's printRoutes tree (HEAD left out: it is GET's). */
function routesOf(tree: string): string[] {
  const out: string[] = [];
  const stack: string[] = [];
  for (const line of tree.split('\n')) {
    const m = /^([│ ]*)[├└]── (\S+)(?: \(([^)]*)\))?/.exec(line.replace(/\u00a0/g, ' '));
    if (!m) continue;
    const depth = m[1]!.length / 4;
    stack.length = depth;
    const full = (stack[depth - 1] ?? '') + m[2]!;
    stack[depth] = full;
    for (const method of (m[3] ?? '').split(', ').filter((x) => x && x !== 'HEAD')) out.push(`${method} ${full}`);
  }
  return out;
}

/** A P-256 SubjectPublicKeyInfo (base64 DER): the broker certificate request's key. */
const BROKER_SPKI = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' }).toString('base64');

// ---- the server and the checks -----------------------------------------------------------------

function recording(inner: Transport, seen: Map<string, Json>): Transport {
  return {
    async post(p, body) {
      seen.set(p, structuredClone(body) as Json);
      return inner.post(p, body);
    },
  };
}

/** Rows of every table but the append-only and bounded ones, for "nothing changed". */
function snapshot(dbFile: string): Record<string, unknown[]> {
  const db = new Database(dbFile, { readonly: true, fileMustExist: true });
  try {
    const tables = (
      db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").all() as { name: string }[]
    )
      .map((r) => r.name)
      // alerts are derived from the audit log (refused requests can rightly raise them): not state either
      .filter((n) => !['audit', 'audit_checkpoint', 'nonces', 'alerts', 'alert_state', 'alert_deliveries'].includes(n));
    // the audit chain's head moves with every audit row: that is the audit log, not state
    const rows = (t: string) => db.prepare(`SELECT * FROM "${t}"${t === 'meta' ? " WHERE key <> 'audit_head'" : ''} ORDER BY rowid`).all();
    return Object.fromEntries(tables.map((t) => [t, rows(t)]));
  } finally {
    db.close();
  }
}

function count(dbFile: string, table: string): number {
  const db = new Database(dbFile, { readonly: true, fileMustExist: true });
  try {
    return (db.prepare(`SELECT count(*) AS n FROM "${table}"`).get() as { n: number }).n;
  } finally {
    db.close();
  }
}

async function fuzzRoute(
  srv: TestServer,
  route: Route,
  others: Json[],
  runs: number,
): Promise<{ statuses: Map<number, number>; codes: Set<string> }> {
  const statuses = new Map<number, number>();
  const codes = new Set<string>();
  const urlOf = (params: Record<string, string>, query?: string) =>
    route.url.replace(/:(\w+)/g, (_m, k: string) => params[k] ?? route.params?.[k] ?? 'x') + (query ? `?${query}` : '');
  const queryArb = fc.oneof(
    fc.constant(route.query ? new URLSearchParams(route.query).toString() : ''),
    fc
      .dictionary(fc.constantFrom('limit', 'after', 'status', 'zone', 'stale', 'since', 'device', 'x', '__proto__'), paramValue, {
        maxKeys: 3,
      })
      .map((q) =>
        Object.entries(q)
          .map(([k, v]) => `${k}=${v}`)
          .join('&'),
      ),
  );
  const paramsArb = route.params
    ? fc.oneof(fc.constant(route.params), fc.record(Object.fromEntries(Object.keys(route.params).map((k) => [k, paramValue]))))
    : fc.constant({});
  const bodyArb = route.method === 'POST' ? bodyArbitrary(route.body ?? {}, others) : fc.constant(null);
  await fc.assert(
    fc.asyncProperty(paramsArb, queryArb, bodyArb, fc.boolean(), async (params, query, body, withAuth) => {
      const headers: Record<string, string> = {};
      if (body) headers['content-type'] = body.type;
      // admin routes mostly with the token (to get past authentication), sometimes without or with a bad one
      if (route.admin) headers.authorization = withAuth ? `Bearer ${srv.adminToken}` : `Bearer ${srv.adminToken.slice(0, -1)}x`;
      const res = await srv.server.app.inject({
        method: route.method,
        url: urlOf(params as Record<string, string>, query),
        headers,
        ...(body ? { payload: body.text } : {}),
      });
      statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
      assert.ok(res.statusCode < 500, `${route.method} ${route.url}: ${res.statusCode} ${res.body.slice(0, 300)}`);
      if (res.statusCode >= 400) {
        const code = (JSON.parse(res.body) as { error?: { code?: string } }).error?.code;
        assert.ok(code && code in ERRORS, `${route.method} ${route.url}: unregistered error ${res.body.slice(0, 300)}`);
        assert.equal(ERRORS[code as keyof typeof ERRORS].status, res.statusCode, `${code} answered with ${res.statusCode}`);
        codes.add(code);
      }
      assert.deepEqual(unhandled, []);
    }),
    { numRuns: runs, seed: SEED, endOnFailure: true },
  );
  return { statuses, codes };
}

test(
  `every route fuzzed (device routes ${RUNS} requests each, public and admin ${ADMIN_RUNS}): never a 5xx, always a registered code, nothing changed by the device routes`,
  { timeout: 3_600_000 },
  async (t) => {
    const big = { max: 1_000_000, window: 60 };
    // the database on tmpfs when there is one: each refusal's audit row is a commit, and fsync on a
    // disk would make the run's time the disk's (the durability of the store is tested elsewhere)
    const tmpRoot = existsSync('/dev/shm') ? '/dev/shm' : undefined;
    const srv = await startInProcessServer({ rateLimit: { perAddress: big, enroll: big, renew: big, admin: big } }, [], { tmpRoot });
    t.after(() => srv.close());
    const tpm = await startSwtpm();
    t.after(() => tpm.stop());
    await extendBootPcrs(tpm.tcti);

    // valid requests, recorded from a real device: enrollment, then a renewal
    const seen = new Map<string, Json>();
    const http = recording(injectTransport(srv.server.app), seen);
    const dev = await TestDevice.create(tpm.tcti);
    t.after(() => dev.close());
    const { deviceId } = await dev.enroll(http, await srv.token());
    assert.equal((await dev.challenge(http)).status, 200);
    assert.equal((await dev.renew(http)).status, 200);
    for (const p of ['/v1/enroll/start', '/v1/enroll/finish', '/v1/renew/challenge', '/v1/renew']) assert.ok(seen.has(p), p);

    // the CRL is made at its first request: make it before the snapshot
    assert.equal((await srv.server.app.inject({ method: 'GET', url: '/v1/crl' })).statusCode, 200);
    const dbFile = path.join(srv.dataDir, 'edgeid.db');
    const before = snapshot(dbFile);
    const auditBefore = count(dbFile, 'audit');
    const noncesBefore = count(dbFile, 'nonces');
    const deviceRoutes: Route[] = [
      ...[...seen].map(([url, body]) => ({ method: 'POST' as const, url, body, admin: false })),
      { method: 'GET', url: '/v1/crl', admin: false },
      { method: 'GET', url: '/v1/crl/:issuer', params: { issuer: 'issuing-2' }, admin: false },
      { method: 'GET', url: '/v1/ca', admin: false },
      { method: 'GET', url: '/healthz', admin: false },
    ];
    const bodies = [...seen.values()];
    let inputs = 0;
    for (const r of deviceRoutes) {
      const runs = r.method === 'POST' ? RUNS : ADMIN_RUNS;
      const { statuses, codes } = await fuzzRoute(srv, r, bodies, runs);
      inputs += runs;
      t.diagnostic(`${r.method} ${r.url}: ${JSON.stringify(Object.fromEntries(statuses))} ${[...codes].sort().join(' ')}`);
    }
    // the device routes changed nothing but the audit log (bounded: at most one row per request) and nonces
    assert.deepEqual(snapshot(dbFile), before);
    assert.ok(count(dbFile, 'audit') - auditBefore <= inputs, 'audit rows bounded by the requests');
    assert.ok(count(dbFile, 'nonces') - noncesBefore <= 64, 'nonces stay bounded per device');

    // the admin API, on a device that is not the fuzzed one's
    const adminRoutes: Route[] = [
      {
        method: 'POST',
        url: '/v1/admin/tokens',
        body: { zone: 'default', owner: 'ops', name: 'gw', purpose: 'fuzz', ttlSeconds: 600 },
        admin: true,
      },
      { method: 'GET', url: '/v1/admin/tokens', query: { limit: '10' }, admin: true },
      { method: 'POST', url: '/v1/admin/tokens/:id/expire', params: { id: '00000000000000ff' }, body: {}, admin: true },
      { method: 'GET', url: '/v1/admin/devices', query: { status: 'active', limit: '10' }, admin: true },
      { method: 'GET', url: '/v1/admin/devices/:id', params: { id: deviceId }, admin: true },
      {
        method: 'POST',
        url: '/v1/admin/devices/:id/revoke',
        params: { id: 'dev-00000000000000ff' },
        body: { reason: 'key-compromise' },
        admin: true,
      },
      { method: 'POST', url: '/v1/admin/devices/:id/retire', params: { id: 'dev-00000000000000ff' }, body: {}, admin: true },
      { method: 'POST', url: '/v1/admin/devices/:id/approve-baseline', params: { id: 'dev-00000000000000ff' }, body: {}, admin: true },
      {
        method: 'POST',
        url: '/v1/admin/devices/:id/control',
        params: { id: 'dev-00000000000000ff' },
        body: { type: 'renew-now', reason: 'fuzz' },
        admin: true,
      },
      { method: 'GET', url: '/v1/admin/audit', query: { limit: '10' }, admin: true },
      { method: 'GET', url: '/v1/admin/audit/verify', admin: true },
      { method: 'POST', url: '/v1/admin/crl/regenerate', body: {}, admin: true },
      { method: 'POST', url: '/v1/admin/broker/reconcile', body: {}, admin: true },
      {
        method: 'POST',
        url: '/v1/admin/broker/certificate',
        body: { spki: BROKER_SPKI, hostnames: ['broker.plant.example', '10.0.0.5'] },
        admin: true,
      },
      { method: 'GET', url: '/v1/admin/broker/crl', admin: true },
      { method: 'POST', url: '/v1/admin/broker/crl/reload', body: {}, admin: true },
      { method: 'GET', url: '/v1/admin/broker/monitors', admin: true },
      { method: 'POST', url: '/v1/admin/broker/monitors', body: { name: 'grafana', spki: BROKER_SPKI, days: 30 }, admin: true },
      { method: 'POST', url: '/v1/admin/broker/monitors/:name/remove', params: { name: 'grafana' }, body: {}, admin: true },
      { method: 'GET', url: '/v1/admin/ek-roots', admin: true },
      {
        method: 'POST',
        url: '/v1/admin/ek-roots',
        body: { certificate: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n' },
        admin: true,
      },
      { method: 'POST', url: '/v1/admin/ek-roots/:fingerprint/remove', params: { fingerprint: 'ab'.repeat(32) }, body: {}, admin: true },
      { method: 'GET', url: '/v1/admin/ek-allow', admin: true },
      {
        method: 'POST',
        url: '/v1/admin/ek-allow',
        body: { zone: 'default', owner: 'ops', content: 'ekPub\nAAAA\n', format: 'csv' },
        admin: true,
      },
      { method: 'POST', url: '/v1/admin/ek-allow/:id/remove', params: { id: 'ekm-000000000000' }, body: {}, admin: true },
      { method: 'GET', url: '/v1/admin/users', admin: true },
      { method: 'POST', url: '/v1/admin/users', body: { name: 'fuzz-viewer', role: 'viewer', zones: ['default'] }, admin: true },
      { method: 'POST', url: '/v1/admin/users/:name/disable', params: { name: 'nobody' }, body: {}, admin: true },
      { method: 'POST', url: '/v1/admin/users/:name/rotate-token', params: { name: 'nobody' }, body: {}, admin: true },
      {
        method: 'POST',
        url: '/v1/admin/users/:name/set-role',
        params: { name: 'nobody' },
        body: { role: 'viewer', zones: ['default'] },
        admin: true,
      },
      { method: 'GET', url: '/v1/admin/alerts', admin: true },
      { method: 'POST', url: '/v1/admin/alerts/:id/ack', params: { id: 'alr-0000000000000000' }, body: {}, admin: true },
      { method: 'GET', url: '/v1/admin/alerts/deliveries', admin: true },
      { method: 'GET', url: '/metrics', admin: true },
      { method: 'GET', url: '/v1/admin/ca/status', admin: true },
      // a valid request rotates (at most once: a rotated CA is not rotated again within a day)
      { method: 'POST', url: '/v1/admin/ca/rotate-issuing', body: {}, admin: true, runs: Math.min(ADMIN_RUNS, 200) },
      // at most once too: a second root rotation is refused (ca_rotation_invalid)
      { method: 'POST', url: '/v1/admin/ca/rotate-root', body: {}, admin: true, runs: Math.min(ADMIN_RUNS, 50) },
      {
        method: 'POST',
        url: '/v1/admin/backup',
        body: { passphrase: 'fuzzing passphrase 0' },
        admin: true,
        runs: Math.min(ADMIN_RUNS, 100),
      },
    ];
    const adminBodies = adminRoutes.flatMap((r) => (r.body ? [r.body] : []));
    for (const r of adminRoutes) {
      const { statuses, codes } = await fuzzRoute(srv, r, adminBodies, r.runs ?? ADMIN_RUNS);
      t.diagnostic(`${r.method} ${r.url}: ${JSON.stringify(Object.fromEntries(statuses))} ${[...codes].sort().join(' ')}`);
    }
    // every route the server has was fuzzed (a new route cannot be forgotten here)
    const fuzzed = new Set([...deviceRoutes, ...adminRoutes].map((r) => `${r.method} ${r.url}`));
    assert.deepEqual(
      routesOf(srv.server.app.printRoutes({ commonPrefix: false })).filter((r) => !fuzzed.has(r)),
      [],
    );

    const verify = await srv.admin('GET', '/v1/admin/audit/verify');
    assert.equal(verify.status, 200, JSON.stringify(verify.body));
    assert.equal(verify.body.ok, true, JSON.stringify(verify.body));
    // the fuzzed device is untouched and still renews
    assert.equal((await srv.admin('GET', `/v1/admin/devices/${deviceId}`)).body.device.status, 'active');
    assert.equal((await dev.challenge(http)).status, 200);
    const renewed = await dev.renew(http);
    assert.equal(renewed.status, 200, JSON.stringify(renewed.body));
  },
);
