/** Reading and extending PCRs (TPM2_PCR_Read, TPM2_PCR_Extend) within a batch. */
import { EdgeidError } from '../../protocol/errors/index.js';
import { TPM_ALG } from '../../protocol/tpm/constants.js';
import { marshalPcrSelection, parsePcrSelection, type PcrSelection } from '../../protocol/tpm/pcr.js';
import type { TpmSession } from './session.js';

export interface PcrValue {
  hashAlg: number;
  pcr: number;
  value: Buffer;
}

/**
 * Reads PCR values in TPM order (by selection entry, then ascending index). PCR_Read returns at
 * most 8 digests per call; if a PCR changes between calls (update counter), the read restarts.
 */
export async function readPcrs(s: TpmSession, selection: PcrSelection[]): Promise<PcrValue[]> {
  const wanted = selection.map((b) => ({ hashAlg: b.hashAlg, pcrs: [...new Set(b.pcrs)].sort((x, y) => x - y) }));
  for (let attempt = 0; attempt < 3; attempt++) {
    const got = new Map<string, Buffer>();
    let counter: number | undefined;
    let restart = false;
    for (;;) {
      const remaining = wanted
        .map((b) => ({ hashAlg: b.hashAlg, pcrs: b.pcrs.filter((p) => !got.has(`${b.hashAlg}:${p}`)) }))
        .filter((b) => b.pcrs.length > 0);
      if (remaining.length === 0) break;
      const r = await s.command('PCR_Read', (a, c) => a.pcrRead(c, marshalPcrSelection(remaining)));
      if (counter !== undefined && r.updateCounter !== counter) {
        restart = true;
        break;
      }
      counter = r.updateCounter;
      let i = 0;
      for (const bank of parsePcrSelection(r.selection)) {
        for (const pcr of bank.pcrs) {
          const value = r.digests[i++];
          if (value === undefined) throw new EdgeidError('tpm_pcr_unavailable', 'PCR_Read returned fewer digests than its selection');
          got.set(`${bank.hashAlg}:${pcr}`, value);
        }
      }
      if (i === 0) {
        const missing = remaining.map((b) => `0x${b.hashAlg.toString(16)}:${b.pcrs.join(',')}`).join(' ');
        throw new EdgeidError('tpm_pcr_unavailable', `the TPM returned no value for PCRs ${missing}`);
      }
    }
    if (restart) continue;
    return wanted.flatMap((b) => b.pcrs.map((pcr) => ({ hashAlg: b.hashAlg, pcr, value: got.get(`${b.hashAlg}:${pcr}`)! })));
  }
  throw new EdgeidError('tpm_pcr_unavailable', 'PCRs kept changing while they were read (3 attempts)');
}

/** PCR values of one bank as verifyQuote takes them (index → value). */
export async function readPcrBank(s: TpmSession, pcrs: number[], hashAlg: number = TPM_ALG.SHA256): Promise<Map<number, Buffer>> {
  const values = await readPcrs(s, [{ hashAlg, pcrs }]);
  return new Map(values.map((v) => [v.pcr, v.value]));
}

/** Extends a PCR (tests and diagnostics; on a device only the boot chain should extend PCRs). */
export async function extendPcr(s: TpmSession, index: number, digest: Buffer, hashAlg: number = TPM_ALG.SHA256): Promise<void> {
  await s.command('PCR_Extend', (a, c) => a.pcrExtend(c, index, hashAlg, digest));
}
