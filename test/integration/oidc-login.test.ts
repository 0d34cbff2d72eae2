/**
 * Console sign-on with OpenID Connect against a real provider: oidc-provider v9 runs in this
 * process on a loopback port (a static confidential client, accounts whose claims carry groups,
 * its development login and consent pages), and a fastify app registers the console's OIDC
 * routes. A scripted browser (fetch with manual redirects and a cookie jar) walks the whole
 * authorization code flow: the console's login redirect, the provider's login and consent forms,
 * the callback. Audit rows go to a real SQLite store. No env knobs: the file takes ~5 s alone.
 */
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { Provider, type Account } from 'oidc-provider';
import { pino } from 'pino';
import { loadConfig, type OidcConfig } from '../../enroll-server/config.js';
import {
  LOGIN_COOKIE,
  OidcLogin,
  SEAL_PURPOSE,
  auditOidcLogin,
  registerOidcRoutes,
  type OidcLoginAudit,
  type OidcPrincipal,
} from '../../enroll-server/console/oidc.js';
import { readCookie, seal, serializeCookie, unseal } from '../../enroll-server/console/oidc-cookie.js';
import type { ServerContext } from '../../enroll-server/services/context.js';
import { SqliteStore } from '../../enroll-server/store/sqlite.js';
import { EdgeidError, isEdgeidError } from '../../protocol/errors/index.js';
import { REPO, tmpDir } from '../../scripts/harness/fs.js';
import { freePort } from '../../scripts/harness/ports.js';
import { SESSION_COOKIE } from '../../enroll-server/console/sessions.js';
import { startInProcessServer } from '../helpers/server.js';

const CLIENT_ID = 'edgeid-console';
const CLIENT_SECRET = 'oidc-test-client-secret-3f9a1c7e5b2d';

/** The provider's people: their claims (scope "edgeid" releases groups and edgeid_zones). */
const ACCOUNTS: Record<string, Record<string, unknown>> = {
  olga: { preferred_username: 'olga', groups: ['plant-viewers', 'plant-a-operators'] },
  vic: { preferred_username: 'vic', groups: ['visitors'] },
  ada: { preferred_username: 'Ada', groups: ['edgeid-admins'] },
  tom: { preferred_username: 'tom', groups: ['plant-technicians'], edgeid_zones: ['hall-b', 'no-such-zone'] },
};

interface Provided {
  issuer: string;
  server: Server;
}

async function startProvider(redirectUri: string): Promise<Provided> {
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;
  const signing = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        redirect_uris: [redirectUri],
        grant_types: ['authorization_code'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    jwks: { keys: [{ ...signing, kid: 'test', use: 'sig', alg: 'RS256' }] },
    cookies: { keys: ['oidc-test-cookie-key-7d2f0b'] },
    claims: { openid: ['sub'], profile: ['preferred_username'], edgeid: ['groups', 'edgeid_zones'] },
    scopes: ['openid', 'profile', 'edgeid'],
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    findAccount: (_ctx: unknown, sub: string): Account | undefined =>
      ACCOUNTS[sub] ? { accountId: sub, claims: () => ({ sub, ...ACCOUNTS[sub] }) } : undefined,
  });
  const server = createServer(provider.callback());
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { issuer, server };
}

/** A browser as far as this flow needs one: cookies per origin, redirects followed by hand. */
class Browser {
  readonly jar = new Map<string, Map<string, string>>();

  cookie(origin: string, name: string): string | null {
    return this.jar.get(origin)?.get(name) ?? null;
  }

  setCookie(origin: string, name: string, value: string | null): void {
    const jar = this.jar.get(origin) ?? new Map<string, string>();
    this.jar.set(origin, jar);
    if (value === null) jar.delete(name);
    else jar.set(name, value);
  }

  async request(url: string, init: { method?: string; form?: Record<string, string> } = {}): Promise<Response> {
    const u = new URL(url);
    const jar = this.jar.get(u.origin) ?? new Map<string, string>();
    const headers: Record<string, string> = {};
    if (jar.size) headers.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    if (init.form) headers['content-type'] = 'application/x-www-form-urlencoded';
    const res = await fetch(u, {
      method: init.method ?? 'GET',
      headers,
      redirect: 'manual',
      ...(init.form ? { body: new URLSearchParams(init.form).toString() } : {}),
    });
    for (const line of res.headers.getSetCookie()) {
      const [pair = ''] = line.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const gone = /;\s*max-age=0\b/i.test(line) || /;\s*expires=Thu, 01 Jan 1970/i.test(line) || value === '';
      this.setCookie(u.origin, name, gone ? null : value);
    }
    return res;
  }
}

interface App {
  url: string;
  app: FastifyInstance;
  sessions: OidcPrincipal[];
  store: SqliteStore;
  logs: string[];
}

