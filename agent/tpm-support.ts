/**
 * What the agent needs from the TPM layer beyond the batch API: the MQTT TLS context with the
 * TPM-resident key, and clean-up of objects a killed process left in a TPM without resource manager.
 */
import type { SecureContext } from 'node:tls';
import type { KeyBlob, Tpm } from './tpm/index.js';
import type { NativeAddon, NativeContext } from './tpm/native.js';

export interface SecureContextRequest {
  /** Blobs of the session key whose certificate this is. */
  key: KeyBlob;
  /** PEM: the leaf certificate, then intermediates. */
  certPem: string;
  /** PEM: the trust anchors for the broker's certificate (the edgeid root and chain). */
  caPem: string;
  minVersion: 'TLSv1.2' | 'TLSv1.3';
}

/** Builds a tls.SecureContext whose private key operations happen in the TPM. */
export type SecureContextFactory = (req: SecureContextRequest) => Promise<SecureContext>;

/** The TPM addon's TLS context builder (issue 4 §4): the private key operations run in the TPM. */
export function tlsContextFromTpm(tpm: Tpm): SecureContextFactory {
  return (req) => tpm.tlsSecureContext({ key: req.key, certPem: req.certPem, caPem: req.caPem, minVersion: req.minVersion });
}

const TPM_CAP_HANDLES = 1;
const TPM_HT_TRANSIENT = 0x80000000;

/**
 * Flushes every transient object in the TPM. Only meaningful without a resource manager (swtpm,
 * /dev/tpm0): there a process killed mid-batch leaves its objects loaded, and a small TPM then has
 * no room. Through the kernel resource manager (/dev/tpmrm0) a connection sees only its own
 * objects, and the RM flushes them when a process dies, so this is skipped. Call it only while no
 * other process uses the TPM (the agent holds the state dir lock when it does).
 */
export async function flushLeftoverObjects(tpm: Tpm): Promise<number> {
  if (tpm.tcti.includes('tpmrm')) return 0;
  const own = (tpm as unknown as { flushTransientObjects?: () => Promise<number> }).flushTransientObjects;
  if (typeof own === 'function') return own.call(tpm);
  // Fallback over the raw addon, inside a batch so nothing else runs meanwhile.
  const core = (tpm as unknown as { core?: { addon: NativeAddon; ctx: NativeContext } }).core;
  if (!core) return 0;
  return tpm.batch(async () => {
    const { addon, ctx } = core;
    const caps = await addon.getCapability(ctx, TPM_CAP_HANDLES, TPM_HT_TRANSIENT, 64);
    let n = 0;
    for (const h of caps.values.filter((v) => v >= TPM_HT_TRANSIENT && v < TPM_HT_TRANSIENT + 0x1000000)) {
      try {
        const tr = await addon.trFromTpmPublic(ctx, h);
        await addon.flush(ctx, tr);
        n++;
      } catch {
        // gone already, or not flushable: nothing to do
      }
    }
    return n;
  });
}
