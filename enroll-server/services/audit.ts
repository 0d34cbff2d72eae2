import type { AuditRow, AuditVerifyResult } from '../../protocol/api.js';
import { addressGroup } from './address.js';
import { ERRORS, EdgeidError, type ErrorCode } from '../../protocol/errors/index.js';
import type { AuditInput } from '../store/store.js';
import type { ServerContext } from './context.js';
import { storageFailure } from '../files.js';

/** Who asked, from where, and what: the start of an action's audit row. */
export interface ActionStart {
  event: string;
  actor: string;
  ip: string | null;
  deviceId?: string | null;
  details?: Record<string, unknown> | null;
  /** The person's role (details.role of the row); for a `user:NAME` actor read from its account when not given. */
  role?: string | null;
  /** Counts the action's outcome (e.g. the enrollments / renewals counters). */
  count?: (outcome: 'ok' | 'fail') => void;
}

export function toEdgeidError(e: unknown, fallback: ErrorCode): EdgeidError {
  if (e instanceof EdgeidError) return e;
  const storage = storageFailure(e);
  if (storage) return storage;
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
  /** The real cause of a failure answered with a generic code (see auditAs). */
  private realCause: EdgeidError | null = null;

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

  /** The acting person's role, recorded as details.role on every row of the action (under the chain hash). */
  role: string | null = null;

  private withRole(details: Record<string, unknown> | null): Record<string, unknown> | null {
    return this.role ? { ...(details ?? {}), role: this.role } : details;
  }

  private base(): Omit<AuditInput, 'outcome'> {
    return {
      time: this.time,
      actor: this.actor,
      event: this.event,
      deviceId: this.deviceId,
      ip: this.start.ip,
      details: this.withRole(this.details),
    };
  }

  /** The success row; `details` replace the ones set so far. */
  okRow(details?: Record<string, unknown> | null): AuditInput {
    return { ...this.base(), outcome: 'ok', ...(details !== undefined ? { details: this.withRole(details) } : {}) };
  }

  /** The failure row: the error's code as the reason, its message and details added to the details. */
  failRow(e: EdgeidError): AuditInput {
    return {
      ...this.base(),
      outcome: 'fail',
      reason: e.code,
      details: this.withRole({ ...(this.details ?? {}), message: e.message.slice(0, 300), ...(e.details ?? {}) }),
    };
  }

  /** A store transaction committed this action's row (built by okRow / failRow). */
  recorded(): void {
    this.done = true;
  }

  get hasFailureWriter(): boolean {
    return this.failureWriter !== null;
  }

  get isRecorded(): boolean {
    return this.done;
  }

  /**
   * The failure row records `e` (code, message, details) while the caller is answered with the
   * error the action throws: for refusals that must not tell an anonymous caller why.
   */
  auditAs(e: EdgeidError): void {
    this.realCause = e;
  }

  /** What the audit row records for a failure answered with `answered`. */
  causeOf(answered: EdgeidError): EdgeidError {
    return this.realCause ?? answered;
  }

  /** How a failure's row is written if none was recorded (default: appended on its own). */
  onFailure(writer: (row: AuditInput, e: EdgeidError) => Promise<void>): void {
    this.failureWriter = writer;
  }

  async writeFailure(ctx: ServerContext, e: EdgeidError): Promise<void> {
    if (this.done) return;
    const row = this.failRow(this.realCause ?? e);
    if (this.failureWriter && e.code !== 'internal_error') await this.failureWriter(row, e);
    else await ctx.store.appendAudit(row);
    this.done = true;
  }
}

/**
 * A failed action whose caller never proved anything (actor still the anonymous `device`, no
 * token or device learned, no failure writer such as the one that spends a token): a caller's
 * mistake, aggregated like an HTTP refusal. Our own faults stay one row each.
 */
