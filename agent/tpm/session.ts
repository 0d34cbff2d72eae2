/**
 * A TPM batch: the unit of work that holds the TPM queue. It creates the SRK at most once (lazily),
 * tracks every object it loads and flushes all of them when the batch ends, even on error.
 * Only ~3 transient objects fit in a small TPM (swtpm has no resource manager): load what you need,
 * `flush()` or `releaseSrk()` early when a step needs the slot.
 *
 * Residents: the renewal keeps the SRK and the AK loaded *between* batches (`loadResident`), so a
 * renewal is CreateLoaded, Certify, Quote, Sign, ContextSave, FlushContext — not CreatePrimary +
 * Load + 2 more flushes each time. At most the SRK and one key are resident, so the third slot of a
 * small TPM stays free for the TLS signing path. Any batch uses a resident SRK/key instead of
 * loading its own copy. A batch that needs more room evicts residents it does not use
 * (OBJECT_MEMORY → evict → once more). A TPM error on a command that used a resident (stale after a
 * TPM reset or a flush by someone else: TPM_RC_REFERENCE_H0…, _HANDLE, _VALUE; or any error when
 * the handle now names a foreign object) makes Tpm.batch drop the residents and run the batch once
 * more. Tpm.close(), flushResidents() and flushTransientObjects() flush them.
 */
import { EdgeidError } from '../../protocol/errors/index.js';
// Specific modules, not the protocol/tpm barrel: that would also load the EK-certificate and
// MakeCredential code (and @peculiar/asn1-*), which only the server needs.
import { TPMA_OBJECT, TPM_ALG } from '../../protocol/tpm/constants.js';
import { marshalPcrSelection, parsePcrSelection, type PcrSelection } from '../../protocol/tpm/pcr.js';
import { parsePublic } from '../../protocol/tpm/public.js';
import { akTemplate, sessionKeyTemplate, srkTemplate } from '../../protocol/tpm/templates.js';
import {
  EK_CERTIFICATE_SLOTS,
  EK_PERSISTENT_FIRST,
  EK_PERSISTENT_LAST,
  certificateMatchesEk,
  defaultEkTemplate,
  ekAuthorization,
  ekKindOf,
  looksLikeEk,
  trimDer,
  type EkKind,
} from './ek.js';
import { TPM_RC, TpmError, isStaleHandleError, toTpmError } from './errors.js';
import type { NativeAddon, NativeContext } from './native.js';

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

export interface PcrValue {
  hashAlg: number;
  pcr: number;
  value: Buffer;
}

export interface EndorsementKey {
  kind: EkKind;
  /** TPM2B_PUBLIC */
  public: Buffer;
  /** DER, or null when the TPM carries no certificate for this EK. */
  certificate: Buffer | null;
  /** Set when the EK is persistent (e.g. 0x81010001); otherwise it is recreated from `template`. */
  persistentHandle?: number;
  /** NV index the certificate was read from. */
  certificateIndex?: number;
  /** TPM2B_PUBLIC template the EK is recreated from when it is not persistent. */
  template?: Buffer;
}

export interface TpmInfo {
  manufacturer: string;
  manufacturerId: number;
  vendor: string;
  /** TPM_PT_FIRMWARE_VERSION_1/2 as four 16-bit numbers, e.g. "7.85.4555.0". */
  firmwareVersion: string;
  spec: { family: string; level: number; revision: string; year: number; dayOfYear: number };
  /** Minimum number of transient objects the TPM can hold (TPM_PT_HR_TRANSIENT_MIN). */
  transientObjectSlots: number;
  /** Minimum number of loaded sessions (TPM_PT_HR_LOADED_MIN). */
  loadedSessionSlots: number;
  /** Active PCR banks and their PCRs. */
  pcrBanks: PcrSelection[];
}

