import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { FastifyInstance } from 'fastify';
import { EdgeidError } from '../protocol/errors/index.js';
import type { ServerConfig } from './config.js';
import { composeContext, DATA_FILES } from './composition.js';
import type { ServerContext } from './services/context.js';
import { writeFileAtomic } from './files.js';
import type { EdgeidHooks } from './hooks.js';
import { buildApp } from './http/app.js';
import { buildConsoleApp } from './console/app.js';
import { reconcileBroker } from './services/broker.js';
import { housekeeping } from './services/devices.js';
import { adoptBootstrapAdmin } from './services/users.js';
import { AlertEngine, openAlertsGauge } from './services/alerts.js';
import { auditOidcLogin, OidcLogin, registerOidcRoutes } from './console/oidc.js';
import { startSession } from './console/sessions.js';
import type { OidcConfig } from './config.js';
import { applyRetention } from './services/retention.js';
import { Leadership } from './services/leader.js';
import { readWebhookSecret } from './services/alert-delivery.js';
import { PostgresStore } from './store/postgres.js';
import { setKeyCacheSize } from '../protocol/tpm/public.js';

export { DATA_FILES };

/** What edgeid-server writes to data/server.json once it listens. */
export interface ServerInfo {
  url: string;
  host: string;
  port: number;
  pid: number;
  caFingerprint: string;
  startedAt: string;
  /** The web console, when its listener is up: https://HOST:PORT/console/ */
  consoleUrl?: string;
}

export interface CreateServerOptions {
  config: ServerConfig;
  hooks?: EdgeidHooks[];
  /** pino logger to use; default: a pino logger at config.logLevel on stdout. */
  logger?: Logger;
  /** Serve HTTPS (default true). In-process tests may use plain inject() without TLS. */
  tls?: boolean;
  /** Clock for tests. */
  now?: () => number;
  /** Run housekeeping (auto-retire, CRL refresh) on a timer (default true once listening). */
  housekeeping?: boolean;
  /**
   * More routes on the console's listener (e.g. a single sign-on login, which ends in
   * console/sessions.ts startSession(reply, principal)); registered after the console's own.
   */
  consoleExtend?: (app: FastifyInstance, ctx: ServerContext) => Promise<void>;
}

export interface EdgeidServer {
  app: FastifyInstance;
  /** The web console's app on its own listener (null when config.console is null). */
  consoleApp: FastifyInstance | null;
  ctx: ServerContext;
  /** The admin token, only when this start created it (show it once). */
  createdAdminToken: string | null;
  listen(): Promise<ServerInfo>;
  close(): Promise<void>;
}

/** The admin token lives in data/admin-token (0600); the server keeps only its hash in memory. */
function loadOrCreateAdminToken(dataDir: string): { hash: Buffer; created: string | null } {
  const file = join(dataDir, DATA_FILES.adminToken);
  if (existsSync(file)) {
    const token = readFileSync(file, 'utf8').trim();
    if (!token) throw new EdgeidError('data_dir_unusable', `${file} is empty; delete it to create a new admin token`);
    return { hash: createHash('sha256').update(token).digest(), created: null };
  }
  const token = `adm_${randomBytes(32).toString('base64url')}`;
  writeFileAtomic(file, token + '\n', 0o600);
  return { hash: createHash('sha256').update(token).digest(), created: token };
}

