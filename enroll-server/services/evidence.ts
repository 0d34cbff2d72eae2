import 'reflect-metadata';
import { createHash, type KeyObject } from 'node:crypto';
import { canonicalJson, quoteQualifyingData, type Claims, type Evidence } from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import { TPM_ALG, TPM_ECC_CURVE } from '../../protocol/tpm/constants.js';
import { parsePublic, publicKeySpki, type TpmPublic } from '../../protocol/tpm/public.js';
import { verifyCertifyAsync, verifyQuoteAsync } from '../../protocol/tpm/verify.js';
import { checkCsrAsync } from './csr.js';
import type { ZonePolicy } from '../config.js';

const MAX_CLAIMS_JSON = 8 * 1024;

export interface VerifiedEvidence {
  sessionKey: TpmPublic;
  /** SPKI DER of the session key: the certificate's key. */
  spki: Buffer;
  spkiHash: string;
  /** PCR index → hex sha256, as quoted. */
  pcrs: Record<string, string>;
  claims: Claims;
}

export function b64(field: string, value: string): Buffer {
  // the JSON schema already restricts the alphabet; this catches non-canonical padding
  const buf = Buffer.from(value, 'base64');
  if (buf.toString('base64') !== value) throw new EdgeidError('bad_request', `${field} is not canonical base64`, { field });
  return buf;
}

export function sha256Hex(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

export function checkClaims(claims: unknown): Claims {
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) throw new EdgeidError('claims_invalid');
  const c = claims as Claims;
  if (typeof c.agentVersion !== 'string' || c.agentVersion.length === 0)
    throw new EdgeidError('claims_invalid', 'claims.agentVersion must be a string');
  let text: string;
  try {
    text = canonicalJson(c);
  } catch {
    throw new EdgeidError('claims_invalid');
  }
  if (Buffer.byteLength(text) > MAX_CLAIMS_JSON) throw new EdgeidError('claims_invalid', `claims are larger than ${MAX_CLAIMS_JSON} bytes`);
  return c;
}

/** Reported PCR values must be exactly the zone's selection, each a 32-byte sha256 digest. */
export function checkPcrValues(zone: ZonePolicy, values: Record<string, string>): Map<number, Buffer> {
  const keys = Object.keys(values);
  const expected = zone.pcrs.map(String);
  if (keys.length !== expected.length || !expected.every((k) => k in values)) {
    throw new EdgeidError('pcr_values_invalid', `report exactly PCRs ${zone.pcrs.join(',')} of the sha256 bank`, {
      expected: zone.pcrs,
      got: keys,
    });
  }
  const map = new Map<number, Buffer>();
  for (const k of expected) {
    const v = b64(`pcrValues.${k}`, values[k]!);
    if (v.length !== 32) throw new EdgeidError('pcr_values_invalid', `PCR ${k} is not a 32-byte sha256 value`);
    map.set(Number(k), v);
  }
  return map;
}

/**
 * Verifies the evidence of one certificate request against the device's AK and the nonce the
 * server issued. In this order, each failure with its own code:
 *  1. claims are an object with agentVersion, ≤ 8 KiB canonical      → claims_invalid
 *  2. pcrValues are exactly the zone's PCRs, 32 bytes each            → pcr_values_invalid
 *  3. the session key is an ECC P-256 public area                     → tpm_malformed / session_key_malformed
 *  4. certify (qualifyingData = nonce): TPM-generated, signed by the AK, names the session key,
 *     fixedTPM, fixedParent, sensitiveDataOrigin, sign, not restricted → certify_* (protocol/tpm/verify.ts)
 *  5. quote (qualifyingData = SHA-256(nonce ‖ SHA-256(canonical claims))): TPM-generated, signed
 *     by the AK, selection = reported PCRs, pcrDigest = H(reported values) → quote_*
 *  6. the CSR parses, its signature verifies, its key is the certified session key
 *                                                                     → csr_malformed / csr_bad_signature / csr_key_mismatch
 * Posture policy (baseline, golden values, claim rules) is judged afterwards (posture.ts).
 */
export async function verifyEvidence(p: {
  akPublic: TpmPublic;
  nonce: Buffer;
  evidence: Evidence;
  zone: ZonePolicy;
}): Promise<VerifiedEvidence> {
  const { evidence, akPublic, nonce } = p;
  const claims = checkClaims(evidence.claims);
  const pcrValues = checkPcrValues(p.zone, evidence.pcrValues);

  const sessionKey = parsePublic(b64('sessionKeyPub', evidence.sessionKeyPub));
  if (sessionKey.type !== TPM_ALG.ECC || sessionKey.ecc?.curve !== TPM_ECC_CURVE.NIST_P256) {
    throw new EdgeidError('session_key_malformed');
  }
  let spki: Buffer;
  let spkiKey: KeyObject;
  try {
    ({ der: spki, key: spkiKey } = publicKeySpki(sessionKey));
  } catch (e) {
    if (e instanceof EdgeidError) throw e;
    throw new EdgeidError('session_key_malformed');
  }

  // the three signatures are checked at once in the thread pool (off the event loop, on every
  // core); the outcomes are then reported in this order: certify, quote, CSR
  const [certify, quote, csrChecked] = await Promise.allSettled([
    (async () =>
      verifyCertifyAsync({
        akPublic,
        attest: b64('certify.attest', evidence.certify.attest),
        signature: b64('certify.signature', evidence.certify.signature),
        certifiedPublic: sessionKey,
        qualifyingData: nonce,
      }))(),
    (async () =>
      verifyQuoteAsync({
        akPublic,
        attest: b64('quote.attest', evidence.quote.attest),
        signature: b64('quote.signature', evidence.quote.signature),
        qualifyingData: quoteQualifyingData(nonce, claims),
        pcrValues,
      }))(),
    (async () => checkCsrAsync(b64('csr', evidence.csr), spki, spkiKey))(),
  ]);
  for (const r of [certify, quote, csrChecked]) if (r.status === 'rejected') throw r.reason;

  const pcrs: Record<string, string> = {};
  for (const [k, v] of pcrValues) pcrs[String(k)] = v.toString('hex');
  return { sessionKey, spki, spkiHash: sha256Hex(spki), pcrs, claims };
}