const TPM_CAP_HANDLES = 1;
const TPM_CAP_PCRS = 5;
const TPM_CAP_TPM_PROPERTIES = 6;
const TPM_HT_TRANSIENT = 0x80000000;
const PT = {
  FIXED: 0x100,
  FAMILY_INDICATOR: 0x100,
  LEVEL: 0x101,
  REVISION: 0x102,
  DAY_OF_YEAR: 0x103,
  YEAR: 0x104,
  MANUFACTURER: 0x105,
  VENDOR_STRING_1: 0x106,
  FIRMWARE_VERSION_1: 0x10b,
  FIRMWARE_VERSION_2: 0x10c,
  HR_TRANSIENT_MIN: 0x10e,
  HR_LOADED_MIN: 0x110,
  NV_BUFFER_MAX: 0x12c,
} as const;
const TPMA_NV = { PPREAD: 1 << 16, OWNERREAD: 1 << 17, AUTHREAD: 1 << 18 } as const;

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

/** Shared per-Tpm state: the addon, the context, command statistics, the EK cache and the residents. */
export class TpmCore {
  private readonly stats = new Map<string, number>();
  readonly ekCache = new Map<EkKind, EndorsementKey>();
  nvBufferMax: number | undefined;
  private srkResident: ResidentObject | undefined;
  /** At most one resident key (the AK): the third object slot belongs to the TLS signing path. */
  keyResident: ResidentObject | undefined;
  private readonly savedContexts = new Map<string, Buffer>();
  /** false: `loadResident`/`residentSrk` load for the batch only (one-shot processes). */
  keepResidents = true;

  constructor(
    readonly addon: NativeAddon,
    readonly ctx: NativeContext,
  ) {}

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

  /**
   * Runs one addon primitive: TPM failures become TpmError; commands are counted under `name` (and
   * into `into`, a batch's own statistics).
   */
  async call<T>(name: string, fn: (addon: NativeAddon, ctx: NativeContext) => Promise<T>, into?: Map<string, number>): Promise<T> {
    const before = this.addon.commandCount(this.ctx);
    try {
      return await fn(this.addon, this.ctx);
    } catch (e) {
      throw toTpmError(e);
    } finally {
      const n = this.addon.commandCount(this.ctx) - before;
      if (n > 0) {
        this.stats.set(name, (this.stats.get(name) ?? 0) + n);
        into?.set(name, (into.get(name) ?? 0) + n);
      }
    }
  }

  // ---- residents ----

  get residentSrk(): ResidentObject | undefined {
    return this.srkResident;
  }

  /** Sets the resident SRK and tells the TLS path (it may reload a stale key under it). */
  set residentSrk(r: ResidentObject | undefined) {
    // Cleared before the SRK is flushed, set once it exists: the TLS sign callback runs on this
    // (the main) thread, so it never sees a handle that is being flushed.
    this.addon.tlsSetParent(this.ctx, r ? r.handle : null);
    this.srkResident = r;
  }

  isResident(handle: number): boolean {
    return this.srkResident?.handle === handle || this.keyResident?.handle === handle;
  }

  /** Resident objects right now (0–2). */
  get residentCount(): number {
    return (this.srkResident ? 1 : 0) + (this.keyResident ? 1 : 0);
  }

  /**
   * Forgets a resident and flushes it; if the flush fails (already gone), closes its ESYS handle
   * instead. Returns true if the TPM flushed it.
   */
  async releaseResident(which: 'srk' | 'key', into?: Map<string, number>): Promise<boolean> {
    const r = which === 'srk' ? this.srkResident : this.keyResident;
    if (!r) return false;
    if (which === 'srk') this.residentSrk = undefined;
    else this.keyResident = undefined;
    try {
      await this.call('FlushContext', (a, c) => a.flush(c, r.handle), into);
      return true;
    } catch {
      await this.call('TR_Close', (a, c) => a.trClose(c, r.handle), into).catch(() => {});
      return false;
    }
  }

