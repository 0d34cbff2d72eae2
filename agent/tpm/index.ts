/**
 * The agent's TPM: a typed API over the edgeid_tpm addon (tpm2-tss ESYS).
 *
 * Every TPM call runs off the event loop and goes through one queue per Tpm (queue.ts; ESYS contexts
 * are not thread-safe, and a small TPM holds only ~3 objects). `batch()` holds the queue for a whole unit of
 * work, creates the SRK at most once, and flushes everything it loaded at the end, even on error;
 * the convenience methods below are one batch each. Only what a batch makes resident on purpose
 * (`s.loadResident(ak)`: the SRK and one key, for the renewal) stays loaded between batches, until
 * close(), flushResidents() or flushTransientObjects().
 *
 * Every TPM command has a deadline (EDGEID_TPM_DEADLINE_MS, default 30 s; the TLS signature
 * EDGEID_TPM_TLS_DEADLINE_MS, default 5 s; or `Tpm.open(tcti, { deadlines })`). A TPM that does not
 * answer in time fails the call with tpm_unresponsive, and every call after it at once, until the
 * TPM answers again: then the next batch reopens the connection (a new TCTI and ESYS context;
 * connection.ts), flushes what the old one left loaded, and goes on. The queue schedules a recovery
 * batch by itself (backing off from 1 s to 30 s), so the TLS signing path recovers in an idle agent too.
 *
 *   const tpm = await Tpm.open();            // EDGEID_TCTI or device:/dev/tpmrm0
 *   const ak = await tpm.createAttestationKey();
 *   const { attest, signature } = await tpm.quote(ak, [{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1] }], nonce);
 *   const secureContext = await tpm.tlsSecureContext({ key: sessionKey, certPem, caPem }); // for mqtt.js
 *   await tpm.close();
 */
import type { SecureContext } from 'node:tls';
import { TPM_ALG } from '../../protocol/tpm/constants.js';
import type { PcrSelection } from '../../protocol/tpm/pcr.js';
import type { EkKind } from './ek.js';
import { toTpmError } from './errors.js';
import { loadAddon } from './native.js';
import { createTpmSecureContext, releaseTlsKey, type TlsContextOptions, type TlsStats } from './tls.js';
import type { TpmInfo } from './capabilities.js';
import { TpmConnection, resolveDeadlines, type TpmDeadlines } from './connection.js';
import type { EndorsementKey } from './ek-discovery.js';
import type { PcrValue } from './pcrs.js';
import { TpmQueue, type BatchResult } from './queue.js';
import { ResidentObjects } from './residents.js';
import { TpmSession, type Attestation, type KeyBlob } from './session.js';

export { TpmError, TPM_RC } from './errors.js';
export { TpmSession } from './session.js';
export type { Attestation, KeyBlob, LoadedKey } from './session.js';
export type { TpmInfo } from './capabilities.js';
export { DEFAULT_COMMAND_DEADLINE_MS, DEFAULT_TLS_DEADLINE_MS, type TpmDeadlines } from './connection.js';
export type { EndorsementKey } from './ek-discovery.js';
export type { PcrValue } from './pcrs.js';
export type { EkKind } from './ek.js';
export type { TlsContextOptions, TlsStats } from './tls.js';

export const DEFAULT_TCTI = 'device:/dev/tpmrm0';

/** The TCTI configuration to use: explicit, else EDGEID_TCTI, else the kernel resource manager. */
export function resolveTcti(tcti?: string): string {
  if (tcti !== undefined && tcti !== '') return tcti;
  const env = process.env.EDGEID_TCTI;
  return env !== undefined && env !== '' ? env : DEFAULT_TCTI;
}

export class Tpm {
  private readonly queue: TpmQueue;

  private constructor(
    private readonly conn: TpmConnection,
    private readonly residents: ResidentObjects,
    readonly tcti: string,
  ) {
    this.queue = new TpmQueue(conn, residents);
  }

