/**
 * One leader among the server instances sharing a database: the periodic work (housekeeping with
 * the CRL refresh and retention, the broker reconcile, the alert rules and their webhook
 * delivery) runs on the leader only, so several instances do not each retire, reconcile or
 * raise the same alert.
 *
 * PostgreSQL: the leader is the instance whose dedicated connection holds the session advisory
 * lock LEADER_LOCK (pg_try_advisory_lock, https://www.postgresql.org/docs/15/explicit-locking.html#ADVISORY-LOCKS).
 * Every instance tries every `leaderInterval` seconds; the leader checks its connection at the
 * same pace. The lock belongs to the connection: when the leader's process dies, its backend
 * ends and the lock is free, and another instance takes it on its next attempt, within one
 * interval. A leader whose connection breaks steps down at once (its work stops), before another
 * instance can take the lock. A leader host that vanishes without closing its TCP connection
 * holds the lock until PostgreSQL notices the dead peer (its tcp_keepalives_* settings).
 *
 * A leader does not act on a stale belief for long: every statement on its connection must answer
 * within one interval, or it steps down, at most two intervals after its connection went silent
 * (a network that drops packets silently keeps a TCP connection "open" on our side for as long as
 * the kernel retransmits, and PostgreSQL may end the session and give the lock to another instance
 * sooner). An instance whose leader work fails to start, or does not start within
 * GAIN_INTERVALS intervals, releases the lock (it ends its connection) so that another instance,
 * or itself on its next attempt, can lead.
 *
 * SQLite: one instance owns the database file; it is always the leader.
 */
import type pg from 'pg';
import { Gauge } from 'prom-client';
import type { ServerContext } from './context.js';

/** The advisory lock key of the leader (the migration lock is another key, store/postgres.ts). */
export const LEADER_LOCK = '7305808092736503811';

/** How many intervals gain() may take before this instance gives the leadership up. */
export const GAIN_INTERVALS = 3;

export interface LeaderWork {
  /** Called when this instance becomes the leader (start the periodic work). */
  gain(): Promise<void>;
  /** Called when it stops being the leader (stop the periodic work). */
  lose(): Promise<void>;
}

/**
 * `p`, or what `late()` returns (or throws) once `ms` have passed without it. A timer that is
 * `unref`'d does not keep the process alive on its own.
 */
function within<T>(p: Promise<T>, ms: number, late: () => T, unref = false): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<T>((resolve, reject) => {
    timer = setTimeout(() => {
      try {
        resolve(late());
      } catch (e) {
        reject(e);
      }
    }, ms);
    if (unref) timer.unref();
  });
  p.catch(() => undefined); // a failure after the timeout is not unhandled
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

export class Leadership {
  private leader = false;
  private client: pg.Client | null = null;
  private timer: NodeJS.Timeout | null = null;
  private busy: Promise<void> = Promise.resolve();
  private closed = false;
  /**
   * A gain() given up on that has not returned yet: until it has (and what it started is stopped),
   * no attempt is made, so no second gain() runs beside it (the work's gain() is not safe to run
   * twice at once: server.ts's would start a second AlertEngine and lose the first).
   */
  private straggler: Promise<void> | null = null;
  private readonly gauge: Gauge;

  private constructor(
    private readonly ctx: ServerContext,
    private readonly connect: (() => pg.Client) | null,
    private readonly work: LeaderWork,
    private readonly intervalMs: number,
  ) {
    this.gauge = new Gauge({
      name: 'edgeid_leader',
      help: '1 while this instance runs the periodic work (housekeeping, broker reconcile, alert rules), else 0',
      registers: [ctx.metrics.registry],
    });
    this.gauge.set(0);
  }

  /** Whether this instance is the leader now. */
  get isLeader(): boolean {
    return this.leader;
  }

  /**
   * Starts: a first attempt at once, then one every `intervalMs`. `connect` makes the dedicated
   * PostgreSQL connection (null: SQLite, always the leader).
   */
  static async start(ctx: ServerContext, connect: (() => pg.Client) | null, work: LeaderWork, intervalMs: number): Promise<Leadership> {
    const l = new Leadership(ctx, connect, work, intervalMs);
    // a first attempt whose work hangs (gain() never returns) must not keep the server from starting
    await within(l.attempt(), intervalMs, () => undefined, true);
    // on SQLite too: an attempt whose work failed to start is tried again
    l.timer = setInterval(() => void l.attempt(), intervalMs);
    l.timer.unref();
    return l;
  }

  /** One attempt (serialised): take the lock if free, or check that the held one is still held. */
  attempt(): Promise<void> {
    const run = this.busy.then(() => this.tryOnce());
    this.busy = run.catch(() => undefined);
    return run;
  }

