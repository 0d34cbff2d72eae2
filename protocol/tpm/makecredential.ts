/**
 * TPM2_MakeCredential in software (TPM 2.0 Part 1 §24 "Credential Protection", Part 3 §12.6), so the
 * server can bind a secret to "the key with this name, on the TPM that holds this EK" without a TPM.
 *
 *   seed            random, digest-size of the EK nameAlg, shared with the EK:
 *                     RSA: encryptedSecret = RSA-OAEP(EK, hash = EK nameAlg, label "IDENTITY\0", seed)
 *                     ECC: one-pass ECDH with an ephemeral key on the EK's curve, Z = x of d_e * Q_EK,
 *                          seed = KDFe(nameAlg, Z, "IDENTITY", x_ephemeral, x_EK, digestBits),
 *                          encryptedSecret = TPMS_ECC_POINT of the ephemeral public key
 *   symKey          = KDFa(nameAlg, seed, "STORAGE", objectName, null, EK symmetric keyBits)
 *   encIdentity     = AES-CFB(symKey, IV = 0, TPM2B_DIGEST(secret))
 *   hmacKey         = KDFa(nameAlg, seed, "INTEGRITY", null, null, digestBits)
 *   outerHMAC       = HMAC_nameAlg(hmacKey, encIdentity || objectName)
 *   credentialBlob  = TPM2B_ID_OBJECT(TPM2B_DIGEST(outerHMAC) || encIdentity)
 *
 * The EK's scheme and kdf fields are ignored, as the TPM ignores them here: the nameAlg rules.
 * Every primitive (OAEP, ECDH, AES-CFB, HMAC, hash, randomness) comes from node:crypto.
 */
import { constants, createCipheriv, createECDH, createHmac, publicEncrypt, randomBytes, type ECDH } from 'node:crypto';
import { EdgeidError } from '../errors/index.js';
import { TpmReader, TpmWriter } from './buffer.js';
import { TPM_ALG, TPM_ECC_CURVE, TPMA_OBJECT } from './constants.js';
import { kdfa, kdfe } from './kdf.js';
import { digestSize, hashName, publicKeyObject, type TpmPublic } from './public.js';

/** What TPM2_MakeCredential returns, marshaled with size prefixes (the contract's wire format). */
export interface TpmCredential {
  /** TPM2B_ID_OBJECT */
  credentialBlob: Buffer;
  /** TPM2B_ENCRYPTED_SECRET */
  encryptedSecret: Buffer;
}

/** The seed shared with the EK, and the seed as only the EK can recover it. */
export interface ProtectedSeed {
  seed: Buffer;
  /** The contents of TPM2B_ENCRYPTED_SECRET (no size prefix): OAEP ciphertext or TPMS_ECC_POINT. */
  encryptedSeed: Buffer;
}

const IDENTITY = 'IDENTITY';
const NAME_ALGS: ReadonlySet<number> = new Set([TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512]);
const CURVES: ReadonlyMap<number, { ecdh: string; size: number }> = new Map([
  [TPM_ECC_CURVE.NIST_P256, { ecdh: 'prime256v1', size: 32 }],
  [TPM_ECC_CURVE.NIST_P384, { ecdh: 'secp384r1', size: 48 }],
]);
const RSA_KEY_BITS: ReadonlySet<number> = new Set([2048, 3072, 4096]);

function unsupported(message: string, details?: Record<string, unknown>): EdgeidError {
  return new EdgeidError('credential_ek_unsupported', message, details);
}

/**
 * Checks that TPM2_ActivateCredential could work with this EK: a restricted decryption key of a
 * supported type, with AES-CFB as its symmetric cipher. Returns the AES key size in bits.
 */
function checkEk(ek: TpmPublic): number {
  if (ek.type !== TPM_ALG.RSA && ek.type !== TPM_ALG.ECC) {
    throw unsupported(`EK type 0x${ek.type.toString(16)} is neither RSA nor ECC`, { type: ek.type });
  }
  if (!NAME_ALGS.has(ek.nameAlg)) {
    throw unsupported(`EK nameAlg 0x${ek.nameAlg.toString(16)} is not SHA-256/384/512`, { nameAlg: ek.nameAlg });
  }
  const storage = TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt;
  if ((ek.objectAttributes & storage) !== storage || (ek.objectAttributes & TPMA_OBJECT.sign) !== 0) {
    throw new EdgeidError('credential_ek_not_storage_key', undefined, { objectAttributes: ek.objectAttributes });
  }
  const { alg, mode, keyBits } = ek.symmetric;
  if (alg !== TPM_ALG.AES || mode !== TPM_ALG.CFB || (keyBits !== 128 && keyBits !== 192 && keyBits !== 256)) {
    throw unsupported('EK symmetric cipher is not AES-CFB with a 128/192/256-bit key', { symmetric: ek.symmetric });
  }
  if (ek.type === TPM_ALG.RSA) {
    if (!ek.rsa || !RSA_KEY_BITS.has(ek.rsa.keyBits)) throw unsupported('EK RSA key size is not 2048/3072/4096 bits');
  } else if (!ek.ecc || !CURVES.has(ek.ecc.curve)) {
    throw unsupported('EK curve is not NIST P-256 or P-384', { curve: ek.ecc?.curve });
  }
  return keyBits;
}

