/**
 * TLS client contexts whose private key stays in the TPM.
 *
 * Node has no public way to give a SecureContext a hardware key. The addon (src/tls_key.cc) takes
 * the SSL_CTX behind `tls.createSecureContext({cert, ca}).context._external` and installs an
 * OpenSSL key whose signatures come from TPM2_Sign. The context is created without any key, so no
 * private key is ever in Node's memory; pass it to mqtt.js as `secureContext`.
 *
 * Every full handshake makes one TPM signature on the main thread (ContextLoad → Sign → Flush,
 * about 1 ms on swtpm, tens of ms on a discrete TPM): the only blocking TPM call in the agent.
 * If the TPM cannot sign (out of object memory while a batch holds its slots, TPM gone, key
 * released), the handshake fails with EPROTO and mqtt.js retries later; `tlsStats().lastError` says why.
 * A TPM that does not answer holds the loop at most for the TLS signing deadline
 * (EDGEID_TPM_TLS_DEADLINE_MS, default 5 s), lock wait included; see src/tls_key.cc.
 */
import tls, { type SecureContext, type SecureVersion } from 'node:tls';
import { EdgeidError, type ErrorCode } from '../../protocol/errors/index.js';
import { TPMA_OBJECT, TPM_ALG } from '../../protocol/tpm/constants.js';
import { parsePublic } from '../../protocol/tpm/public.js';
import { srkTemplate } from '../../protocol/tpm/templates.js';
import type { NativeAddon, NativeContext, NativeTlsKey, NativeTlsStats } from './native.js';
import type { KeyBlob } from './session.js';

export interface TlsContextOptions {
  /** Blobs of an unrestricted ECC signing key (`createSigningKey`) under this TPM's SRK. */
  key: KeyBlob;
  /** PEM: the leaf certificate for `key`, then intermediates. */
  certPem: string;
  /** PEM: trust anchors for the server's certificate. */
  caPem: string;
  minVersion?: SecureVersion;
  maxVersion?: SecureVersion;
}

export type TlsStats = NativeTlsStats;

const installed = new WeakMap<SecureContext, NativeTlsKey>();

/**
 * The SSL_CTX handle behind a SecureContext. `context._external` is a Node internal (Node 20:
 * a getter on the native SecureContext returning a V8 External); if an upgrade moves it, this
 * fails loudly instead of handing the addon something else.
 */
export function sslContextHandle(sc: SecureContext): unknown {
  const inner = (sc as unknown as { context?: unknown }).context;
  if (typeof inner !== 'object' || inner === null || !('_external' in inner)) {
    throw new EdgeidError(
      'tpm_tls_node_internals_changed',
      `tls.SecureContext in Node ${process.version} has no context._external: the TPM key cannot be installed`,
      { node: process.version },
    );
  }
  return (inner as { _external: unknown })._external;
}

/** Turns the addon's coded Errors into EdgeidErrors. */
function fromAddon(e: unknown): unknown {
  const code = (e as { code?: unknown } | null)?.code;
  if (e instanceof Error && typeof code === 'string' && (code.startsWith('tpm_tls_') || code === 'tpm_bad_argument')) {
    return new EdgeidError(code as ErrorCode, e.message);
  }
  return e;
}

/** Checks what OpenSSL would otherwise reject with a vaguer message. */
function checkSigningKey(key: KeyBlob): void {
  const pub = parsePublic(key.public);
  if (pub.type !== TPM_ALG.ECC || !(pub.objectAttributes & TPMA_OBJECT.sign) || pub.objectAttributes & TPMA_OBJECT.restricted) {
    throw new EdgeidError('tpm_bad_argument', 'the TLS key must be an unrestricted ECC signing key (createSigningKey)');
  }
}

/**
 * Builds the SecureContext. `saveContext` loads the key once in a batch and returns its saved
 * context (so a damaged or foreign blob fails here, not at the first handshake).
 */
export async function createTpmSecureContext(
  addon: NativeAddon,
  ctx: NativeContext,
  opts: TlsContextOptions,
  saveContext: (key: KeyBlob) => Promise<Buffer>,
): Promise<SecureContext> {
  const openssl = addon.tlsOpenssl();
  if (!openssl.compatible) {
    throw new EdgeidError(
      'tpm_tls_openssl_mismatch',
      `the TPM addon was built against ${openssl.headers} but Node runs ${openssl.runtime}`,
      { headers: openssl.headers, runtime: openssl.runtime },
    );
  }
  checkSigningKey(opts.key);
  const saved = await saveContext(opts.key);
  // No key here: the TPM key is installed below, and no private key exists outside the TPM.
  const sc = tls.createSecureContext({
    cert: opts.certPem,
    ca: opts.caPem,
    ...(opts.minVersion ? { minVersion: opts.minVersion } : {}),
    ...(opts.maxVersion ? { maxVersion: opts.maxVersion } : {}),
  });
  try {
    const handle = addon.tlsInstallKey(ctx, sslContextHandle(sc), opts.key.public, opts.key.private, srkTemplate(), saved);
    installed.set(sc, handle);
  } catch (e) {
    throw fromAddon(e);
  }
  return sc;
}

/**
 * Makes a context's TPM key unusable (after a wipe, when its blob was deleted): the addon forgets
 * the blob and the saved context, later handshakes fail. Nothing is loaded between handshakes, so
 * nothing is flushed. Returns false if `sc` carries no TPM key.
 */
export function releaseTlsKey(addon: NativeAddon, sc: SecureContext): boolean {
  const handle = installed.get(sc);
  if (!handle) return false;
  addon.tlsReleaseKey(handle);
  installed.delete(sc);
  return true;
}
