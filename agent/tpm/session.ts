/**
 * A TPM batch: the unit of work that holds the TPM queue (index.ts). It creates the SRK at most
 * once (lazily), tracks every object it loads and flushes all of them when the batch ends, even on
 * error. Only ~3 transient objects fit in a small TPM (swtpm has no resource manager): load what
 * you need, `flush()` or `releaseSrk()` early when a step needs the slot.
 *
 * A batch uses a resident SRK/key (residents.ts) instead of loading its own copy. A batch that
 * needs more room evicts residents it does not use (OBJECT_MEMORY → evict → once more). A TPM error
 * on a command that used a resident (stale after a TPM reset or a flush by someone else:
 * TPM_RC_REFERENCE_H0…, _HANDLE, _VALUE; or any error when the handle now names a foreign object)
 * makes Tpm.batch drop the residents and run the batch once more.
 *
 * The objects and keys live here; capabilities (capabilities.ts), PCRs (pcrs.ts) and EK discovery
 * (ek-discovery.ts) are functions over a session, reached through the methods below.
 */
import { EdgeidError } from '../../protocol/errors/index.js';
// Specific modules, not the protocol/tpm barrel: that would also load the EK-certificate and
// MakeCredential code (and @peculiar/asn1-*), which only the server needs.
import { TPMA_OBJECT, TPM_ALG } from '../../protocol/tpm/constants.js';
import { marshalPcrSelection, type PcrSelection } from '../../protocol/tpm/pcr.js';
import { parsePublic } from '../../protocol/tpm/public.js';
import { akTemplate, sessionKeyTemplate, srkTemplate } from '../../protocol/tpm/templates.js';
import { flushAllTransient, readInfo, transientHandleCount, type TpmInfo } from './capabilities.js';
import type { TpmConnection } from './connection.js';
import { endorsementKey, nvRead, type EndorsementKey } from './ek-discovery.js';
import { defaultEkTemplate, ekAuthorization, type EkKind } from './ek.js';
import { TPM_RC, TpmError, isStaleHandleError } from './errors.js';
import type { NativeAddon, NativeContext } from './native.js';
import { extendPcr, readPcrBank, readPcrs, type PcrValue } from './pcrs.js';
import type { ResidentObject, ResidentObjects } from './residents.js';

/** A key as stored on disk: TPM2B_PUBLIC + TPM2B_PRIVATE (wrapped by the SRK, useless off this TPM). */
export interface KeyBlob {
  public: Buffer;
  private: Buffer;
}

/** An object loaded in the TPM for the duration of one batch. */
export interface LoadedKey {
  /** ESYS_TR handle; valid only inside the batch that loaded it. */
  readonly handle: number;
  /** TPM2B_PUBLIC */
  readonly public: Buffer;
}

/** TPMS_ATTEST bytes and the TPMT_SIGNATURE over them. */
export interface Attestation {
  attest: Buffer;
  signature: Buffer;
}

function sameBlob(a: KeyBlob, b: KeyBlob): boolean {
  return a.public.equals(b.public) && a.private.equals(b.private);
}

function badArgument(message: string): EdgeidError {
  return new EdgeidError('tpm_bad_argument', message);
}

function hashAlgForDigest(digest: Buffer): number {
  switch (digest.length) {
    case 32:
      return TPM_ALG.SHA256;
    case 48:
      return TPM_ALG.SHA384;
    case 64:
      return TPM_ALG.SHA512;
    default:
      throw badArgument(`a digest of ${digest.length} bytes is not SHA-256/384/512`);
  }
}

function isTpmCode(e: unknown, code: number): boolean {
  return e instanceof TpmError && e.tpmCode === code;
}

export class TpmSession {
  /** Transient objects loaded by this batch, flushed in reverse order at the end. */
  private readonly transient: number[] = [];
  /** Their TPM2B_PUBLIC, to find them again if the connection breaks before they are flushed. */
  private readonly transientPublic = new Map<number, Buffer>();
  /** ESYS handles of persistent objects / NV indices, closed (not flushed) at the end. */
  private readonly opened: number[] = [];
  private srkHandle: number | undefined;
  private srkPublic: Buffer | undefined;
  /** Resident objects this batch used (never evicted to make room for it). */
  private readonly usedResidents = new Set<number>();
  private ended = false;
  /** Set when a command on a resident handle found it stale: Tpm.batch then retries once. */
  residentsStale = false;

