import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { EdgeidError } from '../errors/index.js';
import { TpmReader, TpmWriter } from './buffer.js';
import { TPM_ALG, TPM_ECC_CURVE, TPM_LIMITS } from './constants.js';

/** A parsed TPMT_PUBLIC (ECC or RSA). */
export interface TpmPublic {
  /** TPM_ALG.ECC or TPM_ALG.RSA */
  type: number;
  nameAlg: number;
  objectAttributes: number;
  authPolicy: Buffer;
  symmetric: { alg: number; keyBits?: number; mode?: number };
  scheme: { alg: number; hashAlg?: number };
  ecc?: { curve: number; kdf: { alg: number; hashAlg?: number }; x: Buffer; y: Buffer };
  /** exponent 0 means the default 65537 */
  rsa?: { keyBits: number; exponent: number; modulus: Buffer };
  /** Exact TPMT_PUBLIC bytes as received (or as marshaled), used for the name. */
  tpmtPublic: Buffer;
}

export type HashName = 'sha1' | 'sha256' | 'sha384' | 'sha512';

const HASHES: ReadonlyMap<number, { name: HashName; size: number }> = new Map([
  [TPM_ALG.SHA1, { name: 'sha1', size: 20 }],
  [TPM_ALG.SHA256, { name: 'sha256', size: 32 }],
  [TPM_ALG.SHA384, { name: 'sha384', size: 48 }],
  [TPM_ALG.SHA512, { name: 'sha512', size: 64 }],
]);

function unsupported(what: string, alg: number): EdgeidError {
  return new EdgeidError('tpm_unsupported_algorithm', `unsupported ${what}: 0x${alg.toString(16).padStart(4, '0')}`, { what, alg });
}

/** node:crypto hash name of a TPM hash algorithm; other algorithms throw tpm_unsupported_algorithm. */
export function hashName(alg: number): HashName {
  const h = HASHES.get(alg);
  if (!h) throw unsupported('hash algorithm', alg);
  return h.name;
}

/** Digest size in bytes of a TPM hash algorithm; other algorithms throw tpm_unsupported_algorithm. */
export function digestSize(alg: number): number {
  const h = HASHES.get(alg);
  if (!h) throw unsupported('hash algorithm', alg);
  return h.size;
}

/** Byte length of one coordinate on a supported curve. */
export function curveSize(curve: number): number {
  switch (curve) {
    case TPM_ECC_CURVE.NIST_P256:
      return 32;
    case TPM_ECC_CURVE.NIST_P384:
      return 48;
    case TPM_ECC_CURVE.NIST_P521:
      return 66;
    default:
      throw unsupported('ECC curve', curve);
  }
}

const JWK_CURVES: ReadonlyMap<number, string> = new Map([
  [TPM_ECC_CURVE.NIST_P256, 'P-256'],
  [TPM_ECC_CURVE.NIST_P384, 'P-384'],
  [TPM_ECC_CURVE.NIST_P521, 'P-521'],
]);

const SYM_MODES: ReadonlySet<number> = new Set([TPM_ALG.CFB, TPM_ALG.CTR, TPM_ALG.OFB, TPM_ALG.CBC, TPM_ALG.ECB, TPM_ALG.NULL]);
const RSA_SCHEMES_WITH_HASH: ReadonlySet<number> = new Set([TPM_ALG.RSASSA, TPM_ALG.RSAPSS, TPM_ALG.OAEP]);
const ECC_SCHEMES_WITH_HASH: ReadonlySet<number> = new Set([TPM_ALG.ECDSA, TPM_ALG.ECDH, TPM_ALG.ECSCHNORR, TPM_ALG.SM2, TPM_ALG.ECMQV]);
const KDFS: ReadonlySet<number> = new Set([TPM_ALG.MGF1, TPM_ALG.KDF1_SP800_56A, TPM_ALG.KDF2, TPM_ALG.KDF1_SP800_108]);

function readHashAlg(r: TpmReader, what: string): number {
  const alg = r.u16(what);
  hashName(alg); // throws tpm_unsupported_algorithm for anything else
  return alg;
}

