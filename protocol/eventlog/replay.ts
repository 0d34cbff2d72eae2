/**
 * Replay of an event log into PCR values per bank: PCR_new = H(PCR_old || digest) (TPM 2.0 Part 1
 * §17.4 "PCR Extend"), in log order, for every event except EV_NO_ACTION, which the PFP (§10.4.1)
 * says is never extended. Initial values (PFP §3.3.3 and §10.4.5.3): zero, except PCR 0, whose
 * last byte is the startup locality when the log carries a TCG_EfiStartupLocalityEvent (an H-CRTM
 * or locality-3/4 start). Only PCRs with at least one extended event are reported, as
 * tpm2_eventlog does.
 */
import { EdgeidError } from '../errors/index.js';
import type { EventLog } from './parser.js';
import { EV, HASH_ALGS, bankName } from './types.js';
import { createHash } from 'node:crypto';

/** bank name (sha1, sha256, …) → PCR index → value. */
export type ReplayedPcrs = Map<string, Map<number, Buffer>>;

export function replay(log: EventLog): ReplayedPcrs {
  let locality = 0;
  for (const e of log.events) if (e.decoded.kind === 'startup-locality' && e.pcr === 0) locality = e.decoded.locality;
  const out: ReplayedPcrs = new Map();
  for (const { alg } of log.algorithms) {
    const h = HASH_ALGS.get(alg);
    if (!h) continue; // a bank we cannot hash is not replayed (its digests were still parsed)
    const pcrs = new Map<number, Buffer>();
    for (const e of log.events) {
      if (e.type === EV.EV_NO_ACTION) continue;
      const digest = e.digests.get(alg);
      if (!digest) continue;
      let old = pcrs.get(e.pcr);
      if (!old) {
        old = Buffer.alloc(h.size);
        if (e.pcr === 0) old[h.size - 1] = locality;
      }
      pcrs.set(e.pcr, createHash(h.node).update(old).update(digest).digest());
    }
    out.set(h.name, new Map([...pcrs].sort((a, b) => a[0] - b[0])));
  }
  return out;
}

/** JSON form: { sha256: { "0": "<hex>", … }, … }; a bank no event extends is left out. */
export function pcrsJson(pcrs: ReplayedPcrs): Record<string, Record<string, string>> {
  return Object.fromEntries(
    [...pcrs]
      .filter(([, m]) => m.size > 0)
      .map(([bank, m]) => [bank, Object.fromEntries([...m].map(([i, v]) => [String(i), v.toString('hex')]))]),
  );
}

/**
 * Requires the replayed values to equal the quoted ones for every quoted PCR of `bank`; the first
 * difference is an `eventlog_replay_mismatch` naming the PCR and bank. A quoted PCR the log never
 * extends must still hold its initial value (zero) to match.
 */
export function checkReplay(replayed: ReplayedPcrs, hashAlg: number, quoted: ReadonlyMap<number, Buffer>): void {
  const bank = bankName(hashAlg);
  const size = HASH_ALGS.get(hashAlg)?.size;
  const values = replayed.get(bank);
  for (const [pcr, want] of [...quoted].sort((a, b) => a[0] - b[0])) {
    const got = values?.get(pcr) ?? Buffer.alloc(size ?? want.length);
    if (!got.equals(want)) {
      throw new EdgeidError(
        'eventlog_replay_mismatch',
        `TCG event log replays ${bank} PCR ${pcr} to ${got.toString('hex')}, the quote has ${want.toString('hex')}`,
        { pcr, bank },
      );
    }
  }
}
