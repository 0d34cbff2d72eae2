/**
 * The EK identity migration on every store (SQLite and PostgreSQL): rows from before it keep their
 * hash and are marked legacy, a database that held devices or tokens keeps EK certificates
 * optional, and the live-EK lookup matches legacy rows by their old hashes only.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { loadMigrations, migrate } from '../../enroll-server/store/migrate.js';
import { loadPgMigrations } from '../../enroll-server/store/postgres.js';
import { forEachStore, type StoreFixture } from '../helpers/stores.js';

const DEVICE = `INSERT INTO devices (id, zone, owner, status, ek_hash, ak_pub, enrolled_by, enrolled_at) VALUES (?, 'default', 'o', ?, ?, ?, 'admin', 1)`;

function device(x: Pick<StoreFixture, 'exec'>, id: string, ekHash: string, status: string): Promise<unknown> {
  return x.exec(DEVICE, id, status, ekHash, Buffer.from([0]));
}

forEachStore((kind) => {
  test(`${kind.name}: devices from before the canonical EK identity are marked legacy, and the database keeps EK certificates optional`, async (t) => {
    const where = await kind.fresh(t);
    let s: StoreFixture;
    const rows = async (x: Pick<StoreFixture, 'exec'>) => {
      await device(x, 'dev-a', 'legacy-hash-a', 'active');
      // the race this version closes may already have left two live devices on one EK: the upgrade must not fail on them
      await device(x, 'dev-b', 'legacy-hash-b', 'active');
      await device(x, 'dev-c', 'legacy-hash-b', 'quarantined');
    };
    if (kind.name === 'sqlite') {
      const old = new Database(where);
      migrate(
        old,
        loadMigrations().filter((m) => m.version <= 3),
      );
      await rows({ exec: async (sql, ...args) => (old.prepare(sql).run(...args), []) });
      old.close();
      s = await kind.at(t, where);
    } else {
      const old = await kind.at(
        t,
        where,
        loadPgMigrations().filter((m) => m.version <= 3),
      );
      await rows(old);
      s = await old.reopen(loadPgMigrations());
    }
    const store = s.store as { schema?: { to: number } } & typeof s.store;
    assert.equal(store.schema?.to, loadMigrations().length);
    assert.equal(await s.store.getMeta('ek_cert_legacy_optional'), '1');
    const a = (await s.store.getDevice('dev-a'))!;
    assert.equal(a.ekLegacy, true);
    assert.equal(a.ekVerified, null);
    // a legacy row is found by an old hash of the presented EK, never by the new identity alone
    assert.equal((await s.store.findLiveDeviceByEk('legacy-hash-a'))?.id, undefined);
    assert.equal((await s.store.findLiveDeviceByEk('new-identity', ['legacy-hash-a']))?.id, 'dev-a');
    assert.equal((await s.store.findLiveDeviceByEk('new-identity', ['other']))?.id, undefined);
  });

  test(`${kind.name}: a new database requires EK certificates (no legacy marker) and holds one live device per EK identity in the schema`, async (t) => {
    const s = await kind.open(t);
    assert.equal(await s.store.getMeta('ek_cert_legacy_optional'), null);
    await device(s, 'dev-1', 'ek-id', 'active');
    await assert.rejects(
      device(s, 'dev-2', 'ek-id', 'quarantined'),
      /UNIQUE constraint failed|duplicate key value violates unique constraint "devices_live_ek"/,
    );
    await device(s, 'dev-3', 'ek-id', 'revoked');
    await s.exec(`UPDATE devices SET status = 'retired' WHERE id = 'dev-1'`);
    await device(s, 'dev-4', 'ek-id', 'active');
  });
});