  /**
   * Opens the TPM behind a TCTI (`swtpm:host=127.0.0.1,port=N`, `device:/dev/tpmrm0`, …).
   * `keepResidents: false` for one-shot processes: `s.loadResident()` then loads for its batch only,
   * so a kill -9 after a batch leaves nothing loaded in a TPM without resource manager.
   * `deadlines`: per queued command and per TLS signature (default: environment, else 30 s / 5 s).
   */
  static async open(tcti?: string, opts: { keepResidents?: boolean; deadlines?: Partial<TpmDeadlines> } = {}): Promise<Tpm> {
    const conf = resolveTcti(tcti);
    const deadlines = resolveDeadlines(opts.deadlines);
    const addon = loadAddon();
    try {
      const ctx = await addon.open(conf);
      addon.setTlsDeadline(ctx, deadlines.tlsMs);
      const conn = new TpmConnection(addon, ctx, deadlines);
      const residents = new ResidentObjects(conn);
      residents.keep = opts.keepResidents ?? true;
      return new Tpm(conn, residents, conf);
    } catch (e) {
      throw toTpmError(e);
    }
  }

  /**
   * TPM commands sent through this Tpm's queue so far (every command, flushes included). The TLS
   * signing path runs outside the queue and is counted apart: `tls.*` in commandStats(), tlsStats().
   */
  get commandCount(): number {
    return this.conn.commandCount;
  }

  /**
   * TPM commands by command name, e.g. { CreatePrimary: 1, Load: 2, Quote: 1, FlushContext: 3 }; the
   * TLS signing path's under `tls.<name>`, e.g. { 'tls.ContextLoad': 4, 'tls.Sign': 4, 'tls.FlushContext': 4 }.
   */
  commandStats(): Record<string, number> {
    return this.conn.commandStats();
  }

  /** Signatures, failures and TPM commands of the TLS signing path, and why it last failed. */
  tlsStats(): TlsStats {
    return this.conn.addon.tlsStats(this.conn.ctx);
  }

  /**
   * 'ok'; 'stuck' while a command is out past its deadline (calls fail with tpm_unresponsive);
   * 'broken' until the next batch reopens the connection.
   */
  get connectionState(): 'ok' | 'stuck' | 'broken' {
    return this.conn.state;
  }

  /**
   * Resolves once no TPM command is out past its deadline (at once if none): after an abort the
   * command comes back from its worker a moment later; on the device TCTI when the kernel gives up.
   */
  unstuck(): Promise<void> {
    return this.conn.unstuck();
  }

  /**
   * Resolves when the connection works again (at once if it does): after a reconnect by a batch or
   * by the recovery this Tpm schedules itself (queue.ts). Rejects with tpm_closed if closed first.
   */
  recovered(): Promise<void> {
    return this.queue.recovered();
  }

  /**
   * Waits for queued work, flushes the resident objects, then closes the TPM connection. Idempotent.
   * Never waits for a TPM that does not answer: a stuck command's context is closed when it returns.
   */
  close(): Promise<void> {
    return this.queue.close();
  }

  /**
   * Runs `fn` with exclusive use of the TPM. Everything the session loads is flushed when `fn`
   * settles, except what it made resident (`s.loadResident`). Inside `fn`, use only the session:
   * calling this Tpm's methods would wait for the batch itself, so it throws tpm_nested_batch.
   * If a resident object turned out stale (TPM reset, flushed by another process), the residents
   * are dropped and `fn` runs once more, in a fresh session.
   */
  async batch<T>(fn: (s: TpmSession) => Promise<T>): Promise<T> {
    return (await this.queue.run(fn)).result;
  }

  /**
   * batch() that also reports the TPM commands the batch sent: every command, the end-of-batch
   * flushes and a retry included (the TLS signing path is not in the queue and not counted here).
   */
  batchWithStats<T>(fn: (s: TpmSession) => Promise<T>): Promise<BatchResult<T>> {
    return this.queue.run(fn);
  }

  /** Objects this Tpm keeps loaded between batches (0, or 2 after a renewal: the SRK and the AK). */
  get residentObjectCount(): number {
    return this.residents.count;
  }

  /** Flushes the resident objects (wipe; close() does it too). Returns how many the TPM flushed. */
  flushResidents(): Promise<number> {
    if (this.queue.closed) return Promise.resolve(0);
    return this.batch((s) => s.releaseResidents());
  }

  // ---- TLS with the key inside the TPM ----

