/**
 * Finding the endorsement key in a TPM: the TCG certificate NV indices, persistent EKs and the
 * TCG templates (ek.ts holds those facts as pure functions; this file makes the TPM round trips).
 */
import { EdgeidError } from '../../protocol/errors/index.js';
import { TPMA_NV, TPM_PT } from '../../protocol/tpm/constants.js';
import { parsePublic } from '../../protocol/tpm/public.js';
import { readHandles, readProperties } from './capabilities.js';
import {
  EK_CERTIFICATE_SLOTS,
  EK_PERSISTENT_FIRST,
  EK_PERSISTENT_LAST,
  certificateMatchesEk,
  defaultEkTemplate,
  ekKindOf,
  looksLikeEk,
  trimDer,
  type EkKind,
} from './ek.js';
import { TPM_RC, TpmError } from './errors.js';
import type { TpmSession } from './session.js';

export interface EndorsementKey {
  kind: EkKind;
  /** TPM2B_PUBLIC */
  public: Buffer;
  /** DER, or null when the TPM carries no certificate for this EK. */
  certificate: Buffer | null;
  /** Set when the EK is persistent (e.g. 0x81010001); otherwise it is recreated from `template`. */
  persistentHandle?: number;
  /** NV index the certificate was read from. */
  certificateIndex?: number;
  /** TPM2B_PUBLIC template the EK is recreated from when it is not persistent. */
  template?: Buffer;
}

/** Reads an NV index completely (NV_ReadPublic for its size, then NV_Read in chunks); null if absent. */
export async function nvRead(s: TpmSession, nvIndex: number): Promise<Buffer | null> {
  let handle: number;
  try {
    handle = await s.command('NV_ReadPublic', (a, c) => a.trFromTpmPublic(c, nvIndex));
  } catch (e) {
    if (e instanceof TpmError && e.tpmCode === TPM_RC.HANDLE) return null;
    throw e;
  }
  s.closeAtEnd(handle);
  const nv = await s.command('NV_ReadPublic', (a, c) => a.nvReadPublic(c, handle));
  const esysTr = s.connection.esysTr;
  let auth: number;
  if (nv.attributes & TPMA_NV.AUTHREAD) auth = handle;
  else if (nv.attributes & TPMA_NV.OWNERREAD) auth = esysTr.RH_OWNER;
  else if (nv.attributes & TPMA_NV.PPREAD) auth = esysTr.RH_PLATFORM;
  else throw new EdgeidError('tpm_command_failed', `NV index 0x${nvIndex.toString(16)} is not readable with an auth value`);
  const conn = s.connection;
  if (conn.nvBufferMax === undefined) {
    conn.nvBufferMax = (await readProperties(s, TPM_PT.NV_BUFFER_MAX, 1)).get(TPM_PT.NV_BUFFER_MAX) || 512;
  }
  const chunk = Math.min(conn.nvBufferMax, 1024);
  const parts: Buffer[] = [];
  for (let offset = 0; offset < nv.dataSize; offset += chunk) {
    const size = Math.min(chunk, nv.dataSize - offset);
    parts.push(await s.command('NV_Read', (a, c) => a.nvRead(c, auth, handle, size, offset)));
  }
  return Buffer.concat(parts);
}

/** Persistent EKs (TCG range 0x81010000..0x810100FF) with their public areas. */
async function persistentEks(s: TpmSession): Promise<{ handle: number; public: Buffer; kind: EkKind }[]> {
  const out: { handle: number; public: Buffer; kind: EkKind }[] = [];
  for (const handle of await readHandles(s, EK_PERSISTENT_FIRST, EK_PERSISTENT_LAST)) {
    const obj = await s.openPersistent(handle);
    const pub = parsePublic(obj.public);
    const kind = ekKindOf(pub);
    if (kind && looksLikeEk(pub)) out.push({ handle, public: obj.public, kind });
  }
  return out;
}

/**
 * The EK of `kind` with its certificate: the first TCG certificate index of that kind that holds
 * a certificate decides; its EK is the persistent EK with the same public key, or the EK
 * recreated from the index's TCG template. A certificate whose key matches no EK in the TPM is
 * tpm_ek_mismatch. Without any certificate: the persistent EK of that kind, else the low-range
 * template (L-1 RSA 2048 / L-2 ECC P-256). Without `kind`: RSA if present, else ECC.
 * Results are cached per connection (EKs do not change while the agent runs).
 */
export async function endorsementKey(s: TpmSession, kind?: EkKind): Promise<EndorsementKey> {
  const cache = s.connection.ekCache;
  if (kind === undefined) {
    const cached = cache.get('rsa') ?? cache.get('ecc');
    if (cached) return cached;
    const rsa = await discoverEk(s, 'rsa', false);
    return rsa ?? (await discoverEk(s, 'ecc', false)) ?? (await endorsementKey(s, 'rsa'));
  }
  const cached = cache.get(kind);
  if (cached) return cached;
  const found = await discoverEk(s, kind, true);
  if (!found) throw new EdgeidError('tpm_ek_not_found', `no ${kind.toUpperCase()} endorsement key`);
  return found;
}

async function discoverEk(s: TpmSession, kind: EkKind, allowTemplate: boolean): Promise<EndorsementKey | null> {
  const persistent = (await persistentEks(s)).filter((e) => e.kind === kind);
  let result: EndorsementKey | null = null;
  for (const slot of EK_CERTIFICATE_SLOTS.filter((x) => x.kind === kind)) {
    const raw = await nvRead(s, slot.nvIndex);
    if (raw === null) continue;
    const certificate = trimDer(raw);
    const match = persistent.find((e) => certificateMatchesEk(certificate, e.public));
    if (match) {
      result = { kind, public: match.public, certificate, persistentHandle: match.handle, certificateIndex: slot.nvIndex };
    } else if (slot.template) {
      const template = slot.template();
      const ek = await s.createPrimary('endorsement', template);
      await s.flush(ek);
      if (!certificateMatchesEk(certificate, ek.public)) {
        throw new EdgeidError(
          'tpm_ek_mismatch',
          `the certificate in NV 0x${slot.nvIndex.toString(16)} (${slot.label}) matches neither a persistent EK nor the EK from the TCG template`,
        );
      }
      result = { kind, public: ek.public, certificate, certificateIndex: slot.nvIndex, template };
    } else {
      throw new EdgeidError(
        'tpm_ek_mismatch',
        `the certificate in NV 0x${slot.nvIndex.toString(16)} (${slot.label}) matches no persistent EK`,
      );
    }
    break;
  }
  if (!result) {
    const first = persistent[0];
    if (first) {
      result = { kind, public: first.public, certificate: null, persistentHandle: first.handle };
    } else if (allowTemplate) {
      const template = defaultEkTemplate(kind);
      const ek = await s.createPrimary('endorsement', template);
      await s.flush(ek);
      result = { kind, public: ek.public, certificate: null, template };
    }
  }
  if (result) s.connection.ekCache.set(kind, result);
  return result;
}
