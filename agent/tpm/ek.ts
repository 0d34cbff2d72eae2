/**
 * Endorsement keys: where the TCG puts them and their certificates, and how to authorise them.
 * Pure functions; the TPM round trips live in ek-discovery.ts.
 */
import { X509Certificate, createHash } from 'node:crypto';
import { EdgeidError } from '../../protocol/errors/index.js';
import { TPMA_OBJECT, TPM_ALG, TPM_RH_ENDORSEMENT } from '../../protocol/tpm/constants.js';
import { digestSize, hashName, parsePublic, publicKeyObject, type TpmPublic } from '../../protocol/tpm/public.js';
import { ekTemplateEccP256, ekTemplateEccP384, ekTemplateRsa2048 } from '../../protocol/tpm/templates.js';

export type EkKind = 'rsa' | 'ecc';

/** An EK certificate slot of the TCG EK Credential Profile 2.x and, where we have it, its EK template. */
export interface EkCertificateSlot {
  nvIndex: number;
  kind: EkKind;
  label: string;
  template?: () => Buffer;
}

/**
 * Certificate NV indices in the order we try them. Low range L-1/L-2 first (most TPMs), then the
 * high range H-1..H-7. Templates: L-1, L-2, H-3 (swtpm's P-384 EK); for the others the EK must be
 * persistent (TPM vendors that use the high range also persist the EK).
 */
export const EK_CERTIFICATE_SLOTS: readonly EkCertificateSlot[] = [
  { nvIndex: 0x01c00002, kind: 'rsa', label: 'L-1 RSA 2048', template: ekTemplateRsa2048 },
  { nvIndex: 0x01c0000a, kind: 'ecc', label: 'L-2 ECC NIST P-256', template: ekTemplateEccP256 },
  { nvIndex: 0x01c00012, kind: 'rsa', label: 'H-1 RSA 2048' },
  { nvIndex: 0x01c00014, kind: 'ecc', label: 'H-2 ECC NIST P-256' },
  { nvIndex: 0x01c00016, kind: 'ecc', label: 'H-3 ECC NIST P-384', template: ekTemplateEccP384 },
  { nvIndex: 0x01c00018, kind: 'ecc', label: 'H-4 ECC NIST P-521' },
  { nvIndex: 0x01c0001c, kind: 'rsa', label: 'H-6 RSA 3072' },
  { nvIndex: 0x01c0001e, kind: 'rsa', label: 'H-7 RSA 4096' },
];

/** TCG "Provisioning Guidance": persistent EKs live in 0x81010000..0x810100FF. */
export const EK_PERSISTENT_FIRST = 0x81010000;
export const EK_PERSISTENT_LAST = 0x810100ff;

/** Template used when the TPM has neither an EK certificate nor a persistent EK of a kind. */
export function defaultEkTemplate(kind: EkKind): Buffer {
  return kind === 'rsa' ? ekTemplateRsa2048() : ekTemplateEccP256();
}

export function ekKindOf(pub: TpmPublic): EkKind | null {
  if (pub.type === TPM_ALG.RSA) return 'rsa';
  if (pub.type === TPM_ALG.ECC) return 'ecc';
  return null;
}

const EK_REQUIRED_ATTRIBUTES =
  TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt;

/** A persistent key that looks like an EK: a restricted decryption key (a storage key) that never leaves the TPM. */
export function looksLikeEk(pub: TpmPublic): boolean {
  return (pub.objectAttributes & EK_REQUIRED_ATTRIBUTES) === EK_REQUIRED_ATTRIBUTES && ekKindOf(pub) !== null;
}

/** True when the certificate's subject public key is the EK's public key. */
export function certificateMatchesEk(certificate: Buffer, ekPublic: Buffer): boolean {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certificate);
  } catch {
    return false;
  }
  return cert.publicKey.equals(publicKeyObject(parsePublic(ekPublic)));
}

/** EK certificates in NV are often padded; keep exactly the outer DER SEQUENCE. */
export function trimDer(bytes: Buffer): Buffer {
  if (bytes.length < 2 || bytes[0] !== 0x30) return bytes;
  const first = bytes[1]!;
  if (first < 0x80) return bytes.subarray(0, Math.min(bytes.length, 2 + first));
  const n = first & 0x7f;
  if (n === 0 || n > 4 || bytes.length < 2 + n) return bytes;
  let len = 0;
  for (let i = 0; i < n; i++) len = len * 256 + bytes[2 + i]!;
  return bytes.subarray(0, Math.min(bytes.length, 2 + n + len));
}

