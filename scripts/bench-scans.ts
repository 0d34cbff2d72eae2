/**
 * Cost of every query on a request or timer path at 10,000 and 100,000 devices (issue: bounded
 * unauthenticated work): the /metrics scrape, the broker reconcile's id list, housekeeping's
 * due-to-retire list, the CRL's revoked certificates, one page of the admin device and token
 * listings (first and last page; the device inventory in each server-side sort), and retention's selections — each with SQLite's query plan, so
 * a full scan shows as SCAN. Rows are seeded directly through the store's database (devices with
 * two certificates each, tokens, audit rows); no TPM, no HTTP.
 *   node --import tsx scripts/bench-scans.ts [--sizes 10000,100000] [--runs 7]
 * Prints a markdown table (for BENCHMARKS.md).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { createMetrics } from '../enroll-server/metrics.js';
import { deviceSortSql, SqliteStore } from '../enroll-server/store/sqlite.js';
import { DEVICE_SORTS, deviceSortKey } from '../enroll-server/store/store.js';

const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : def;
};
const sizes = arg('sizes', '10000,100000').split(',').map(Number);
const runs = Number(arg('runs', '7'));
const DAY = 86_400_000;

function seed(store: SqliteStore, n: number, now: number): void {
  const db = store.db;
  const dev = db.prepare(
    `INSERT INTO devices (id, zone, owner, name, status, ek_hash, ak_pub, ak_name, baseline, claims, enrolled_by, enrolled_at, retire_by, last_seen, last_ip)
     VALUES (?, ?, 'ops', ?, ?, ?, ?, ?, ?, ?, 'token:x', ?, ?, ?, '10.0.0.1')`,
  );
  const cert = db.prepare(
    'INSERT INTO certificates (serial, device_id, not_before, not_after, spki_hash, issued_at, revoked_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
  );
  const tok = db.prepare(
    `INSERT INTO tokens (id, secret_hash, zone, owner, name, purpose, created_by, created_at, expires_at, used_at, device_id) VALUES (?, ?, 'default', 'ops', NULL, NULL, 'admin', ?, ?, ?, ?)`,
  );
  const aud = db.prepare(
    `INSERT INTO audit (seq, time, actor, event, device_id, ip, outcome, reason, details, prev_hash, hash) VALUES (?, ?, 'device', 'renew', ?, '10.0.0.1', 'ok', NULL, '{"serial":"x"}', ?, ?)`,
  );
  const baseline = JSON.stringify(Object.fromEntries([0, 1, 2, 3, 4, 5, 6, 7].map((i) => [String(i), 'ab'.repeat(32)])));
  const claims = JSON.stringify({ agentVersion: '1.2.3', os: 'linux', hostname: 'plc-line-3-station-12' });
  db.transaction(() => {
    for (let i = 0; i < n; i++) {
      const id = `dev-${i.toString(16).padStart(16, '0')}`;
      const r = i % 100;
      const status = r < 90 ? 'active' : r < 95 ? 'quarantined' : r < 98 ? 'revoked' : 'retired';
      const enrolled = now - 400 * DAY + i * 1000;
      dev.run(
        id,
        'default',
        `device ${i}`,
        status,
        `ek${i}`,
        Buffer.alloc(90, i % 256),
        `000b${i.toString(16).padStart(64, '0')}`,
        baseline,
        claims,
        enrolled,
        i % 50 === 0 ? now - DAY : null,
        now - (i % 1000) * 60_000,
      );
      cert.run(`a${i}`, id, now - 3 * DAY, now - 2 * DAY, 'h', now - 3 * DAY, null, null);
      const revoked = status === 'revoked';
      cert.run(`b${i}`, id, now - 1000, now + 3600_000, 'h', now - 1000, revoked ? now - 500 : null, revoked ? 'keyCompromise' : null);
      tok.run(`t${i.toString(16).padStart(12, '0')}`, Buffer.alloc(32), enrolled, enrolled + 8 * 3600_000, enrolled + 60_000, id);
      aud.run(i + 1, now - 400 * DAY + i * 1000, id, 'x'.repeat(64), 'y'.repeat(64));
    }
  })();
  db.exec('ANALYZE');
}

function plan(store: SqliteStore, sql: string, ...args: unknown[]): string {
  const rows = store.db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...args) as { detail: string }[];
  return rows.map((r) => r.detail).join('; ');
}

async function time(fn: () => Promise<unknown>): Promise<{ median: number; items: number }> {
  let items = 0;
  const r0 = await fn();
  items = Array.isArray(r0) ? r0.length : typeof r0 === 'string' ? 1 : 0;
  const t: number[] = [];
  for (let i = 0; i < runs; i++) {
    const s = performance.now();
    await fn();
    t.push(performance.now() - s);
  }
  t.sort((a, b) => a - b);
  return { median: t[Math.floor(t.length / 2)]!, items };
}

const results: { what: string; n: number; ms: number; items: number; plan: string }[] = [];
for (const n of sizes) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'edgeid-bench-scans-'));
  const store = new SqliteStore(path.join(dir, 'edgeid.db'));
  const now = Date.now();
  seed(store, n, now);
  const metrics = createMetrics(() => store.countDevicesByStatus(), false);
  const lastDev = store.db.prepare('SELECT enrolled_at, id FROM devices ORDER BY enrolled_at DESC, id DESC LIMIT 1 OFFSET 500').get() as {
    enrolled_at: number;
    id: string;
  };
  const lastTok = store.db.prepare('SELECT created_at, id FROM tokens ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET 500').get() as {
    created_at: number;
    id: string;
  };
  const cases: [string, () => Promise<unknown>, string, unknown[]][] = [
    [
      'GET /metrics (device gauge: GROUP BY status)',
      () => metrics.registry.metrics(),
      'SELECT status, COUNT(*) AS n FROM devices GROUP BY status',
      [],
    ],
    ['before: every device row decoded per scrape', () => store.listDevices(), 'SELECT * FROM devices ORDER BY enrolled_at, id', []],
    [
      'broker reconcile: live device ids',
      () => store.listDeviceIds({ status: ['active', 'quarantined'] }),
      "SELECT id FROM devices WHERE devices.status IN ('active','quarantined') ORDER BY id",
      [],
    ],
    [
      'housekeeping: devices due to retire (ids)',
      () => store.listDeviceIds({ status: ['active', 'quarantined'], retireByAtOrBefore: now }),
      "SELECT id FROM devices WHERE devices.status IN ('active','quarantined') AND devices.retire_by IS NOT NULL AND devices.retire_by <= ? ORDER BY id",
      [now],
    ],
    [
      'CRL: revoked unexpired certificates',
      () => store.listRevokedUnexpired(now),
      'SELECT * FROM certificates WHERE revoked_at IS NOT NULL AND not_after > ? ORDER BY revoked_at, serial',
      [now],
    ],
    [
      'admin devices list: first page (1000)',
      () => store.pageDevicesWithLastCertificate({}, { limit: 1001 }),
      'SELECT * FROM devices d ORDER BY d.enrolled_at, d.id LIMIT 1001',
      [],
    ],
    [
      'admin devices list: a page near the end (cursor)',
      () => store.pageDevicesWithLastCertificate({}, { limit: 1001, after: { time: lastDev.enrolled_at, id: lastDev.id } }),
      'SELECT * FROM devices d WHERE (d.enrolled_at, d.id) > (?, ?) ORDER BY d.enrolled_at, d.id LIMIT 1001',
      [lastDev.enrolled_at, lastDev.id],
    ],
    [
      'admin devices list: status=quarantined, first page',
      () => store.pageDevicesWithLastCertificate({ status: ['quarantined'] }, { limit: 1001 }),
      "SELECT * FROM devices d WHERE d.status IN ('quarantined') ORDER BY d.enrolled_at, d.id LIMIT 1001",
      [],
    ],
    [
      'admin tokens list: a page near the end (cursor)',
      () => store.pageTokens({ limit: 1001, after: { time: lastTok.created_at, id: lastTok.id } }),
      'SELECT * FROM tokens WHERE (created_at, id) > (?, ?) ORDER BY created_at, id LIMIT 1001',
      [lastTok.created_at, lastTok.id],
    ],
    [
      'retention: last audit row to prune',
      () => store.auditPruneLimit(now - 30 * DAY),
      'SELECT MAX(seq) AS s FROM audit WHERE time < ? AND seq < (SELECT MAX(seq) FROM audit)',
      [now - 30 * DAY],
    ],
    [
      'retention: expired certificates (batch of 2,000)',
      () => store.listExpiredCertificates(now - DAY, 2_000),
      'SELECT * FROM certificates WHERE not_after < ? ORDER BY not_after, serial LIMIT 2000',
      [now - DAY],
    ],
  ];
  // the inventory sorted by the server: a page of 1000 after a cursor in the middle of the fleet,
  // each sort and order, with the listing's own SQL (keyset on the migration-012 indexes)
  const newest = 'SELECT serial FROM certificates WHERE device_id = d.id ORDER BY not_after DESC LIMIT 1';
  for (const sort of DEVICE_SORTS) {
    for (const order of ['asc', 'desc'] as const) {
      const mid = (await store.pageDevicesWithLastCertificate({}, { limit: Math.floor(n / 2), sort, order })).at(-1)!;
      const page = { limit: 1001, sort, order, after: { key: deviceSortKey(mid, sort), id: mid.device.id } };
      const sql = deviceSortSql(page, 'd');
      cases.push([
        `admin devices list: sort=${sort}&order=${order}, a page mid-fleet (cursor)`,
        () => store.pageDevicesWithLastCertificate({}, page),
        `SELECT d.*, c.serial FROM (SELECT * FROM devices d WHERE ${sql.after!.where}${sql.orderBy} LIMIT 1001) d LEFT JOIN certificates c ON c.serial = (${newest})${sql.orderBy}`,
        sql.after!.args,
      ]);
    }
  }
  // without the cert_not_after column: the newest notAfter computed per device for every page
  const byMax = `SELECT d.* FROM devices d ORDER BY (SELECT MAX(not_after) FROM certificates WHERE device_id = d.id), d.id LIMIT 1001`;
  cases.push(['before: sort=expiry by a correlated MAX(notAfter), first page', async () => store.db.prepare(byMax).all(), byMax, []]);
  for (const [what, fn, sql, args] of cases) {
    const r = await time(fn);
    results.push({ what, n, ms: r.median, items: r.items, plan: plan(store, sql, ...args) });
  }
  await store.close();
  rmSync(dir, { recursive: true, force: true });
}

console.log(
  `Median of ${runs} runs after one warm-up, one SQLite file (WAL) on local disk; devices: 90 % active, 5 % quarantined, 3 % revoked, 2 % retired, two certificates each (one expired), one token and one audit row each.`,
);
console.log('');
console.log(
  `| query | ${sizes.map((n) => `${n.toLocaleString('en')} devices (ms)`).join(' | ')} | rows returned (largest) | SQLite plan |`,
);
console.log(`|---|${sizes.map(() => '---:').join('|')}|---:|---|`);
for (const what of [...new Set(results.map((r) => r.what))]) {
  const rs = results.filter((r) => r.what === what);
  const last = rs.at(-1)!;
  console.log(`| ${what} | ${rs.map((r) => r.ms.toFixed(2)).join(' | ')} | ${last.items} | ${last.plan.replace(/\|/g, '/')} |`);
}
