import { TPMA_OBJECT, TPM_ALG, TPM_ECC_CURVE } from './constants.js';
import { marshalPublic } from './public.js';

const A = TPMA_OBJECT;

/** TPM2_PolicySecret(TPM_RH_ENDORSEMENT) digest with SHA-256: the authPolicy of the TCG low-range EK templates. */
export const EK_POLICY_SHA256 = Buffer.from('837197674484B3F81A90CC8D46A5D724FD52D76E06520B64F2A1DA1B331469AA', 'hex');

/** TCG EK Credential Profile low-range EK attributes (0x000300B2). */
export const EK_ATTRIBUTES = A.fixedTPM | A.fixedParent | A.sensitiveDataOrigin | A.adminWithPolicy | A.restricted | A.decrypt;

/** Storage primary key attributes (0x00030472). */
export const SRK_ATTRIBUTES = A.fixedTPM | A.fixedParent | A.sensitiveDataOrigin | A.userWithAuth | A.noDA | A.restricted | A.decrypt;

/** Attestation key: restricted signing key that never leaves the TPM (0x00050072). */
export const AK_ATTRIBUTES = A.fixedTPM | A.fixedParent | A.sensitiveDataOrigin | A.userWithAuth | A.restricted | A.sign;

/** Session (TLS) key: unrestricted signing key that never leaves the TPM (0x00040072). */
export const SESSION_KEY_ATTRIBUTES = A.fixedTPM | A.fixedParent | A.sensitiveDataOrigin | A.userWithAuth | A.sign;

const AES_128_CFB = { alg: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB };
const NULL_SYM = { alg: TPM_ALG.NULL };
const NULL_SCHEME = { alg: TPM_ALG.NULL };
const NULL_KDF = { alg: TPM_ALG.NULL };

/**
 * TCG EK Credential Profile 2.x, template L-1: RSA 2048, SHA-256, AES-128-CFB, unique = 256 zero bytes.
 * CreatePrimary(TPM_RH_ENDORSEMENT) from these bytes reproduces the EK that a low-range RSA EK certificate (NV 0x01C00002) is for.
 */
export function ekTemplateRsa2048(): Buffer {
  return marshalPublic({
    type: TPM_ALG.RSA,
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: EK_ATTRIBUTES,
    authPolicy: Buffer.from(EK_POLICY_SHA256),
    symmetric: AES_128_CFB,
    scheme: NULL_SCHEME,
    rsa: { keyBits: 2048, exponent: 0, modulus: Buffer.alloc(256) },
  });
}

/** TCG EK Credential Profile 2.x, template L-2: ECC NIST P-256, SHA-256, AES-128-CFB, unique = 32 + 32 zero bytes. */
export function ekTemplateEccP256(): Buffer {
  return marshalPublic({
    type: TPM_ALG.ECC,
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: EK_ATTRIBUTES,
    authPolicy: Buffer.from(EK_POLICY_SHA256),
    symmetric: AES_128_CFB,
    scheme: NULL_SCHEME,
    ecc: { curve: TPM_ECC_CURVE.NIST_P256, kdf: NULL_KDF, x: Buffer.alloc(32), y: Buffer.alloc(32) },
  });
}

/**
 * authPolicy of the TCG high-range SHA-384 EK templates, taken from the EK swtpm_setup persists at
 * 0x81010016. Not a plain PolicySecret (that would be 8bbf2266…): a PolicyOR over
 * PolicySecret(TPM_RH_ENDORSEMENT) and a further branch; agent/tpm works out how to satisfy it.
 */
export const EK_POLICY_SHA384 = Buffer.from(
  'B26E7D28D11A50BC53D882BCF5FD3A1A074148BB35D3B4E4CB1C0AD9BDE419CACB47BA09699646150F9FC000F3F80E12',
  'hex',
);

/** High-range EK attributes: the low-range ones plus userWithAuth (0x000300F2). */
export const EK_HIGH_RANGE_ATTRIBUTES = EK_ATTRIBUTES | A.userWithAuth;

/**
 * TCG EK Credential Profile 2.x, template H-3: ECC NIST P-384, SHA-384, AES-256-CFB, empty unique.
 * This is the ECC EK that swtpm_setup persists at 0x81010016 (certificate in NV 0x01C00016); checked
 * byte for byte against it (EK_POLICY_SHA384 above).
 */
export function ekTemplateEccP384(): Buffer {
  return marshalPublic({
    type: TPM_ALG.ECC,
    nameAlg: TPM_ALG.SHA384,
    objectAttributes: EK_HIGH_RANGE_ATTRIBUTES,
    authPolicy: Buffer.from(EK_POLICY_SHA384),
    symmetric: { alg: TPM_ALG.AES, keyBits: 256, mode: TPM_ALG.CFB },
    scheme: NULL_SCHEME,
    ecc: { curve: TPM_ECC_CURVE.NIST_P384, kdf: NULL_KDF, x: Buffer.alloc(0), y: Buffer.alloc(0) },
  });
}

/**
 * ECC P-256 storage primary (owner hierarchy), deterministic: same TPM, same template, same key.
 * unique = 32 + 32 zero bytes as in the TCG Provisioning Guidance SRK template.
 */
export function srkTemplate(): Buffer {
  return marshalPublic({
    type: TPM_ALG.ECC,
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: SRK_ATTRIBUTES,
    authPolicy: Buffer.alloc(0),
    symmetric: AES_128_CFB,
    scheme: NULL_SCHEME,
    ecc: { curve: TPM_ECC_CURVE.NIST_P256, kdf: NULL_KDF, x: Buffer.alloc(32), y: Buffer.alloc(32) },
  });
}

/** Attestation key: restricted ECDSA-SHA256 P-256 signing key, created under the SRK. */
export function akTemplate(): Buffer {
  return marshalPublic({
    type: TPM_ALG.ECC,
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: AK_ATTRIBUTES,
    authPolicy: Buffer.alloc(0),
    symmetric: NULL_SYM,
    scheme: { alg: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 },
    ecc: { curve: TPM_ECC_CURVE.NIST_P256, kdf: NULL_KDF, x: Buffer.alloc(0), y: Buffer.alloc(0) },
  });
}

/**
 * Session (TLS) key: unrestricted ECC P-256 signing key under the SRK. Scheme NULL so each
 * TPM2_Sign call picks ECDSA with SHA-256/384/512 as the TLS handshake needs.
 */
export function sessionKeyTemplate(): Buffer {
  return marshalPublic({
    type: TPM_ALG.ECC,
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: SESSION_KEY_ATTRIBUTES,
    authPolicy: Buffer.alloc(0),
    symmetric: NULL_SYM,
    scheme: NULL_SCHEME,
    ecc: { curve: TPM_ECC_CURVE.NIST_P256, kdf: NULL_KDF, x: Buffer.alloc(0), y: Buffer.alloc(0) },
  });
}