  /**
   * A tls.SecureContext with `certPem` and `caPem` whose private key is the TPM key `key` (pass it
   * to mqtt.js as `secureContext`; TLS version limits go here, not into connect). The key is loaded
   * once now (one batch) to check it and save its context — unless a batch already saved it (the
   * renewal does, right after creating the key: then no TPM command here); each full handshake then
   * signs with ContextLoad → Sign → FlushContext on the main thread, taking no transient slot in
   * between. The context works while this Tpm is open; after close() its handshakes fail.
   */
  tlsSecureContext(opts: TlsContextOptions): Promise<SecureContext> {
    this.queue.watchSigningPath();
    return createTpmSecureContext(this.conn.addon, this.conn.ctx, opts, async (key) => {
      const saved = this.residents.takeSavedContext(key.public);
      if (saved) return saved;
      return this.batch(async (s) => s.contextSave(await s.load(key)));
    });
  }

  /**
   * Makes a context from tlsSecureContext unusable (its key blob was deleted, e.g. by a wipe):
   * later handshakes with it fail. Returns false if `secureContext` has no TPM key.
   */
  releaseTlsKey(secureContext: SecureContext): boolean {
    return releaseTlsKey(this.conn.addon, secureContext);
  }

  // ---- convenience: one batch each ----

  info(): Promise<TpmInfo> {
    return this.batch((s) => s.info());
  }

  getRandom(n: number): Promise<Buffer> {
    return this.batch((s) => s.getRandom(n));
  }

  /** PCR values in TPM order (by selection entry, then ascending index). */
  readPcrs(selection: PcrSelection[]): Promise<PcrValue[]> {
    return this.batch((s) => s.readPcrs(selection));
  }

  /** One bank's PCR values, index → value (the shape verifyQuote takes). */
  readPcrBank(pcrs: number[], hashAlg: number = TPM_ALG.SHA256): Promise<Map<number, Buffer>> {
    return this.batch((s) => s.readPcrBank(pcrs, hashAlg));
  }

  /** Extends a PCR; for tests and diagnostics. */
  extendPcr(index: number, digest: Buffer, hashAlg: number = TPM_ALG.SHA256): Promise<void> {
    return this.batch((s) => s.extendPcr(index, digest, hashAlg));
  }

  endorsementKey(kind?: EkKind): Promise<EndorsementKey> {
    return this.batch((s) => s.endorsementKey(kind));
  }

  createAttestationKey(): Promise<KeyBlob> {
    return this.batch((s) => s.createAttestationKey());
  }

  createSigningKey(): Promise<KeyBlob> {
    return this.batch((s) => s.createSigningKey());
  }

  /** Signs a SHA-256/384/512 digest with an unrestricted key; returns TPMT_SIGNATURE. */
  sign(key: KeyBlob, digest: Buffer): Promise<Buffer> {
    return this.batch(async (s) => s.sign(await s.load(key), digest));
  }

  quote(ak: KeyBlob, selection: PcrSelection[], qualifyingData: Buffer): Promise<Attestation> {
    return this.batch(async (s) => s.quote(await s.load(ak), selection, qualifyingData));
  }

  certify(key: KeyBlob, ak: KeyBlob, qualifyingData: Buffer): Promise<Attestation> {
    return this.batch(async (s) => {
      const loadedKey = await s.load(key);
      const loadedAk = await s.load(ak);
      return s.certify(loadedKey, loadedAk, qualifyingData);
    });
  }

  /** Recovers a MakeCredential secret; `ek` selects the EK the server used (default as endorsementKey()). */
  activateCredential(ak: KeyBlob, credentialBlob: Buffer, encryptedSecret: Buffer, ek?: EkKind | EndorsementKey): Promise<Buffer> {
    return this.batch(async (s) => {
      const loadedAk = await s.load(ak);
      await s.releaseSrk(); // room for a transient EK
      return s.activateCredential(loadedAk, credentialBlob, encryptedSecret, ek);
    });
  }

  /**
   * Flushes every transient object in the TPM (by anyone), this Tpm's residents included. For TPMs
   * without a resource manager (swtpm, /dev/tpm0) after a process was killed mid-batch or left its
   * residents behind; call it only while no other process uses the TPM. Returns how many objects
   * were flushed.
   */
  flushTransientObjects(): Promise<number> {
    return this.batch((s) => s.flushAllTransient());
  }

  /** Transient objects loaded in the TPM right now (by anyone); 0 when nothing leaked. */
  transientHandleCount(): Promise<number> {
    return this.batch((s) => s.transientHandleCount());
  }
}
