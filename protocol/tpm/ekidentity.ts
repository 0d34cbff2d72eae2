/**
 * The identity of an endorsement key, independent of how its public area was encoded.
 *
 * A TPMT_PUBLIC admits several byte encodings of the same key (TPM 2.0 Part 2 §12.2.3.5: an
 * RSA exponent of 0 means 2^16+1, so 0 and 65537 are the same key; ECC coordinates may be sent
 * without their leading zero bytes; attribute bits, authPolicy and scheme do not change the key).
 * An identity computed over the bytes a client sends can therefore be changed by the client. The
 * EK identity used for every comparison (live device on this TPM, token bound to an EK,
 * supplier manifest) is SHA-256 over the DER SubjectPublicKeyInfo of the key (RFC 5280 §4.1.2.7)
 * as node:crypto exports it, which has one encoding per key. The public area itself must match
 * a TCG EK template (TCG EK Credential Profile for TPM Family 2.0, Level 0, Version 2.5, §2.1.5:
 * templates L-1, L-2, H-1, H-2, H-3, H-6, H-7) or it is refused with ek_template_mismatch.
 */
import { createHash } from 'node:crypto';
import { EdgeidError } from '../errors/index.js';
import { TPM_ALG, TPM_ECC_CURVE } from './constants.js';
import { curveSize, marshalTpmtPublic, publicKeySpkiDer, type TpmPublic } from './public.js';
import { EK_ATTRIBUTES, EK_HIGH_RANGE_ATTRIBUTES, EK_POLICY_SHA256, EK_POLICY_SHA384 } from './templates.js';

/** PolicyOR(PolicySecret(TPM_RH_ENDORSEMENT), PolicyAuthorizeNV(0x01C07F01)), SHA-256: authPolicy of H-1 and H-2 (EK Credential Profile, Annex B.6.5). */
export const EK_POLICY_HIGH_SHA256 = Buffer.from('CA3D0A99A2B93906F7A3342414EFCFB3A385D44CD1FD459089D19B5071C0B7A0', 'hex');

interface EkTemplateSpec {
  name: string;
  type: number;
  nameAlg: number;
  attributes: number;
  policy: Buffer;
  aesBits: number;
  rsaBits?: number;
  curve?: number;
}

const SHA256 = TPM_ALG.SHA256;
const SHA384 = TPM_ALG.SHA384;

/** The TCG EK templates edgeid accepts (EK Credential Profile 2.5, §2.1.5.1 low range, §2.1.5.2 high range). */
export const EK_TEMPLATES: readonly EkTemplateSpec[] = [
  { name: 'L-1', type: TPM_ALG.RSA, nameAlg: SHA256, attributes: EK_ATTRIBUTES, policy: EK_POLICY_SHA256, aesBits: 128, rsaBits: 2048 },
  {
    name: 'L-2',
    type: TPM_ALG.ECC,
    nameAlg: SHA256,
    attributes: EK_ATTRIBUTES,
    policy: EK_POLICY_SHA256,
    aesBits: 128,
    curve: TPM_ECC_CURVE.NIST_P256,
  },
  {
    name: 'H-1',
    type: TPM_ALG.RSA,
    nameAlg: SHA256,
    attributes: EK_HIGH_RANGE_ATTRIBUTES,
    policy: EK_POLICY_HIGH_SHA256,
    aesBits: 128,
    rsaBits: 2048,
  },
  {
    name: 'H-2',
    type: TPM_ALG.ECC,
    nameAlg: SHA256,
    attributes: EK_HIGH_RANGE_ATTRIBUTES,
    policy: EK_POLICY_HIGH_SHA256,
    aesBits: 128,
    curve: TPM_ECC_CURVE.NIST_P256,
  },
  {
    name: 'H-3',
    type: TPM_ALG.ECC,
    nameAlg: SHA384,
    attributes: EK_HIGH_RANGE_ATTRIBUTES,
    policy: EK_POLICY_SHA384,
    aesBits: 256,
    curve: TPM_ECC_CURVE.NIST_P384,
  },
  {
    name: 'H-6',
    type: TPM_ALG.RSA,
    nameAlg: SHA384,
    attributes: EK_HIGH_RANGE_ATTRIBUTES,
    policy: EK_POLICY_SHA384,
    aesBits: 256,
    rsaBits: 3072,
  },
  {
    name: 'H-7',
    type: TPM_ALG.RSA,
    nameAlg: SHA384,
    attributes: EK_HIGH_RANGE_ATTRIBUTES,
    policy: EK_POLICY_SHA384,
    aesBits: 256,
    rsaBits: 4096,
  },
];

function mismatch(why: string): never {
  throw new EdgeidError('ek_template_mismatch', `the EK public area matches no TCG EK template: ${why}`, { why });
}

