/**
 * A scripted test "device": drives a real (swtpm) TPM through agent/tpm and speaks the server's
 * API with protocol/ code — enroll/start, activate, enroll/finish, renew/challenge, renew. It is a
 * test client, not the agent: every step is exposed separately, and evidence can be built wrong on
 * purpose (another AK, another nonce, a tampered PCR, a key without fixedTPM, a software CSR key …)
 * for attack tests.
 */
import { generateKeyPairSync, randomBytes, sign as nodeSign } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { Tpm, type EndorsementKey, type KeyBlob } from '../../agent/tpm/index.js';
import {
  quoteQualifyingData,
  type Claims,
  type EnrollFinishRequest,
  type EnrollFinishResponse,
  type EnrollStartRequest,
  type EnrollStartResponse,
  type Evidence,
  type EventLogEvidence,
  type RenewRequest,
  type RenewResponse,
} from '../../protocol/api.js';
import { buildCsr } from './csr-reference.js';
import { TPM_ALG, TPMA_OBJECT } from '../../protocol/tpm/constants.js';
import { marshalPublic, parsePublic, publicKeySpkiDer } from '../../protocol/tpm/public.js';
import { parseSignature, signatureToDer } from '../../protocol/tpm/signature.js';
import { sessionKeyTemplate } from '../../protocol/tpm/templates.js';
import { httpsJson } from '../../scripts/harness/https.js';

export interface HttpResult<T = any> {
  status: number;
  body: T;
}

/** How the device reaches the server: real HTTPS or fastify inject (in-process). */
export interface Transport {
  post<T = any>(path: string, body: unknown): Promise<HttpResult<T>>;
}

export function httpsTransport(baseUrl: string, caPem: string): Transport {
  return { post: (path, body) => httpsJson('POST', new URL(path, baseUrl), { ca: caPem, body }) };
}

export function injectTransport(app: FastifyInstance, opts: { remoteAddress?: string } = {}): Transport {
  return {
    async post(path, body) {
      const res = await app.inject({
        method: 'POST',
        url: path,
        payload: body as object,
        headers: { 'content-type': 'application/json' },
        ...(opts.remoteAddress ? { remoteAddress: opts.remoteAddress } : {}),
      });
      let parsed: unknown = res.body;
      try {
        parsed = res.json();
      } catch {
        /* not JSON */
      }
      return { status: res.statusCode, body: parsed as any };
    },
  };
}

/** Ways to build evidence wrong on purpose (attack tests). */
export interface EvidenceOptions {
  claims?: Claims;
  /** PCRs to quote (default: the server's selection from the last response). */
  pcrs?: number[];
  /** Quote with this AK instead of the device's. */
  quoteAk?: KeyBlob;
  /** Quote with this qualifyingData instead of the right one. */
  quoteQualifyingData?: Buffer;
  /** Report this PCR with a wrong value after quoting. */
  tamperPcr?: number;
  /** Session key template (e.g. without fixedTPM). */
  sessionTemplate?: Buffer;
  /** Certify a different TPM key than the one reported as sessionKeyPub. */
  certifyOtherKey?: boolean;
  /** Sign the CSR with a software key instead of the TPM session key. */
  softwareCsrKey?: boolean;
  /** Send this event log field instead of the device's `eventLog`. */
  eventLog?: EventLogEvidence;
}

export function b64(b: Uint8Array): string {
  return Buffer.from(b).toString('base64');
}

/** A session-key template without fixedTPM/fixedParent (a duplicable key): certify must refuse it. */
export function duplicableKeyTemplate(): Buffer {
  const t = parsePublic(sessionKeyTemplate());
  return marshalPublic({ ...t, objectAttributes: t.objectAttributes & ~(TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent) });
}

export const DEFAULT_CLAIMS: Claims = {
  agentVersion: '0.1.0',
  agentHash: 'test',
  configHash: 'test',
  os: { ID: 'debian', VERSION_ID: '12' },
  kernel: '6.1.0',
};

export class TestDevice {
  deviceId: string | null = null;
  /** The next renewal nonce (from the last issuing response or a challenge). */
  nonce: string | null = null;
  pcrs: number[] = [0, 1, 2, 3, 4, 5, 6, 7];
  certificate: string | null = null;
  chain: string[] = [];
  claims: Claims = { ...DEFAULT_CLAIMS };
  /** The TCG event log field sent with every quote (none by default). */
  eventLog: EventLogEvidence | undefined;
  sessionKey: KeyBlob | null = null;

  private constructor(
    readonly tpm: Tpm,
    readonly ek: EndorsementKey,
    readonly ak: KeyBlob,
  ) {}

  /** Opens the TPM and creates an AK. `ekKind` picks the RSA (default) or ECC EK. */
  static async create(tcti: string, opts: { ekKind?: 'rsa' | 'ecc' } = {}): Promise<TestDevice> {
    const tpm = await Tpm.open(tcti);
    const ek = await tpm.endorsementKey(opts.ekKind ?? 'rsa');
    const ak = await tpm.createAttestationKey();
    return new TestDevice(tpm, ek, ak);
  }

  async close(): Promise<void> {
    await this.tpm.close();
  }

  startRequest(token: string, extra: Partial<EnrollStartRequest> = {}): EnrollStartRequest {
    return {
      token,
      ekPub: b64(this.ek.public),
      ...(this.ek.certificate ? { ekCert: b64(this.ek.certificate) } : {}),
      akPub: b64(this.ak.public),
      ...extra,
    };
  }

  async activate(start: EnrollStartResponse): Promise<Buffer> {
    return this.tpm.activateCredential(
      this.ak,
      Buffer.from(start.credentialBlob, 'base64'),
      Buffer.from(start.encryptedSecret, 'base64'),
      this.ek,
    );
  }