function readSymmetric(r: TpmReader): TpmPublic['symmetric'] {
  const alg = r.u16('symmetric algorithm');
  if (alg === TPM_ALG.NULL) return { alg };
  if (alg !== TPM_ALG.AES) throw unsupported('symmetric algorithm', alg);
  const keyBits = r.u16('symmetric key bits');
  if (keyBits !== 128 && keyBits !== 192 && keyBits !== 256) throw unsupported('AES key size', keyBits);
  const mode = r.u16('symmetric mode');
  if (!SYM_MODES.has(mode)) throw unsupported('symmetric mode', mode);
  return { alg, keyBits, mode };
}

function readScheme(r: TpmReader, type: number): TpmPublic['scheme'] {
  const alg = r.u16('scheme');
  if (alg === TPM_ALG.NULL) return { alg };
  if (type === TPM_ALG.RSA) {
    if (alg === TPM_ALG.RSAES) return { alg };
    if (RSA_SCHEMES_WITH_HASH.has(alg)) return { alg, hashAlg: readHashAlg(r, 'scheme hash') };
  } else if (ECC_SCHEMES_WITH_HASH.has(alg)) {
    return { alg, hashAlg: readHashAlg(r, 'scheme hash') };
  }
  throw unsupported('signing/decryption scheme', alg);
}

function readKdf(r: TpmReader): { alg: number; hashAlg?: number } {
  const alg = r.u16('kdf');
  if (alg === TPM_ALG.NULL) return { alg };
  if (!KDFS.has(alg)) throw unsupported('key derivation function', alg);
  return { alg, hashAlg: readHashAlg(r, 'kdf hash') };
}

/** Parses a TPMT_PUBLIC (no size prefix); the whole input must be consumed. */
export function parseTpmtPublic(bytes: Uint8Array): TpmPublic {
  const r = new TpmReader(bytes);
  const type = r.u16('public type');
  if (type !== TPM_ALG.RSA && type !== TPM_ALG.ECC) throw unsupported('public key type', type);
  const nameAlg = readHashAlg(r, 'nameAlg');
  const objectAttributes = r.u32('objectAttributes');
  const authPolicy = r.tpm2b(TPM_LIMITS.MAX_DIGEST, 'authPolicy');
  if (authPolicy.length !== 0 && authPolicy.length !== digestSize(nameAlg)) {
    throw new EdgeidError('tpm_malformed', `authPolicy of ${authPolicy.length} bytes does not fit nameAlg`);
  }
  const symmetric = readSymmetric(r);
  const scheme = readScheme(r, type);
  let pub: TpmPublic;
  if (type === TPM_ALG.RSA) {
    const keyBits = r.u16('RSA key bits');
    if (keyBits !== 1024 && keyBits !== 2048 && keyBits !== 3072 && keyBits !== 4096) throw unsupported('RSA key size', keyBits);
    const exponent = r.u32('RSA exponent');
    const modulus = r.tpm2b(TPM_LIMITS.MAX_RSA_KEY_BYTES, 'RSA modulus');
    pub = {
      type,
      nameAlg,
      objectAttributes,
      authPolicy,
      symmetric,
      scheme,
      rsa: { keyBits, exponent, modulus },
      tpmtPublic: Buffer.alloc(0),
    };
  } else {
    const curve = r.u16('ECC curve');
    curveSize(curve);
    const kdf = readKdf(r);
    const x = r.tpm2b(TPM_LIMITS.MAX_ECC_KEY_BYTES, 'ECC x');
    const y = r.tpm2b(TPM_LIMITS.MAX_ECC_KEY_BYTES, 'ECC y');
    pub = { type, nameAlg, objectAttributes, authPolicy, symmetric, scheme, ecc: { curve, kdf, x, y }, tpmtPublic: Buffer.alloc(0) };
  }
  r.end('TPMT_PUBLIC');
  pub.tpmtPublic = Buffer.from(bytes);
  return pub;
}

