import type { AuditRow, AuditVerifyResult } from '../../protocol/api.js';
import { EdgeidError, type ErrorCode } from '../../protocol/errors/index.js';
import type { AuditInput } from '../store/store.js';
import type { ServerContext } from './context.js';

/** Who asked, from where, and what: the start of an action's audit row. */
export interface ActionStart {
  event: string;
  actor: string;
  ip: string | null;
  deviceId?: string | null;
  details?: Record<string, unknown> | null;
  /** Counts the action's outcome (e.g. the enrollments / renewals counters). */
  count?: (outcome: 'ok' | 'fail') => void;
}

export function toEdgeidError(e: unknown, fallback: ErrorCode): EdgeidError {
  if (e instanceof EdgeidError) return e;
  return new EdgeidError(fallback, undefined, { cause: e instanceof Error ? e.message.slice(0, 200) : String(e) });
}

/**
 * One audited action. A service refines who and what as it learns them (the token's id, the
 * device); its audit row is written exactly once, success or failure:
 * - by a store transaction that commits the action's change together with the row (the service
 *   builds it with okRow / failRow and calls recorded() once the store committed it), or
 * - by `audited` when the action ends and no row was recorded: an ok row with the details set
 *   so far, or a fail row with the error's code — through the failure writer the service set
 *   (e.g. one that also spends an enrollment token), else a plain append.
 */
export class AuditedAction {
  readonly time: number;
  actor: string;
  deviceId: string | null;
  details: Record<string, unknown> | null;
  private done = false;
  private failureWriter: ((row: AuditInput, e: EdgeidError) => Promise<void>) | null = null;

  constructor(
    readonly event: string,
    private readonly start: ActionStart,
    time: number,
  ) {
    this.time = time;
    this.actor = start.actor;
    this.deviceId = start.deviceId ?? null;
    this.details = start.details ?? null;
  }

  private base(): Omit<AuditInput, 'outcome'> {
    return { time: this.time, actor: this.actor, event: this.event, deviceId: this.deviceId, ip: this.start.ip, details: this.details };
  }

  /** The success row; `details` replace the ones set so far. */
  okRow(details?: Record<string, unknown> | null): AuditInput {
    return { ...this.base(), outcome: 'ok', ...(details !== undefined ? { details } : {}) };
  }

  /** The failure row: the error's code as the reason, its message and details added to the details. */
  failRow(e: EdgeidError): AuditInput {
    return { ...this.base(), outcome: 'fail', reason: e.code, details: { ...(this.details ?? {}), message: e.message.slice(0, 300), ...(e.details ?? {}) } };
  }

  /** A store transaction committed this action's row (built by okRow / failRow). */
  recorded(): void {
    this.done = true;
  }

  get isRecorded(): boolean {
    return this.done;
  }

  /** How a failure's row is written if none was recorded (default: appended on its own). */
  onFailure(writer: (row: AuditInput, e: EdgeidError) => Promise<void>): void {
    this.failureWriter = writer;
  }

  async writeFailure(ctx: ServerContext, e: EdgeidError): Promise<void> {
    if (this.done) return;
    const row = this.failRow(e);
    if (this.failureWriter && e.code !== 'internal_error') await this.failureWriter(row, e);
    else await ctx.store.appendAudit(row);
    this.done = true;
  }
}

/**
 * Runs one service action so that it leaves exactly one audit row (see AuditedAction). Anything
 * thrown becomes an EdgeidError (our own faults internal_error, logged with their cause); the
 * action's counter, if any, counts the outcome once.
 */
export async function audited<T>(ctx: ServerContext, start: ActionStart, fn: (a: AuditedAction) => Promise<T>): Promise<T> {
  const a = new AuditedAction(start.event, start, ctx.now());
  let result: T;
  try {
    result = await fn(a);
  } catch (e) {
    const err = toEdgeidError(e, 'internal_error');
    if (err.code === 'internal_error') ctx.log.error({ err: e, event: start.event }, 'action failed');
    start.count?.('fail');
    try {
      await a.writeFailure(ctx, err);
    } catch (auditErr) {
      ctx.log.error({ err: auditErr, event: start.event }, 'audit append failed');
      throw toEdgeidError(auditErr, 'internal_error');
    }
    throw err;
  }
  if (!a.isRecorded) {
    await ctx.store.appendAudit(a.okRow());
    a.recorded();
  }
  start.count?.('ok');
  return result;
}

/** GET /v1/admin/audit: rows after `after` (seq), at most `limit` (≤ 10 000), optionally of one device. */
export async function exportAudit(
  ctx: ServerContext,
  q: { after?: number; limit?: number; deviceId?: string },
  who: { actor: string; ip: string | null },
): Promise<{ rows: AuditRow[] }> {
  return audited(ctx, { event: 'admin.audit.export', actor: who.actor, ip: who.ip, details: { after: String(q.after ?? 0) } }, async (a) => {
    const rows = await ctx.store.listAudit({ afterSeq: q.after ?? 0, limit: Math.min(10_000, q.limit ?? 1000), ...(q.deviceId ? { deviceId: q.deviceId } : {}) });
    a.details = { ...a.details, rows: rows.length };
    return { rows };
  });
}

/** GET /v1/admin/audit/verify: walks the hash chain (see store/audit-chain.ts). */
export async function verifyAudit(ctx: ServerContext, who: { actor: string; ip: string | null }): Promise<AuditVerifyResult> {
  return audited(ctx, { event: 'admin.audit.verify', actor: who.actor, ip: who.ip }, async (a) => {
    const result = await ctx.store.verifyAudit();
    a.details = { ok: result.ok, rows: result.rows };
    return result;
  });
}

/**
 * The audit row of a request refused before it reached a service action (bad input, no admin
 * token, wrong media type, too large): the caller's side of it, as far as it is known.
 */
export async function auditRefusal(
  ctx: ServerContext,
  r: { event: string; actor: string; ip: string | null; deviceId: string | null; error: EdgeidError; requestId: string },
): Promise<void> {
  await ctx.store.appendAudit({
    time: ctx.now(),
    actor: r.actor,
    event: r.event,
    deviceId: r.deviceId,
    ip: r.ip,
    outcome: 'fail',
    reason: r.error.code,
    details: { message: r.error.message.slice(0, 300), requestId: r.requestId },
  });
}
