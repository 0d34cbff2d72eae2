/**
 * The device inventory sorted by the store (sort enrolled | name | lastSeen | expiry, asc | desc)
 * and keyset-paged on (sort key, id), on every store (SQLite and PostgreSQL): the order, ties
 * broken by id in the sort's direction, missing keys first ascending, and paging through the whole
 * fleet without gaps or repeats. `expiry` is the newest certificate's notAfter, kept on the device
 * row by triggers (migration 012): inserting and deleting certificates moves a device.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEVICE_SORTS, deviceSortKey, type DeviceListing, type DeviceSort } from '../../enroll-server/store/store.js';
import { forEachStore, type StoreFixture } from '../helpers/stores.js';

const N = 61;
const DEV = `INSERT INTO devices (id, zone, owner, name, status, ek_hash, ak_pub, enrolled_by, enrolled_at, last_seen) VALUES (?, 'default', 'o', ?, 'active', ?, ?, 'admin', ?, ?)`;
const CERT = `INSERT INTO certificates (serial, device_id, not_before, not_after, spki_hash, issued_at) VALUES (?, ?, 0, ?, 'h', 0)`;
// names with ties, no name, case and a non-ASCII letter (byte order on both stores)
const NAMES = ['plc-b', 'plc-a', null, 'PLC-a', 'Äpfel', 'plc-a', 'z', 'plc-b'];

interface Expect {
  id: string;
  enrolled: number;
  name: string;
  lastSeen: number;
  expiry: number;
}

async function seed(fx: StoreFixture): Promise<Expect[]> {
  const out: Expect[] = [];
  for (let i = 0; i < N; i++) {
    // ids not in enrolment order, so a tie broken by id is visible
    const id = `dev-${((i * 37) % N).toString(16).padStart(16, '0')}`;
    const enrolled = 1_000 + (i % 9) * 10; // ties
    const name = NAMES[i % NAMES.length]!;
    const lastSeen = i % 4 === 0 ? null : 5_000 + (i % 6);
    await fx.exec(DEV, id, name, `ek${i}`, Buffer.from([i]), enrolled, lastSeen);
    // no certificate, one, or two (the newest counts, whichever was inserted first)
    let expiry = 0;
    if (i % 5 !== 0) {
      const a = 90_000 + (i % 3) * 1000;
      const b = 80_000 + (i % 7) * 3000;
      await fx.exec(CERT, `s${i}a`, id, a);
      if (i % 2) await fx.exec(CERT, `s${i}b`, id, b);
      expiry = i % 2 ? Math.max(a, b) : a;
    }
    out.push({ id, enrolled, name: name ?? '', lastSeen: lastSeen ?? 0, expiry });
  }
  return out;
}

const byteCmp = (a: string, b: string) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));

function expected(rows: Expect[], sort: DeviceSort, order: 'asc' | 'desc'): string[] {
  const sign = order === 'asc' ? 1 : -1;
  return [...rows]
    .sort((x, y) => {
      const kx = x[sort];
      const ky = y[sort];
      const c = typeof kx === 'string' ? byteCmp(kx, ky as string) : (kx as number) - (ky as number);
      return sign * (c !== 0 ? c : byteCmp(x.id, y.id));
    })
    .map((r) => r.id);
}

async function walk(fx: StoreFixture, sort: DeviceSort, order: 'asc' | 'desc', limit: number): Promise<DeviceListing[]> {
  const all: DeviceListing[] = [];
  let after: { key: number | string; id: string } | undefined;
  for (let pages = 0; pages < 1000; pages++) {
    const page = await fx.store.pageDevicesWithLastCertificate({}, { limit, sort, order, ...(after ? { after } : {}) });
    all.push(...page);
    if (page.length < limit) return all;
    const last = page.at(-1)!;
    after = { key: deviceSortKey(last, sort), id: last.device.id };
  }
  throw new Error('paging did not end');
}

forEachStore((kind) => {
  test(`${kind.name}: each sort and order pages through the whole fleet in key order, ties by id, no gaps or repeats`, async (t) => {
    const fx = await kind.open(t);
    const rows = await seed(fx);
    for (const sort of DEVICE_SORTS) {
      for (const order of ['asc', 'desc'] as const) {
        const want = expected(rows, sort, order);
        // one page holding everything, and pages of 7 (a page boundary inside runs of equal keys)
        const whole = await fx.store.pageDevicesWithLastCertificate({}, { limit: 1000, sort, order });
        assert.deepEqual(
          whole.map((l) => l.device.id),
          want,
          `${sort} ${order}`,
        );
        const paged = (await walk(fx, sort, order, 7)).map((l) => l.device.id);
        assert.deepEqual(paged, want, `${sort} ${order} in pages of 7`);
        assert.equal(new Set(paged).size, N);
      }
    }
    // the expiry key is the newest certificate, the one the listing shows
    for (const l of await fx.store.pageDevicesWithLastCertificate({}, { limit: 1000, sort: 'expiry' })) {
      assert.equal(deviceSortKey(l, 'expiry'), rows.find((r) => r.id === l.device.id)!.expiry);
    }
  });

  test(`${kind.name}: the expiry sort follows certificates inserted and deleted`, async (t) => {
    const fx = await kind.open(t);
    for (const [i, id] of ['dev-00000000000000a1', 'dev-00000000000000a2', 'dev-00000000000000a3'].entries()) {
      await fx.exec(DEV, id, null, `ek${i}`, Buffer.from([i]), 1, null);
    }
    await fx.exec(CERT, 'x1', 'dev-00000000000000a1', 500);
    await fx.exec(CERT, 'x2', 'dev-00000000000000a2', 300);
    const order = async () =>
      (await fx.store.pageDevicesWithLastCertificate({}, { limit: 10, sort: 'expiry' })).map((l) => l.device.id.slice(-2));
    assert.deepEqual(await order(), ['a3', 'a2', 'a1']);
    await fx.exec(CERT, 'x3', 'dev-00000000000000a2', 900); // a newer certificate moves a2 last
    assert.deepEqual(await order(), ['a3', 'a1', 'a2']);
    await fx.exec(CERT, 'x4', 'dev-00000000000000a2', 100); // an older one does not
    assert.deepEqual(await order(), ['a3', 'a1', 'a2']);
    await fx.exec(`DELETE FROM certificates WHERE serial = ?`, 'x3'); // deleted: the next newest counts
    assert.deepEqual(await order(), ['a3', 'a2', 'a1']);
    await fx.exec(`DELETE FROM certificates WHERE device_id = ?`, 'dev-00000000000000a1'); // none left: 0
    assert.deepEqual(await order(), ['a1', 'a3', 'a2']);
  });
});
