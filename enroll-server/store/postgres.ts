/**
 * PostgreSQL store: the same interface and behaviour as SqliteStore, for several server instances
 * on one database. Every write is one transaction at READ COMMITTED
 * (https://www.postgresql.org/docs/15/transaction-iso.html#XACT-READ-COMMITTED), and every
 * single-use operation is a conditional UPDATE (`… WHERE used_at IS NULL`) or a row locked with
 * SELECT … FOR UPDATE: a second transaction on the same row waits for the first to commit, then
 * re-evaluates its WHERE on the committed row and changes nothing — exactly once across instances.
 * Rows are locked in one order (device, nonce/token, certificates, audit) so two writers do not
 * deadlock; a deadlock or serialization failure (40P01 / 40001) that still happens is retried a
 * few times. The audit chain stays linear: each append takes a transaction-scoped advisory lock
 * (pg_advisory_xact_lock, https://www.postgresql.org/docs/15/functions-admin.html#FUNCTIONS-ADVISORY-LOCKS)
 * before reading the head, held until commit. Statements are named (prepared once per connection).
 * Errors of the database become EdgeidErrors with the codes the SQLite store's failures get
 * (storage_full, storage_read_only) or store_unavailable (503) when it cannot be reached.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { AuditProblem, AuditRow, AuditVerifyResult, DeviceStatus, RevokeReason } from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import {
  auditHash,
  GENESIS_HASH,
  storableDetails,
  storableText,
  verifyChain,
  VERIFY_PROBLEMS_MAX,
  type ChainAnchor,
} from './audit-chain.js';
import type { Migration } from './migrate.js';
import {
  alertFrom,
  auditFrom,
  certFrom,
  deliveryFrom,
  CHALLENGES_PER_DEVICE,
  DEVICE_COLUMNS,
  deviceSortSql,
  deviceFrom,
  EK_ALLOW_SELECT,
  ekAllowFrom,
  monitorFrom,
  nonceFrom,
  sessionFrom,
  tokenFrom,
  userFrom,
  type Row,
} from './sqlite.js';
import type {
  AlertDeliveryRecord,
  AlertFilter,
  AlertOccurrence,
  AlertRecord,
  AlertSeverity,
  AuditInput,
  BrokerMonitorRecord,
  CertificateRecord,
  DeviceFilter,
  DeviceListing,
  DevicePageRequest,
  DevicePatch,
  DeviceRecord,
  EkAllowRecord,
  EkRootRecord,
  EnrollSessionRecord,
  NonceRecord,
  Store,
  TokenRecord,
  UserRecord,
} from './store.js';

export const PG_MIGRATIONS_DIR = fileURLToPath(new URL('./migrations-pg/', import.meta.url));

/** Advisory lock keys (bigint): the audit chain's append and the schema migration. */
export const AUDIT_LOCK = '7305808092736503809'; // 0x6564676569640001 ("edgeid" 0001)
const MIGRATE_LOCK = '7305808092736503810';

/** How often a transaction is run again after a deadlock or a serialization failure. */
const TX_ATTEMPTS = 5;

export interface PostgresStoreOptions {
  /** postgres://user[:password]@host:port/db (libpq URI, https://www.postgresql.org/docs/15/libpq-connect.html#LIBPQ-CONNSTRING). */
  url: string;
  /** Password (from a 0600 file or PGPASSWORD), used when the URL has none. */
  password?: string;
  /** Connections in the pool (default 10). */
  poolSize?: number;
  /** How long to wait for a connection before answering store_unavailable (ms, default 5000). */
  connectTimeoutMs?: number;
  /**
   * How long a connection of the pool may sit idle inside an open transaction before PostgreSQL
   * ends its session (ms, default 10000; idle_in_transaction_session_timeout,
   * https://www.postgresql.org/docs/15/runtime-config-client.html#GUC-IDLE-IN-TRANSACTION-SESSION-TIMEOUT).
   * An instance that stalls mid-transaction (stopped, swapping, its event loop stuck) would
   * otherwise hold its row locks and the audit chain's lock, and every instance's writes would
   * wait behind it. Every transaction here runs its statements back to back, so a few seconds
   * idle means the instance is stuck.
   */
  idleInTransactionTimeoutMs?: number;
  /** Called with pool-level errors (an idle connection lost): they are not fatal. */
  onError?: (e: Error) => void;
}

type Client = pg.PoolClient;
type Exec = Pick<pg.PoolClient, 'query'>;

/** `?` placeholders (as the SQLite store writes them) to `$1, $2 …`, and a stable statement name. */
const converted = new Map<string, { text: string; name: string }>();
function statement(sql: string): { text: string; name: string } {
  let s = converted.get(sql);
  if (!s) {
    let i = 0;
    const text = sql.replace(/\?/g, () => `$${++i}`);
    s = { text, name: `e_${createHash('sha256').update(text).digest('hex').slice(0, 24)}` };
    if (converted.size >= 1024) converted.clear();
    converted.set(sql, s);
  }
  return s;
}

/** Reads the PostgreSQL migration files (same numbers and names as store/migrations/). */
export function loadPgMigrations(dir = PG_MIGRATIONS_DIR): Migration[] {
  const out: Migration[] = [];
  for (const f of readdirSync(dir)
    .filter((n) => n.endsWith('.sql'))
    .sort()) {
    const m = /^(\d{3})_([a-z0-9_]+)\.sql$/.exec(f);
    if (!m) throw new Error(`migration file ${f} is not named NNN_name.sql`);
    out.push({ version: Number(m[1]), name: m[2]!, sql: readFileSync(`${dir}/${f}`, 'utf8') });
  }
  out.forEach((m, i) => {
    if (m.version !== i + 1)
      throw new Error(`migrations must be numbered 1, 2, 3 …: found ${String(m.version).padStart(3, '0')} at position ${i + 1}`);
  });
  return out;
}

const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
  'EAI_AGAIN',
]);

/**
 * A database failure as the server answers it (SQLSTATE codes:
 * https://www.postgresql.org/docs/15/errcodes-appendix.html): disk full → storage_full, a
 * read-only transaction (a standby, default_transaction_read_only) → storage_read_only, the
 * server down, unreachable, shutting down, refusing us or out of connections → store_unavailable.
 * Anything else (a bug) is returned as it is. The message names the SQLSTATE, never the URL.
 */
export function pgFailure(e: unknown): unknown {
  if (e instanceof EdgeidError) return e;
  const code = (e as { code?: unknown } | null)?.code;
  const message = e instanceof Error ? e.message : String(e);
  if (code === '53100') return new EdgeidError('storage_full', undefined, { cause: 'PostgreSQL 53100 disk_full' });
  if (code === '25006') return new EdgeidError('storage_read_only', undefined, { cause: 'PostgreSQL 25006 read_only_sql_transaction' });
  const unavailable =
    (typeof code === 'string' &&
      (code.startsWith('08') || // connection exception
        code === '57P01' || // admin_shutdown
        code === '57P02' || // crash_shutdown
        code === '57P03' || // cannot_connect_now
        code === '25P03' || // idle_in_transaction_session_timeout ended the session
        code === '53300' || // too_many_connections
        code === '53200' || // out_of_memory
        code === '3D000' || // invalid_catalog_name: the database does not exist
        code === '28000' || // invalid_authorization_specification
        code === '28P01' || // invalid_password
        CONNECTION_CODES.has(code))) ||
    /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|connection is closed|Cannot use a pool after calling end/i.test(
      message,
    );
  if (unavailable) {
    return new EdgeidError('store_unavailable', undefined, {
      cause: typeof code === 'string' ? `PostgreSQL ${code}` : message.replace(/postgres(ql)?:\/\/\S+/gi, '(url)').slice(0, 200),
    });
  }
  return e;
}

/**
 * The URL with the password put in, when one is given and the URL has none. (node-postgres lets
 * the connection string's fields override the separate `password` option, even an empty one:
 * the password has to travel inside the string.) Kept in the pool only, never logged.
 */