let provided: Provided;
let app: App;
let appPort: number;
let config: OidcConfig;
let login: OidcLogin;

function oidcSection(issuer: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    issuer,
    clientId: CLIENT_ID,
    clientSecret: CLIENT_SECRET,
    redirectUri: `http://127.0.0.1:${appPort}/console/oidc/callback`,
    scopes: 'openid profile edgeid',
    roleClaim: 'groups',
    roleMap: {
      'plant-viewers': 'viewer',
      'plant-technicians': 'technician',
      'plant-a-operators': 'operator',
      'edgeid-admins': 'admin',
    },
    zoneMap: { 'plant-viewers': ['hall-b'], 'plant-a-operators': ['hall-a'] },
    allowInsecureIssuer: true,
    ...extra,
  };
}

function parse(section: Record<string, unknown>): OidcConfig {
  const cfg = loadConfig({ file: { zones: { 'hall-a': {}, 'hall-b': {} }, oidc: section }, env: {} });
  return cfg.oidc!;
}

async function startApp(oidc: OidcLogin): Promise<App> {
  const dir = await tmpDir('edgeid-oidc-');
  const store = new SqliteStore(path.join(dir, 'edgeid.db'));
  const logs: string[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void logs.push(line) });
  const ctx = {
    store,
    now: Date.now,
    log: logger,
    config: loadConfig({ file: { zones: { 'hall-a': {}, 'hall-b': {} } }, env: {} }),
  } as unknown as ServerContext;
  // like edgeid-server's listeners: no request lines (their URLs would carry the callback's code)
  const fastify: FastifyInstance = Fastify({ loggerInstance: logger as FastifyBaseLogger, disableRequestLogging: true });
  const sessions: OidcPrincipal[] = [];
  registerOidcRoutes(fastify, {
    login: oidc,
    startSession: async (reply, principal) => {
      sessions.push(principal);
      reply.header(
        'set-cookie',
        serializeCookie('edgeid_session', `s${sessions.length}`, { path: '/console', maxAge: 3600, sameSite: 'Strict' }),
      );
    },
    audit: (e) => auditOidcLogin(ctx, e),
  });
  await fastify.listen({ port: appPort, host: '127.0.0.1' });
  return { url: `http://127.0.0.1:${appPort}`, app: fastify, sessions, store, logs };
}

/**
 * The browser signs on as `account`: the console's login redirect, the provider's login and
 * consent pages, up to (not including) the callback. Returns the callback URL.
 */
async function toCallback(b: Browser, account: string): Promise<string> {
  let res = await b.request(`${app.url}/console/oidc/login`);
  assert.equal(res.status, 302, await res.clone().text());
  let url = res.headers.get('location')!;
  for (let step = 0; step < 12; step++) {
    if (url.startsWith(`${app.url}/console/oidc/callback`)) return url;
    res = await b.request(url);
    if (res.status >= 300 && res.status < 400) {
      url = new URL(res.headers.get('location')!, url).href;
      continue;
    }
    assert.equal(res.status, 200, `provider page ${new URL(url).pathname}: ${res.status}`);
    const html = await res.text();
    const prompt = /name="prompt" value="(login|consent)"/.exec(html)?.[1];
    assert.ok(prompt, `a login or consent form at ${new URL(url).pathname}`);
    res = await b.request(url, { method: 'POST', form: prompt === 'login' ? { prompt, login: account, password: 'x' } : { prompt } });
    assert.ok(res.status >= 300 && res.status < 400, `form post answered ${res.status}`);
    url = new URL(res.headers.get('location')!, url).href;
  }
  throw new Error('no callback after 12 steps');
}

async function errorOf(res: Response): Promise<{ status: number; code: string; message: string }> {
  const body = (await res.json()) as { error: { code: string; message: string } };
  return { status: res.status, ...body.error };
}

before(async () => {
  appPort = await freePort();
  provided = await startProvider(`http://127.0.0.1:${appPort}/console/oidc/callback`);
  config = parse(oidcSection(provided.issuer));
  login = new OidcLogin(config, { zones: ['hall-a', 'hall-b'] });
  app = await startApp(login);
});

after(async () => {
  await app.app.close();
  await app.store.close();
  await new Promise<void>((resolve) => provided.server.close(() => resolve()));
  provided.server.closeAllConnections();
});