  /**
   * @param stats this batch's TPM commands by name (shared with a retry of the same batch, so the
   *   count covers every command the batch caused).
   */
  constructor(
    readonly connection: TpmConnection,
    private readonly residents: ResidentObjects,
    readonly stats: Map<string, number> = new Map(),
  ) {}

  private get esysTr(): NativeAddon['ESYS_TR'] {
    return this.connection.esysTr;
  }

  /** TPM commands this batch sent so far (flushes included). */
  get commandCount(): number {
    let n = 0;
    for (const v of this.stats.values()) n += v;
    return n;
  }

  /**
   * Runs one addon primitive in this batch (for this file and capabilities.ts, pcrs.ts,
   * ek-discovery.ts). `handles`: the objects the command uses; if one of them is resident and the
   * TPM fails the command, the residents are suspect (see residentsStale).
   */
  async command<T>(name: string, fn: (addon: NativeAddon, ctx: NativeContext) => Promise<T>, handles: number[] = []): Promise<T> {
    if (this.ended) throw new EdgeidError('tpm_closed', 'this TPM batch has ended; its session and handles are no longer valid');
    try {
      return await this.connection.call(name, fn, this.stats);
    } catch (e) {
      // Gone (TPM reset, flushed by another process: TPM_RC_REFERENCE_H0…, _HANDLE) — or, worse, the
      // handle now names someone else's object, which fails in any way (e.g. TPM_RC_SCHEME): any TPM
      // error on a resident object makes Tpm.batch reload the residents and try once more.
      if (handles.some((h) => this.residents.isResident(h)) && (isStaleHandleError(e) || (e instanceof TpmError && e.layer === 0))) {
        this.residentsStale = true;
      }
      throw e;
    }
  }

  private track(handle: number, publicArea: Buffer): void {
    this.transient.push(handle);
    this.transientPublic.set(handle, publicArea);
  }

  /** An ESYS handle of a persistent object or NV index this batch opened: closed (not flushed) at its end. */
  closeAtEnd(handle: number): void {
    this.opened.push(handle);
  }

  /** Runs `load` (an object into a slot); on OBJECT_MEMORY, evicts residents this batch does not use and tries once more. */
  private async withRoom<T>(load: () => Promise<T>): Promise<T> {
    try {
      return await load();
    } catch (e) {
      if (!isTpmCode(e, TPM_RC.OBJECT_MEMORY)) throw e;
      let freed = false;
      for (const which of ['key', 'srk'] as const) {
        const r = which === 'key' ? this.residents.key : this.residents.srk;
        if (r && !this.usedResidents.has(r.handle)) freed = (await this.residents.release(which, this.stats)) || freed;
      }
      if (!freed) throw e;
      return load();
    }
  }

  private useResident(r: ResidentObject): number {
    this.usedResidents.add(r.handle);
    return r.handle;
  }

  // ---- objects ----

  /**
   * The SRK (ECC P-256 storage primary, owner hierarchy): the resident one if there is one, else
   * created on first use in this batch (and flushed at its end).
   */
  async srk(): Promise<number> {
    const resident = this.residents.srk;
    if (resident) return this.useResident(resident);
    if (this.srkHandle === undefined) {
      const { handle, public: pub } = await this.createPrimary('owner', srkTemplate());
      this.srkHandle = handle;
      this.srkPublic = pub;
    }
    return this.srkHandle;
  }

  /** The SRK, kept loaded after this batch (this batch's own SRK is promoted rather than recreated). */
  async residentSrk(): Promise<number> {
    if (!this.residents.keep) return this.srk();
    const resident = this.residents.srk;
    if (resident) return this.useResident(resident);
    let handle = this.srkHandle;
    let pub: Buffer;
    if (handle !== undefined) {
      this.srkHandle = undefined;
      this.transient.splice(this.transient.lastIndexOf(handle), 1);
      pub = this.srkPublic ?? Buffer.alloc(0);
    } else {
      const tr = this.esysTr.RH_OWNER;
      const r = await this.withRoom(() => this.command('CreatePrimary', (a, c) => a.createPrimary(c, tr, srkTemplate())));
      handle = r.handle;
      pub = r.public;
    }
    this.residents.srk = { handle, public: pub };
    return this.useResident(this.residents.srk);
  }

