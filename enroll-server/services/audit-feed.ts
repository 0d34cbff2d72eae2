/**
 * The audit stream as events: every committed audit row, in `seq` order, to whoever subscribed
 * (the alert rules, the console's live views). It follows the store rather than the code paths
 * that write rows, so it sees every row whichever service (or server instance sharing the
 * database) wrote it, and never a row whose transaction rolled back.
 *
 * One reader polls `listAudit({ afterSeq })` (an index range scan on `seq`) every `pollMs` while
 * anybody listens; `poke()` asks for a read now (after a local write, for low latency).
 */
import type { Logger } from 'pino';
import type { AuditRow } from '../../protocol/api.js';
import type { Store } from '../store/store.js';

export type AuditListener = (row: AuditRow) => void | Promise<void>;

export interface AuditFeedOptions {
  /** Milliseconds between reads while subscribed (default 250). */
  pollMs?: number;
  /** Rows read per query (default 500). */
  batch?: number;
  log?: Logger;
}

export class AuditFeed {
  private readonly listeners = new Set<AuditListener>();
  private seq: number | null = null;
  private timer: NodeJS.Timeout | null = null;
  private reading: Promise<void> | null = null;
  private again = false;
  private closed = false;
  private readonly pollMs: number;
  private readonly batch: number;

  constructor(
    private readonly store: Store,
    opts: AuditFeedOptions = {},
  ) {
    this.pollMs = opts.pollMs ?? 250;
    this.batch = opts.batch ?? 500;
    this.log = opts.log;
  }

  private readonly log: Logger | undefined;

  /** The seq of the last row delivered (null before the first read). */
  get position(): number | null {
    return this.seq;
  }

  /**
   * Starts delivering rows after `afterSeq` (default: the newest row when the feed starts, so
   * history is not replayed). Returns the function that unsubscribes. Listeners share one
   * position: the first subscriber's `afterSeq` decides where the feed starts.
   */
  async subscribe(fn: AuditListener, afterSeq?: number): Promise<() => void> {
    if (this.closed) throw new Error('the audit feed is closed');
    if (this.seq === null) this.seq = afterSeq ?? (await this.headSeq());
    this.listeners.add(fn);
    this.schedule();
    return () => {
      this.listeners.delete(fn);
      if (this.listeners.size === 0 && this.timer) {
        clearTimeout(this.timer);
        this.timer = null;
      }
    };
  }

  /** Reads now (coalesced with a read in progress). */
  poke(): void {
    if (this.closed || this.listeners.size === 0) return;
    if (this.reading) {
      this.again = true;
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.reading = this.readAll().finally(() => {
      this.reading = null;
      if (this.again) {
        this.again = false;
        this.poke();
      } else this.schedule();
    });
  }

  /** Resolves once every row committed before the call has been delivered. */
  async drain(): Promise<void> {
    while (this.reading) await this.reading;
    if (this.closed || this.seq === null) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.reading = this.readAll().finally(() => {
      this.reading = null;
      this.schedule();
    });
    await this.reading;
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.listeners.clear();
  }

  private schedule(): void {
    if (this.closed || this.timer || this.reading || this.listeners.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.poke();
    }, this.pollMs);
    this.timer.unref();
  }

  private async headSeq(): Promise<number> {
    const head = await this.store.getMeta('audit_head');
    return head ? (JSON.parse(head) as { seq: number }).seq : 0;
  }

  private async readAll(): Promise<void> {
    try {
      for (;;) {
        const rows = await this.store.listAudit({ afterSeq: this.seq ?? 0, limit: this.batch });
        for (const row of rows) {
          this.seq = row.seq;
          for (const fn of [...this.listeners]) {
            try {
              await fn(row);
            } catch (e) {
              this.log?.error({ err: e, seq: row.seq }, 'an audit feed listener failed');
            }
          }
        }
        if (rows.length < this.batch || this.closed) return;
      }
    } catch (e) {
      // the store closing under a read, or a transient storage error: the next poll retries
      if (!this.closed) this.log?.warn({ err: e }, 'reading the audit feed failed; retrying');
    }
  }
}
