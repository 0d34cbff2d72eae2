import { EdgeidError } from '../errors/index.js';
import { TpmReader, TpmWriter } from './buffer.js';
import { TPM_LIMITS, TPM_ST_ATTEST_CERTIFY, TPM_ST_ATTEST_CREATION, TPM_ST_ATTEST_QUOTE } from './constants.js';
import { marshalPcrSelection, readPcrSelection, type PcrSelection } from './pcr.js';

/**
 * A parsed TPMS_ATTEST. The parser checks structure only; whether magic and type are right is
 * for the verifier (verify.ts) to decide, so that each gets its own error code.
 */
export interface TpmsAttest {
  magic: number;
  type: number;
  qualifiedSigner: Buffer;
  extraData: Buffer;
  clockInfo: { clock: bigint; resetCount: number; restartCount: number; safe: boolean };
  firmwareVersion: bigint;
  quote?: { pcrSelect: PcrSelection[]; pcrDigest: Buffer };
  certify?: { name: Buffer; qualifiedName: Buffer };
  creation?: { objectName: Buffer; creationHash: Buffer };
  /** The attested union of a type edgeid does not interpret (NV, time, audit), unparsed. */
  attested?: Buffer;
}

/**
 * Parses TPMS_ATTEST bytes (the contents of TPM2B_ATTEST, without its size prefix, as
 * tpm2_quote -m writes). For quote, certify and creation the whole input must be consumed.
 */
export function parseAttest(bytes: Uint8Array): TpmsAttest {
  if (bytes.length > TPM_LIMITS.MAX_ATTEST) throw new EdgeidError('tpm_malformed', `TPMS_ATTEST of ${bytes.length} bytes is too long`);
  const r = new TpmReader(bytes);
  const magic = r.u32('magic');
  const type = r.u16('attest type');
  const qualifiedSigner = r.tpm2b(TPM_LIMITS.MAX_HA, 'qualifiedSigner');
  const extraData = r.tpm2b(TPM_LIMITS.MAX_HA, 'extraData');
  const clock = r.u64('clock');
  const resetCount = r.u32('resetCount');
  const restartCount = r.u32('restartCount');
  const safeByte = r.u8('safe');
  if (safeByte > 1) throw new EdgeidError('tpm_malformed', `TPMI_YES_NO of value ${safeByte}`);
  const firmwareVersion = r.u64('firmwareVersion');
  const attest: TpmsAttest = {
    magic,
    type,
    qualifiedSigner,
    extraData,
    clockInfo: { clock, resetCount, restartCount, safe: safeByte === 1 },
    firmwareVersion,
  };
  switch (type) {
    case TPM_ST_ATTEST_QUOTE:
      attest.quote = { pcrSelect: readPcrSelection(r), pcrDigest: r.tpm2b(TPM_LIMITS.MAX_DIGEST, 'pcrDigest') };
      break;
    case TPM_ST_ATTEST_CERTIFY:
      attest.certify = { name: r.tpm2b(TPM_LIMITS.MAX_HA, 'name'), qualifiedName: r.tpm2b(TPM_LIMITS.MAX_HA, 'qualifiedName') };
      break;
    case TPM_ST_ATTEST_CREATION:
      attest.creation = {
        objectName: r.tpm2b(TPM_LIMITS.MAX_HA, 'objectName'),
        creationHash: r.tpm2b(TPM_LIMITS.MAX_DIGEST, 'creationHash'),
      };
      break;
    default:
      attest.attested = r.bytes(r.remaining, 'attested');
  }
  r.end('TPMS_ATTEST');
  return attest;
}

/**
 * Marshals a TPMS_ATTEST (no size prefix). Only a TPM's own output is evidence; this exists for
 * tests and tools that need to build structures to verify.
 */
export function marshalAttest(a: TpmsAttest): Buffer {
  const w = new TpmWriter()
    .u32(a.magic)
    .u16(a.type)
    .tpm2b(a.qualifiedSigner)
    .tpm2b(a.extraData)
    .u64(a.clockInfo.clock)
    .u32(a.clockInfo.resetCount)
    .u32(a.clockInfo.restartCount)
    .u8(a.clockInfo.safe ? 1 : 0)
    .u64(a.firmwareVersion);
  if (a.quote) w.bytes(marshalPcrSelection(a.quote.pcrSelect)).tpm2b(a.quote.pcrDigest);
  else if (a.certify) w.tpm2b(a.certify.name).tpm2b(a.certify.qualifiedName);
  else if (a.creation) w.tpm2b(a.creation.objectName).tpm2b(a.creation.creationHash);
  else if (a.attested) w.bytes(a.attested);
  return w.toBuffer();
}
