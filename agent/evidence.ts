/**
 * The TPM work of one certificate request, done in ONE batch of the TPM queue (issue 4 §3: few TPM
 * commands per renewal): load the AK, [activate the enrollment credential,] create + load a new
 * session key (CreateLoaded), certify it with the AK (qualifyingData = nonce), quote the zone's
 * PCRs (qualifyingData = SHA-256(nonce ‖ SHA-256(canonical claims))), and sign the CSR with the
 * new session key. Everything loaded is flushed by the batch.
 *
 * PCR values are read once per process and reused while they still match what the TPM quotes
 * (checked locally against the quote's pcrDigest); only when they changed is PCR_Read issued
 * again, in the same batch. The server checks the reported values against the quote anyway.
 */
import { quoteQualifyingData, type Claims, type Evidence } from '../protocol/api.js';
import {
  TPM_ALG,
  parseAttest,
  parsePublic,
  parseSignature,
  pcrDigest,
  publicKeySpkiDer,
  sessionKeyTemplate,
  signatureToDer,
  type PcrSelection,
} from '../protocol/tpm/index.js';
import type { EkKind, EndorsementKey, KeyBlob, Tpm, TpmSession } from './tpm/index.js';
import { buildCsr } from '../protocol/csr.js';

export interface EvidenceResult {
  evidence: Evidence;
  /** Blobs of the new session key (to be stored before the request is sent). */
  sessionKey: KeyBlob;
  /** The activation secret (enrollment only). */
  secret?: Buffer;
  /** TPM commands the batch used, and which. */
  tpmCommands: number;
  tpmCommandStats: Record<string, number>;
}

export interface EvidenceInput {
  ak: KeyBlob;
  nonce: Buffer;
  claims: Claims;
  /** sha256-bank PCR indices the zone wants quoted. */
  pcrs: number[];
  /** CN put into the CSR (informational; the server sets the certificate subject). */
  commonName: string;
  /** Enrollment: the MakeCredential output to activate. */
  activate?: { credentialBlob: Buffer; encryptedSecret: Buffer; ek: EkKind | EndorsementKey };
}

/** PCR values remembered between renewals (per process). */
const pcrCache = new Map<string, Map<number, Buffer>>();

function statsDelta(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) {
    const d = v - (before[k] ?? 0);
    if (d > 0) out[k] = d;
  }
  return out;
}

export async function produceEvidence(tpm: Tpm, input: EvidenceInput): Promise<EvidenceResult> {
  const pcrs = [...new Set(input.pcrs)].sort((a, b) => a - b);
  const selection: PcrSelection[] = [{ hashAlg: TPM_ALG.SHA256, pcrs }];
  const qualifyingData = quoteQualifyingData(input.nonce, input.claims);
  const cacheKey = `${tpm.tcti}|${pcrs.join(',')}`;
  const countBefore = tpm.commandCount;
  const statsBefore = tpm.commandStats();

  // Enrollment only: activation in its own batch, so a transient EK never competes for a slot.
  const activate = input.activate;
  const secret = activate
    ? await tpm.batch(async (s: TpmSession) => {
        const ak = await s.load(input.ak);
        await s.releaseSrk();
        return s.activateCredential(ak, activate.credentialBlob, activate.encryptedSecret, activate.ek);
      })
    : undefined;

  const out = await tpm.batch(async (s: TpmSession) => {
    const ak = await s.load(input.ak);
    const key = await s.createLoaded(sessionKeyTemplate());
    const certify = await s.certify(key, ak, input.nonce);
    const quote = await s.quote(ak, selection, qualifyingData);

    const quoted = parseAttest(quote.attest).quote?.pcrDigest;
    let values = pcrCache.get(cacheKey);
    if (!values || !quoted || !pcrDigest(TPM_ALG.SHA256, pcrs.map((p) => values!.get(p) ?? Buffer.alloc(0))).equals(quoted)) {
      values = await s.readPcrBank(pcrs, TPM_ALG.SHA256);
      pcrCache.set(cacheKey, values);
    }

    const spki = publicKeySpkiDer(parsePublic(key.public));
    const csr = await buildCsr({
      spki,
      commonName: input.commonName,
      sign: async (_tbs, digest) => signatureToDer(parseSignature(await s.sign(key, digest))),
    });
    return { certify, quote, values, csr, sessionKey: { public: key.public, private: key.private } };
  });

  const pcrValues: Record<string, string> = {};
  for (const p of pcrs) pcrValues[String(p)] = (out.values.get(p) ?? Buffer.alloc(0)).toString('base64');
  const evidence: Evidence = {
    sessionKeyPub: out.sessionKey.public.toString('base64'),
    certify: { attest: out.certify.attest.toString('base64'), signature: out.certify.signature.toString('base64') },
    quote: { attest: out.quote.attest.toString('base64'), signature: out.quote.signature.toString('base64') },
    pcrValues,
    claims: input.claims,
    csr: out.csr.toString('base64'),
  };
  return {
    evidence,
    sessionKey: out.sessionKey,
    ...(secret ? { secret } : {}),
    tpmCommands: tpm.commandCount - countBefore,
    tpmCommandStats: statsDelta(statsBefore, tpm.commandStats()),
  };
}
