/**
 * The EK identity migration on real SQLite: rows from before it keep their hash and are marked
 * legacy, a data dir that held devices or tokens keeps EK certificates optional, and the live-EK
 * lookup matches legacy rows by their old hashes only.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadMigrations, migrate } from '../../enroll-server/store/migrate.js';
import { SqliteStore } from '../../enroll-server/store/sqlite.js';

async function dir(t: import('node:test').TestContext): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'edgeid-ek-store-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

function device(db: Database.Database, id: string, ekHash: string, status: string): void {
  db.prepare(
    `INSERT INTO devices (id, zone, owner, status, ek_hash, ak_pub, enrolled_by, enrolled_at) VALUES (?, 'default', 'o', ?, ?, x'00', 'admin', 1)`,
  ).run(id, status, ekHash);
}

test('devices from before the canonical EK identity are marked legacy, and the data dir keeps EK certificates optional', async (t) => {
  const file = path.join(await dir(t), 'edgeid.db');
  const old = new Database(file);
  migrate(
    old,
    loadMigrations().filter((m) => m.version <= 3),
  );
  device(old, 'dev-a', 'legacy-hash-a', 'active');
  // the race this version closes may already have left two live devices on one EK: the upgrade must not fail on them
  device(old, 'dev-b', 'legacy-hash-b', 'active');
  device(old, 'dev-c', 'legacy-hash-b', 'quarantined');
  old.close();

  const s = new SqliteStore(file);
  t.after(() => s.close());
  assert.equal(s.schema.to, loadMigrations().length);
  assert.equal(await s.getMeta('ek_cert_legacy_optional'), '1');
  const a = (await s.getDevice('dev-a'))!;
  assert.equal(a.ekLegacy, true);
  assert.equal(a.ekVerified, null);
  // a legacy row is found by an old hash of the presented EK, never by the new identity alone
  assert.equal((await s.findLiveDeviceByEk('legacy-hash-a'))?.id, undefined);
  assert.equal((await s.findLiveDeviceByEk('new-identity', ['legacy-hash-a']))?.id, 'dev-a');
  assert.equal((await s.findLiveDeviceByEk('new-identity', ['other']))?.id, undefined);
});

test('a new data dir requires EK certificates (no legacy marker) and holds one live device per EK identity in the schema', async (t) => {
  const file = path.join(await dir(t), 'edgeid.db');
  const s = new SqliteStore(file);
  t.after(() => s.close());
  assert.equal(await s.getMeta('ek_cert_legacy_optional'), null);
  device(s.db, 'dev-1', 'ek-id', 'active');
  assert.throws(() => device(s.db, 'dev-2', 'ek-id', 'quarantined'), /UNIQUE constraint failed/);
  device(s.db, 'dev-3', 'ek-id', 'revoked');
  s.db.prepare(`UPDATE devices SET status = 'retired' WHERE id = 'dev-1'`).run();
  device(s.db, 'dev-4', 'ek-id', 'active');
});