  /** Flushes every resident object (the key first). Returns how many the TPM flushed. */
  async releaseResidents(into?: Map<string, number>): Promise<number> {
    const key = await this.releaseResident('key', into);
    const srk = await this.releaseResident('srk', into);
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
    private readonly core: TpmCore,
    readonly stats: Map<string, number> = new Map(),
  ) {}

  private get esysTr(): NativeAddon['ESYS_TR'] {
    return this.core.addon.ESYS_TR;
  }

  /** TPM commands this batch sent so far (flushes included). */
  get commandCount(): number {
    let n = 0;
    for (const v of this.stats.values()) n += v;
    return n;
  }

  /**
   * Runs one addon primitive. `handles`: the objects the command uses; if one of them is resident
   * and the TPM fails the command, the residents are suspect (see residentsStale).
   */
  private async call<T>(name: string, fn: (addon: NativeAddon, ctx: NativeContext) => Promise<T>, handles: number[] = []): Promise<T> {
    if (this.ended) throw new EdgeidError('tpm_closed', 'this TPM batch has ended; its session and handles are no longer valid');
    try {
      return await this.core.call(name, fn, this.stats);
    } catch (e) {
      // Gone (TPM reset, flushed by another process: TPM_RC_REFERENCE_H0…, _HANDLE) — or, worse, the
      // handle now names someone else's object, which fails in any way (e.g. TPM_RC_SCHEME): any TPM
      // error on a resident object makes Tpm.batch reload the residents and try once more.
      if (handles.some((h) => this.core.isResident(h)) && (isStaleHandleError(e) || (e instanceof TpmError && e.layer === 0))) {
        this.residentsStale = true;
      }
      throw e;
    }
  }

