import { createHash } from 'node:crypto';
import { EdgeidError } from '../errors/index.js';
import { TpmReader, TpmWriter } from './buffer.js';
import { TPM_LIMITS } from './constants.js';
import { hashName } from './public.js';

/** One bank of a TPML_PCR_SELECTION: the hash algorithm and the selected PCR indices (ascending). */
export interface PcrSelection {
  hashAlg: number;
  pcrs: number[];
}

/** TPM 2.0 minimum: a selection bitmap covers at least 24 PCRs (3 bytes). */
const MIN_SELECT_BYTES = 3;

/** Marshals a TPML_PCR_SELECTION. PCR indices are deduplicated; each bitmap is at least 3 bytes. */
export function marshalPcrSelection(sel: PcrSelection[]): Buffer {
  const w = new TpmWriter().u32(sel.length);
  for (const bank of sel) {
    const maxPcr = TPM_LIMITS.MAX_PCR_SELECT_BYTES * 8 - 1;
    for (const pcr of bank.pcrs) {
      if (!Number.isInteger(pcr) || pcr < 0 || pcr > maxPcr) throw new RangeError(`PCR index out of range: ${pcr}`);
    }
    const highest = bank.pcrs.length ? Math.max(...bank.pcrs) : 0;
    const bitmap = Buffer.alloc(Math.max(MIN_SELECT_BYTES, Math.floor(highest / 8) + 1));
    for (const pcr of bank.pcrs) bitmap[pcr >> 3]! |= 1 << (pcr & 7);
    w.u16(bank.hashAlg).u8(bitmap.length).bytes(bitmap);
  }
  return w.toBuffer();
}

/** Reads a TPML_PCR_SELECTION at the reader's position (used inside TPMS_ATTEST). */
export function readPcrSelection(r: TpmReader): PcrSelection[] {
  const count = r.u32('TPML_PCR_SELECTION count');
  if (count > TPM_LIMITS.MAX_PCR_BANKS) throw new EdgeidError('tpm_malformed', `TPML_PCR_SELECTION with ${count} banks`);
  const out: PcrSelection[] = [];
  for (let i = 0; i < count; i++) {
    const hashAlg = r.u16('PCR bank hash');
    hashName(hashAlg); // unknown banks: tpm_unsupported_algorithm
    const sizeofSelect = r.u8('sizeofSelect');
    if (sizeofSelect > TPM_LIMITS.MAX_PCR_SELECT_BYTES) throw new EdgeidError('tpm_malformed', `PCR bitmap of ${sizeofSelect} bytes`);
    const bitmap = r.bytes(sizeofSelect, 'pcrSelect');
    const pcrs: number[] = [];
    for (let byte = 0; byte < bitmap.length; byte++) {
      for (let bit = 0; bit < 8; bit++) if ((bitmap[byte]! >> bit) & 1) pcrs.push(byte * 8 + bit);
    }
    out.push({ hashAlg, pcrs });
  }
  return out;
}

/** Parses a marshaled TPML_PCR_SELECTION; the whole input must be consumed. */
export function parsePcrSelection(bytes: Uint8Array): PcrSelection[] {
  const r = new TpmReader(bytes);
  const sel = readPcrSelection(r);
  r.end('TPML_PCR_SELECTION');
  return sel;
}

/**
 * The digest a TPM puts into a quote: H_hashAlg(value_1 || ... || value_n), values in TPM order
 * (by selection entry, then ascending PCR index). hashAlg is the signing scheme's hash.
 */
export function pcrDigest(hashAlg: number, values: Buffer[]): Buffer {
  const h = createHash(hashName(hashAlg));
  for (const v of values) h.update(v);
  return h.digest();
}
