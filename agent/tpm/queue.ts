/**
 * The TPM queue: one batch at a time per Tpm (ESYS contexts are not thread-safe, and a small TPM
 * holds only ~3 objects). A batch holds the queue for a whole unit of work; its session flushes what
 * it loaded when it ends (session.ts). A batch that found a resident stale runs once more.
 *
 * The queue also owns the connection's recovery (connection.ts): at the start of a batch a stuck
 * connection fails it with tpm_unresponsive at once, and a broken one is reopened first. So that a
 * broken connection is reopened even when no batch comes (the TLS signing path, outside the queue,
 * needs it), the queue schedules a recovery batch itself, backing off from 1 s to 30 s, and looks
 * every 2 s whether the signing path broke the connection while a TPM-backed TLS context exists.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { EdgeidError } from '../../protocol/errors/index.js';
import { flushOrphans } from './capabilities.js';
import type { TpmConnection } from './connection.js';
import type { ResidentObjects } from './residents.js';
import { TpmSession } from './session.js';

/** First and longest wait before a recovery batch tries to reopen a broken connection. */
const RECOVERY_FIRST_MS = 1_000;
const RECOVERY_MAX_MS = 30_000;
/** How often the queue looks whether the TLS signing path broke the connection. */
const SIGNING_PATH_CHECK_MS = 2_000;

/** A batch failed on a stale resident handle: the queue drops the residents and retries once. */
class StaleResidents extends Error {
  constructor(override readonly cause: unknown) {
    super('a resident TPM object is gone');
  }
}

export interface BatchResult<T> {
  result: T;
  /** TPM commands the batch sent, end-of-batch flushes and a retry included. */
  commands: number;
  commandStats: Record<string, number>;
}

/**
 * An unref'd interval that calls `fn` with the target while it lives. Module-level, with a
 * module-level `fn`, so that the timer's closure holds only the WeakRef: a timer must not keep an
 * abandoned Tpm (and its TPM connection) from being collected.
 */
function everyWhileAlive<T extends object>(target: WeakRef<T>, ms: number, fn: (t: T) => void): NodeJS.Timeout {
  const timer = setInterval(() => {
    const t = target.deref();
    if (t) fn(t);
    else clearInterval(timer);
  }, ms);
  timer.unref();
  return timer;
}

function recoverIfBroken(queue: TpmQueue): void {
  queue.scheduleRecovery();
}

