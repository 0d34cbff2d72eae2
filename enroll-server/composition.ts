/**
 * The composition root: builds the ServerContext the services run on (store, CA, metrics, CRL
 * service, broker integration, hooks) from a validated config. Services and the broker
 * integration do not know each other; they meet here.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import { Gauge } from 'prom-client';
import { EdgeidError } from '../protocol/errors/index.js';
import { createBrokerIntegration } from './broker/setup.js';
import { CertificateAuthority } from './ca/ca.js';
import { AuditFeed } from './services/audit-feed.js';
import { closeIssuerSigner, openIssuerSigner, type CaSigner } from './ca/keys.js';
import { serverUrl, type ServerConfig, type StoreConfig } from './config.js';
import { ensurePrivateDir } from './files.js';
import type { EdgeidHooks } from './hooks.js';
import { createMetrics } from './metrics.js';
import type { ServerContext } from './services/context.js';
import { brokerHooks } from './services/broker.js';
import { CrlService } from './services/crl.js';
import { registerCaMetrics } from './services/ca.js';
import { backfillAkNames } from './services/devices.js';
import { reloadEkTrust } from './services/ek.js';
import { PostgresStore } from './store/postgres.js';
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

/**
 * The PostgreSQL password: from a file only its owner may read or write (st_mode & 077 == 0), or
 * from the named variable; null leaves it to libpq's conventions (PGPASSWORD, ~/.pgpass), which
 * node-postgres follows. Never logged.
 */
