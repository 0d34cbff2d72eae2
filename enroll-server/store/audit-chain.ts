import { createHash } from 'node:crypto';
import { canonicalJson, type AuditRow, type AuditVerifyResult } from '../../protocol/api.js';

export const GENESIS_HASH = '0'.repeat(64);

/** hash = SHA-256(prevHash ‖ "\n" ‖ canonical JSON of every other column). */
export function auditHash(row: Omit<AuditRow, 'hash'> & { hash?: string }): string {
  const { prevHash, hash: _ignored, ...rest } = row;
  return createHash('sha256').update(prevHash).update('\n').update(canonicalJson(rest)).digest('hex');
}

/**
 * Walks the chain in seq order: seq must count up from 1 without gaps (a deleted row), each
 * prevHash must be the previous row's hash, each hash must match the row's content (an edited
 * row), and the last row must be the recorded head (a deleted tail).
 */
export function verifyChain(rows: Iterable<AuditRow>, head: { seq: number; hash: string } | null): AuditVerifyResult {
  let prev = GENESIS_HASH;
  let expectSeq = 1;
  let count = 0;
  let last: AuditRow | null = null;
  for (const r of rows) {
    count++;
    if (r.seq !== expectSeq) {
      return { ok: false, rows: count, problem: { seq: r.seq, kind: 'gap', detail: `expected row ${expectSeq}, found ${r.seq}: rows were deleted` } };
    }
    if (r.prevHash !== prev) {
      return { ok: false, rows: count, problem: { seq: r.seq, kind: 'chain_broken', detail: 'prevHash does not match the previous row' } };
    }
    if (auditHash(r) !== r.hash) {
      return { ok: false, rows: count, problem: { seq: r.seq, kind: 'hash_mismatch', detail: 'row content does not match its hash: the row was edited' } };
    }
    prev = r.hash;
    expectSeq++;
    last = r;
  }
  if (head && (!last || last.seq !== head.seq || last.hash !== head.hash)) {
    return {
      ok: false,
      rows: count,
      problem: { seq: last?.seq ?? 0, kind: 'head_mismatch', detail: `the chain ends at ${last?.seq ?? 0} but the recorded head is ${head.seq}: rows at the end were deleted` },
    };
  }
  return { ok: true, rows: count };
}
