/**
 * Objects kept loaded *between* batches. The renewal keeps the SRK and the AK resident, so a
 * renewal is CreateLoaded, Certify, Quote, Sign, ContextSave, FlushContext — not CreatePrimary +
 * Load + 2 more flushes each time. At most the SRK and one key are resident, so the third slot of a
 * small TPM (swtpm has no resource manager) stays free for the TLS signing path. Any batch uses a
 * resident SRK/key instead of loading its own copy (session.ts); a batch that needs more room
 * evicts residents it does not use. A TPM error on a command that used a resident (stale after a
 * TPM reset or a flush by someone else) makes Tpm.batch drop the residents and run the batch once
 * more. Tpm.close(), flushResidents() and flushTransientObjects() flush them.
 *
 * Also here: the saved contexts of keys a batch saved for the TLS path (tlsSecureContext), so that
 * installing a just-created session key costs no TPM command.
 */
import type { TpmConnection } from './connection.js';
import type { KeyBlob } from './session.js';

/** An object kept loaded between batches. */
export interface ResidentObject {
  /** ESYS_TR handle, valid across batches until the object is flushed or found stale. */
  readonly handle: number;
  readonly public: Buffer;
  /** The blob it was loaded from (keys only; the SRK is recreated from its template). */
  readonly blob?: KeyBlob;
}

/** Saved contexts remembered for the TLS path (newest last), by TPM2B_PUBLIC. */
const SAVED_CONTEXTS_KEPT = 4;

export class ResidentObjects {
  private srkResident: ResidentObject | undefined;
  /** At most one resident key (the AK): the third object slot belongs to the TLS signing path. */
  key: ResidentObject | undefined;
  private readonly savedContexts = new Map<string, Buffer>();
  /** false: `loadResident`/`residentSrk` load for the batch only (one-shot processes). */
  keep = true;

  constructor(private readonly conn: TpmConnection) {}

  get srk(): ResidentObject | undefined {
    return this.srkResident;
  }

  /** Sets the resident SRK and tells the TLS path (it may reload a stale key under it). */
  set srk(r: ResidentObject | undefined) {
    // Cleared before the SRK is flushed, set once it exists: the TLS sign callback runs on this
    // (the main) thread, so it never sees a handle that is being flushed.
    this.conn.addon.tlsSetParent(this.conn.ctx, r ? r.handle : null);
    this.srkResident = r;
  }

  isResident(handle: number): boolean {
    return this.srkResident?.handle === handle || this.key?.handle === handle;
  }

  /** Resident objects right now (0–2). */
  get count(): number {
    return (this.srkResident ? 1 : 0) + (this.key ? 1 : 0);
  }

  /**
   * Forgets a resident and flushes it; if the flush fails (already gone), closes its ESYS handle
   * instead. Returns true if the TPM flushed it.
   */
  async release(which: 'srk' | 'key', into?: Map<string, number>): Promise<boolean> {
    const r = which === 'srk' ? this.srkResident : this.key;
    if (!r) return false;
    if (which === 'srk') this.srk = undefined;
    else this.key = undefined;
    try {
      await this.conn.call('FlushContext', (a, c) => a.flush(c, r.handle), into);
      return true;
    } catch {
      if (this.conn.state !== 'ok') {
        this.conn.orphans.push(r.public); // still loaded: flushed by its public area after the reconnect
        return false;
      }
      await this.conn.call('TR_Close', (a, c) => a.trClose(c, r.handle), into).catch(() => {});
      return false;
    }
  }

  /**
   * Forgets the residents without a TPM command (their ESYS handles died with a broken connection)
   * and returns their TPM2B_PUBLIC, so that the objects can be found and flushed after a reconnect.
   */
  forget(): Buffer[] {
    const lost = [this.key, this.srkResident].filter((r): r is ResidentObject => r !== undefined).map((r) => r.public);
    this.key = undefined;
    if (this.srkResident) this.srk = undefined;
    return lost;
  }

  /** Flushes every resident object (the key first). Returns how many the TPM flushed. */
  async releaseAll(into?: Map<string, number>): Promise<number> {
    const key = await this.release('key', into);
    const srk = await this.release('srk', into);
    return (key ? 1 : 0) + (srk ? 1 : 0);
  }

  // ---- saved contexts for the TLS path ----

  rememberSavedContext(publicArea: Buffer, saved: Buffer): void {
    const id = publicArea.toString('hex');
    this.savedContexts.delete(id);
    this.savedContexts.set(id, saved);
    while (this.savedContexts.size > SAVED_CONTEXTS_KEPT) this.savedContexts.delete(this.savedContexts.keys().next().value!);
  }

  /** The saved context of the key with this TPM2B_PUBLIC, if a batch saved one (taken once). */
  takeSavedContext(publicArea: Buffer): Buffer | undefined {
    const id = publicArea.toString('hex');
    const saved = this.savedContexts.get(id);
    this.savedContexts.delete(id);
    return saved;
  }
}
