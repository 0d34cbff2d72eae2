import { constants, verify as cryptoVerify } from 'node:crypto';
import { EdgeidError } from '../errors/index.js';
import { TpmReader, TpmWriter } from './buffer.js';
import { TPM_ALG, TPM_LIMITS } from './constants.js';
import { curveSize, hashName, publicKeyObject, type TpmPublic } from './public.js';

/** A parsed TPMT_SIGNATURE (ECDSA, RSASSA or RSAPSS). */
export interface TpmSignature {
  sigAlg: number;
  hashAlg: number;
  ecdsa?: { r: Buffer; s: Buffer };
  rsa?: { sig: Buffer };
}

/** Parses a marshaled TPMT_SIGNATURE; the whole input must be consumed. */
export function parseSignature(bytes: Uint8Array): TpmSignature {
  const r = new TpmReader(bytes);
  const sigAlg = r.u16('sigAlg');
  let sig: TpmSignature;
  if (sigAlg === TPM_ALG.ECDSA) {
    const hashAlg = r.u16('signature hash');
    hashName(hashAlg);
    const sr = r.tpm2b(TPM_LIMITS.MAX_ECC_KEY_BYTES, 'ECDSA r');
    const ss = r.tpm2b(TPM_LIMITS.MAX_ECC_KEY_BYTES, 'ECDSA s');
    sig = { sigAlg, hashAlg, ecdsa: { r: sr, s: ss } };
  } else if (sigAlg === TPM_ALG.RSASSA || sigAlg === TPM_ALG.RSAPSS) {
    const hashAlg = r.u16('signature hash');
    hashName(hashAlg);
    sig = { sigAlg, hashAlg, rsa: { sig: r.tpm2b(TPM_LIMITS.MAX_RSA_KEY_BYTES, 'RSA signature') } };
  } else {
    throw new EdgeidError('tpm_unsupported_algorithm', `unsupported signature algorithm: 0x${sigAlg.toString(16).padStart(4, '0')}`, {
      what: 'signature algorithm',
      alg: sigAlg,
    });
  }
  r.end('TPMT_SIGNATURE');
  return sig;
}

/** DER INTEGER of an unsigned big-endian value (minimal, with a 0x00 pad if the top bit is set). */
function derUnsignedInteger(v: Buffer): Buffer {
  let i = 0;
  while (i < v.length - 1 && v[i] === 0) i++;
  let body = v.subarray(i);
  if (body.length === 0) body = Buffer.alloc(1);
  if (body[0]! & 0x80) body = Buffer.concat([Buffer.alloc(1), body]);
  return Buffer.concat([Buffer.from([0x02]), derLength(body.length), body]);
}

function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  if (n < 0x100) return Buffer.from([0x81, n]);
  return Buffer.from([0x82, n >> 8, n & 0xff]);
}

/** ECDSA (r, s) → DER Ecdsa-Sig-Value, the form X.509, TLS and node:crypto use. */
export function signatureToDer(sig: TpmSignature): Buffer {
  if (!sig.ecdsa) {
    throw new EdgeidError('tpm_unsupported_algorithm', 'only ECDSA signatures have a DER form', {
      what: 'signature algorithm',
      alg: sig.sigAlg,
    });
  }
  const body = Buffer.concat([derUnsignedInteger(sig.ecdsa.r), derUnsignedInteger(sig.ecdsa.s)]);
  return Buffer.concat([Buffer.from([0x30]), derLength(body.length), body]);
}

/**
 * Verifies a TPM signature over `message` (the signed bytes, hashed here with the signature's
 * hash) with the TPM object's public key. True only if the algorithm fits the key type and the
 * signature verifies; policy (which scheme and hash are acceptable) is the caller's business.
 */
export function verifyTpmSignature(pub: TpmPublic, message: Buffer, sig: TpmSignature): boolean {
  const job = signatureJob(pub, message, sig);
  if (!job) return false;
  try {
    return cryptoVerify(job.hash, message, job.key, job.signature);
  } catch {
    return false;
  }
}

/**
 * verifyTpmSignature with the signature check in libuv's thread pool (node:crypto's `verify` with
 * a callback runs as a job off the event loop), so that a server spreads verifications over its
 * cores. Same checks, same outcome.
 */
export function verifyTpmSignatureAsync(pub: TpmPublic, message: Buffer, sig: TpmSignature): Promise<boolean> {
  const job = signatureJob(pub, message, sig);
  if (!job) return Promise.resolve(false);
  return new Promise((resolve) => {
    try {
      cryptoVerify(job.hash, message, job.key, job.signature, (err, ok) => resolve(!err && ok));
    } catch {
      resolve(false);
    }
  });
}

/** What node:crypto needs to check `sig`, or null when the algorithm does not fit the key or the sizes are wrong. */
function signatureJob(
  pub: TpmPublic,
  message: Buffer,
  sig: TpmSignature,
): { hash: string; key: Parameters<typeof cryptoVerify>[2]; signature: Buffer } | null {
  const key = publicKeyObject(pub);
  const hash = hashName(sig.hashAlg);
  if (pub.type === TPM_ALG.ECC && sig.ecdsa && pub.ecc) {
    const size = curveSize(pub.ecc.curve);
    if (sig.ecdsa.r.length === 0 || sig.ecdsa.s.length === 0 || sig.ecdsa.r.length > size || sig.ecdsa.s.length > size) return null;
    let der: Buffer;
    try {
      der = signatureToDer(sig);
    } catch {
      return null;
    }
    return { hash, key: { key, dsaEncoding: 'der' }, signature: der };
  }
  if (pub.type === TPM_ALG.RSA && sig.rsa && pub.rsa) {
    if (sig.rsa.sig.length !== pub.rsa.keyBits / 8) return null;
    if (sig.sigAlg === TPM_ALG.RSASSA) return { hash, key: { key, padding: constants.RSA_PKCS1_PADDING }, signature: sig.rsa.sig };
    return {
      hash,
      key: { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_AUTO },
      signature: sig.rsa.sig,
    };
  }
  return null;
}

/** Marshals a TPMT_SIGNATURE (ECDSA, RSASSA, RSAPSS); for tests and tools. */
export function marshalSignature(sig: TpmSignature): Buffer {
  const w = new TpmWriter().u16(sig.sigAlg).u16(sig.hashAlg);
  if (sig.ecdsa) return w.tpm2b(sig.ecdsa.r).tpm2b(sig.ecdsa.s).toBuffer();
  if (sig.rsa) return w.tpm2b(sig.rsa.sig).toBuffer();
  throw new TypeError('signature without ecdsa or rsa part');
}