  /**
   * Loads `blob` under the resident SRK and keeps both loaded between batches (the renewal's AK).
   * Returns at once, with no TPM command, if it is resident already; replaces a different resident
   * key (one at most). On a Tpm opened with { keepResidents: false }: a plain load().
   */
  async loadResident(blob: KeyBlob): Promise<LoadedKey> {
    if (!this.residents.keep) return this.load(blob);
    const current = this.residents.key;
    if (current?.blob && sameBlob(current.blob, blob)) {
      await this.residentSrk(); // e.g. released for an EK's slot during enrollment
      return { handle: this.useResident(current), public: current.public };
    }
    if (current) await this.residents.release('key', this.stats);
    const parent = await this.residentSrk();
    const handle = await this.withRoom(() => this.command('Load', (a, c) => a.load(c, parent, blob.private, blob.public), [parent]));
    const resident: ResidentObject = {
      handle,
      public: blob.public,
      blob: { public: Buffer.from(blob.public), private: Buffer.from(blob.private) },
    };
    this.residents.key = resident;
    return { handle: this.useResident(resident), public: blob.public };
  }

  /** Flushes the resident objects now (close, wipe). Returns how many the TPM flushed. */
  releaseResidents(): Promise<number> {
    return this.residents.releaseAll(this.stats);
  }

  /**
   * The residents this batch used gave results that cannot be right (e.g. a quote the resident AK
   * did not sign: its handle now names another object). Tpm.batch drops them and retries once.
   */
  distrustResidents(): void {
    if (this.usedResidents.size > 0) this.residentsStale = true;
  }

  /** Flushes the SRK now to free its slot (the next load recreates it); a resident SRK stops being one. */
  async releaseSrk(): Promise<void> {
    if (this.srkHandle !== undefined) {
      const h = this.srkHandle;
      this.srkHandle = undefined;
      await this.flushHandle(h);
    } else if (this.residents.srk) {
      await this.residents.release('srk', this.stats);
    }
  }

  /** CreatePrimary in a hierarchy; the object is flushed when the batch ends. */
  async createPrimary(hierarchy: 'owner' | 'endorsement', template: Buffer): Promise<LoadedKey> {
    const tr = hierarchy === 'owner' ? this.esysTr.RH_OWNER : this.esysTr.RH_ENDORSEMENT;
    const r = await this.withRoom(() => this.command('CreatePrimary', (a, c) => a.createPrimary(c, tr, template)));
    this.track(r.handle, r.public);
    return { handle: r.handle, public: r.public };
  }

  /** Creates a key under the SRK and returns its blobs (not loaded). */
  async create(template: Buffer): Promise<KeyBlob> {
    const parent = await this.srk();
    return this.command('Create', (a, c) => a.create(c, parent, template), [parent]);
  }

  /** Creates a key under the SRK and loads it in one command (TPM2_CreateLoaded). */
  async createLoaded(template: Buffer): Promise<LoadedKey & KeyBlob> {
    const parent = await this.srk();
    const r = await this.withRoom(() => this.command('CreateLoaded', (a, c) => a.createLoaded(c, parent, template), [parent]));
    this.track(r.handle, r.public);
    return { handle: r.handle, public: r.public, private: r.private };
  }

  /** Loads a key blob under the SRK (or returns the resident key if it is that blob). */
  async load(blob: KeyBlob): Promise<LoadedKey> {
    const resident = this.residents.key;
    if (resident?.blob && sameBlob(resident.blob, blob)) return { handle: this.useResident(resident), public: resident.public };
    const parent = await this.srk();
    const handle = await this.withRoom(() => this.command('Load', (a, c) => a.load(c, parent, blob.private, blob.public), [parent]));
    this.track(handle, blob.public);
    return { handle, public: blob.public };
  }

  /** Flushes an object loaded by this batch before the batch ends (a resident one stops being resident). */
  async flush(key: LoadedKey): Promise<void> {
    if (this.residents.key?.handle === key.handle) return void (await this.residents.release('key', this.stats));
    if (this.residents.srk?.handle === key.handle) return void (await this.residents.release('srk', this.stats));
    if (key.handle === this.srkHandle) this.srkHandle = undefined;
    await this.flushHandle(key.handle);
  }

