/**
 * The web console's listener over real HTTPS (its own port, the server's TLS certificate): the
 * session cookie's flags, idle and absolute timeouts (on the server's injected clock), CSRF
 * (missing / wrong token, foreign Origin → 403 csrf_failed), the security headers, logout, a
 * disabled or rotated user's session ending, role checks on the console's copy of the admin API
 * (viewer → 403 forbidden_role), the zone filter of the live event stream, login rate limiting,
 * and login/logout audit rows naming the person. Software devices (scripts/harness/softenroll.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { loadConfig } from '../../enroll-server/config.js';
import { createServer } from '../../enroll-server/server.js';
import { CSP, startSession } from '../../enroll-server/console/app.js';
import { request } from '../helpers/console.js';
import { withSwtpmEkRoots } from '../../scripts/harness/server.js';
import { REPO } from '../../scripts/harness/fs.js';
import { createSoftDevice, softClient } from '../../scripts/harness/softdevice.js';
import { softEk, softEnroll } from '../../scripts/harness/softenroll.js';

const UI_DIR = path.join(REPO, 'enroll-server/console/ui');

/** An open event stream: the device events it received so far, and a wait for one. */
function events(base: string, ca: string, cookie: string) {
  const got: any[] = [];
  let ready = false;
  const waiters: (() => void)[] = [];
  let status = 0;
  let buf = '';
  const req = https.request(new URL('/console/api/events', base), { ca, headers: { cookie } }, (res) => {
    status = res.statusCode ?? 0;
    res.setEncoding('utf8');
    res.on('data', (c: string) => {
      buf += c;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (/^event: device$/m.test(block) && data) got.push(JSON.parse(data));
        if (/^event: ready$/m.test(block)) ready = true;
        for (const w of waiters.splice(0)) w();
      }
    });
    for (const w of waiters.splice(0)) w();
  });
  req.on('error', () => undefined);
  req.end();
  return {
    got,
    get status() {
      return status;
    },
    get ready() {
      return ready;
    },
    async until(pred: () => boolean, what: string) {
      const end = Date.now() + 20_000;
      while (!pred()) {
        if (Date.now() > end)
          throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(got.map((e) => [e.kind, e.device.id]))}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 200).unref();
        });
      }
    },
    close: () => req.destroy(),
  };
}

