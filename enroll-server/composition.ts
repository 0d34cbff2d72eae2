/**
 * The composition root: builds the ServerContext the services run on (store, CA, metrics, CRL
 * service, broker integration, hooks) from a validated config. Services and the broker
 * integration do not know each other; they meet here.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import { EdgeidError } from '../protocol/errors/index.js';
import { createBrokerIntegration } from './broker/setup.js';
import { CertificateAuthority } from './ca/ca.js';
import { serverUrl, type ServerConfig } from './config.js';
import { ensurePrivateDir } from './files.js';
import type { EdgeidHooks } from './hooks.js';
import { createMetrics } from './metrics.js';
import type { ServerContext } from './services/context.js';
import { CrlService } from './services/crl.js';
import { backfillAkNames } from './services/devices.js';
import { SqliteStore } from './store/sqlite.js';

/** Files in the data dir other tools (edgeid-admin, the broker integration) rely on. */
export const DATA_FILES = {
  db: 'edgeid.db',
  adminToken: 'admin-token',
  serverInfo: 'server.json',
  caDir: 'ca',
  rootPem: join('ca', 'root.pem'),
  crlDer: 'crl.der',
  crlPem: 'crl.pem',
} as const;

export interface ComposeOptions {
  config: ServerConfig;
  hooks?: EdgeidHooks[];
  /** pino logger to use; default: a pino logger at config.logLevel on stdout. */
  logger?: Logger;
  /** Clock for tests. */
  now?: () => number;
  /** The port the server listens on, once known (for the public URL). */
  boundPort: () => number | undefined;
}

function loadPemBundle(path: string): Buffer[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new EdgeidError('config_invalid', `config: ek: cannot read ${path}: ${(e as Error).message}`);
  }
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  if (!blocks) {
    // a DER file
    try {
      return [Buffer.from(new X509Certificate(readFileSync(path)).raw)];
    } catch {
      throw new EdgeidError('config_invalid', `config: ek: ${path} holds no certificate`);
    }
  }
  return blocks.map((b) => Buffer.from(new X509Certificate(b).raw));
}

/** Opens the store (migrating it), the CA and the broker integration, and wires the hooks. */
export async function composeContext(opts: ComposeOptions): Promise<ServerContext> {
  const { config } = opts;
  ensurePrivateDir(config.dataDir);
  const log =
    opts.logger ??
    pino({ level: config.logLevel, base: { svc: 'edgeid-server' }, redact: ['req.headers.authorization', '*.token', '*.secret'] });
  const ekTrust =
    config.ek.roots.length > 0
      ? { roots: config.ek.roots.flatMap(loadPemBundle), intermediates: config.ek.intermediates.flatMap(loadPemBundle) }
      : null;
  if (!ekTrust) {
    log.warn(
      'no TPM manufacturer roots configured (ek.roots): EK certificates are not checked, so enrollment does not prove a real TPM. Set ek.roots and ek.requireEkCertificate for production',
    );
  }
  const store = new SqliteStore(join(config.dataDir, DATA_FILES.db));
  if (store.schema.from !== store.schema.to) log.info({ from: store.schema.from, to: store.schema.to }, 'database schema migrated');
  let ca: CertificateAuthority;
  try {
    ca = await CertificateAuthority.open({ dir: join(config.dataDir, DATA_FILES.caDir), hostnames: config.hostnames });
  } catch (e) {
    await store.close();
    throw e;
  }
  const now = opts.now ?? Date.now;
  const ctx = {
    config,
    store,
    ca,
    log,
    hooks: [...(opts.hooks ?? [])],
    now,
    publicUrl: () => serverUrl(config, opts.boundPort()),
    ekTrust,
    broker: null,
  } as unknown as ServerContext;
  ctx.metrics = createMetrics(() => store.countDevicesByStatus());
  ctx.crl = new CrlService(ctx);
  const named = await backfillAkNames(ctx);
  if (named > 0) log.info({ devices: named }, 'stored the AK names of devices enrolled before they were stored');
  if (config.broker) {
    const broker = await createBrokerIntegration({
      config: config.broker,
      ca,
      dataDir: config.dataDir,
      audit: async (row) => {
        await store.appendAudit({ time: now(), actor: 'server', ...row });
      },
      activeDeviceIds: async () => (await store.listDevices({ status: ['active', 'quarantined'] })).map((d) => d.id),
      log: log.child({ part: 'broker' }),
    });
    ctx.broker = broker;
    ctx.hooks.push(broker);
  }
  return ctx;
}