export function readStorePassword(p: Extract<StoreConfig, { kind: 'postgres' }>['password'], env: NodeJS.ProcessEnv): string | undefined {
  if (p === null) return undefined;
  if ('env' in p) {
    const v = env[p.env];
    if (!v)
      throw new EdgeidError('config_invalid', `config: store.passwordEnv: the variable ${p.env} is not set`, {
        field: 'store.passwordEnv',
      });
    return v;
  }
  let mode: number;
  try {
    mode = statSync(p.file).mode;
  } catch (e) {
    throw new EdgeidError(
      'config_invalid',
      `config: store.passwordFile: cannot read ${p.file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
      {
        field: 'store.passwordFile',
      },
    );
  }
  if ((mode & 0o170000) !== 0o100000)
    throw new EdgeidError('config_invalid', `config: store.passwordFile: ${p.file} is not a regular file`, { field: 'store.passwordFile' });
  if ((mode & 0o077) !== 0)
    throw new EdgeidError(
      'config_invalid',
      `config: store.passwordFile: ${p.file} has mode ${(mode & 0o777).toString(8).padStart(4, '0')}: group and others must have no access (chmod 0600)`,
      { field: 'store.passwordFile' },
    );
  let raw: string;
  try {
    raw = readFileSync(p.file, 'utf8');
  } catch (e) {
    // e.g. EACCES: the service user may stat the file but not read it
    throw new EdgeidError(
      'config_invalid',
      `config: store.passwordFile: cannot read ${p.file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
      { field: 'store.passwordFile' },
    );
  }
  const text = raw.replace(/\r?\n$/, '');
  if (!text) throw new EdgeidError('config_invalid', `config: store.passwordFile: ${p.file} is empty`, { field: 'store.passwordFile' });
  return text;
}

/** The configured store, migrated: SQLite in the data dir, or PostgreSQL. */
async function openStore(config: ServerConfig, log: Logger): Promise<SqliteStore | PostgresStore> {
  const sc = config.store;
  if (sc.kind === 'sqlite') return new SqliteStore(join(config.dataDir, DATA_FILES.db));
  const store = await PostgresStore.open({
    url: sc.url,
    password: readStorePassword(sc.password, process.env),
    poolSize: sc.poolSize,
    // an idle connection lost (the database restarted): the pool opens a new one when needed
    onError: (e) => log.warn({ err: { message: e.message, code: (e as { code?: string }).code } }, 'PostgreSQL connection lost'),
  });
  const where = new URL(sc.url);
  log.info({ store: 'postgres', host: where.host, database: where.pathname.slice(1), poolSize: sc.poolSize }, 'store opened');
  return store;
}

/** Opens the store (migrating it), the CA and the broker integration, and wires the hooks. */
export async function composeContext(opts: ComposeOptions): Promise<ServerContext> {
  const { config } = opts;
  ensurePrivateDir(config.dataDir);
  const log =
    opts.logger ??
    pino({ level: config.logLevel, base: { svc: 'edgeid-server' }, redact: ['req.headers.authorization', '*.token', '*.secret'] });
  const store = await openStore(config, log);
  if (store.schema.from !== store.schema.to) log.info({ from: store.schema.from, to: store.schema.to }, 'database schema migrated');
  let ca: CertificateAuthority;
  let issuer: CaSigner | undefined;
  try {
    // a token key is opened here (PIN, token, key label checked at start: hsm_* codes); a file key by the CA itself
    if (config.ca.key === 'pkcs11') issuer = await openIssuerSigner({ kind: 'pkcs11', config: config.ca.pkcs11 });
    ca = await CertificateAuthority.open({ dir: join(config.dataDir, DATA_FILES.caDir), hostnames: config.hostnames, issuer });
  } catch (e) {
    if (issuer) await closeIssuerSigner(issuer);
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
    ekTrust: null,
    ekRequireDefault: true,
    broker: null,
  } as unknown as ServerContext;
  try {
    await reloadEkTrust(ctx);
  } catch (e) {
    await store.close();
    throw e;
  }
  // data dirs that held devices or tokens before EK certificates were required by default keep
  // them optional until the configuration says otherwise (new data dirs require them)
  const legacyOptional = (await store.getMeta('ek_cert_legacy_optional')) === '1';
  ctx.ekRequireDefault = config.ek.requireEkCertificate ?? !legacyOptional;
  if (!ctx.ekRequireDefault) {
    log.warn(
      config.ek.requireEkCertificate === false
        ? 'ek.requireEkCertificate is false: TPMs without an EK certificate chaining to the EK trust store can enroll, so enrollment does not prove a real TPM'
        : 'this data dir predates required EK certificates: EK certificates stay optional until ek.requireEkCertificate is set (true is recommended)',
    );
  }
  for (const z of Object.values(config.zones)) {
    if (z.requireEkCertificate === false) {
      log.warn(
        { zone: z.name },
        `zone ${z.name} opted out of EK certificates (requireEkCertificate: false): its devices enroll without proof of a real TPM and show ekVerified: false`,
      );
    }
  }
  ctx.metrics = createMetrics(() => store.countDevicesByStatus());
  ctx.crl = new CrlService(ctx);
  ctx.auditFeed = new AuditFeed(store, { log: log.child({ part: 'audit-feed' }) });
  registerCaMetrics(ctx);
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
      // ids only (no row decoding), through the status index
      activeDeviceIds: () => store.listDeviceIds({ status: ['active', 'quarantined'] }),
      quarantinedDeviceIds: () => store.listDeviceIds({ status: ['quarantined'] }),
      log: log.child({ part: 'broker' }),
    });
    ctx.broker = broker;
    ctx.hooks.push(brokerHooks(ctx, broker));
    // the CRL reload schedule in /metrics (operators alert on a reload that keeps failing)
    const crlGauge = (name: string, help: string, value: (s: NonNullable<ReturnType<typeof broker.crlStatus>>) => number | null) =>
      new Gauge({
        name,
        help,
        registers: [ctx.metrics.registry],
        collect() {
          const s = broker.crlStatus();
          const v = s ? value(s) : null;
          if (v !== null) this.set(v);
        },
      });
    crlGauge('edgeid_broker_crl_pending_revocations', 'Revoked certificates in the broker crlfile it has not loaded yet', (s) => s.pending);
    crlGauge('edgeid_broker_crl_next_reload_timestamp_seconds', 'When the broker loads its CRL next (unix time)', (s) =>
      s.nextReloadAt ? Date.parse(s.nextReloadAt) / 1000 : null,
    );
    crlGauge('edgeid_broker_crl_loaded_next_update_timestamp_seconds', 'nextUpdate of the CRL the broker has loaded (unix time)', (s) =>
      s.loaded ? Date.parse(s.loaded.nextUpdate) / 1000 : null,
    );
  }
  return ctx;
}