  private async flushHandle(handle: number): Promise<void> {
    const i = this.transient.lastIndexOf(handle);
    if (i < 0) throw badArgument('flush: this object was not loaded by this batch');
    this.transient.splice(i, 1);
    await this.command('FlushContext', (a, c) => a.flush(c, handle));
  }

  /**
   * Saves a loaded object's context (ESYS blob) so it can be reloaded later without its parent.
   * Remembered for Tpm.tlsSecureContext: a key saved here needs no batch of its own there.
   */
  async contextSave(key: LoadedKey): Promise<Buffer> {
    const saved = await this.command('ContextSave', (a, c) => a.contextSave(c, key.handle), [key.handle]);
    this.residents.rememberSavedContext(key.public, saved);
    return saved;
  }

  /** Loads a saved context; the object is flushed when the batch ends. */
  async contextLoad(saved: Buffer, publicArea: Buffer): Promise<LoadedKey> {
    const handle = await this.withRoom(() => this.command('ContextLoad', (a, c) => a.contextLoad(c, saved)));
    this.track(handle, publicArea);
    return { handle, public: publicArea };
  }

  /** Opens a persistent object by its TPM handle (e.g. 0x81010001); closed when the batch ends. */
  async openPersistent(tpmHandle: number): Promise<LoadedKey> {
    const handle = await this.command('ReadPublic', (a, c) => a.trFromTpmPublic(c, tpmHandle));
    this.opened.push(handle);
    const { public: pub } = await this.command('ReadPublic', (a, c) => a.readPublic(c, handle));
    return { handle, public: pub };
  }

  // ---- keys ----

  /** A new attestation key (restricted ECDSA P-256) under the SRK. */
  createAttestationKey(): Promise<KeyBlob> {
    return this.create(akTemplate());
  }

  /** A new session (TLS) signing key (unrestricted ECDSA P-256) under the SRK. */
  createSigningKey(): Promise<KeyBlob> {
    return this.create(sessionKeyTemplate());
  }

  /**
   * Signs a SHA-256/384/512 digest with an unrestricted key. Keys with scheme NULL sign ECDSA
   * (RSASSA for RSA) with the hash of the digest's length. Returns TPMT_SIGNATURE.
   */
  async sign(key: LoadedKey, digest: Buffer): Promise<Buffer> {
    const pub = parsePublic(key.public);
    if (pub.objectAttributes & TPMA_OBJECT.restricted) {
      throw badArgument('restricted keys sign only TPM-generated data: use quote or certify');
    }
    const hashAlg = hashAlgForDigest(digest);
    let schemeAlg: number = TPM_ALG.NULL;
    if (pub.scheme.alg === TPM_ALG.NULL) schemeAlg = pub.type === TPM_ALG.ECC ? TPM_ALG.ECDSA : TPM_ALG.RSASSA;
    return this.command('Sign', (a, c) => a.sign(c, key.handle, digest, schemeAlg, hashAlg), [key.handle]);
  }

  /** TPM2_Quote over `selection` with the AK's scheme. */
  async quote(ak: LoadedKey, selection: PcrSelection[], qualifyingData: Buffer): Promise<Attestation> {
    return this.command('Quote', (a, c) => a.quote(c, ak.handle, qualifyingData, marshalPcrSelection(selection)), [ak.handle]);
  }

  /** TPM2_Certify: the AK attests that `key` is loaded in this TPM (name + attributes). */
  async certify(key: LoadedKey, ak: LoadedKey, qualifyingData: Buffer): Promise<Attestation> {
    return this.command('Certify', (a, c) => a.certify(c, key.handle, ak.handle, qualifyingData), [key.handle, ak.handle]);
  }

  /**
   * TPM2_ActivateCredential: recovers the secret that MakeCredential(EK, name(AK)) protected.
   * The EK is the one `endorsementKey(ek)` returns (persistent, or recreated from its template);
   * its policy (PolicyA or PolicyB of the TCG EK profile) is satisfied with a policy session.
   */
  async activateCredential(ak: LoadedKey, credentialBlob: Buffer, encryptedSecret: Buffer, ek?: EkKind | EndorsementKey): Promise<Buffer> {
    const endorsement = typeof ek === 'object' ? ek : await this.endorsementKey(ek);
    const ekObject =
      endorsement.persistentHandle !== undefined
        ? await this.openPersistentHandleOnly(endorsement.persistentHandle)
        : (await this.createPrimary('endorsement', endorsement.template ?? defaultEkTemplate(endorsement.kind))).handle;
    const auth = ekAuthorization(parsePublic(endorsement.public));
    return this.withRoom(() =>
      this.command(
        'ActivateCredential',
        (a, c) => a.activateCredential(c, ak.handle, ekObject, credentialBlob, encryptedSecret, auth.policyHashAlg, auth.orDigests),
        [ak.handle],
      ),
    );
  }

