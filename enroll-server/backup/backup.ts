/**
 * Online backup (taken by the running server, which owns the database) and restore onto a fresh
 * data dir (run by `edgeid-server restore` while no server uses that dir). File format: format.ts.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { EdgeidError } from '../../protocol/errors/index.js';
import { CertificateAuthority } from '../ca/ca.js';
import { DATA_FILES } from '../composition.js';
import { ensurePrivateDir, writeFileAtomic } from '../files.js';
import type { ServerContext } from '../services/context.js';
import { audited } from '../services/audit.js';
import { currentVersion } from '../store/migrate.js';
import { SqliteStore } from '../store/sqlite.js';
import { openBackup, sealBackup, type BackupFile, type BackupHeader, type BackupKey } from './format.js';

/**
 * Runs `fn` while no other CA-changing action (backup, issuing-CA rotation) runs on this server,
 * so a backup never holds a database from before a rotation with CA files from after it.
 */
const caLocks = new WeakMap<object, Promise<unknown>>();
export function caExclusive<T>(ctx: ServerContext, fn: () => Promise<T>): Promise<T> {
  const prev = caLocks.get(ctx) ?? Promise.resolve();
  const run = prev.then(fn, fn);
  caLocks.set(
    ctx,
    run.catch(() => undefined),
  );
  return run;
}

/**
 * The CA material of data/ca as backup entries. `<name>.key` is a key file (kind file);
 * `<name>.pkcs11.json` is a reference to a key inside an HSM (kind pkcs11: only the reference is
 * kept); `*.pin` files (an HSM PIN) are never copied. Everything else (certificates) is copied.
 */
function caMaterial(dataDir: string, ca: ServerContext['config']['ca']): { files: BackupFile[]; keys: BackupKey[] } {
  const dir = join(dataDir, DATA_FILES.caDir);
  const files: BackupFile[] = [];
  const keys: BackupKey[] = [];
  const walk = (rel: string) => {
    for (const e of readdirSync(join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        walk(r);
        continue;
      }
      if (!e.isFile() || e.name.startsWith('.') || e.name.endsWith('.pin')) continue;
      const data = readFileSync(join(dir, r));
      const name = `${DATA_FILES.caDir}/${r}`;
      if (e.name.endsWith('.pkcs11.json')) {
        keys.push({
          name: r.replace(/\.pkcs11\.json$/, ''),
          kind: 'pkcs11',
          ref: JSON.parse(data.toString('utf8')) as Record<string, string>,
        });
      } else if (e.name.endsWith('.key')) {
        keys.push({ name: r.replace(/\.key$/, ''), kind: 'file', file: name });
      }
      files.push({ name, mode: statSync(join(dir, r)).mode & 0o777, data });
    }
  };
  walk('');
  // the first issuing CA's key in a PKCS#11 token (config ca.key pkcs11): its reference, never the PIN
  if (ca.key === 'pkcs11' && !keys.some((k) => k.name === 'intermediate')) {
    keys.push({
      name: 'intermediate',
      kind: 'pkcs11',
      ref: { module: ca.pkcs11.module, token: ca.pkcs11.token, keyLabel: ca.pkcs11.keyLabel },
    });
  }
  return { files, keys };
}

/**
 * POST /v1/admin/backup: a consistent copy of the database through SQLite's online backup API
 * (https://www.sqlite.org/backup.html; better-sqlite3 copies in steps between which requests
 * keep running, and writes of this connection during the copy are carried into it), the CA
 * material and the admin token, sealed with the caller's passphrase. Audited (admin.backup) with
 * the audit head the backup holds.
 */
