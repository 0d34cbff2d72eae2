/**
 * Schema migrations: numbered files applied in order, each in a transaction with its
 * schema_version row; databases written before the version table existed are recognised by
 * their shape and upgraded; a database from a newer server is refused untouched. On every store
 * (SQLite and PostgreSQL, test/helpers/stores.ts) except the adoption of databases from before
 * schema_version, which only SQLite databases can be (PostgreSQL support came after it).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { mkdtemp, rm } from 'node:fs/promises';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { loadConfig } from '../../enroll-server/config.js';
import { createServer } from '../../enroll-server/server.js';
import { loadMigrations, migrate } from '../../enroll-server/store/migrate.js';
import { SqliteStore } from '../../enroll-server/store/sqlite.js';
import { loadPgMigrations, PostgresStore } from '../../enroll-server/store/postgres.js';
import { forEachStore, type StoreKind } from '../helpers/stores.js';
import { auditHash, GENESIS_HASH } from '../../enroll-server/store/audit-chain.js';
import { objectName, parsePublic } from '../../protocol/tpm/public.js';
import { akTemplate } from '../../protocol/tpm/templates.js';

/** The DDL edgeid-server ran on every start before numbered migrations (verbatim). */
const SCHEMA_BEFORE_VERSIONS = [
  `CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS tokens (
     id TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, zone TEXT NOT NULL, owner TEXT NOT NULL, name TEXT, purpose TEXT,
     created_by TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
     ek_hash TEXT, bound_at INTEGER, used_at INTEGER, device_id TEXT)`,
  `CREATE TABLE IF NOT EXISTS enroll_sessions (
     id TEXT PRIMARY KEY, token_id TEXT NOT NULL REFERENCES tokens(id), ek_hash TEXT NOT NULL, ak_pub BLOB NOT NULL,
     secret_hash BLOB NOT NULL, nonce BLOB NOT NULL, ip TEXT, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER)`,
  `CREATE INDEX IF NOT EXISTS enroll_sessions_token ON enroll_sessions(token_id)`,
  `CREATE TABLE IF NOT EXISTS devices (
     id TEXT PRIMARY KEY, zone TEXT NOT NULL, owner TEXT NOT NULL, name TEXT, purpose TEXT,
     status TEXT NOT NULL, status_reason TEXT, status_changed_at INTEGER, ek_hash TEXT NOT NULL, ak_pub BLOB NOT NULL,
     baseline TEXT, claims TEXT, baseline_window_until INTEGER, enrolled_by TEXT NOT NULL, enrolled_at INTEGER NOT NULL,
     retire_by INTEGER, last_seen INTEGER, last_ip TEXT)`,
  `CREATE INDEX IF NOT EXISTS devices_ek ON devices(ek_hash)`,
  `CREATE TABLE IF NOT EXISTS certificates (
     serial TEXT PRIMARY KEY, device_id TEXT NOT NULL REFERENCES devices(id), not_before INTEGER NOT NULL,
     not_after INTEGER NOT NULL, spki_hash TEXT NOT NULL, issued_at INTEGER NOT NULL, revoked_at INTEGER, reason TEXT)`,
  `CREATE INDEX IF NOT EXISTS certificates_device ON certificates(device_id)`,
  `CREATE TABLE IF NOT EXISTS nonces (
     value TEXT PRIMARY KEY, device_id TEXT NOT NULL REFERENCES devices(id), created_at INTEGER NOT NULL,
     expires_at INTEGER NOT NULL, used_at INTEGER)`,
  `CREATE INDEX IF NOT EXISTS nonces_device ON nonces(device_id)`,
  `CREATE TABLE IF NOT EXISTS audit (
     seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, actor TEXT NOT NULL, event TEXT NOT NULL, device_id TEXT, ip TEXT,
     outcome TEXT NOT NULL, reason TEXT, details TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)`,
];

/** What that server's in-place upgrade added on top, in its order. */
const BEFORE_VERSIONS_ADDITIONS = [
  'ALTER TABLE devices ADD COLUMN ak_name TEXT',
  'CREATE INDEX IF NOT EXISTS devices_ak_name ON devices(ak_name)',
  "ALTER TABLE nonces ADD COLUMN kind TEXT NOT NULL DEFAULT 'issued'",
];

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-migrate-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const NOW = 1_760_000_000_000;