test('an operator signs on: role and zones from its groups, the session starts, the login cookie goes, one audit row', async () => {
  const b = new Browser();
  const callback = await toCallback(b, 'olga');
  const loginCookie = b.cookie(app.url, LOGIN_COOKIE);
  assert.ok(loginCookie, 'the login cookie is set during the login');
  const res = await b.request(callback);
  assert.equal(res.status, 302, await res.clone().text());
  assert.equal(res.headers.get('location'), '/console/');
  assert.equal(res.headers.get('referrer-policy'), 'no-referrer');
  assert.equal(res.headers.get('cache-control'), 'no-store');
  assert.deepEqual(app.sessions.at(-1), {
    name: 'olga',
    role: 'operator',
    zones: ['hall-a', 'hall-b'],
    via: 'oidc',
    subject: 'olga',
    issuer: provided.issuer,
  });
  assert.ok(b.cookie(app.url, 'edgeid_session'), 'the session cookie is set');
  assert.equal(b.cookie(app.url, LOGIN_COOKIE), null, 'the login cookie is cleared');
  const rows = (await app.store.listAudit()).filter((r) => r.event === 'console.login' && r.actor === 'user:olga');
  assert.equal(rows.length, 1);
  assert.equal(rows[0]!.outcome, 'ok');
  assert.deepEqual(rows[0]!.details, {
    via: 'oidc',
    issuer: provided.issuer,
    subject: 'olga',
    role: 'operator',
    zones: ['hall-a', 'hall-b'],
  });
  const code = new URL(callback).searchParams.get('code')!;
  const everything = JSON.stringify(await app.store.listAudit()) + app.logs.join('');
  for (const [what, secret] of [
    ['client secret', CLIENT_SECRET],
    ['authorization code', code],
    ['login cookie', loginCookie],
  ] as const) {
    assert.ok(!everything.includes(secret), `no ${what} in the audit log or the server log`);
  }
});

test('an admin gets every zone; a zones claim names zones directly, unknown ones ignored', async () => {
  const b = new Browser();
  assert.equal((await b.request(await toCallback(b, 'ada'))).status, 302);
  assert.deepEqual(app.sessions.at(-1), { name: 'ada', role: 'admin', zones: null, via: 'oidc', subject: 'ada', issuer: provided.issuer });

  const withZones = new OidcLogin(parse(oidcSection(provided.issuer, { zonesClaim: 'edgeid_zones' })), { zones: ['hall-a', 'hall-b'] });
  const p = withZones.principal({ iss: provided.issuer, sub: 'tom', ...ACCOUNTS.tom });
  assert.deepEqual(p, { name: 'tom', role: 'technician', zones: ['hall-b'], via: 'oidc', subject: 'tom', issuer: provided.issuer });
});

test('a person whose groups map to no role is refused (oidc_login_refused, 403) and the refusal is audited', async () => {
  const b = new Browser();
  const before = app.sessions.length;
  const res = await b.request(await toCallback(b, 'vic'));
  const e = await errorOf(res);
  assert.equal(e.status, 403);
  assert.equal(e.code, 'oidc_login_refused');
  assert.match(e.message, /groups/);
  assert.equal(app.sessions.length, before, 'no session');
  const rows = (await app.store.listAudit()).filter((r) => r.event === 'console.login' && r.actor === 'user:vic');
  assert.equal(rows.length, 1);
  assert.equal(rows[0]!.outcome, 'fail');
  assert.equal(rows[0]!.reason, 'oidc_login_refused');
  assert.equal((rows[0]!.details as Record<string, unknown>).subject, 'vic');
  assert.equal((rows[0]!.details as Record<string, unknown>).issuer, provided.issuer);
});

test('a callback without the login cookie, or with a forged one, is refused (oidc_state_mismatch) and spends nothing', async () => {
  const b = new Browser();
  const callback = await toCallback(b, 'olga');
  const sealed = b.cookie(app.url, LOGIN_COOKIE)!;
  const before = app.sessions.length;

  b.setCookie(app.url, LOGIN_COOKIE, null);
  let e = await errorOf(await b.request(callback));
  assert.deepEqual([e.status, e.code], [400, 'oidc_state_mismatch']);

  const flipped = sealed.slice(0, 20) + (sealed[20] === 'A' ? 'B' : 'A') + sealed.slice(21);
  b.setCookie(app.url, LOGIN_COOKIE, flipped);
  e = await errorOf(await b.request(callback));
  assert.deepEqual([e.status, e.code], [400, 'oidc_state_mismatch']);

  // another login's cookie (a valid seal, another state) does not fit this callback either
  const other = new Browser();
  await other.request(`${app.url}/console/oidc/login`);
  b.setCookie(app.url, LOGIN_COOKIE, other.cookie(app.url, LOGIN_COOKIE));
  e = await errorOf(await b.request(callback));
  assert.deepEqual([e.status, e.code], [400, 'oidc_state_mismatch']);
  assert.equal(app.sessions.length, before);

  // the refusals spent nothing: with its own cookie the callback still completes
  b.setCookie(app.url, LOGIN_COOKIE, sealed);
  assert.equal((await b.request(callback)).status, 302);
  assert.equal(app.sessions.length, before + 1);
});