/** Parses a marshaled TPM2B_PUBLIC (with its size prefix); the whole input must be consumed. */
export function parsePublic(tpm2bPublic: Uint8Array): TpmPublic {
  const r = new TpmReader(tpm2bPublic);
  const tpmt = r.tpm2b(TPM_LIMITS.MAX_PUBLIC, 'TPM2B_PUBLIC');
  r.end('TPM2B_PUBLIC');
  if (tpmt.length === 0) throw new EdgeidError('tpm_malformed', 'empty TPM2B_PUBLIC');
  return parseTpmtPublic(tpmt);
}

/** Marshals a TPMT_PUBLIC (no size prefix). */
export function marshalTpmtPublic(p: Omit<TpmPublic, 'tpmtPublic'>): Buffer {
  const w = new TpmWriter().u16(p.type).u16(p.nameAlg).u32(p.objectAttributes).tpm2b(p.authPolicy);
  w.u16(p.symmetric.alg);
  if (p.symmetric.alg !== TPM_ALG.NULL) w.u16(p.symmetric.keyBits ?? 0).u16(p.symmetric.mode ?? TPM_ALG.NULL);
  w.u16(p.scheme.alg);
  if (p.scheme.hashAlg !== undefined && p.scheme.alg !== TPM_ALG.NULL) w.u16(p.scheme.hashAlg);
  if (p.type === TPM_ALG.RSA) {
    if (!p.rsa) throw new TypeError('RSA public without rsa parameters');
    w.u16(p.rsa.keyBits).u32(p.rsa.exponent).tpm2b(p.rsa.modulus);
  } else if (p.type === TPM_ALG.ECC) {
    if (!p.ecc) throw new TypeError('ECC public without ecc parameters');
    w.u16(p.ecc.curve).u16(p.ecc.kdf.alg);
    if (p.ecc.kdf.alg !== TPM_ALG.NULL) w.u16(p.ecc.kdf.hashAlg ?? TPM_ALG.NULL);
    w.tpm2b(p.ecc.x).tpm2b(p.ecc.y);
  } else {
    throw unsupported('public key type', p.type);
  }
  return w.toBuffer();
}

/** Marshals a TPM2B_PUBLIC (with its size prefix). */
export function marshalPublic(p: Omit<TpmPublic, 'tpmtPublic'>): Buffer {
  return new TpmWriter().tpm2b(marshalTpmtPublic(p)).toBuffer();
}

/** TPM name of an object: nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC). */
export function objectName(p: TpmPublic): Buffer {
  const alg = Buffer.alloc(2);
  alg.writeUInt16BE(p.nameAlg);
  return Buffer.concat([alg, createHash(hashName(p.nameAlg)).update(p.tpmtPublic).digest()]);
}

function leftPad(b: Buffer, size: number, what: string): Buffer {
  if (b.length > size) throw new EdgeidError('tpm_malformed', `${what} of ${b.length} bytes is longer than the curve allows`);
  return b.length === size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}

/** The public key of an ECC (P-256, P-384, P-521) or RSA TPM object as a node KeyObject. */
export function publicKeyObject(p: TpmPublic): KeyObject {
  return importPublic(p, true);
}

function importPublic(p: TpmPublic, cache: boolean): KeyObject {
  let jwk: { kty: string; crv?: string; x?: string; y?: string; n?: string; e?: string };
  if (p.type === TPM_ALG.ECC && p.ecc) {
    const crv = JWK_CURVES.get(p.ecc.curve);
    if (!crv) throw unsupported('ECC curve', p.ecc.curve);
    const size = curveSize(p.ecc.curve);
    jwk = {
      kty: 'EC',
      crv,
      x: leftPad(p.ecc.x, size, 'ECC x').toString('base64url'),
      y: leftPad(p.ecc.y, size, 'ECC y').toString('base64url'),
    };
  } else if (p.type === TPM_ALG.RSA && p.rsa) {
    if (p.rsa.modulus.length !== p.rsa.keyBits / 8) {
      throw new EdgeidError('tpm_malformed', `RSA modulus of ${p.rsa.modulus.length} bytes for a ${p.rsa.keyBits}-bit key`);
    }
    const exponent = p.rsa.exponent === 0 ? 65537 : p.rsa.exponent;
    const e = Buffer.alloc(4);
    e.writeUInt32BE(exponent);
    jwk = { kty: 'RSA', n: p.rsa.modulus.toString('base64url'), e: e.subarray(e.findIndex((b) => b !== 0)).toString('base64url') };
  } else {
    throw unsupported('public key type', p.type);
  }
  // Keyed by the key material itself, so a cached entry can only ever be the same key.
  const cacheKey = JSON.stringify(jwk);
  const cached = cache ? keyCache.get(cacheKey) : undefined;
  if (cached) {
    // least recently used first: a hit moves to the end
    keyCache.delete(cacheKey);
    keyCache.set(cacheKey, cached);
    return cached;
  }
  let key: KeyObject;
  try {
    key = createPublicKey({ key: jwk, format: 'jwk' });
  } catch (err) {
    // e.g. a point that is not on the curve, or an even RSA exponent
    throw new EdgeidError('tpm_malformed', `not a valid public key: ${(err as Error).message}`);
  }
  if (cache) {
    if (keyCache.size >= keyCacheSize) keyCache.delete(keyCache.keys().next().value!);
    keyCache.set(cacheKey, key);
  }
  return key;
}

