/**
 * The raw addon (agent/tpm/src): one function per TPM primitive, marshaled bytes in and out,
 * ESYS_TR handles as numbers. Only agent/tpm uses this directly; everything else goes through
 * the queued, typed API in index.ts.
 */
import { createRequire } from 'node:module';
import { EdgeidError } from '../../protocol/errors/index.js';

/** Opaque ESYS context (an N-API external). */
export type NativeContext = { readonly __brand: 'edgeid-tpm-context' };

/** Opaque handle of a TPM key installed into a TLS context (an N-API external). */
export type NativeTlsKey = { readonly __brand: 'edgeid-tpm-tls-key' };

/** What the TLS signing path (tls_key.cc) did so far on one context. */
export interface NativeTlsStats {
  signatures: number;
  failures: number;
  /** Duration of the last sign callback in µs, waiting for the TPM lock included. */
  lastSignMicros: number;
  /** TPM commands by name: ContextLoad, CreatePrimary, Load, ContextSave, Sign, FlushContext. */
  commands: Record<string, number>;
  /** The last thing that failed (a TSS call with its rc, or a reason with rc 0); null if none. */
  lastError: { command: string; rc: number; text: string } | null;
}

export interface NativeAddon {
  open(tcti: string): Promise<NativeContext>;
  close(ctx: NativeContext): void;
  /**
   * Ends a TPM read that is blocked on a worker (shuts down this process's sockets to the TPM's
   * address; see src/watchdog.c) and marks the context broken. Returns the sockets shut down.
   */
  abort(ctx: NativeContext): number;
  /** True after abort (by the TS layer or the TLS watchdog) until a reconnect succeeds. */
  isBroken(ctx: NativeContext): boolean;
  /** A new TCTI and ESYS context in place of the old ones: every ESYS_TR handle becomes invalid. */
  reconnect(ctx: NativeContext): Promise<void>;
  /** How long one TLS signature may take, waiting for the TPM included (default 5000 ms). */
  setTlsDeadline(ctx: NativeContext, ms: number): void;
  commandCount(ctx: NativeContext): number;
  decodeRc(rc: number): string;
  /** ESYS contexts and TLS keys this process still holds (leak checks). */
  liveObjects(): { contexts: number; tlsKeys: number };

  createPrimary(ctx: NativeContext, hierarchy: number, template: Buffer): Promise<{ handle: number; public: Buffer }>;
  create(ctx: NativeContext, parent: number, template: Buffer): Promise<{ public: Buffer; private: Buffer }>;
  createLoaded(ctx: NativeContext, parent: number, template: Buffer): Promise<{ handle: number; public: Buffer; private: Buffer }>;
  load(ctx: NativeContext, parent: number, priv: Buffer, pub: Buffer): Promise<number>;
  flush(ctx: NativeContext, handle: number): Promise<void>;
  trFromTpmPublic(ctx: NativeContext, tpmHandle: number): Promise<number>;
  trClose(ctx: NativeContext, handle: number): Promise<void>;
  readPublic(ctx: NativeContext, handle: number): Promise<{ public: Buffer; name: Buffer }>;
  sign(ctx: NativeContext, key: number, digest: Buffer, schemeAlg: number, hashAlg: number): Promise<Buffer>;
  quote(ctx: NativeContext, ak: number, qualifyingData: Buffer, selection: Buffer): Promise<{ attest: Buffer; signature: Buffer }>;
  certify(ctx: NativeContext, object: number, ak: number, qualifyingData: Buffer): Promise<{ attest: Buffer; signature: Buffer }>;
  activateCredential(
    ctx: NativeContext,
    ak: number,
    ek: number,
    credentialBlob: Buffer,
    encryptedSecret: Buffer,
    policyHashAlg: number,
    orDigests: Buffer[],
  ): Promise<Buffer>;
  pcrRead(ctx: NativeContext, selection: Buffer): Promise<{ updateCounter: number; selection: Buffer; digests: Buffer[] }>;
  pcrExtend(ctx: NativeContext, index: number, hashAlg: number, digest: Buffer): Promise<void>;
  getRandom(ctx: NativeContext, bytes: number): Promise<Buffer>;
  getCapability(
    ctx: NativeContext,
    capability: number,
    property: number,
    count: number,
  ): Promise<{ more: boolean; values: number[]; selection?: Buffer }>;
  nvReadPublic(ctx: NativeContext, nvHandle: number): Promise<{ nvIndex: number; nameAlg: number; attributes: number; dataSize: number }>;
  nvRead(ctx: NativeContext, auth: number, nvHandle: number, size: number, offset: number): Promise<Buffer>;
  contextSave(ctx: NativeContext, handle: number): Promise<Buffer>;
  contextLoad(ctx: NativeContext, context: Buffer): Promise<number>;

  /**
   * Installs a TPM key into the SSL_CTX behind `sslCtx` (a tls.SecureContext's `context._external`)
   * and returns its handle. Synchronous. Throws Errors with `code` tpm_tls_* / tpm_bad_argument.
   */
  tlsInstallKey(
    ctx: NativeContext,
    sslCtx: unknown,
    pub: Buffer,
    priv: Buffer,
    srkTemplate: Buffer,
    savedContext: Buffer | null,
  ): NativeTlsKey;
  /** Forgets a TLS key's blobs and saved context: its next handshakes fail. */
  tlsReleaseKey(key: NativeTlsKey): void;
  tlsStats(ctx: NativeContext): NativeTlsStats;
  /** The resident SRK (ESYS_TR) a TLS key with a stale saved context is reloaded under; null: none. */
  tlsSetParent(ctx: NativeContext, srk: number | null): void;
  /** The OpenSSL the addon was compiled against and the one Node runs; compatible = same major.minor. */
  tlsOpenssl(): { headers: string; runtime: string; compatible: boolean };

  /** ESYS_TR values of the hierarchies (not the TPM handles). */
  readonly ESYS_TR: { RH_OWNER: number; RH_ENDORSEMENT: number; RH_PLATFORM: number; RH_NULL: number };
}

let cached: NativeAddon | undefined;

/**
 * Loads edgeid_tpm.node once: from EDGEID_TPM_ADDON if set (the bundled agent ships the .node next
 * to its bundle), else from agent/tpm/build/Release (npm run build:addon).
 */
export function loadAddon(): NativeAddon {
  if (cached) return cached;
  const override = process.env.EDGEID_TPM_ADDON;
  const path = override && override.length > 0 ? override : new URL('./build/Release/edgeid_tpm.node', import.meta.url).pathname;
  // tpm2-tss logs every TPM error to stderr; failures reach callers as TpmError instead.
  // (Read by libtss2 with getenv at its first log line; set TSS2_LOG yourself to debug.)
  process.env.TSS2_LOG ??= 'all+NONE';
  try {
    cached = createRequire(import.meta.url)(path) as NativeAddon;
  } catch (e) {
    throw new EdgeidError('tpm_addon_missing', `cannot load the TPM addon from ${path}: ${(e as Error).message}`, { path });
  }
  return cached;
}