/** Builds the whole server (store, CA, services, HTTP app) from a validated config. */
export async function createServer(opts: CreateServerOptions): Promise<EdgeidServer> {
  const { config } = opts;
  setKeyCacheSize(config.keyCacheSize);
  let boundPort: number | undefined;
  const ctx = await composeContext({
    config,
    ...(opts.hooks ? { hooks: opts.hooks } : {}),
    ...(opts.logger ? { logger: opts.logger } : {}),
    ...(opts.now ? { now: opts.now } : {}),
    boundPort: () => boundPort,
  });
  const { store, ca, log } = ctx;
  let admin: { hash: Buffer; created: string | null };
  try {
    admin = loadOrCreateAdminToken(config.dataDir);
    // the admin token is the bootstrap admin user (a data dir from before personal accounts too)
    await adoptBootstrapAdmin(ctx, admin.hash);
    // the alert rules follow the audit feed from their committed cursor (a bad webhook secret file
    // fails the start). On PostgreSQL they run on the leader only (services/leader.ts), started
    // when this instance becomes it; the secret file is checked here all the same.
    if (store instanceof PostgresStore) {
      if (config.alerts.webhook) readWebhookSecret(config.alerts.webhook.secretFile);
      openAlertsGauge(ctx);
    } else ctx.alerts = await AlertEngine.start(ctx, { periodic: opts.housekeeping ?? true });
  } catch (e) {
    ctx.auditFeed.close();
    await ctx.broker?.close();
    await store.close();
    throw e;
  }

  const tls = opts.tls ?? true;
  const logger = opts.logger ? false : { level: config.logLevel, base: { svc: 'edgeid-server' }, redact: ['req.headers.authorization'] };
  let consoleApp: FastifyInstance | null = null;
  const app = await buildApp(ctx, {
    ...(tls ? { https: ca.tls } : {}),
    logger,
    onTls: (t) => {
      if (consoleApp && 'setSecureContext' in consoleApp.server)
        (consoleApp.server as unknown as import('node:tls').Server).setSecureContext({ key: t.key, cert: t.cert });
    },
  });
  // the console: its own listener with the server's TLS certificate (enroll-server/console/)
  if (config.console) {
    const setTls = (t: { key: string; cert: string }) => {
      for (const a of [app, consoleApp])
        if (a && 'setSecureContext' in a.server)
          (a.server as unknown as import('node:tls').Server).setSecureContext({ key: t.key, cert: t.cert });
    };
    // single sign-on when the config has `oidc` (a test may extend the console its own way)
    const extend = opts.consoleExtend ?? (config.oidc ? oidcConsole(config.oidc, Object.keys(config.zones)) : undefined);
    consoleApp = await buildConsoleApp(ctx, config.console, {
      ...(tls ? { https: ca.tls } : {}),
      logger,
      setTls,
      ...(extend ? { extend: (a: FastifyInstance) => extend(a, ctx) } : {}),
    });
  }

  let timer: NodeJS.Timeout | null = null;
  let consoleUp = false;
  let leadership: Leadership | null = null;
  const periodic = opts.housekeeping ?? true;
  // the periodic work, on the one leader among the instances sharing the database
  const leaderWork = {
    async gain() {
      if (store instanceof PostgresStore && !ctx.alerts) ctx.alerts = await AlertEngine.start(ctx, { periodic });
      if (ctx.broker && config.broker?.reconcileOnStart) {
        // In the background: a broker that is down must not keep the server from starting (it
        // heals on the next reconcile; the failure is audited).
        void reconcileBroker(ctx, { actor: 'server', ip: null }).catch((e: unknown) =>
          log.warn({ err: (e as Error).message }, 'broker reconcile at start failed'),
        );
      }
      if (periodic && !timer) {
        timer = setInterval(() => {
          housekeeping(ctx)
            .then(() => applyRetention(ctx))
            .catch((e) => log.error({ err: e }, 'housekeeping failed'));
        }, config.housekeepingInterval * 1000);
        timer.unref();
      }
    },
    async lose() {
      if (timer) clearInterval(timer);
      timer = null;
      if (store instanceof PostgresStore && ctx.alerts) {
        const a = ctx.alerts;
        ctx.alerts = undefined;
        await a.close();
      }
    },
  };
  return {
    app,
    consoleApp,
    ctx,
    createdAdminToken: admin.created,
    async listen() {
      await app.listen({ host: config.listen.host, port: config.listen.port });
      const addr = app.server.address() as AddressInfo;
      boundPort = addr.port;
      await ctx.crl.get();
      leadership = await Leadership.start(
        ctx,
        store instanceof PostgresStore ? () => store.sessionClient() : null,
        leaderWork,
        config.leaderInterval * 1000,
      );
      let consoleUrl: string | undefined;
      if (consoleApp && config.console) {
        const c = config.console;
        try {
          await consoleApp.listen({ host: c.listen.host, port: c.listen.port });
          consoleUp = true;
          const port = (consoleApp.server.address() as AddressInfo).port;
          const host = c.listen.host === '0.0.0.0' || c.listen.host === '::' ? 'localhost' : c.listen.host;
          consoleUrl = `https://${host.includes(':') ? `[${host}]` : host}:${port}/console/`;
          log.info({ url: consoleUrl }, 'console listening');
        } catch (e) {
          // a configured address must work; the derived default (port + 1) may be taken
          if (!c.derived) throw e;
          log.warn(
            { err: (e as Error).message, port: c.listen.port },
            'console not started: its default address is taken (set console.listen)',
          );
        }
      }
      const info: ServerInfo = {
        url: ctx.publicUrl(),
        host: config.listen.host,
        port: addr.port,
        pid: process.pid,
        caFingerprint: ca.fingerprint,
        startedAt: new Date().toISOString(),
        ...(consoleUrl ? { consoleUrl } : {}),
      };
      writeFileAtomic(join(config.dataDir, DATA_FILES.serverInfo), JSON.stringify(info, null, 2) + '\n', 0o600);
      return info;
    },
    async close() {
      await leadership?.close();
      if (timer) clearInterval(timer);
      // a console app that never listened never booted: nothing to close (closing would boot it first)
      if (consoleApp && consoleUp) await consoleApp.close();
      await app.close();
      await ctx.alerts?.close();
      ctx.auditFeed.close();
      await ctx.broker?.close();
      await store.close();
    },
  };
}

/**
 * The console's OpenID Connect sign-on (console/oidc.ts): /console/oidc/login and /callback, the
 * session started for the person the provider vouched for, one audit row per sign-on (its own,
 * with issuer and subject). The client secret file is read here: a bad one stops the start.
 */
function oidcConsole(cfg: OidcConfig, zones: string[]) {
  const login = new OidcLogin(cfg, { zones });
  return async (app: FastifyInstance, ctx: ServerContext) => {
    registerOidcRoutes(app, {
      login,
      startSession: async (reply, principal) => {
        // a sign-on never acts as a local account: both would be the one actor user:NAME in the
        // audit log and own the same enrollment tokens (OIDC Core §5.7: only iss + sub identify a person)
        if (await ctx.store.getUser(principal.name))
          throw new EdgeidError(
            'oidc_login_refused',
            `the single sign-on name ${principal.name} is a local account's; the provider's users need other names (oidc.usernameClaim)`,
            { name: principal.name, subject: principal.subject },
          );
        await startSession(reply, principal, null, { audited: true });
      },
      audit: (e) => auditOidcLogin(ctx, e),
    });
  };
}