/** A database as an older server left it: `additions` of BEFORE_VERSIONS_ADDITIONS applied, one device with a real AK public area. */
function legacyDb(file: string, additions: number): Buffer {
  const db = new Database(file);
  for (const s of SCHEMA_BEFORE_VERSIONS) db.exec(s);
  for (const s of BEFORE_VERSIONS_ADDITIONS.slice(0, additions)) db.exec(s);
  const akPub = akTemplate();
  db.prepare(
    `INSERT INTO devices (id, zone, owner, name, purpose, status, status_reason, status_changed_at, ek_hash, ak_pub, baseline, claims,
       baseline_window_until, enrolled_by, enrolled_at, retire_by, last_seen, last_ip)
     VALUES ('dev-00000000000000a1', 'default', 'ops', 'gw', NULL, 'active', NULL, ?, 'ek', ?, NULL, NULL, NULL, 'admin', ?, NULL, ?, NULL)`,
  ).run(NOW, akPub, NOW, NOW);
  db.prepare(
    `INSERT INTO certificates (serial, device_id, not_before, not_after, spki_hash, issued_at) VALUES ('ab', 'dev-00000000000000a1', ?, ?, 'x', ?)`,
  ).run(NOW, NOW + 3600_000, NOW);
  db.prepare(
    `INSERT INTO nonces (value, device_id, created_at, expires_at, used_at) VALUES ('n1', 'dev-00000000000000a1', ?, ?, NULL)`,
  ).run(NOW, NOW + 600_000);
  const row = {
    seq: 1,
    time: new Date(NOW).toISOString(),
    actor: 'admin',
    event: 'token.create',
    deviceId: null,
    ip: null,
    outcome: 'ok' as const,
    reason: null,
    details: null,
    prevHash: GENESIS_HASH,
  };
  const hash = auditHash(row);
  db.prepare(
    `INSERT INTO audit (seq, time, actor, event, device_id, ip, outcome, reason, details, prev_hash, hash) VALUES (1, ?, 'admin', 'token.create', NULL, NULL, 'ok', NULL, NULL, ?, ?)`,
  ).run(NOW, GENESIS_HASH, hash);
  db.prepare(`INSERT INTO meta (key, value) VALUES ('audit_head', ?)`).run(JSON.stringify({ seq: 1, hash }));
  db.close();
  return akPub;
}

function versions(file: string): { version: number; name: string }[] {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare('SELECT version, name FROM schema_version ORDER BY version').all() as { version: number; name: string }[];
  } finally {
    db.close();
  }
}

/** The store's migrations (SQLite or PostgreSQL files). */
const migrationsOf = (kind: StoreKind) => (kind.name === 'sqlite' ? loadMigrations() : loadPgMigrations());

test('the PostgreSQL migrations have the numbers and names of the SQLite ones', () => {
  assert.deepEqual(
    loadPgMigrations().map((m) => [m.version, m.name]),
    loadMigrations().map((m) => [m.version, m.name]),
  );
});

forEachStore((kind) => {
  test(`${kind.name}: the migration files are numbered 1, 2, 3 … and a new database gets all of them`, async (t) => {
    const migrations = migrationsOf(kind);
    assert.deepEqual(
      migrations.map((m) => m.version),
      migrations.map((_, i) => i + 1),
    );
    const where = await kind.fresh(t);
    const s = await kind.at(t, where);
    assert.deepEqual((s.store as SqliteStore | PostgresStore).schema, { from: 0, to: migrations.length });
    assert.deepEqual(
      (await s.exec('SELECT version, name FROM schema_version ORDER BY version')).map((r) => ({
        version: Number(r.version),
        name: r.name,
      })),
      migrations.map((m) => ({ version: m.version, name: m.name })),
    );
    const again = await s.reopen();
    assert.deepEqual(
      (again.store as SqliteStore | PostgresStore).schema,
      { from: migrations.length, to: migrations.length },
      'a second open applies nothing',
    );
  });

  test(`${kind.name}: a database from a newer server is refused and left as it was`, async (t) => {
    const where = await kind.fresh(t);
    const s = await kind.at(t, where);
    await s.exec(`INSERT INTO schema_version (version, name, applied_at) VALUES (99, 'from_the_future', 0)`);
    await s.store.close();
    await assert.rejects(kind.at(t, where), (e: any) => e.code === 'data_dir_unusable' && /version 99/.test(e.message));
    if (kind.name === 'sqlite') assert.equal(versions(where).at(-1)!.version, 99);
    else {
      const check = await PostgresStore.open({ url: where }, []).catch((e: unknown) => e);
      assert.equal((check as { code?: string }).code, 'data_dir_unusable', 'still at 99');
    }
  });

  test(`${kind.name}: a migration that fails is rolled back whole and its version not recorded`, async (t) => {
    const where = await kind.fresh(t);
    const [first] = migrationsOf(kind);
    const broken = { version: 2, name: 'broken', sql: 'CREATE TABLE half_done (a INTEGER); INSERT INTO no_such_table VALUES (1);' };
    const fixed = { ...broken, sql: 'CREATE TABLE half_done (a INTEGER);' };
    if (kind.name === 'sqlite') {
      const db = new Database(where);
      t.after(() => db.close());
      assert.throws(() => migrate(db, [first!, broken]), /no_such_table/);
      assert.deepEqual(
        (db.prepare('SELECT version FROM schema_version').all() as { version: number }[]).map((r) => r.version),
        [1],
      );
      assert.equal(db.prepare(`SELECT name FROM sqlite_master WHERE name = 'half_done'`).get(), undefined);
      // fixed, it applies on the next start
      assert.deepEqual(migrate(db, [first!, fixed]), { from: 1, to: 2 });
      return;
    }
    await assert.rejects(PostgresStore.open({ url: where }, [first!, broken]), /no_such_table/);
    const s = await PostgresStore.open({ url: where }, [first!]);
    t.after(() => s.close());
    assert.deepEqual(
      (await s.pool.query('SELECT version FROM schema_version')).rows.map((r) => r.version),
      [1],
    );
    assert.equal((await s.pool.query(`SELECT to_regclass('half_done') AS t`)).rows[0].t, null);
    await s.close();
    const again = await PostgresStore.open({ url: where }, [first!, fixed]);
    t.after(() => again.close());
    assert.deepEqual(again.schema, { from: 1, to: 2 });
  });

  test(`${kind.name}: a database that is not an edgeid database is refused`, async (t) => {
    const where = await kind.fresh(t);
    if (kind.name === 'sqlite') {
      const db = new Database(where);
      db.exec('CREATE TABLE something_else (a INTEGER)');
      db.close();
    } else {
      const s = await PostgresStore.open({ url: where }, []);
      await s.pool.query('DROP TABLE schema_version');
      await s.pool.query('CREATE TABLE something_else (a INTEGER)');
      await s.close();
    }
    await assert.rejects(kind.at(t, where), (e: any) => e.code === 'data_dir_unusable');
  });
});

