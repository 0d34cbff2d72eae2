/**
 * The TPM work of one certificate request, done in ONE batch of the TPM queue (budget: ≤ 6 TPM
 * commands per renewal). The SRK and the AK stay loaded between renewals (resident objects of the
 * Tpm, see agent/tpm/session.ts), so a steady-state renewal is exactly:
 *
 *   CreateLoaded  new session key under the resident SRK
 *   Certify       the AK certifies it (qualifyingData = nonce)
 *   Quote         the AK quotes the zone's PCRs (qualifyingData = SHA-256(nonce ‖ SHA-256(claims)))
 *   Sign          the session key signs the CSR
 *   ContextSave   of the session key: the MQTT TLS context for it needs no TPM work of its own
 *   FlushContext  of the session key
 *   = 6, every command counted (`tpmCommands`, from the queue's own count).
 *
 * Extra, and counted too: the first renewal of a process creates the residents (CreatePrimary +
 * Load), PCR_Read runs when the PCRs differ from the values remembered from the last renewal
 * (checked locally against the quote's pcrDigest; the server re-checks anyway), and a stale
 * resident (TPM reset) costs a retry. Enrollment activates the credential in a batch of its own
 * first. A Tpm opened with { keepResidents: false } (the one-shot `edgeid-agent enroll`) loads the
 * SRK and AK for the batch only. The TLS handshake with the new key signs outside the queue (tls.ContextLoad, tls.Sign,
 * tls.FlushContext per full handshake; Tpm.tlsStats()).
 */
import { quoteQualifyingData, type Claims, type Evidence } from '../protocol/api.js';
import { TPM_ALG } from '../protocol/tpm/constants.js';
import { parseAttest } from '../protocol/tpm/attest.js';
import { pcrDigest, type PcrSelection } from '../protocol/tpm/pcr.js';
import { parsePublic, publicKeySpkiDer } from '../protocol/tpm/public.js';
import { parseSignature, signatureToDer, verifyTpmSignature } from '../protocol/tpm/signature.js';
import { sessionKeyTemplate } from '../protocol/tpm/templates.js';
import type { EkKind, EndorsementKey, KeyBlob, Tpm, TpmSession } from './tpm/index.js';
import { buildCsr } from './tpm/csr.js';
import { EdgeidError } from '../protocol/errors/index.js';

export interface EvidenceResult {
  evidence: Evidence;
  /** Blobs of the new session key (to be stored before the request is sent). */
  sessionKey: KeyBlob;
  /** The activation secret (enrollment only). */
  secret?: Buffer;
  /** TPM commands the batch(es) used, every one incl. flushes, and which. */
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

/** Forgets the remembered PCR values, as in a new process (bench, tests). */
export function forgetPcrValues(): void {
  pcrCache.clear();
}

function addStats(into: Record<string, number>, more: Record<string, number>): void {
  for (const [k, v] of Object.entries(more)) into[k] = (into[k] ?? 0) + v;
}

export async function produceEvidence(tpm: Tpm, input: EvidenceInput): Promise<EvidenceResult> {
  const pcrs = [...new Set(input.pcrs)].sort((a, b) => a - b);
  const selection: PcrSelection[] = [{ hashAlg: TPM_ALG.SHA256, pcrs }];
  const qualifyingData = quoteQualifyingData(input.nonce, input.claims);
  const cacheKey = `${tpm.tcti}|${pcrs.join(',')}`;
  const tpmCommandStats: Record<string, number> = {};
  let tpmCommands = 0;

  // Enrollment only: activation in its own batch, so a transient EK never competes for a slot.
  const activate = input.activate;
  let secret: Buffer | undefined;
  if (activate) {
    const act = await tpm.batchWithStats(async (s: TpmSession) => {
      const ak = await s.load(input.ak);
      await s.releaseSrk();
      return s.activateCredential(ak, activate.credentialBlob, activate.encryptedSecret, activate.ek);
    });
    secret = act.result;
    tpmCommands += act.commands;
    addStats(tpmCommandStats, act.commandStats);
  }

  const akPublic = parsePublic(input.ak.public);
  const batch = await tpm.batchWithStats(async (s: TpmSession) => {
    const ak = await s.loadResident(input.ak);
    const key = await s.createLoaded(sessionKeyTemplate());
    const certify = await s.certify(key, ak, input.nonce);
    const quote = await s.quote(ak, selection, qualifyingData);
    // A resident handle that names another object after a TPM reset would sign with the wrong key:
    // check locally (no TPM command) that the AK signed both, else retry with fresh residents.
    for (const a of [certify, quote]) {
      if (!verifyTpmSignature(akPublic, a.attest, parseSignature(a.signature))) {
        s.distrustResidents();
        throw new EdgeidError('tpm_command_failed', 'the attestation key did not sign the evidence the TPM returned');
      }
    }

    const quoted = parseAttest(quote.attest).quote?.pcrDigest;
    let values = pcrCache.get(cacheKey);
    if (
      !values ||
      !quoted ||
      !pcrDigest(
        TPM_ALG.SHA256,
        pcrs.map((p) => values!.get(p) ?? Buffer.alloc(0)),
      ).equals(quoted)
    ) {
      values = await s.readPcrBank(pcrs, TPM_ALG.SHA256);
      pcrCache.set(cacheKey, values);
    }

    const spki = publicKeySpkiDer(parsePublic(key.public));
    const csr = await buildCsr({
      spki,
      commonName: input.commonName,
      sign: async (_tbs, digest) => signatureToDer(parseSignature(await s.sign(key, digest))),
    });
    await s.contextSave(key); // remembered by the Tpm for tlsSecureContext(key)
    await s.flush(key);
    return { certify, quote, values, csr, sessionKey: { public: key.public, private: key.private } };
  });
  const out = batch.result;
  tpmCommands += batch.commands;
  addStats(tpmCommandStats, batch.commandStats);

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
    tpmCommands,
    tpmCommandStats,
  };
}