  /** Runs `load` (an object into a slot); on OBJECT_MEMORY, evicts residents this batch does not use and tries once more. */
  private async withRoom<T>(load: () => Promise<T>): Promise<T> {
    try {
      return await load();
    } catch (e) {
      if (!isTpmCode(e, TPM_RC.OBJECT_MEMORY)) throw e;
      let freed = false;
      for (const which of ['key', 'srk'] as const) {
        const r = which === 'key' ? this.core.keyResident : this.core.residentSrk;
        if (r && !this.usedResidents.has(r.handle)) freed = (await this.core.releaseResident(which, this.stats)) || freed;
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
    const resident = this.core.residentSrk;
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
    if (!this.core.keepResidents) return this.srk();
    const resident = this.core.residentSrk;
    if (resident) return this.useResident(resident);
    let handle = this.srkHandle;
    let pub: Buffer;
    if (handle !== undefined) {
      this.srkHandle = undefined;
      this.transient.splice(this.transient.lastIndexOf(handle), 1);
      pub = this.srkPublic ?? Buffer.alloc(0);
    } else {
      const tr = this.esysTr.RH_OWNER;
      const r = await this.withRoom(() => this.call('CreatePrimary', (a, c) => a.createPrimary(c, tr, srkTemplate())));
      handle = r.handle;
      pub = r.public;
    }
    this.core.residentSrk = { handle, public: pub };
    return this.useResident(this.core.residentSrk);
  }

  /**
   * Loads `blob` under the resident SRK and keeps both loaded between batches (the renewal's AK).
   * Returns at once, with no TPM command, if it is resident already; replaces a different resident
   * key (one at most). On a Tpm opened with { keepResidents: false }: a plain load().
   */
  async loadResident(blob: KeyBlob): Promise<LoadedKey> {
    if (!this.core.keepResidents) return this.load(blob);
    const current = this.core.keyResident;
    if (current?.blob && sameBlob(current.blob, blob)) {
      await this.residentSrk(); // e.g. released for an EK's slot during enrollment
      return { handle: this.useResident(current), public: current.public };
    }
    if (current) await this.core.releaseResident('key', this.stats);
    const parent = await this.residentSrk();
    const handle = await this.withRoom(() => this.call('Load', (a, c) => a.load(c, parent, blob.private, blob.public), [parent]));
    const resident: ResidentObject = { handle, public: blob.public, blob: { public: Buffer.from(blob.public), private: Buffer.from(blob.private) } };
    this.core.keyResident = resident;
    return { handle: this.useResident(resident), public: blob.public };
  }

  /** Flushes the resident objects now (close, wipe). Returns how many the TPM flushed. */
  releaseResidents(): Promise<number> {
    return this.core.releaseResidents(this.stats);
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
    } else if (this.core.residentSrk) {
      await this.core.releaseResident('srk', this.stats);
    }
  }

  /** CreatePrimary in a hierarchy; the object is flushed when the batch ends. */
  async createPrimary(hierarchy: 'owner' | 'endorsement', template: Buffer): Promise<LoadedKey> {
    const tr = hierarchy === 'owner' ? this.esysTr.RH_OWNER : this.esysTr.RH_ENDORSEMENT;
    const r = await this.withRoom(() => this.call('CreatePrimary', (a, c) => a.createPrimary(c, tr, template)));
    this.transient.push(r.handle);
    return { handle: r.handle, public: r.public };
  }

  /** Creates a key under the SRK and returns its blobs (not loaded). */
  async create(template: Buffer): Promise<KeyBlob> {
    const parent = await this.srk();
    return this.call('Create', (a, c) => a.create(c, parent, template), [parent]);
  }

  /** Creates a key under the SRK and loads it in one command (TPM2_CreateLoaded). */
  async createLoaded(template: Buffer): Promise<LoadedKey & KeyBlob> {
    const parent = await this.srk();
    const r = await this.withRoom(() => this.call('CreateLoaded', (a, c) => a.createLoaded(c, parent, template), [parent]));
    this.transient.push(r.handle);
    return { handle: r.handle, public: r.public, private: r.private };
  }

  /** Loads a key blob under the SRK (or returns the resident key if it is that blob). */
  async load(blob: KeyBlob): Promise<LoadedKey> {
    const resident = this.core.keyResident;
    if (resident?.blob && sameBlob(resident.blob, blob)) return { handle: this.useResident(resident), public: resident.public };
    const parent = await this.srk();
    const handle = await this.withRoom(() => this.call('Load', (a, c) => a.load(c, parent, blob.private, blob.public), [parent]));
    this.transient.push(handle);
    return { handle, public: blob.public };
  }

  /** Flushes an object loaded by this batch before the batch ends (a resident one stops being resident). */
  async flush(key: LoadedKey): Promise<void> {
    if (this.core.keyResident?.handle === key.handle) return void (await this.core.releaseResident('key', this.stats));
    if (this.core.residentSrk?.handle === key.handle) return void (await this.core.releaseResident('srk', this.stats));
    if (key.handle === this.srkHandle) this.srkHandle = undefined;
    await this.flushHandle(key.handle);
  }

  private async flushHandle(handle: number): Promise<void> {
    const i = this.transient.lastIndexOf(handle);
    if (i < 0) throw badArgument('flush: this object was not loaded by this batch');
    this.transient.splice(i, 1);
    await this.call('FlushContext', (a, c) => a.flush(c, handle));
  }

  /**
   * Saves a loaded object's context (ESYS blob) so it can be reloaded later without its parent.
   * Remembered for Tpm.tlsSecureContext: a key saved here needs no batch of its own there.
   */
  async contextSave(key: LoadedKey): Promise<Buffer> {
    const saved = await this.call('ContextSave', (a, c) => a.contextSave(c, key.handle), [key.handle]);
    this.core.rememberSavedContext(key.public, saved);
    return saved;
  }

  /** Loads a saved context; the object is flushed when the batch ends. */
  async contextLoad(saved: Buffer, publicArea: Buffer): Promise<LoadedKey> {
    const handle = await this.withRoom(() => this.call('ContextLoad', (a, c) => a.contextLoad(c, saved)));
    this.transient.push(handle);
    return { handle, public: publicArea };
  }

  /** Opens a persistent object by its TPM handle (e.g. 0x81010001); closed when the batch ends. */
  async openPersistent(tpmHandle: number): Promise<LoadedKey> {
    const handle = await this.call('ReadPublic', (a, c) => a.trFromTpmPublic(c, tpmHandle));
    this.opened.push(handle);
    const { public: pub } = await this.call('ReadPublic', (a, c) => a.readPublic(c, handle));
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
    return this.call('Sign', (a, c) => a.sign(c, key.handle, digest, schemeAlg, hashAlg), [key.handle]);
  }

  /** TPM2_Quote over `selection` with the AK's scheme. */
  async quote(ak: LoadedKey, selection: PcrSelection[], qualifyingData: Buffer): Promise<Attestation> {
    return this.call('Quote', (a, c) => a.quote(c, ak.handle, qualifyingData, marshalPcrSelection(selection)), [ak.handle]);
  }

  /** TPM2_Certify: the AK attests that `key` is loaded in this TPM (name + attributes). */
  async certify(key: LoadedKey, ak: LoadedKey, qualifyingData: Buffer): Promise<Attestation> {
    return this.call('Certify', (a, c) => a.certify(c, key.handle, ak.handle, qualifyingData), [key.handle, ak.handle]);
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
      this.call(
        'ActivateCredential',
        (a, c) => a.activateCredential(c, ak.handle, ekObject, credentialBlob, encryptedSecret, auth.policyHashAlg, auth.orDigests),
        [ak.handle],
      ),
    );
  }