/** An object name is nameAlg (2 bytes) || digest of that algorithm's size. */
function checkName(name: Uint8Array): void {
  const alg = name.length >= 2 ? ((name[0] ?? 0) << 8) | (name[1] ?? 0) : -1;
  if (!NAME_ALGS.has(alg) && alg !== TPM_ALG.SHA1) {
    throw new EdgeidError('credential_name_invalid', 'object name does not start with a SHA-1/256/384/512 algorithm id');
  }
  if (name.length !== 2 + digestSize(alg)) {
    throw new EdgeidError('credential_name_invalid', `object name of ${name.length} bytes does not match its algorithm`);
  }
}

function leftPad(b: Buffer, size: number): Buffer {
  if (b.length > size) throw new EdgeidError('tpm_malformed', `EK coordinate of ${b.length} bytes is longer than the curve allows`);
  return b.length === size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}

/** ECC seed by one-pass ECDH between `ephemeral` (a keyed node ECDH on the EK's curve) and the EK. */
function eccSeed(ek: TpmPublic, ephemeral: ECDH, size: number, label: string): ProtectedSeed {
  if (!ek.ecc) throw unsupported('ECC EK without ECC parameters');
  const ekPoint = Buffer.concat([Buffer.from([0x04]), leftPad(ek.ecc.x, size), leftPad(ek.ecc.y, size)]);
  let z: Buffer;
  try {
    z = ephemeral.computeSecret(ekPoint); // x of the shared point, curve-size bytes; rejects off-curve points
  } catch (err) {
    throw new EdgeidError('tpm_malformed', `EK public point is not on its curve: ${(err as Error).message}`);
  }
  const point = ephemeral.getPublicKey(); // 04 || x || y, each curve-size bytes
  const ex = point.subarray(1, 1 + size);
  const ey = point.subarray(1 + size);
  // partyVInfo is the EK's x exactly as in its public area: that is what the TPM feeds its KDFe.
  const seed = kdfe(ek.nameAlg, z, label, ex, ek.ecc.x, 8 * digestSize(ek.nameAlg));
  z.fill(0);
  return { seed, encryptedSeed: new TpmWriter().tpm2b(ex).tpm2b(ey).toBuffer() };
}

function curveOf(ek: TpmPublic): { ecdh: string; size: number } {
  const curve = ek.ecc ? CURVES.get(ek.ecc.curve) : undefined;
  if (!curve) throw unsupported('EK curve is not NIST P-256 or P-384', { curve: ek.ecc?.curve });
  return curve;
}

/**
 * The ECC seed for a given ephemeral private scalar (deterministic; makeCredential uses a fresh
 * random key). Exported for known-answer tests against published TPM vectors.
 */
export function eccSeedWithEphemeral(ek: TpmPublic, ephemeralPrivate: Uint8Array, label = IDENTITY): ProtectedSeed {
  const curve = curveOf(ek);
  const ecdh = createECDH(curve.ecdh);
  ecdh.setPrivateKey(Buffer.from(ephemeralPrivate));
  return eccSeed(ek, ecdh, curve.size, label);
}

/** RSA seed: random, encrypted with OAEP (hash = EK nameAlg, label "IDENTITY\0"). */
function rsaSeed(ek: TpmPublic, label = IDENTITY): ProtectedSeed {
  const seed = randomBytes(digestSize(ek.nameAlg));
  const encryptedSeed = publicEncrypt(
    {
      key: publicKeyObject(ek), // throws tpm_malformed for a modulus that does not fit its size
      padding: constants.RSA_PKCS1_OAEP_PADDING,
      oaepHash: hashName(ek.nameAlg),
      oaepLabel: Buffer.from(`${label}\0`, 'latin1'),
    },
    seed,
  );
  return { seed, encryptedSeed };
}

function protectSeed(ek: TpmPublic): ProtectedSeed {
  if (ek.type === TPM_ALG.RSA) return rsaSeed(ek);
  const curve = curveOf(ek);
  const ecdh = createECDH(curve.ecdh);
  ecdh.generateKeys();
  return eccSeed(ek, ecdh, curve.size, IDENTITY);
}

/**
 * The credential blob for a given seed (deterministic): TPM2B_ID_OBJECT.
 * @param symKeyBits the EK's symmetric key size
 */