function templateFor(ek: TpmPublic): EkTemplateSpec {
  const candidates = EK_TEMPLATES.filter(
    (t) =>
      t.type === ek.type &&
      (t.rsaBits === undefined || t.rsaBits === ek.rsa?.keyBits) &&
      (t.curve === undefined || t.curve === ek.ecc?.curve),
  );
  if (candidates.length === 0)
    mismatch(ek.type === TPM_ALG.RSA ? `RSA-${ek.rsa?.keyBits}` : `ECC curve 0x${(ek.ecc?.curve ?? 0).toString(16)}`);
  const t = candidates.find((c) => c.nameAlg === ek.nameAlg && c.attributes === ek.objectAttributes && c.policy.equals(ek.authPolicy));
  if (!t) {
    mismatch(
      `nameAlg 0x${ek.nameAlg.toString(16)}, objectAttributes 0x${ek.objectAttributes.toString(16).padStart(8, '0')} and authPolicy ` +
        `${ek.authPolicy.toString('hex') || '(empty)'} are those of none of ${candidates.map((c) => c.name).join(', ')}`,
    );
  }
  return t;
}

/**
 * Checks the public area against the TCG EK templates and returns it in canonical form: the
 * template's fields with the key filled in, RSA exponent 0 (the templates' value; 65537 is the
 * same key and is normalized to 0), ECC coordinates at full curve size. A TPM reports its EK in
 * exactly this form, so the canonical TPMT_PUBLIC is the one MakeCredential's name must use.
 */
export function canonicalEkPublic(ek: TpmPublic): { template: string; public: TpmPublic } {
  const t = templateFor(ek);
  if (ek.symmetric.alg !== TPM_ALG.AES || ek.symmetric.keyBits !== t.aesBits || ek.symmetric.mode !== TPM_ALG.CFB) {
    mismatch(`template ${t.name} requires AES-${t.aesBits}-CFB as the symmetric algorithm`);
  }
  if (ek.scheme.alg !== TPM_ALG.NULL) mismatch(`template ${t.name} requires scheme TPM_ALG_NULL`);
  let canonical: Omit<TpmPublic, 'tpmtPublic'>;
  const base = {
    type: ek.type,
    nameAlg: t.nameAlg,
    objectAttributes: t.attributes,
    authPolicy: Buffer.from(t.policy),
    symmetric: { alg: TPM_ALG.AES, keyBits: t.aesBits, mode: TPM_ALG.CFB },
    scheme: { alg: TPM_ALG.NULL },
  };
  if (ek.type === TPM_ALG.RSA && ek.rsa) {
    if (ek.rsa.exponent !== 0 && ek.rsa.exponent !== 65537)
      mismatch(`template ${t.name} requires the default exponent (0 or 65537), not ${ek.rsa.exponent}`);
    if (ek.rsa.modulus.length !== ek.rsa.keyBits / 8)
      mismatch(`an RSA-${ek.rsa.keyBits} modulus has ${ek.rsa.keyBits / 8} bytes, not ${ek.rsa.modulus.length}`);
    canonical = { ...base, rsa: { keyBits: ek.rsa.keyBits, exponent: 0, modulus: Buffer.from(ek.rsa.modulus) } };
  } else if (ek.type === TPM_ALG.ECC && ek.ecc) {
    if (ek.ecc.kdf.alg !== TPM_ALG.NULL) mismatch(`template ${t.name} requires kdf TPM_ALG_NULL`);
    const size = curveSize(ek.ecc.curve);
    const pad = (b: Buffer, what: string): Buffer => {
      if (b.length > size) mismatch(`${what} has ${b.length} bytes, more than the curve's ${size}`);
      return Buffer.concat([Buffer.alloc(size - b.length), b]);
    };
    canonical = { ...base, ecc: { curve: ek.ecc.curve, kdf: { alg: TPM_ALG.NULL }, x: pad(ek.ecc.x, 'x'), y: pad(ek.ecc.y, 'y') } };
  } else {
    mismatch('not an RSA or ECC key');
  }
  const bytes = marshalTpmtPublic(canonical);
  return { template: t.name, public: { ...canonical, tpmtPublic: bytes } };
}

/** SHA-256 (hex) of the DER SubjectPublicKeyInfo of a key: its identity whatever the encoding. */
export function keyIdentity(key: TpmPublic): string {
  return createHash('sha256').update(publicKeySpkiDer(key)).digest('hex');
}

/**
 * The EK's template name, its canonical public area and its identity. Throws ek_template_mismatch
 * for a public area that fits no TCG EK template and tpm_malformed for a key that is not a valid
 * key (point not on the curve).
 */
export function ekIdentity(ek: TpmPublic): { id: string; template: string; canonical: TpmPublic } {
  const c = canonicalEkPublic(ek);
  return { id: keyIdentity(c.public), template: c.template, canonical: c.public };
}