test('a replayed callback is refused: with the login cookie (oidc_callback_replayed) and after it was cleared (oidc_state_mismatch)', async () => {
  const b = new Browser();
  const callback = await toCallback(b, 'olga');
  const sealed = b.cookie(app.url, LOGIN_COOKIE)!;
  assert.equal((await b.request(callback)).status, 302);
  const sessions = app.sessions.length;

  let e = await errorOf(await b.request(callback));
  assert.deepEqual([e.status, e.code], [400, 'oidc_state_mismatch'], 'the cookie was cleared');

  b.setCookie(app.url, LOGIN_COOKIE, sealed);
  e = await errorOf(await b.request(callback));
  assert.deepEqual([e.status, e.code], [400, 'oidc_callback_replayed']);

  // a second server process (no memory of spent states) sharing the seal key: the provider refuses the used code
  const key = Buffer.alloc(32, 7);
  const a1 = new OidcLogin(config, { zones: ['hall-a'], sealKey: key });
  const a2 = new OidcLogin(config, { zones: ['hall-a'], sealKey: key });
  const { redirectTo, cookie } = await a1.begin();
  const b2 = new Browser();
  b2.setCookie(app.url, LOGIN_COOKIE, cookie);
  const cb = await continueAt(b2, redirectTo, 'olga');
  assert.equal((await a1.complete(new URL(cb), cookie)).role, 'operator');
  await assert.rejects(a2.complete(new URL(cb), cookie), (err: unknown) => {
    assert.ok(isEdgeidError(err, 'oidc_callback_invalid'), String(err));
    assert.match(err.message, /invalid_grant/);
    return true;
  });
  assert.equal(app.sessions.length, sessions);
});

/** The provider half of a login begun outside the app: follows from `url` to the callback. */
async function continueAt(b: Browser, url: string, account: string): Promise<string> {
  for (let step = 0; step < 12; step++) {
    if (url.startsWith(`${app.url}/console/oidc/callback`)) return url;
    let res = await b.request(url);
    if (res.status >= 300 && res.status < 400) {
      url = new URL(res.headers.get('location')!, url).href;
      continue;
    }
    const prompt = /name="prompt" value="(login|consent)"/.exec(await res.text())?.[1];
    assert.ok(prompt);
    res = await b.request(url, { method: 'POST', form: prompt === 'login' ? { prompt, login: account, password: 'x' } : { prompt } });
    url = new URL(res.headers.get('location')!, url).href;
  }
  throw new Error('no callback after 12 steps');
}

test('the provider refusing the login (error=access_denied) → oidc_callback_invalid (400), audited, no session', async () => {
  const b = new Browser();
  const before = app.sessions.length;
  let res = await b.request(`${app.url}/console/oidc/login`);
  let url = res.headers.get('location')!;
  while (!/\/interaction\/[^/]+$/.test(new URL(url).pathname)) {
    res = await b.request(url);
    url = new URL(res.headers.get('location')!, url).href;
  }
  // the person cancels at the provider's login page
  res = await b.request(`${url}/abort`);
  url = new URL(res.headers.get('location')!, url).href;
  while (!url.startsWith(`${app.url}/console/oidc/callback`)) {
    res = await b.request(url);
    url = new URL(res.headers.get('location')!, url).href;
  }
  assert.equal(new URL(url).searchParams.get('error'), 'access_denied');
  const e = await errorOf(await b.request(url));
  assert.deepEqual([e.status, e.code], [400, 'oidc_callback_invalid']);
  assert.match(e.message, /error=access_denied/);
  assert.equal(app.sessions.length, before);
  const last = (await app.store.listAudit()).filter((r) => r.event === 'console.login').at(-1)!;
  assert.equal(last.reason, 'oidc_callback_invalid');
});

test('the nonce and the PKCE code_verifier are checked: a login cookie carrying others is refused (oidc_callback_invalid)', async () => {
  const key = Buffer.alloc(32, 9);
  const l = new OidcLogin(config, { zones: ['hall-a'], sealKey: key });
  for (const field of ['nonce', 'verifier'] as const) {
    const { redirectTo, cookie } = await l.begin();
    const cb = await continueAt(new Browser(), redirectTo, 'olga');
    const inside = unseal(key, SEAL_PURPOSE, cookie) as Record<string, unknown>;
    const other = (await l.begin()).cookie;
    const otherInside = unseal(key, SEAL_PURPOSE, other) as Record<string, unknown>;
    const mixed = seal(key, SEAL_PURPOSE, { ...inside, [field]: otherInside[field] });
    await assert.rejects(l.complete(new URL(cb), mixed), (err: unknown) => {
      assert.ok(isEdgeidError(err, 'oidc_callback_invalid'), `${field}: ${String(err)}`);
      assert.match(err.message, field === 'nonce' ? /nonce|claim/i : /invalid_grant/);
      return true;
    });
  }
  // a value sealed under the key for another purpose does not open as a login
  const { redirectTo, cookie } = await l.begin();
  const cb = await continueAt(new Browser(), redirectTo, 'olga');
  const resealed = seal(key, 'another purpose', unseal(key, SEAL_PURPOSE, cookie));
  await assert.rejects(l.complete(new URL(cb), resealed), (err: unknown) => isEdgeidError(err, 'oidc_state_mismatch'));
});

