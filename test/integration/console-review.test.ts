/**
 * The console's listener attacked from outside (real HTTPS, software devices): the live event
 * stream ends when its user's account is disabled and follows a narrowing of its zones, a session
 * holds a bounded number of streams and a user a bounded number of sessions, error answers and
 * 404s carry the security headers, no path redirects off the console, and cross-site requests a
 * plain HTML form can send (text/plain, Origin null) are refused with csrf_failed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { loadConfig } from '../../enroll-server/config.js';
import { createServer } from '../../enroll-server/server.js';
import { CSP, MAX_STREAMS_PER_SESSION } from '../../enroll-server/console/app.js';
import { MAX_SESSIONS_PER_USER } from '../../enroll-server/console/sessions.js';
import { request } from '../helpers/console.js';
import { withSwtpmEkRoots } from '../../scripts/harness/server.js';
import { createSoftDevice, softClient } from '../../scripts/harness/softdevice.js';
import { softEk, softEnroll } from '../../scripts/harness/softenroll.js';

/** An open event stream: device events so far, whether the server ended it, and a wait. */
function events(base: string, ca: string, cookie: string) {
  const got: any[] = [];
  const state = { ready: false, ended: false, status: 0 };
  const waiters: (() => void)[] = [];
  const wake = () => {
    for (const w of waiters.splice(0)) w();
  };
  let buf = '';
  const req = https.request(new URL('/console/api/events', base), { ca, headers: { cookie } }, (res) => {
    state.status = res.statusCode ?? 0;
    res.setEncoding('utf8');
    res.on('data', (c: string) => {
      buf += c;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (/^event: device$/m.test(block) && data) got.push(JSON.parse(data));
        if (/^event: ready$/m.test(block)) state.ready = true;
      }
      wake();
    });
    res.on('end', () => {
      state.ended = true;
      wake();
    });
    wake();
  });
  req.on('error', () => {
    state.ended = true;
    wake();
  });
  req.end();
  return {
    got,
    state,
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

test('console under attack: streams after account changes, stream and session bounds, headers, CSRF', { timeout: 120_000 }, async (t) => {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-console-review-'));
  t.after(() => rm(dataDir, { recursive: true, force: true }));
  const big = { max: 1_000_000, window: '1m' };
  const config = loadConfig({
    argv: ['--data', dataDir, '--listen', '127.0.0.1:0'],
    env: {},
    file: withSwtpmEkRoots({
      zones: { a: { requireEkCertificate: false }, b: { requireEkCertificate: false } },
      rateLimit: { perAddress: big, enroll: big, renew: big, admin: big },
      console: { listen: '127.0.0.1:0', loginLimit: { max: 1000, window: '1m' } },
    }),
  });
  const server = await createServer({ config, logger: pino({ level: 'silent' }), housekeeping: false });
  const info = await server.listen();
  t.after(() => server.close());
  const base = new URL(info.consoleUrl!).origin;
  const origin = base;
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
  const call = (method: string, p: string, o: { cookie?: string; csrf?: string; headers?: Record<string, string>; body?: unknown } = {}) =>
    request(base, ca, method, p, {
      headers: {
        origin,
        ...(o.cookie ? { cookie: o.cookie } : {}),
        ...(o.csrf ? { 'x-csrf-token': o.csrf } : {}),
        ...(o.body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...o.headers,
      },
      ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}),
    });
  const session = async (token: string) => {
    const r = await request(base, ca, 'POST', '/console/login', {
      headers: { 'content-type': 'application/x-www-form-urlencoded', origin },
      body: new URLSearchParams({ token }).toString(),
    });
    assert.equal(r.headers.location, '/console/', JSON.stringify(r.body));
    const cookie = String(r.headers['set-cookie']).split(';')[0]!;
    const s = await call('GET', '/console/api/session', { cookie });
    assert.equal(s.status, 200, JSON.stringify(s.body));
    return { cookie, csrf: s.body.csrf as string };
  };

  // devices to revoke, in both zones
  const client = softClient(info.url, ca);
  const devices: Record<string, string[]> = { a: [], b: [] };
  for (const zone of ['a', 'b', 'a', 'b', 'b']) {
    const tok = await api('POST', '/v1/admin/tokens', { zone, owner: 'line' });
    const dev = createSoftDevice();
    assert.equal((await softEnroll(dev, softEk(), client, tok.body.token)).status, 200);
    devices[zone]!.push(dev.deviceId!);
  }
  const revoke = async (id: string) =>
    assert.equal((await api('POST', `/v1/admin/devices/${id}/revoke`, { reason: 'superseded' })).status, 200);

  await t.test('a stream follows its account: narrowed zones are applied, a disabled account ends it', async () => {
    const nina = await addUser('nina', 'viewer');
    const s = await session(nina);
    const stream = events(base, ca, s.cookie);
    await stream.until(() => stream.state.ready, 'stream ready');
    // the account is narrowed to zone a while the stream is open; then zone b's device, then zone a's
    assert.equal((await api('POST', '/v1/admin/users/nina/set-role', { role: 'viewer', zones: ['a'] })).status, 200);
    await revoke(devices.b![0]!);
    await revoke(devices.a![0]!);
    await stream.until(() => stream.got.length >= 1, "zone a's revocation");
    assert.deepEqual(
      stream.got.map((e) => [e.kind, e.device.zone]),
      [['revoked', 'a']],
      'nothing of zone b after the narrowing',
    );
    // disabled: the next event ends the stream instead of reaching it
    assert.equal((await api('POST', '/v1/admin/users/nina/disable', {})).status, 200);
    await revoke(devices.a![1]!);
    await stream.until(() => stream.state.ended, 'the stream to end');
    assert.equal(stream.got.length, 1, 'no event after the account was disabled');
    const again = await call('GET', '/console/api/session', { cookie: s.cookie });
    assert.deepEqual([again.status, again.body.error.code], [401, 'console_unauthenticated'], 'and the session is gone');
  });

  await t.test('a sign-out in another tab ends the open stream at the next event', async () => {
    const s = await session(await addUser('tess', 'viewer'));
    const stream = events(base, ca, s.cookie);
    await stream.until(() => stream.state.ready, 'stream ready');
    const out = await call('POST', '/console/logout', { cookie: s.cookie, csrf: s.csrf, body: {} });
    assert.equal(out.status, 200);
    await revoke(devices.b![1]!);
    await stream.until(() => stream.state.ended, 'the stream to end');
    assert.equal(stream.got.length, 0, 'the revocation did not reach a signed-out session');
  });

  await t.test(`a session holds at most ${MAX_STREAMS_PER_SESSION} streams: a further one ends its oldest`, async () => {
    const s = await session(await addUser('sam', 'viewer'));
    const open: ReturnType<typeof events>[] = [];
    for (let i = 0; i <= MAX_STREAMS_PER_SESSION; i++) {
      const st = events(base, ca, s.cookie);
      await st.until(() => st.state.ready, `stream ${i} ready`);
      open.push(st);
    }
    await open[0]!.until(() => open[0]!.state.ended, 'the oldest stream to end');
    assert.deepEqual(
      open.map((x) => x.state.ended),
      [true, ...Array(MAX_STREAMS_PER_SESSION).fill(false)],
    );
    // the others still hear events
    await revoke(devices.b![2]!);
    for (const st of open.slice(1)) await st.until(() => st.got.length === 1, 'the revocation');
    for (const st of open) st.close();
  });

  await t.test(`a user holds at most ${MAX_SESSIONS_PER_USER} sessions; other users keep theirs`, async () => {
    const other = await session(await addUser('olga', 'viewer'));
    const tok = await addUser('mallory', 'viewer');
    // sessions' ids in login order; none is used in between (a request makes a session the most recent)
    const mine: { cookie: string; csrf: string }[] = [];
    for (let i = 0; i < MAX_SESSIONS_PER_USER + 1; i++) mine.push(await session(tok));
    const gone = await call('GET', '/console/api/session', { cookie: mine[0]!.cookie });
    assert.deepEqual([gone.status, gone.body.error?.code], [401, 'console_unauthenticated'], 'the 17th login ended the oldest');
    for (const s of mine.slice(1)) assert.equal((await call('GET', '/console/api/session', { cookie: s.cookie })).status, 200);
    assert.equal((await call('GET', '/console/api/session', { cookie: other.cookie })).status, 200, "another user's session stays");
  });

  await t.test('404s and refusals carry the CSP and frame headers; no path redirects off the console', async () => {
    for (const [p, status] of [
      ['/console/nope', 404],
      ['/console/api/session', 401],
      ['//evil.example/console/', 404],
      ['/console//evil.example', 404],
    ] as const) {
      const r = await call('GET', p);
      assert.equal(r.status, status, p);
      assert.equal(r.headers['content-security-policy'], CSP, p);
      assert.equal(r.headers['x-frame-options'], 'DENY', p);
      assert.equal(r.headers.location, undefined, p);
    }
  });

  await t.test('cross-site requests a plain form can send are refused with csrf_failed', async () => {
    const s = await session(await addUser('otto', 'operator'));
    // a form POST: text/plain, Origin null (no-referrer), Sec-Fetch-Site cross-site; the cookie is sent
    const form = await request(base, ca, 'POST', '/console/api/v1/admin/tokens', {
      headers: { cookie: s.cookie, origin: 'null', 'sec-fetch-site': 'cross-site', 'content-type': 'text/plain' },
      body: '{"zone":"a","owner":"x"}',
    });
    assert.deepEqual([form.status, form.body.error.code], [403, 'csrf_failed']);
    // a GET carrying a method override is still a GET
    const override = await call('GET', `/console/api/v1/admin/devices/${devices.a![0]}/retire`, {
      cookie: s.cookie,
      headers: { 'x-http-method-override': 'POST' },
    });
    assert.equal(override.status, 404);
    // login CSRF: a cross-site form logging the victim in as the attacker
    const login = await request(base, ca, 'POST', '/console/login', {
      headers: { 'content-type': 'application/x-www-form-urlencoded', origin: 'null', 'sec-fetch-site': 'cross-site' },
      body: new URLSearchParams({ token: adminToken }).toString(),
    });
    assert.deepEqual([login.status, login.headers.location, login.headers['set-cookie']], [303, '/console/?error=csrf_failed', undefined]);
    const tokens = await api('GET', '/v1/admin/tokens');
    assert.equal(tokens.body.tokens.filter((x: any) => x.owner === 'x').length, 0, 'nothing was made');
  });
});
