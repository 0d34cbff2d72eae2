/**
 * The TPM's two key derivation functions (TPM 2.0 Part 1 §11.4.10), on node:crypto HMAC and hash.
 *
 * - KDFa: SP800-108 counter mode with HMAC:
 *     K(i) = HMAC_hash(key, [i]32 || label || 0x00 || contextU || contextV || [bits]32)
 * - KDFe: SP800-56A concatenation KDF:
 *     K(i) = hash([i]32 || Z || label || 0x00 || partyUInfo || partyVInfo)
 *
 * Both return ceil(bits/8) bytes; when bits is not a multiple of 8 the unused high bits of the
 * first byte are cleared, as the TPM reference implementation does. As there, the 0x00 after the
 * label is added only if the label does not already end in one (and for an empty label).
 */
import { createHash, createHmac } from 'node:crypto';
import { hashName } from './public.js';

/** Largest output we derive: far above any key the TPM uses; guards against a runaway bits argument. */
const MAX_BITS = 8 * 4096;

/** A label as the TPM hashes it: its bytes followed by a terminating 0x00. */
function labelBytes(label: string | Uint8Array): Buffer {
  const b = typeof label === 'string' ? Buffer.from(label, 'latin1') : Buffer.from(label);
  if (b.length > 0 && b[b.length - 1] === 0) return b;
  return Buffer.concat([b, Buffer.alloc(1)]);
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

function checkBits(bits: number): void {
  if (!Number.isInteger(bits) || bits <= 0 || bits > MAX_BITS) {
    throw new RangeError(`KDF output size must be 1..${MAX_BITS} bits, got ${bits}`);
  }
}

/** Concatenates the counter-mode blocks, cuts to ceil(bits/8) bytes and clears the unused high bits. */
function truncate(blocks: Buffer[], bits: number): Buffer {
  const out = Buffer.alloc(Math.ceil(bits / 8));
  let at = 0;
  for (const b of blocks) {
    at += b.copy(out, at);
    b.fill(0); // derived keys: best-effort wipe of the intermediate copies
  }
  const spare = bits % 8;
  if (spare !== 0) out[0] = (out[0] ?? 0) & ((1 << spare) - 1);
  return out;
}

/**
 * KDFa(hashAlg, key, label, contextU, contextV, bits).
 * @param hashAlg TPM_ALG id of the hash (SHA1/SHA256/SHA384/SHA512)
 * @param label e.g. "STORAGE", "INTEGRITY" (the terminating 0x00 is added)
 * @param contextU, contextV the contents of the TPM2B (no size prefix); null means empty
 */
export function kdfa(
  hashAlg: number,
  key: Uint8Array,
  label: string | Uint8Array,
  contextU: Uint8Array | null,
  contextV: Uint8Array | null,
  bits: number,
): Buffer {
  checkBits(bits);
  const hash = hashName(hashAlg);
  const fixed = Buffer.concat([labelBytes(label), contextU ?? Buffer.alloc(0), contextV ?? Buffer.alloc(0), u32(bits)]);
  const blocks: Buffer[] = [];
  for (let i = 1, have = 0; have < Math.ceil(bits / 8); i++) {
    const block = createHmac(hash, key).update(u32(i)).update(fixed).digest();
    blocks.push(block);
    have += block.length;
  }
  return truncate(blocks, bits);
}

/**
 * KDFe(hashAlg, Z, label, partyUInfo, partyVInfo, bits).
 * @param z the shared secret (for ECDH: the x coordinate of the shared point)
 * @param partyU, partyV the contents of the TPM2B (for credential activation: ephemeral x, then EK x)
 */
export function kdfe(
  hashAlg: number,
  z: Uint8Array,
  label: string | Uint8Array,
  partyU: Uint8Array | null,
  partyV: Uint8Array | null,
  bits: number,
): Buffer {
  checkBits(bits);
  const hash = hashName(hashAlg);
  const tail = Buffer.concat([labelBytes(label), partyU ?? Buffer.alloc(0), partyV ?? Buffer.alloc(0)]);
  const blocks: Buffer[] = [];
  for (let i = 1, have = 0; have < Math.ceil(bits / 8); i++) {
    const block = createHash(hash).update(u32(i)).update(z).update(tail).digest();
    blocks.push(block);
    have += block.length;
  }
  return truncate(blocks, bits);
}
