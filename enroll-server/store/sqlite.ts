import Database from 'better-sqlite3';
import { chmodSync, closeSync, existsSync, fsync, open as openFile, openSync } from 'node:fs';
import type { AuditRow, AuditVerifyResult, DeviceStatus, RevokeReason } from '../../protocol/api.js';
import { auditHash, GENESIS_HASH, storableDetails, storableText, verifyChain, type ChainAnchor } from './audit-chain.js';
import { loadMigrations, migrate } from './migrate.js';
import type {
  AlertDeliveryRecord,
  AlertFilter,
  AlertOccurrence,
  AlertRecord,
  AlertSeverity,
  AuditInput,
  BrokerMonitorRecord,
  UserRecord,
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
} from './store.js';

export type Row = Record<string, unknown>;

const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));
const text = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));

export function tokenFrom(r: Row): TokenRecord {
  return {
    id: String(r.id),
    secretHash: r.secret_hash as Buffer,
    zone: String(r.zone),
    owner: String(r.owner),
    name: text(r.name),
    purpose: text(r.purpose),
    createdBy: String(r.created_by),
    createdAt: Number(r.created_at),
    expiresAt: Number(r.expires_at),
    ekHash: text(r.ek_hash),
    boundAt: num(r.bound_at),
    usedAt: num(r.used_at),
    deviceId: text(r.device_id),
  };
}

export function sessionFrom(r: Row): EnrollSessionRecord {
  return {
    id: String(r.id),
    tokenId: String(r.token_id),
    ekHash: String(r.ek_hash),
    ekPub: (r.ek_pub as Buffer | null | undefined) ?? null,
    ekVerified: r.ek_verified === null || r.ek_verified === undefined ? null : Number(r.ek_verified) === 1,
    ekIssuer: text(r.ek_issuer),
    akPub: r.ak_pub as Buffer,
    secretHash: r.secret_hash as Buffer,
    nonce: r.nonce as Buffer,
    ip: text(r.ip),
    createdAt: Number(r.created_at),
    expiresAt: Number(r.expires_at),
    usedAt: num(r.used_at),
  };
}

export function deviceFrom(r: Row): DeviceRecord {
  return {
    id: String(r.id),
    zone: String(r.zone),
    owner: String(r.owner),
    name: text(r.name),
    purpose: text(r.purpose),
    status: String(r.status) as DeviceStatus,
    statusReason: text(r.status_reason),
    statusChangedAt: num(r.status_changed_at),
    ekHash: String(r.ek_hash),
    ekLegacy: Number(r.ek_legacy ?? 0) === 1,
    ekPub: (r.ek_pub as Buffer | null | undefined) ?? null,
    ekVerified: r.ek_verified === null || r.ek_verified === undefined ? null : Number(r.ek_verified) === 1,
    ekIssuer: text(r.ek_issuer),
    akPub: r.ak_pub as Buffer,
    akName: text(r.ak_name),
    baseline: r.baseline ? (JSON.parse(String(r.baseline)) as Record<string, string>) : null,
    claims: r.claims ? JSON.parse(String(r.claims)) : null,
    eventLog: (r.event_log as Buffer | null | undefined) ?? null,
    baselineEventLog: (r.baseline_event_log as Buffer | null | undefined) ?? null,
    baselineWindowUntil: num(r.baseline_window_until),
    baselineApprovalId: text(r.baseline_approval_id),
    lastPcrs: r.last_pcrs ? (JSON.parse(String(r.last_pcrs)) as Record<string, string>) : null,
    lastQuoteAt: num(r.last_quote_at),
    enrolledBy: String(r.enrolled_by),
    enrolledAt: Number(r.enrolled_at),
    retireBy: num(r.retire_by),
    lastSeen: num(r.last_seen),
    lastIp: text(r.last_ip),
  };
}

export function certFrom(r: Row): CertificateRecord {
  return {
    serial: String(r.serial),
    deviceId: String(r.device_id),
    notBefore: Number(r.not_before),
    notAfter: Number(r.not_after),
    spkiHash: String(r.spki_hash),
    issuedAt: Number(r.issued_at),
    revokedAt: num(r.revoked_at),
    reason: text(r.reason) as RevokeReason | null,
  };
}

export function monitorFrom(r: Row): BrokerMonitorRecord {
  return {
    serial: String(r.serial),
    name: String(r.name),
    commonName: String(r.common_name),
    spkiHash: String(r.spki_hash),
    notBefore: Number(r.not_before),
    notAfter: Number(r.not_after),
    createdBy: String(r.created_by),
    createdAt: Number(r.created_at),
    removedAt: num(r.removed_at),
  };
}

export function userFrom(r: Row): UserRecord {
  return {
    name: String(r.name),
    role: String(r.role) as UserRecord['role'],
    zones: r.zones === null || r.zones === undefined ? null : (JSON.parse(String(r.zones)) as string[]),
    tokenHash: r.token_hash as Buffer,
    createdBy: String(r.created_by),
    createdAt: Number(r.created_at),
    expiresAt: num(r.expires_at),
    disabledAt: num(r.disabled_at),
    disabledBy: text(r.disabled_by),
    tokenRotatedAt: num(r.token_rotated_at),
    bootstrap: Number(r.bootstrap) === 1,
  };
}

export function alertFrom(r: Row): AlertRecord {
  return {
    id: String(r.id),
    rule: String(r.rule),
    severity: String(r.severity) as AlertSeverity,
    key: String(r.alert_key),
    deviceId: text(r.device_id),
    zone: text(r.zone),
    address: text(r.address),
    summary: String(r.summary),
    firstSeen: Number(r.first_seen),
    lastSeen: Number(r.last_seen),
    count: Number(r.count),
    state: String(r.state) as AlertRecord['state'],
    acknowledgedBy: text(r.acknowledged_by),
    acknowledgedAt: num(r.acknowledged_at),
  };
}

export function deliveryFrom(r: Row): AlertDeliveryRecord {
  return {
    id: String(r.id),
    alertId: String(r.alert_id),
    body: String(r.body),
    state: String(r.state) as AlertDeliveryRecord['state'],
    attempts: Number(r.attempts),
    nextAt: Number(r.next_at),
    lastStatus: num(r.last_status),
    lastError: text(r.last_error),
    createdAt: Number(r.created_at),
    deliveredAt: num(r.delivered_at),
  };
}

export function nonceFrom(r: Row): NonceRecord {
  return {
    value: String(r.value),
    deviceId: String(r.device_id),
    createdAt: Number(r.created_at),
    expiresAt: Number(r.expires_at),
    usedAt: num(r.used_at),
  };
}

export function auditFrom(r: Row): AuditRow {
  return {
    seq: Number(r.seq),
    time: new Date(Number(r.time)).toISOString(),
    actor: String(r.actor),
    event: String(r.event),
    deviceId: text(r.device_id),
    ip: text(r.ip),
    outcome: String(r.outcome) as 'ok' | 'fail',
    reason: text(r.reason),
    details: r.details ? JSON.parse(String(r.details)) : null,
    prevHash: String(r.prev_hash),
    hash: String(r.hash),
  };
}

