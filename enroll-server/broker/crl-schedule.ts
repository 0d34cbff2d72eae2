/**
 * When the broker loads a new CRL. Revocation itself does not wait for it: the broker integration
 * deletes the device's dynsec client at once, which ends its session and leaves any reconnect
 * without a single right. The CRL adds the TLS-level refusal, and loading it may cost every other
 * session (Mosquitto 2.0 reads `crlfile` when the listener starts, and again on SIGHUP, which
 * keeps sessions — docs/SECURITY.md, broker section). So reloads are batched:
 *
 * - a changed CRL (new revocations) is written to the broker's crlfile at once, so any start of
 *   the broker picks it up, and loaded by the reload command no sooner than `everyMs` after the
 *   previous reload (0 = at once);
 * - whatever happens, the broker's loaded copy is reloaded `refreshBeforeMs` before its
 *   nextUpdate: OpenSSL with CRL checking refuses every client once the CRL it holds is past
 *   nextUpdate (X509_V_ERR_CRL_HAS_EXPIRED);
 * - an operator may force a reload (BrokerIntegration.reloadCrl, audited);
 * - a failed reload is retried after `retryMs` (the CRL file is in place meanwhile).
 *
 * What the broker loaded is kept in a state file, so a server restart neither forgets a pending
 * reload nor reloads for nothing.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { writeFileAtomic } from '../files.js';
import type { BrokerCrlStatus } from '../../protocol/api.js';
import type { CrlChange } from '../hooks.js';

export interface CrlReloadPolicy {
  /** Minimum time between two reloads caused by new revocations (0 = reload after each change). */
  everyMs: number;
  /** Reload when the broker's loaded CRL has less than this left before its nextUpdate. */
  refreshBeforeMs: number;
  /** After a failed reload, try again this much later. */
  retryMs?: number;
}

/** What the broker has loaded (as of its last successful reload). */
export interface LoadedCrl {
  crlNumber: string;
  serials: string[];
  nextUpdate: number;
  reloadedAt: number;
}

/** What the broker loaded, what is pending and when the next reload runs (the admin API's view). */
export type CrlReloadStatus = BrokerCrlStatus;

export interface ReloadOutcome {
  crlNumber: string;
  revoked: number;
  why: string;
  writtenAt: Date;
  reloadedAt: Date | null;
  reloadError: string | null;
}

function sameSerials(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((s, i) => s === b[i]);
}

/** The CRL in `file` as if the broker had loaded it when the file was written (upgrade path). */
function fromCrlFile(file: string): LoadedCrl | null {
  try {
    const crl = new x509.X509Crl(readFileSync(file, 'utf8'));
    return {
      crlNumber: '',
      serials: crl.entries.map((en) => en.serialNumber.toLowerCase()).sort(),
      nextUpdate: (crl.nextUpdate ?? new Date(0)).getTime(),
      reloadedAt: statSync(file).mtimeMs,
    };
  } catch {
    return null;
  }
}