  private async openPersistentHandleOnly(tpmHandle: number): Promise<number> {
    const handle = await this.command('ReadPublic', (a, c) => a.trFromTpmPublic(c, tpmHandle));
    this.opened.push(handle);
    return handle;
  }

  // ---- randomness; capabilities, PCRs and the EK (their own files) ----

  /** n random bytes from the TPM's RNG (several GetRandom calls if needed). */
  async getRandom(n: number): Promise<Buffer> {
    if (!Number.isInteger(n) || n < 0 || n > 65536) throw badArgument(`getRandom: ${n} bytes`);
    const parts: Buffer[] = [];
    let have = 0;
    while (have < n) {
      const chunk = await this.command('GetRandom', (a, c) => a.getRandom(c, Math.min(32, n - have)));
      if (chunk.length === 0) throw new EdgeidError('tpm_command_failed', 'GetRandom returned no bytes');
      parts.push(chunk);
      have += chunk.length;
    }
    return Buffer.concat(parts).subarray(0, n);
  }

  /** PCR values in TPM order (see pcrs.ts). */
  readPcrs(selection: PcrSelection[]): Promise<PcrValue[]> {
    return readPcrs(this, selection);
  }

  /** PCR values of one bank as verifyQuote takes them (index → value). */
  readPcrBank(pcrs: number[], hashAlg: number = TPM_ALG.SHA256): Promise<Map<number, Buffer>> {
    return readPcrBank(this, pcrs, hashAlg);
  }

  /** Extends a PCR (tests and diagnostics; on a device only the boot chain should extend PCRs). */
  extendPcr(index: number, digest: Buffer, hashAlg: number = TPM_ALG.SHA256): Promise<void> {
    return extendPcr(this, index, digest, hashAlg);
  }

  /** Transient objects currently loaded in the TPM (by anyone). */
  transientHandleCount(): Promise<number> {
    return transientHandleCount(this);
  }

  /** Flushes every transient object in the TPM, including other processes' (see capabilities.ts). */
  flushAllTransient(): Promise<number> {
    return flushAllTransient(this);
  }

  /** Manufacturer, firmware and specification of the TPM, its object slots and active PCR banks. */
  info(): Promise<TpmInfo> {
    return readInfo(this);
  }

  /** Reads an NV index completely; null if absent. */
  nvRead(nvIndex: number): Promise<Buffer | null> {
    return nvRead(this, nvIndex);
  }

  /** The EK of `kind` with its certificate (see ek-discovery.ts); cached per connection. */
  endorsementKey(kind?: EkKind): Promise<EndorsementKey> {
    return endorsementKey(this, kind);
  }

  // ---- end of batch ----

  /** Flushes everything this batch loaded and closes what it opened. Called by Tpm.batch. */
  async end(): Promise<void> {
    if (this.ended) return;
    let firstError: unknown;
    for (const handle of this.transient.reverse()) {
      try {
        await this.connection.call('FlushContext', (a, c) => a.flush(c, handle), this.stats);
      } catch (e) {
        firstError ??= e;
        // Still loaded in a TPM without resource manager: flushed by its public area after the reconnect.
        const publicArea = this.transientPublic.get(handle);
        if (this.connection.state !== 'ok' && publicArea) this.connection.orphans.push(publicArea);
      }
    }
    for (const handle of this.opened.reverse()) {
      try {
        await this.connection.call('TR_Close', (a, c) => a.trClose(c, handle), this.stats);
      } catch (e) {
        firstError ??= e;
      }
    }
    this.transient.length = 0;
    this.transientPublic.clear();
    this.opened.length = 0;
    this.srkHandle = undefined;
    this.ended = true;
    if (firstError !== undefined) throw firstError;
  }
}
