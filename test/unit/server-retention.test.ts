/**
 * Retention: audit rows and expired certificates older than the configured days are exported
 * (JSON lines, 0600) and then deleted; the chain's anchor is kept so `audit verify` still works
 * across the cut (server side and offline on archive + export), a later edit is still found, a
 * chain that is already broken is not pruned. In-process server, real SQLite, moved clock.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import type { AuditRow } from '../../protocol/api.js';
import { applyRetention } from '../../enroll-server/services/retention.js';
import { verifyChain } from '../../enroll-server/store/audit-chain.js';
import { startInProcessServer } from '../helpers/server.js';

const DAY = 86_400_000;
const readLines = (f: string) =>
  readFileSync(f, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));

test('audit rows older than auditDays are archived (0600) and pruned; audit verify works across the cut', async (t) => {
  const s = await startInProcessServer({ zones: { default: {} }, retention: { auditDays: 1, certificateDays: 1 } });
  t.after(() => s.close());
  const store = s.server.ctx.store;
  const db = (store as unknown as { db: import('better-sqlite3').Database }).db;
  for (let i = 0; i < 5; i++) assert.equal((await s.admin('POST', '/v1/admin/tokens', { zone: 'default', owner: `old-${i}` })).status, 200);
  const old = await store.listAudit({ limit: 100_000 });
  s.clock.offset = 2 * DAY;
  for (let i = 0; i < 3; i++) assert.equal((await s.admin('POST', '/v1/admin/tokens', { zone: 'default', owner: `new-${i}` })).status, 200);

  // nothing is pruned while the part to be cut does not verify; repaired, it is
  const saved = db.prepare('SELECT actor FROM audit WHERE seq = 2').get() as { actor: string };
  db.prepare(`UPDATE audit SET actor = 'edited' WHERE seq = 2`).run();
  const refused = await applyRetention(s.server.ctx);
  assert.equal(refused.audit.rows, 0);
  assert.match(refused.audit.refused!, /first problem at row 2/);
  db.prepare('UPDATE audit SET actor = ? WHERE seq = 2').run(saved.actor);

  const res = await applyRetention(s.server.ctx);
  assert.equal(res.audit.rows, old.length);
  assert.equal(res.audit.throughSeq, old.at(-1)!.seq);
  assert.equal(statSync(res.audit.file!).mode & 0o777, 0o600);
  const archived = readLines(res.audit.file!) as AuditRow[];
  assert.deepEqual(archived, old);
  const remaining = await store.listAudit({ limit: 100_000 });
  assert.equal(remaining[0]!.seq, old.at(-1)!.seq + 1);
  assert.ok(remaining.some((r) => r.event === 'retention.audit' && r.details?.throughSeq === old.at(-1)!.seq));

  // the server verifies from the anchor; offline, archive + export verify as one chain from row 1
  const v = await store.verifyAudit();
  assert.equal(v.ok, true, JSON.stringify(v.problems));
  assert.equal(v.from, old.at(-1)!.seq + 1);
  assert.equal(v.rows, remaining.length);
  const api = await s.admin('GET', '/v1/admin/audit/verify');
  assert.equal(api.body.ok, true);
  assert.equal(verifyChain([...archived, ...remaining], null).ok, true);
  assert.equal(verifyChain(remaining, null, { seq: archived.at(-1)!.seq, hash: archived.at(-1)!.hash }).ok, true);

  // an edit after the cut is still reported; so is a removed anchor
  db.prepare(`UPDATE audit SET actor = 'edited' WHERE seq = ?`).run(remaining[1]!.seq);
  const edited = await store.verifyAudit();
  assert.equal(edited.ok, false);
  assert.deepEqual(
    edited.problems!.map((p) => [p.seq, p.kind]),
    [[remaining[1]!.seq, 'hash_mismatch']],
  );
  db.prepare('DELETE FROM audit_checkpoint').run();
  const noAnchor = await store.verifyAudit();
  assert.equal(noAnchor.problem!.seq, remaining[0]!.seq);
  assert.equal(noAnchor.problem!.kind, 'gap');
});

test('certificates expired longer than certificateDays ago are archived (0600) and deleted; live ones stay', async (t) => {
  const s = await startInProcessServer({ zones: { default: {} }, retention: { auditDays: null, certificateDays: 30 } });
  t.after(() => s.close());
  const db = (s.server.ctx.store as unknown as { db: import('better-sqlite3').Database }).db;
  const now = Date.now();
  db.prepare(
    `INSERT INTO devices (id, zone, owner, status, ek_hash, ak_pub, enrolled_by, enrolled_at) VALUES ('dev-00000000000000a1', 'default', 'ops', 'active', 'ek', x'00', 'token:x', ?)`,
  ).run(now - 90 * DAY);
  const cert = db.prepare(
    `INSERT INTO certificates (serial, device_id, not_before, not_after, spki_hash, issued_at) VALUES (?, 'dev-00000000000000a1', ?, ?, 'h', ?)`,
  );
  cert.run('01', now - 90 * DAY, now - 60 * DAY, now - 90 * DAY);
  cert.run('02', now - 40 * DAY, now - 31 * DAY, now - 40 * DAY);
  cert.run('03', now - 10 * DAY, now - 9 * DAY, now - 10 * DAY);
  cert.run('04', now - 1000, now + DAY, now - 1000);
  const res = await applyRetention(s.server.ctx);
  assert.equal(res.audit.rows, 0);
  assert.equal(res.certificates.rows, 2);
  assert.equal(statSync(res.certificates.file!).mode & 0o777, 0o600);
  assert.deepEqual(
    readLines(res.certificates.file!).map((c: { serial: string }) => c.serial),
    ['01', '02'],
  );
  assert.deepEqual(
    (await s.server.ctx.store.listCertificates('dev-00000000000000a1')).map((c) => c.serial),
    ['03', '04'],
  );
  assert.equal((await s.server.ctx.store.verifyAudit()).ok, true);
});