export async function createBackup(ctx: ServerContext, passphrase: string, who: { actor: string; ip: string | null }): Promise<Buffer> {
  // the online copy is SQLite's backup API; a PostgreSQL database is backed up with its own tools
  if (!(ctx.store instanceof SqliteStore))
    throw new EdgeidError('backup_unsupported_store', 'the store is PostgreSQL: back it up with pg_dump, and ca/ with your file backup');
  return audited(ctx, { event: 'admin.backup', actor: who.actor, ip: who.ip }, (a) =>
    caExclusive(ctx, async () => {
      const dataDir = ctx.config.dataDir;
      const tmp = join(dataDir, `.backup-${randomBytes(6).toString('hex')}.db`);
      const store = ctx.store as unknown as SqliteStore;
      let db: Buffer;
      let auditHead: BackupHeader['auditHead'];
      let schemaVersion: number;
      const t0 = performance.now();
      try {
        await store.db.backup(tmp);
        a.details = { copyMs: Math.round(performance.now() - t0) };
        const copy = new Database(tmp);
        try {
          const ok = copy.pragma('integrity_check', { simple: true });
          if (ok !== 'ok') throw new Error(`the copy failed integrity_check: ${String(ok)}`);
          // a single file (the live database runs in WAL mode; the copy must not need its -wal)
          copy.pragma('journal_mode = DELETE');
          const head = copy.prepare("SELECT value FROM meta WHERE key = 'audit_head'").get() as { value: string } | undefined;
          auditHead = head ? (JSON.parse(head.value) as { seq: number; hash: string }) : null;
          schemaVersion = currentVersion(copy) ?? 0;
        } finally {
          copy.close();
        }
        db = readFileSync(tmp);
      } finally {
        for (const f of [tmp, `${tmp}-wal`, `${tmp}-shm`, `${tmp}-journal`]) rmSync(f, { force: true });
      }
      const ca = caMaterial(dataDir, ctx.config.ca);
      const files: BackupFile[] = [{ name: DATA_FILES.db, mode: 0o600, data: db }, ...ca.files];
      const tokenFile = join(dataDir, DATA_FILES.adminToken);
      if (existsSync(tokenFile)) files.push({ name: DATA_FILES.adminToken, mode: 0o600, data: readFileSync(tokenFile) });
      const sealed = await sealBackup({ passphrase, createdAt: new Date(ctx.now()), auditHead, schemaVersion, files, keys: ca.keys });
      a.details = {
        ...a.details,
        totalMs: Math.round(performance.now() - t0),
        auditHead,
        bytes: sealed.length,
        databaseBytes: db.length,
        keys: ca.keys.map((k) => ({ name: k.name, kind: k.kind })),
      };
      return sealed;
    }),
  );
}

export interface RestoreResult {
  header: BackupHeader;
  files: number;
  tokensVoided: number;
  noncesVoided: number;
  sessionsVoided: number;
  /** The restore's own audit row. */
  auditSeq: number;
}

/** True when `dir` does not exist or is an empty directory. */
function emptyOrMissing(dir: string): boolean {
  if (!existsSync(dir)) return true;
  const st = statSync(dir);
  return st.isDirectory() && readdirSync(dir).length === 0;
}

/**
 * Restores a backup into `dataDir`, which must be missing or empty (restore_target_not_empty).
 * Checks the passphrase and the file's integrity before writing anything, then SQLite's
 * integrity_check, the audit chain, and that each CA key file matches its certificate.
 *
 * A backup is older than the state it replaces: whatever happened after it is unknown to the
 * restored server. So that nothing spent after the backup can be spent again, every enrollment
 * token still unused, every open enrollment session and every live renewal nonce in the backup
 * is voided (expired at the restore time; a device asks for a fresh challenge, agent/identity.ts;
 * an operator issues new tokens). The restore is audited (server.restore) with the backup's time
 * and audit head, so the gap between the two is visible in the chain.
 */
