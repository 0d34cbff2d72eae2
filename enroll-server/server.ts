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
import { reconcileBroker } from './services/broker.js';
import { housekeeping } from './services/devices.js';
import { adoptBootstrapAdmin } from './services/users.js';
import { AlertEngine, openAlertsGauge } from './services/alerts.js';
import { applyRetention } from './services/retention.js';
import { Leadership } from './services/leader.js';
import { readWebhookSecret } from './services/alert-delivery.js';
import { PostgresStore } from './store/postgres.js';

export { DATA_FILES };

/** What edgeid-server writes to data/server.json once it listens. */
export interface ServerInfo {
  url: string;
  host: string;
  port: number;
  pid: number;
  caFingerprint: string;
  startedAt: string;
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
}

export interface EdgeidServer {
  app: FastifyInstance;
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
  const app = await buildApp(ctx, {
    ...(tls ? { https: ca.tls } : {}),
    logger: opts.logger ? false : { level: config.logLevel, base: { svc: 'edgeid-server' }, redact: ['req.headers.authorization'] },
  });

  let timer: NodeJS.Timeout | null = null;
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
      const info: ServerInfo = {
        url: ctx.publicUrl(),
        host: config.listen.host,
        port: addr.port,
        pid: process.pid,
        caFingerprint: ca.fingerprint,
        startedAt: new Date().toISOString(),
      };
      writeFileAtomic(join(config.dataDir, DATA_FILES.serverInfo), JSON.stringify(info, null, 2) + '\n', 0o600);
      return info;
    },
    async close() {
      await leadership?.close();
      if (timer) clearInterval(timer);
      await app.close();
      await ctx.alerts?.close();
      ctx.auditFeed.close();
      await ctx.broker?.close();
      await store.close();
    },
  };
}