function withPassword(url: string, password: string | undefined): string {
  if (password === undefined) return url;
  const u = new URL(url);
  if (u.password) return url;
  // percent-encoded whole (the URL setter leaves a stray % as it is); pg-connection-string decodes it
  u.password = encodeURIComponent(password);
  return u.toString();
}

class RaceLost extends Error {}
class LastAdmin extends Error {}

class EkLive extends Error {
  constructor(readonly deviceId: string) {
    super('a live device has this EK');
  }
}

/** WHERE clause of a device listing; lists are passed as arrays (`= ANY`), so each filter has one statement shape. */
function deviceWhere(f: DeviceFilter, t: string): { where: string; args: unknown[] } {
  const where: string[] = [];
  const args: unknown[] = [];
  if (f.status) {
    where.push(`${t}.status = ANY(?::text[])`);
    args.push(f.status);
  }
  if (f.zone !== undefined) {
    where.push(`${t}.zone = ?`);
    args.push(f.zone);
  }
  if (f.zones !== undefined) {
    where.push(`${t}.zone = ANY(?::text[])`);
    args.push(f.zones);
  }
  if (f.stale) {
    const stale = `(${t}.status IN ('active', 'quarantined') AND COALESCE(${t}.last_seen, ${t}.enrolled_at) < ?)`;
    where.push(f.stale.is ? stale : `NOT ${stale}`);
    args.push(f.stale.before);
  }
  if (f.retireByAtOrBefore !== undefined) {
    where.push(`${t}.retire_by IS NOT NULL AND ${t}.retire_by <= ?`);
    args.push(f.retireByAtOrBefore);
  }
  if (f.search !== undefined) {
    // the caller's text as a literal; ILIKE is case-insensitive like SQLite's LIKE (which folds
    // ASCII only: a search with non-ASCII letters may match more here)
    const like = `%${f.search.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    where.push(
      `(${t}.id ILIKE ? ESCAPE '\\' OR ${t}.name ILIKE ? ESCAPE '\\' OR ${t}.owner ILIKE ? ESCAPE '\\' OR ${t}.last_ip ILIKE ? ESCAPE '\\')`,
    );
    args.push(like, like, like, like);
  }
  if (f.baselineWindow) {
    const open = `(${t}.baseline_window_until IS NOT NULL AND ${t}.baseline_window_until > ?)`;
    where.push(f.baselineWindow.open ? open : `NOT ${open}`);
    args.push(f.baselineWindow.now);
  }
  return { where: where.length ? ` WHERE ${where.join(' AND ')}` : '', args };
}

export class PostgresStore implements Store {
  readonly pool: pg.Pool;

  /** The schema version the database was at when opened, and the one it is at now. */
  schema: { from: number; to: number } = { from: 0, to: 0 };

  private readonly connectionString: string;
  private readonly connectTimeoutMs: number;

  private constructor(opts: PostgresStoreOptions) {
    this.connectionString = withPassword(opts.url, opts.password);
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 5000;
    this.pool = new pg.Pool({
      connectionString: this.connectionString,
      max: opts.poolSize ?? 10,
      connectionTimeoutMillis: opts.connectTimeoutMs ?? 5000,
      idleTimeoutMillis: 30_000,
      idle_in_transaction_session_timeout: opts.idleInTransactionTimeoutMs ?? 10_000,
      application_name: 'edgeid-server',
    });
    // an idle connection that breaks (the server restarted) is dropped by the pool; without a
    // listener the 'error' event would end the process
    this.pool.on('error', (e) => opts.onError?.(e));
    // a connection that breaks while checked out between two statements (the database stopped,
    // pg_terminate_backend) emits 'error' on the client: without a listener that would end the
    // process (https://node-postgres.com/apis/pool#error); the statement in flight fails on its own
    this.pool.on('connect', (client) => client.on('error', (e) => opts.onError?.(e)));
  }

  /**
   * A new connection outside the pool, not connected yet, with the pool's settings and TCP
   * keepalives on (a session that must stay open, e.g. one holding a session advisory lock:
   * services/leader.ts). The caller connects, listens for 'error' and ends it.
   */
  sessionClient(): pg.Client {
    return new pg.Client({
      connectionString: this.connectionString,
      connectionTimeoutMillis: this.connectTimeoutMs,
      application_name: 'edgeid-server leader',
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    });
  }

  /** Connects, brings the schema to the newest migration (once, whichever instance comes first) and returns the store. */
  static async open(opts: PostgresStoreOptions, migrations: Migration[] = loadPgMigrations()): Promise<PostgresStore> {
    const s = new PostgresStore(opts);
    try {
      s.schema = await s.migrate(migrations);
    } catch (e) {
      await s.pool.end().catch(() => {});
      throw pgFailure(e);
    }
    return s;
  }

  /**
   * Numbered migrations, each in its own transaction with its schema_version row (DDL is
   * transactional in PostgreSQL). Instances starting together take a session advisory lock, so
   * one applies them and the others find them applied. A database newer than this server, or one
   * that holds other tables and no schema_version, is refused untouched.
   */
  private async migrate(migrations: Migration[], now: () => number = Date.now): Promise<{ from: number; to: number }> {
    const c = await this.connect();
    try {
      await c.query('SELECT pg_advisory_lock($1)', [MIGRATE_LOCK]);
      try {
        const has = await c.query(`SELECT to_regclass('schema_version') IS NOT NULL AS v`);
        let from: number;
        if (!has.rows[0].v) {
          const other = await c.query(
            `SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`,
          );
          if (Number(other.rows[0].n) > 0)
            throw new EdgeidError(
              'data_dir_unusable',
              'the PostgreSQL database has tables but no schema_version table: it is not an edgeid database',
            );
          await c.query('CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)');
          from = 0;
        } else {
          const r = await c.query('SELECT MAX(version) AS v FROM schema_version');
          from = r.rows[0].v === null ? 0 : Number(r.rows[0].v);
        }
        const newest = migrations.length;
        if (from > newest)
          throw new EdgeidError(
            'data_dir_unusable',
            `the database is at schema version ${from}, newer than this server knows (${newest}): it was written by a later edgeid-server`,
          );
        for (const m of migrations.slice(from)) {
          await c.query('BEGIN');
          try {
            await c.query(m.sql);
            await c.query('INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)', [m.version, m.name, now()]);
            await c.query('COMMIT');
          } catch (e) {
            await c.query('ROLLBACK').catch(() => {});
            throw e;
          }
        }
        return { from, to: newest };
      } finally {
        await c.query('SELECT pg_advisory_unlock($1)', [MIGRATE_LOCK]).catch(() => {});
      }
    } finally {
      c.release();
    }
  }

  /** One statement on the pool (outside a transaction) or in the caller's transaction, named so each connection prepares it once. */
  private async q(sql: string, values: unknown[] = [], on?: Exec): Promise<Row[]> {
    const s = statement(sql);
    const c = on ?? (await this.connect());
    let broken = false;
    try {
      return (await c.query({ name: s.name, text: s.text, values })).rows as Row[];
    } catch (e) {
      const mapped = pgFailure(e);
      broken = mapped instanceof EdgeidError && mapped.code === 'store_unavailable';
      throw mapped;
    } finally {
      // a connection that failed is closed, not handed out again
      if (!on) (c as Client).release(broken);
    }
  }

  /** A connection of the pool; any failure to get one (down, refused, auth, timeout, database closed) is store_unavailable. */
  private async connect(): Promise<Client> {
    try {
      return await this.pool.connect();
    } catch (e) {
      const mapped = pgFailure(e);
      if (mapped instanceof EdgeidError) throw mapped;
      const code = (e as { code?: unknown }).code;
      throw new EdgeidError('store_unavailable', undefined, {
        cause: typeof code === 'string' ? `PostgreSQL ${code}` : 'cannot connect',
      });
    }
  }

  private async run(sql: string, values: unknown[], on: Exec): Promise<number> {
    const s = statement(sql);
    try {
      return (await on.query({ name: s.name, text: s.text, values })).rowCount ?? 0;
    } catch (e) {
      throw pgFailure(e);
    }
  }

  /**
   * A write transaction (READ COMMITTED). Deadlocks and serialization failures are run again (the
   * function must only touch the database); any other error rolls back and is thrown mapped.
   */
  private async tx<T>(fn: (c: Client) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const c = await this.connect();
      let broken = false;
      try {
        await c.query('BEGIN ISOLATION LEVEL READ COMMITTED');
        const out = await fn(c);
        await c.query('COMMIT');
        return out;
      } catch (e) {
        try {
          await c.query('ROLLBACK');
        } catch {
          broken = true;
        }
        const code = (e as { code?: unknown }).code;
        if ((code === '40001' || code === '40P01') && attempt < TX_ATTEMPTS) continue;
        throw e instanceof RaceLost || e instanceof EkLive ? e : pgFailure(e);
      } finally {
        c.release(broken);
      }
    }
  }

  /**
   * Appends inside the caller's transaction, under the chain's advisory lock (held until commit):
   * the head read here is the committed head, and no other instance appends until this commits.
   * The row is read back (RETURNING) and must hash as computed, as in the SQLite store.
   */
  private async appendAuditIn(c: Client, a: AuditInput): Promise<AuditRow> {
    await c.query({ name: 'e_audit_lock', text: 'SELECT pg_advisory_xact_lock($1)', values: [AUDIT_LOCK] });
    const last = (await this.q('SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1', [], c))[0];
    const anchor = last ? null : await this.auditAnchorIn(c);
    const opt = (v: string | null | undefined) => (v === null || v === undefined ? null : storableText(v));
    const time = Math.trunc(a.time);
    const row: Omit<AuditRow, 'hash'> = {
      seq: last ? Number(last.seq) + 1 : (anchor?.seq ?? 0) + 1,
      time: new Date(time).toISOString(),
      actor: storableText(a.actor),
      event: storableText(a.event),
      deviceId: opt(a.deviceId),
      ip: opt(a.ip),
      outcome: a.outcome,
      reason: opt(a.reason),
      details: storableDetails(a.details),
      prevHash: last ? String(last.hash) : (anchor?.hash ?? GENESIS_HASH),
    };
    const hash = auditHash(row);
    const stored = (
      await this.q(
        `INSERT INTO audit (seq, time, actor, event, device_id, ip, outcome, reason, details, prev_hash, hash)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *`,
        [
          row.seq,
          time,
          row.actor,
          row.event,
          row.deviceId,
          row.ip,
          row.outcome,
          row.reason,
          row.details ? JSON.stringify(row.details) : null,
          row.prevHash,
          hash,
        ],
        c,
      )
    )[0]!;
    if (auditHash(auditFrom(stored)) !== hash) throw new Error(`audit row ${row.seq} would not read back as hashed`);
    await this.setMetaIn('audit_head', JSON.stringify({ seq: row.seq, hash }), c);
    return { ...row, hash };
  }

  private async auditAnchorIn(on?: Exec): Promise<ChainAnchor | null> {
    const r = (await this.q('SELECT seq, hash FROM audit_checkpoint ORDER BY seq DESC LIMIT 1', [], on))[0];
    return r ? { seq: Number(r.seq), hash: String(r.hash) } : null;
  }

  private async setMetaIn(key: string, value: string, on?: Exec): Promise<void> {
    await this.q('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, value], on);
  }

  async close(): Promise<void> {
    if (!this.pool.ended) await this.pool.end();
  }

  async getMeta(key: string): Promise<string | null> {
    const r = (await this.q('SELECT value FROM meta WHERE key = ?', [key]))[0];
    return r ? String(r.value) : null;
  }

  async setMeta(key: string, value: string): Promise<void> {
    await this.setMetaIn(key, value);
  }

  async nextCrlNumbers(count: number): Promise<bigint> {
    // one statement: the upsert takes the row lock, so concurrent instances queue on it and each
    // reads the value the previous one committed (numeric: a number past 2^63 still adds up)
    const r = (
      await this.q(
        `INSERT INTO meta (key, value) VALUES ('crl_number', (?::int)::text)
         ON CONFLICT (key) DO UPDATE SET value = (meta.value::numeric + ?::int)::text RETURNING value`,
        [count, count],
      )
    )[0]!;
    return BigInt(String(r.value)) - BigInt(count) + 1n;
  }

  async createToken(t: TokenRecord, audit: AuditInput): Promise<void> {
    await this.tx(async (c) => {
      await this.q(
        `INSERT INTO tokens (id, secret_hash, zone, owner, name, purpose, created_by, created_at, expires_at, ek_hash, bound_at, used_at, device_id)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL)`,
        [t.id, t.secretHash, t.zone, t.owner, t.name, t.purpose, t.createdBy, t.createdAt, t.expiresAt],
        c,
      );
      await this.appendAuditIn(c, audit);
    });
  }

  async getToken(id: string): Promise<TokenRecord | null> {
    const r = (await this.q('SELECT * FROM tokens WHERE id = ?', [id]))[0];
    return r ? tokenFrom(r) : null;
  }

  async expireToken(id: string, at: number, audit: AuditInput): Promise<boolean> {
    return this.tx(async (c) => {
      const changed =
        (await this.run('UPDATE tokens SET expires_at = ? WHERE id = ? AND used_at IS NULL AND expires_at > ?', [at, id, at], c)) > 0;
      if (changed) await this.appendAuditIn(c, audit);
      return changed;
    });
  }

  async listTokens(): Promise<TokenRecord[]> {
    return (await this.q('SELECT * FROM tokens ORDER BY created_at, id')).map(tokenFrom);
  }

  async startEnrollment(p: {
    tokenId: string;
    ekHash: string;
    now: number;
    session: EnrollSessionRecord;
    audit: AuditInput;
    keepOtherSessions?: boolean;
    extendTokenUntil?: number;
  }): Promise<'ok' | 'bound_other' | 'used' | 'expired' | 'missing'> {
    return this.tx(async (c) => {
      const bound = await this.run(
        `UPDATE tokens SET ek_hash = ?, bound_at = COALESCE(bound_at, ?), expires_at = GREATEST(expires_at, ?)
           WHERE id = ? AND used_at IS NULL AND expires_at > ? AND (ek_hash IS NULL OR ek_hash = ?)`,
        [p.ekHash, p.now, p.extendTokenUntil ?? 0, p.tokenId, p.now, p.ekHash],
        c,
      );
      if (bound !== 1) {
        const t = (await this.q('SELECT * FROM tokens WHERE id = ?', [p.tokenId], c))[0];
        if (!t) return 'missing' as const;
        const tok = tokenFrom(t);
        if (tok.usedAt !== null) return 'used' as const;
        if (tok.expiresAt <= p.now) return 'expired' as const;
        return 'bound_other' as const;
      }
      if (!p.keepOtherSessions)
        await this.run('UPDATE enroll_sessions SET used_at = ? WHERE token_id = ? AND used_at IS NULL', [p.now, p.tokenId], c);
      const s = p.session;
      await this.run(
        `INSERT INTO enroll_sessions (id, token_id, ek_hash, ak_pub, secret_hash, nonce, ip, created_at, expires_at, used_at, ek_pub, ek_verified, ek_issuer)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)`,
        [
          s.id,
          s.tokenId,
          s.ekHash,
          s.akPub,
          s.secretHash,
          s.nonce,
          s.ip,
          s.createdAt,
          s.expiresAt,
          s.ekPub ?? null,
          s.ekVerified === undefined || s.ekVerified === null ? null : s.ekVerified ? 1 : 0,
          s.ekIssuer ?? null,
        ],
        c,
      );
      await this.appendAuditIn(c, p.audit);
      return 'ok' as const;
    });
  }

  async getSession(id: string): Promise<EnrollSessionRecord | null> {
    const r = (await this.q('SELECT * FROM enroll_sessions WHERE id = ?', [id]))[0];
    return r ? sessionFrom(r) : null;
  }

  private async insertCertificate(c: Client, x: CertificateRecord): Promise<void> {
    await this.run(
      `INSERT INTO certificates (serial, device_id, not_before, not_after, spki_hash, issued_at, revoked_at, reason)
         VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)`,
      [x.serial, x.deviceId, x.notBefore, x.notAfter, x.spkiHash, x.issuedAt],
      c,
    );
  }

  /** Stores a nonce and bounds the live ones per device and kind (challenges never evict the issued nonce). */
  private async insertNonce(c: Client, n: NonceRecord, keep: number, kind = 'issued'): Promise<void> {
    await this.run(
      'INSERT INTO nonces (value, device_id, created_at, expires_at, used_at, kind) VALUES (?, ?, ?, ?, NULL, ?)',
      [n.value, n.deviceId, n.createdAt, n.expiresAt, kind],
      c,
    );
    await this.run(
      `DELETE FROM nonces WHERE device_id = ? AND kind = ? AND used_at IS NULL AND value NOT IN
           (SELECT value FROM nonces WHERE device_id = ? AND kind = ? AND used_at IS NULL ORDER BY created_at DESC, value LIMIT ?)`,
      [n.deviceId, kind, n.deviceId, kind, keep],
      c,
    );
  }

  async finishEnrollment(p: {
    tokenId: string;
    sessionId: string;
    now: number;
    device: DeviceRecord;
    certificate: CertificateRecord;
    nonce: NonceRecord;
    keepNonces: number;
    audit: AuditInput;
  }): Promise<boolean | { liveDevice: string }> {
    try {
      return await this.tx(async (c) => {
        const t = await this.run(
          'UPDATE tokens SET used_at = ?, device_id = ? WHERE id = ? AND used_at IS NULL',
          [p.now, p.device.id, p.tokenId],
          c,
        );
        const s = await this.run('UPDATE enroll_sessions SET used_at = ? WHERE id = ? AND used_at IS NULL', [p.now, p.sessionId], c);
        if (t !== 1 || s !== 1) throw new RaceLost();
        await this.run('UPDATE enroll_sessions SET used_at = ? WHERE token_id = ? AND used_at IS NULL', [p.now, p.tokenId], c);
        const d = p.device;
        const live = (
          await this.q(`SELECT id FROM devices WHERE ek_hash = ? AND status IN ('active', 'quarantined') LIMIT 1`, [d.ekHash], c)
        )[0];
        if (live) throw new EkLive(String(live.id));
        try {
          await this.run(
            `INSERT INTO devices (id, zone, owner, name, purpose, status, status_reason, status_changed_at, ek_hash, ak_pub, ak_name, baseline, claims,
                 baseline_window_until, enrolled_by, enrolled_at, retire_by, last_seen, last_ip, ek_legacy, ek_pub, ek_verified, ek_issuer, event_log, baseline_event_log,
                 last_pcrs, last_quote_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)`,
            [
              d.id,
              d.zone,
              d.owner,
              d.name,
              d.purpose,
              d.status,
              d.statusReason,
              d.statusChangedAt,
              d.ekHash,
              d.akPub,
              d.akName,
              d.baseline ? JSON.stringify(d.baseline) : null,
              d.claims ? JSON.stringify(d.claims) : null,
              d.baselineWindowUntil,
              d.enrolledBy,
              d.enrolledAt,
              d.retireBy,
              d.lastSeen,
              d.lastIp,
              d.ekPub ?? null,
              d.ekVerified === undefined || d.ekVerified === null ? null : d.ekVerified ? 1 : 0,
              d.ekIssuer ?? null,
              d.eventLog ?? null,
              d.baselineEventLog ?? null,
              d.lastPcrs ? JSON.stringify(d.lastPcrs) : null,
              d.lastQuoteAt ?? null,
            ],
            c,
          );
        } catch (e) {
          // another instance created a live device with this EK after our check and committed
          // first: devices_live_ek decides, and this transaction changes nothing
          if ((e as { code?: unknown; constraint?: unknown }).constraint === 'devices_live_ek') throw new EkLive('');
          throw e;
        }
        await this.insertCertificate(c, p.certificate);
        await this.insertNonce(c, p.nonce, p.keepNonces);
        await this.appendAuditIn(c, p.audit);
        return true;
      });
    } catch (e) {
      if (e instanceof RaceLost) return false;
      if (e instanceof EkLive) {
        if (e.deviceId) return { liveDevice: e.deviceId };
        const live = (
          await this.q(`SELECT id FROM devices WHERE ek_hash = ? AND status IN ('active', 'quarantined') LIMIT 1`, [p.device.ekHash])
        )[0];
        return { liveDevice: live ? String(live.id) : '' };
      }
      throw e;
    }
  }

  async failEnrollment(p: {
    tokenId: string;
    sessionId: string | null;
    now: number;
    audit: AuditInput;
    keepToken?: boolean;
  }): Promise<void> {
    await this.tx(async (c) => {
      if (p.keepToken) {
        if (p.sessionId !== null)
          await this.run('UPDATE enroll_sessions SET used_at = ? WHERE id = ? AND used_at IS NULL', [p.now, p.sessionId], c);
        await this.appendAuditIn(c, p.audit);
        return;
      }
      await this.run('UPDATE tokens SET used_at = ? WHERE id = ? AND used_at IS NULL', [p.now, p.tokenId], c);
      await this.run('UPDATE enroll_sessions SET used_at = ? WHERE token_id = ? AND used_at IS NULL', [p.now, p.tokenId], c);
      await this.appendAuditIn(c, p.audit);
    });
  }

  async getDevice(id: string): Promise<DeviceRecord | null> {
    const r = (await this.q('SELECT * FROM devices WHERE id = ?', [id]))[0];
    return r ? deviceFrom(r) : null;
  }

  async listDevices(filter: DeviceFilter = {}): Promise<DeviceRecord[]> {
    const { where, args } = deviceWhere(filter, 'devices');
    return (await this.q(`SELECT * FROM devices${where} ORDER BY enrolled_at, id`, args)).map(deviceFrom);
  }

  async countDevicesByStatus(): Promise<Partial<Record<DeviceStatus, number>>> {
    const out: Partial<Record<DeviceStatus, number>> = {};
    for (const r of await this.q('SELECT status, COUNT(*) AS n FROM devices GROUP BY status'))
      out[String(r.status) as DeviceStatus] = Number(r.n);
    return out;
  }

  async listDevicesWithLastCertificate(filter: DeviceFilter = {}, page?: DevicePageRequest): Promise<DeviceListing[]> {
    const w = deviceWhere(filter, 'd');
    let where = w.where;
    const args = [...w.args];
    const sorted = deviceSortSql(page ?? { limit: 0 }, 'd', true);
    if (sorted.after) {
      where += `${where ? ' AND' : ' WHERE'} ${sorted.after.where}`;
      args.push(...sorted.after.args);
    }
    const limit = page ? ' LIMIT ?' : '';
    if (page) args.push(page.limit);
    // one query: the newest certificate per device through a lateral lookup on (device_id, not_after)
    const rows = await this.q(
      `SELECT d.*, c.serial AS c_serial, c.device_id AS c_device_id, c.not_before AS c_not_before, c.not_after AS c_not_after,
                c.spki_hash AS c_spki_hash, c.issued_at AS c_issued_at, c.revoked_at AS c_revoked_at, c.reason AS c_reason
         FROM (SELECT * FROM devices d${where}${sorted.orderBy}${limit}) d
         LEFT JOIN LATERAL (SELECT * FROM certificates WHERE device_id = d.id ORDER BY not_after DESC LIMIT 1) c ON true
         ${sorted.orderBy}`,
      args,
    );
    return rows.map((r) => ({
      device: deviceFrom(r),
      lastCertificate:
        r.c_serial === null || r.c_serial === undefined
          ? null
          : certFrom({
              serial: r.c_serial,
              device_id: r.c_device_id,
              not_before: r.c_not_before,
              not_after: r.c_not_after,
              spki_hash: r.c_spki_hash,
              issued_at: r.c_issued_at,
              revoked_at: r.c_revoked_at,
              reason: r.c_reason,
            }),
    }));
  }

  async findDeviceByAkName(akName: string): Promise<DeviceRecord | null> {
    const r = (await this.q('SELECT * FROM devices WHERE ak_name = ? ORDER BY enrolled_at DESC LIMIT 1', [akName.toLowerCase()]))[0];
    return r ? deviceFrom(r) : null;
  }

  async devicesWithoutAkName(): Promise<{ id: string; akPub: Buffer }[]> {
    return (await this.q('SELECT id, ak_pub FROM devices WHERE ak_name IS NULL ORDER BY id')).map((r) => ({
      id: String(r.id),
      akPub: r.ak_pub as Buffer,
    }));
  }

  async setAkName(id: string, akName: string): Promise<void> {
    await this.q('UPDATE devices SET ak_name = ? WHERE id = ? AND ak_name IS NULL', [akName.toLowerCase(), id]);
  }

  async findLiveDeviceByEk(ekHash: string, legacyHashes: string[] = []): Promise<DeviceRecord | null> {
    const r = (
      await this.q(
        `SELECT * FROM devices WHERE ((ek_hash = ? AND ek_legacy = 0) OR (ek_legacy = 1 AND ek_hash = ANY(?::text[])))
           AND status IN ('active', 'quarantined') ORDER BY enrolled_at LIMIT 1`,
        [ekHash, legacyHashes],
      )
    )[0];
    return r ? deviceFrom(r) : null;
  }

  async listEkRoots(): Promise<EkRootRecord[]> {
    return (await this.q('SELECT * FROM ek_roots ORDER BY added_at, fingerprint')).map((r) => ({
      fingerprint: String(r.fingerprint),
      kind: String(r.kind) as EkRootRecord['kind'],
      der: (r.der as Buffer | null) ?? null,
      subject: String(r.subject),
      notAfter: r.not_after === null ? null : Number(r.not_after),
      addedBy: String(r.added_by),
      addedAt: Number(r.added_at),
    }));
  }

  async putEkRoot(r: EkRootRecord, audit: AuditInput): Promise<void> {
    await this.tx(async (c) => {
      await this.run(
        `INSERT INTO ek_roots (fingerprint, kind, der, subject, not_after, added_by, added_at) VALUES (?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (fingerprint) DO UPDATE SET kind = excluded.kind, der = excluded.der, subject = excluded.subject,
             not_after = excluded.not_after, added_by = excluded.added_by, added_at = excluded.added_at`,
        [r.fingerprint, r.kind, r.der, r.subject, r.notAfter, r.addedBy, r.addedAt],
        c,
      );
      await this.appendAuditIn(c, audit);
    });
  }

  async deleteEkRoot(fingerprint: string, audit: AuditInput): Promise<boolean> {
    return this.tx(async (c) => {
      const n = await this.run('DELETE FROM ek_roots WHERE fingerprint = ?', [fingerprint], c);
      await this.appendAuditIn(c, audit);
      return n === 1;
    });
  }

  async listEkAllow(): Promise<EkAllowRecord[]> {
    return (await this.q(`${EK_ALLOW_SELECT} ORDER BY a.imported_at, a.id`)).map(ekAllowFrom);
  }

  async getEkAllowByEk(ekId: string): Promise<EkAllowRecord | null> {
    const r = (await this.q(`${EK_ALLOW_SELECT} WHERE a.ek_id = ?`, [ekId]))[0];
    return r ? ekAllowFrom(r) : null;
  }

  async importEkAllow(entries: EkAllowRecord[], audit: (added: EkAllowRecord[]) => AuditInput): Promise<EkAllowRecord[]> {
    return this.tx(async (c) => {
      // one statement for the whole manifest; WITH ORDINALITY keeps the file's order, so of two
      // entries with one EK the first is kept (as one INSERT per entry does)
      const col = <K extends keyof EkAllowRecord>(k: K) => entries.map((e) => e[k]);
      const rows = await this.q(
        `INSERT INTO ek_allow (id, ek_id, zone, owner, name, source, imported_by, imported_at, token_id)
           SELECT id, ek_id, zone, owner, name, source, imported_by, imported_at, NULL
             FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::bigint[])
               WITH ORDINALITY AS e(id, ek_id, zone, owner, name, source, imported_by, imported_at, i)
             ORDER BY i
           ON CONFLICT (ek_id) DO NOTHING RETURNING id`,
        [col('id'), col('ekId'), col('zone'), col('owner'), col('name'), col('source'), col('importedBy'), col('importedAt')],
        c,
      );
      const ids = new Set(rows.map((r) => String(r.id)));
      const added = entries.filter((e) => ids.delete(e.id));
      await this.appendAuditIn(c, audit(added));
      return added;
    });
  }

  async removeEkAllow(id: string, now: number, audit: AuditInput): Promise<boolean> {
    return this.tx(async (c) => {
      const r = (await this.q('SELECT token_id FROM ek_allow WHERE id = ? FOR UPDATE', [id], c))[0];
      if (r && r.token_id !== null) {
        await this.run(
          'UPDATE tokens SET expires_at = ? WHERE id = ? AND used_at IS NULL AND expires_at > ?',
          [now, String(r.token_id), now],
          c,
        );
        await this.run('UPDATE enroll_sessions SET used_at = ? WHERE token_id = ? AND used_at IS NULL', [now, String(r.token_id)], c);
      }
      const n = await this.run('DELETE FROM ek_allow WHERE id = ?', [id], c);
      await this.appendAuditIn(c, audit);
      return n === 1;
    });
  }

  async claimEkAllow(p: { entryId: string; previousTokenId: string | null; token: TokenRecord }): Promise<boolean> {
    try {
      return await this.tx(async (c) => {
        const claimed = await this.run(
          'UPDATE ek_allow SET token_id = ? WHERE id = ? AND token_id IS NOT DISTINCT FROM ?::text',
          [p.token.id, p.entryId, p.previousTokenId],
          c,
        );
        if (claimed !== 1) throw new RaceLost();
        const t = p.token;
        await this.run(
          `INSERT INTO tokens (id, secret_hash, zone, owner, name, purpose, created_by, created_at, expires_at, ek_hash, bound_at, used_at, device_id)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)`,
          [t.id, t.secretHash, t.zone, t.owner, t.name, t.purpose, t.createdBy, t.createdAt, t.expiresAt, t.ekHash, t.boundAt],
          c,
        );
        return true;
      });
    } catch (e) {
      if (e instanceof RaceLost) return false;
      throw e;
    }
  }

  private async updateDeviceIn(c: Client, id: string, patch: DevicePatch, onlyIfStatus?: DeviceStatus[]): Promise<boolean> {
    const sets: string[] = [];
    const values: unknown[] = [];
    for (const [k, v] of Object.entries(patch) as [keyof DevicePatch, unknown][]) {
      if (v === undefined) continue;
      sets.push(`${DEVICE_COLUMNS[k]} = ?`);
      values.push(k === 'baseline' || k === 'claims' || k === 'lastPcrs' ? (v === null ? null : JSON.stringify(v)) : v);
    }
    if (sets.length === 0) return false;
    const guard = onlyIfStatus?.length ? ' AND status = ANY(?::text[])' : '';
    return (
      (await this.run(
        `UPDATE devices SET ${sets.join(', ')} WHERE id = ?${guard}`,
        [...values, id, ...(onlyIfStatus?.length ? [onlyIfStatus] : [])],
        c,
      )) > 0
    );
  }

  async updateDevice(id: string, patch: DevicePatch, audit?: AuditInput, onlyIfStatus?: DeviceStatus[]): Promise<boolean> {
    return this.tx(async (c) => {
      const changed = await this.updateDeviceIn(c, id, patch, onlyIfStatus);
      if (audit) await this.appendAuditIn(c, audit);
      return changed;
    });
  }

  async createNonce(n: NonceRecord, keep: number, audit: AuditInput, requester = ''): Promise<void> {
    await this.tx(async (c) => {
      await this.insertNonce(c, n, keep, `challenge:${requester}`);
      await this.run(
        `DELETE FROM nonces WHERE device_id = ? AND kind LIKE 'challenge%' AND used_at IS NULL AND value NOT IN
             (SELECT value FROM nonces WHERE device_id = ? AND kind LIKE 'challenge%' AND used_at IS NULL ORDER BY created_at DESC, value LIMIT ?)`,
        [n.deviceId, n.deviceId, CHALLENGES_PER_DEVICE],
        c,
      );
      await this.appendAuditIn(c, audit);
    });
  }

  async getNonce(value: string): Promise<NonceRecord | null> {
    const r = (await this.q('SELECT * FROM nonces WHERE value = ?', [value]))[0];
    return r ? nonceFrom(r) : null;
  }

  async spendNonce(value: string, now: number, audit?: AuditInput): Promise<boolean> {
    return this.tx(async (c) => {
      const ok = (await this.run('UPDATE nonces SET used_at = ? WHERE value = ? AND used_at IS NULL', [now, value], c)) === 1;
      if (audit) await this.appendAuditIn(c, audit);
      return ok;
    });
  }

  async renew(p: {
    nonce: string;
    now: number;
    deviceId: string;
    patch: DevicePatch;
    certificate: CertificateRecord;
    nextNonce: NonceRecord;
    keepNonces: number;
    audit: AuditInput;
  }): Promise<boolean> {
    try {
      return await this.tx(async (c) => {
        // the device row first (the order every writer locks in): a revoke that committed first
        // wins, one that comes later waits for this renewal and then revokes its certificate too
        const live = (await this.q(`SELECT status FROM devices WHERE id = ? FOR NO KEY UPDATE`, [p.deviceId], c))[0];
        if (!live || live.status !== 'active') throw new RaceLost();
        const spent = await this.run(
          `UPDATE nonces SET used_at = ? WHERE value = ? AND device_id = ? AND used_at IS NULL`,
          [p.now, p.nonce, p.deviceId],
          c,
        );
        if (spent !== 1) throw new RaceLost();
        await this.updateDeviceIn(c, p.deviceId, p.patch);
        await this.insertCertificate(c, p.certificate);
        await this.insertNonce(c, p.nextNonce, p.keepNonces);
        await this.appendAuditIn(c, p.audit);
        return true;
      });
    } catch (e) {
      if (e instanceof RaceLost) return false;
      throw e;
    }
  }

  async listCertificates(deviceId: string): Promise<CertificateRecord[]> {
    return (await this.q('SELECT * FROM certificates WHERE device_id = ? ORDER BY issued_at, serial', [deviceId])).map(certFrom);
  }

  async lastCertificate(deviceId: string): Promise<CertificateRecord | null> {
    const r = (await this.q('SELECT * FROM certificates WHERE device_id = ? ORDER BY not_after DESC LIMIT 1', [deviceId]))[0];
    return r ? certFrom(r) : null;
  }

  private async revokeLiveCertificatesIn(c: Client, deviceId: string, reason: RevokeReason, now: number): Promise<string[]> {
    return (
      await this.q(
        'UPDATE certificates SET revoked_at = ?, reason = ? WHERE device_id = ? AND revoked_at IS NULL AND not_after > ? RETURNING serial',
        [now, reason, deviceId, now],
        c,
      )
    )
      .map((r) => String(r.serial))
      .sort();
  }

  async endDevice(p: {
    deviceId: string;
    status: 'revoked' | 'retired';
    reason: RevokeReason;
    statusReason: string;
    now: number;
    audit: AuditInput;
  }): Promise<string[]> {
    return this.tx(async (c) => {
      await this.updateDeviceIn(c, p.deviceId, { status: p.status, statusReason: p.statusReason, statusChangedAt: p.now });
      const serials = await this.revokeLiveCertificatesIn(c, p.deviceId, p.reason, p.now);
      await this.run('UPDATE nonces SET used_at = ? WHERE device_id = ? AND used_at IS NULL', [p.now, p.deviceId], c);
      await this.appendAuditIn(c, { ...p.audit, details: { ...(p.audit.details ?? {}), serials } });
      return serials;
    });
  }

  async quarantineDevice(p: {
    deviceId: string;
    statusReason: string;
    reason: RevokeReason;
    now: number;
    patch: DevicePatch;
    audit: AuditInput;
  }): Promise<string[] | null> {
    return this.tx(async (c) => {
      const changed = await this.updateDeviceIn(
        c,
        p.deviceId,
        { ...p.patch, status: 'quarantined', statusReason: p.statusReason, statusChangedAt: p.now },
        ['active', 'quarantined'],
      );
      if (!changed) {
        await this.appendAuditIn(c, p.audit);
        return null;
      }
      const serials = await this.revokeLiveCertificatesIn(c, p.deviceId, p.reason, p.now);
      await this.appendAuditIn(c, { ...p.audit, details: { ...(p.audit.details ?? {}), serials } });
      return serials;
    });
  }

  async listRevokedUnexpired(now: number): Promise<CertificateRecord[]> {
    return (
      await this.q('SELECT * FROM certificates WHERE revoked_at IS NOT NULL AND not_after > ? ORDER BY revoked_at, serial', [now])
    ).map(certFrom);
  }

  async getBrokerMonitor(name: string): Promise<BrokerMonitorRecord | null> {
    const r = (await this.q('SELECT * FROM broker_monitors WHERE name = ? AND removed_at IS NULL', [name]))[0];
    return r ? monitorFrom(r) : null;
  }

  async listBrokerMonitors(): Promise<BrokerMonitorRecord[]> {
    return (await this.q('SELECT * FROM broker_monitors WHERE removed_at IS NULL ORDER BY name')).map(monitorFrom);
  }

  async addBrokerMonitor(m: BrokerMonitorRecord, audit: AuditInput): Promise<boolean> {
    return this.tx(async (c) => {
      // the partial unique index on live names decides between two instances adding one name
      const n = await this.run(
        `INSERT INTO broker_monitors (serial, name, common_name, spki_hash, not_before, not_after, created_by, created_at, removed_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (name) WHERE removed_at IS NULL DO NOTHING`,
        [m.serial, m.name, m.commonName, m.spkiHash, m.notBefore, m.notAfter, m.createdBy, m.createdAt],
        c,
      );
      if (n !== 1) return false;
      await this.appendAuditIn(c, audit);
      return true;
    });
  }

  async removeBrokerMonitor(name: string, now: number, audit: AuditInput): Promise<BrokerMonitorRecord | null> {
    return this.tx(async (c) => {
      const r = (
        await this.q('UPDATE broker_monitors SET removed_at = ? WHERE name = ? AND removed_at IS NULL RETURNING *', [now, name], c)
      )[0];
      await this.appendAuditIn(c, audit);
      return r ? monitorFrom(r) : null;
    });
  }

  async listRemovedMonitorsUnexpired(now: number): Promise<BrokerMonitorRecord[]> {
    return (
      await this.q('SELECT * FROM broker_monitors WHERE removed_at IS NOT NULL AND not_after > ? ORDER BY removed_at, serial', [now])
    ).map(monitorFrom);
  }

  async listDeviceIds(filter: DeviceFilter = {}): Promise<string[]> {
    const { where, args } = deviceWhere(filter, 'devices');
    return (await this.q(`SELECT id FROM devices${where} ORDER BY id`, args)).map((r) => String(r.id));
  }

  async pageDevicesWithLastCertificate(filter: DeviceFilter, page: DevicePageRequest): Promise<DeviceListing[]> {
    return this.listDevicesWithLastCertificate(filter, page);
  }

  async pageTokens(
    page: { after?: { time: number; id: string }; limit: number },
    filter: { zones?: string[]; createdBy?: string } = {},
  ): Promise<TokenRecord[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (page.after) {
      where.push('(created_at, id) > (?, ?)');
      args.push(page.after.time, page.after.id);
    }
    if (filter.zones) {
      where.push('zone = ANY(?::text[])');
      args.push(filter.zones);
    }
    if (filter.createdBy !== undefined) {
      where.push('created_by = ?');
      args.push(filter.createdBy);
    }
    const sql = `SELECT * FROM tokens${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id LIMIT ?`;
    return (await this.q(sql, [...args, page.limit])).map(tokenFrom);
  }

  async getUser(name: string): Promise<UserRecord | null> {
    const r = (await this.q('SELECT * FROM users WHERE name = ?', [name]))[0];
    return r ? userFrom(r) : null;
  }

  async getUserByTokenHash(tokenHash: Buffer): Promise<UserRecord | null> {
    const r = (await this.q('SELECT * FROM users WHERE token_hash = ?', [tokenHash]))[0];
    return r ? userFrom(r) : null;
  }

  async listUsers(): Promise<UserRecord[]> {
    return (await this.q('SELECT * FROM users ORDER BY name')).map(userFrom);
  }

  async createUser(u: UserRecord, audit: AuditInput | null): Promise<boolean> {
    return this.tx(async (c) => {
      const n = await this.run(
        `INSERT INTO users (name, role, zones, token_hash, created_by, created_at, expires_at, disabled_at, disabled_by, token_rotated_at, bootstrap)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING`,
        [
          u.name,
          u.role,
          u.zones === null ? null : JSON.stringify(u.zones),
          u.tokenHash,
          u.createdBy,
          u.createdAt,
          u.expiresAt,
          u.disabledAt,
          u.disabledBy,
          u.tokenRotatedAt,
          u.bootstrap ? 1 : 0,
        ],
        c,
      );
      if (n !== 1) return false;
      if (audit) await this.appendAuditIn(c, audit);
      return true;
    });
  }

  async updateUser(
    name: string,
    patch: Partial<Pick<UserRecord, 'tokenHash' | 'tokenRotatedAt' | 'disabledAt' | 'disabledBy' | 'role' | 'zones'>>,
    audit: AuditInput | null,
    opts: { keepAdminAt?: number } = {},
  ): Promise<boolean | 'last_admin'> {
    const cols = {
      tokenHash: 'token_hash',
      tokenRotatedAt: 'token_rotated_at',
      disabledAt: 'disabled_at',
      disabledBy: 'disabled_by',
      role: 'role',
      zones: 'zones',
    };
    const keys = (Object.keys(patch) as (keyof typeof cols)[]).filter((k) => patch[k] !== undefined);
    const value = (k: keyof typeof cols) => (k === 'zones' ? (patch.zones === null ? null : JSON.stringify(patch.zones)) : patch[k]);
    try {
      return await this.tx(async (c) => {
        // the count of admins left is read under the chain's lock, which every user change takes
        // before it writes: two admins demoting each other at once cannot both see one left
        if (opts.keepAdminAt !== undefined)
          await c.query({ name: 'e_audit_lock', text: 'SELECT pg_advisory_xact_lock($1)', values: [AUDIT_LOCK] });
        const changed =
          keys.length > 0 &&
          (await this.run(
            `UPDATE users SET ${keys.map((k) => `${cols[k]} = ?`).join(', ')} WHERE name = ?`,
            [...keys.map(value), name],
            c,
          )) > 0;
        if (changed && opts.keepAdminAt !== undefined) {
          const r = await c.query(
            `SELECT COUNT(*) AS n FROM users WHERE role = 'admin' AND disabled_at IS NULL AND (expires_at IS NULL OR expires_at > $1)`,
            [opts.keepAdminAt],
          );
          if (Number(r.rows[0].n) === 0) throw new LastAdmin();
        }
        if (changed && audit) await this.appendAuditIn(c, audit);
        return changed;
      });
    } catch (e) {
      if (e instanceof LastAdmin) return 'last_admin';
      throw e;
    }
  }

  async auditPruneLimit(before: number): Promise<number | null> {
    const r = (await this.q('SELECT MAX(seq) AS s FROM audit WHERE time < ? AND seq < (SELECT MAX(seq) FROM audit)', [before]))[0]!;
    return r.s === null ? null : Number(r.s);
  }

  async pruneAudit(p: {
    throughSeq: number;
    now: number;
    file: string;
    audit: AuditInput;
  }): Promise<{ rows: number; anchor: { seq: number; hash: string } }> {
    return this.tx(async (c) => {
      // under the chain's lock: no append runs between the anchor and the deletion
      await c.query({ name: 'e_audit_lock', text: 'SELECT pg_advisory_xact_lock($1)', values: [AUDIT_LOCK] });
      const last = (await this.q('SELECT seq, hash, time FROM audit WHERE seq = ?', [p.throughSeq], c))[0];
      if (!last) throw new Error(`audit row ${p.throughSeq} does not exist`);
      const anchorSeq = (await this.auditAnchorIn(c))?.seq ?? 0;
      const rows = await this.run('DELETE FROM audit WHERE seq > ? AND seq <= ?', [anchorSeq, p.throughSeq], c);
      await this.run(
        'INSERT INTO audit_checkpoint (seq, hash, time, pruned_at, rows, file) VALUES (?, ?, ?, ?, ?, ?)',
        [p.throughSeq, String(last.hash), Number(last.time), p.now, rows, p.file],
        c,
      );
      await this.appendAuditIn(c, p.audit);
      return { rows, anchor: { seq: p.throughSeq, hash: String(last.hash) } };
    });
  }

  async auditAnchor(): Promise<{ seq: number; hash: string } | null> {
    return this.auditAnchorIn();
  }

  async listExpiredCertificates(before: number, limit: number): Promise<CertificateRecord[]> {
    return (await this.q('SELECT * FROM certificates WHERE not_after < ? ORDER BY not_after, serial LIMIT ?', [before, limit])).map(
      certFrom,
    );
  }

  async deleteCertificates(serials: string[], before: number): Promise<number> {
    return this.tx(async (c) => this.run('DELETE FROM certificates WHERE serial = ANY(?::text[]) AND not_after < ?', [serials, before], c));
  }

  async appendAudit(a: AuditInput): Promise<AuditRow> {
    return this.tx((c) => this.appendAuditIn(c, a));
  }

  async listAudit(
    p: {
      afterSeq?: number;
      beforeSeq?: number;
      newestFirst?: boolean;
      limit?: number;
      deviceId?: string;
      actor?: string;
      zones?: string[];
      ownActor?: string;
    } = {},
  ): Promise<AuditRow[]> {
    const where = ['seq > ?'];
    const args: unknown[] = [p.afterSeq ?? 0];
    if (p.beforeSeq !== undefined) {
      where.push('seq < ?');
      args.push(p.beforeSeq);
    }
    if (p.deviceId) {
      where.push('device_id = ?');
      args.push(p.deviceId);
    }
    if (p.actor !== undefined) {
      where.push('actor = ?');
      args.push(p.actor);
    }
    if (p.zones !== undefined) {
      where.push(`(device_id IN (SELECT id FROM devices WHERE zone = ANY(?::text[])) OR actor = ?)`);
      args.push(p.zones, p.ownActor ?? '');
    }
    args.push(p.limit ?? 1000);
    const order = p.newestFirst ? 'DESC' : '';
    return (await this.q(`SELECT * FROM audit WHERE ${where.join(' AND ')} ORDER BY seq ${order} LIMIT ?`, args)).map(auditFrom);
  }

  /**
   * Walks the chain in pages of VERIFY_PAGE rows (bounded memory at any audit size), each page
   * verified from the last row of the one before as stored, exactly as one walk over all rows.
   */
  async verifyAudit(): Promise<AuditVerifyResult> {
    // one snapshot for the head, the anchor and every page: rows other instances append
    // meanwhile are not seen, so they cannot look like rows beyond the recorded head
    // (https://www.postgresql.org/docs/15/transaction-iso.html#XACT-REPEATABLE-READ)
    const c = await this.connect();
    let broken = false;
    try {
      await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const headText = (await this.q('SELECT value FROM meta WHERE key = ?', ['audit_head'], c))[0]?.value;
      const head = headText ? (JSON.parse(String(headText)) as { seq: number; hash: string }) : null;
      const anchor = await this.auditAnchorIn(c);
      let from: ChainAnchor | null = anchor;
      let rows = 0;
      const problems: AuditProblem[] = [];
      let omitted = 0;
      for (;;) {
        const page = (await this.q('SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?', [from?.seq ?? 0, VERIFY_PAGE], c)).map(
          auditFrom,
        );
        const lastPage = page.length < VERIFY_PAGE;
        const r = verifyChain(page, lastPage ? head : null, from);
        rows += r.rows;
        if (!r.ok) {
          for (const x of r.problems ?? (r.problem ? [r.problem] : [])) {
            if (problems.length < VERIFY_PROBLEMS_MAX) problems.push(x);
            else omitted++;
          }
          omitted += r.problemsOmitted ?? 0;
        }
        if (lastPage) break;
        const last = page.at(-1)!;
        from = { seq: last.seq, hash: last.hash };
      }
      await c.query('COMMIT');
      const fromSeq = anchor && anchor.seq > 0 ? { from: anchor.seq + 1 } : {};
      if (problems.length === 0) return { ok: true, rows, ...fromSeq };
      return { ok: false, rows, ...fromSeq, problem: problems[0]!, problems, ...(omitted > 0 ? { problemsOmitted: omitted } : {}) };
    } catch (e) {
      await c.query('ROLLBACK').catch(() => {
        broken = true;
      });
      throw pgFailure(e);
    } finally {
      c.release(broken);
    }
  }

  async getAlertState(): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const r of await this.q('SELECT state_key, value FROM alert_state')) out[String(r.state_key)] = String(r.value);
    return out;
  }

  async commitAlerts(p: {
    occurrences: AlertOccurrence[];
    state: Record<string, string | null>;
    delivery?: (opened: AlertRecord) => AlertDeliveryRecord | null;
  }): Promise<AlertRecord[]> {
    return this.tx(async (c) => {
      const opened: AlertRecord[] = [];
      for (const o of p.occurrences) {
        // the open alert of this rule and key, locked: a second instance bumps it after this commit
        const open = (
          await this.q(`SELECT id FROM alerts WHERE rule = ? AND alert_key = ? AND state = 'open' FOR UPDATE`, [o.rule, o.key], c)
        )[0];
        if (open) {
          if (o.bumpBy > 0)
            await this.run(
              'UPDATE alerts SET count = count + ?, last_seen = GREATEST(last_seen, ?) WHERE id = ?',
              [o.bumpBy, o.at, open.id],
              c,
            );
          continue;
        }
        if (!o.fire) continue;
        const inserted = await this.run(
          `INSERT INTO alerts (id, rule, severity, alert_key, device_id, zone, address, summary, first_seen, last_seen, count, state)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open') ON CONFLICT (rule, alert_key) WHERE state = 'open' DO NOTHING`,
          [o.id, o.rule, o.severity, o.key, o.deviceId, o.zone, o.address, o.summary, o.at, o.at, o.openCount],
          c,
        );
        // another instance opened it meanwhile: this occurrence counts on that one
        if (inserted === 0) {
          await this.run(
            `UPDATE alerts SET count = count + ?, last_seen = GREATEST(last_seen, ?) WHERE rule = ? AND alert_key = ? AND state = 'open'`,
            [o.openCount, o.at, o.rule, o.key],
            c,
          );
          continue;
        }
        const a = alertFrom((await this.q('SELECT * FROM alerts WHERE id = ?', [o.id], c))[0]!);
        opened.push(a);
        const d = p.delivery?.(a);
        if (d)
          await this.run(
            `INSERT INTO alert_deliveries (id, alert_id, body, state, attempts, next_at, last_status, last_error, created_at, delivered_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
            [d.id, d.alertId, d.body, d.state, d.attempts, d.nextAt, d.lastStatus, d.lastError, d.createdAt, d.deliveredAt],
            c,
          );
      }
      for (const [k, v] of Object.entries(p.state)) {
        if (v === null) await this.run('DELETE FROM alert_state WHERE state_key = ?', [k], c);
        else
          await this.run(
            'INSERT INTO alert_state (state_key, value) VALUES (?, ?) ON CONFLICT (state_key) DO UPDATE SET value = excluded.value',
            [k, v],
            c,
          );
      }
      return opened;
    });
  }

  async getAlert(id: string): Promise<AlertRecord | null> {
    const r = (await this.q('SELECT * FROM alerts WHERE id = ?', [id]))[0];
    return r ? alertFrom(r) : null;
  }

  async listAlerts(f: AlertFilter, page: { after?: { time: number; id: string }; limit: number }): Promise<AlertRecord[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (f.state) {
      where.push('state = ?');
      args.push(f.state);
    }
    if (f.deviceId) {
      where.push('device_id = ?');
      args.push(f.deviceId);
    }
    if (f.rule) {
      where.push('rule = ?');
      args.push(f.rule);
    }
    if (f.key !== undefined) {
      where.push('alert_key = ?');
      args.push(f.key);
    }
    if (f.zones) {
      where.push('zone = ANY(?)');
      args.push(f.zones);
    }
    if (page.after) {
      where.push('(first_seen < ? OR (first_seen = ? AND id < ?))');
      args.push(page.after.time, page.after.time, page.after.id);
    }
    const sql = `SELECT * FROM alerts${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY first_seen DESC, id DESC LIMIT ?`;
    return (await this.q(sql, [...args, page.limit])).map(alertFrom);
  }

  async countOpenAlerts(): Promise<{ rule: string; severity: AlertSeverity; count: number }[]> {
    return (await this.q(`SELECT rule, severity, COUNT(*) AS n FROM alerts WHERE state = 'open' GROUP BY rule, severity`)).map((r) => ({
      rule: String(r.rule),
      severity: String(r.severity) as AlertSeverity,
      count: Number(r.n),
    }));
  }

  async acknowledgeAlert(id: string, by: string, at: number, audit: AuditInput): Promise<AlertRecord | null> {
    return this.tx(async (c) => {
      const changed = await this.run(
        `UPDATE alerts SET state = 'acknowledged', acknowledged_by = ?, acknowledged_at = ? WHERE id = ? AND state = 'open'`,
        [by, at, id],
        c,
      );
      if (changed === 0) return null;
      await this.appendAuditIn(c, audit);
      return alertFrom((await this.q('SELECT * FROM alerts WHERE id = ?', [id], c))[0]!);
    });
  }

  async dueAlertDeliveries(now: number, limit: number): Promise<AlertDeliveryRecord[]> {
    return (
      await this.q(`SELECT * FROM alert_deliveries WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, id LIMIT ?`, [now, limit])
    ).map(deliveryFrom);
  }

  async nextAlertDelivery(): Promise<number | null> {
    const r = (await this.q(`SELECT MIN(next_at) AS t FROM alert_deliveries WHERE state = 'pending'`))[0]!;
    return r.t === null || r.t === undefined ? null : Number(r.t);
  }

  async updateAlertDelivery(
    id: string,
    patch: Partial<Pick<AlertDeliveryRecord, 'state' | 'attempts' | 'nextAt' | 'lastStatus' | 'lastError' | 'deliveredAt'>>,
  ): Promise<void> {
    const cols = {
      state: 'state',
      attempts: 'attempts',
      nextAt: 'next_at',
      lastStatus: 'last_status',
      lastError: 'last_error',
      deliveredAt: 'delivered_at',
    } as const;
    const keys = (Object.keys(patch) as (keyof typeof cols)[]).filter((k) => patch[k] !== undefined);
    if (keys.length === 0) return;
    await this.q(`UPDATE alert_deliveries SET ${keys.map((k) => `${cols[k]} = ?`).join(', ')} WHERE id = ?`, [
      ...keys.map((k) => patch[k]),
      id,
    ]);
  }

  async listAlertDeliveries(p: { alertId?: string; limit: number }): Promise<AlertDeliveryRecord[]> {
    const where = p.alertId ? ' WHERE alert_id = ?' : '';
    const args: unknown[] = p.alertId ? [p.alertId] : [];
    return (await this.q(`SELECT * FROM alert_deliveries${where} ORDER BY created_at DESC, id DESC LIMIT ?`, [...args, p.limit])).map(
      deliveryFrom,
    );
  }
}

const VERIFY_PAGE = 5000;