// SQLite only: databases written before schema_version existed (PostgreSQL support came after it)
for (const [additions, version] of [
  [0, 1],
  [1, 2],
  [3, 3],
] as const) {
  test(`sqlite: a data dir from before schema_version (${additions} in-place additions) is adopted at version ${version} and upgraded`, async (t) => {
    const dataDir = await tempDir(t);
    const akPub = legacyDb(path.join(dataDir, 'edgeid.db'), additions);
    // the data dir's admin token from before personal accounts
    const legacyToken = `adm_${'L'.repeat(43)}`;
    writeFileSync(path.join(dataDir, 'admin-token'), legacyToken + '\n', { mode: 0o600 });
    const config = loadConfig({ argv: ['--data', dataDir, '--listen', '127.0.0.1:0'], env: {}, file: {} });
    const server = await createServer({ config, tls: false, logger: pino({ level: 'silent' }), housekeeping: false });
    t.after(() => server.close());
    const store = server.ctx.store as SqliteStore;
    const all = loadMigrations();
    assert.deepEqual(store.schema, { from: version, to: all.length });
    assert.deepEqual(
      versions(path.join(dataDir, 'edgeid.db')).map((v) => v.name),
      all.map((m, i) => (i < version ? `${m.name} (adopted)` : m.name)),
    );
    // the data survived, the audit chain still verifies, and every column the code uses is there
    // (and one row more: the admin token adopted as the bootstrap admin user)
    assert.deepEqual(await store.verifyAudit(), { ok: true, rows: 2 });
    const adopted = (await store.listAudit({ limit: 10 })).at(-1)!;
    assert.deepEqual([adopted.event, adopted.actor, adopted.details?.user], ['user.bootstrap', 'server', 'admin']);
    // the token of before is now the user admin (role admin, every zone)
    const users = await server.app.inject({ method: 'GET', url: '/v1/admin/users', headers: { authorization: `Bearer ${legacyToken}` } });
    assert.equal(users.statusCode, 200, users.body);
    assert.deepEqual(
      users
        .json()
        .users.map((u: { name: string; role: string; zones: unknown; bootstrap: boolean }) => [u.name, u.role, u.zones, u.bootstrap]),
      [['admin', 'admin', null, true]],
    );
    assert.equal((await store.listCertificates('dev-00000000000000a1')).length, 1);
    const akName = objectName(parsePublic(akPub)).toString('hex');
    const d = await store.findDeviceByAkName(akName);
    assert.equal(d?.id, 'dev-00000000000000a1', 'the AK name is stored (by the server at start, for rows from before the column)');
    assert.equal(d?.akName, akName);
    assert.equal(store.db.prepare(`SELECT kind FROM nonces WHERE value = 'n1'`).pluck().get(), 'issued');
    // the device API works on the upgraded database
    const r = await server.app.inject({ method: 'POST', url: '/v1/renew/challenge', payload: { deviceId: 'dev-00000000000000a1' } });
    assert.equal(r.statusCode, 200, r.body);
  });
}