test("an issuer that is not the provider's own identifier → oidc_provider_invalid (502)", async () => {
  const port = new URL(provided.issuer).port;
  const l = new OidcLogin(parse(oidcSection(`http://localhost:${port}`)), { zones: ['hall-a'] });
  await assert.rejects(l.begin(), (err: unknown) => {
    assert.ok(isEdgeidError(err, 'oidc_provider_invalid'), String(err));
    assert.equal(err.status, 502);
    return true;
  });
});

test('no session starts without its audit row; a session the console refuses leaves a refusal row', async (t) => {
  const dir = await tmpDir('edgeid-oidc-closed-', t);
  const closed = new SqliteStore(path.join(dir, 'edgeid.db'));
  await closed.close();
  const ctx = {
    store: closed,
    now: Date.now,
    log: pino({ level: 'silent' }),
    config: loadConfig({ file: {}, env: {} }),
  } as unknown as ServerContext;
  const started: OidcPrincipal[] = [];
  const noAudit = Fastify();
  registerOidcRoutes(noAudit, { login, startSession: async (_r, p) => void started.push(p), audit: (e) => auditOidcLogin(ctx, e) });
  t.after(() => noAudit.close());
  let { redirectTo, cookie } = await login.begin();
  let cb = new URL(await continueAt(new Browser(), redirectTo, 'olga'));
  let res = await noAudit.inject({ method: 'GET', url: `${cb.pathname}${cb.search}`, headers: { cookie: `${LOGIN_COOKIE}=${cookie}` } });
  assert.equal(res.statusCode, 500);
  assert.equal(res.json().error.code, 'internal_error');
  assert.equal(started.length, 0, 'no session without the audit row');

  const rows: OidcLoginAudit[] = [];
  const refusing = Fastify();
  registerOidcRoutes(refusing, {
    login,
    startSession: async () => {
      throw new EdgeidError('user_disabled', 'user olga is disabled');
    },
    audit: async (e) => void rows.push(e),
  });
  t.after(() => refusing.close());
  ({ redirectTo, cookie } = await login.begin());
  cb = new URL(await continueAt(new Browser(), redirectTo, 'olga'));
  res = await refusing.inject({ method: 'GET', url: `${cb.pathname}${cb.search}`, headers: { cookie: `${LOGIN_COOKIE}=${cookie}` } });
  assert.equal(res.statusCode, 401);
  assert.equal(res.json().error.code, 'user_disabled');
  assert.deepEqual(
    rows.map((r) => [r.row.actor, r.row.outcome, r.row.reason ?? null]),
    [
      ['user:olga', 'ok', null],
      ['user:olga', 'fail', 'user_disabled'],
    ],
  );
});

test('a login older than 10 minutes is refused (oidc_login_expired)', async () => {
  let clock = Date.now();
  const l = new OidcLogin(config, { zones: ['hall-a'], now: () => clock });
  const { redirectTo, cookie } = await l.begin();
  const cb = await continueAt(new Browser(), redirectTo, 'olga');
  clock += 10 * 60_000 + 1;
  await assert.rejects(l.complete(new URL(cb), cookie), (err: unknown) => isEdgeidError(err, 'oidc_login_expired'));
});

test('a wrong client secret: the provider refuses the client (oidc_client_rejected), the secret is not in the answer', async () => {
  const wrong = 'not-the-client-secret-0000000000';
  const l = new OidcLogin(parse(oidcSection(provided.issuer, { clientSecret: wrong })), { zones: ['hall-a'] });
  const { redirectTo, cookie } = await l.begin();
  const cb = await continueAt(new Browser(), redirectTo, 'olga');
  await assert.rejects(l.complete(new URL(cb), cookie), (err: unknown) => {
    assert.ok(isEdgeidError(err, 'oidc_client_rejected'), String(err));
    assert.equal(err.status, 502);
    assert.match(err.message, /invalid_client/);
    assert.ok(!err.message.includes(wrong) && !err.message.includes(CLIENT_SECRET));
    return true;
  });
});

