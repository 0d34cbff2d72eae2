import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';
import type { Server as HttpServer } from 'node:http';
import Fastify, {
  LogController,
  type FastifyHttpOptions,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify';
import rateLimit from '@fastify/rate-limit';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import * as W from '../../protocol/api.js';
import { ERRORS, EdgeidError, type ErrorCode } from '../../protocol/errors/index.js';
import { addressGroup } from '../services/address.js';
import type { ServerContext } from '../services/context.js';
import { createBackup } from '../backup/backup.js';
import { checkPassphrase } from '../backup/format.js';
import { auditRefusal, closeRefusalAggregator, exportAudit, verifyAudit } from '../services/audit.js';
import { toWellFormed } from '../store/audit-chain.js';
import { storageFailure } from '../files.js';
import {
  addBrokerMonitor,
  brokerCrlStatus,
  issueBrokerCertificate,
  listBrokerMonitors,
  reconcileBroker,
  reloadBrokerCrl,
  removeBrokerMonitor,
} from '../services/broker.js';
import { caStatus, regenerateCrl, rotateIssuingCa, rotateRoot } from '../services/ca.js';
import { approveBaseline, listDevices, retireDevice, revokeDevice, sendControl, showDevice } from '../services/devices.js';
import { addEkRoot, importEkAllow, listEkAllow, listEkRoots, removeEkAllow, removeEkRoot } from '../services/ek.js';
import { enrollFinish, enrollStart } from '../services/enroll.js';
import { renew, renewChallenge } from '../services/renew.js';
import { createToken, expireToken, listTokens } from '../services/tokens.js';
import { ROLES, roleAllows, userActor, type Role } from '../services/access.js';
import { acknowledgeAlert, listAlertDeliveries, listAlerts } from '../services/alerts.js';
import { authenticate, createUser, disableUser, identify, listUsers, rotateUserToken, setUserRole } from '../services/users.js';

export const BODY_LIMIT = 64 * 1024;
/** The whole request, headers and body, within 30 s. */
export const REQUEST_TIMEOUT_MS = 30_000;
/** A supplier manifest (POST /v1/admin/ek-allow), JSON-wrapped. */
export const EK_MANIFEST_BODY_LIMIT = 17 * 1024 * 1024;

/** Who an admin request acts for: a personal account, or a console session's principal. */
export interface AdminPrincipal {
  name: string;
  role: Role;
  zones: readonly string[] | null;
}

/**
 * The account a refused credential belonged to (a disabled or expired one, or a token rotated away
 * while the request's body arrived), so that the refusal's audit row names that person; the caller
 * held that person's credential, so naming it tells the caller nothing new.
 */
const refusedPeople = new WeakMap<object, AdminPrincipal>();
export function refusedAs<E extends object>(error: E, person: AdminPrincipal | null): E {
  if (person) refusedPeople.set(error, person);
  return error;
}

/** How the admin routes learn who calls (bearer token here; the console's session and CSRF token there). */
export interface AdminRoutesOptions {
  authenticate(req: FastifyRequest): Promise<AdminPrincipal>;
  /** Puts a new TLS key and certificate into every listener (after a CA rotation). */
  setTls(tls: { key: string; cert: string }): void;
}

export interface AppOptions {
  /** fastify `https` options; omitted for in-process tests with inject(). */
  https?: { key: string; cert: string };
  /** pino options, or false for no logging. */
  logger?: boolean | Record<string, unknown>;
  /** Also called with a new TLS key and certificate after a CA rotation (the console's listener). */
  onTls?: (tls: { key: string; cert: string }) => void;
}

function errorBody(code: ErrorCode, message: string, details?: Record<string, unknown>): W.ErrorBody {
  return { error: { code, message, ...(details && Object.keys(details).length > 0 ? { details } : {}) } };
}

/** Maps anything thrown in a request to an EdgeidError; only our own faults become 5xx. */
function classify(err: FastifyError | EdgeidError | Error): EdgeidError {
  if (err instanceof EdgeidError) return err;
  const storage = storageFailure(err);
  if (storage) return storage;
  const fe = err as FastifyError & { validationContext?: string };
  if (fe.validation) {
    const v = fe.validation[0];
    // the path and property name come from the caller's document: only a plain, short name is
    // repeated (in the answer and the audit row), anything else is replaced
    const where = `${fe.validationContext ?? 'body'}${safeName(v?.instancePath ?? '')}`;
    const extra = v?.params && 'additionalProperty' in v.params ? ` (${safeName(String(v.params.additionalProperty))})` : '';
    return new EdgeidError('bad_request', `${where} ${v?.message ?? 'is invalid'}${extra}`, { field: where });
  }
  switch (fe.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new EdgeidError('body_too_large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new EdgeidError('unsupported_media_type');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new EdgeidError('malformed_json');
  }
  if (fe.statusCode === 429) return new EdgeidError('rate_limited');
  if (err instanceof SyntaxError || (fe.statusCode === 400 && /JSON/i.test(err.message))) return new EdgeidError('malformed_json');
  if (fe.statusCode === 413) return new EdgeidError('body_too_large');
  if (fe.statusCode === 415) return new EdgeidError('unsupported_media_type');
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500)
    return new EdgeidError('bad_request', err.message.slice(0, 200));
  return new EdgeidError('internal_error');
}

/**
 * A fixed-window counter per source address (RFC 6585 429 with Retry-After): `take` answers 0
 * when the request may go on, else the seconds until the window ends. The table is bounded: when
 * it grows past its cap, finished windows are dropped, and if none are, the whole table resets.
 */
export class AddressLimiter {
  private readonly windows = new Map<string, { start: number; n: number }>();
  constructor(
    private readonly max: number,
    private readonly windowMs: number,
    private readonly now: () => number,
    private readonly cap = 100_000,
  ) {}

  /** Counts one request of `addr` (grouped: an IPv6 address by its /64); > 0 is the seconds to wait. */
  take(addr: string): number {
    const key = addressGroup(addr);
    const now = this.now();
    let w = this.windows.get(key);
    if (!w || now - w.start >= this.windowMs) {
      if (!w && this.windows.size >= this.cap) this.sweep(now);
      w = { start: now, n: 0 };
      // re-inserted: the map's order is the order windows started (oldest first)
      this.windows.delete(key);
      this.windows.set(key, w);
    }
    w.n++;
    return w.n > this.max ? Math.max(1, Math.ceil((w.start + this.windowMs - now) / 1000)) : 0;
  }

  /** Drops ended windows; when all are live, the oldest tenth — never everyone's counters at once. */
  private sweep(now: number): void {
    for (const [k, w] of this.windows) if (now - w.start >= this.windowMs) this.windows.delete(k);
    if (this.windows.size < this.cap) return;
    let drop = Math.ceil(this.cap / 10);
    for (const k of this.windows.keys()) {
      if (drop-- <= 0) break;
      this.windows.delete(k);
    }
  }
}

/** A name from the caller's document, repeated only when it is plain ASCII of at most 64 characters. */
function safeName(s: string): string {
  return /^[A-Za-z0-9_./-]{0,64}$/.test(s) ? s : '/<unprintable>';
}

/** The device id of a refused request, only when it has the shape of one (else null, never the raw value). */
function validDeviceId(body: unknown): string | null {
  if (!body || typeof body !== 'object') return null;
  const id = (body as Record<string, unknown>).deviceId;
  return typeof id === 'string' && DEVICE_ID.test(id) ? id : null;
}
const DEVICE_ID = new RegExp((W.DeviceId as { pattern?: string }).pattern ?? '^$');

/**
 * Refuses a request whose decoded body, query or path holds text that is not well-formed
 * Unicode (a lone surrogate, which JSON's \\u escapes can carry; a U+FFFD left by invalid
 * UTF-8 in a URL) or a NUL: no table stores such text, and nothing downstream must see it.
 */
function assertWellFormed(v: unknown, depth = 0): void {
  if (typeof v === 'string') {
    if (!isWellFormed(v)) throw new EdgeidError('text_not_well_formed');
    return;
  }
  if (!v || typeof v !== 'object' || depth > 32) return;
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    if (!isWellFormed(k)) throw new EdgeidError('text_not_well_formed');
    assertWellFormed(x, depth + 1);
  }
}
const isWellFormed = (s: string) => toWellFormed(s) === s && !s.includes('\u0000');