// ---- EK authorisation ----

const TPM_CC_PolicySecret = 0x151;
const TPM_CC_PolicyOR = 0x171;

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
}

/** PolicyA of the EK Credential Profile: TPM2_PolicySecret(TPM_RH_ENDORSEMENT) with an empty policyRef. */
export function policySecretEndorsementDigest(hashAlg: number): Buffer {
  const h = hashName(hashAlg);
  const updated = createHash(h)
    .update(Buffer.alloc(digestSize(hashAlg)))
    .update(u32(TPM_CC_PolicySecret))
    .update(u32(TPM_RH_ENDORSEMENT))
    .digest();
  return createHash(h).update(updated).digest();
}

/** TPM2_PolicyOR digest over `branches`, starting from the empty policy. */
export function policyOrDigest(hashAlg: number, branches: Buffer[]): Buffer {
  const h = createHash(hashName(hashAlg))
    .update(Buffer.alloc(digestSize(hashAlg)))
    .update(u32(TPM_CC_PolicyOR));
  for (const b of branches) h.update(b);
  return h.digest();
}

/**
 * PolicyC of the EK Credential Profile 2.x (B.6.4): PolicyAuthorizeNV on the EK policy indices
 * 0x01C07F01 (SHA-256), 0x01C07F02 (SHA-384), 0x01C07F03 (SHA-512). Published constants; the
 * high-range EK templates' authPolicy (PolicyB) is PolicyOR(PolicyA, PolicyC).
 */
const EK_POLICY_C: ReadonlyMap<number, Buffer> = new Map([
  [TPM_ALG.SHA256, Buffer.from('3767e2edd43ff45a3a7e1eaefcef78643dca964632e7aad82c673a30d8633fde', 'hex')],
  [TPM_ALG.SHA384, Buffer.from('d6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5b4947c2d73e63005eed2dc2b3593d165', 'hex')],
  [
    TPM_ALG.SHA512,
    Buffer.from(
      '589ee1e146544716e8deafe6db247b01b81e9f9c7dd16b814aa159138749105fba5388dd1dea702f35240c184933121e2c61b8f50d3ef91393a49a38c3f73fc8',
      'hex',
    ),
  ],
]);

/** How ActivateCredential authorises the EK: policyHashAlg 0 = its (empty) authValue, else a policy session. */
export interface EkAuthorization {
  policyHashAlg: number;
  /** PolicyOR branches to apply after PolicySecret (empty: PolicySecret alone). */
  orDigests: Buffer[];
}

/**
 * Works out the policy session that satisfies an EK's authPolicy:
 *  - PolicyA (low-range templates, e.g. the RSA EK at 0x81010001): PolicySecret(endorsement);
 *  - PolicyB (high-range templates, e.g. swtpm's P-384 EK at 0x81010016):
 *    PolicySecret(endorsement) then PolicyOR(PolicyA, PolicyC);
 *  - an empty policy with userWithAuth: the empty authValue.
 */
export function ekAuthorization(ek: TpmPublic): EkAuthorization {
  const alg = ek.nameAlg;
  const policyA = policySecretEndorsementDigest(alg);
  if (ek.authPolicy.equals(policyA)) return { policyHashAlg: alg, orDigests: [] };
  const policyC = EK_POLICY_C.get(alg);
  if (policyC && ek.authPolicy.equals(policyOrDigest(alg, [policyA, policyC]))) {
    return { policyHashAlg: alg, orDigests: [policyA, policyC] };
  }
  if (ek.authPolicy.length === 0 && ek.objectAttributes & TPMA_OBJECT.userWithAuth) return { policyHashAlg: 0, orDigests: [] };
  throw new EdgeidError(
    'tpm_ek_policy_unsupported',
    `EK authPolicy ${ek.authPolicy.toString('hex')} (nameAlg 0x${alg.toString(16)}) is neither PolicyA nor PolicyB of the TCG EK profile`,
  );
}