export class TpmQueue {
  private tail: Promise<unknown> = Promise.resolve();
  /**
   * Marks the async context of a running batch (tpm_nested_batch). Enabled only while batches are
   * queued: an enabled AsyncLocalStorage makes Node 20 run four JS promise hooks for every promise
   * in the process, forever — about twice the cost per promise, and the hottest functions of an
   * otherwise idle agent (measured: ~0.8 MB RSS against the agent's 60 MB budget).
   */
  private readonly inBatch = new AsyncLocalStorage<true>();
  private queued = 0;
  private closedFlag = false;
  private recoveryTimer: NodeJS.Timeout | undefined;
  private recoveryDelayMs = RECOVERY_FIRST_MS;
  private signingPathCheck: NodeJS.Timeout | undefined;
  private readonly recoveryWaiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];

  constructor(
    private readonly conn: TpmConnection,
    private readonly residents: ResidentObjects,
  ) {
    conn.onTrouble = () => this.scheduleRecovery();
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /**
   * Runs `fn` with exclusive use of the TPM in a fresh session (see Tpm.batch), and reports the TPM
   * commands it sent.
   */
  run<T>(fn: (s: TpmSession) => Promise<T>): Promise<BatchResult<T>> {
    if (this.inBatch.getStore()) {
      return Promise.reject(new EdgeidError('tpm_nested_batch'));
    }
    if (this.closedFlag) return Promise.reject(new EdgeidError('tpm_closed'));
    const stats = new Map<string, number>();
    const attempt = async (): Promise<T> => {
      const session = new TpmSession(this.conn, this.residents, stats);
      let result: T;
      try {
        result = await this.inBatch.run(true, () => fn(session));
      } catch (e) {
        await session.end().catch(() => {});
        if (session.residentsStale) throw new StaleResidents(e);
        throw e;
      }
      await session.end();
      return result;
    };
    const run = async () => {
      if (this.closedFlag) throw new EdgeidError('tpm_closed');
      await this.ensureConnected(stats);
      let result: T;
      try {
        result = await attempt();
      } catch (e) {
        if (!(e instanceof StaleResidents)) throw e;
        await this.residents.releaseAll(stats).catch(() => 0); // closes their ESYS handles
        try {
          result = await attempt();
        } catch (again) {
          throw again instanceof StaleResidents ? again.cause : again;
        }
      }
      const commandStats = Object.fromEntries(stats);
      return { result, commands: Object.values(commandStats).reduce((a, b) => a + b, 0), commandStats };
    };
    this.queued++;
    const p = this.tail.then(run, run).finally(() => {
      if (--this.queued === 0) this.inBatch.disable(); // the next run() enables it again
    });
    this.tail = p.catch(() => {});
    return p;
  }

  /** Resolves when the connection works again (at once if it does); rejects with tpm_closed on close. */
  recovered(): Promise<void> {
    if (this.closedFlag) return Promise.reject(new EdgeidError('tpm_closed'));
    if (this.conn.state === 'ok') return Promise.resolve();
    return new Promise((resolve, reject) => this.recoveryWaiters.push({ resolve, reject }));
  }

  /** From now on, look regularly whether the TLS signing path broke the connection (no queued call would notice). */
  watchSigningPath(): void {
    if (this.signingPathCheck !== undefined || this.closedFlag) return;
    this.signingPathCheck = everyWhileAlive(new WeakRef(this), SIGNING_PATH_CHECK_MS, recoverIfBroken);
  }

  /**
   * A broken connection is reopened by the next batch; this makes sure there is one. Nothing while
   * a command is stuck (its return calls this again) or while the connection is fine.
   */
  scheduleRecovery(): void {
    if (this.closedFlag || this.recoveryTimer !== undefined || this.conn.state !== 'broken') return;
    this.recoveryTimer = setTimeout(() => {
      this.recoveryTimer = undefined;
      this.run(async () => {}).then(
        () => {
          this.recoveryDelayMs = RECOVERY_FIRST_MS;
        },
        () => {
          this.recoveryDelayMs = Math.min(this.recoveryDelayMs * 2, RECOVERY_MAX_MS);
          this.scheduleRecovery();
        },
      );
    }, this.recoveryDelayMs);
    this.recoveryTimer.unref();
  }

  /**
   * Waits for queued work, flushes the resident objects, then closes the TPM connection. Never
   * waits for a TPM that does not answer: a stuck command's context is closed when it returns.
   */
  async close(): Promise<void> {
    if (this.closedFlag) return;
    this.closedFlag = true;
    clearTimeout(this.recoveryTimer);
    clearInterval(this.signingPathCheck);
    for (const w of this.recoveryWaiters.splice(0)) w.reject(new EdgeidError('tpm_closed'));
    await this.tail.catch(() => {});
    if (this.conn.state === 'ok') await this.residents.releaseAll().catch(() => 0);
    this.conn.close();
  }

  /**
   * At the start of a batch: a stuck connection fails it with tpm_unresponsive; a broken one is
   * reopened — the residents' ESYS handles die with the old context, so they are forgotten and,
   * with whatever else the old connection left loaded, flushed by their public areas (which also
   * proves that the TPM answers).
   */
  private async ensureConnected(stats: Map<string, number>): Promise<void> {
    const state = this.conn.state;
    if (state === 'ok') return;
    if (state === 'stuck') throw this.conn.unusable();
    this.conn.orphans.push(...this.residents.forget());
    try {
      await this.conn.reconnect();
    } catch (e) {
      this.scheduleRecovery();
      throw e;
    }
    const session = new TpmSession(this.conn, this.residents, stats);
    try {
      await flushOrphans(session, this.conn.orphans);
      this.conn.orphans.length = 0;
    } finally {
      await session.end().catch(() => {});
    }
    for (const w of this.recoveryWaiters.splice(0)) w.resolve();
  }
}