  private async tryOnce(): Promise<void> {
    if (this.closed || this.straggler) return;
    if (!this.connect) {
      if (!this.leader) await this.become(true, 'single instance');
      return;
    }
    try {
      if (!this.client) {
        const c = this.connect();
        // the connection breaks (database restarted, backend terminated): the lock is gone with it
        c.on('error', (e) => void this.dropped(c, e.message));
        c.on('end', () => void this.dropped(c, 'connection ended'));
        this.client = c;
        await this.answered(c.connect());
      }
      const c = this.client;
      if (this.leader) {
        // still connected means still holding the lock (it is only released with the session)
        await this.answered(c.query('SELECT 1'));
        return;
      }
      const r = await this.answered(c.query('SELECT pg_try_advisory_lock($1) AS ok', [LEADER_LOCK]));
      if (r.rows[0]?.ok === true && !(await this.become(true, 'advisory lock taken'))) {
        // the work did not start: give the lock back with the session, try again next interval
        await this.dropped(c, 'the leader work did not start');
      }
    } catch (e) {
      await this.dropped(this.client, e instanceof Error ? e.message : String(e));
    }
  }

  /** The statement's answer, or a rejection once one interval has passed without it. */
  private answered<T>(p: Promise<T>): Promise<T> {
    return within(p, this.intervalMs, () => {
      throw new Error(`no answer from PostgreSQL within ${this.intervalMs} ms`);
    });
  }

  private async dropped(c: pg.Client | null, why: string): Promise<void> {
    if (c === null || c !== this.client) return;
    this.client = null;
    c.removeAllListeners('end');
    c.on('error', () => undefined);
    void this.end(c);
    this.ctx.log.warn({ err: why.slice(0, 200) }, 'leader connection lost');
    if (this.leader) await this.become(false, 'connection lost');
  }

  /**
   * Starts or stops the work. Returns false when starting it failed: what started of it is
   * stopped again and this instance is not the leader.
   */
  private async become(leader: boolean, why: string): Promise<boolean> {
    this.leader = leader;
    this.gauge.set(leader ? 1 : 0);
    this.ctx.log.info({ leader, why }, leader ? 'this instance is the leader' : 'this instance is no longer the leader');
    try {
      await (leader ? this.startWork() : this.stopWork());
      if (leader && (!this.leader || this.closed)) {
        // stepped down while the work was starting (the connection broke, or close() ran):
        // lose() ran before gain() finished and found nothing to stop; stop what started now
        await this.loseLogged();
        return false;
      }
      return true;
    } catch (e) {
      this.ctx.log.error({ err: e }, leader ? 'starting the leader work failed' : 'stopping the leader work failed');
      if (!leader) return true;
      this.leader = false;
      this.gauge.set(0);
      await this.loseLogged();
      return false;
    }
  }

  /** lose(), its failure logged. */
  private loseLogged(): Promise<void> {
    return this.work.lose().catch((e: unknown) => this.ctx.log.error({ err: e }, 'stopping the leader work failed'));
  }

  /**
   * lose(), waited for at most GAIN_INTERVALS intervals: a stop that hangs (a flush to a database
   * that no longer answers) must not stop every later attempt. It goes on in the background.
   */
  private stopWork(): Promise<void> {
    const limit = GAIN_INTERVALS * this.intervalMs;
    return within(
      this.work.lose(),
      limit,
      () => this.ctx.log.warn({ ms: limit }, 'stopping the leader work takes longer than expected; going on'),
      true,
    );
  }

  /**
   * gain(), failed when it has not finished within GAIN_INTERVALS intervals: while it hangs (on a
   * database that no longer answers, say) this instance would hold the lock, run no health check
   * and start nothing. A gain() given up on is waited for before any further attempt (no second
   * gain() runs beside it); when it finishes after all, what it started is stopped.
   */
  private startWork(): Promise<void> {
    const limit = GAIN_INTERVALS * this.intervalMs;
    const gain = this.work.gain();
    return within(gain, limit, () => {
      // no attempt runs until this settles (tryOnce): this instance is not the leader when it
      // does, so what the late gain() started (all of it, or part of it when it fails) is stopped
      this.straggler = gain
        .catch(() => undefined)
        .then(() => this.loseLogged())
        .finally(() => {
          this.straggler = null;
        });
      throw new Error(`the leader work did not start within ${limit} ms`);
    });
  }

  /**
   * Ends a connection without waiting on it; one whose peer no longer answers (end() waits for the
   * server's close) has its socket destroyed after one interval.
   */
  private end(c: pg.Client): Promise<void> {
    return within(
      c.end().catch(() => undefined),
      this.intervalMs,
      () => (c as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy(),
      true,
    );
  }

  /** Stops trying, stops the work if leading, and ends the connection (which releases the lock). */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    // an attempt stuck in gain() is not waited for beyond one interval (become() stops its work when it returns)
    await within(this.busy, this.intervalMs, () => undefined, true);
    this.closed = true;
    if (this.leader) await this.become(false, 'server stopping');
    const c = this.client;
    this.client = null;
    if (c) {
      c.removeAllListeners('end');
      c.on('error', () => undefined);
      await this.end(c);
    }
  }
}
