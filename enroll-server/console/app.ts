/**
 * The web console's HTTPS listener: the page and its bundle, login and logout, the admin API
 * again under /console/api/v1/admin (the same routes and role checks as /v1/admin, reached with
 * the session cookie and the CSRF token instead of a bearer token), and the live event stream.
 *
 * Browser protections (OWASP ASVS 4.0 V3, V13, V14): a strict Content-Security-Policy with no
 * inline script or style (CSP Level 3), X-Content-Type-Options nosniff, Referrer-Policy
 * no-referrer, Strict-Transport-Security (RFC 6797), frame-ancestors 'none'. A state-changing
 * request needs the session's CSRF token in X-CSRF-Token and an Origin of this listener (or
 * Sec-Fetch-Site: same-origin when a client sends no Origin).
 */
import { timingSafeEqual } from 'node:crypto';
import type { Server as HttpServer } from 'node:http';
import Fastify, { type FastifyHttpOptions, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { EdgeidError } from '../../protocol/errors/index.js';
import type { ConsoleConfig } from '../config.js';
import { AddressLimiter, adminRoutes, apiServerOptions, installApiBasics, type AdminPrincipal } from '../http/app.js';
import { userActor } from '../services/access.js';
import type { ServerContext } from '../services/context.js';
import { authenticate } from '../services/users.js';
import { consoleAssets } from './assets.js';
import { LiveEvents } from './live.js';
import { clearedSessionCookie, csrfMatches, SessionStore, sessionIdOf, startSession, type ConsoleSession } from './sessions.js';
import { createHash } from 'node:crypto';

export { startSession, type ConsolePrincipal } from './sessions.js';

export const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/** Every answer of the console's listener carries these. */
export const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': CSP,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'strict-transport-security': 'max-age=31536000',
  'x-frame-options': 'DENY',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
};