test('the provider down: the login answers oidc_provider_unreachable (502), and works again once it is up', async () => {
  const deadPort = await freePort();
  const downApp = Fastify();
  const l = new OidcLogin(parse(oidcSection(`http://127.0.0.1:${deadPort}`)), { zones: ['hall-a'] });
  registerOidcRoutes(downApp, { login: l, startSession: async () => undefined, audit: async () => undefined });
  const res = await downApp.inject({ method: 'GET', url: '/console/oidc/login' });
  assert.equal(res.statusCode, 502);
  assert.equal(res.json().error.code, 'oidc_provider_unreachable');
  await downApp.close();

  // the provider goes away between the login and the callback
  const p2 = await startProvider(`http://127.0.0.1:${appPort}/console/oidc/callback`);
  const l2 = new OidcLogin(parse(oidcSection(p2.issuer)), { zones: ['hall-a'] });
  const { redirectTo, cookie } = await l2.begin();
  const cb = await continueAt(new Browser(), redirectTo, 'olga');
  await new Promise<void>((resolve) => {
    p2.server.close(() => resolve());
    p2.server.closeAllConnections();
  });
  await assert.rejects(l2.complete(new URL(cb), cookie), (err: unknown) => isEdgeidError(err, 'oidc_provider_unreachable'));
});

test('config: missing clientId, http issuer without allowInsecureIssuer, a bad roleMap role, a zone not configured → config_invalid', () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ clientId: undefined }, /oidc\.clientId: must be a non-empty string/],
    [{ allowInsecureIssuer: undefined }, /oidc\.issuer: is http:\/\/: allowed only with "allowInsecureIssuer": true/],
    [{ issuer: 'http://idp.plant.example', allowInsecureIssuer: true }, /oidc\.issuer: must be an https:\/\/ URL/],
    [
      { roleMap: { 'plant-a-operators': 'superuser' } },
      /oidc\.roleMap\.plant-a-operators: must be a role: viewer, technician, operator, admin/,
    ],
    [{ roleMap: {} }, /oidc\.roleMap: must map at least one claim value/],
    [{ zoneMap: { 'plant-a-operators': ['hall-z'] } }, /oidc\.zoneMap\.plant-a-operators\.0: zone "hall-z" is not configured/],
    [{ clientSecretFile: '/x' }, /oidc: needs exactly one of clientSecretFile/],
    [{ redirectUri: 'https://console.plant.example/cb' }, /oidc\.redirectUri: must be the console's/],
    [{ scopes: 'profile email' }, /oidc\.scopes: must include openid/],
    [{ usernameClaim: 7 }, /oidc\.usernameClaim: must be a non-empty string/],
    [{ roleclaim: 'groups' }, /oidc\.roleclaim: unknown field/],
  ];
  for (const [change, message] of cases) {
    const section = oidcSection('http://127.0.0.1:9', change);
    for (const [k, v] of Object.entries(change)) if (v === undefined) delete section[k];
    assert.throws(
      () => parse(section),
      (err: unknown) => isEdgeidError(err, 'config_invalid') && message.test(err.message),
      `${JSON.stringify(change)} → ${message}`,
    );
  }
  const ok = parse({
    ...oidcSection('https://idp.plant.example/realms/plant'),
    redirectUri: 'https://edgeid.plant.example:8444/console/oidc/callback',
  });
  assert.equal(ok.scopes, 'openid profile edgeid');
  assert.equal(ok.usernameClaim, 'preferred_username');
  assert.equal(ok.zonesClaim, null);
  const proto = parse(oidcSection('http://127.0.0.1:9', { roleMap: JSON.parse('{"__proto__": "admin"}') as unknown }));
  assert.equal(Object.getPrototypeOf(proto.roleMap), Object.prototype, 'a claim value "__proto__" is a key, not a prototype');
  assert.equal(Object.hasOwn(proto.roleMap, '__proto__'), true);
  assert.equal(loadConfig({ file: {}, env: {} }).oidc, null);

  // the example in enroll-server/README.md parses (with its zone configured)
  const readme = readFileSync(path.join(REPO, 'enroll-server', 'README.md'), 'utf8');
  const example = [...readme.matchAll(/```json\n([\s\S]*?)```/g)]
    .filter((m) => m[1]!.trimStart().startsWith('{') && m[1]!.includes('"oidc"'))
    .map((m) => JSON.parse(m[1]!) as Record<string, unknown>)
    .find((c) => 'oidc' in c);
  assert.ok(example, 'the README has an oidc example');
  const documented = loadConfig({ file: { ...example, zones: { 'line-3': {} } }, env: {} }).oidc!;
  assert.equal(documented.roleMap['line-3-operators'], 'operator');
  assert.deepEqual(documented.clientSecret, { file: '/etc/edgeid/oidc-client-secret' });
});

