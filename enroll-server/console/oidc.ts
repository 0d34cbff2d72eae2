/**
 * Console sign-on with OpenID Connect: edgeid is a relying party of the plant's identity provider
 * (OpenID Connect Core 1.0 §3.1, the authorization code flow) and turns the person the provider
 * vouches for into a console principal — a user name, a role and zones — through the claim
 * mapping of the server config's `oidc` section. The protocol work is openid-client's (discovery,
 * the authorization request, the callback's checks, the token request, the ID token's signature
 * and claims); this module keeps the login's secrets between the two halves and maps claims.
 *
 * One login:
 *  1. begin(): fresh state, nonce and PKCE code_verifier (RFC 7636, S256); the browser is sent
 *     to the provider's authorization endpoint and keeps the three sealed (AES-256-GCM under a
 *     key only this process has) in a short-lived HttpOnly cookie.
 *  2. complete(): the callback's state must equal the cookie's (the callback belongs to a login
 *     this browser started, RFC 6749 §10.12), the login must be younger than 10 minutes and not
 *     completed before (each state is spent once, before the token request); then openid-client
 *     checks the authorization response (state, RFC 9207 iss), redeems the code with the
 *     code_verifier, and validates the ID token (signature, iss, aud, exp, nonce).
 *  3. The claims (the ID token's, completed from the UserInfo endpoint when a mapped claim is not
 *     in it) give the name, the role and the zones; a person who maps to no role or no zone is
 *     refused.
 * Every failure is an EdgeidError with an oidc_* code; no code, token, secret or cookie is ever put
 * into a message or a log line.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import * as client from 'openid-client';
import { USER_ROLES, type UserRole } from '../../protocol/api.js';
import { ERRORS, EdgeidError } from '../../protocol/errors/index.js';
import type { OidcConfig } from '../config.js';
import { auditRefusal } from '../services/audit.js';
import type { ServerContext } from '../services/context.js';
import type { AuditInput } from '../store/store.js';
import { readCookie, seal, serializeCookie, unseal } from './oidc-cookie.js';

export type { OidcConfig } from '../config.js';

/** A person signed on through the identity provider, as the console's session holds it. */
export interface OidcPrincipal {
  name: string;
  role: UserRole;
  /** null: every zone (admins, or a zoneMap entry "*"). */
  zones: string[] | null;
  via: 'oidc';
  /** The provider's `sub` and `iss`: together the person's stable identity (OIDC Core §5.7). */
  subject: string;
  issuer: string;
}

/** How long a login may take from begin() to complete(): the login cookie's lifetime. */
export const LOGIN_TTL_MS = 10 * 60_000;
export const LOGIN_COOKIE = 'edgeid_oidc';
export const LOGIN_COOKIE_PATH = '/console/oidc';
/** The AAD of the login cookie's seal: a value sealed for anything else does not open as a login. */
export const SEAL_PURPOSE = 'edgeid console oidc login v1';
/** Same pattern as the admin API's user names (protocol/api.ts UserName). */
const USER_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

interface LoginState {
  state: string;
  nonce: string;
  verifier: string;
  /** Milliseconds since the epoch. */
  expires: number;
}

export interface OidcLoginOptions {
  /** The server's configured zone names (zone claims naming other zones are ignored). */
  zones: string[];
  /** 32-byte key sealing the login cookie; default a random key of this process (logins in flight end with it). */
  sealKey?: Uint8Array;
  env?: NodeJS.ProcessEnv;
  now?: () => number;
  /** Timeout of each request to the provider, seconds (default 10). */
  timeout?: number;
}

/**
 * The client secret: from a file only its owner may read or write (mode & 077 = 0, checked
 * before reading), or inline. Errors name the file, never its content.
 */