  private async openPersistentHandleOnly(tpmHandle: number): Promise<number> {
    const handle = await this.call('ReadPublic', (a, c) => a.trFromTpmPublic(c, tpmHandle));
    this.opened.push(handle);
    return handle;
  }

  // ---- PCRs, randomness, capabilities ----

  /**
   * Reads PCR values in TPM order (by selection entry, then ascending index). PCR_Read returns at
   * most 8 digests per call; if a PCR changes between calls (update counter), the read restarts.
   */
  async readPcrs(selection: PcrSelection[]): Promise<PcrValue[]> {
    const wanted = selection.map((b) => ({ hashAlg: b.hashAlg, pcrs: [...new Set(b.pcrs)].sort((x, y) => x - y) }));
    for (let attempt = 0; attempt < 3; attempt++) {
      const got = new Map<string, Buffer>();
      let counter: number | undefined;
      let restart = false;
      for (;;) {
        const remaining = wanted
          .map((b) => ({ hashAlg: b.hashAlg, pcrs: b.pcrs.filter((p) => !got.has(`${b.hashAlg}:${p}`)) }))
          .filter((b) => b.pcrs.length > 0);
        if (remaining.length === 0) break;
        const r = await this.call('PCR_Read', (a, c) => a.pcrRead(c, marshalPcrSelection(remaining)));
        if (counter !== undefined && r.updateCounter !== counter) {
          restart = true;
          break;
        }
        counter = r.updateCounter;
        let i = 0;
        for (const bank of parsePcrSelection(r.selection)) {
          for (const pcr of bank.pcrs) {
            const value = r.digests[i++];
            if (value === undefined) throw new EdgeidError('tpm_pcr_unavailable', 'PCR_Read returned fewer digests than its selection');
            got.set(`${bank.hashAlg}:${pcr}`, value);
          }
        }
        if (i === 0) {
          const missing = remaining.map((b) => `0x${b.hashAlg.toString(16)}:${b.pcrs.join(',')}`).join(' ');
          throw new EdgeidError('tpm_pcr_unavailable', `the TPM returned no value for PCRs ${missing}`);
        }
      }
      if (restart) continue;
      return wanted.flatMap((b) => b.pcrs.map((pcr) => ({ hashAlg: b.hashAlg, pcr, value: got.get(`${b.hashAlg}:${pcr}`)! })));
    }
    throw new EdgeidError('tpm_pcr_unavailable', 'PCRs kept changing while they were read (3 attempts)');
  }

