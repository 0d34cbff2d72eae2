/**
 * Personal accounts and roles of the admin API, on the in-process server with real swtpm devices:
 * every /v1/admin route (from the server's printRoutes) × every role is allowed or refused 403
 * forbidden_role; zone scoping (403 forbidden_zone; listings hold only the caller's zones); a
 * disabled, expired or rotated-away token is refused; audit rows name the person, its role and
 * address under the chain hash; tokens name the technician who made them and devices who enrolled
 * them; a route that declares no role keeps the server from starting.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import Fastify from 'fastify';
import { assertRoleDeclared } from '../../enroll-server/http/app.js';
import { roleAllows, type Role } from '../../enroll-server/services/access.js';
import { USER_ROLES } from '../../protocol/api.js';
import { extendBootPcrs, startSwtpm } from '../../scripts/harness/swtpm.js';
import { TestDevice, injectTransport } from '../helpers/device.js';
import { startInProcessServer, type TestServer } from '../helpers/server.js';

/** The role each admin route needs: the specification the server's declarations are checked against. */
const NEEDS: Record<string, Role> = {
  'POST /v1/admin/tokens': 'technician',
  'GET /v1/admin/tokens': 'technician',
  'POST /v1/admin/tokens/:id/expire': 'technician',
  'GET /v1/admin/devices': 'viewer',
  'GET /v1/admin/devices/:id': 'viewer',
  'POST /v1/admin/devices/:id/revoke': 'operator',
  'POST /v1/admin/devices/:id/retire': 'operator',
  'POST /v1/admin/devices/:id/approve-baseline': 'operator',
  'POST /v1/admin/devices/:id/control': 'operator',
  'GET /v1/admin/audit': 'viewer',
  'GET /v1/admin/audit/verify': 'viewer',
  'POST /v1/admin/crl/regenerate': 'admin',
  'POST /v1/admin/backup': 'admin',
  'GET /v1/admin/ca/status': 'viewer',
  'POST /v1/admin/ca/rotate-issuing': 'admin',
  'POST /v1/admin/ca/rotate-root': 'admin',
  'POST /v1/admin/broker/reconcile': 'admin',
  'POST /v1/admin/broker/certificate': 'admin',
  'GET /v1/admin/broker/crl': 'admin',
  'POST /v1/admin/broker/crl/reload': 'admin',
  'POST /v1/admin/broker/monitors': 'admin',
  'GET /v1/admin/broker/monitors': 'admin',
  'POST /v1/admin/broker/monitors/:name/remove': 'admin',
  'GET /v1/admin/ek-roots': 'admin',
  'POST /v1/admin/ek-roots': 'admin',
  'POST /v1/admin/ek-roots/:fingerprint/remove': 'admin',
  'GET /v1/admin/ek-allow': 'admin',
  'POST /v1/admin/ek-allow': 'admin',
  'POST /v1/admin/ek-allow/:id/remove': 'admin',
  'POST /v1/admin/users': 'admin',
  'GET /v1/admin/users': 'admin',
  'POST /v1/admin/users/:name/disable': 'admin',
  'POST /v1/admin/users/:name/rotate-token': 'admin',
  'POST /v1/admin/users/:name/set-role': 'admin',
  'GET /v1/admin/alerts': 'viewer',
  'POST /v1/admin/alerts/:id/ack': 'operator',
  'GET /v1/admin/alerts/deliveries': 'admin',
};

/** A request each route accepts past authorization and changes nothing that matters here (unknown ids). */
function sample(route: string, i: number): { url: string; body?: unknown } {
  const [method, template] = route.split(' ') as [string, string];
  const url = template
    .replace(
      ':id',
      template.includes('ek-allow')
        ? 'ekm-000000000000'
        : template.includes('alerts')
          ? 'alr-00000000000000ff'
          : template.includes('tokens')
            ? '00000000000000ff'
            : 'dev-00000000000000ff',
    )
    .replace(':name', 'nobody')
    .replace(':fingerprint', 'ab'.repeat(32));
  if (method === 'GET') return { url };
  const bodies: Record<string, unknown> = {
    'POST /v1/admin/tokens': { zone: 'a', owner: 'matrix' },
    'POST /v1/admin/devices/:id/revoke': { reason: 'key-compromise' },
    'POST /v1/admin/devices/:id/control': { type: 'renew-now' },
    'POST /v1/admin/broker/certificate': { spki: 'AAAA', hostnames: ['broker.example'] },
    'POST /v1/admin/broker/monitors': { name: 'grafana', spki: 'AAAA', days: 30 },
    'POST /v1/admin/ek-roots': { certificate: 'not a certificate' },
    'POST /v1/admin/ek-allow': { zone: 'a', owner: 'ops', content: 'ekPub\nAAAA\n', format: 'csv' },
    'POST /v1/admin/users': { name: `matrix-${i}`, role: 'viewer', zones: ['a'] },
    'POST /v1/admin/users/:name/set-role': { role: 'viewer' },
  };
  return { url, body: bodies[route] ?? {} };
}

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