export class CrlReloadSchedule {
  private latest: CrlChange | null = null;
  private loaded: LoadedCrl | null;
  private lastError: string | null = null;
  private retryAt: number | null = null;
  private timer: NodeJS.Timeout | null = null;
  private dueAt: number | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly o: {
      crlFile: string;
      stateFile: string;
      policy: CrlReloadPolicy;
      /** Writes the PEM where the broker reads it and makes the broker load it. */
      publish: (pem: string) => Promise<{ writtenAt: Date; reloadedAt: Date | null; reloadError: string | null }>;
      /** Writes the PEM only (no reload). */
      write: (pem: string) => void;
      /** Called after every reload attempt (audit). */
      onReload: (r: ReloadOutcome) => Promise<void>;
      now?: () => number;
    },
  ) {
    const inFile = fromCrlFile(o.crlFile);
    this.loaded = this.readState() ?? inFile;
    this.written = inFile?.serials ?? null;
  }

  /** The serials in the crlfile now (null: no readable file). */
  private written: string[] | null;

  private now(): number {
    return (this.o.now ?? Date.now)();
  }

  private readState(): LoadedCrl | null {
    try {
      if (!existsSync(this.o.stateFile)) return null;
      const s = JSON.parse(readFileSync(this.o.stateFile, 'utf8')) as { loaded?: LoadedCrl };
      const l = s.loaded;
      if (!l || !Array.isArray(l.serials) || typeof l.nextUpdate !== 'number' || typeof l.reloadedAt !== 'number') return null;
      return l;
    } catch {
      return null;
    }
  }

  /** A new CRL from the server: written at once when it revokes something new; the reload is scheduled. */
  async changed(e: CrlChange): Promise<ReloadOutcome | null> {
    this.latest = e;
    if (this.written === null || !sameSerials(this.written, e.serials)) {
      this.o.write(e.longLived.pem);
      this.written = e.serials;
    }
    return this.reschedule();
  }

  /** When the next reload is due, from what is loaded and what is pending; null = nothing to do. */
  private computeDue(): number | null {
    if (!this.latest) return null;
    if (this.retryAt !== null) return this.retryAt;
    const l = this.loaded;
    if (!l) return this.now();
    // never more often than retryMs for expiry: a CRL that is itself short-lived must not loop
    const expiry = Math.max(l.nextUpdate - this.o.policy.refreshBeforeMs, l.reloadedAt + (this.o.policy.retryMs ?? 5 * 60_000));
    const pending = !sameSerials(l.serials, this.latest.serials);
    const forChange = pending ? l.reloadedAt + this.o.policy.everyMs : Infinity;
    return Math.min(expiry, forChange);
  }

  /** Runs a due reload now, or sets the timer for the next one. */
  private async reschedule(): Promise<ReloadOutcome | null> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.dueAt = this.computeDue();
    if (this.dueAt === null || this.closed) return null;
    const wait = this.dueAt - this.now();
    if (wait <= 0) return this.reload('schedule');
    // setTimeout holds at most 2^31-1 ms (~24.8 days); a longer wait re-arms on expiry
    this.timer = setTimeout(
      () => {
        this.timer = null;
        void this.reschedule().catch(() => undefined);
      },
      Math.min(wait, 2 ** 31 - 1),
    );
    this.timer.unref();
    return null;
  }

  /** Writes the latest CRL and makes the broker load it (serialised: never two reloads at once). */
  reload(why: string): Promise<ReloadOutcome> {
    const run = this.chain.then(() => this.doReload(why));
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async doReload(why: string): Promise<ReloadOutcome> {
    const crl = this.latest;
    if (!crl) throw new Error('no CRL generated yet');
    const r = await this.o.publish(crl.longLived.pem);
    this.written = crl.serials;
    const outcome: ReloadOutcome = {
      crlNumber: crl.longLived.number.toString(),
      revoked: crl.serials.length,
      why,
      ...r,
    };
    if (r.reloadError) {
      this.lastError = r.reloadError;
      this.retryAt = this.now() + (this.o.policy.retryMs ?? 5 * 60_000);
    } else {
      this.lastError = null;
      this.retryAt = null;
      this.loaded = {
        crlNumber: outcome.crlNumber,
        serials: crl.serials,
        nextUpdate: crl.longLived.nextUpdate.getTime(),
        reloadedAt: (r.reloadedAt ?? r.writtenAt).getTime(),
      };
      writeFileAtomic(this.o.stateFile, JSON.stringify({ loaded: this.loaded }) + '\n', 0o600);
    }
    await this.o.onReload(outcome);
    void this.reschedule().catch(() => undefined);
    return outcome;
  }

  status(): CrlReloadStatus {
    const l = this.loaded;
    const latest = this.latest?.serials ?? l?.serials ?? [];
    const have = new Set(l?.serials ?? []);
    const due = this.computeDue();
    return {
      reloadEverySeconds: Math.round(this.o.policy.everyMs / 1000),
      refreshBeforeSeconds: Math.round(this.o.policy.refreshBeforeMs / 1000),
      loaded: l
        ? {
            crlNumber: l.crlNumber,
            revoked: l.serials.length,
            nextUpdate: new Date(l.nextUpdate).toISOString(),
            reloadedAt: new Date(l.reloadedAt).toISOString(),
          }
        : null,
      pending: latest.filter((s) => !have.has(s)).length,
      nextReloadAt: due === null ? null : new Date(Math.max(due, this.now())).toISOString(),
      lastError: this.lastError,
    };
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