export async function restoreBackup(p: { file: Buffer; passphrase: string; dataDir: string; now?: number }): Promise<RestoreResult> {
  if (!emptyOrMissing(p.dataDir))
    throw new EdgeidError('restore_target_not_empty', `${p.dataDir} is not empty: a restore never overwrites a data dir`);
  const { header, files } = await openBackup(p.file, p.passphrase);
  const now = p.now ?? Date.now();
  const created = !existsSync(p.dataDir);
  try {
    ensurePrivateDir(p.dataDir);
    for (const f of files) {
      const target = join(p.dataDir, ...f.name.split('/'));
      const parent = join(target, '..');
      if (!existsSync(parent)) mkdirSync(parent, { recursive: true, mode: 0o700 });
      ensurePrivateDir(parent);
      // secrets and the database 0600; public certificates keep the mode the server gave them (never more than 0644)
      const mode = f.name.endsWith('.pem') ? f.mode & 0o644 : 0o600;
      writeFileAtomic(target, f.data, mode);
    }
    const dbFile = join(p.dataDir, DATA_FILES.db);
    if (!existsSync(dbFile)) throw new EdgeidError('backup_corrupt', 'the backup holds no database');
    const probe = new Database(dbFile);
    try {
      const ok = probe.pragma('integrity_check', { simple: true });
      if (ok !== 'ok')
        throw new EdgeidError('backup_corrupt', `the backed-up database fails SQLite's integrity_check: ${String(ok).slice(0, 200)}`);
    } finally {
      probe.close();
    }
    // migrates a backup of an older release to this release's schema
    const store = new SqliteStore(dbFile);
    try {
      const chain = await store.verifyAudit();
      if (!chain.ok)
        throw new EdgeidError('backup_corrupt', `the backed-up audit chain does not verify: ${chain.problem?.detail ?? 'broken'}`);
      // the database must be the one the header describes: its audit head is the header's
      const headText = await store.getMeta('audit_head');
      const head = headText ? (JSON.parse(headText) as { seq: number; hash: string }) : null;
      if (JSON.stringify(head) !== JSON.stringify(header.auditHead))
        throw new EdgeidError('backup_corrupt', `the backed-up database's audit head is not the one the backup's header names`);
      await checkCaFiles(p.dataDir);
      const voided = store.db.transaction(() => ({
        tokens: store.db.prepare('UPDATE tokens SET expires_at = ? WHERE used_at IS NULL AND expires_at > ?').run(now, now).changes,
        nonces: store.db.prepare('UPDATE nonces SET expires_at = ? WHERE used_at IS NULL AND expires_at > ?').run(now, now).changes,
        sessions: store.db.prepare('UPDATE enroll_sessions SET expires_at = ? WHERE used_at IS NULL AND expires_at > ?').run(now, now)
          .changes,
      }))();
      // CRL numbers never repeat (RFC 5280 §5.2.3), but the old server may have published CRLs
      // after this backup: numbering continues above the restore time in milliseconds, beyond
      // any number a server counting from 1 reaches
      const crlNumberBackup = BigInt((await store.getMeta('crl_number')) ?? '1');
      const crlNumber = crlNumberBackup > BigInt(now) ? crlNumberBackup : BigInt(now);
      await store.setMeta('crl_number', crlNumber.toString());
      const row = await store.appendAudit({
        time: now,
        actor: 'server',
        event: 'server.restore',
        outcome: 'ok',
        details: {
          backupCreatedAt: header.createdAt,
          backupAuditHead: header.auditHead,
          backupSchemaVersion: header.schemaVersion,
          tokensVoided: voided.tokens,
          noncesVoided: voided.nonces,
          sessionsVoided: voided.sessions,
          crlNumberFrom: crlNumber.toString(),
        },
      });
      return {
        header,
        files: files.length,
        tokensVoided: voided.tokens,
        noncesVoided: voided.nonces,
        sessionsVoided: voided.sessions,
        auditSeq: row.seq,
      };
    } finally {
      await store.close();
    }
  } catch (e) {
    // nothing half-restored stays behind
    if (created) rmSync(p.dataDir, { recursive: true, force: true });
    else for (const f of readdirSync(p.dataDir)) rmSync(join(p.dataDir, f), { recursive: true, force: true });
    throw e;
  }
}

/** Each CA key file in data/ca must hold the private key of the certificate beside it. */
async function checkCaFiles(dataDir: string): Promise<void> {
  const problems = CertificateAuthority.checkKeyFiles(join(dataDir, DATA_FILES.caDir));
  if (problems.length) throw new EdgeidError('backup_corrupt', `the backed-up CA material is inconsistent: ${problems.join('; ')}`);
}