function credentialBlobFromSeed(nameAlg: number, symKeyBits: number, seed: Buffer, objectName: Buffer, secret: Buffer): Buffer {
  const symKey = kdfa(nameAlg, seed, 'STORAGE', objectName, null, symKeyBits);
  const cipher = createCipheriv(`aes-${symKeyBits}-cfb`, symKey, Buffer.alloc(16));
  const plain = new TpmWriter().tpm2b(secret).toBuffer();
  const encIdentity = Buffer.concat([cipher.update(plain), cipher.final()]);
  plain.fill(0);
  symKey.fill(0);
  const hmacKey = kdfa(nameAlg, seed, 'INTEGRITY', null, null, 8 * digestSize(nameAlg));
  const outerHmac = createHmac(hashName(nameAlg), hmacKey).update(encIdentity).update(objectName).digest();
  hmacKey.fill(0);
  return new TpmWriter().tpm2b(new TpmWriter().tpm2b(outerHmac).bytes(encIdentity).toBuffer()).toBuffer();
}

/**
 * TPM2_MakeCredential: encrypts `secret` so that only the TPM holding `ekPublic`, with the object
 * named `objectName` loaded, returns it from TPM2_ActivateCredential.
 *
 * Checks, each with its own code:
 *  - EK is RSA (2048/3072/4096) or ECC (P-256/P-384), nameAlg SHA-256/384/512,
 *    symmetric AES-CFB 128/192/256                                      → credential_ek_unsupported
 *  - EK is restricted + decrypt (a storage key), not sign                → credential_ek_not_storage_key
 *  - EK key material is a valid RSA modulus / a point on the curve       → tpm_malformed
 *  - objectName is a SHA-1/256/384/512 algorithm id + digest of its size → credential_name_invalid
 *  - secret is 1..digestSize(EK nameAlg) bytes (the TPM's own limit)     → credential_secret_invalid
 *
 * @param ekPublic the parsed EK public area (parsePublic of its TPM2B_PUBLIC)
 * @param objectName TPM2B_NAME contents of the key to be credentialed (objectName(akPublic))
 * @returns credentialBlob = TPM2B_ID_OBJECT, encryptedSecret = TPM2B_ENCRYPTED_SECRET (both with size prefix)
 */
export function makeCredential(ekPublic: TpmPublic, objectName: Buffer, secret: Buffer): TpmCredential {
  const symKeyBits = checkEk(ekPublic);
  checkName(objectName);
  const maxSecret = digestSize(ekPublic.nameAlg);
  if (secret.length === 0 || secret.length > maxSecret) {
    throw new EdgeidError('credential_secret_invalid', `credential secret must be 1..${maxSecret} bytes, got ${secret.length}`);
  }
  const { seed, encryptedSeed } = protectSeed(ekPublic);
  try {
    return {
      credentialBlob: credentialBlobFromSeed(ekPublic.nameAlg, symKeyBits, seed, objectName, secret),
      encryptedSecret: new TpmWriter().tpm2b(encryptedSeed).toBuffer(),
    };
  } finally {
    seed.fill(0);
  }
}

const TPM2_TOOLS_MAGIC = 0xbadcc0de;
/** sizeof(TPM2B_ID_OBJECT) and sizeof(TPM2B_ENCRYPTED_SECRET) contents in tpm2-tss. */
const MAX_ID_OBJECT = 2 + 64 + 2 + 64;
const MAX_ENCRYPTED_SECRET = 512;

/**
 * tpm2-tools' credential file (written by tpm2_makecredential -o, read by tpm2_activatecredential -i):
 * magic 0xBADCC0DE (4 bytes), version 1 (4 bytes), TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
 */
export function toTpm2ToolsCredentialFile(c: TpmCredential): Buffer {
  return new TpmWriter().u32(TPM2_TOOLS_MAGIC).u32(1).bytes(c.credentialBlob).bytes(c.encryptedSecret).toBuffer();
}

/** Splits a tpm2-tools credential file into the contract's two halves; anything else is tpm_malformed. */
export function parseTpm2ToolsCredentialFile(file: Uint8Array): TpmCredential {
  const r = new TpmReader(file);
  if (r.u32('magic') !== TPM2_TOOLS_MAGIC) throw new EdgeidError('tpm_malformed', 'not a tpm2-tools credential file (magic)');
  const version = r.u32('version');
  if (version !== 1) throw new EdgeidError('tpm_malformed', `unsupported tpm2-tools credential file version ${version}`);
  const blob = r.tpm2b(MAX_ID_OBJECT, 'TPM2B_ID_OBJECT');
  const secret = r.tpm2b(MAX_ENCRYPTED_SECRET, 'TPM2B_ENCRYPTED_SECRET');
  r.end('credential file');
  return {
    credentialBlob: new TpmWriter().tpm2b(blob).toBuffer(),
    encryptedSecret: new TpmWriter().tpm2b(secret).toBuffer(),
  };
}