function unauthenticatedFailure(a: AuditedAction, e: EdgeidError): boolean {
  return a.actor === 'device' && !a.hasFailureWriter && !a.isRecorded && e.code !== 'internal_error' && ERRORS[e.code].status < 500;
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
    a.role = start.role ?? (start.actor.startsWith('user:') ? ((await ctx.store.getUser(start.actor.slice(5)))?.role ?? null) : null);
    result = await fn(a);
  } catch (e) {
    const err = toEdgeidError(e, 'internal_error');
    if (err.code === 'internal_error') ctx.log.error({ err: e, event: start.event }, 'action failed');
    start.count?.('fail');
    try {
      const agg = unauthenticatedFailure(a, err) ? refusalAggregator(ctx) : null;
      if (agg) {
        await agg.refuse({ event: a.event, actor: a.actor, ip: start.ip, deviceId: a.deviceId, error: a.causeOf(err), requestId: '' });
        a.recorded();
      } else await a.writeFailure(ctx, err);
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
  q: { after?: number; before?: number; newestFirst?: boolean; limit?: number; deviceId?: string; user?: string },
  who: { actor: string; ip: string | null; zones?: readonly string[] | null },
): Promise<{ rows: AuditRow[] }> {
  return audited(
    ctx,
    {
      event: 'admin.audit.export',
      actor: who.actor,
      ip: who.ip,
      details: { after: String(q.after ?? 0), ...(q.user ? { user: q.user } : {}) },
    },
    async (a) => {
      const rows = await ctx.store.listAudit({
        afterSeq: q.after ?? 0,
        ...(q.before !== undefined ? { beforeSeq: q.before } : {}),
        ...(q.newestFirst ? { newestFirst: true } : {}),
        limit: Math.min(10_000, q.limit ?? 1000),
        ...(q.deviceId ? { deviceId: q.deviceId } : {}),
        ...(q.user ? { actor: `user:${q.user}` } : {}),
        // a zone-scoped user sees the rows about devices in its zones, and its own
        ...(who.zones ? { zones: [...who.zones], ownActor: who.actor } : {}),
      });
      a.details = { ...a.details, rows: rows.length };
      return { rows };
    },
  );
}

/** GET /v1/admin/audit/verify: walks the hash chain (see store/audit-chain.ts). */
export async function verifyAudit(ctx: ServerContext, who: { actor: string; ip: string | null }): Promise<AuditVerifyResult> {
  return audited(ctx, { event: 'admin.audit.verify', actor: who.actor, ip: who.ip }, async (a) => {
    const result = await ctx.store.verifyAudit();
    a.details = { ok: result.ok, rows: result.rows };
    return result;
  });
}

/** A refusal before (or without) any authentication: who asked from where, and why it failed. */
export interface Refusal {
  event: string;
  actor: string;
  ip: string | null;
  deviceId: string | null;
  error: EdgeidError;
  requestId: string;
  /** The authenticated person's role, when known. */
  role?: string | null;
}

const MINUTE = 60_000;
/** Open aggregation buckets kept at most; beyond that every bucket is flushed at once. */
const MAX_BUCKETS = 10_000;

interface Bucket {
  minute: number;
  event: string;
  actor: string;
  ip: string | null;
  reason: string;
  firstSeq: number;
  firstTime: number;
  lastTime: number;
  repeated: number;
}

/**
 * Aggregates identical unauthenticated refusals so that one source cannot write audit rows at
 * the rate it can send requests: per (source address, event, actor, code) and clock minute, the
 * first refusal writes its full row as usual and the rest of that minute only increment a counter
 * in memory; when the minute is over (checked every few seconds, on the next refusal of the same
 * key, and at close) one summary row records how many followed the first, with the first row's
 * seq. Every row is an ordinary chain row, so the hash chain is unchanged; a crash loses at most
 * the count of the current minute, never a row already written. Authenticated and device events
 * do not pass through here: they stay one row each.
 */
export class RefusalAggregator {
  private readonly buckets = new Map<string, Bucket>();
  private readonly timer: NodeJS.Timeout;
  private flushing: Promise<void> = Promise.resolve();

  constructor(private readonly ctx: ServerContext) {
    this.timer = setInterval(() => {
      void this.flush(false).catch((e) => ctx.log.error({ err: e }, 'audit aggregation flush failed'));
    }, 5_000);
    this.timer.unref();
  }

  async refuse(r: Refusal): Promise<void> {
    const now = this.ctx.now();
    const minute = Math.floor(now / MINUTE);
    // one bucket per network (an IPv6 /64 is one requester, whatever address it uses)
    const key = `${addressGroup(r.ip)}\u0001${r.event}\u0001${r.actor}\u0001${r.error.code}`;
    const b = this.buckets.get(key);
    if (b && b.minute === minute) {
      b.repeated++;
      b.lastTime = now;
      return;
    }
    if (b) await this.writeSummary(key, b);
    if (this.buckets.size >= MAX_BUCKETS) await this.flush(true);
    // reserve the bucket before the first row is written, so concurrent refusals count into it
    const nb: Bucket = {
      minute,
      event: r.event,
      actor: r.actor,
      ip: r.ip,
      reason: r.error.code,
      firstSeq: 0,
      firstTime: now,
      lastTime: now,
      repeated: 0,
    };
    this.buckets.set(key, nb);
    const row = await writeRefusal(this.ctx, r, { aggregated: true });
    nb.firstSeq = row.seq;
  }

  /** Writes the summary rows of finished minutes (all buckets when `all`). */
  async flush(all: boolean): Promise<void> {
    const run = this.flushing.then(async () => {
      const minute = Math.floor(this.ctx.now() / MINUTE);
      for (const [key, b] of [...this.buckets]) {
        if (all || b.minute < minute) await this.writeSummary(key, b);
      }
    });
    this.flushing = run.catch(() => undefined);
    return run;
  }

  private async writeSummary(key: string, b: Bucket): Promise<void> {
    if (this.buckets.get(key) === b) this.buckets.delete(key);
    if (b.repeated === 0) return;
    await this.ctx.store.appendAudit({
      time: this.ctx.now(),
      actor: b.actor,
      event: b.event,
      deviceId: null,
      ip: b.ip,
      outcome: 'fail',
      reason: b.reason,
      details: {
        aggregated: true,
        repeated: b.repeated,
        firstSeq: b.firstSeq,
        from: new Date(b.firstTime).toISOString(),
        to: new Date(b.lastTime).toISOString(),
        message: `${b.repeated} more identical refusal(s) after row ${b.firstSeq} in the same minute`,
      },
    });
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.flush(true);
  }
}

const aggregators = new WeakMap<ServerContext, RefusalAggregator>();

/** The context's aggregator (made on first use), or null when aggregation is off in the config. */
export function refusalAggregator(ctx: ServerContext): RefusalAggregator | null {
  if (ctx.config.audit?.aggregateRefusals === false) return null;
  let a = aggregators.get(ctx);
  if (!a) {
    a = new RefusalAggregator(ctx);
    aggregators.set(ctx, a);
  }
  return a;
}

/** Flushes and stops the context's aggregator (server close). */
export async function closeRefusalAggregator(ctx: ServerContext): Promise<void> {
  const a = aggregators.get(ctx);
  aggregators.delete(ctx);
  await a?.close();
}

function writeRefusal(ctx: ServerContext, r: Refusal, extra: Record<string, unknown> = {}) {
  return ctx.store.appendAudit({
    time: ctx.now(),
    actor: r.actor,
    event: r.event,
    deviceId: r.deviceId,
    ip: r.ip,
    outcome: 'fail',
    reason: r.error.code,
    details: { message: r.error.message.slice(0, 300), requestId: r.requestId, ...(r.role ? { role: r.role } : {}), ...extra },
  });
}

/**
 * The audit row of a request refused before it reached a service action (bad input, no admin
 * token, wrong media type, too large, rate limited): the caller's side of it, as far as it is
 * known and validated. Unauthenticated refusals are aggregated (RefusalAggregator); an
 * authenticated caller's refusal is one row.
 */
export async function auditRefusal(ctx: ServerContext, r: Refusal & { authenticated: boolean }): Promise<void> {
  const agg = r.authenticated ? null : refusalAggregator(ctx);
  if (agg) await agg.refuse(r);
  else await writeRefusal(ctx, r);
}