test('config: the client secret file must be 0600', async (t) => {
  const dir = await tmpDir('edgeid-oidc-secret-', t);
  const file = path.join(dir, 'client-secret');
  await writeFile(file, `${CLIENT_SECRET}\n`, { mode: 0o644 });
  const section = { ...oidcSection(provided.issuer), clientSecret: undefined, clientSecretFile: file };
  delete section.clientSecret;
  const cfg = parse(section);
  assert.throws(
    () => new OidcLogin(cfg, { zones: [] }),
    (err: unknown) => isEdgeidError(err, 'config_invalid') && /mode 0644/.test(err.message) && !err.message.includes(CLIENT_SECRET),
  );
  await writeFile(file, `${CLIENT_SECRET}\n`, { mode: 0o600 });
  const { chmod } = await import('node:fs/promises');
  await chmod(file, 0o600);
  // the secret from the file works end to end
  const l = new OidcLogin(cfg, { zones: ['hall-a', 'hall-b'] });
  const { redirectTo, cookie } = await l.begin();
  const cb = await continueAt(new Browser(), redirectTo, 'olga');
  assert.equal((await l.complete(new URL(cb), cookie)).name, 'olga');
});

test('cookie helpers: reading one cookie of a header, refusing values outside cookie-octet', () => {
  assert.equal(readCookie('a=1; edgeid_oidc=xyz; b=2', 'edgeid_oidc'), 'xyz');
  assert.equal(readCookie('a=1;b=2', 'edgeid_oidc'), null);
  assert.equal(readCookie(undefined, 'edgeid_oidc'), null);
  assert.equal(readCookie('edgeid_oidc="q"', 'edgeid_oidc'), 'q');
  assert.equal(
    serializeCookie('n', 'v', { path: '/console/oidc', maxAge: 600, sameSite: 'Lax' }),
    'n=v; Path=/console/oidc; Max-Age=600; HttpOnly; Secure; SameSite=Lax',
  );
  assert.throws(() => serializeCookie('n', 'a;b', { path: '/', maxAge: 0, sameSite: 'Lax' }), TypeError);
});

test('through edgeid-server itself: a server whose config has oidc signs an operator on to its console, one audit row, and the session works', async (t) => {
  const consolePort = await freePort();
  const redirect = `http://127.0.0.1:${consolePort}/console/oidc/callback`;
  const idp = await startProvider(redirect);
  t.after(async () => {
    await new Promise<void>((resolve) => idp.server.close(() => resolve()));
    idp.server.closeAllConnections();
  });
  const srv = await startInProcessServer({
    zones: { 'hall-a': {}, 'hall-b': {} },
    console: { listen: `127.0.0.1:${consolePort}` },
    oidc: oidcSection(idp.issuer, { redirectUri: redirect }),
  });
  t.after(() => srv.close());
  const consoleApp = srv.server.consoleApp!;
  const cookieOf = (res: { headers: Record<string, unknown> }, name: string) => {
    const all = ([] as string[]).concat((res.headers['set-cookie'] as string | string[] | undefined) ?? []);
    const line = all.find((l) => l.startsWith(`${name}=`));
    return line ? line.slice(name.length + 1).split(';')[0]! : null;
  };

  const start = await consoleApp.inject({ method: 'GET', url: '/console/oidc/login' });
  assert.equal(start.statusCode, 302, start.body);
  const loginCookie = cookieOf(start, LOGIN_COOKIE);
  assert.ok(loginCookie);
  // the person at the provider: its login and consent pages, up to the redirect back to the console
  const b = new Browser();
  let url = start.headers.location as string;
  for (let step = 0; step < 12 && !url.startsWith(redirect); step++) {
    let res = await b.request(url);
    if (res.status === 200) {
      const prompt = /name="prompt" value="(login|consent)"/.exec(await res.text())?.[1];
      assert.ok(prompt);
      res = await b.request(url, { method: 'POST', form: prompt === 'login' ? { prompt, login: 'olga', password: 'x' } : { prompt } });
    }
    url = new URL(res.headers.get('location')!, url).href;
  }
  assert.ok(url.startsWith(redirect), url);
  const back = new URL(url);
  const done = await consoleApp.inject({
    method: 'GET',
    url: `${back.pathname}${back.search}`,
    headers: { cookie: `${LOGIN_COOKIE}=${loginCookie}` },
  });
  assert.equal(done.statusCode, 302, done.body);
  assert.equal(done.headers.location, '/console/');
  const session = cookieOf(done, SESSION_COOKIE);
  assert.ok(session, 'the console session cookie is set');
  const cookie = `${SESSION_COOKIE}=${session}`;
  const me = await consoleApp.inject({ method: 'GET', url: '/console/api/session', headers: { cookie } });
  assert.equal(me.statusCode, 200, me.body);
  assert.deepEqual(me.json().user, { name: 'olga', role: 'operator', zones: ['hall-a', 'hall-b'], via: 'oidc' });
  const devices = await consoleApp.inject({ method: 'GET', url: '/console/api/v1/admin/devices', headers: { cookie } });
  assert.equal(devices.statusCode, 200, devices.body);
  // an operator, not an admin: the users list is refused with its code
  const users = await consoleApp.inject({ method: 'GET', url: '/console/api/v1/admin/users', headers: { cookie } });
  assert.equal(users.statusCode, 403);
  assert.equal(users.json().error.code, 'forbidden_role');
  const rows = (await srv.server.ctx.store.listAudit()).filter((r) => r.event === 'console.login');
  assert.deepEqual(
    rows.map((r) => [
      r.actor,
      r.outcome,
      (r.details as { via?: string; subject?: string }).via,
      (r.details as { subject?: string }).subject,
    ]),
    [['user:olga', 'ok', 'oidc', 'olga']],
    'one row per sign-on, with the issuer and subject',
  );
});