/**
 * Keys that are used again (a device's AK, on every renewal; an EK) are kept as KeyObjects:
 * importing one costs ~70 µs, and a quote and a certify each need the AK. Least recently used
 * goes first. One entry holds ~3 KB of native memory (measured on Node 20 / OpenSSL 3), so the
 * default of 16,384 (~48 MB at most) covers a fleet of that size renewing in turn; a fleet larger
 * than the cache costs one import per renewal (setKeyCacheSize to change it).
 */
let keyCacheSize = 16_384;
const keyCache = new Map<string, KeyObject>();

/** Sets how many imported public keys are kept (at least 16); drops the oldest beyond it. */
export function setKeyCacheSize(n: number): void {
  keyCacheSize = Math.max(16, Math.floor(n));
  while (keyCache.size > keyCacheSize) keyCache.delete(keyCache.keys().next().value!);
}

/** The public key as DER SubjectPublicKeyInfo. */
export function publicKeySpkiDer(p: TpmPublic): Buffer {
  return publicKeySpki(p).der;
}

/**
 * SubjectPublicKeyInfo prefixes of the named curves (RFC 5480 §2: id-ecPublicKey with the curve's
 * OID as parameters, then the BIT STRING of the uncompressed point, SEC 1 §2.3.3), up to the
 * point's 0x04 byte. OpenSSL exports exactly these bytes; test/unit/spki-template.test.ts checks.
 */
const EC_SPKI_PREFIX: ReadonlyMap<number, Buffer> = new Map([
  [TPM_ECC_CURVE.NIST_P256, Buffer.from('3059301306072a8648ce3d020106082a8648ce3d03010703420004', 'hex')],
  [TPM_ECC_CURVE.NIST_P384, Buffer.from('3076301006072a8648ce3d020106052b81040022036200' + '04', 'hex')],
]);

/**
 * The public key as DER SubjectPublicKeyInfo and as a KeyObject, imported once (the import
 * checks that the point is on the curve). P-256 and P-384 points are spliced into a fixed
 * prefix instead of going through a JWK import and a DER export; other keys take that path.
 * Not cached: this is mostly a fresh session key, used once, that would push an AK out.
 */
export function publicKeySpki(p: TpmPublic): { der: Buffer; key: KeyObject } {
  const prefix = p.type === TPM_ALG.ECC && p.ecc ? EC_SPKI_PREFIX.get(p.ecc.curve) : undefined;
  if (!prefix || !p.ecc) {
    const key = importPublic(p, false);
    return { der: key.export({ type: 'spki', format: 'der' }), key };
  }
  const size = curveSize(p.ecc.curve);
  const der = Buffer.concat([prefix, leftPad(p.ecc.x, size, 'ECC x'), leftPad(p.ecc.y, size, 'ECC y')]);
  let key: KeyObject;
  try {
    key = createPublicKey({ key: der, format: 'der', type: 'spki' });
  } catch (err) {
    // a point that is not on the curve
    throw new EdgeidError('tpm_malformed', `not a valid public key: ${(err as Error).message}`);
  }
  return { der, key };
}
