/**
 * Retention (config `retention: { auditDays, certificateDays }`): audit rows older than auditDays
 * and certificates that expired more than certificateDays ago are first written to a file under
 * `<data>/archive/` (JSON lines, the `audit export` format, mode 0600, written atomically and
 * fsynced) and only then deleted. The audit chain keeps its anchor: the last pruned row's seq and
 * hash go into `audit_checkpoint`, the remaining rows verify from it, and the archive files verify
 * offline (`edgeid-admin audit verify --file`), each from its first row's prevHash.
 *
 * Each run handles at most BATCH rows of each kind, so a timer tick never does unbounded work;
 * a backlog is worked off over the following ticks. A chain that does not verify up to the cut
 * is not pruned (the evidence stays where `audit verify` reports it), and the refusal is logged.
 */
import { join } from 'node:path';
import type { AuditRow } from '../../protocol/api.js';
import { verifyChain } from '../store/audit-chain.js';
import { ensurePrivateDir, writeFileAtomic } from '../files.js';
import type { ServerContext } from './context.js';

export const RETENTION_BATCH = 2_000;
const DAY = 86_400_000;

export interface RetentionResult {
  audit: { rows: number; file: string | null; throughSeq: number | null; refused?: string };
  certificates: { rows: number; file: string | null };
}

export async function applyRetention(ctx: ServerContext): Promise<RetentionResult> {
  const out: RetentionResult = { audit: { rows: 0, file: null, throughSeq: null }, certificates: { rows: 0, file: null } };
  const { auditDays, certificateDays } = ctx.config.retention;
  const now = ctx.now();
  const dir = join(ctx.config.dataDir, 'archive');

  if (auditDays !== null) {
    const limit = await ctx.store.auditPruneLimit(now - auditDays * DAY);
    const anchor = await ctx.store.auditAnchor();
    if (limit !== null && limit > (anchor?.seq ?? 0)) {
      const rows = await ctx.store.listAudit({ afterSeq: anchor?.seq ?? 0, limit: Math.min(RETENTION_BATCH, limit - (anchor?.seq ?? 0)) });
      const through = rows.at(-1)!.seq;
      // the rows to be cut must form an intact chain from the anchor: otherwise they are evidence
      const v = verifyChain(rows, null, anchor);
      if (!v.ok) {
        out.audit.refused = `the audit chain does not verify before row ${through} (first problem at row ${v.problem!.seq}): nothing pruned`;
        ctx.log.error({ problem: v.problem }, 'audit retention refused');
      } else {
        ensurePrivateDir(dir);
        const file = join(dir, `audit-${String(rows[0]!.seq).padStart(12, '0')}-${String(through).padStart(12, '0')}.jsonl`);
        writeFileAtomic(file, rows.map((r: AuditRow) => JSON.stringify(r)).join('\n') + '\n', 0o600);
        const res = await ctx.store.pruneAudit({
          throughSeq: through,
          now,
          file,
          audit: {
            time: now,
            actor: 'server',
            event: 'retention.audit',
            outcome: 'ok',
            details: { rows: rows.length, fromSeq: rows[0]!.seq, throughSeq: through, anchorHash: rows.at(-1)!.hash, file, auditDays },
          },
        });
        out.audit = { rows: res.rows, file, throughSeq: through };
      }
    }
  }

  if (certificateDays !== null) {
    const before = now - certificateDays * DAY;
    const certs = await ctx.store.listExpiredCertificates(before, RETENTION_BATCH);
    if (certs.length > 0) {
      ensurePrivateDir(dir);
      const file = join(dir, `certificates-${new Date(now).toISOString().replace(/[:.]/g, '-')}.jsonl`);
      writeFileAtomic(file, certs.map((c) => JSON.stringify(c)).join('\n') + '\n', 0o600);
      const n = await ctx.store.deleteCertificates(
        certs.map((c) => c.serial),
        before,
      );
      await ctx.store.appendAudit({
        time: now,
        actor: 'server',
        event: 'retention.certificates',
        outcome: 'ok',
        details: { rows: n, file, certificateDays, expiredBefore: new Date(before).toISOString() },
      });
      out.certificates = { rows: n, file };
    }
  }
  return out;
}