const INDEX_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgeid console</title>
<link rel="stylesheet" href="/console/assets/app.css">
<script type="module" src="/console/assets/app.js"></script>
</head>
<body><div id="app"></div><noscript>The edgeid console needs JavaScript.</noscript></body>
</html>
`;

export interface ConsoleAppOptions {
  https?: { key: string; cert: string };
  logger?: boolean | Record<string, unknown>;
  /** Puts a new TLS key and certificate into every listener (CA rotation from the console). */
  setTls: (tls: { key: string; cert: string }) => void;
  /** More routes on the console's listener (single sign-on login), registered after the console's own. */
  extend?: (app: FastifyInstance) => Promise<void>;
}

declare module 'fastify' {
  interface FastifyRequest {
    consoleSession: ConsoleSession | null;
  }
}

/** Live event streams one session may hold open at once (its browser's tabs). */
export const MAX_STREAMS_PER_SESSION = 4;
/** Bytes an event stream may have queued for a reader that does not read before it ends. */
const MAX_STREAM_BUFFER = 1 << 20;

const sha256 = (s: string) => createHash('sha256').update(s, 'utf8').digest();

export async function buildConsoleApp(ctx: ServerContext, cfg: ConsoleConfig, opts: ConsoleAppOptions): Promise<FastifyInstance> {
  const perAddress = new AddressLimiter(ctx.config.rateLimit.perAddress.max, ctx.config.rateLimit.perAddress.window * 1000, ctx.now);
  const app = Fastify(apiServerOptions(ctx, opts, perAddress) as FastifyHttpOptions<HttpServer>) as unknown as FastifyInstance;
  await installApiBasics(app, ctx, perAddress);
  const sessions = new SessionStore(ctx, cfg.idleTimeout * 1000, cfg.absoluteTimeout * 1000);
  app.decorate('consoleSessions', sessions);
  app.decorateRequest('consoleSession', null);
  const loginLimit = new AddressLimiter(cfg.loginLimit.max, cfg.loginLimit.window * 1000, ctx.now);
  const live = new LiveEvents(ctx, cfg.staleCheckInterval * 1000);
  app.addHook('onClose', async () => live.close());

  // the login form (application/x-www-form-urlencoded, WHATWG URL §5), only on this listener
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 4096 }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)));
  });
  app.addHook('onSend', async (_req, reply) => {
    reply.headers(SECURITY_HEADERS);
    if (!reply.hasHeader('cache-control')) reply.header('cache-control', 'no-store');
  });

  /** Refuses a state-changing request from another origin (Fetch Metadata; RFC 6454 Origin). */
  const checkOrigin = (req: FastifyRequest) => {
    const origin = req.headers.origin;
    const site = req.headers['sec-fetch-site'];
    const own = `https://${req.headers.host ?? ''}`;
    // under Referrer-Policy no-referrer a browser's form POST says `Origin: null`
    // (Fetch §3.1 "serializing a request origin"); its Sec-Fetch-Site, which pages cannot set, decides then
    const ok = origin !== undefined && origin !== 'null' ? origin === own : site === 'same-origin';
    if (!ok) throw new EdgeidError('csrf_failed', 'the request does not come from the console page (Origin / Sec-Fetch-Site)');
  };

  /** The request's live session (refreshed from its user's account), or 401. */
  const sessionOf = async (req: FastifyRequest, touch: boolean): Promise<{ session: ConsoleSession; key: string }> => {
    const r = sessions.get(sessionIdOf(req.headers.cookie), touch);
    if ('ended' in r)
      throw new EdgeidError('console_unauthenticated', r.ended === 'timeout' ? 'the console session timed out' : 'no console session');
    await refresh(r);
    req.consoleSession = r.session;
    return r;
  };
  /**
   * Checks a session against its user's account as it is now: a disabled, expired or rotated
   * account ends it (console_session_ended); a token session takes the account's current role and zones.
   */
  const refresh = async (r: { session: ConsoleSession; key: string }): Promise<void> => {
    const p = r.session.principal;
    const u = await ctx.store.getUser(p.name);
    const now = ctx.now();
    const gone = p.via === 'token' ? !u || !r.session.tokenHash || !timingSafeEqual(u.tokenHash, r.session.tokenHash) : u !== null; // a single sign-on whose name became a local account's (the sign-on refuses such names)
    if (gone || (u && (u.disabledAt !== null || (u.expiresAt !== null && u.expiresAt <= now)))) {
      sessions.delete(r.key);
      throw new EdgeidError('console_session_ended', `the console session of ${p.name} ended: the account changed since the login`);
    }
    // a change of role or zones applies from the next request on
    if (u && p.via === 'token') {
      p.role = u.role;
      p.zones = u.zones ? [...u.zones] : null;
    }
  };
  const stateChanging = (req: FastifyRequest) => req.method !== 'GET' && req.method !== 'HEAD';
  const checkCsrf = (req: FastifyRequest, s: ConsoleSession) => {
    checkOrigin(req);
    const h = req.headers['x-csrf-token'];
    if (!csrfMatches(s, typeof h === 'string' ? h : undefined))
      throw new EdgeidError('csrf_failed', h ? 'the X-CSRF-Token does not match the session' : 'no X-CSRF-Token');
  };

  // --- the page ------------------------------------------------------------------------------
  app.get('/', async (_req, reply) => reply.redirect('/console/', 302));
  app.get('/console', async (_req, reply) => reply.redirect('/console/', 302));
  app.get('/console/', async (_req, reply) => reply.type('text/html; charset=utf-8').send(INDEX_HTML));
  app.get('/console/assets/app.js', async (_req, reply) =>
    reply
      .type('text/javascript; charset=utf-8')
      .header('cache-control', 'no-cache')
      .send((await consoleAssets()).js),
  );
  app.get('/console/assets/app.css', async (_req, reply) =>
    reply
      .type('text/css; charset=utf-8')
      .header('cache-control', 'no-cache')
      .send((await consoleAssets()).css),
  );

  // --- login, session, logout ------------------------------------------------------------------
  const sso = Boolean((ctx.config as unknown as Record<string, unknown>).oidc);
  app.get('/console/api/login-options', async () => ({ sso }));

  app.post('/console/login', async (req, reply) => {
    const form = req.body && typeof req.body === 'object' ? (req.body as Record<string, unknown>) : {};
    const asJson = !String(req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded');
    const refuse = async (e: EdgeidError, user: string | null) => {
      await ctx.store.appendAudit({
        time: ctx.now(),
        actor: user ? userActor(user) : 'anonymous',
        event: 'console.login',
        ip: req.ip ?? null,
        outcome: 'fail',
        reason: e.code,
        details: null,
      });
      ctx.auditFeed.poke();
      req.reachedService = true;
      if (asJson) throw e;
      return reply.redirect(`/console/?error=${e.code}`, 303);
    };
    try {
      checkOrigin(req);
    } catch (e) {
      return refuse(e as EdgeidError, null);
    }
    const wait = loginLimit.take(req.ip ?? '');
    if (wait > 0) {
      reply.header('retry-after', String(wait));
      return refuse(
        new EdgeidError('rate_limited', `too many console logins from this address; wait ${wait}s`, { retryAfter: wait }),
        null,
      );
    }
    const token = typeof form.token === 'string' ? form.token.trim() : '';
    let user;
    try {
      user = await authenticate(ctx, `Bearer ${token}`);
    } catch (e) {
      const code = (e as EdgeidError).code;
      const named = code === 'user_disabled' || code === 'user_expired' ? String((e as EdgeidError).details?.user ?? '') : null;
      return refuse(new EdgeidError('console_login_failed', 'the token is not a valid personal token of an enabled user'), named || null);
    }
    // a login replaces whatever session the browser had (no session fixation)
    const old = sessions.get(sessionIdOf(req.headers.cookie), false);
    if ('key' in old) sessions.delete(old.key);
    await startSession(
      reply,
      { name: user.name, role: user.role, zones: user.zones ? [...user.zones] : null, via: 'token' },
      sha256(token),
    );
    req.reachedService = true;
    if (asJson) return { user: user.name, role: user.role };
    return reply.redirect('/console/', 303);
  });

  app.get('/console/api/session', async (req) => {
    const { session } = await sessionOf(req, true);
    const p = session.principal;
    return {
      user: { name: p.name, role: p.role, zones: p.zones, via: p.via },
      csrf: session.csrf,
      idleTimeout: cfg.idleTimeout,
      expiresAt: new Date(session.createdAt + cfg.absoluteTimeout * 1000).toISOString(),
      sso,
    };
  });

  app.post('/console/logout', async (req, reply) => {
    const { session, key } = await sessionOf(req, false);
    checkCsrf(req, session);
    sessions.delete(key);
    await ctx.store.appendAudit({
      time: ctx.now(),
      actor: userActor(session.principal.name),
      event: 'console.logout',
      ip: req.ip ?? null,
      outcome: 'ok',
      details: { via: session.principal.via },
    });
    ctx.auditFeed.poke();
    req.reachedService = true;
    return reply.header('set-cookie', clearedSessionCookie()).send({ ok: true });
  });

  // --- live events (server-sent events, WHATWG HTML §9.2) --------------------------------------
  // open streams end before the listener closes (a close waits for its connections)
  const streams = new Set<() => void>();
  /** Open streams per session (by its key), oldest first. */
  const bySession = new Map<string, (() => void)[]>();
  app.addHook('preClose', async () => {
    for (const end of [...streams]) end();
  });
  app.get('/console/api/events', async (req, reply) => {
    const r = await sessionOf(req, false);
    const { session, key } = r;
    req.reachedService = true;
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      ...SECURITY_HEADERS,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-request-id': req.id,
    });
    let ended = false;
    let beat: NodeJS.Timeout | undefined;
    let stop: (() => void) | null = null;
    function end() {
      if (ended) return;
      ended = true;
      if (beat) clearInterval(beat);
      stop?.();
      streams.delete(end);
      const mine = bySession.get(key);
      if (mine) {
        mine.splice(mine.indexOf(end) >>> 0, 1);
        if (mine.length === 0) bySession.delete(key);
      }
      res.end();
    }
    // a few streams per session (a browser's tabs); a further one ends the session's oldest
    const mine = bySession.get(key) ?? [];
    bySession.set(key, mine);
    mine.push(end);
    while (mine.length > MAX_STREAMS_PER_SESSION) mine[0]!();
    streams.add(end);
    req.raw.on('close', end);
    /** Writes unless the reader has fallen too far behind (then the stream ends; the page reconnects). */
    const send = (text: string) => {
      if (ended) return;
      if (res.writableLength > MAX_STREAM_BUFFER) return end();
      res.write(text);
    };
    /** The session still exists and its account has not changed in a way that ends it (disable, rotation, expiry). */
    const valid = async () => {
      if (!sessions.alive(key)) return false;
      try {
        await refresh(r);
        return true;
      } catch {
        return false;
      }
    };
    send('retry: 3000\n\n');
    // events are checked and written one after the other, in the feed's order
    let queue = Promise.resolve();
    stop = await live.subscribe((ev) => {
      queue = queue.then(async () => {
        if (ended) return;
        if (!(await valid())) return end();
        // the principal's zones as they are now (a narrowed account hears only its new zones)
        const zones = session.principal.zones;
        if (zones && !zones.includes(ev.device.zone)) return;
        send(`event: device\ndata: ${JSON.stringify(ev)}\n\n`);
      });
    });
    if (ended) stop();
    // the stream is live from here on (what happens after this line reaches the page)
    send('event: ready\ndata: {}\n\n');
    beat = setInterval(() => {
      queue = queue.then(async () => {
        if (!(await valid())) end();
        else send(': keep-alive\n\n');
      });
    }, 15_000);
    beat.unref();
  });

  // --- the admin API, session-authenticated ----------------------------------------------------
  await app.register(
    adminRoutes(ctx, {
      async authenticate(req): Promise<AdminPrincipal> {
        const { session } = await sessionOf(req, true);
        if (stateChanging(req)) checkCsrf(req, session);
        return session.principal;
      },
      setTls: opts.setTls,
    }),
    { prefix: '/console/api/v1/admin' },
  );
  if (opts.extend) await opts.extend(app);
  return app;
}

/** For tests and the lead's wiring: the reply type startSession takes. */
export type ConsoleReply = FastifyReply;