  /** PCR values of one bank as verifyQuote takes them (index → value). */
  async readPcrBank(pcrs: number[], hashAlg: number = TPM_ALG.SHA256): Promise<Map<number, Buffer>> {
    const values = await this.readPcrs([{ hashAlg, pcrs }]);
    return new Map(values.map((v) => [v.pcr, v.value]));
  }

  /** Extends a PCR (tests and diagnostics; on a device only the boot chain should extend PCRs). */
  async extendPcr(index: number, digest: Buffer, hashAlg: number = TPM_ALG.SHA256): Promise<void> {
    await this.call('PCR_Extend', (a, c) => a.pcrExtend(c, index, hashAlg, digest));
  }

  /** n random bytes from the TPM's RNG (several GetRandom calls if needed). */
  async getRandom(n: number): Promise<Buffer> {
    if (!Number.isInteger(n) || n < 0 || n > 65536) throw badArgument(`getRandom: ${n} bytes`);
    const parts: Buffer[] = [];
    let have = 0;
    while (have < n) {
      const chunk = await this.call('GetRandom', (a, c) => a.getRandom(c, Math.min(32, n - have)));
      if (chunk.length === 0) throw new EdgeidError('tpm_command_failed', 'GetRandom returned no bytes');
      parts.push(chunk);
      have += chunk.length;
    }
    return Buffer.concat(parts).subarray(0, n);
  }

  private async properties(first: number, count: number): Promise<Map<number, number>> {
    const out = new Map<number, number>();
    let property = first;
    for (;;) {
      const r = await this.call('GetCapability', (a, c) => a.getCapability(c, TPM_CAP_TPM_PROPERTIES, property, count));
      let last = -1;
      for (let i = 0; i + 1 < r.values.length; i += 2) {
        last = r.values[i]!;
        out.set(last, r.values[i + 1]!);
      }
      if (!r.more || last < 0 || last >= first + count - 1) return out;
      property = last + 1;
    }
  }

  private async handles(first: number, last: number): Promise<number[]> {
    const out: number[] = [];
    let from = first;
    for (;;) {
      const r = await this.call('GetCapability', (a, c) => a.getCapability(c, TPM_CAP_HANDLES, from, 254));
      const inRange = r.values.filter((h) => h >= from && h <= last);
      out.push(...inRange);
      const max = r.values.length ? Math.max(...r.values) : last;
      if (!r.more || max >= last || inRange.length === 0) return out;
      from = max + 1;
    }
  }

  /** Transient objects currently loaded in the TPM (by anyone). */
  async transientHandleCount(): Promise<number> {
    return (await this.handles(TPM_HT_TRANSIENT, TPM_HT_TRANSIENT + 0xffffff)).length;
  }

  /**
   * Flushes every transient object in the TPM, including other processes' (for a TPM without a
   * resource manager, after a process died mid-batch). Returns how many were flushed.
   */
  async flushAllTransient(): Promise<number> {
    let n = await this.releaseResidents();
    for (const tpmHandle of await this.handles(TPM_HT_TRANSIENT, TPM_HT_TRANSIENT + 0xffffff)) {
      try {
        const tr = await this.call('ReadPublic', (a, c) => a.trFromTpmPublic(c, tpmHandle));
        await this.call('FlushContext', (a, c) => a.flush(c, tr));
        n++;
      } catch (e) {
        if (!isTpmCode(e, TPM_RC.HANDLE)) throw e; // gone meanwhile
      }
    }
    return n;
  }

