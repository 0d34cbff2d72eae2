/**
 * One open TPM: the addon, its ESYS context and the commands sent through it. Every TPM command
 * of the queue (index.ts) goes through `call()`, which bounds it by a deadline, turns TSS failures
 * into TpmError and counts commands by name. Facts about the TPM that do not change while the
 * agent runs (its EKs, its NV buffer size) are cached here, per connection.
 *
 * A TPM that stops answering. A command runs on a libuv worker that blocks in the TCTI's read
 * (tpm2-tss has no receive timeout we can use: see src/watchdog.c). When the deadline passes, the
 * caller gets tpm_unresponsive at once, and the connection
 *   1. asks the addon to end the blocked read (abort: the TPM socket is shut down; for the device
 *      TCTI the kernel driver's own timeouts end it) and
 *   2. is *stuck* until that command comes back from the worker: every call fails with
 *      tpm_unresponsive meanwhile, without touching the TPM or the thread pool;
 *   3. then *broken*: the ESYS context lost its state (as after a transport failure or a
 *      malformed response, tpm_bad_response), so calls fail until the queue reconnects it at the
 *      start of its next batch (a new TCTI and ESYS context; see Tpm in index.ts).
 * The TLS signing path bounds itself in C (tls_key.cc) and may also leave the context broken.
 */
import { EdgeidError } from '../../protocol/errors/index.js';
import type { EkKind } from './ek.js';
import type { EndorsementKey } from './ek-discovery.js';
import { TpmError, toTpmError } from './errors.js';
import type { NativeAddon, NativeContext } from './native.js';

/** Deadline of one queued TPM command. TPM 2.0 commands take milliseconds to a few seconds (RSA key generation on a slow TPM). */
export const DEFAULT_COMMAND_DEADLINE_MS = 30_000;
/** Deadline of one TLS signature on the main thread, waiting for a running queued command included. */
export const DEFAULT_TLS_DEADLINE_MS = 5_000;

export interface TpmDeadlines {
  /** Per queued TPM command (and per reconnect); env EDGEID_TPM_DEADLINE_MS. */
  commandMs: number;
  /** Per TLS signature (event loop blocked at most this long); env EDGEID_TPM_TLS_DEADLINE_MS. */
  tlsMs: number;
}

function deadlineFrom(given: number | undefined, env: string, fallback: number): number {
  const raw = given ?? (process.env[env] !== undefined && process.env[env] !== '' ? Number(process.env[env]) : fallback);
  if (!Number.isInteger(raw) || raw < 1 || raw > 600_000) {
    throw new EdgeidError(
      'tpm_bad_argument',
      `${given !== undefined ? 'the deadline' : env} must be a whole number of milliseconds from 1 to 600000, not ${String(given ?? process.env[env])}`,
    );
  }
  return raw;
}

/** Deadlines from the options, else the environment, else the defaults. */
export function resolveDeadlines(opts: Partial<TpmDeadlines> = {}): TpmDeadlines {
  return {
    commandMs: deadlineFrom(opts.commandMs, 'EDGEID_TPM_DEADLINE_MS', DEFAULT_COMMAND_DEADLINE_MS),
    tlsMs: deadlineFrom(opts.tlsMs, 'EDGEID_TPM_TLS_DEADLINE_MS', DEFAULT_TLS_DEADLINE_MS),
  };
}

/** A command that passed its deadline and has not come back from its worker yet. */
interface StuckCommand {
  command: string;
  since: number;
  /** Settles (never rejects) when the worker returns. */
  returned: Promise<void>;
}

const TIMED_OUT = Symbol('timed out');

export class TpmConnection {
  private readonly stats = new Map<string, number>();
  /** EKs found by ek-discovery.ts, by kind. */
  readonly ekCache = new Map<EkKind, EndorsementKey>();
  /** TPM_PT_NV_BUFFER_MAX, once read. */
  nvBufferMax: number | undefined;
  private stuck: StuckCommand | undefined;
  /** The ESYS context is unusable (transport failure, malformed response) until reconnect(). */
  private lost = false;
  /**
   * TPM2B_PUBLIC of objects that were loaded when the connection broke. A TPM without a resource
   * manager (swtpm, /dev/tpm0) keeps them after the reconnect; the queue flushes them then.
   */
  readonly orphans: Buffer[] = [];
  /** Called when the connection becomes stuck or broken, and when a stuck command returns. */
  onTrouble: (() => void) | undefined;

  constructor(
    readonly addon: NativeAddon,
    readonly ctx: NativeContext,
    readonly deadlines: TpmDeadlines,
  ) {}