/** WHERE clause of a device listing (`t` is the devices table's name or alias). */
function deviceWhere(f: DeviceFilter, t: string): { where: string; args: unknown[] } {
  const where: string[] = [];
  const args: unknown[] = [];
  if (f.status) {
    if (f.status.length === 0) where.push('1 = 0');
    else {
      where.push(`${t}.status IN (${f.status.map(() => '?').join(', ')})`);
      args.push(...f.status);
    }
  }
  if (f.zone !== undefined) {
    where.push(`${t}.zone = ?`);
    args.push(f.zone);
  }
  if (f.zones !== undefined) {
    where.push(f.zones.length === 0 ? '1 = 0' : `${t}.zone IN (${f.zones.map(() => '?').join(', ')})`);
    args.push(...f.zones);
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
    // LIKE with the caller's text as a literal (SQLite: LIKE is case-insensitive for ASCII)
    const like = `%${f.search.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    where.push(
      `(${t}.id LIKE ? ESCAPE '\\' OR ${t}.name LIKE ? ESCAPE '\\' OR ${t}.owner LIKE ? ESCAPE '\\' OR ${t}.last_ip LIKE ? ESCAPE '\\')`,
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

/**
 * ORDER BY and keyset condition of a device page (`t`: the devices alias). The key expressions
 * are those of the indexes in migration 012 (an expression index is used only for the same
 * expression: https://www.sqlite.org/expridx.html); `collateC` makes PostgreSQL compare the name
 * in byte order like SQLite.
 */
export function deviceSortSql(
  page: DevicePageRequest,
  t: string,
  collateC = false,
): { orderBy: string; after: { where: string; args: unknown[] } | null } {
  const sort = page.sort ?? 'enrolled';
  const desc = page.order === 'desc';
  const key = {
    enrolled: `${t}.enrolled_at`,
    name: `COALESCE(${t}.name, '')${collateC ? ' COLLATE "C"' : ''}`,
    lastSeen: `COALESCE(${t}.last_seen, 0)`,
    expiry: `${t}.cert_not_after`,
  }[sort];
  const dir = desc ? ' DESC' : '';
  const orderBy = ` ORDER BY ${key}${dir}, ${t}.id${dir}`;
  if (!page.after) return { orderBy, after: null };
  const value = 'key' in page.after ? page.after.key : page.after.time;
  // the row value alone is not a range on an expression index for SQLite (the plan SCANs it);
  // the redundant bound on the key makes it a SEARCH
  const cmp = desc ? '<' : '>';
  return { orderBy, after: { where: `${key} ${cmp}= ? AND (${key}, ${t}.id) ${cmp} (?, ?)`, args: [value, value, page.after.id] } };
}

export const DEVICE_COLUMNS: Record<keyof DevicePatch, string> = {
  status: 'status',
  statusReason: 'status_reason',
  statusChangedAt: 'status_changed_at',
  baseline: 'baseline',
  claims: 'claims',
  baselineWindowUntil: 'baseline_window_until',
  baselineApprovalId: 'baseline_approval_id',
  lastSeen: 'last_seen',
  lastIp: 'last_ip',
  eventLog: 'event_log',
  baselineEventLog: 'baseline_event_log',
  lastPcrs: 'last_pcrs',
  lastQuoteAt: 'last_quote_at',
};

/** SQLite store: WAL, file 0600, write transactions BEGIN IMMEDIATE (serialises the audit chain). */
/**
 * Live challenge nonces kept per device across all requesting networks: displacing the nonce a
 * device asked for takes this many distinct networks asking within the device's quote time.
 */
export const CHALLENGES_PER_DEVICE = 256;

export class SqliteStore implements Store {
  readonly db: Database.Database;

  constructor(readonly file: string) {
    const fresh = file !== ':memory:' && !existsSync(file);
    this.db = new Database(file);
    if (file !== ':memory:') {
      this.db.pragma('journal_mode = WAL');
      if (fresh) chmodSync(file, 0o600);
    }
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    // FULL: the WAL is synced at every commit, before the answer that reports it is sent. With
    // NORMAL "a transaction committed in WAL mode … might roll back following a power loss or
    // system crash" (https://www.sqlite.org/pragma.html#pragma_synchronous): a certificate a
    // device received would lose its row (so it could not be revoked by serial) and its nonce
    // would be live again
    this.db.pragma('synchronous = FULL');
    try {
      this.schema = migrate(this.db, loadMigrations());
    } catch (e) {
      this.db.close();
      throw e;
    }
    // the WAL's descriptor before the first write of this store (see walFd)
    if (file !== ':memory:') {
      try {
        this.walFd = openSync(`${file}-wal`, 'r');
      } catch {
        // no WAL file yet: opened at the first sync
      }
    }
  }

  /** The schema version the database was at when opened, and the one it is at now. */
  readonly schema: { from: number; to: number };

  /**
   * Prepared statements, each prepared once (preparing costs more than running most of them).
   * Statements whose mode changes (pluck) or that are iterated while other calls run are prepared
   * where they are used. Bounded: SQL built from filters has a few shapes, never one per request.
   */
  private readonly statements = new Map<string, Database.Statement>();
  private q(sql: string): Database.Statement {
    let s = this.statements.get(sql);
    if (!s) {
      if (this.statements.size >= 512) this.statements.clear();
      s = this.db.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  private tx<T>(fn: () => T): T {
    return this.autocommit(() => this.db.transaction(fn).immediate());
  }

  /**
   * An I/O error that SQLite saw itself (SQLITE_IOERR and its extended codes, e.g. IOERR_FSYNC on
   * a FULL commit or a checkpoint, https://www.sqlite.org/rescode.html#ioerr) puts the store in the
   * same state as a failed WAL fsync of ours: every later write is refused. (Linux reports a
   * writeback error to one fsync only, so our next fsync of the WAL could succeed over lost pages.)
   */
  private noteIoError(e: unknown): void {
    const code = (e as { code?: unknown } | null)?.code;
    if (typeof code === 'string' && code.startsWith('SQLITE_IOERR') && !this.walFailure) {
      this.walFailure = new Error(`the database reported an I/O error (${code}); restart the server`);
    }
  }

  /**
   * Throws once a WAL fsync has failed: after fsync(2) reports an error the kernel may have
   * dropped the unsynced pages (https://www.postgresql.org/docs/15/runtime-config-error-handling.html#GUC-DATA-SYNC-RETRY
   * explains the same hazard), so a later write that syncs fine could make durable a log with a
   * hole in it. Every write, on the hot path or not, is refused until the server restarts.
   */
  private writable(): void {
    if (this.walFailure) throw this.walFailure;
  }

  /** A write that commits on its own (one statement, or tx()'s transaction): refused after a storage failure, its I/O error noted. */
  private autocommit<T>(fn: () => T): T {
    this.writable();
    try {
      return fn();
    } catch (e) {
      this.noteIoError(e);
      throw e;
    }
  }

  /**
   * Group commit for the request hot path (renewals, enrollments, challenges): the writes asked
   * for in one turn of the event loop run in one transaction, each in its own savepoint (so one
   * that throws is rolled back alone), and one commit makes them all durable. The order of the
   * writes (and of their audit rows) is the order they were asked for.
   *
   * Durability as with synchronous = FULL, without the fsync on the event loop: the group commits
   * with synchronous = NORMAL (in WAL mode the commit then writes the WAL without syncing it,
   * https://www.sqlite.org/pragma.html#pragma_synchronous), and the WAL file is fsync'd in libuv's
   * thread pool before any of the group's promises settle: nothing is answered before it is on
   * disk. Checkpoints are unchanged (NORMAL syncs the WAL before each checkpoint and the database
   * after it, https://www.sqlite.org/wal.html#performance_considerations), so frames not yet synced
   * by us are never copied into the database unsynced. While one fsync runs, the next groups commit
   * and share the next fsync (the busier the server, the bigger the groups). A concurrent request
   * may read a committed write before its fsync returns; a power cut in that window loses the write
   * and, at most, an answer given from it (e.g. nonce_used for a nonce whose spend was lost: the
   * device asks for a new challenge). Every other transaction keeps synchronous = FULL.
   */
  private group: { fn: () => unknown; resolve: (v: unknown) => void; reject: (e: unknown) => void }[] = [];
  private groupScheduled = false;
  private readonly savepoint = (fn: () => unknown) => this.db.transaction(fn)();

  private groupTx<T>(fn: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.walFailure) return reject(this.walFailure);
      this.group.push({ fn, resolve: resolve as (v: unknown) => void, reject });
      if (!this.groupScheduled) {
        this.groupScheduled = true;
        setImmediate(() => this.commitGroup());
      }
    });
  }

  private commitGroup(): void {
    this.groupScheduled = false;
    const jobs = this.group;
    this.group = [];
    if (jobs.length === 0) return;
    if (!this.db.open) {
      for (const j of jobs) j.reject(new Error('the database connection is not open'));
      return;
    }
    if (this.walFailure) {
      for (const j of jobs) j.reject(this.walFailure);
      return;
    }
    const results: ({ ok: true; value: unknown } | { ok: false; error: unknown })[] = [];
    const deferSync = this.file !== ':memory:';
    try {
      if (deferSync) this.q('PRAGMA synchronous = NORMAL').run();
      if (jobs.length === 1) {
        try {
          results.push({ ok: true, value: this.tx(jobs[0]!.fn) });
        } catch (error) {
          results.push({ ok: false, error });
        }
      } else {
        this.tx(() => {
          for (const j of jobs) {
            try {
              results.push({ ok: true, value: this.savepoint(j.fn) });
            } catch (error) {
              // SQLite may roll the whole transaction back on some errors (SQLITE_FULL, SQLITE_IOERR,
              // SQLITE_NOMEM, https://www.sqlite.org/lang_transaction.html "Response To Errors Within
              // A Transaction"): the members before this one are gone, and the next ones would run in
              // transactions of their own. The whole group fails with this error.
              // An I/O error that left the transaction open fails it too: nothing more is written
              // after it, and nothing of the group is committed (its callers are all refused).
              this.noteIoError(error);
              if (!this.db.inTransaction || this.walFailure) throw error;
              results.push({ ok: false, error });
            }
          }
        });
      }
    } catch (e) {
      // the commit itself failed (e.g. disk full): none of the group was written
      for (const j of jobs) j.reject(e);
      return;
    } finally {
      try {
        if (deferSync) this.q('PRAGMA synchronous = FULL').run();
      } catch (e) {
        // every later commit would go unsynced: refuse them all (the group's answers wait for the
        // WAL sync, which now fails them)
        this.walFailure ??= new Error(`the database's synchronous mode could not be restored (${String(e)}); restart the server`);
      }
    }
    const settle = () =>
      jobs.forEach((j, i) => {
        const r = results[i]!;
        if (r.ok) j.resolve(r.value);
        else j.reject(r.error);
      });
    if (!deferSync) return settle();
    this.syncWal().then(settle, (e: unknown) =>
      // a member that failed on its own keeps its own error; the others were not made durable
      jobs.forEach((j, i) => {
        const r = results[i]!;
        j.reject(r.ok ? e : r.error);
      }),
    );
  }

  /** fsync of the WAL file in the thread pool; calls made while one runs share the next one. */
  private walSyncRunning = false;
  private walWaiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  /** Set when an fsync failed: the kernel may have dropped the unsynced pages, so no later sync can be trusted to cover them, and every later hot-path write is refused (restart the server). */
  private walFailure: Error | null = null;
  /** The fsync used (a test replaces it to simulate a failing disk). */
  walFsync: (fd: number, cb: (err: NodeJS.ErrnoException | null) => void) => void = fsync;

  private syncWal(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.walWaiters.push({ resolve, reject });
      if (!this.walSyncRunning) this.runWalSync();
    });
  }

  private runWalSync(): void {
    this.walSyncRunning = true;
    const waiters = this.walWaiters;
    this.walWaiters = [];
    const done = (err: NodeJS.ErrnoException | null) => {
      if (err && !this.walFailure) {
        this.walFailure = new Error(
          `the database's write-ahead log could not be synced to disk (${err.code ?? err.message}); restart the server`,
        );
      }
      for (const w of waiters) {
        if (this.walFailure) w.reject(this.walFailure);
        else w.resolve();
      }
      if (this.walWaiters.length > 0) this.runWalSync();
      else this.walSyncRunning = false;
    };
    if (this.walFailure) return done(null);
    if (this.walFd !== null) return this.walFsync(this.walFd, done);
    openFile(`${this.file}-wal`, 'r', (oerr, fd) => {
      // no WAL file yet: nothing was written since the last connection closed
      if (oerr?.code === 'ENOENT') return done(null);
      if (oerr) return done(oerr);
      this.walFd = fd;
      this.walFsync(fd, done);
    });
  }

  /**
   * One descriptor of the WAL file for the store's life (SQLite keeps the same file, reset in
   * place after checkpoints, while a connection is open). Linux reports a writeback error to every
   * descriptor that was open when it happened, once each, but not to one opened after another
   * descriptor has seen it (errseq, https://www.kernel.org/doc/html/latest/filesystems/vfs.html):
   * an automatic checkpoint's fsync inside SQLite can see the error and ignore it, and a
   * descriptor opened per sync would then report success over the lost pages.
   */
  private walFd: number | null = null;

  /** Resolves once every write asked for so far is committed and synced. */
  private async flushGroups(): Promise<void> {
    if (this.group.length > 0) this.commitGroup();
    if (this.walSyncRunning) await this.syncWal().catch(() => {});
  }

  /**
   * Appends inside the caller's transaction. Every text goes through storableText first (well
   * formed, no NUL, bounded), the hash is taken over exactly those values, and the row read back
   * from SQLite must hash the same: a value SQLite would store differently from the one hashed
   * fails this append instead of breaking the chain for good.
   */
  private appendAuditSync(a: AuditInput): AuditRow {
    const last = this.q('SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1').get() as Row | undefined;
    const anchor = last ? null : this.auditAnchorSync();
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
    this.q(
      `INSERT INTO audit (seq, time, actor, event, device_id, ip, outcome, reason, details, prev_hash, hash)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
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
    );
    const stored = auditFrom(this.q('SELECT * FROM audit WHERE seq = ?').get(row.seq) as Row);
    if (auditHash(stored) !== hash) throw new Error(`audit row ${row.seq} would not read back as hashed`);
    this.setMetaSync('audit_head', JSON.stringify({ seq: row.seq, hash }));
    return { ...row, hash };
  }

  /** The newest retention checkpoint: the last pruned row, where the remaining chain starts. */
  private auditAnchorSync(): ChainAnchor | null {
    const r = this.q('SELECT seq, hash FROM audit_checkpoint ORDER BY seq DESC LIMIT 1').get() as Row | undefined;
    return r ? { seq: Number(r.seq), hash: String(r.hash) } : null;
  }

  private setMetaSync(key: string, value: string): void {
    this.q('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  async close(): Promise<void> {
    // writes already asked for are committed and synced (or refused) before the database closes
    await this.flushGroups();
    if (this.db.open) this.db.close();
    if (this.walFd !== null) {
      closeSync(this.walFd);
      this.walFd = null;
    }
  }

  async getMeta(key: string): Promise<string | null> {
    const r = this.q('SELECT value FROM meta WHERE key = ?').get(key) as Row | undefined;
    return r ? String(r.value) : null;
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.autocommit(() => this.setMetaSync(key, value));
  }

  async nextCrlNumbers(count: number): Promise<bigint> {
    // one statement: SQLite serialises writers, so two stores on one file never read the same value
    const r = this.autocommit(
      () =>
        this.q(
          `INSERT INTO meta (key, value) VALUES ('crl_number', CAST(? AS TEXT))
       ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(meta.value AS INTEGER) + ? AS TEXT) RETURNING value`,
        ).get(BigInt(count), BigInt(count)) as Row,
    );
    return BigInt(String(r.value)) - BigInt(count) + 1n;
  }

  async createToken(t: TokenRecord, audit: AuditInput): Promise<void> {
    this.tx(() => {
      this.q(
        `INSERT INTO tokens (id, secret_hash, zone, owner, name, purpose, created_by, created_at, expires_at, ek_hash, bound_at, used_at, device_id)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL)`,
      ).run(t.id, t.secretHash, t.zone, t.owner, t.name, t.purpose, t.createdBy, t.createdAt, t.expiresAt);
      this.appendAuditSync(audit);
    });
  }

  async getToken(id: string): Promise<TokenRecord | null> {
    const r = this.q('SELECT * FROM tokens WHERE id = ?').get(id) as Row | undefined;
    return r ? tokenFrom(r) : null;
  }

  async expireToken(id: string, at: number, audit: AuditInput): Promise<boolean> {
    return this.tx(() => {
      const changed =
        this.q('UPDATE tokens SET expires_at = ? WHERE id = ? AND used_at IS NULL AND expires_at > ?').run(at, id, at).changes > 0;
      if (changed) this.appendAuditSync(audit);
      return changed;
    });
  }

  async listTokens(): Promise<TokenRecord[]> {
    return (this.q('SELECT * FROM tokens ORDER BY created_at').all() as Row[]).map(tokenFrom);
  }

  async startEnrollment(p: {
    tokenId: string;
    ekHash: string;
    now: number;
    session: EnrollSessionRecord;
    audit: AuditInput;
    keepOtherSessions?: boolean;
    extendTokenUntil?: number;
  }) {
    return this.groupTx(() => {
      const bound = this.q(
        `UPDATE tokens SET ek_hash = ?, bound_at = COALESCE(bound_at, ?), expires_at = MAX(expires_at, ?)
           WHERE id = ? AND used_at IS NULL AND expires_at > ? AND (ek_hash IS NULL OR ek_hash = ?)`,
      ).run(p.ekHash, p.now, p.extendTokenUntil ?? 0, p.tokenId, p.now, p.ekHash);
      if (bound.changes !== 1) {
        const t = this.q('SELECT * FROM tokens WHERE id = ?').get(p.tokenId) as Row | undefined;
        if (!t) return 'missing' as const;
        const tok = tokenFrom(t);
        if (tok.usedAt !== null) return 'used' as const;
        if (tok.expiresAt <= p.now) return 'expired' as const;
        return 'bound_other' as const;
      }
      if (!p.keepOtherSessions)
        this.q('UPDATE enroll_sessions SET used_at = ? WHERE token_id = ? AND used_at IS NULL').run(p.now, p.tokenId);
      const s = p.session;
      this.q(
        `INSERT INTO enroll_sessions (id, token_id, ek_hash, ak_pub, secret_hash, nonce, ip, created_at, expires_at, used_at, ek_pub, ek_verified, ek_issuer)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)`,
      ).run(
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
      );
      this.appendAuditSync(p.audit);
      return 'ok' as const;
    });
  }

  async getSession(id: string): Promise<EnrollSessionRecord | null> {
    const r = this.q('SELECT * FROM enroll_sessions WHERE id = ?').get(id) as Row | undefined;
    return r ? sessionFrom(r) : null;
  }

  private spendTokenAndSession(tokenId: string, sessionId: string, now: number, deviceId: string | null): boolean {
    const t = this.q('UPDATE tokens SET used_at = ?, device_id = ? WHERE id = ? AND used_at IS NULL').run(now, deviceId, tokenId);
    const s = this.q('UPDATE enroll_sessions SET used_at = ? WHERE id = ? AND used_at IS NULL').run(now, sessionId);
    return t.changes === 1 && s.changes === 1;
  }

  private insertCertificate(c: CertificateRecord): void {
    this.q(
      `INSERT INTO certificates (serial, device_id, not_before, not_after, spki_hash, issued_at, revoked_at, reason)
         VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)`,
    ).run(c.serial, c.deviceId, c.notBefore, c.notAfter, c.spkiHash, c.issuedAt);
  }

  /**
   * Stores a nonce and bounds the live ones per device and kind. Challenge nonces come from an
   * unauthenticated endpoint, so they may only ever evict other challenge nonces — never the
   * nonce the server handed the device with its last certificate.
   */
  private insertNonce(n: NonceRecord, keep: number, kind: string = 'issued'): void {
    this.q('INSERT INTO nonces (value, device_id, created_at, expires_at, used_at, kind) VALUES (?, ?, ?, ?, NULL, ?)').run(
      n.value,
      n.deviceId,
      n.createdAt,
      n.expiresAt,
      kind,
    );
    this.q(
      `DELETE FROM nonces WHERE device_id = ? AND kind = ? AND used_at IS NULL AND value NOT IN
           (SELECT value FROM nonces WHERE device_id = ? AND kind = ? AND used_at IS NULL ORDER BY created_at DESC, value LIMIT ?)`,
    ).run(n.deviceId, kind, n.deviceId, kind, keep);
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
      return await this.groupTx(() => {
        if (!this.spendTokenAndSession(p.tokenId, p.sessionId, p.now, p.device.id)) throw new RaceLost();
        // the token is spent: any other open session of it (a manifest token keeps several) ends too
        this.q('UPDATE enroll_sessions SET used_at = ? WHERE token_id = ? AND used_at IS NULL').run(p.now, p.tokenId);
        const d = p.device;
        // one live device per EK: checked here, inside the write transaction, so two sessions of
        // the same EK finishing at once cannot both create one (devices_live_ek backs it up)
        const live = this.q(`SELECT id FROM devices WHERE ek_hash = ? AND status IN ('active', 'quarantined') LIMIT 1`).get(d.ekHash) as
          Row | undefined;
        if (live) throw new EkLive(String(live.id));
        this.q(
          `INSERT INTO devices (id, zone, owner, name, purpose, status, status_reason, status_changed_at, ek_hash, ak_pub, ak_name, baseline, claims,
               baseline_window_until, enrolled_by, enrolled_at, retire_by, last_seen, last_ip, ek_legacy, ek_pub, ek_verified, ek_issuer, event_log, baseline_event_log,
               last_pcrs, last_quote_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)`,
        ).run(
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
        );
        this.insertCertificate(p.certificate);
        this.insertNonce(p.nonce, p.keepNonces);
        this.appendAuditSync(p.audit);
        return true;
      });
    } catch (e) {
      if (e instanceof RaceLost) return false;
      if (e instanceof EkLive) return { liveDevice: e.deviceId };
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
    await this.groupTx(() => {
      if (p.keepToken) {
        // only this session ends; the token and its other sessions stay usable
        if (p.sessionId !== null) this.q('UPDATE enroll_sessions SET used_at = ? WHERE id = ? AND used_at IS NULL').run(p.now, p.sessionId);
        this.appendAuditSync(p.audit);
        return;
      }
      this.q('UPDATE tokens SET used_at = ? WHERE id = ? AND used_at IS NULL').run(p.now, p.tokenId);
      // a failed check also closes every open session of the token
      this.q('UPDATE enroll_sessions SET used_at = ? WHERE token_id = ? AND used_at IS NULL').run(p.now, p.tokenId);
      this.appendAuditSync(p.audit);
    });
  }

  async getDevice(id: string): Promise<DeviceRecord | null> {
    const r = this.q('SELECT * FROM devices WHERE id = ?').get(id) as Row | undefined;
    return r ? deviceFrom(r) : null;
  }

  async listDevices(filter: DeviceFilter = {}): Promise<DeviceRecord[]> {
    const { where, args } = deviceWhere(filter, 'devices');
    return (this.q(`SELECT * FROM devices${where} ORDER BY enrolled_at, id`).all(...args) as Row[]).map(deviceFrom);
  }

  async countDevicesByStatus(): Promise<Partial<Record<DeviceStatus, number>>> {
    const out: Partial<Record<DeviceStatus, number>> = {};
    for (const r of this.q('SELECT status, COUNT(*) AS n FROM devices GROUP BY status').all() as Row[])
      out[String(r.status) as DeviceStatus] = Number(r.n);
    return out;
  }

  async listDevicesWithLastCertificate(filter: DeviceFilter = {}, page?: DevicePageRequest): Promise<DeviceListing[]> {
    const w = deviceWhere(filter, 'd');
    let where = w.where;
    const args = [...w.args];
    const sorted = deviceSortSql(page ?? { limit: 0 }, 'd');
    if (sorted.after) {
      where += `${where ? ' AND' : ' WHERE'} ${sorted.after.where}`;
      args.push(...sorted.after.args);
    }
    const limit = page ? ' LIMIT ?' : '';
    if (page) args.push(page.limit);
    // one query: the page of devices in index order first (joined, SQLite sorts every row after
    // the cursor in a temp b-tree), then the newest certificate of each by a correlated subquery
    // on certificates_device
    const rows = this.q(
      `SELECT d.*, c.serial AS c_serial, c.device_id AS c_device_id, c.not_before AS c_not_before, c.not_after AS c_not_after,
                c.spki_hash AS c_spki_hash, c.issued_at AS c_issued_at, c.revoked_at AS c_revoked_at, c.reason AS c_reason
         FROM (SELECT * FROM devices d${where}${sorted.orderBy}${limit}) d
         LEFT JOIN certificates c ON c.serial = (SELECT serial FROM certificates WHERE device_id = d.id ORDER BY not_after DESC LIMIT 1)
         ${sorted.orderBy}`,
    ).all(...args) as Row[];
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
    const r = this.q('SELECT * FROM devices WHERE ak_name = ? ORDER BY enrolled_at DESC LIMIT 1').get(akName.toLowerCase()) as
      Row | undefined;
    return r ? deviceFrom(r) : null;
  }

  async devicesWithoutAkName(): Promise<{ id: string; akPub: Buffer }[]> {
    return (this.q('SELECT id, ak_pub FROM devices WHERE ak_name IS NULL ORDER BY id').all() as Row[]).map((r) => ({
      id: String(r.id),
      akPub: r.ak_pub as Buffer,
    }));
  }

  async setAkName(id: string, akName: string): Promise<void> {
    this.autocommit(() => this.q('UPDATE devices SET ak_name = ? WHERE id = ? AND ak_name IS NULL').run(akName.toLowerCase(), id));
  }

  async findLiveDeviceByEk(ekHash: string, legacyHashes: string[] = []): Promise<DeviceRecord | null> {
    const legacy = legacyHashes.length ? ` OR (ek_legacy = 1 AND ek_hash IN (${legacyHashes.map(() => '?').join(', ')}))` : '';
    const r = this.q(
      `SELECT * FROM devices WHERE ((ek_hash = ? AND ek_legacy = 0)${legacy}) AND status IN ('active', 'quarantined') ORDER BY enrolled_at LIMIT 1`,
    ).get(ekHash, ...legacyHashes) as Row | undefined;
    return r ? deviceFrom(r) : null;
  }

  async listEkRoots(): Promise<EkRootRecord[]> {
    return (this.q('SELECT * FROM ek_roots ORDER BY added_at, fingerprint').all() as Row[]).map((r) => ({
      fingerprint: String(r.fingerprint),
      kind: String(r.kind) as EkRootRecord['kind'],
      der: (r.der as Buffer | null) ?? null,
      subject: String(r.subject),
      notAfter: num(r.not_after),
      addedBy: String(r.added_by),
      addedAt: Number(r.added_at),
    }));
  }

  async putEkRoot(r: EkRootRecord, audit: AuditInput): Promise<void> {
    this.tx(() => {
      this.q(
        `INSERT INTO ek_roots (fingerprint, kind, der, subject, not_after, added_by, added_at) VALUES (?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (fingerprint) DO UPDATE SET kind = excluded.kind, der = excluded.der, subject = excluded.subject,
             not_after = excluded.not_after, added_by = excluded.added_by, added_at = excluded.added_at`,
      ).run(r.fingerprint, r.kind, r.der, r.subject, r.notAfter, r.addedBy, r.addedAt);
      this.appendAuditSync(audit);
    });
  }

  async deleteEkRoot(fingerprint: string, audit: AuditInput): Promise<boolean> {
    return this.tx(() => {
      const n = this.q('DELETE FROM ek_roots WHERE fingerprint = ?').run(fingerprint).changes;
      this.appendAuditSync(audit);
      return n === 1;
    });
  }

  async listEkAllow(): Promise<EkAllowRecord[]> {
    return (this.q(`${EK_ALLOW_SELECT} ORDER BY a.imported_at, a.id`).all() as Row[]).map(ekAllowFrom);
  }

  async getEkAllowByEk(ekId: string): Promise<EkAllowRecord | null> {
    const r = this.q(`${EK_ALLOW_SELECT} WHERE a.ek_id = ?`).get(ekId) as Row | undefined;
    return r ? ekAllowFrom(r) : null;
  }

  async importEkAllow(entries: EkAllowRecord[], audit: (added: EkAllowRecord[]) => AuditInput): Promise<EkAllowRecord[]> {
    return this.tx(() => {
      const insert = this.q(
        `INSERT INTO ek_allow (id, ek_id, zone, owner, name, source, imported_by, imported_at, token_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)
         ON CONFLICT (ek_id) DO NOTHING`,
      );
      const added = entries.filter(
        (e) => insert.run(e.id, e.ekId, e.zone, e.owner, e.name, e.source, e.importedBy, e.importedAt).changes === 1,
      );
      this.appendAuditSync(audit(added));
      return added;
    });
  }

  async removeEkAllow(id: string, now: number, audit: AuditInput): Promise<boolean> {
    return this.tx(() => {
      const r = this.q('SELECT token_id FROM ek_allow WHERE id = ?').get(id) as Row | undefined;
      if (r && r.token_id !== null) {
        // an attempt under way loses its token with the entry
        this.q('UPDATE tokens SET expires_at = ? WHERE id = ? AND used_at IS NULL AND expires_at > ?').run(now, String(r.token_id), now);
        this.q('UPDATE enroll_sessions SET used_at = ? WHERE token_id = ? AND used_at IS NULL').run(now, String(r.token_id));
      }
      const n = this.q('DELETE FROM ek_allow WHERE id = ?').run(id).changes;
      this.appendAuditSync(audit);
      return n === 1;
    });
  }

  async claimEkAllow(p: { entryId: string; previousTokenId: string | null; token: TokenRecord }): Promise<boolean> {
    return this.tx(() => {
      const claimed = this.q('UPDATE ek_allow SET token_id = ? WHERE id = ? AND token_id IS ?').run(
        p.token.id,
        p.entryId,
        p.previousTokenId,
      );
      if (claimed.changes !== 1) return false;
      const t = p.token;
      this.q(
        `INSERT INTO tokens (id, secret_hash, zone, owner, name, purpose, created_by, created_at, expires_at, ek_hash, bound_at, used_at, device_id)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)`,
      ).run(t.id, t.secretHash, t.zone, t.owner, t.name, t.purpose, t.createdBy, t.createdAt, t.expiresAt, t.ekHash, t.boundAt);
      return true;
    });
  }

  private updateDeviceSync(id: string, patch: DevicePatch, onlyIfStatus?: DeviceStatus[]): boolean {
    const sets: string[] = [];
    const values: unknown[] = [];
    for (const [k, v] of Object.entries(patch) as [keyof DevicePatch, unknown][]) {
      if (v === undefined) continue;
      sets.push(`${DEVICE_COLUMNS[k]} = ?`);
      values.push(k === 'baseline' || k === 'claims' || k === 'lastPcrs' ? (v === null ? null : JSON.stringify(v)) : v);
    }
    if (sets.length === 0) return false;
    const guard = onlyIfStatus?.length ? ` AND status IN (${onlyIfStatus.map(() => '?').join(', ')})` : '';
    return this.q(`UPDATE devices SET ${sets.join(', ')} WHERE id = ?${guard}`).run(...values, id, ...(onlyIfStatus ?? [])).changes > 0;
  }

  async updateDevice(id: string, patch: DevicePatch, audit?: AuditInput, onlyIfStatus?: DeviceStatus[]): Promise<boolean> {
    return this.tx(() => {
      const changed = this.updateDeviceSync(id, patch, onlyIfStatus);
      if (audit) this.appendAuditSync(audit);
      return changed;
    });
  }

  async createNonce(n: NonceRecord, keep: number, audit: AuditInput, requester = ''): Promise<void> {
    await this.groupTx(() => {
      // kept per requesting network: a stranger's challenges displace only its own, never the
      // device's (kind 'challenge:<network>'); all challenges of a device are bounded too
      this.insertNonce(n, keep, `challenge:${requester}`);
      this.q(
        `DELETE FROM nonces WHERE device_id = ? AND kind LIKE 'challenge%' AND used_at IS NULL AND value NOT IN
             (SELECT value FROM nonces WHERE device_id = ? AND kind LIKE 'challenge%' AND used_at IS NULL ORDER BY created_at DESC, value LIMIT ?)`,
      ).run(n.deviceId, n.deviceId, CHALLENGES_PER_DEVICE);
      this.appendAuditSync(audit);
    });
  }

  async getNonce(value: string): Promise<NonceRecord | null> {
    const r = this.q('SELECT * FROM nonces WHERE value = ?').get(value) as Row | undefined;
    return r ? nonceFrom(r) : null;
  }

  async spendNonce(value: string, now: number, audit?: AuditInput): Promise<boolean> {
    return this.groupTx(() => {
      const ok = this.q('UPDATE nonces SET used_at = ? WHERE value = ? AND used_at IS NULL').run(now, value).changes === 1;
      if (audit) this.appendAuditSync(audit);
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
      return await this.groupTx(() => {
        const spent = this.q(`UPDATE nonces SET used_at = ? WHERE value = ? AND device_id = ? AND used_at IS NULL`).run(
          p.now,
          p.nonce,
          p.deviceId,
        );
        // the device must still be active at commit time: a revoke that raced us wins
        const live = this.q(`SELECT status FROM devices WHERE id = ? AND status = 'active'`).get(p.deviceId);
        if (spent.changes !== 1 || !live) throw new RaceLost();
        this.updateDeviceSync(p.deviceId, p.patch);
        this.insertCertificate(p.certificate);
        this.insertNonce(p.nextNonce, p.keepNonces);
        this.appendAuditSync(p.audit);
        return true;
      });
    } catch (e) {
      if (e instanceof RaceLost) return false;
      throw e;
    }
  }

  async listCertificates(deviceId: string): Promise<CertificateRecord[]> {
    return (this.q('SELECT * FROM certificates WHERE device_id = ? ORDER BY issued_at, serial').all(deviceId) as Row[]).map(certFrom);
  }

  async lastCertificate(deviceId: string): Promise<CertificateRecord | null> {
    const r = this.q('SELECT * FROM certificates WHERE device_id = ? ORDER BY not_after DESC LIMIT 1').get(deviceId) as Row | undefined;
    return r ? certFrom(r) : null;
  }

  /** Revokes the device's unexpired, unrevoked certificates; returns their serials (inside a transaction). */
  private revokeLiveCertificatesSync(deviceId: string, reason: RevokeReason, now: number): string[] {
    const serials = (
      this.q('SELECT serial FROM certificates WHERE device_id = ? AND revoked_at IS NULL AND not_after > ?').all(deviceId, now) as Row[]
    ).map((r) => String(r.serial));
    this.q('UPDATE certificates SET revoked_at = ?, reason = ? WHERE device_id = ? AND revoked_at IS NULL AND not_after > ?').run(
      now,
      reason,
      deviceId,
      now,
    );
    return serials;
  }

  async endDevice(p: {
    deviceId: string;
    status: 'revoked' | 'retired';
    reason: RevokeReason;
    statusReason: string;
    now: number;
    audit: AuditInput;
  }): Promise<string[]> {
    return this.tx(() => {
      this.updateDeviceSync(p.deviceId, { status: p.status, statusReason: p.statusReason, statusChangedAt: p.now });
      const serials = this.revokeLiveCertificatesSync(p.deviceId, p.reason, p.now);
      this.q('UPDATE nonces SET used_at = ? WHERE device_id = ? AND used_at IS NULL').run(p.now, p.deviceId);
      this.appendAuditSync({ ...p.audit, details: { ...(p.audit.details ?? {}), serials } });
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
    return this.tx(() => {
      const changed = this.updateDeviceSync(
        p.deviceId,
        { ...p.patch, status: 'quarantined', statusReason: p.statusReason, statusChangedAt: p.now },
        ['active', 'quarantined'],
      );
      if (!changed) {
        this.appendAuditSync(p.audit);
        return null;
      }
      const serials = this.revokeLiveCertificatesSync(p.deviceId, p.reason, p.now);
      this.appendAuditSync({ ...p.audit, details: { ...(p.audit.details ?? {}), serials } });
      return serials;
    });
  }

  async listRevokedUnexpired(now: number): Promise<CertificateRecord[]> {
    return (
      this.q('SELECT * FROM certificates WHERE revoked_at IS NOT NULL AND not_after > ? ORDER BY revoked_at, serial').all(now) as Row[]
    ).map(certFrom);
  }

  async getBrokerMonitor(name: string): Promise<BrokerMonitorRecord | null> {
    const r = this.q('SELECT * FROM broker_monitors WHERE name = ? AND removed_at IS NULL').get(name) as Row | undefined;
    return r ? monitorFrom(r) : null;
  }

  async listBrokerMonitors(): Promise<BrokerMonitorRecord[]> {
    return (this.q('SELECT * FROM broker_monitors WHERE removed_at IS NULL ORDER BY name').all() as Row[]).map(monitorFrom);
  }

  async addBrokerMonitor(m: BrokerMonitorRecord, audit: AuditInput): Promise<boolean> {
    return this.tx(() => {
      if (this.q('SELECT 1 FROM broker_monitors WHERE name = ? AND removed_at IS NULL').get(m.name)) return false;
      this.q(
        `INSERT INTO broker_monitors (serial, name, common_name, spki_hash, not_before, not_after, created_by, created_at, removed_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)`,
      ).run(m.serial, m.name, m.commonName, m.spkiHash, m.notBefore, m.notAfter, m.createdBy, m.createdAt);
      this.appendAuditSync(audit);
      return true;
    });
  }

  async removeBrokerMonitor(name: string, now: number, audit: AuditInput): Promise<BrokerMonitorRecord | null> {
    return this.tx(() => {
      const r = this.q('SELECT * FROM broker_monitors WHERE name = ? AND removed_at IS NULL').get(name) as Row | undefined;
      if (r) this.q('UPDATE broker_monitors SET removed_at = ? WHERE serial = ?').run(now, r.serial);
      this.appendAuditSync(audit);
      return r ? { ...monitorFrom(r), removedAt: now } : null;
    });
  }

  async listRemovedMonitorsUnexpired(now: number): Promise<BrokerMonitorRecord[]> {
    return (
      this.q('SELECT * FROM broker_monitors WHERE removed_at IS NOT NULL AND not_after > ? ORDER BY removed_at, serial').all(now) as Row[]
    ).map(monitorFrom);
  }

  async listDeviceIds(filter: DeviceFilter = {}): Promise<string[]> {
    const { where, args } = deviceWhere(filter, 'devices');
    return (
      this.db
        .prepare(`SELECT id FROM devices${where} ORDER BY id`)
        .pluck()
        .all(...args) as unknown[]
    ).map(String);
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
      where.push(filter.zones.length === 0 ? '1 = 0' : `zone IN (${filter.zones.map(() => '?').join(', ')})`);
      args.push(...filter.zones);
    }
    if (filter.createdBy !== undefined) {
      where.push('created_by = ?');
      args.push(filter.createdBy);
    }
    const sql = `SELECT * FROM tokens${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id LIMIT ?`;
    return (this.q(sql).all(...args, page.limit) as Row[]).map(tokenFrom);
  }

  async getUser(name: string): Promise<UserRecord | null> {
    const r = this.q('SELECT * FROM users WHERE name = ?').get(name) as Row | undefined;
    return r ? userFrom(r) : null;
  }

  async getUserByTokenHash(tokenHash: Buffer): Promise<UserRecord | null> {
    const r = this.q('SELECT * FROM users WHERE token_hash = ?').get(tokenHash) as Row | undefined;
    return r ? userFrom(r) : null;
  }

  async listUsers(): Promise<UserRecord[]> {
    return (this.q('SELECT * FROM users ORDER BY name').all() as Row[]).map(userFrom);
  }

  async createUser(u: UserRecord, audit: AuditInput | null): Promise<boolean> {
    return this.tx(() => {
      if (this.q('SELECT 1 FROM users WHERE name = ?').get(u.name)) return false;
      this.q(
        `INSERT INTO users (name, role, zones, token_hash, created_by, created_at, expires_at, disabled_at, disabled_by, token_rotated_at, bootstrap)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
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
      );
      if (audit) this.appendAuditSync(audit);
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
      return this.tx(() => {
        const changed =
          keys.length > 0 &&
          this.q(`UPDATE users SET ${keys.map((k) => `${cols[k]} = ?`).join(', ')} WHERE name = ?`).run(...keys.map(value), name).changes >
            0;
        if (changed && opts.keepAdminAt !== undefined) {
          const admins = this.q(
            `SELECT COUNT(*) AS n FROM users WHERE role = 'admin' AND disabled_at IS NULL AND (expires_at IS NULL OR expires_at > ?)`,
          ).get(opts.keepAdminAt) as Row;
          if (Number(admins.n) === 0) throw new LastAdmin();
        }
        if (changed && audit) this.appendAuditSync(audit);
        return changed;
      });
    } catch (e) {
      if (e instanceof LastAdmin) return 'last_admin';
      throw e;
    }
  }

  async auditPruneLimit(before: number): Promise<number | null> {
    const r = this.q('SELECT MAX(seq) AS s FROM audit WHERE time < ? AND seq < (SELECT MAX(seq) FROM audit)').get(before) as Row;
    return r.s === null ? null : Number(r.s);
  }

  async pruneAudit(p: {
    throughSeq: number;
    now: number;
    file: string;
    audit: AuditInput;
  }): Promise<{ rows: number; anchor: { seq: number; hash: string } }> {
    return this.tx(() => {
      const last = this.q('SELECT seq, hash, time FROM audit WHERE seq = ?').get(p.throughSeq) as Row | undefined;
      if (!last) throw new Error(`audit row ${p.throughSeq} does not exist`);
      const anchorSeq = this.auditAnchorSync()?.seq ?? 0;
      const rows = this.q('DELETE FROM audit WHERE seq > ? AND seq <= ?').run(anchorSeq, p.throughSeq).changes;
      this.q('INSERT INTO audit_checkpoint (seq, hash, time, pruned_at, rows, file) VALUES (?, ?, ?, ?, ?, ?)').run(
        p.throughSeq,
        String(last.hash),
        Number(last.time),
        p.now,
        rows,
        p.file,
      );
      this.appendAuditSync(p.audit);
      return { rows, anchor: { seq: p.throughSeq, hash: String(last.hash) } };
    });
  }

  async auditAnchor(): Promise<{ seq: number; hash: string } | null> {
    return this.auditAnchorSync();
  }

  async listExpiredCertificates(before: number, limit: number): Promise<CertificateRecord[]> {
    return (this.q('SELECT * FROM certificates WHERE not_after < ? ORDER BY not_after, serial LIMIT ?').all(before, limit) as Row[]).map(
      certFrom,
    );
  }

  async deleteCertificates(serials: string[], before: number): Promise<number> {
    return this.tx(() => {
      const del = this.q('DELETE FROM certificates WHERE serial = ? AND not_after < ?');
      let n = 0;
      for (const s of serials) n += del.run(s, before).changes;
      return n;
    });
  }

  async appendAudit(a: AuditInput): Promise<AuditRow> {
    return this.tx(() => this.appendAuditSync(a));
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
      // rows about a device in one of the zones, and the caller's own rows
      const inZones = p.zones.length === 0 ? '0' : `zone IN (${p.zones.map(() => '?').join(', ')})`;
      where.push(`(device_id IN (SELECT id FROM devices WHERE ${inZones}) OR actor = ?)`);
      args.push(...p.zones, p.ownActor ?? '');
    }
    args.push(p.limit ?? 1000);
    const order = p.newestFirst ? 'DESC' : '';
    return (this.q(`SELECT * FROM audit WHERE ${where.join(' AND ')} ORDER BY seq ${order} LIMIT ?`).all(...args) as Row[]).map(auditFrom);
  }

  async verifyAudit(): Promise<AuditVerifyResult> {
    const headText = await this.getMeta('audit_head');
    const head = headText ? (JSON.parse(headText) as { seq: number; hash: string }) : null;
    const anchor = this.auditAnchorSync();
    const stmt = this.q('SELECT * FROM audit WHERE seq > ? ORDER BY seq'); // its own: iterated while other calls run
    const rows = (function* () {
      for (const r of stmt.iterate(anchor?.seq ?? 0) as IterableIterator<Row>) yield auditFrom(r);
    })();
    return verifyChain(rows, head, anchor);
  }
  async getAlertState(): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const r of this.q('SELECT state_key, value FROM alert_state').all() as Row[]) out[String(r.state_key)] = String(r.value);
    return out;
  }

  async commitAlerts(p: {
    occurrences: AlertOccurrence[];
    state: Record<string, string | null>;
    delivery?: (opened: AlertRecord) => AlertDeliveryRecord | null;
  }): Promise<AlertRecord[]> {
    return this.tx(() => {
      const opened: AlertRecord[] = [];
      for (const o of p.occurrences) {
        const open = this.q(`SELECT id FROM alerts WHERE rule = ? AND alert_key = ? AND state = 'open'`).get(o.rule, o.key) as
          Row | undefined;
        if (open) {
          if (o.bumpBy > 0)
            this.q('UPDATE alerts SET count = count + ?, last_seen = CASE WHEN last_seen < ? THEN ? ELSE last_seen END WHERE id = ?').run(
              o.bumpBy,
              o.at,
              o.at,
              open.id,
            );
          continue;
        }
        if (!o.fire) continue;
        this.q(
          `INSERT INTO alerts (id, rule, severity, alert_key, device_id, zone, address, summary, first_seen, last_seen, count, state)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open')`,
        ).run(o.id, o.rule, o.severity, o.key, o.deviceId, o.zone, o.address, o.summary, o.at, o.at, o.openCount);
        const a = alertFrom(this.q('SELECT * FROM alerts WHERE id = ?').get(o.id) as Row);
        opened.push(a);
        const d = p.delivery?.(a);
        if (d) {
          this.q(
            `INSERT INTO alert_deliveries (id, alert_id, body, state, attempts, next_at, last_status, last_error, created_at, delivered_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
          ).run(d.id, d.alertId, d.body, d.state, d.attempts, d.nextAt, d.lastStatus, d.lastError, d.createdAt, d.deliveredAt);
        }
      }
      for (const [k, v] of Object.entries(p.state)) {
        if (v === null) this.q('DELETE FROM alert_state WHERE state_key = ?').run(k);
        else
          this.q(
            'INSERT INTO alert_state (state_key, value) VALUES (?, ?) ON CONFLICT (state_key) DO UPDATE SET value = excluded.value',
          ).run(k, v);
      }
      return opened;
    });
  }

  async getAlert(id: string): Promise<AlertRecord | null> {
    const r = this.q('SELECT * FROM alerts WHERE id = ?').get(id) as Row | undefined;
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
      where.push(f.zones.length === 0 ? '1 = 0' : `zone IN (${f.zones.map(() => '?').join(', ')})`);
      args.push(...f.zones);
    }
    if (page.after) {
      where.push('(first_seen < ? OR (first_seen = ? AND id < ?))');
      args.push(page.after.time, page.after.time, page.after.id);
    }
    const sql = `SELECT * FROM alerts${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY first_seen DESC, id DESC LIMIT ?`;
    return (this.q(sql).all(...args, page.limit) as Row[]).map(alertFrom);
  }

  async countOpenAlerts(): Promise<{ rule: string; severity: AlertSeverity; count: number }[]> {
    return (this.q(`SELECT rule, severity, COUNT(*) AS n FROM alerts WHERE state = 'open' GROUP BY rule, severity`).all() as Row[]).map(
      (r) => ({
        rule: String(r.rule),
        severity: String(r.severity) as AlertSeverity,
        count: Number(r.n),
      }),
    );
  }

  async acknowledgeAlert(id: string, by: string, at: number, audit: AuditInput): Promise<AlertRecord | null> {
    return this.tx(() => {
      const changed = this.q(
        `UPDATE alerts SET state = 'acknowledged', acknowledged_by = ?, acknowledged_at = ? WHERE id = ? AND state = 'open'`,
      ).run(by, at, id).changes;
      if (changed === 0) return null;
      this.appendAuditSync(audit);
      return alertFrom(this.q('SELECT * FROM alerts WHERE id = ?').get(id) as Row);
    });
  }

  async dueAlertDeliveries(now: number, limit: number): Promise<AlertDeliveryRecord[]> {
    return (
      this.q(`SELECT * FROM alert_deliveries WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, id LIMIT ?`).all(
        now,
        limit,
      ) as Row[]
    ).map(deliveryFrom);
  }

  async nextAlertDelivery(): Promise<number | null> {
    const r = this.q(`SELECT MIN(next_at) AS t FROM alert_deliveries WHERE state = 'pending'`).get() as Row;
    return num(r.t);
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
    this.tx(() => {
      this.q(`UPDATE alert_deliveries SET ${keys.map((k) => `${cols[k]} = ?`).join(', ')} WHERE id = ?`).run(
        ...keys.map((k) => patch[k]),
        id,
      );
    });
  }

  async listAlertDeliveries(p: { alertId?: string; limit: number }): Promise<AlertDeliveryRecord[]> {
    const where = p.alertId ? ' WHERE alert_id = ?' : '';
    const args: unknown[] = p.alertId ? [p.alertId] : [];
    return (this.q(`SELECT * FROM alert_deliveries${where} ORDER BY created_at DESC, id DESC LIMIT ?`).all(...args, p.limit) as Row[]).map(
      deliveryFrom,
    );
  }
}

class RaceLost extends Error {}

/** Rolls back a users change that would leave no enabled admin. */
class LastAdmin extends Error {}

class EkLive extends Error {
  constructor(readonly deviceId: string) {
    super('a live device has this EK');
  }
}

/** Manifest entries with the state of the token minted for them (if any). */
export const EK_ALLOW_SELECT = `SELECT a.*, t.used_at AS token_used_at, t.device_id AS token_device_id
  FROM ek_allow a LEFT JOIN tokens t ON t.id = a.token_id`;

export function ekAllowFrom(r: Row): EkAllowRecord {
  return {
    id: String(r.id),
    ekId: String(r.ek_id),
    zone: String(r.zone),
    owner: String(r.owner),
    name: text(r.name),
    source: text(r.source),
    importedBy: String(r.imported_by),
    importedAt: Number(r.imported_at),
    tokenId: text(r.token_id),
    usedAt: r.token_used_at === null || r.token_used_at === undefined ? null : Number(r.token_used_at),
    deviceId: text(r.token_device_id),
  };
}