  /** Builds the evidence for `nonce` (base64) in one TPM batch: session key, certify, quote, CSR. */
  async evidence(nonceB64: string, o: EvidenceOptions = {}): Promise<{ evidence: Evidence; sessionKey: KeyBlob }> {
    const nonce = Buffer.from(nonceB64, 'base64');
    const claims = o.claims ?? this.claims;
    const pcrs = o.pcrs ?? this.pcrs;
    const template = o.sessionTemplate ?? sessionKeyTemplate();
    const r = await this.tpm.batch(async (s) => {
      const key = await s.createLoaded(template);
      let certified = key;
      let other: KeyBlob | null = null;
      if (o.certifyOtherKey) {
        await s.flush(key);
        other = await s.create(sessionKeyTemplate());
        certified = { ...(await s.load(other)), private: other.private };
      }
      const ak = await s.load(this.ak);
      const certify = await s.certify(certified, ak, nonce);
      if (o.certifyOtherKey) await s.flush(certified);
      let quoteAk = ak;
      if (o.quoteAk) {
        await s.flush(ak);
        quoteAk = await s.load(o.quoteAk);
      }
      const quote = await s.quote(
        quoteAk,
        [{ hashAlg: TPM_ALG.SHA256, pcrs }],
        o.quoteQualifyingData ?? quoteQualifyingData(nonce, claims),
      );
      await s.flush(quoteAk);
      const values = await s.readPcrBank(pcrs);
      // re-load the session key if we flushed it
      const signer = o.certifyOtherKey ? await s.load(key) : key;
      const pub = parsePublic(key.public);
      let csr: Buffer;
      if (o.softwareCsrKey) {
        const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
        csr = await buildCsr({
          spki: publicKey.export({ type: 'spki', format: 'der' }),
          sign: async (tbs) => nodeSign('sha256', tbs, privateKey),
        });
      } else {
        csr = await buildCsr({
          spki: publicKeySpkiDer(pub),
          sign: async (_tbs, digest) => signatureToDer(parseSignature(await s.sign(signer, digest))),
        });
      }
      return { key: { public: key.public, private: key.private }, certify, quote, values, csr };
    });
    const pcrValues: Record<string, string> = {};
    for (const [k, v] of r.values) pcrValues[String(k)] = b64(v);
    if (o.tamperPcr !== undefined) pcrValues[String(o.tamperPcr)] = b64(randomBytes(32));
    return {
      sessionKey: r.key,
      evidence: {
        sessionKeyPub: b64(r.key.public),
        certify: { attest: b64(r.certify.attest), signature: b64(r.certify.signature) },
        quote: { attest: b64(r.quote.attest), signature: b64(r.quote.signature) },
        pcrValues,
        claims,
        csr: b64(r.csr),
        ...((o.eventLog ?? this.eventLog) ? { eventLog: o.eventLog ?? this.eventLog } : {}),
      },
    };
  }

  /** Records an issuing response (certificate, next nonce, PCR selection). */
  accept(res: EnrollFinishResponse | RenewResponse, sessionKey: KeyBlob): void {
    this.deviceId = res.deviceId;
    this.certificate = res.certificate;
    this.chain = res.chain;
    this.nonce = res.renew.nonce;
    this.pcrs = res.renew.pcrs;
    this.sessionKey = sessionKey;
  }

  /** enroll/start + ActivateCredential + enroll/finish; throws with the error body on a non-200. */
  async enroll(t: Transport, token: string, extra: Partial<EnrollStartRequest> = {}): Promise<EnrollFinishResponse> {
    const start = await t.post<EnrollStartResponse>('/v1/enroll/start', this.startRequest(token, extra));
    if (start.status !== 200) throw new DeviceHttpError('enroll/start', start);
    this.pcrs = start.body.pcrs;
    const secret = await this.activate(start.body);
    const { evidence, sessionKey } = await this.evidence(start.body.nonce);
    const finish = await t.post<EnrollFinishResponse>('/v1/enroll/finish', {
      session: start.body.session,
      secret: b64(secret),
      ...evidence,
    });
    if (finish.status !== 200) throw new DeviceHttpError('enroll/finish', finish);
    this.accept(finish.body, sessionKey);
    return finish.body;
  }

  /** Asks for a fresh nonce; the result body is the response or an error body. */
  async challenge(t: Transport): Promise<HttpResult> {
    const r = await t.post('/v1/renew/challenge', { deviceId: this.deviceId });
    if (r.status === 200) {
      this.nonce = r.body.nonce;
      this.pcrs = r.body.pcrs;
    }
    return r;
  }

  /** Builds a renewal request with the current (or a given) nonce. */
  async renewRequest(
    o: EvidenceOptions & { nonce?: string; deviceId?: string } = {},
  ): Promise<{ request: RenewRequest; sessionKey: KeyBlob }> {
    const nonce = o.nonce ?? this.nonce;
    if (!nonce || !this.deviceId) throw new Error('device is not enrolled');
    const { evidence, sessionKey } = await this.evidence(nonce, o);
    return { request: { deviceId: o.deviceId ?? this.deviceId, nonce, ...evidence }, sessionKey };
  }

  /** One renewal; records the response on success and returns the raw result either way. */
  async renew(t: Transport, o: EvidenceOptions & { nonce?: string } = {}): Promise<HttpResult> {
    const { request, sessionKey } = await this.renewRequest(o);
    const r = await t.post('/v1/renew', request);
    if (r.status === 200) this.accept(r.body, sessionKey);
    return r;
  }
}

export class DeviceHttpError extends Error {
  constructor(
    readonly step: string,
    readonly result: HttpResult,
  ) {
    super(`${step}: HTTP ${result.status} ${JSON.stringify(result.body)}`);
  }
}