/** An admin API path, on the API itself or on the console's listener. */
const isAdminUrl = (url: string) => /^(\/console\/api)?\/v1\/admin(\/|$)/.test(url);

function routeEvent(req: FastifyRequest): string {
  // the route's template, never the caller's URL (an unmatched route has none); the console's
  // copy of the admin API is audited under the same names
  const url = (req.routeOptions.url ?? '/unknown').replace(/^\/console\/api(?=\/v1\/admin)/, '');
  if (url.startsWith('/v1/admin')) return `admin.http${url.slice('/v1/admin'.length).replace(/\/:id/g, '').replace(/\//g, '.')}`;
  return `http${url.replace(/^\/v1/, '').replace(/\//g, '.')}`;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Set when the request reached its service, whose audited action writes its audit row. */
    reachedService: boolean;
    /** Set once the admin bearer token was checked. */
    adminAuthenticated: boolean;
    /** The person the admin request acts for (set once its credentials were checked). */
    adminUser: AdminPrincipal | null;
    /** The disabled or expired account whose credential a refused admin request carried. */
    refusedUser: AdminPrincipal | null;
  }
  interface FastifyContextConfig {
    /** The least role an admin route needs (services/users.ts); every admin route declares one. */
    role?: Role;
  }
}

/** Who asks from where, for the service the request is handed to (which audits it from here on). */
function meta(req: FastifyRequest) {
  req.reachedService = true;
  return { ip: req.ip ?? null, requestId: req.id };
}