  /** Manufacturer, firmware and specification of the TPM, its object slots and active PCR banks. */
  async info(): Promise<TpmInfo> {
    const p = await this.properties(PT.FIXED, 0x30);
    const get = (k: number): number => p.get(k) ?? 0;
    const ascii = (v: number): string =>
      Buffer.from([v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff])
        .toString('latin1')
        .replace(/[^\x20-\x7e]/g, '')
        .trim();
    const fw1 = get(PT.FIRMWARE_VERSION_1);
    const fw2 = get(PT.FIRMWARE_VERSION_2);
    const pcrs = await this.call('GetCapability', (a, c) => a.getCapability(c, TPM_CAP_PCRS, 0, 1));
    return {
      manufacturer: ascii(get(PT.MANUFACTURER)),
      manufacturerId: get(PT.MANUFACTURER),
      vendor: [0, 1, 2, 3].map((i) => ascii(get(PT.VENDOR_STRING_1 + i))).join(''),
      firmwareVersion: `${fw1 >>> 16}.${fw1 & 0xffff}.${fw2 >>> 16}.${fw2 & 0xffff}`,
      spec: {
        family: ascii(get(PT.FAMILY_INDICATOR)),
        level: get(PT.LEVEL),
        revision: (get(PT.REVISION) / 100).toFixed(2),
        year: get(PT.YEAR),
        dayOfYear: get(PT.DAY_OF_YEAR),
      },
      transientObjectSlots: get(PT.HR_TRANSIENT_MIN),
      loadedSessionSlots: get(PT.HR_LOADED_MIN),
      pcrBanks: pcrs.selection ? parsePcrSelection(pcrs.selection).filter((b) => b.pcrs.length > 0) : [],
    };
  }

  // ---- endorsement key ----

  /** Reads an NV index completely (NV_ReadPublic for its size, then NV_Read in chunks); null if absent. */
  async nvRead(nvIndex: number): Promise<Buffer | null> {
    let handle: number;
    try {
      handle = await this.call('NV_ReadPublic', (a, c) => a.trFromTpmPublic(c, nvIndex));
    } catch (e) {
      if (isTpmCode(e, TPM_RC.HANDLE)) return null;
      throw e;
    }
    this.opened.push(handle);
    const nv = await this.call('NV_ReadPublic', (a, c) => a.nvReadPublic(c, handle));
    let auth: number;
    if (nv.attributes & TPMA_NV.AUTHREAD) auth = handle;
    else if (nv.attributes & TPMA_NV.OWNERREAD) auth = this.esysTr.RH_OWNER;
    else if (nv.attributes & TPMA_NV.PPREAD) auth = this.esysTr.RH_PLATFORM;
    else throw new EdgeidError('tpm_command_failed', `NV index 0x${nvIndex.toString(16)} is not readable with an auth value`);
    if (this.core.nvBufferMax === undefined) {
      this.core.nvBufferMax = (await this.properties(PT.NV_BUFFER_MAX, 1)).get(PT.NV_BUFFER_MAX) || 512;
    }
    const chunk = Math.min(this.core.nvBufferMax, 1024);
    const parts: Buffer[] = [];
    for (let offset = 0; offset < nv.dataSize; offset += chunk) {
      const size = Math.min(chunk, nv.dataSize - offset);
      parts.push(await this.call('NV_Read', (a, c) => a.nvRead(c, auth, handle, size, offset)));
    }
    return Buffer.concat(parts);
  }

  /** Persistent EKs (TCG range 0x81010000..0x810100FF) with their public areas. */
  private async persistentEks(): Promise<{ handle: number; public: Buffer; kind: EkKind }[]> {
    const out: { handle: number; public: Buffer; kind: EkKind }[] = [];
    for (const handle of await this.handles(EK_PERSISTENT_FIRST, EK_PERSISTENT_LAST)) {
      const obj = await this.openPersistent(handle);
      const pub = parsePublic(obj.public);
      const kind = ekKindOf(pub);
      if (kind && looksLikeEk(pub)) out.push({ handle, public: obj.public, kind });
    }
    return out;
  }

