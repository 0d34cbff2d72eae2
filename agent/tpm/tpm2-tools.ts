/**
 * tpm2-tools' "serialized" PCR file: what `tpm2_quote -o` writes and `tpm2_checkquote -f` reads
 * (tpm2-tools 5.x, pcr.c: pcr_fwrite_serialized). It is a raw dump of tpm2-tss C structures in host
 * byte order (little-endian on every platform the agent ships for), not the TPM wire format:
 *
 *   TPML_PCR_SELECTION  u32 count, then 16 × TPMS_PCR_SELECTION
 *                       { u16 hash, u8 sizeofSelect, u8 pcrSelect[4], 1 byte padding }   = 132 bytes
 *   u32                 number of TPML_DIGEST that follow
 *   TPML_DIGEST[n]      u32 count, then 8 × TPM2B_DIGEST { u16 size, u8 buffer[64] }      = 532 bytes each
 *
 * The digests are the PCR values in TPM order (by selection entry, then ascending index), eight per
 * TPML_DIGEST. Layout checked against a file written by tpm2_quote on swtpm (see the integration test).
 */
import type { PcrSelection } from '../../protocol/tpm/pcr.js';

const NUM_PCR_BANKS = 16;
const PCR_SELECT_MAX = 4;
const PCR_SELECTION_SIZE = 8; // sizeof(TPMS_PCR_SELECTION): 2 + 1 + 4, padded to 2-byte alignment
const TPML_PCR_SELECTION_SIZE = 4 + NUM_PCR_BANKS * PCR_SELECTION_SIZE;
const DIGESTS_PER_LIST = 8;
const TPMU_HA_SIZE = 64;
const TPM2B_DIGEST_SIZE = 2 + TPMU_HA_SIZE;
const TPML_DIGEST_SIZE = 4 + DIGESTS_PER_LIST * TPM2B_DIGEST_SIZE;
/** tpm2-tools writes 3-byte bitmaps (24 PCRs) unless a higher PCR is selected. */
const MIN_SELECT_BYTES = 3;

/** Serialises PCR values for tpm2_checkquote -f. `values` are in TPM order for `selection`. */
export function tpm2ToolsPcrsFile(selection: PcrSelection[], values: Buffer[]): Buffer {
  if (selection.length > NUM_PCR_BANKS) throw new RangeError(`at most ${NUM_PCR_BANKS} PCR banks`);
  const expected = selection.reduce((n, b) => n + new Set(b.pcrs).size, 0);
  if (values.length !== expected) throw new RangeError(`${values.length} PCR values for a selection of ${expected} PCRs`);

  const lists = Math.ceil(values.length / DIGESTS_PER_LIST);
  const out = Buffer.alloc(TPML_PCR_SELECTION_SIZE + 4 + lists * TPML_DIGEST_SIZE);
  out.writeUInt32LE(selection.length, 0);
  selection.forEach((bank, i) => {
    const at = 4 + i * PCR_SELECTION_SIZE;
    const highest = bank.pcrs.length ? Math.max(...bank.pcrs) : 0;
    if (highest >= PCR_SELECT_MAX * 8) throw new RangeError(`PCR ${highest} out of range`);
    out.writeUInt16LE(bank.hashAlg, at);
    out.writeUInt8(Math.max(MIN_SELECT_BYTES, (highest >> 3) + 1), at + 2);
    for (const pcr of bank.pcrs) out[at + 3 + (pcr >> 3)]! |= 1 << (pcr & 7);
  });

  let at = TPML_PCR_SELECTION_SIZE;
  out.writeUInt32LE(lists, at);
  at += 4;
  for (let l = 0; l < lists; l++) {
    const chunk = values.slice(l * DIGESTS_PER_LIST, (l + 1) * DIGESTS_PER_LIST);
    out.writeUInt32LE(chunk.length, at);
    chunk.forEach((v, i) => {
      if (v.length > TPMU_HA_SIZE) throw new RangeError(`PCR value of ${v.length} bytes`);
      const d = at + 4 + i * TPM2B_DIGEST_SIZE;
      out.writeUInt16LE(v.length, d);
      v.copy(out, d + 2);
    });
    at += TPML_DIGEST_SIZE;
  }
  return out;
}