  /** ESYS_TR values of the hierarchies. */
  get esysTr(): NativeAddon['ESYS_TR'] {
    return this.addon.ESYS_TR;
  }

  /** 'stuck': a command is still out past its deadline; 'broken': reconnect before the next command. */
  get state(): 'ok' | 'stuck' | 'broken' {
    if (this.stuck) return 'stuck';
    return this.lost || this.addon.isBroken(this.ctx) ? 'broken' : 'ok';
  }

  /** Commands sent through the queue; the TLS signing path is counted apart (tls.* in commandStats). */
  get commandCount(): number {
    return this.addon.commandCount(this.ctx);
  }

  commandStats(): Record<string, number> {
    const out: Record<string, number> = Object.fromEntries(this.stats);
    for (const [name, n] of Object.entries(this.addon.tlsStats(this.ctx).commands)) {
      if (n > 0) out[`tls.${name}`] = n;
    }
    return out;
  }

  /** tpm_unresponsive for a call made while the connection is stuck or broken. */
  unusable(): EdgeidError {
    if (this.stuck) {
      const ago = Math.round(performance.now() - this.stuck.since);
      return new EdgeidError(
        'tpm_unresponsive',
        `the TPM has not answered ${this.stuck.command}, sent ${ago} ms ago; TPM calls fail until it does`,
      );
    }
    return new EdgeidError(
      'tpm_unresponsive',
      'the TPM connection broke (no answer in time, or a malformed one); it is reopened before the next batch',
    );
  }

  /**
   * Runs one addon primitive within the command deadline: TPM failures become TpmError; commands
   * are counted under `name` (and into `into`, a batch's own statistics).
   */
  async call<T>(name: string, fn: (addon: NativeAddon, ctx: NativeContext) => Promise<T>, into?: Map<string, number>): Promise<T> {
    if (this.state !== 'ok') throw this.unusable();
    const before = this.addon.commandCount(this.ctx);
    try {
      return await this.withinDeadline(name, fn(this.addon, this.ctx));
    } catch (e) {
      const err = toTpmError(e);
      if (err instanceof TpmError && err.breaksConnection && !this.lost) {
        this.lost = true;
        this.onTrouble?.();
      }
      throw err;
    } finally {
      const n = this.addon.commandCount(this.ctx) - before;
      if (n > 0) {
        this.stats.set(name, (this.stats.get(name) ?? 0) + n);
        into?.set(name, (into.get(name) ?? 0) + n);
      }
    }
  }

  /**
   * A new TCTI and ESYS context (the queue calls this at the start of a batch, with no resident
   * handles left: they all become invalid). Within the command deadline.
   */
  async reconnect(): Promise<void> {
    if (this.stuck) throw this.unusable();
    try {
      await this.withinDeadline('reconnect', this.addon.reconnect(this.ctx));
    } catch (e) {
      this.lost = true;
      throw toTpmError(e);
    }
    this.lost = false;
  }

  /** Resolves when no command is stuck (see Tpm.unstuck). */
  async unstuck(): Promise<void> {
    while (this.stuck) await this.stuck.returned;
  }

  /** Closes the native context; if a command is stuck, once its worker has returned (close waits for it). */
  close(): void {
    if (this.stuck) void this.stuck.returned.then(() => this.addon.close(this.ctx));
    else this.addon.close(this.ctx);
  }

  private async withinDeadline<T>(name: string, pending: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<typeof TIMED_OUT>((resolve) => {
      timer = setTimeout(() => resolve(TIMED_OUT), this.deadlines.commandMs);
    });
    try {
      const first = await Promise.race([pending, deadline]);
      if (first !== TIMED_OUT) return first as T;
    } finally {
      clearTimeout(timer);
    }
    this.markStuck(name, pending);
    throw new EdgeidError('tpm_unresponsive', `the TPM did not answer ${name} within ${this.deadlines.commandMs} ms`, {
      command: name,
      deadlineMs: this.deadlines.commandMs,
    });
  }

  private markStuck(command: string, pending: Promise<unknown>): void {
    const stuck: StuckCommand = {
      command,
      since: performance.now(),
      returned: pending.then(
        () => {},
        () => {},
      ),
    };
    this.stuck = stuck;
    this.lost = true;
    void stuck.returned.then(() => {
      if (this.stuck === stuck) this.stuck = undefined;
      this.onTrouble?.();
    });
    this.addon.abort(this.ctx);
    this.onTrouble?.();
  }
}
