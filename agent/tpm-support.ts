/**
 * What the agent needs from the TPM layer beyond the batch API: the MQTT TLS context with the
 * TPM-resident key, and clean-up of objects a killed process left in a TPM without resource manager.
 */
import type { SecureContext } from 'node:tls';
import type { KeyBlob, Tpm } from './tpm/index.js';

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

/** The TPM addon's TLS context builder: the private key operations run in the TPM. */
export function tlsContextFromTpm(tpm: Tpm): SecureContextFactory {
  return (req) => tpm.tlsSecureContext({ key: req.key, certPem: req.certPem, caPem: req.caPem, minVersion: req.minVersion });
}

/**
 * Flushes this Tpm's resident objects (the SRK and AK the renewal keeps loaded) and, on a TPM
 * without resource manager (swtpm, /dev/tpm0), every other transient object too: there a process
 * killed mid-batch — or killed at any time, since the residents stay loaded between renewals —
 * leaves its objects loaded, and a small TPM then has no room. Through the kernel resource manager
 * (/dev/tpmrm0) a connection sees only its own objects, and the RM flushes them when a process
 * dies, so only the residents are flushed there. Call it only while no other process uses the TPM
 * (the agent holds the state dir lock when it does). Returns how many objects were flushed.
 */
export async function flushLeftoverObjects(tpm: Tpm): Promise<number> {
  if (tpm.tcti.includes('tpmrm')) return tpm.flushResidents();
  return tpm.flushTransientObjects();
}