/**
 * Deny by default: every admin route declares the least role it needs (route config `role`); a
 * route without one (or with an unknown role) throws while the routes are registered, so the
 * server does not start.
 */
export function assertRoleDeclared(r: { method: string | string[]; url: string; config?: unknown }): void {
  const role = (r.config as { role?: unknown } | undefined)?.role;
  if (typeof role !== 'string' || !(ROLES as readonly string[]).includes(role)) {
    throw new Error(`admin route ${String(r.method)} ${r.url} declares no role (config.role: ${ROLES.join(' | ')})`);
  }
}

/** One response in this many is logged at info (the access log); all of them at debug. */
export const ACCESS_LOG_SAMPLE = 100;

/**
 * The HTTPS API: thin routes (decode, call the service, encode) over services/, one error
 * handler mapping EdgeidError codes to statuses through the registry.
 */
export async function buildApp(ctx: ServerContext, opts: AppOptions): Promise<FastifyInstance> {
  const perAddress = new AddressLimiter(ctx.config.rateLimit.perAddress.max, ctx.config.rateLimit.perAddress.window * 1000, ctx.now);
  const app = Fastify(apiServerOptions(ctx, opts, perAddress) as FastifyHttpOptions<HttpServer>).withTypeProvider<TypeBoxTypeProvider>();
  await installApiBasics(app as unknown as FastifyInstance, ctx, perAddress);
  const rl = ctx.config.rateLimit;
  const perIp = {
    rateLimit: { max: rl.enroll.max, timeWindow: rl.enroll.window * 1000, keyGenerator: (req: FastifyRequest) => addressGroup(req.ip) },
  };
  const perDevice = {
    rateLimit: {
      max: rl.renew.max,
      timeWindow: rl.renew.window * 1000,
      hook: 'preHandler' as const,
      // per source AND device: keyed on the (unauthenticated) device id alone, anyone could
      // exhaust a victim device's budget and keep it from renewing
      keyGenerator: (req: FastifyRequest) =>
        `device:${addressGroup(req.ip)}|${(req.body as { deviceId?: string } | undefined)?.deviceId ?? ''}`,
    },
  };

  // --- device API --------------------------------------------------------------------------
  app.post(
    '/v1/enroll/start',
    { schema: { body: W.EnrollStartRequest, response: { 200: W.EnrollStartResponse } }, config: perIp },
    async (req) => enrollStart(ctx, req.body, meta(req)),
  );
  app.post(
    '/v1/enroll/finish',
    { schema: { body: W.EnrollFinishRequest, response: { 200: W.EnrollFinishResponse } }, config: perIp },
    async (req) => enrollFinish(ctx, req.body, meta(req)),
  );
  app.post(
    '/v1/renew/challenge',
    { schema: { body: W.RenewChallengeRequest, response: { 200: W.RenewChallengeResponse } }, config: perDevice },
    async (req) => renewChallenge(ctx, req.body, meta(req)),
  );
  app.post('/v1/renew', { schema: { body: W.RenewRequest, response: { 200: W.RenewResponse } }, config: perDevice }, async (req) =>
    renew(ctx, req.body, meta(req)),
  );

  app.get('/v1/crl', { schema: { querystring: W.FormatQuery } }, async (req, reply) => {
    const crl = await ctx.crl.get();
    const q = req.query;
    const wantsPem = q.format === 'pem' || (q.format === undefined && /application\/x-pem-file|text\/plain/.test(req.headers.accept ?? ''));
    reply.header('cache-control', `max-age=${Math.max(0, Math.floor((crl.nextUpdate.getTime() - ctx.now()) / 2000))}`);
    if (wantsPem) return reply.type('application/x-pem-file').send(crl.pem);
    return reply.type('application/pkix-crl').send(crl.der);
  });

  // the CRL of a later issuing CA: the distribution point of the certificates it issued (ca.ts crlPath)
  app.get('/v1/crl/:issuer', { schema: { params: W.CrlIssuerParams, querystring: W.FormatQuery } }, async (req, reply) => {
    const crl = await ctx.crl.getFor(req.params.issuer);
    if (!crl) throw new EdgeidError('crl_issuer_unknown');
    const q = req.query;
    const wantsPem = q.format === 'pem' || (q.format === undefined && /application\/x-pem-file|text\/plain/.test(req.headers.accept ?? ''));
    reply.header('cache-control', `max-age=${Math.max(0, Math.floor((crl.nextUpdate.getTime() - ctx.now()) / 2000))}`);
    if (wantsPem) return reply.type('application/x-pem-file').send(crl.pem);
    return reply.type('application/pkix-crl').send(crl.der);
  });

  app.get('/v1/ca', { schema: { querystring: W.FormatQuery } }, async (req, reply) => {
    const q = req.query;
    if (q.format === 'der') return reply.type('application/pkix-cert').send(ctx.ca.rootDer);
    return reply.type('application/x-pem-file').send(ctx.ca.chainPem.join(''));
  });

  app.get('/healthz', { schema: { querystring: W.EmptyQuery, response: { 200: W.HealthResponse } } }, async () => ({
    status: 'ok',
    caFingerprint: ctx.ca.fingerprint,
  }));

  // allowed from the configured sources (default loopback) or with the admin bearer token
  const metricsAllow = ctx.config.metrics.allow.length > 0 ? ctx.config.metrics.allowList : null;
  const metricsAuth = async (req: FastifyRequest) => {
    const ip = req.ip ?? '';
    const family = isIP(ip) === 6 ? 'ipv6' : 'ipv4';
    if (metricsAllow && isIP(ip) && metricsAllow.check(ip, family)) return;
    if (req.headers.authorization) {
      const user = await authenticate(ctx, req.headers.authorization).catch(() => null);
      if (user?.role === 'admin') return;
    }
    throw new EdgeidError('metrics_unauthorized', `GET /metrics from ${isIP(ip) ? ip : 'this address'} needs the admin bearer token`);
  };
  app.get('/metrics', { schema: { querystring: W.EmptyQuery }, onRequest: metricsAuth }, async (_req, reply) => {
    reply.type(ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });

  // --- admin API ---------------------------------------------------------------------------
  const setTls = (tls: { key: string; cert: string }) => {
    // new TLS connections get the certificate from the new issuing CA (Node: tls.Server#setSecureContext)
    if ('setSecureContext' in app.server)
      (app.server as unknown as import('node:tls').Server).setSecureContext({ key: tls.key, cert: tls.cert });
    opts.onTls?.(tls);
  };
  await app.register(
    adminRoutes(ctx, {
      authenticate: async (req) => {
        const { user, error } = await identify(ctx, req.headers.authorization);
        if (error) throw refusedAs(error, user);
        return user;
      },
      setTls,
    }),
    { prefix: '/v1/admin' },
  );

  return app as unknown as FastifyInstance;
}

/** The fastify options of an API listener (the main one; the console's). */
export function apiServerOptions(ctx: ServerContext, opts: AppOptions, perAddress: AddressLimiter) {
  return {
    logger: opts.logger === undefined ? false : opts.logger,
    // TLS 1.2 or newer whatever the process's defaults (`--tls-min-v1.0`, NODE_OPTIONS): RFC 8996
    // deprecates TLS 1.0 and 1.1
    ...(opts.https ? { https: { key: opts.https.key, cert: opts.https.cert, minVersion: 'TLSv1.2' as const } } : {}),
    bodyLimit: BODY_LIMIT,
    // a request (headers and body) must arrive within this; a caller dripping its body one byte at
    // a time is answered 408 and closed (Node checks every connectionsCheckingInterval, 30 s)
    requestTimeout: REQUEST_TIMEOUT_MS,
    genReqId: () => randomUUID(),
    requestIdHeader: false as const,
    trustProxy: false,
    return503OnClosing: true,
    // Fastify's two lines per request (received, completed) are replaced by one line at debug and
    // a sampled access log at info (onResponse below)
    logController: new LogController({ disableRequestLogging: true }),
    // Ajv validates requests against the protocol/api.ts schemas (plain JSON Schema) without
    // coercion or defaults; responses are serialised from the same schemas
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false } },
    // a path whose percent-escapes are not UTF-8 (FST_ERR_BAD_URL) fails before any route or hook:
    // answered in the API's own error form, with a registered code
    // (and counted against the per-address limit like every other request)
    frameworkErrors: (err: FastifyError, req: FastifyRequest, reply: unknown) => {
      const r = reply as unknown as FastifyReply;
      const wait = perAddress.take(req.ip ?? '');
      const e =
        wait > 0
          ? errorBody('rate_limited', `more than ${ctx.config.rateLimit.perAddress.max} requests from this address`, { retryAfter: wait })
          : errorBody(
              'bad_request',
              err.code === 'FST_ERR_BAD_URL' ? 'the URL path is not valid (a percent-escape is not UTF-8)' : 'bad request',
            );
      if (wait > 0) r.header('retry-after', String(wait));
      void r
        .code(ERRORS[e.error.code as ErrorCode].status)
        .type('application/json; charset=utf-8')
        .send(e);
    },
  };
}

