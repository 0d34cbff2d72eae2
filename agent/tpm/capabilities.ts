/**
 * What the TPM says about itself (TPM2_GetCapability): fixed properties, active PCR banks, loaded
 * handles — and the clean-up that needs the handle list (flushing every transient object).
 */
import { TPM_CAP, TPM_HR_TRANSIENT, TPM_PT } from '../../protocol/tpm/constants.js';
import { parsePcrSelection, type PcrSelection } from '../../protocol/tpm/pcr.js';
import { TPM_RC, TpmError } from './errors.js';
import type { TpmSession } from './session.js';

export interface TpmInfo {
  manufacturer: string;
  manufacturerId: number;
  vendor: string;
  /** TPM_PT_FIRMWARE_VERSION_1/2 as four 16-bit numbers, e.g. "7.85.4555.0". */
  firmwareVersion: string;
  spec: { family: string; level: number; revision: string; year: number; dayOfYear: number };
  /** Minimum number of transient objects the TPM can hold (TPM_PT_HR_TRANSIENT_MIN). */
  transientObjectSlots: number;
  /** Minimum number of loaded sessions (TPM_PT_HR_LOADED_MIN). */
  loadedSessionSlots: number;
  /** Active PCR banks and their PCRs. */
  pcrBanks: PcrSelection[];
}

/** The last transient handle (the range is one handle type: TPM 2.0 Part 2, section 7.2). */
const TPM_HR_TRANSIENT_LAST = TPM_HR_TRANSIENT + 0xffffff;

/** TPM properties `first` .. `first + count - 1` (as many GetCapability calls as the TPM needs). */
export async function readProperties(s: TpmSession, first: number, count: number): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  let property = first;
  for (;;) {
    const r = await s.command('GetCapability', (a, c) => a.getCapability(c, TPM_CAP.TPM_PROPERTIES, property, count));
    let last = -1;
    for (let i = 0; i + 1 < r.values.length; i += 2) {
      last = r.values[i]!;
      out.set(last, r.values[i + 1]!);
    }
    if (!r.more || last < 0 || last >= first + count - 1) return out;
    property = last + 1;
  }
}

/** Handles in `first..last` the TPM reports (loaded transient objects, persistent objects, NV indices). */
export async function readHandles(s: TpmSession, first: number, last: number): Promise<number[]> {
  const out: number[] = [];
  let from = first;
  for (;;) {
    const r = await s.command('GetCapability', (a, c) => a.getCapability(c, TPM_CAP.HANDLES, from, 254));
    const inRange = r.values.filter((h) => h >= from && h <= last);
    out.push(...inRange);
    const max = r.values.length ? Math.max(...r.values) : last;
    if (!r.more || max >= last || inRange.length === 0) return out;
    from = max + 1;
  }
}

/** Transient objects currently loaded in the TPM (by anyone). */
export async function transientHandleCount(s: TpmSession): Promise<number> {
  return (await readHandles(s, TPM_HR_TRANSIENT, TPM_HR_TRANSIENT_LAST)).length;
}

/**
 * Flushes every transient object in the TPM, including other processes' (for a TPM without a
 * resource manager, after a process died mid-batch). Returns how many were flushed.
 */
export async function flushAllTransient(s: TpmSession): Promise<number> {
  let n = await s.releaseResidents();
  for (const tpmHandle of await readHandles(s, TPM_HR_TRANSIENT, TPM_HR_TRANSIENT_LAST)) {
    try {
      const tr = await s.command('ReadPublic', (a, c) => a.trFromTpmPublic(c, tpmHandle));
      await s.command('FlushContext', (a, c) => a.flush(c, tr));
      n++;
    } catch (e) {
      if (!(e instanceof TpmError && e.tpmCode === TPM_RC.HANDLE)) throw e; // gone meanwhile
    }
  }
  return n;
}

/** Manufacturer, firmware and specification of the TPM, its object slots and active PCR banks. */
export async function readInfo(s: TpmSession): Promise<TpmInfo> {
  const p = await readProperties(s, TPM_PT.FIXED, 0x30);
  const get = (k: number): number => p.get(k) ?? 0;
  const ascii = (v: number): string =>
    Buffer.from([v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff])
      .toString('latin1')
      .replace(/[^\x20-\x7e]/g, '')
      .trim();
  const fw1 = get(TPM_PT.FIRMWARE_VERSION_1);
  const fw2 = get(TPM_PT.FIRMWARE_VERSION_2);
  const pcrs = await s.command('GetCapability', (a, c) => a.getCapability(c, TPM_CAP.PCRS, 0, 1));
  return {
    manufacturer: ascii(get(TPM_PT.MANUFACTURER)),
    manufacturerId: get(TPM_PT.MANUFACTURER),
    vendor: [0, 1, 2, 3].map((i) => ascii(get(TPM_PT.VENDOR_STRING_1 + i))).join(''),
    firmwareVersion: `${fw1 >>> 16}.${fw1 & 0xffff}.${fw2 >>> 16}.${fw2 & 0xffff}`,
    spec: {
      family: ascii(get(TPM_PT.FAMILY_INDICATOR)),
      level: get(TPM_PT.LEVEL),
      revision: (get(TPM_PT.REVISION) / 100).toFixed(2),
      year: get(TPM_PT.YEAR),
      dayOfYear: get(TPM_PT.DAY_OF_YEAR),
    },
    transientObjectSlots: get(TPM_PT.HR_TRANSIENT_MIN),
    loadedSessionSlots: get(TPM_PT.HR_LOADED_MIN),
    pcrBanks: pcrs.selection ? parsePcrSelection(pcrs.selection).filter((b) => b.pcrs.length > 0) : [],
  };
}

/**
 * Flushes the transient objects whose TPM2B_PUBLIC is one of `publics` (objects loaded through a
 * connection that broke: a TPM without resource manager keeps them). Lists the transient handles
 * even when `publics` is empty, so it also proves that the TPM answers. Returns how many it flushed.
 * On a TPM shared with other processes without a resource manager, an object of theirs with the
 * same public area (the SRK from the same template) is flushed too.
 */
export async function flushOrphans(s: TpmSession, publics: readonly Buffer[]): Promise<number> {
  const handles = await readHandles(s, TPM_HR_TRANSIENT, TPM_HR_TRANSIENT_LAST);
  const wanted = [...publics];
  let n = 0;
  for (const tpmHandle of wanted.length > 0 ? handles : []) {
    let tr: number;
    try {
      tr = await s.command('ReadPublic', (a, c) => a.trFromTpmPublic(c, tpmHandle));
    } catch (e) {
      if (e instanceof TpmError && e.tpmCode === TPM_RC.HANDLE) continue; // gone meanwhile
      throw e;
    }
    const { public: pub } = await s.command('ReadPublic', (a, c) => a.readPublic(c, tr));
    const i = wanted.findIndex((w) => w.equals(pub));
    if (i >= 0) {
      wanted.splice(i, 1);
      await s.command('FlushContext', (a, c) => a.flush(c, tr));
      n++;
    } else {
      await s.command('TR_Close', (a, c) => a.trClose(c, tr));
    }
  }
  return n;
}