test('a single sign-on never acts as a local account of the same name: refused (oidc_login_refused, 403), and a session ends when such an account appears', async (t) => {
  const consolePort = await freePort();
  const redirect = `http://127.0.0.1:${consolePort}/console/oidc/callback`;
  const idp = await startProvider(redirect);
  t.after(async () => {
    await new Promise<void>((resolve) => idp.server.close(() => resolve()));
    idp.server.closeAllConnections();
  });
  const srv = await startInProcessServer({
    zones: { 'hall-a': {}, 'hall-b': {} },
    console: { listen: `127.0.0.1:${consolePort}` },
    oidc: oidcSection(idp.issuer, { redirectUri: redirect }),
  });
  t.after(() => srv.close());
  const consoleApp = srv.server.consoleApp!;
  /** One sign-on of `login` at the provider, up to the console's answer to the callback. */
  const signOn = async (login: string) => {
    const start = await consoleApp.inject({ method: 'GET', url: '/console/oidc/login' });
    assert.equal(start.statusCode, 302, start.body);
    const loginCookie = /^edgeid_oidc=([^;]*)/.exec(([] as string[]).concat(start.headers['set-cookie'] ?? []).join('\n'))?.[1];
    assert.ok(loginCookie);
    // the person at the provider: its login and consent pages, up to the redirect back to the console
    const b = new Browser();
    let url = start.headers.location as string;
    for (let step = 0; step < 12 && !url.startsWith(redirect); step++) {
      let r = await b.request(url);
      if (r.status === 200) {
        const prompt = /name="prompt" value="(login|consent)"/.exec(await r.text())?.[1];
        assert.ok(prompt);
        r = await b.request(url, { method: 'POST', form: prompt === 'login' ? { prompt, login, password: 'x' } : { prompt } });
      }
      url = new URL(r.headers.get('location')!, url).href;
    }
    const back = new URL(url);
    const res = await consoleApp.inject({
      method: 'GET',
      url: `${back.pathname}${back.search}`,
      headers: { cookie: `${LOGIN_COOKIE}=${loginCookie}` },
    });
    const session = new RegExp(`^${SESSION_COOKIE}=([^;]+)`, 'm').exec(
      ([] as string[]).concat(res.headers['set-cookie'] ?? []).join('\n'),
    )?.[1];
    return { res, cookie: session ? `${SESSION_COOKIE}=${session}` : null };
  };
  const addLocal = async (name: string) => {
    const r = await srv.admin('POST', '/v1/admin/users', { name, role: 'viewer', zones: ['hall-a'] });
    assert.equal(r.status, 200, JSON.stringify(r.body));
  };

  // olga signs on; then an admin makes a local account named olga: her session ends at its next request
  const first = await signOn('olga');
  assert.equal(first.res.statusCode, 302, first.res.body);
  assert.ok(first.cookie);
  assert.equal(
    (await consoleApp.inject({ method: 'GET', url: '/console/api/session', headers: { cookie: first.cookie } })).statusCode,
    200,
  );
  await addLocal('olga');
  const ended = await consoleApp.inject({ method: 'GET', url: '/console/api/v1/admin/devices', headers: { cookie: first.cookie } });
  assert.deepEqual([ended.statusCode, ended.json().error.code], [401, 'console_session_ended']);

  // and a new sign-on as olga is refused: no session, a refusal row naming the provider's subject
  const again = await signOn('olga');
  assert.deepEqual([again.res.statusCode, again.res.json().error.code], [403, 'oidc_login_refused']);
  assert.equal(again.cookie, null, 'no session cookie');
  const rows = (await srv.server.ctx.store.listAudit()).filter((r) => r.event === 'console.login' && r.outcome === 'fail');
  assert.deepEqual(
    rows.map((r) => [r.actor, r.reason, (r.details as { subject?: string }).subject]),
    [['user:olga', 'oidc_login_refused', 'olga']],
  );
});
