/**
 * Personal accounts, the edges (in-process server, no devices): a refused token of a disabled or
 * expired account leaves an audit row naming that person (never the token); `set-role` changes a
 * role and zones at once, audited, and refuses bad input with a stable code and no change; the
 * last enabled admin cannot be disabled or demoted, also by two admins acting at the same time;
 * an account disabled while its request's body is still arriving does not act through it; a new
 * data/admin-token makes the bootstrap user an admin of every zone again, also after a demotion.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import pino from 'pino';
import { loadConfig } from '../../enroll-server/config.js';
import { createServer } from '../../enroll-server/server.js';
import { withSwtpmEkRoots } from '../../scripts/harness/server.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { startInProcessServer, type TestServer } from '../helpers/server.js';

async function call(srv: TestServer, token: string, method: 'GET' | 'POST', url: string, body?: unknown) {
  const res = await srv.server.app.inject({
    method,
    url,
    headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { payload: body as object } : {}),
  });
  return { status: res.statusCode, body: res.json() as any };
}

const CONFIG = { zones: { a: {}, b: {} }, rateLimit: { admin: { max: 1_000_000, window: '1m' } } };

async function setup(t: { after: (fn: () => Promise<void>) => void }) {
  const srv = await startInProcessServer(CONFIG);
  t.after(() => srv.close());
  const add = async (name: string, role: string, zones?: string[], expiresInSeconds?: number) => {
    const r = await srv.admin('POST', '/v1/admin/users', {
      name,
      role,
      ...(zones ? { zones } : {}),
      ...(expiresInSeconds ? { expiresInSeconds } : {}),
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body.token as string;
  };
  const user = async (name: string) =>
    ((await srv.admin('GET', '/v1/admin/users')).body.users as { name: string; role: string; zones: string[] | null }[]).find(
      (u) => u.name === name,
    );
  const rows = async (filter: string) => (await srv.admin('GET', `/v1/admin/audit?limit=10000${filter}`)).body.rows as any[];
  return { srv, add, user, rows };
}

test('a disabled or expired account’s refused token: the audit row names the person, never the token', async (t) => {
  const { srv, add, rows } = await setup(t);
  const bob = await add('bob', 'operator', ['a']);
  const carol = await add('carol', 'viewer', undefined, 3600);
  assert.equal((await srv.admin('POST', '/v1/admin/users/bob/disable', {})).status, 200);
  const refused = await call(srv, bob, 'GET', '/v1/admin/devices');
  assert.deepEqual([refused.status, refused.body.error.code], [401, 'user_disabled']);
  srv.clock.offset = 3600_000 + 1000;
  const expired = await call(srv, carol, 'GET', '/v1/admin/devices');
  assert.deepEqual([expired.status, expired.body.error.code], [401, 'user_expired']);
  // users list says which accounts no longer act, and why
  const states = ((await srv.admin('GET', '/v1/admin/users')).body.users as { name: string; state: string }[]).map((u) => [
    u.name,
    u.state,
  ]);
  assert.deepEqual(states, [
    ['admin', 'enabled'],
    ['bob', 'disabled'],
    ['carol', 'expired'],
  ]);
  srv.clock.offset = 0;

  const bobRows = (await rows('&user=bob')).filter((r) => r.reason === 'user_disabled');
  assert.equal(bobRows.length, 1, 'one refusal row of user:bob');
  assert.deepEqual([bobRows[0].actor, bobRows[0].details.role, bobRows[0].event], ['user:bob', 'operator', 'admin.http.devices']);
  const carolRows = (await rows('&user=carol')).filter((r) => r.reason === 'user_expired');
  assert.deepEqual(
    carolRows.map((r) => [r.actor, r.details.role]),
    [['user:carol', 'viewer']],
  );
  // the scheme is case-insensitive (RFC 7235 §2.1): any spelling of Bearer carries the same token
  for (const scheme of ['bearer', 'BEARER', 'BeArEr']) {
    const r = await srv.server.app.inject({
      method: 'GET',
      url: '/v1/admin/users',
      headers: { authorization: `${scheme} ${srv.adminToken}` },
    });
    assert.equal(r.statusCode, 200, `${scheme}: ${r.body}`);
  }
  const noScheme = await srv.server.app.inject({ method: 'GET', url: '/v1/admin/users', headers: { authorization: srv.adminToken } });
  assert.deepEqual([noScheme.statusCode, noScheme.json().error.code], [401, 'admin_unauthorized']);
  // an unknown token is still nobody in particular
  const nobody = await call(srv, 'eid_not-a-real-token', 'GET', '/v1/admin/devices');
  assert.deepEqual([nobody.status, nobody.body.error.code], [401, 'admin_unauthorized']);
  const all = JSON.stringify(await rows(''));
  assert.ok(!all.includes(bob) && !all.includes(carol), 'no token in the audit log');
  assert.ok(all.includes('"actor":"admin?"'), 'the unknown token’s row is admin?');
  assert.equal((await srv.admin('GET', '/v1/admin/audit/verify')).body.ok, true);
});

test('users set-role: a new role and zones at once, audited; bad input changes nothing', async (t) => {
  const { srv, add, user, rows } = await setup(t);
  const dora = await add('dora', 'technician', ['a']);
  // a technician cannot give itself more
  const self = await call(srv, dora, 'POST', '/v1/admin/users/dora/set-role', { role: 'admin' });
  assert.deepEqual([self.status, self.body.error.code], [403, 'forbidden_role']);

  // zones absent: the account keeps its zones
  const up = await srv.admin('POST', '/v1/admin/users/dora/set-role', { role: 'operator' });
  assert.equal(up.status, 200, JSON.stringify(up.body));
  assert.deepEqual([up.body.user.role, up.body.user.zones], ['operator', ['a']]);
  // at once: dora's same token now revokes (past the role check: the device does not exist)
  const revoke = await call(srv, dora, 'POST', '/v1/admin/devices/dev-00000000000000ff/revoke', { reason: 'key-compromise' });
  assert.deepEqual([revoke.status, revoke.body.error.code], [404, 'device_not_found']);
  const row = (await rows('&user=admin')).filter((r) => r.event === 'user.set_role').at(-1);
  assert.deepEqual(
    [row.outcome, row.details.from, row.details.to],
    ['ok', { role: 'technician', zones: ['a'] }, { role: 'operator', zones: ['a'] }],
  );

  const zones = await srv.admin('POST', '/v1/admin/users/dora/set-role', { role: 'operator', zones: ['b', 'b', 'a'] });
  assert.deepEqual(zones.body.user.zones, ['b', 'a']);
  const every = await srv.admin('POST', '/v1/admin/users/dora/set-role', { role: 'viewer', zones: null });
  assert.deepEqual([every.body.user.role, every.body.user.zones], ['viewer', null]);

  const before = await user('dora');
  const bad: [unknown, number, string][] = [
    [{ role: 'root' }, 400, 'bad_request'],
    [{ role: 'viewer', zones: [] }, 400, 'bad_request'],
    [{ role: 'viewer', zones: [''] }, 400, 'bad_request'],
    [{ role: 'viewer', zones: ['a\u0007'] }, 403, 'zone_unknown'],
    [{ role: 'viewer', zones: ['nowhere'] }, 403, 'zone_unknown'],
    [{ role: 'admin', zones: ['a'] }, 400, 'user_invalid'],
    [{ role: 'viewer', extra: 1 }, 400, 'bad_request'],
  ];
  for (const [body, status, code] of bad) {
    const r = await srv.admin('POST', '/v1/admin/users/dora/set-role', body);
    assert.deepEqual([r.status, r.body.error.code], [status, code], JSON.stringify(body));
  }
  for (const [name, status, code] of [
    ['nobody', 404, 'user_not_found'],
    ['Dora', 400, 'bad_request'],
    ['admin%3F', 400, 'bad_request'],
    ['x'.repeat(65), 400, 'bad_request'],
  ] as const) {
    const r = await srv.admin('POST', `/v1/admin/users/${name}/set-role`, { role: 'viewer' });
    assert.deepEqual([r.status, r.body.error.code], [status, code], name);
  }
  assert.deepEqual(await user('dora'), before, 'nothing changed');

  // promoted to admin: every zone
  const admin2 = await srv.admin('POST', '/v1/admin/users/dora/set-role', { role: 'admin' });
  assert.deepEqual([admin2.body.user.role, admin2.body.user.zones], ['admin', null]);

  await srv.admin('POST', '/v1/admin/users/dora/disable', {});
  const disabled = await srv.admin('POST', '/v1/admin/users/dora/set-role', { role: 'viewer' });
  assert.deepEqual([disabled.status, disabled.body.error.code], [409, 'user_is_disabled']);

  // the last enabled admin keeps its role
  const last = await srv.admin('POST', '/v1/admin/users/admin/set-role', { role: 'operator' });
  assert.deepEqual([last.status, last.body.error.code], [409, 'user_last_admin']);
  assert.equal((await user('admin'))?.role, 'admin');
  const refusals = (await rows('&user=admin')).filter((r) => r.event === 'user.set_role' && r.outcome === 'fail');
  assert.ok(
    refusals.some((r) => r.reason === 'user_last_admin'),
    'the refusal is audited',
  );
  assert.equal((await srv.admin('GET', '/v1/admin/audit/verify')).body.ok, true);
});

test('users add: bad names, zones, roles and lifetimes are refused with a stable code and make no account', async (t) => {
  const { srv, rows } = await setup(t);
  const bad: [Record<string, unknown>, number, string][] = [
    [{ name: 'admin?', role: 'viewer' }, 400, 'bad_request'],
    [{ name: 'user:alice', role: 'viewer' }, 400, 'bad_request'],
    [{ name: 'al\u0007ice', role: 'viewer' }, 400, 'bad_request'],
    [{ name: 'al\u0000ice', role: 'viewer' }, 400, 'text_not_well_formed'],
    [{ name: 'zoë', role: 'viewer' }, 400, 'bad_request'],
    [{ name: 'Alice', role: 'viewer' }, 400, 'bad_request'],
    [{ name: 'a'.repeat(65), role: 'viewer' }, 400, 'bad_request'],
    [{ name: '', role: 'viewer' }, 400, 'bad_request'],
    [{ name: 'alice', role: 'Admin' }, 400, 'bad_request'],
    [{ name: 'alice', role: 'viewer', zones: [] }, 400, 'bad_request'],
    [{ name: 'alice', role: 'viewer', zones: ['a', 'nowhere'] }, 403, 'zone_unknown'],
    [{ name: 'alice', role: 'admin', zones: ['a'] }, 400, 'user_invalid'],
    [{ name: 'alice', role: 'viewer', expiresInSeconds: 0 }, 400, 'bad_request'],
    [{ name: 'alice', role: 'viewer', expiresInSeconds: -60 }, 400, 'bad_request'],
    [{ name: 'alice', role: 'viewer', expiresInSeconds: 1e12 }, 400, 'bad_request'],
    [{ name: 'alice', role: 'viewer', expiresInSeconds: 90.5 }, 400, 'bad_request'],
  ];
  for (const [body, status, code] of bad) {
    const r = await srv.admin('POST', '/v1/admin/users', body);
    assert.deepEqual([r.status, r.body.error.code], [status, code], JSON.stringify(body));
  }
  const users = (await srv.admin('GET', '/v1/admin/users')).body.users as { name: string }[];
  assert.deepEqual(
    users.map((u) => u.name),
    ['admin'],
  );
  const dup = await srv.admin('POST', '/v1/admin/users', { name: 'alice', role: 'viewer', zones: ['a', 'a', 'b'] });
  assert.deepEqual(dup.body.zones, ['a', 'b'], 'repeated zones once');
  assert.ok(
    (await rows('')).every((r) => r.outcome === 'ok' || r.actor === 'user:admin'),
    'every refusal is a row of user:admin',
  );
});

test('two admins removing each other at the same time: one admin stays', async (t) => {
  const { srv, add } = await setup(t);
  // the real store, answering its reads a turn of the event loop later (as a store on a network
  // database does): two requests' reads and writes then interleave
  const store = srv.server.ctx.store;
  for (const m of ['getUser', 'listUsers', 'getUserByTokenHash'] as const) {
    const real = store[m].bind(store) as (...args: unknown[]) => Promise<unknown>;
    (store as unknown as Record<string, unknown>)[m] = async (...args: unknown[]) => {
      const r = await real(...args);
      await new Promise((resolve) => setImmediate(resolve));
      return r;
    };
  }
  for (const [i, how] of [
    [1, 'disable'],
    [2, 'set-role'],
  ] as const) {
    const other = await add(`second-${i}`, 'admin');
    const url = (name: string) => `/v1/admin/users/${name}/${how}`;
    const body = how === 'disable' ? {} : { role: 'viewer' };
    const [a, b] = await Promise.all([
      call(srv, srv.adminToken, 'POST', url(`second-${i}`), body),
      call(srv, other, 'POST', url('admin'), body),
    ]);
    const ok = [a, b].filter((r) => r.status === 200).length;
    assert.equal(ok, 1, `exactly one of them succeeds: ${JSON.stringify([a.body, b.body])}`);
    const refused = [a, b].find((r) => r.status !== 200)!;
    assert.ok(['user_last_admin', 'user_disabled', 'forbidden_role'].includes(refused.body.error.code), JSON.stringify(refused.body));
    const admins = ((await srv.admin('GET', '/v1/admin/users')).body.users as any[]).filter((u) => u.role === 'admin' && !u.disabledAt);
    assert.deepEqual(
      admins.map((u) => u.name),
      ['admin'],
      `${how}: the bootstrap admin stays`,
    );
  }
});

test('an account disabled while its request’s body is arriving does not act through it', async (t) => {
  const { srv, add, user } = await setup(t);
  const eve = await add('eve', 'admin');
  const body = new PassThrough();
  const pending = srv.server.app.inject({
    method: 'POST',
    url: '/v1/admin/users',
    headers: { authorization: `Bearer ${eve}`, 'content-type': 'application/json' },
    payload: body,
  });
  body.write('{"name":"mallory",');
  // the server has authorized eve and started reading the body
  await waitFor('the first part of the body read', () => body.readableLength === 0 && body.readableFlowing !== null);
  assert.equal((await srv.admin('POST', '/v1/admin/users/eve/disable', {})).status, 200);
  body.end('"role":"admin"}');
  const res = await pending;
  assert.deepEqual([res.statusCode, res.json().error.code], [401, 'user_disabled']);
  assert.equal(await user('mallory'), undefined, 'no account made');

  // the same with a token rotated away meanwhile: refused, and the row still names the person
  const fay = await add('fay', 'admin');
  const body2 = new PassThrough();
  const pending2 = srv.server.app.inject({
    method: 'POST',
    url: '/v1/admin/users',
    headers: { authorization: `Bearer ${fay}`, 'content-type': 'application/json' },
    payload: body2,
  });
  body2.write('{"name":"mallory",');
  await waitFor('the first part of the second body read', () => body2.readableLength === 0 && body2.readableFlowing !== null);
  assert.equal((await srv.admin('POST', '/v1/admin/users/fay/rotate-token', {})).status, 200);
  body2.end('"role":"admin"}');
  const res2 = await pending2;
  assert.deepEqual([res2.statusCode, res2.json().error.code], [401, 'admin_unauthorized']);
  assert.equal(await user('mallory'), undefined, 'no account made');
  const rows = (await srv.admin('GET', '/v1/admin/audit?limit=10000&user=fay')).body.rows as any[];
  assert.deepEqual(
    rows.filter((r) => r.outcome === 'fail').map((r) => [r.event, r.reason, r.details.role]),
    [['admin.http.users', 'admin_unauthorized', 'admin']],
  );
});

test('a new data/admin-token makes the bootstrap user an admin of every zone again, also after a demotion', async (t) => {
  const srv = await startInProcessServer(CONFIG);
  let again: Awaited<ReturnType<typeof createServer>> | null = null;
  let first = true;
  t.after(async () => {
    if (first) await srv.server.close();
    await again?.close();
    await rm(srv.dataDir, { recursive: true, force: true });
  });
  const r = await srv.admin('POST', '/v1/admin/users', { name: 'frank', role: 'admin' });
  const frank = r.body.token as string;
  const demote = await call(srv, frank, 'POST', '/v1/admin/users/admin/set-role', { role: 'viewer', zones: ['a'] });
  assert.equal(demote.status, 200, JSON.stringify(demote.body));
  assert.equal((await call(srv, frank, 'POST', '/v1/admin/users/frank/disable', {})).body.error.code, 'user_last_admin');
  first = false;
  await srv.server.close();
  // the host's operator writes a new token and restarts the server
  const token = `adm_${'A'.repeat(43)}`;
  await writeFile(path.join(srv.dataDir, 'admin-token'), token + '\n', { mode: 0o600 });
  const config = loadConfig({ argv: ['--data', srv.dataDir, '--listen', '127.0.0.1:0'], env: {}, file: withSwtpmEkRoots(CONFIG) });
  again = await createServer({ config, tls: false, logger: pino({ level: 'silent' }), housekeeping: false, hooks: [] });
  const users = await again.app.inject({ method: 'GET', url: '/v1/admin/users', headers: { authorization: `Bearer ${token}` } });
  assert.equal(users.statusCode, 200, users.body);
  const boot = (users.json().users as any[]).find((u) => u.name === 'admin');
  assert.deepEqual([boot.role, boot.zones, boot.disabledAt], ['admin', null, null]);
});