export function readClientSecret(cfg: OidcConfig): string {
  if ('value' in cfg.clientSecret) return cfg.clientSecret.value;
  const file = cfg.clientSecret.file;
  let mode: number;
  try {
    mode = statSync(file).mode;
  } catch (e) {
    throw new EdgeidError(
      'config_invalid',
      `config: oidc.clientSecretFile: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
      {
        field: 'oidc.clientSecretFile',
      },
    );
  }
  if ((mode & 0o077) !== 0)
    throw new EdgeidError(
      'config_invalid',
      `config: oidc.clientSecretFile: ${file} has mode ${(mode & 0o777).toString(8).padStart(4, '0')}: group and others must have no access (chmod 0600)`,
      { field: 'oidc.clientSecretFile' },
    );
  const secret = readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  if (!secret)
    throw new EdgeidError('config_invalid', `config: oidc.clientSecretFile: ${file} is empty`, { field: 'oidc.clientSecretFile' });
  return secret;
}

export class OidcLogin {
  private readonly secret: string;
  private readonly sealKey: Uint8Array;
  private readonly now: () => number;
  private readonly timeout: number;
  private readonly zones: string[];
  private discovered: Promise<client.Configuration> | null = null;
  /** States of completed (or attempted) logins until their cookie expires: each callback works once. */
  private readonly spent = new Map<string, number>();

  constructor(
    readonly config: OidcConfig,
    opts: OidcLoginOptions,
  ) {
    this.secret = readClientSecret(config);
    this.sealKey = opts.sealKey ?? randomBytes(32);
    if (this.sealKey.length !== 32) throw new TypeError('sealKey must be 32 bytes');
    this.now = opts.now ?? Date.now;
    this.timeout = opts.timeout ?? 10;
    this.zones = [...opts.zones];
  }

  /** The issuer this login trusts, as configured (an issuer without a path written without the URL's "/"). */
  get issuer(): string {
    const u = this.config.issuer;
    return u.pathname === '/' ? u.origin : u.href;
  }

  /** The provider's metadata (discovered once; a failed discovery is tried again on the next login). */
  private configuration(): Promise<client.Configuration> {
    if (!this.discovered) {
      const c = this.config;
      this.discovered = client
        .discovery(c.issuer, c.clientId, { client_secret: this.secret }, client.ClientSecretBasic(this.secret), {
          execute: c.allowInsecureIssuer ? [client.allowInsecureRequests] : [],
          timeout: this.timeout,
        })
        .catch((e: unknown) => {
          this.discovered = null;
          throw oidcFailure(e, 'discovery');
        });
    }
    return this.discovered;
  }

  /** Starts a login: where to send the browser, and the sealed value for the login cookie. */
  async begin(): Promise<{ redirectTo: string; cookie: string }> {
    const configuration = await this.configuration();
    const login: LoginState = {
      state: client.randomState(),
      nonce: client.randomNonce(),
      verifier: client.randomPKCECodeVerifier(),
      expires: this.now() + LOGIN_TTL_MS,
    };
    const url = client.buildAuthorizationUrl(configuration, {
      redirect_uri: this.config.redirectUri.href,
      scope: this.config.scopes,
      state: login.state,
      nonce: login.nonce,
      code_challenge: await client.calculatePKCECodeChallenge(login.verifier),
      code_challenge_method: 'S256',
    });
    return { redirectTo: url.href, cookie: seal(this.sealKey, SEAL_PURPOSE, login) };
  }

  /**
   * Completes a login from the callback's query (`callbackUrl`; only its query is read: the
   * redirect URI sent to the token endpoint is the configured one) and the login cookie's value.
   */
  async complete(callbackUrl: URL, cookie: string | null): Promise<OidcPrincipal> {
    const login = this.openLogin(cookie);
    if (callbackUrl.searchParams.get('state') !== login.state)
      throw new EdgeidError('oidc_state_mismatch', 'the callback state is not the one of this login');
    if (login.expires <= this.now()) throw new EdgeidError('oidc_login_expired');
    this.spend(login);

    const configuration = await this.configuration();
    const current = new URL(this.config.redirectUri.href);
    current.search = callbackUrl.search;
    let claims: Record<string, unknown>;
    try {
      const tokens = await client.authorizationCodeGrant(configuration, current, {
        pkceCodeVerifier: login.verifier,
        expectedState: login.state,
        expectedNonce: login.nonce,
        idTokenExpected: true,
      });
      const idToken = tokens.claims();
      if (!idToken) throw new EdgeidError('oidc_callback_invalid', 'the token response has no ID token');
      claims = { ...idToken };
      const wanted = [this.config.usernameClaim, this.config.roleClaim, this.config.zonesClaim].filter((c): c is string => c !== null);
      if (wanted.some((c) => claims[c] === undefined) && configuration.serverMetadata().userinfo_endpoint) {
        // claims asked for by scope are the UserInfo endpoint's (OIDC Core §5.4); its sub must be the ID token's
        const info = await client.fetchUserInfo(configuration, tokens.access_token, idToken.sub);
        claims = { ...info, ...idToken };
      }
    } catch (e) {
      throw oidcFailure(e, 'callback');
    }
    return this.principal(claims);
  }

  private openLogin(cookie: string | null): LoginState {
    const v = cookie ? unseal(this.sealKey, SEAL_PURPOSE, cookie) : null;
    if (v === null) throw new EdgeidError('oidc_state_mismatch', cookie ? 'the login cookie does not open' : 'no login cookie');
    const o = v as Partial<LoginState>;
    if (typeof o.state !== 'string' || typeof o.nonce !== 'string' || typeof o.verifier !== 'string' || typeof o.expires !== 'number')
      throw new EdgeidError('oidc_state_mismatch', 'the login cookie is not a login');
    return o as LoginState;
  }

  private spend(login: LoginState): void {
    const now = this.now();
    for (const [s, expires] of this.spent) if (expires <= now) this.spent.delete(s);
    if (this.spent.has(login.state)) throw new EdgeidError('oidc_callback_replayed');
    this.spent.set(login.state, login.expires);
  }

  /** The principal the claims map to (see OidcConfig), or oidc_login_refused naming what is missing. */
  principal(claims: Record<string, unknown>): OidcPrincipal {
    const c = this.config;
    const subject = String(claims.sub);
    const issuer = String(claims.iss);
    const refuse = (why: string, name?: string): never => {
      throw new EdgeidError('oidc_login_refused', why, { issuer, subject, ...(name ? { name } : {}) });
    };
    const rawName = claims[c.usernameClaim] ?? claims.sub;
    const name = typeof rawName === 'string' ? rawName.toLowerCase() : '';
    if (!USER_NAME.test(name))
      refuse(
        `claim ${claims[c.usernameClaim] === undefined ? 'sub' : c.usernameClaim} is not a user name (lower-case letters, digits, . _ -, at most 64)`,
      );
    let role: UserRole | null = null;
    const roleValues = claimValues(claims, c.roleClaim);
    for (const v of roleValues) {
      const r = Object.hasOwn(c.roleMap, v) ? c.roleMap[v]! : null;
      if (r && (role === null || USER_ROLES.indexOf(r) > USER_ROLES.indexOf(role))) role = r;
    }
    if (role === null) return refuse(`no value of claim ${c.roleClaim} is in oidc.roleMap`, name);
    if (role === 'admin') return { name, role, zones: null, via: 'oidc', subject, issuer };
    const zones = new Set<string>();
    let every = false;
    for (const v of c.zonesClaim ? claimValues(claims, c.zonesClaim) : roleValues) {
      const mapped = Object.hasOwn(c.zoneMap, v) ? c.zoneMap[v]! : c.zonesClaim && this.zones.includes(v) ? [v] : [];
      if (mapped === '*') every = true;
      else for (const z of mapped) zones.add(z);
    }
    if (!every && zones.size === 0)
      refuse(c.zonesClaim ? `no value of claim ${c.zonesClaim} names a zone` : `no value of claim ${c.roleClaim} is in oidc.zoneMap`, name);
    return { name, role, zones: every ? null : [...zones].sort(), via: 'oidc', subject, issuer };
  }
}

/** A claim's values: a string, or the strings of an array (e.g. groups). */
function claimValues(claims: Record<string, unknown>, name: string): string[] {
  const v = claims[name];
  if (typeof v === 'string') return [v];
  if (Array.isArray(v)) return v.filter((x): x is string => typeof x === 'string');
  return [];
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
]);

/**
 * The EdgeidError for what openid-client threw. Messages carry the library's check names (e.g.
 * `unexpected JWT claim value encountered`) and OAuth error codes (RFC 6749 §5.2), never the
 * provider's response bodies, codes or tokens.
 */
export function oidcFailure(e: unknown, stage: 'discovery' | 'callback'): EdgeidError {
  if (e instanceof EdgeidError) return e;
  if (e instanceof client.AuthorizationResponseError)
    return new EdgeidError('oidc_callback_invalid', `the provider answered the login with error=${safeToken(e.error)}`);
  if (e instanceof client.ResponseBodyError) {
    if (e.error === 'invalid_client' || e.error === 'unauthorized_client')
      return new EdgeidError('oidc_client_rejected', `the provider answered error=${e.error} (HTTP ${e.status})`);
    if (e.status >= 500) return new EdgeidError('oidc_provider_unreachable', `the provider failed (HTTP ${e.status})`);
    return new EdgeidError('oidc_callback_invalid', `the provider answered error=${safeToken(e.error)} (HTTP ${e.status})`);
  }
  if (e instanceof client.WWWAuthenticateChallengeError) {
    // RFC 6749 §5.2: a client that failed HTTP Basic authentication gets 401 with a WWW-Authenticate challenge
    const error = e.cause.map((c) => c.parameters.error).find((x) => typeof x === 'string');
    if (error === 'invalid_client' || (e.status === 401 && error === undefined))
      return new EdgeidError('oidc_client_rejected', `the provider answered error=invalid_client (HTTP ${e.status})`);
    return new EdgeidError(
      'oidc_callback_invalid',
      `the provider refused the request: error=${safeToken(error ?? 'none')} (HTTP ${e.status})`,
    );
  }
  const code = (e as { code?: unknown }).code;
  const network = networkCode(e);
  if (network || code === 'OAUTH_TIMEOUT' || code === 'OAUTH_ABORT')
    return new EdgeidError('oidc_provider_unreachable', `the provider did not answer (${network ?? String(code)})`);
  if (e instanceof client.ClientError) {
    const cause = e.cause instanceof Error && e.cause.message !== e.message ? `: ${e.cause.message}` : '';
    const text = `${e.message}${cause}`.slice(0, 200);
    if (code === 'OAUTH_HTTP_REQUEST_FORBIDDEN' || code === 'OAUTH_REQUEST_PROTOCOL_FORBIDDEN' || stage === 'discovery')
      return new EdgeidError('oidc_provider_invalid', `${stage}: ${text}`);
    return new EdgeidError('oidc_callback_invalid', text);
  }
  return new EdgeidError('internal_error', undefined, { cause: e instanceof Error ? e.name : typeof e });
}

function networkCode(e: unknown): string | null {
  for (let x: unknown = e, i = 0; x && i < 5; x = (x as { cause?: unknown }).cause, i++) {
    const code = (x as { code?: unknown }).code;
    if (typeof code === 'string' && (NETWORK_CODES.has(code) || code.startsWith('UND_ERR_'))) return code;
    // undici's fetch() rejects with TypeError('fetch failed') for every transport failure
    if (x instanceof TypeError && x.message === 'fetch failed') {
      const inner = (x.cause as { code?: unknown } | undefined)?.code;
      return typeof inner === 'string' ? inner : 'fetch failed';
    }
  }
  return null;
}

/** An OAuth error code as the provider sent it, if it looks like one (RFC 6749 §4.1.2.1: %x20-21 / %x23-5B / %x5D-7E). */
function safeToken(s: string): string {
  return /^[a-z0-9_.-]{1,64}$/i.test(s) ? s : 'unrecognized';
}

/** One audit row of an OIDC console login (event console.login). */
export interface OidcLoginAudit {
  row: AuditInput;
  /** False when nobody proved an identity (no ID token validated): the row may be aggregated like other anonymous refusals. */
  authenticated: boolean;
  /** The failure, for refusals. */
  error: EdgeidError | null;
  requestId: string;
}

/**
 * Writes an OIDC login's audit row: a sign-on and the refusal of a person the provider vouched
 * for are one row each; refusals before any identity (no or forged login cookie, a replayed
 * callback) are aggregated per source and minute like the admin API's anonymous refusals.
 */
export async function auditOidcLogin(ctx: ServerContext, e: OidcLoginAudit): Promise<void> {
  if (e.row.outcome === 'ok' || e.authenticated || !e.error) {
    await ctx.store.appendAudit(e.row);
    return;
  }
  await auditRefusal(ctx, {
    event: e.row.event,
    actor: e.row.actor,
    ip: e.row.ip ?? null,
    deviceId: null,
    error: e.error,
    requestId: e.requestId,
    authenticated: false,
  });
}

export interface OidcRouteDeps {
  login: OidcLogin;
  /** Starts the console session of `principal` (sets the session cookie on `reply`). */
  startSession(reply: FastifyReply, principal: OidcPrincipal, req: FastifyRequest): Promise<void>;
  /** Writes the login's audit row (success or refusal). */
  audit(entry: OidcLoginAudit): Promise<void>;
  /** Where the browser goes once signed on (default /console/). */
  landing?: string;
  now?: () => number;
}

const loginCookie = (value: string, maxAgeSeconds: number) =>
  serializeCookie(LOGIN_COOKIE, value, { path: LOGIN_COOKIE_PATH, maxAge: maxAgeSeconds, sameSite: 'Lax' });

/**
 * GET /console/oidc/login → 302 to the provider, with the sealed login cookie (HttpOnly, Secure,
 * SameSite=Lax: the provider's redirect back is a cross-site top-level GET, which Strict would
 * strip the cookie from; RFC 6265bis §8.8); GET /console/oidc/callback → the login completes, the
 * cookie is cleared, the session starts and the browser goes to the console. A failure answers
 * its code's status with `{"error": {"code", "message"}}` and is audited.
 */
export function registerOidcRoutes(app: FastifyInstance, deps: OidcRouteDeps): void {
  const now = deps.now ?? Date.now;
  const landing = deps.landing ?? '/console/';
  const fail = async (
    req: FastifyRequest,
    reply: FastifyReply,
    err: EdgeidError,
    authenticated: boolean,
    details: Record<string, unknown>,
    knownActor?: string,
  ) => {
    const status = ERRORS[err.code].status;
    if (status >= 500) req.log.error({ code: err.code, msg: err.message }, 'oidc login failed');
    else req.log.info({ code: err.code }, 'oidc login refused');
    const name = typeof err.details?.name === 'string' ? err.details.name : null;
    const actor = knownActor ?? (name ? `user:${name}` : 'anonymous');
    try {
      await deps.audit({
        row: {
          time: now(),
          actor,
          event: 'console.login',
          ip: req.ip ?? null,
          outcome: 'fail',
          reason: err.code,
          details: { via: 'oidc', issuer: deps.login.issuer, ...details, message: err.message.slice(0, 300) },
        },
        authenticated,
        error: err,
        requestId: req.id,
      });
    } catch (auditErr) {
      req.log.error({ err: auditErr }, 'audit append failed');
    }
    return reply
      .status(status)
      .header('cache-control', 'no-store')
      .header('referrer-policy', 'no-referrer')
      .header('set-cookie', loginCookie('', 0))
      .send({
        error: { code: err.code, message: status >= 500 && err.code === 'internal_error' ? ERRORS.internal_error.message : err.message },
      });
  };

  app.get(`${LOGIN_COOKIE_PATH}/login`, async (req, reply) => {
    try {
      const { redirectTo, cookie } = await deps.login.begin();
      return reply
        .header('cache-control', 'no-store')
        .header('set-cookie', loginCookie(cookie, LOGIN_TTL_MS / 1000))
        .redirect(redirectTo, 302);
    } catch (e) {
      return fail(req, reply, oidcFailure(e, 'discovery'), false, {});
    }
  });

  app.get(`${LOGIN_COOKIE_PATH}/callback`, async (req, reply) => {
    const query = req.url.indexOf('?') >= 0 ? req.url.slice(req.url.indexOf('?')) : '';
    let principal: OidcPrincipal;
    try {
      principal = await deps.login.complete(new URL(`http://callback/${query}`), readCookie(req.headers.cookie, LOGIN_COOKIE));
    } catch (e) {
      const err = oidcFailure(e, 'callback');
      // an identity the provider vouched for but the mapping refused: that person's row, not an anonymous one
      const subject = typeof err.details?.subject === 'string' ? err.details.subject : null;
      return fail(req, reply, err, subject !== null, subject ? { subject } : {});
    }
    const details = { via: 'oidc', issuer: principal.issuer, subject: principal.subject, role: principal.role, zones: principal.zones };
    const actor = `user:${principal.name}`;
    // the row first: no session starts that the audit log does not show (IEC 62443-3-3 SR 2.8)
    try {
      await deps.audit({
        row: { time: now(), actor, event: 'console.login', ip: req.ip ?? null, outcome: 'ok', details },
        authenticated: true,
        error: null,
        requestId: req.id,
      });
    } catch (e) {
      req.log.error({ err: e }, 'audit append failed');
      return fail(req, reply, new EdgeidError('internal_error'), true, details, actor);
    }
    try {
      await deps.startSession(reply, principal, req);
    } catch (e) {
      if (!(e instanceof EdgeidError)) req.log.error({ err: e }, 'console session did not start');
      return fail(req, reply, e instanceof EdgeidError ? e : new EdgeidError('internal_error'), true, details, actor);
    }
    // appended to the session cookie startSession set (fastify keeps every set-cookie header);
    // no Referer from the landing page can carry this URL's code (RFC 9700 §4.2.4)
    return reply
      .header('cache-control', 'no-store')
      .header('referrer-policy', 'no-referrer')
      .header('set-cookie', loginCookie('', 0))
      .redirect(landing, 302);
  });
}