async function call(srv: TestServer, token: string, method: string, url: string, body?: unknown, ip = '127.0.0.1') {
  const res = await srv.server.app.inject({
    method: method as 'GET' | 'POST',
    url,
    remoteAddress: ip,
    headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { payload: body as object } : {}),
  });
  return { status: res.statusCode, body: res.json() as any };
}

test('a route that declares no role keeps the server from starting (deny by default)', async () => {
  const app = Fastify();
  void app.register(
    async (p) => {
      p.addHook('onRoute', assertRoleDeclared);
      p.get('/declared', { config: { role: 'viewer' } }, async () => 'ok');
      p.get('/forgotten', async () => 'oops');
    },
    { prefix: '/v1/admin' },
  );
  await assert.rejects(async () => app.ready(), /GET \/v1\/admin\/forgotten declares no role/);
  const unknown = Fastify();
  void unknown.register(async (p) => {
    p.addHook('onRoute', assertRoleDeclared);
    p.get('/x', { config: { role: 'superuser' as Role } }, async () => 'x');
  });
  await assert.rejects(async () => unknown.ready(), /declares no role/);
});

test('accounts and roles on the admin API', { timeout: 300_000 }, async (t) => {
  const [tpmA, tpmB] = await Promise.all([startSwtpm(), startSwtpm()]);
  t.after(() => tpmA.stop());
  t.after(() => tpmB.stop());
  await Promise.all([extendBootPcrs(tpmA.tcti), extendBootPcrs(tpmB.tcti)]);
  const big = { max: 1_000_000, window: '1m' };
  const srv = await startInProcessServer({ zones: { a: {}, b: {} }, rateLimit: { perAddress: big, enroll: big, renew: big, admin: big } });
  t.after(() => srv.close());
  const http = injectTransport(srv.server.app);
  const admin = srv.adminToken;

  const addUser = async (name: string, role: Role, zones?: string[], expires?: number) => {
    const r = await call(srv, admin, 'POST', '/v1/admin/users', {
      name,
      role,
      ...(zones ? { zones } : {}),
      ...(expires ? { expiresInSeconds: expires } : {}),
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(Object.keys(r.body).sort(), ['expiresAt', 'name', 'role', 'token', 'zones']);
    assert.match(r.body.token, /^eid_[A-Za-z0-9_-]{43}$/, 'a 256-bit token');
    return r.body.token as string;
  };
  // one unscoped user per role for the matrix, and a zone-a user per role for the zone checks
  const everywhere: Record<Role, string> = { admin } as Record<Role, string>;
  for (const role of USER_ROLES) if (role !== 'admin') everywhere[role] = await addUser(`${role}-all`, role);
  const viewerA = await addUser('viewer-a', 'viewer', ['a']);
  const techA = await addUser('tech-a', 'technician', ['a']);
  const opA = await addUser('op-a', 'operator', ['a']);

  // the stored row holds the token's SHA-256, never the token
  const dbText = (await readFile(path.join(srv.dataDir, 'edgeid.db'))).toString('latin1');
  assert.ok(!dbText.includes(opA), 'the token is not stored');

  // device A enrolls with a token the zone-a technician made; device B in zone b with an admin's token
  const tokA = await call(srv, techA, 'POST', '/v1/admin/tokens', { zone: 'a', owner: 'line-a', name: 'gw-a' });
  assert.equal(tokA.status, 200, JSON.stringify(tokA.body));
  const tokB = await call(srv, admin, 'POST', '/v1/admin/tokens', { zone: 'b', owner: 'line-b', name: 'gw-b' });
  const devA = await TestDevice.create(tpmA.tcti);
  const devB = await TestDevice.create(tpmB.tcti);
  t.after(() => devA.close());
  t.after(() => devB.close());
  await devA.enroll(http, tokA.body.token);
  await devB.enroll(http, tokB.body.token);
  const idA = devA.deviceId!;
  const idB = devB.deviceId!;

  await t.test('every admin route × every role: allowed, or 403 forbidden_role', async () => {
    const routes = routesOf(srv.server.app.printRoutes({ commonPrefix: false })).filter((r) => / \/v1\/admin\//.test(r));
    assert.deepEqual([...routes].sort(), Object.keys(NEEDS).sort(), 'the table names every admin route the server has');
    let i = 0;
    const refused: string[] = [];
    for (const route of routes) {
      for (const role of USER_ROLES) {
        const { url, body } = sample(route, i++);
        const r = await call(srv, everywhere[role], route.split(' ')[0]!, url, body);
        if (roleAllows(role, NEEDS[route]!)) {
          assert.ok(r.status < 500, `${role} ${route}: ${r.status} ${JSON.stringify(r.body)}`);
          assert.ok(r.status !== 401 && r.status !== 403, `${role} may ${route}, got ${r.status} ${JSON.stringify(r.body)}`);
        } else {
          assert.equal(r.status, 403, `${role} must not ${route}: ${r.status} ${JSON.stringify(r.body)}`);
          assert.equal(r.body.error.code, 'forbidden_role');
          assert.deepEqual(r.body.error.details, { role, needs: NEEDS[route] });
          refused.push(`${role} ${route}`);
        }
      }
    }
    t.diagnostic(`${routes.length} admin routes × ${USER_ROLES.length} roles; ${refused.length} refused`);
    // and without a token, or with a wrong one, every admin route is 401
    for (const route of routes) {
      const { url, body } = sample(route, i++);
      const r = await call(srv, `${everywhere.viewer}x`, route.split(' ')[0]!, url, body);
      assert.deepEqual([r.status, r.body.error.code], [401, 'admin_unauthorized'], route);
    }
  });

  await t.test('a technician cannot revoke; an operator cannot act outside its zones', async () => {
    const byTech = await call(srv, techA, 'POST', `/v1/admin/devices/${idA}/revoke`, { reason: 'key-compromise' });
    assert.deepEqual([byTech.status, byTech.body.error.code], [403, 'forbidden_role']);
    for (const [what, body] of [
      ['revoke', { reason: 'key-compromise' }],
      ['retire', {}],
      ['approve-baseline', {}],
      ['control', { type: 'renew-now' }],
    ] as const) {
      const r = await call(srv, opA, 'POST', `/v1/admin/devices/${idB}/${what}`, body);
      assert.deepEqual([r.status, r.body.error.code, r.body.error.details], [403, 'forbidden_zone', { zone: 'b' }], what);
    }
    const shown = await call(srv, opA, 'GET', `/v1/admin/devices/${idB}`);
    assert.deepEqual([shown.status, shown.body.error.code], [403, 'forbidden_zone']);
    assert.equal((await srv.admin('GET', `/v1/admin/devices/${idB}`)).body.device.status, 'active', 'device B untouched');
    assert.equal((await srv.admin('GET', `/v1/admin/devices/${idA}`)).body.device.status, 'active', 'device A untouched');
    // in its zone the operator acts
    const renewNow = await call(srv, opA, 'POST', `/v1/admin/devices/${idA}/control`, { type: 'renew-now' });
    assert.equal(renewNow.status, 200, JSON.stringify(renewNow.body));
  });

  await t.test('listings hold only the caller’s zones; a technician lists its own tokens', async () => {
    const list = await call(srv, viewerA, 'GET', '/v1/admin/devices');
    assert.deepEqual(
      list.body.devices.map((d: { id: string }) => d.id),
      [idA],
    );
    const all = await call(srv, everywhere.viewer, 'GET', '/v1/admin/devices');
    assert.deepEqual(all.body.devices.map((d: { id: string }) => d.id).sort(), [idA, idB].sort());
    const other = await call(srv, viewerA, 'GET', '/v1/admin/devices?zone=b');
    assert.deepEqual([other.status, other.body.error.code], [403, 'forbidden_zone']);
    const inB = await call(srv, techA, 'POST', '/v1/admin/tokens', { zone: 'b', owner: 'x' });
    assert.deepEqual([inB.status, inB.body.error.code], [403, 'forbidden_zone']);
    const own = await call(srv, techA, 'GET', '/v1/admin/tokens');
    assert.deepEqual(
      own.body.tokens.map((x: { id: string; createdBy: string }) => [x.id, x.createdBy]),
      [[tokA.body.id, 'user:tech-a']],
    );
    const opTokens = await call(srv, opA, 'GET', '/v1/admin/tokens');
    assert.ok(
      opTokens.body.tokens.every((x: { zone: string }) => x.zone === 'a'),
      'an operator of zone a sees only zone-a tokens',
    );
    assert.ok(opTokens.body.tokens.length > 1, 'an operator sees every token of its zones');
    // the audit log of a zone-scoped viewer: rows about its zones' devices and its own, nothing of zone b
    const audit = await call(srv, viewerA, 'GET', '/v1/admin/audit?limit=10000');
    assert.equal(audit.status, 200);
    const rows = audit.body.rows as { deviceId: string | null; actor: string }[];
    assert.ok(
      rows.some((r) => r.deviceId === idA),
      'rows about device A',
    );
    assert.ok(
      rows.every((r) => r.deviceId === idA || r.actor === 'user:viewer-a'),
      'no row outside zone a',
    );
  });

  await t.test('audit rows name the person, its role and address (under the chain hash); export filters by user', async () => {
    const outside = await call(srv, opA, 'GET', `/v1/admin/devices/${idB}`);
    assert.equal(outside.body.error.code, 'forbidden_zone');
    await call(srv, opA, 'GET', `/v1/admin/devices/${idA}`, undefined, '10.20.30.40');
    const rows = (await srv.admin('GET', '/v1/admin/audit?user=op-a&limit=10000')).body.rows as {
      actor: string;
      ip: string;
      event: string;
      outcome: string;
      reason: string | null;
      details: Record<string, unknown>;
    }[];
    assert.ok(rows.length >= 2, `${rows.length} rows of op-a`);
    assert.ok(
      rows.every((r) => r.actor === 'user:op-a' && r.details.role === 'operator'),
      'every row is op-a, operator',
    );
    const show = rows.at(-1)!;
    assert.deepEqual([show.event, show.ip, show.outcome], ['admin.device.show', '10.20.30.40', 'ok']);
    // a refusal by role is one row of the person too
    assert.ok(
      rows.some((r) => r.outcome === 'fail' && r.reason === 'forbidden_zone'),
      'the refusal is a row of op-a',
    );
    const techRefused = (await srv.admin('GET', '/v1/admin/audit?user=tech-a&limit=10000')).body.rows.find(
      (r: { reason: string | null }) => r.reason === 'forbidden_role',
    );
    assert.equal(techRefused?.details.role, 'technician');
    // editing the role of a row breaks the chain
    const verify = await srv.admin('GET', '/v1/admin/audit/verify');
    assert.equal(verify.body.ok, true);
    const db = (srv.server.ctx.store as unknown as { db: import('better-sqlite3').Database }).db;
    const seq = db.prepare(`SELECT seq FROM audit WHERE actor = 'user:op-a' ORDER BY seq DESC LIMIT 1`).pluck().get() as number;
    const details = db.prepare('SELECT details FROM audit WHERE seq = ?').pluck().get(seq) as string;
    db.prepare('UPDATE audit SET details = ? WHERE seq = ?').run(details.replace('"operator"', '"admin"'), seq);
    const broken = await srv.admin('GET', '/v1/admin/audit/verify');
    assert.equal(broken.body.ok, false);
    assert.equal(broken.body.problem.seq, seq);
    db.prepare('UPDATE audit SET details = ? WHERE seq = ?').run(details, seq);
  });

  await t.test('tokens name the technician; devices record who enrolled them', async () => {
    const d = (await srv.admin('GET', `/v1/admin/devices/${idA}`)).body.device;
    assert.equal(d.enrolledBy, `user:tech-a (token ${tokA.body.id})`);
    const tokens = (await srv.admin('GET', '/v1/admin/tokens')).body.tokens as { id: string; createdBy: string }[];
    assert.equal(tokens.find((x) => x.id === tokA.body.id)?.createdBy, 'user:tech-a');
    assert.equal(tokens.find((x) => x.id === tokB.body.id)?.createdBy, 'user:admin');
  });

  await t.test('a disabled, expired or rotated-away token is refused', async () => {
    const tmp = await addUser('temp', 'viewer', undefined, 3600);
    assert.equal((await call(srv, tmp, 'GET', '/v1/admin/devices')).status, 200);
    srv.clock.offset = 3600_000 + 1000;
    const expired = await call(srv, tmp, 'GET', '/v1/admin/devices');
    assert.deepEqual([expired.status, expired.body.error.code], [401, 'user_expired']);
    srv.clock.offset = 0;

    const rotated = await call(srv, admin, 'POST', '/v1/admin/users/viewer-a/rotate-token', {});
    assert.equal(rotated.status, 200);
    const old = await call(srv, viewerA, 'GET', '/v1/admin/devices');
    assert.deepEqual([old.status, old.body.error.code], [401, 'admin_unauthorized']);
    assert.equal((await call(srv, rotated.body.token, 'GET', '/v1/admin/devices')).status, 200);

    const disabled = await call(srv, admin, 'POST', '/v1/admin/users/op-a/disable', {});
    assert.equal(disabled.status, 200);
    assert.equal(disabled.body.user.disabledBy, 'user:admin');
    const refused = await call(srv, opA, 'GET', '/v1/admin/devices');
    assert.deepEqual([refused.status, refused.body.error.code], [401, 'user_disabled']);
    const again = await call(srv, admin, 'POST', '/v1/admin/users/op-a/rotate-token', {});
    assert.deepEqual([again.status, again.body.error.code], [409, 'user_is_disabled']);

    const dup = await call(srv, admin, 'POST', '/v1/admin/users', { name: 'tech-a', role: 'viewer' });
    assert.deepEqual([dup.status, dup.body.error.code], [409, 'user_exists']);
    const zonedAdmin = await call(srv, admin, 'POST', '/v1/admin/users', { name: 'za', role: 'admin', zones: ['a'] });
    assert.deepEqual([zonedAdmin.status, zonedAdmin.body.error.code], [400, 'user_invalid']);
    const unknownZone = await call(srv, admin, 'POST', '/v1/admin/users', { name: 'zz', role: 'viewer', zones: ['nowhere'] });
    assert.deepEqual([unknownZone.status, unknownZone.body.error.code], [403, 'zone_unknown']);
  });

  await t.test('expiring a token: a technician its own, an operator any in its zones', async () => {
    const mk = async (token: string, zone: string, owner: string) => {
      const r = await call(srv, token, 'POST', '/v1/admin/tokens', { zone, owner });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      return r.body.id as string;
    };
    const opA2 = await addUser('op-a2', 'operator', ['a']);
    const byTechA = await mk(techA, 'a', 'exp-1');
    const byTechA2 = await mk(techA, 'a', 'exp-2');
    const byAdminA = await mk(admin, 'a', 'exp-3');
    const byAdminB = await mk(admin, 'b', 'exp-4');
    const notOwn = await call(srv, techA, 'POST', `/v1/admin/tokens/${byAdminA}/expire`, {});
    assert.deepEqual([notOwn.status, notOwn.body.error.code], [403, 'forbidden_role']);
    const own = await call(srv, techA, 'POST', `/v1/admin/tokens/${byTechA}/expire`, {});
    assert.equal(own.status, 200, JSON.stringify(own.body));
    assert.ok(Date.parse(own.body.token.expiresAt) <= Date.now(), 'expires now');
    const again = await call(srv, techA, 'POST', `/v1/admin/tokens/${byTechA}/expire`, {});
    assert.deepEqual([again.status, again.body.error.code], [409, 'token_not_expirable']);
    const outside = await call(srv, opA2, 'POST', `/v1/admin/tokens/${byAdminB}/expire`, {});
    assert.deepEqual([outside.status, outside.body.error.code], [403, 'forbidden_zone']);
    const inZone = await call(srv, opA2, 'POST', `/v1/admin/tokens/${byTechA2}/expire`, {});
    assert.equal(inZone.status, 200, JSON.stringify(inZone.body));
    // an expired token enrolls nothing
    const tok = await call(srv, admin, 'GET', '/v1/admin/tokens');
    assert.ok(
      tok.body.tokens.find((x: { id: string }) => x.id === byAdminB).expiresAt > new Date().toISOString(),
      'the refused one still lives',
    );
    const audit = await call(srv, admin, 'GET', '/v1/admin/audit?user=op-a2&limit=1000');
    assert.ok(audit.body.rows.some((r: any) => r.event === 'token.expire' && r.outcome === 'ok' && r.details.tokenId === byTechA2));
  });

  await t.test('the bootstrap admin: last admin cannot be disabled; its rotated token replaces data/admin-token', async () => {
    const last = await call(srv, admin, 'POST', '/v1/admin/users/admin/disable', {});
    assert.deepEqual([last.status, last.body.error.code], [409, 'user_last_admin']);
    const r = await call(srv, admin, 'POST', '/v1/admin/users/admin/rotate-token', {});
    assert.equal(r.status, 200);
    const file = (await readFile(path.join(srv.dataDir, 'admin-token'), 'utf8')).trim();
    assert.equal(file, r.body.token);
    assert.equal((await call(srv, admin, 'GET', '/v1/admin/users')).status, 401, 'the old admin token is refused');
    const users = await call(srv, file, 'GET', '/v1/admin/users');
    assert.equal(users.status, 200);
    const boot = users.body.users.find((u: { name: string }) => u.name === 'admin');
    assert.deepEqual([boot.role, boot.zones, boot.bootstrap], ['admin', null, true]);
  });
});