test('console: sessions, CSRF, headers, timeouts, roles, live events by zone', { timeout: 120_000 }, async (t) => {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-console-'));
  t.after(() => rm(dataDir, { recursive: true, force: true }));
  const clock = { offset: 0 };
  const big = { max: 1_000_000, window: '1m' };
  const config = loadConfig({
    argv: ['--data', dataDir, '--listen', '127.0.0.1:0'],
    env: {},
    file: withSwtpmEkRoots({
      zones: { a: { requireEkCertificate: false }, b: { requireEkCertificate: false } },
      rateLimit: { perAddress: big, enroll: big, renew: big, admin: big },
      staleAfter: '10m',
      console: { listen: '127.0.0.1:0', loginLimit: { max: 40, window: '1m' }, staleCheckInterval: '1s' },
    }),
  });
  assert.equal(config.console?.idleTimeout, 900, 'idle timeout default 15 min');
  assert.equal(config.console?.absoluteTimeout, 8 * 3600, 'absolute timeout default 8 h');
  const server = await createServer({
    config,
    logger: pino({ level: 'silent' }),
    housekeeping: false,
    now: () => Date.now() + clock.offset,
    // another login method (as single sign-on would be) starts its sessions with startSession
    consoleExtend: async (app) => {
      app.get('/console/test-login', async (_req, reply) => {
        await startSession(reply, { name: 'sso-sam', role: 'viewer', zones: ['a'], via: 'oidc' });
        return reply.redirect('/console/', 303);
      });
    },
  });
  const info = await server.listen();
  t.after(() => server.close());
  assert.ok(info.consoleUrl, 'server.json names the console');
  const base = new URL(info.consoleUrl!).origin;
  const origin = base;
  assert.notEqual(new URL(base).port, String(info.port), 'its own listener');
  const ca = server.ctx.ca.rootPem;
  const adminToken = server.createdAdminToken!;
  const api = (method: string, p: string, body?: unknown) =>
    request(info.url, ca, method, p, {
      headers: { authorization: `Bearer ${adminToken}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
  const addUser = async (name: string, role: string, zones?: string[]) => {
    const r = await api('POST', '/v1/admin/users', { name, role, ...(zones ? { zones } : {}) });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body.token as string;
  };
  const opA = await addUser('op-a', 'operator', ['a']);
  const opAll = await addUser('op-all', 'operator');
  const viewer = await addUser('viewer-all', 'viewer');
  const dora = await addUser('dora', 'operator');
  const rita = await addUser('rita', 'operator');

  const call = (method: string, p: string, o: { cookie?: string; csrf?: string; origin?: string | null; body?: unknown } = {}) =>
    request(base, ca, method, p, {
      headers: {
        ...(o.cookie ? { cookie: o.cookie } : {}),
        ...(o.csrf ? { 'x-csrf-token': o.csrf } : {}),
        ...(o.origin === null ? {} : { origin: o.origin ?? origin }),
        ...(o.body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}),
    });
  const login = async (token: string, o: { origin?: string } = {}) => {
    const r = await request(base, ca, 'POST', '/console/login', {
      headers: { 'content-type': 'application/x-www-form-urlencoded', origin: o.origin ?? origin },
      body: new URLSearchParams({ token }).toString(),
    });
    return r;
  };
  const session = async (token: string) => {
    const r = await login(token);
    assert.equal(r.status, 303, JSON.stringify(r.body));
    assert.equal(r.headers.location, '/console/');
    const set = String(r.headers['set-cookie']);
    const cookie = set.split(';')[0]!;
    const s = await call('GET', '/console/api/session', { cookie });
    assert.equal(s.status, 200, JSON.stringify(s.body));
    return { cookie, csrf: s.body.csrf as string, setCookie: set };
  };

  await t.test('the page: strict CSP, nosniff, no referrer, HSTS; the bundle from the server', async () => {
    const r = await call('GET', '/console/');
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-security-policy'], CSP);
    assert.match(CSP, /^default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; /);
    assert.match(CSP, /form-action 'self'; frame-ancestors 'none'; base-uri 'none'$/);
    assert.equal(r.headers['x-content-type-options'], 'nosniff');
    assert.equal(r.headers['referrer-policy'], 'no-referrer');
    assert.match(String(r.headers['strict-transport-security']), /^max-age=\d{7,}/);
    assert.doesNotMatch(r.body, /<script>|<style>|\sstyle=|\son[a-z]+=/i, 'no inline script or style');
    const js = await call('GET', '/console/assets/app.js');
    assert.equal(js.status, 200);
    assert.match(String(js.headers['content-type']), /^text\/javascript/);
    assert.ok(js.body.length > 5000, 'the bundled UI');
    // the console's own code never inserts HTML (Preact itself has the escape hatch; it is unused)
    for (const f of readdirSync(UI_DIR)) {
      if (/\.tsx?$/.test(f))
        assert.doesNotMatch(
          readFileSync(path.join(UI_DIR, f), 'utf8'),
          /dangerouslySetInnerHTML|innerHTML|outerHTML|insertAdjacentHTML/,
          f,
        );
    }
    assert.equal(js.headers['content-security-policy'], CSP);
    const css = await call('GET', '/console/assets/app.css');
    assert.match(String(css.headers['content-type']), /^text\/css/);
  });

  await t.test('login: cookie flags; a wrong token and a foreign origin are refused and audited', async () => {
    const s = await session(opAll);
    assert.match(s.setCookie, /^__Host-edgeid_console=[A-Za-z0-9_-]{43}; /, '256-bit id in a __Host- cookie');
    for (const flag of ['Path=/', 'Secure', 'HttpOnly', 'SameSite=Strict']) assert.ok(s.setCookie.split('; ').includes(flag), flag);
    assert.doesNotMatch(s.setCookie, /Domain=/i);
    const bad = await login(`${opAll}x`);
    assert.equal(bad.status, 303);
    assert.equal(bad.headers.location, '/console/?error=console_login_failed');
    assert.equal(bad.headers['set-cookie'], undefined);
    const foreign = await login(opAll, { origin: 'https://evil.example' });
    assert.equal(foreign.headers.location, '/console/?error=csrf_failed');
    // JSON login answers the code itself
    const j = await request(base, ca, 'POST', '/console/login', {
      headers: { 'content-type': 'application/json', origin },
      body: JSON.stringify({ token: 'eid_nope' }),
    });
    assert.deepEqual([j.status, j.body.error.code], [401, 'console_login_failed']);
    const audit = await api('GET', '/v1/admin/audit?limit=1000');
    const logins = audit.body.rows.filter((r: any) => r.event === 'console.login');
    assert.ok(logins.some((r: any) => r.actor === 'user:op-all' && r.outcome === 'ok' && r.details.via === 'token'));
    assert.ok(logins.some((r: any) => r.outcome === 'fail' && r.reason === 'console_login_failed'));
    assert.ok(!JSON.stringify(logins).includes(opAll), 'no token in the audit log');
  });

  await t.test('another login method starts a session with startSession', async () => {
    const r = await call('GET', '/console/test-login');
    assert.equal(r.status, 303);
    const cookie = String(r.headers['set-cookie']).split(';')[0]!;
    assert.match(String(r.headers['set-cookie']), /; Path=\/; Secure; HttpOnly; SameSite=Strict; /);
    const s = await call('GET', '/console/api/session', { cookie });
    assert.deepEqual(s.body.user, { name: 'sso-sam', role: 'viewer', zones: ['a'], via: 'oidc' });
    const denied = await call('POST', '/console/api/v1/admin/tokens', { cookie, csrf: s.body.csrf, body: { zone: 'a', owner: 'x' } });
    assert.deepEqual([denied.status, denied.body.error.code], [403, 'forbidden_role']);
    const audit = await api('GET', '/v1/admin/audit?user=sso-sam');
    assert.ok(audit.body.rows.some((x: any) => x.event === 'console.login' && x.details.via === 'oidc'));
  });

  await t.test('CSRF: missing, wrong token or foreign origin → 403 csrf_failed; with both it passes', async () => {
    const s = await session(opAll);
    const body = { zone: 'a', owner: 'csrf' };
    const none = await call('POST', '/console/api/v1/admin/tokens', { cookie: s.cookie, body });
    assert.deepEqual([none.status, none.body.error.code], [403, 'csrf_failed']);
    const wrong = await call('POST', '/console/api/v1/admin/tokens', {
      cookie: s.cookie,
      csrf: `${s.csrf.slice(0, -1)}${s.csrf.endsWith('A') ? 'B' : 'A'}`,
      body,
    });
    assert.deepEqual([wrong.status, wrong.body.error.code], [403, 'csrf_failed']);
    const foreign = await call('POST', '/console/api/v1/admin/tokens', {
      cookie: s.cookie,
      csrf: s.csrf,
      origin: 'https://evil.example',
      body,
    });
    assert.deepEqual([foreign.status, foreign.body.error.code], [403, 'csrf_failed']);
    const noOrigin = await call('POST', '/console/api/v1/admin/tokens', { cookie: s.cookie, csrf: s.csrf, origin: null, body });
    assert.deepEqual([noOrigin.status, noOrigin.body.error.code], [403, 'csrf_failed']);
    const ok = await call('POST', '/console/api/v1/admin/tokens', { cookie: s.cookie, csrf: s.csrf, body });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    const tokens = await api('GET', '/v1/admin/tokens');
    assert.equal(tokens.body.tokens.filter((x: any) => x.owner === 'csrf').length, 1, 'only the one with the token was made');
    assert.equal(tokens.body.tokens.find((x: any) => x.owner === 'csrf').createdBy, 'user:op-all');
    // a bearer token is not a console credential
    const bearer = await request(base, ca, 'GET', '/console/api/v1/admin/devices', { headers: { authorization: `Bearer ${opAll}` } });
    assert.deepEqual([bearer.status, bearer.body.error.code], [401, 'console_unauthenticated']);
  });

  // two software devices, one per zone
  const client = softClient(info.url, ca);
  const enrolled: Record<string, string> = {};
  for (const zone of ['a', 'b']) {
    const tok = await api('POST', '/v1/admin/tokens', { zone, owner: 'line', name: `gw-${zone}` });
    const dev = createSoftDevice();
    const r = await softEnroll(dev, softEk(), client, tok.body.token);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    enrolled[zone] = dev.deviceId!;
  }

  await t.test('the console mounts exactly the admin API’s routes', async () => {
    // "METHOD /path" of each route in printRoutes' tree (children print only their suffix)
    const admin = (tree: string, prefix: string) => {
      const out: string[] = [];
      const stack: string[] = [];
      for (const line of tree.split('\n')) {
        const m = /^([│ ]*)[├└]── (\S+)(?: \(([^)]*)\))?/.exec(line.replace(/\u00a0/g, ' '));
        if (!m) continue;
        const depth = m[1]!.length / 4;
        stack.length = depth;
        const full = (stack[depth - 1] ?? '') + m[2]!;
        stack[depth] = full;
        for (const verb of (m[3] ?? '').split(', ').filter((x) => x && x !== 'HEAD'))
          if (full.startsWith(prefix)) out.push(`${verb} ${full.slice(prefix.length)}`);
      }
      return out.sort();
    };
    const main = admin(server.app.printRoutes({ commonPrefix: false }), '/v1/admin');
    const viaConsole = admin(server.consoleApp!.printRoutes({ commonPrefix: false }), '/console/api/v1/admin');
    assert.ok(main.length > 30, `${main.length} admin routes`);
    assert.deepEqual(viaConsole, main);
  });

  await t.test('a viewer reads but is refused state-changing calls with forbidden_role', async () => {
    const s = await session(viewer);
    const list = await call('GET', '/console/api/v1/admin/devices', { cookie: s.cookie });
    assert.equal(list.status, 200);
    assert.equal(list.body.devices.length, 2);
    // search and posture filter on the server
    const ids = async (query: string) =>
      (await call('GET', `/console/api/v1/admin/devices?${query}`, { cookie: s.cookie })).body.devices.map((d: { id: string }) => d.id);
    assert.deepEqual(await ids('q=GW-B'), [enrolled.b], 'by name, ASCII case-insensitive');
    assert.deepEqual(await ids(`q=${enrolled.a!.slice(4, 12)}`), [enrolled.a]);
    assert.deepEqual(await ids('q=%25'), [], '% is a literal, not a wildcard');
    assert.deepEqual(await ids('q=gw_'), [], '_ is a literal, not a wildcard');
    assert.equal((await ids('posture=ok')).length, 2);
    assert.deepEqual(await ids('posture=quarantined'), []);
    assert.deepEqual(await ids('posture=baseline-window'), []);
    assert.deepEqual(await ids('posture=ok&status=revoked'), []);
    for (const [p, body] of [
      [`/devices/${enrolled.a}/revoke`, { reason: 'key-compromise' }],
      [`/devices/${enrolled.a}/retire`, {}],
      [`/devices/${enrolled.a}/control`, { type: 'renew-now' }],
      ['/tokens', { zone: 'a', owner: 'x' }],
    ] as const) {
      const r = await call('POST', `/console/api/v1/admin${p}`, { cookie: s.cookie, csrf: s.csrf, body });
      assert.deepEqual([r.status, r.body.error.code], [403, 'forbidden_role'], p);
    }
    const dev = await api('GET', `/v1/admin/devices/${enrolled.a}`);
    assert.equal(dev.body.device.status, 'active', 'nothing changed');
  });

  await t.test('live events: a zone-limited user hears only its zones', async () => {
    const a = await session(opA);
    const all = await session(opAll);
    const streamA = events(base, ca, a.cookie);
    const streamAll = events(base, ca, all.cookie);
    await streamA.until(() => streamA.ready, 'stream A ready');
    await streamAll.until(() => streamAll.ready, 'stream all ready');
    // zone b first, then zone a: in-order delivery means A's first event would be b's if unfiltered
    const rb = await call('POST', `/console/api/v1/admin/devices/${enrolled.b}/revoke`, {
      cookie: all.cookie,
      csrf: all.csrf,
      body: { reason: 'key-compromise' },
    });
    assert.equal(rb.status, 200, JSON.stringify(rb.body));
    const outside = await call('POST', `/console/api/v1/admin/devices/${enrolled.b}/retire`, { cookie: a.cookie, csrf: a.csrf, body: {} });
    assert.deepEqual([outside.status, outside.body.error.code], [403, 'forbidden_zone']);
    const ra = await call('POST', `/console/api/v1/admin/devices/${enrolled.a}/revoke`, {
      cookie: a.cookie,
      csrf: a.csrf,
      body: { reason: 'superseded' },
    });
    assert.equal(ra.status, 200, JSON.stringify(ra.body));
    await streamAll.until(() => streamAll.got.length >= 2, 'both revocations on the unscoped stream');
    await streamA.until(() => streamA.got.length >= 1, "zone a's revocation");
    assert.deepEqual(
      streamAll.got.map((e) => [e.kind, e.device.id, e.device.status]),
      [
        ['revoked', enrolled.b, 'revoked'],
        ['revoked', enrolled.a, 'revoked'],
      ],
    );
    assert.deepEqual(
      streamA.got.map((e) => [e.kind, e.device.id, e.device.zone]),
      [['revoked', enrolled.a, 'a']],
    );
    streamA.close();
    streamAll.close();
    const unauth = await call('GET', '/console/api/events');
    assert.deepEqual([unauth.status, unauth.body.error.code], [401, 'console_unauthenticated']);
  });

  await t.test('a disabled user and a rotated token end their sessions on the next request', async () => {
    const d = await session(dora);
    const r = await session(rita);
    assert.equal((await api('POST', '/v1/admin/users/dora/disable', {})).status, 200);
    assert.equal((await api('POST', '/v1/admin/users/rita/rotate-token', {})).status, 200);
    for (const s of [d, r]) {
      const x = await call('GET', '/console/api/v1/admin/devices', { cookie: s.cookie });
      assert.deepEqual([x.status, x.body.error.code], [401, 'console_session_ended']);
      const again = await call('GET', '/console/api/session', { cookie: s.cookie });
      assert.deepEqual([again.status, again.body.error.code], [401, 'console_unauthenticated'], 'the session is gone');
    }
  });

  await t.test('idle timeout (15 min) and absolute timeout (8 h) on the server clock', async () => {
    const idle = await session(opAll);
    clock.offset += 14 * 60_000;
    assert.equal((await call('GET', '/console/api/session', { cookie: idle.cookie })).status, 200, 'activity within 15 min');
    clock.offset += 15 * 60_000;
    const gone = await call('GET', '/console/api/session', { cookie: idle.cookie });
    assert.deepEqual([gone.status, gone.body.error.code], [401, 'console_unauthenticated']);
    assert.match(gone.body.error.message, /timed out/);

    const busy = await session(opAll);
    const start = clock.offset;
    // active every 14 minutes: alive until 8 h after the login, not a minute longer
    while (clock.offset - start + 14 * 60_000 < 8 * 3600_000) {
      clock.offset += 14 * 60_000;
      assert.equal((await call('GET', '/console/api/session', { cookie: busy.cookie })).status, 200);
    }
    clock.offset = start + 8 * 3600_000;
    const over = await call('GET', '/console/api/session', { cookie: busy.cookie });
    assert.deepEqual([over.status, over.body.error.code], [401, 'console_unauthenticated']);
  });

  await t.test('logout ends the session on the server and clears the cookie; it is audited', async () => {
    const s = await session(opAll);
    const noCsrf = await call('POST', '/console/logout', { cookie: s.cookie, body: {} });
    assert.deepEqual([noCsrf.status, noCsrf.body.error.code], [403, 'csrf_failed']);
    const out = await call('POST', '/console/logout', { cookie: s.cookie, csrf: s.csrf, body: {} });
    assert.equal(out.status, 200);
    assert.match(String(out.headers['set-cookie']), /^__Host-edgeid_console=; .*Max-Age=0/);
    const after = await call('GET', '/console/api/v1/admin/devices', { cookie: s.cookie });
    assert.deepEqual([after.status, after.body.error.code], [401, 'console_unauthenticated']);
    const audit = await api('GET', '/v1/admin/audit?limit=1000');
    assert.ok(audit.body.rows.some((r: any) => r.event === 'console.logout' && r.actor === 'user:op-all' && r.outcome === 'ok'));
    // newest first, paging back with `before` (the console's audit views)
    const newest = await api('GET', '/v1/admin/audit?order=desc&limit=5');
    const seqs = newest.body.rows.map((r: any) => r.seq as number);
    assert.deepEqual(
      seqs,
      [...seqs].sort((x, y) => y - x),
      'descending',
    );
    assert.equal(seqs[0], Math.max(...audit.body.rows.map((r: any) => r.seq as number), seqs[0]), 'starts at the newest row');
    const older = await api('GET', `/v1/admin/audit?order=desc&limit=5&before=${seqs.at(-1)}`);
    assert.equal(older.body.rows.length, 5);
    assert.equal(older.body.rows[0].seq, seqs.at(-1) - 1, 'the next page starts right before');
  });

  await t.test('a device going stale is a live event', async () => {
    const tok = await api('POST', '/v1/admin/tokens', { zone: 'a', owner: 'line', name: 'gw-quiet' });
    const dev = createSoftDevice();
    assert.equal((await softEnroll(dev, softEk(), client, tok.body.token)).status, 200);
    const s = await session(opA);
    const stream = events(base, ca, s.cookie);
    // once ready, the stream knows which devices are stale now; then 11 minutes pass without a renewal
    await stream.until(() => stream.ready, 'stream ready');
    assert.equal(stream.got.length, 0);
    clock.offset += 11 * 60_000;
    await stream.until(() => stream.got.length > 0, 'the stale transition');
    assert.deepEqual(
      stream.got.map((e) => [e.kind, e.device.id, e.device.stale]),
      [['stale', dev.deviceId, true]],
    );
    stream.close();
  });

  await t.test('login attempts are rate-limited per address', async () => {
    let limited = null;
    for (let i = 0; i < 45 && !limited; i++) {
      const r = await login('eid_wrong');
      if (r.headers.location === '/console/?error=rate_limited') limited = r;
    }
    assert.ok(limited, 'refused with rate_limited within the configured 40 per minute');
    assert.match(String(limited.headers['retry-after']), /^\d+$/);
    // even the right token waits
    assert.equal((await login(opAll)).headers.location, '/console/?error=rate_limited');
  });
});