/**
 * What every API listener has: the per-address limit and connection cap, well-formed text, the
 * request id, the access log, the error handler (EdgeidError codes to statuses through the
 * registry, refusals audited), the not-found answer, and the rate-limit plugin.
 */
export async function installApiBasics(app: FastifyInstance, ctx: ServerContext, perAddress: AddressLimiter): Promise<void> {
  // at most connectionsPerAddress open connections per network: the per-address limit counts
  // requests, and a caller holding connections open would otherwise exhaust the process's files
  const open = new Map<string, number>();
  const maxOpen = ctx.config.rateLimit.connectionsPerAddress;
  app.server?.on('connection', (socket: import('node:net').Socket) => {
    const key = addressGroup(socket.remoteAddress);
    const n = (open.get(key) ?? 0) + 1;
    if (n > maxOpen) {
      socket.destroy();
      return;
    }
    open.set(key, n);
    socket.once('close', () => {
      const m = (open.get(key) ?? 1) - 1;
      if (m <= 0) open.delete(key);
      else open.set(key, m);
    });
  });

  // JSON only: anything else is unsupported_media_type before it reaches a schema
  app.removeContentTypeParser('text/plain');
  app.decorateRequest('reachedService', false);
  app.decorateRequest('adminAuthenticated', false);
  app.decorateRequest('adminUser', null);
  app.decorateRequest('refusedUser', null);

  // every route, per source address, before anything is parsed or validated
  app.addHook('onRequest', async (req) => {
    // at debug: a request's start, by route pattern (never the URL: it may hold a token)
    req.log.debug({ method: req.method, route: req.routeOptions.url ?? 'unknown' }, 'request received');
    const wait = perAddress.take(req.ip ?? '');
    if (wait > 0)
      throw new EdgeidError(
        'rate_limited',
        `more than ${ctx.config.rateLimit.perAddress.max} requests from this address in ${ctx.config.rateLimit.perAddress.window}s`,
        { retryAfter: wait },
      );
  });
  app.addHook('onClose', async () => {
    await closeRefusalAggregator(ctx);
  });

  app.addHook('preValidation', async (req) => {
    assertWellFormed(req.params);
    assertWellFormed(req.query);
    assertWellFormed(req.body);
  });
  app.addHook('onSend', async (req, reply) => {
    reply.header('x-request-id', req.id);
  });
  let responses = 0;
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unknown';
    ctx.metrics.latency.observe({ route, method: req.method, status: String(reply.statusCode) }, reply.elapsedTime / 1000);
    const line = { method: req.method, route, status: reply.statusCode, ms: Math.round(reply.elapsedTime) };
    // every ACCESS_LOG_SAMPLE-th response and every server error at info, all of them at debug
    if (reply.statusCode >= 500 || ++responses % ACCESS_LOG_SAMPLE === 0) req.log.info(line, 'request completed');
    else req.log.debug(line, 'request completed');
  });

  app.setErrorHandler(async (err: FastifyError, req, reply) => {
    const e = classify(err);
    const status = ERRORS[e.code].status;
    ctx.metrics.failures.inc({ code: e.code, route: req.routeOptions.url ?? 'unknown' });
    if (status >= 500) req.log.error({ err }, 'request failed');
    else req.log.info({ code: e.code }, 'request refused');
    // a request that reached its service was audited there (exactly one row per action); this
    // row is for refusals before that: validation, authentication, media type, size
    if (!req.reachedService) {
      try {
        // only validated values: the device id when it has a device id's shape, else null
        const deviceId = req.adminAuthenticated ? null : validDeviceId(req.body);
        await auditRefusal(ctx, {
          event: routeEvent(req),
          actor: (() => {
            const person = req.adminUser ?? req.refusedUser;
            return person ? userActor(person.name) : isAdminUrl(req.url) ? 'admin?' : 'anonymous';
          })(),
          role: (req.adminUser ?? req.refusedUser)?.role ?? null,
          ip: req.ip ?? null,
          deviceId,
          error: e,
          requestId: req.id,
          authenticated: req.adminAuthenticated,
        });
      } catch (auditErr) {
        req.log.error({ err: auditErr }, 'audit append failed');
      }
    }
    if (e.code === 'rate_limited' && e.details?.retryAfter !== undefined) reply.header('retry-after', String(e.details.retryAfter));
    return reply.status(status).send(errorBody(e.code, e.message, status >= 500 ? undefined : (e.details as Record<string, unknown>)));
  });

  app.setNotFoundHandler(async (req, reply) => {
    return reply.status(404).send(errorBody('not_found', `no route ${req.method} ${req.url.split('?')[0]}`));
  });

  await app.register(rateLimit, { global: false });
}

