/**
 * verifyChain reports every problem, not only the first: after a deleted row, an edited row or a
 * broken link it resynchronises on the stored row, so a later edit is still found; `problem`
 * stays the first one (the older result shape).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AuditRow } from '../../protocol/api.js';
import { auditHash, GENESIS_HASH, verifyChain } from '../../enroll-server/store/audit-chain.js';

function chain(n: number): AuditRow[] {
  const rows: AuditRow[] = [];
  let prev = GENESIS_HASH;
  for (let i = 1; i <= n; i++) {
    const r = {
      seq: i,
      time: new Date(1_700_000_000_000 + i).toISOString(),
      actor: 'a',
      event: 'e',
      deviceId: null,
      ip: null,
      outcome: 'ok' as const,
      reason: null,
      details: { i },
      prevHash: prev,
    };
    const hash = auditHash(r);
    rows.push({ ...r, hash });
    prev = hash;
  }
  return rows;
}

test('a deleted row, an edited row and a truncated tail are all reported, in seq order', () => {
  const rows = chain(10);
  const head = { seq: 10, hash: rows[9]!.hash };
  const tampered = rows
    .filter((r) => r.seq !== 3)
    .map((r) => (r.seq === 7 ? { ...r, actor: 'mallory' } : r))
    .slice(0, 8);
  const v = verifyChain(tampered, head);
  assert.equal(v.ok, false);
  assert.deepEqual(v.problem, v.problems![0]);
  assert.deepEqual(
    v.problems!.map((p) => [p.seq, p.kind]),
    [
      [4, 'gap'],
      [7, 'hash_mismatch'],
      [9, 'head_mismatch'],
    ],
  );
});

test('an intact chain, and one starting at an anchor, verify', () => {
  const rows = chain(6);
  assert.deepEqual(verifyChain(rows, { seq: 6, hash: rows[5]!.hash }), { ok: true, rows: 6 });
  const v = verifyChain(rows.slice(3), { seq: 6, hash: rows[5]!.hash }, { seq: 3, hash: rows[2]!.hash });
  assert.deepEqual(v, { ok: true, rows: 3, from: 4 });
  const wrongAnchor = verifyChain(rows.slice(3), null, { seq: 3, hash: 'f'.repeat(64) });
  assert.deepEqual(
    wrongAnchor.problems!.map((p) => [p.seq, p.kind]),
    [[4, 'chain_broken']],
  );
});
