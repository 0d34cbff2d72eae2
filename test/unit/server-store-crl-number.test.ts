/**
 * CRL numbers across several server instances on one database (RFC 5280 §5.2.3: a CRL number
 * increases monotonically and never repeats): three stores on the same database reserve numbers
 * at the same time; every reservation is distinct, each instance's numbers increase, and together
 * they cover 1…N without a duplicate. A restore that moves the counter forward (backup.ts sets it
 * to at least the restore time in ms) is continued from, not reset.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Store } from '../../enroll-server/store/store.js';
import { forEachStore } from '../helpers/stores.js';

const PER_INSTANCE = 60;

forEachStore((kind) => {
  test(`${kind.name}: three instances reserving CRL numbers at once never get the same one`, async (t) => {
    const where = await kind.fresh(t);
    const stores: Store[] = [];
    for (let i = 0; i < 3; i++) stores.push((await kind.at(t, where)).store);
    const got = await Promise.all(
      stores.map(async (s) => {
        const mine: bigint[] = [];
        for (let i = 0; i < PER_INSTANCE; i++) mine.push(await s.nextCrlNumbers(2));
        return mine;
      }),
    );
    for (const mine of got) for (let i = 1; i < mine.length; i++) assert.ok(mine[i]! > mine[i - 1]!, `${mine[i]} after ${mine[i - 1]}`);
    const all = got.flat().sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    assert.equal(new Set(all.map(String)).size, all.length, 'a CRL number was handed out twice');
    // each reservation is two numbers (the short- and the long-lived CRL): 1, 3, 5, … with no overlap
    assert.deepEqual(
      all.map(String),
      all.map((_, i) => String(2 * i + 1)),
    );
    assert.equal(await stores[0]!.getMeta('crl_number'), String(2 * all.length));
  });

  test(`${kind.name}: a counter moved forward by a restore is continued from`, async (t) => {
    const { store } = await kind.open(t);
    assert.equal(await store.nextCrlNumbers(2), 1n);
    const restoredAt = 1_770_000_000_123n;
    await store.setMeta('crl_number', restoredAt.toString());
    assert.equal(await store.nextCrlNumbers(2), restoredAt + 1n);
    assert.equal(await store.nextCrlNumbers(1), restoredAt + 3n);
    assert.equal(await store.getMeta('crl_number'), (restoredAt + 3n).toString());
  });
});