/**
 * Every admin route with the role it needs (deny by default), for a prefix the caller chooses:
 * `/v1/admin` with the bearer token, and the console's `/console/api/v1/admin` with its session.
 */
export function adminRoutes(ctx: ServerContext, auth: AdminRoutesOptions) {
  const rl = ctx.config.rateLimit;
  return async (plugin: FastifyInstance) => {
    const admin = plugin.withTypeProvider<TypeBoxTypeProvider>();
    // deny by default: an admin route that does not declare the role it needs fails the start
    admin.addHook('onRoute', assertRoleDeclared);
    const authorize = async (req: FastifyRequest) => {
      let user: AdminPrincipal;
      try {
        user = await auth.authenticate(req);
      } catch (e) {
        // at the second check, a refused credential belonged to the person of the first one
        req.refusedUser = (e !== null && typeof e === 'object' ? refusedPeople.get(e) : undefined) ?? req.adminUser;
        req.adminUser = null;
        req.adminAuthenticated = false;
        throw e;
      }
      req.adminUser = user;
      req.adminAuthenticated = true;
      const need = req.routeOptions.config.role!;
      if (!roleAllows(user.role, need)) {
        throw new EdgeidError('forbidden_role', `this needs the role ${need} or above; user ${user.name} is ${user.role}`, {
          role: user.role,
          needs: need,
        });
      }
    };
    // checked before the body is read (a refused caller sends no 16 MiB manifest), and again once
    // it has arrived: an account disabled, demoted or re-keyed while a request's body was still
    // coming in (up to REQUEST_TIMEOUT_MS) does not act through that request
    admin.addHook('onRequest', authorize);
    admin.addHook('preHandler', authorize);
    const who = (req: FastifyRequest) => ({
      ...meta(req),
      actor: userActor(req.adminUser!.name),
      role: req.adminUser!.role,
      zones: req.adminUser!.zones,
    });
    const adminLimit = { rateLimit: { max: rl.admin.max, timeWindow: rl.admin.window * 1000 } };

    admin.post(
      '/tokens',
      { config: { ...adminLimit, role: 'technician' }, schema: { body: W.TokenCreateRequest, response: { 200: W.TokenCreateResponse } } },
      async (req) => createToken(ctx, req.body, who(req)),
    );
    const page = (q: { limit?: string; after?: string }) => ({
      ...(q.limit ? { limit: Number(q.limit) } : {}),
      ...(q.after ? { after: q.after } : {}),
    });
    admin.get(
      '/tokens',
      { config: { role: 'technician' }, schema: { querystring: W.TokensQuery, response: { 200: W.TokenList } } },
      async (req) => listTokens(ctx, who(req), page(req.query)),
    );
    admin.post(
      '/tokens/:id/expire',
      {
        config: { role: 'technician' },
        schema: { params: W.TokenParams, body: W.EmptyBody, response: { 200: W.TokenExpireResponse } },
      },
      async (req) => expireToken(ctx, req.params.id, who(req)),
    );
    admin.get(
      '/devices',
      { config: { role: 'viewer' }, schema: { querystring: W.DevicesQuery, response: { 200: W.DeviceList } } },
      async (req) => {
        const q = req.query;
        return listDevices(
          ctx,
          {
            ...(q.status ? { status: q.status } : {}),
            ...(q.zone ? { zone: q.zone } : {}),
            ...(q.stale ? { stale: q.stale === 'true' } : {}),
            ...(q.q ? { search: q.q } : {}),
            ...(q.posture ? { posture: q.posture } : {}),
            ...(q.sort ? { sort: q.sort } : {}),
            ...(q.order ? { order: q.order } : {}),
            ...page(q),
          },
          who(req),
        );
      },
    );
    admin.get(
      '/devices/:id',
      { config: { role: 'viewer' }, schema: { params: W.DeviceParams, querystring: W.EmptyQuery, response: { 200: W.DeviceShow } } },
      async (req) => showDevice(ctx, req.params.id, who(req)),
    );
    admin.post(
      '/devices/:id/revoke',
      { config: { role: 'operator' }, schema: { params: W.DeviceParams, body: W.RevokeRequest, response: { 200: W.RevokeResponse } } },
      async (req) => revokeDevice(ctx, req.params.id, req.body.reason, who(req)),
    );
    admin.post(
      '/devices/:id/retire',
      { config: { role: 'operator' }, schema: { params: W.DeviceParams, body: W.EmptyBody, response: { 200: W.RetireResponse } } },
      async (req) => retireDevice(ctx, req.params.id, who(req)),
    );
    admin.post(
      '/devices/:id/approve-baseline',
      { config: { role: 'operator' }, schema: { params: W.DeviceParams, body: W.EmptyBody, response: { 200: W.DeviceShow } } },
      async (req) => approveBaseline(ctx, req.params.id, who(req)),
    );
    admin.post(
      '/devices/:id/control',
      { config: { role: 'operator' }, schema: { params: W.DeviceParams, body: W.ControlRequest, response: { 200: W.ControlResponse } } },
      async (req) => sendControl(ctx, req.params.id, req.body, who(req)),
    );
    admin.get(
      '/audit',
      { config: { role: 'viewer' }, schema: { querystring: W.AuditQuery, response: { 200: W.AuditExport } } },
      async (req) => {
        const q = req.query;
        return exportAudit(
          ctx,
          {
            ...(q.after ? { after: Number(q.after) } : {}),
            ...(q.before ? { before: Number(q.before) } : {}),
            ...(q.order === 'desc' ? { newestFirst: true } : {}),
            ...(q.limit ? { limit: Number(q.limit) } : {}),
            ...(q.deviceId ? { deviceId: q.deviceId } : {}),
            ...(q.user ? { user: q.user } : {}),
          },
          who(req),
        );
      },
    );
    // the backup file itself (binary); the passphrase is in the body, never in a URL or a log
    admin.post('/backup', { config: { role: 'admin' }, schema: { body: W.BackupRequest } }, async (req, reply) => {
      const file = await createBackup(ctx, checkPassphrase(req.body.passphrase), who(req));
      return reply.type('application/octet-stream').header('cache-control', 'no-store').send(file);
    });
    admin.get(
      '/ca/status',
      { config: { role: 'viewer' }, schema: { querystring: W.EmptyQuery, response: { 200: W.CaStatus } } },
      async (req) => caStatus(ctx, who(req)),
    );
    admin.post(
      '/ca/rotate-issuing',
      { config: { role: 'admin' }, schema: { body: W.EmptyBody, response: { 200: W.CaRotateResponse } } },
      async (req) => rotateIssuingCa(ctx, who(req), (tls) => auth.setTls(tls)),
    );
    admin.post(
      '/ca/rotate-root',
      { config: { role: 'admin' }, schema: { body: W.EmptyBody, response: { 200: W.CaRotateRootResponse } } },
      async (req) => rotateRoot(ctx, who(req), (tls) => auth.setTls(tls)),
    );
    admin.get(
      '/audit/verify',
      { config: { role: 'viewer' }, schema: { querystring: W.EmptyQuery, response: { 200: W.AuditVerifyResult } } },
      async (req) => verifyAudit(ctx, who(req)),
    );
    admin.post(
      '/crl/regenerate',
      { config: { role: 'admin' }, schema: { body: W.EmptyBody, response: { 200: W.CrlRegenerateResponse } } },
      async (req) => regenerateCrl(ctx, who(req)),
    );
    admin.post(
      '/broker/reconcile',
      { config: { role: 'admin' }, schema: { body: W.EmptyBody, response: { 200: W.BrokerReconcileResponse } } },
      async (req) => reconcileBroker(ctx, who(req)),
    );
    admin.get(
      '/broker/crl',
      { config: { role: 'admin' }, schema: { querystring: W.EmptyQuery, response: { 200: W.BrokerCrlStatus } } },
      async (req) => brokerCrlStatus(ctx, who(req)),
    );
    admin.post(
      '/broker/crl/reload',
      { config: { role: 'admin' }, schema: { body: W.EmptyBody, response: { 200: W.BrokerCrlStatus } } },
      async (req) => reloadBrokerCrl(ctx, who(req)),
    );
    admin.post(
      '/broker/certificate',
      { config: { role: 'admin' }, schema: { body: W.BrokerCertificateRequest, response: { 200: W.BrokerCertificateResponse } } },
      async (req) => issueBrokerCertificate(ctx, req.body, who(req)),
    );
    admin.post(
      '/broker/monitors',
      { config: { role: 'admin' }, schema: { body: W.BrokerMonitorAddRequest, response: { 200: W.BrokerMonitorAddResponse } } },
      async (req) => addBrokerMonitor(ctx, req.body, who(req)),
    );
    admin.get(
      '/broker/monitors',
      { config: { role: 'admin' }, schema: { querystring: W.EmptyQuery, response: { 200: W.BrokerMonitorList } } },
      async (req) => listBrokerMonitors(ctx, who(req)),
    );
    admin.post(
      '/broker/monitors/:name/remove',
      {
        config: { role: 'admin' },
        schema: { params: W.BrokerMonitorParams, body: W.EmptyBody, response: { 200: W.BrokerMonitorRemoveResponse } },
      },
      async (req) => removeBrokerMonitor(ctx, req.params.name, who(req)),
    );
    admin.post(
      '/users',
      { config: { role: 'admin' }, schema: { body: W.UserCreateRequest, response: { 200: W.UserTokenResponse } } },
      async (req) => createUser(ctx, req.body, who(req)),
    );
    admin.get('/users', { config: { role: 'admin' }, schema: { querystring: W.EmptyQuery, response: { 200: W.UserList } } }, async (req) =>
      listUsers(ctx, who(req)),
    );
    admin.post(
      '/users/:name/disable',
      { config: { role: 'admin' }, schema: { params: W.UserParams, body: W.EmptyBody, response: { 200: W.UserDisableResponse } } },
      async (req) => disableUser(ctx, req.params.name, who(req)),
    );
    admin.post(
      '/users/:name/set-role',
      {
        config: { role: 'admin' },
        schema: { params: W.UserParams, body: W.UserSetRoleRequest, response: { 200: W.UserDisableResponse } },
      },
      async (req) => setUserRole(ctx, req.params.name, req.body, who(req)),
    );
    admin.post(
      '/users/:name/rotate-token',
      { config: { role: 'admin' }, schema: { params: W.UserParams, body: W.EmptyBody, response: { 200: W.UserTokenResponse } } },
      async (req) => rotateUserToken(ctx, req.params.name, who(req)),
    );
    admin.get(
      '/alerts',
      { config: { role: 'viewer' }, schema: { querystring: W.AlertsQuery, response: { 200: W.AlertList } } },
      async (req) => {
        const q = req.query;
        return listAlerts(
          ctx,
          {
            ...(q.state ? { state: q.state } : {}),
            ...(q.deviceId ? { deviceId: q.deviceId } : {}),
            ...(q.rule ? { rule: q.rule } : {}),
            ...page(q),
          },
          who(req),
        );
      },
    );
    admin.post(
      '/alerts/:id/ack',
      { config: { role: 'operator' }, schema: { params: W.AlertParams, body: W.EmptyBody, response: { 200: W.Alert } } },
      async (req) => acknowledgeAlert(ctx, req.params.id, who(req)),
    );
    admin.get(
      '/alerts/deliveries',
      { config: { role: 'admin' }, schema: { querystring: W.AlertDeliveriesQuery, response: { 200: W.AlertDeliveryList } } },
      async (req) =>
        listAlertDeliveries(
          ctx,
          {
            ...(req.query.alertId ? { alertId: req.query.alertId } : {}),
            ...(req.query.limit ? { limit: Number(req.query.limit) } : {}),
          },
          who(req),
        ),
    );
    admin.get(
      '/ek-roots',
      { config: { role: 'admin' }, schema: { querystring: W.EmptyQuery, response: { 200: W.EkRootList } } },
      async (req) => listEkRoots(ctx, who(req)),
    );
    admin.post(
      '/ek-roots',
      { config: { role: 'admin' }, schema: { body: W.EkRootAddRequest, response: { 200: W.EkRootView } } },
      async (req) => addEkRoot(ctx, req.body, who(req)),
    );
    admin.post(
      '/ek-roots/:fingerprint/remove',
      { config: { role: 'admin' }, schema: { params: W.EkRootParams, body: W.EmptyBody, response: { 200: W.EkRootView } } },
      async (req) => removeEkRoot(ctx, req.params.fingerprint, who(req)),
    );
    admin.get(
      '/ek-allow',
      { config: { role: 'admin' }, schema: { querystring: W.EmptyQuery, response: { 200: W.EkAllowList } } },
      async (req) => listEkAllow(ctx, who(req)),
    );
    // a supplier manifest may list thousands of certificates: this route alone takes up to 16 MiB
    admin.post(
      '/ek-allow',
      {
        config: { role: 'admin' },
        bodyLimit: EK_MANIFEST_BODY_LIMIT,
        schema: { body: W.EkAllowImportRequest, response: { 200: W.EkAllowImportResponse } },
      },
      async (req) => importEkAllow(ctx, req.body, who(req)),
    );
    admin.post(
      '/ek-allow/:id/remove',
      { config: { role: 'admin' }, schema: { params: W.EkAllowParams, body: W.EmptyBody, response: { 200: W.EkAllowRemoveResponse } } },
      async (req) => removeEkAllow(ctx, req.params.id, who(req)),
    );
  };
}
