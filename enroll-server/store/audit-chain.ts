import { createHash } from 'node:crypto';
import { canonicalJson, type AuditProblem, type AuditRow, type AuditVerifyResult } from '../../protocol/api.js';

export const GENESIS_HASH = '0'.repeat(64);

/** The longest text an audit column (or a string inside details) keeps; longer ones are cut. */
export const AUDIT_TEXT_MAX = 1024;
/** At most this many keys per details object and this many problems per verification. */
const DETAILS_MAX_KEYS = 64;
export const VERIFY_PROBLEMS_MAX = 1000;

/** String.prototype.toWellFormed (ES2024): each lone surrogate becomes U+FFFD. */
export function toWellFormed(s: string): string {
  return s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}

/**
 * Text as the audit table stores it: well-formed UTF-16 (a lone surrogate becomes U+FFFD, as
 * String.prototype.toWellFormed does — SQLite would store it as invalid UTF-8 that reads back
 * differently), no U+0000 (SQLite's text functions and its CLI stop at it), at most `max` code
 * units (cut on a code-point boundary). What is hashed is what this returns, so the stored value
 * and the hashed value are the same text (see SqliteStore.appendAuditSync, which also checks it).
 */
export function storableText(s: string, max = AUDIT_TEXT_MAX): string {
  let t = toWellFormed(s).replace(/\u0000/g, '\ufffd');
  if (t.length > max) {
    t = t.slice(0, max);
    // do not leave the high half of a pair at the end
    if (/[\ud800-\udbff]$/.test(t)) t = t.slice(0, -1);
    t += '…';
  }
  return t;
}

/**
 * The details object as stored: every string and key through storableText, numbers finite,
 * nesting and size bounded, so JSON.stringify of it round-trips to the same canonical JSON.
 */
export function storableDetails(v: Record<string, unknown> | null | undefined): Record<string, unknown> | null {
  if (v === null || v === undefined) return null;
  return clean(v, 0) as Record<string, unknown>;
}

function clean(v: unknown, depth: number): unknown {
  if (v === null || v === undefined) return null;
  if (typeof v === 'string') return storableText(v);
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return Number.isFinite(v) ? v : null;
  if (typeof v === 'bigint') return v.toString();
  if (depth >= 6) return '[too deep]';
  if (Array.isArray(v)) return v.slice(0, DETAILS_MAX_KEYS).map((x) => clean(x, depth + 1));
  if (typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v as object).slice(0, DETAILS_MAX_KEYS)) {
      const x = (v as Record<string, unknown>)[k];
      if (x === undefined || typeof x === 'function' || typeof x === 'symbol') continue;
      out[storableText(k, 128)] = clean(x, depth + 1);
    }
    return out;
  }
  return storableText(String(v));
}

/** hash = SHA-256(prevHash ‖ "\n" ‖ canonical JSON of every other column). */
export function auditHash(row: Omit<AuditRow, 'hash'> & { hash?: string }): string {
  const { prevHash, hash: _ignored, ...rest } = row;
  return createHash('sha256').update(prevHash).update('\n').update(canonicalJson(rest)).digest('hex');
}

/** Where a (possibly pruned) chain starts: the last pruned row's seq and hash, or the genesis. */
export interface ChainAnchor {
  seq: number;
  hash: string;
}

/**
 * Walks the chain in seq order, from the anchor (the genesis, or the last row pruned by
 * retention): seq must count up without gaps (a deleted row), each prevHash must be the previous
 * row's hash, each hash must match the row's content (an edited row), and the last row must be the
 * recorded head (a deleted tail). Every problem is reported (up to VERIFY_PROBLEMS_MAX), not only
 * the first: after one, the walk resynchronises on the row as stored, so one bad row does not
 * hide a later one. `problem` is the first of `problems` (the older result shape).
 */
export function verifyChain(
  rows: Iterable<AuditRow>,
  head: { seq: number; hash: string } | null,
  anchor: ChainAnchor | null = null,
): AuditVerifyResult {
  let prev = anchor?.hash ?? GENESIS_HASH;
  let expectSeq = (anchor?.seq ?? 0) + 1;
  let count = 0;
  let last: AuditRow | null = null;
  const problems: AuditProblem[] = [];
  let more = 0;
  const report = (p: AuditProblem) => {
    if (problems.length < VERIFY_PROBLEMS_MAX) problems.push(p);
    else more++;
  };
  for (const r of rows) {
    count++;
    if (r.seq !== expectSeq) {
      report({ seq: r.seq, kind: 'gap', detail: `expected row ${expectSeq}, found ${r.seq}: rows were deleted` });
    } else if (r.prevHash !== prev) {
      report({ seq: r.seq, kind: 'chain_broken', detail: 'prevHash does not match the previous row' });
    }
    if (auditHash(r) !== r.hash) {
      report({ seq: r.seq, kind: 'hash_mismatch', detail: 'row content does not match its hash: the row was edited' });
    }
    prev = r.hash;
    expectSeq = r.seq + 1;
    last = r;
  }
  if (head && (last ? last.seq !== head.seq || last.hash !== head.hash : head.seq !== (anchor?.seq ?? 0))) {
    const end = last?.seq ?? anchor?.seq ?? 0;
    report({
      seq: end,
      kind: 'head_mismatch',
      detail: `the chain ends at ${end} but the recorded head is ${head.seq}: rows at the end were deleted`,
    });
  }
  if (problems.length === 0) return { ok: true, rows: count, ...(anchor && anchor.seq > 0 ? { from: anchor.seq + 1 } : {}) };
  return {
    ok: false,
    rows: count,
    ...(anchor && anchor.seq > 0 ? { from: anchor.seq + 1 } : {}),
    problem: problems[0]!,
    problems,
    ...(more > 0 ? { problemsOmitted: more } : {}),
  };
}