  /**
   * The EK of `kind` with its certificate: the first TCG certificate index of that kind that holds
   * a certificate decides; its EK is the persistent EK with the same public key, or the EK
   * recreated from the index's TCG template. A certificate whose key matches no EK in the TPM is
   * tpm_ek_mismatch. Without any certificate: the persistent EK of that kind, else the low-range
   * template (L-1 RSA 2048 / L-2 ECC P-256). Without `kind`: RSA if present, else ECC.
   * Results are cached per Tpm (EKs do not change while the agent runs).
   */
  async endorsementKey(kind?: EkKind): Promise<EndorsementKey> {
    if (kind === undefined) {
      const cached = this.core.ekCache.get('rsa') ?? this.core.ekCache.get('ecc');
      if (cached) return cached;
      const rsa = await this.discoverEk('rsa', false);
      return rsa ?? (await this.discoverEk('ecc', false)) ?? (await this.endorsementKey('rsa'));
    }
    const cached = this.core.ekCache.get(kind);
    if (cached) return cached;
    const found = await this.discoverEk(kind, true);
    if (!found) throw new EdgeidError('tpm_ek_not_found', `no ${kind.toUpperCase()} endorsement key`);
    return found;
  }

  private async discoverEk(kind: EkKind, allowTemplate: boolean): Promise<EndorsementKey | null> {
    const persistent = (await this.persistentEks()).filter((e) => e.kind === kind);
    let result: EndorsementKey | null = null;
    for (const slot of EK_CERTIFICATE_SLOTS.filter((s) => s.kind === kind)) {
      const raw = await this.nvRead(slot.nvIndex);
      if (raw === null) continue;
      const certificate = trimDer(raw);
      const match = persistent.find((e) => certificateMatchesEk(certificate, e.public));
      if (match) {
        result = { kind, public: match.public, certificate, persistentHandle: match.handle, certificateIndex: slot.nvIndex };
      } else if (slot.template) {
        const template = slot.template();
        const ek = await this.createPrimary('endorsement', template);
        await this.flush(ek);
        if (!certificateMatchesEk(certificate, ek.public)) {
          throw new EdgeidError(
            'tpm_ek_mismatch',
            `the certificate in NV 0x${slot.nvIndex.toString(16)} (${slot.label}) matches neither a persistent EK nor the EK from the TCG template`,
          );
        }
        result = { kind, public: ek.public, certificate, certificateIndex: slot.nvIndex, template };
      } else {
        throw new EdgeidError('tpm_ek_mismatch', `the certificate in NV 0x${slot.nvIndex.toString(16)} (${slot.label}) matches no persistent EK`);
      }
      break;
    }
    if (!result) {
      const first = persistent[0];
      if (first) {
        result = { kind, public: first.public, certificate: null, persistentHandle: first.handle };
      } else if (allowTemplate) {
        const template = defaultEkTemplate(kind);
        const ek = await this.createPrimary('endorsement', template);
        await this.flush(ek);
        result = { kind, public: ek.public, certificate: null, template };
      }
    }
    if (result) this.core.ekCache.set(kind, result);
    return result;
  }

  // ---- end of batch ----

  /** Flushes everything this batch loaded and closes what it opened. Called by Tpm.batch. */
  async end(): Promise<void> {
    if (this.ended) return;
    let firstError: unknown;
    for (const handle of this.transient.reverse()) {
      try {
        await this.core.call('FlushContext', (a, c) => a.flush(c, handle), this.stats);
      } catch (e) {
        firstError ??= e;
      }
    }
    for (const handle of this.opened.reverse()) {
      try {
        await this.core.call('TR_Close', (a, c) => a.trClose(c, handle), this.stats);
      } catch (e) {
        firstError ??= e;
      }
    }
    this.transient.length = 0;
    this.opened.length = 0;
    this.srkHandle = undefined;
    this.ended = true;
    if (firstError !== undefined) throw firstError;
  }
}
