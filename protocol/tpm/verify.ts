import { timingSafeEqual } from 'node:crypto';
import { EdgeidError, type ErrorCode } from '../errors/index.js';
import { parseAttest, type TpmsAttest } from './attest.js';
import { TPMA_OBJECT, TPM_ALG, TPM_ECC_CURVE, TPM_GENERATED_VALUE, TPM_ST_ATTEST_CERTIFY, TPM_ST_ATTEST_QUOTE } from './constants.js';
import { pcrDigest } from './pcr.js';
import { digestSize, objectName, publicKeyObject, type TpmPublic } from './public.js';
import { parseSignature, verifyTpmSignature, verifyTpmSignatureAsync } from './signature.js';

function fail(code: ErrorCode, message?: string, details?: Record<string, unknown>): never {
  throw new EdgeidError(code, message, details);
}

function sameBytes(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

function has(attributes: number, bit: number): boolean {
  return (attributes & bit) !== 0;
}

/**
 * Checks that a public area is an attestation key edgeid accepts:
 *  - attributes: restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin set; decrypt clear
 *    (a restricted signing key only signs digests the TPM computed itself, so it cannot be made
 *    to sign a forged TPMS_ATTEST)                                        → ak_attributes_invalid
 *  - algorithms: ECC NIST P-256, scheme ECDSA with SHA-256, nameAlg SHA-256 → ak_algorithm_invalid
 *  - the point is a valid P-256 public key                                 → tpm_malformed
 */
export function checkAkPublic(akPublic: TpmPublic): void {
  const a = akPublic.objectAttributes;
  const required = ['restricted', 'sign', 'fixedTPM', 'fixedParent', 'sensitiveDataOrigin'] as const;
  const missing = required.filter((name) => !has(a, TPMA_OBJECT[name]));
  if (missing.length > 0 || has(a, TPMA_OBJECT.decrypt)) {
    fail('ak_attributes_invalid', undefined, { missing, decrypt: has(a, TPMA_OBJECT.decrypt), objectAttributes: a });
  }
  if (
    akPublic.type !== TPM_ALG.ECC ||
    akPublic.ecc?.curve !== TPM_ECC_CURVE.NIST_P256 ||
    akPublic.scheme.alg !== TPM_ALG.ECDSA ||
    akPublic.scheme.hashAlg !== TPM_ALG.SHA256 ||
    akPublic.nameAlg !== TPM_ALG.SHA256
  ) {
    fail('ak_algorithm_invalid');
  }
  publicKeyObject(akPublic);
}

export interface VerifyQuoteParams {
  /** The attestation key that signed the quote (bound to the EK at enrollment). */
  akPublic: TpmPublic;
  /** TPMS_ATTEST bytes (tpm2_quote -m). */
  attest: Buffer;
  /** TPMT_SIGNATURE bytes (tpm2_quote -s). */
  signature: Buffer;
  /** The qualifying data the verifier expects in extraData (derived from its nonce). */
  qualifyingData: Buffer;
  /** The reported PCR values of the bank `hashAlg`, by PCR index. */
  pcrValues: Map<number, Buffer>;
  /** The PCR bank the values come from; default SHA-256. */
  hashAlg?: number;
}

/**
 * Verifies a TPM2_Quote against the attestation key and the PCR values the device reported.
 * It checks, in this order, each failure with its own code:
 *  1. the AK is a restricted ECDSA-SHA256 P-256 signing key (checkAkPublic)
 *                                               → ak_attributes_invalid / ak_algorithm_invalid
 *  2. attest and signature parse (whole input)  → tpm_malformed / tpm_unsupported_algorithm
 *  3. magic is TPM_GENERATED_VALUE              → quote_bad_magic
 *     (the TPM signs a structure starting with this value only if it built it itself)
 *  4. type is TPM_ST_ATTEST_QUOTE               → quote_wrong_type
 *  5. signature scheme and hash are the AK's    → quote_unsupported_signature
 *  6. the signature verifies with the AK        → quote_bad_signature
 *  7. extraData equals qualifyingData           → quote_nonce_mismatch (freshness)
 *  8. the quoted selection is exactly one bank, `hashAlg`, with exactly the reported PCR indices
 *                                               → quote_pcr_selection_mismatch
 *  9. every reported value has the bank's digest size → tpm_malformed
 * 10. pcrDigest equals H_sigHash(values in ascending PCR order)
 *                                               → quote_pcr_digest_mismatch
 * Returns the parsed attest and the quoted PCR indices. Policy on the PCR values themselves
 * (baseline, golden values) is the caller's.
 */
export function verifyQuote(params: VerifyQuoteParams): { attest: TpmsAttest; pcrs: number[] } {
  return quoteChecks(params);
}

/** verifyQuote with the signature checked in the thread pool (verifyTpmSignatureAsync); same checks, same order, same codes. */
export async function verifyQuoteAsync(params: VerifyQuoteParams): Promise<{ attest: TpmsAttest; pcrs: number[] }> {
  return quoteChecks(params, await signatureOutcome(params.akPublic, params.attest, params.signature));
}

/**
 * The signature's outcome, computed ahead of the checks that come before it (which still run
 * first: `undefined` when the signature does not parse, so the checks report that in their order).
 */
async function signatureOutcome(akPublic: TpmPublic, attest: Buffer, signature: Buffer): Promise<boolean | undefined> {
  let sig;
  try {
    sig = parseSignature(signature);
  } catch {
    return undefined;
  }
  try {
    return await verifyTpmSignatureAsync(akPublic, attest, sig);
  } catch {
    // e.g. a key the checks refuse first: they run, and throw, in their order
    return undefined;
  }
}

function quoteChecks(params: VerifyQuoteParams, signatureOk?: boolean): { attest: TpmsAttest; pcrs: number[] } {
  const { akPublic, qualifyingData, pcrValues } = params;
  const bank = params.hashAlg ?? TPM_ALG.SHA256;

  checkAkPublic(akPublic);

  const attest = parseAttest(params.attest);
  const signature = parseSignature(params.signature);

  if (attest.magic !== TPM_GENERATED_VALUE) fail('quote_bad_magic', undefined, { magic: attest.magic });

  if (attest.type !== TPM_ST_ATTEST_QUOTE || !attest.quote) fail('quote_wrong_type', undefined, { type: attest.type });

  if (signature.sigAlg !== akPublic.scheme.alg || signature.hashAlg !== akPublic.scheme.hashAlg) {
    fail('quote_unsupported_signature', undefined, { sigAlg: signature.sigAlg, hashAlg: signature.hashAlg });
  }

  if (!(signatureOk ?? verifyTpmSignature(akPublic, params.attest, signature))) fail('quote_bad_signature');

  if (!sameBytes(attest.extraData, qualifyingData)) fail('quote_nonce_mismatch');

  const reported = [...pcrValues.keys()].sort((x, y) => x - y);
  const selection = attest.quote.pcrSelect;
  const quoted = selection.length === 1 && selection[0]!.hashAlg === bank ? selection[0]!.pcrs : null;
  if (!quoted || quoted.length !== reported.length || quoted.some((pcr, i) => pcr !== reported[i])) {
    fail('quote_pcr_selection_mismatch', undefined, { quoted: selection, reported });
  }

  const size = digestSize(bank);
  const values = quoted.map((pcr) => pcrValues.get(pcr)!);
  values.forEach((v, i) => {
    if (v.length !== size) fail('tpm_malformed', `PCR ${quoted[i]} value has ${v.length} bytes, the bank's digests have ${size}`);
  });
  if (!sameBytes(attest.quote.pcrDigest, pcrDigest(signature.hashAlg, values))) fail('quote_pcr_digest_mismatch');

  return { attest, pcrs: quoted };
}

/** Attribute requirements for a certified key; unset fields take the defaults in verifyCertify. */
export interface CertifyRequirements {
  fixedTPM?: boolean;
  fixedParent?: boolean;
  sensitiveDataOrigin?: boolean;
  /** false: must NOT be restricted; true: must be restricted. */
  restricted?: boolean;
  sign?: boolean;
}

export interface VerifyCertifyParams {
  akPublic: TpmPublic;
  /** TPMS_ATTEST bytes from TPM2_Certify. */
  attest: Buffer;
  /** TPMT_SIGNATURE bytes from TPM2_Certify. */
  signature: Buffer;
  /** The public area of the key the device says was certified. */
  certifiedPublic: TpmPublic;
  qualifyingData: Buffer;
  require?: CertifyRequirements;
}

const DEFAULT_CERTIFY_REQUIREMENTS: Required<CertifyRequirements> = {
  fixedTPM: true,
  fixedParent: true,
  sensitiveDataOrigin: true,
  restricted: false,
  sign: true,
};

/**
 * Verifies a TPM2_Certify of a key by the attestation key: the key lives in the same TPM as the
 * AK and has the attributes we require. Checks, in this order, each failure with its own code:
 *  1. the AK is a restricted ECDSA-SHA256 P-256 signing key (checkAkPublic)
 *                                               → ak_attributes_invalid / ak_algorithm_invalid
 *  2. attest and signature parse (whole input)  → tpm_malformed / tpm_unsupported_algorithm
 *  3. magic is TPM_GENERATED_VALUE              → certify_bad_magic
 *  4. type is TPM_ST_ATTEST_CERTIFY             → certify_wrong_type
 *  5. signature scheme and hash are the AK's    → certify_unsupported_signature
 *  6. the signature verifies with the AK        → certify_bad_signature
 *  7. extraData equals qualifyingData           → certify_nonce_mismatch
 *  8. the certified name equals objectName(certifiedPublic), so the attributes below are the
 *     ones the TPM holds                        → certify_name_mismatch
 *  9. attributes (defaults in brackets):
 *     fixedTPM [required]                       → certify_not_fixed_tpm
 *     fixedParent [required]                    → certify_not_fixed_parent
 *     sensitiveDataOrigin [required]            → certify_not_sensitive_data_origin
 *     restricted [must be clear]                → certify_key_restricted / certify_key_not_restricted
 *     sign [required]                           → certify_not_signing_key
 */
export function verifyCertify(params: VerifyCertifyParams): { attest: TpmsAttest; certifiedName: Buffer } {
  return certifyChecks(params);
}

/** verifyCertify with the signature checked in the thread pool (verifyTpmSignatureAsync); same checks, same order, same codes. */
export async function verifyCertifyAsync(params: VerifyCertifyParams): Promise<{ attest: TpmsAttest; certifiedName: Buffer }> {
  return certifyChecks(params, await signatureOutcome(params.akPublic, params.attest, params.signature));
}

function certifyChecks(params: VerifyCertifyParams, signatureOk?: boolean): { attest: TpmsAttest; certifiedName: Buffer } {
  const { akPublic, certifiedPublic, qualifyingData } = params;
  const require = { ...DEFAULT_CERTIFY_REQUIREMENTS, ...params.require };

  checkAkPublic(akPublic);

  const attest = parseAttest(params.attest);
  const signature = parseSignature(params.signature);

  if (attest.magic !== TPM_GENERATED_VALUE) fail('certify_bad_magic', undefined, { magic: attest.magic });

  if (attest.type !== TPM_ST_ATTEST_CERTIFY || !attest.certify) fail('certify_wrong_type', undefined, { type: attest.type });

  if (signature.sigAlg !== akPublic.scheme.alg || signature.hashAlg !== akPublic.scheme.hashAlg) {
    fail('certify_unsupported_signature', undefined, { sigAlg: signature.sigAlg, hashAlg: signature.hashAlg });
  }

  if (!(signatureOk ?? verifyTpmSignature(akPublic, params.attest, signature))) fail('certify_bad_signature');

  if (!sameBytes(attest.extraData, qualifyingData)) fail('certify_nonce_mismatch');

  const certifiedName = objectName(certifiedPublic);
  if (!sameBytes(attest.certify.name, certifiedName)) fail('certify_name_mismatch');

  const a = certifiedPublic.objectAttributes;
  if (require.fixedTPM && !has(a, TPMA_OBJECT.fixedTPM)) fail('certify_not_fixed_tpm');
  if (require.fixedParent && !has(a, TPMA_OBJECT.fixedParent)) fail('certify_not_fixed_parent');
  if (require.sensitiveDataOrigin && !has(a, TPMA_OBJECT.sensitiveDataOrigin)) fail('certify_not_sensitive_data_origin');
  if (require.restricted === false && has(a, TPMA_OBJECT.restricted)) fail('certify_key_restricted');
  if (require.restricted === true && !has(a, TPMA_OBJECT.restricted)) fail('certify_key_not_restricted');
  if (require.sign && !has(a, TPMA_OBJECT.sign)) fail('certify_not_signing_key');

  return { attest, certifiedName };
}
