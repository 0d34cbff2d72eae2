/**
 * A software device: what an edgeid agent sends, byte for byte, with its TPM replaced by
 * node:crypto — for server-side load and crash tests that need a thousand devices (and for
 * `scripts/bench server`). Never imported by the server.
 *
 * What is exact (TPM 2.0 Library Part 2, "Structures"):
 *  - the AK is a P-256 key in a TPMT_PUBLIC built from the agent's own AK template
 *    (protocol/tpm/templates.ts akTemplate: restricted | sign | fixedTPM | fixedParent |
 *    sensitiveDataOrigin | userWithAuth, ECDSA-SHA256, nameAlg SHA-256) with the key's point filled
 *    in; its TPM name is nameAlg ‖ SHA-256(TPMT_PUBLIC) (Part 1 §16), as the server computes it;
 *  - a session key per certificate from sessionKeyTemplate (unrestricted signing, fixedTPM …);
 *  - TPMS_ATTEST of TPM2_Certify (§10.12.3) and TPM2_Quote (§10.12.4) marshalled with
 *    protocol/tpm marshalAttest, magic TPM_GENERATED_VALUE, clockInfo advancing like a TPM's;
 *  - TPMT_SIGNATURE: ECDSA over SHA-256 of the attest bytes (what a restricted AK signs), r and s
 *    as 32-byte TPM2B_ECC_PARAMETERs;
 *  - the CSR from the agent's own encoder (agent/tpm/csr.ts), signed as TPM2_Sign would
 *    (digest → TPMT_SIGNATURE → signatureToDer).
 * What is not a TPM: the private keys live in this process; qualifiedSigner/qualifiedName are
 * computed as if the keys were children of the owner hierarchy (the server does not check them).
 *
 * Steps, each its own function so a load generator can time and combine them: createSoftDevice →
 * seedSoftDevices (store rows like an enrollment: scripts/harness/seed.ts, crowd.ts) →
 * softClient (keep-alive HTTPS) → challenge → renewRequest → renew.
 */
import { createHash, generateKeyPairSync, randomBytes, sign as nodeSign, type KeyObject } from 'node:crypto';
import https from 'node:https';
import pino from 'pino';
import { buildCsr } from '../../agent/tpm/csr.js';
import { loadConfig } from '../../enroll-server/config.js';
import { createServer } from '../../enroll-server/server.js';
import { createToken } from '../../enroll-server/services/tokens.js';
import { SqliteStore } from '../../enroll-server/store/sqlite.js';
import type { DeviceRecord } from '../../enroll-server/store/store.js';
import { quoteQualifyingData, type Claims, type RenewRequest } from '../../protocol/api.js';
import { marshalAttest } from '../../protocol/tpm/attest.js';
import { TPM_ALG, TPM_GENERATED_VALUE, TPM_ST_ATTEST_CERTIFY, TPM_ST_ATTEST_QUOTE } from '../../protocol/tpm/constants.js';
import { pcrDigest } from '../../protocol/tpm/pcr.js';
import { marshalPublic, objectName, parsePublic, publicKeySpkiDer, type TpmPublic } from '../../protocol/tpm/public.js';
import { marshalSignature, signatureToDer, type TpmSignature } from '../../protocol/tpm/signature.js';
import { akTemplate, sessionKeyTemplate } from '../../protocol/tpm/templates.js';
import { openEnrollmentSession } from './seed.js';

/** TPM_RH_OWNER (Part 2 §7.4): the name of a hierarchy is its handle. */
const OWNER_HIERARCHY_NAME = Buffer.from('40000001', 'hex');

export const SOFT_CLAIMS: Claims = {
  agentVersion: '0.1.0',
  agentHash: 'softdevice',
  configHash: 'softdevice',
  os: { ID: 'debian', VERSION_ID: '12' },
  kernel: '6.1.0',
};

/** A software TPM key: its TPM2B_PUBLIC (as the TPM returns it), parsed form and private key. */
export interface SoftKey {
  /** TPM2B_PUBLIC bytes. */
  public: Buffer;
  parsed: TpmPublic;
  /** nameAlg ‖ SHA-256(TPMT_PUBLIC). */
  name: Buffer;
  privateKey: KeyObject;
  /** The public key as DER SubjectPublicKeyInfo (the session key's, for its CSR). */
  spki?: Buffer;
}

export interface SoftDevice {
  ak: SoftKey;
  /** PCR index → the sha256 bank value this device reports and quotes (fixed: one boot state). */
  pcrValues: Map<number, Buffer>;
  claims: Claims;
  /** TPMS_CLOCK_INFO.clock (ms), advanced by every attest like a TPM's clock. */
  clock: bigint;
  resetCount: number;
  restartCount: number;
  /** Set by seedSoftDevices. */
  deviceId: string | null;
  /** The enrollment token spent by its (seeded) enrollment, to replay. */
  enrollmentToken: string | null;
  /** The next renewal nonce (from the last issuing response or a challenge). */
  nonce: string | null;
  pcrs: number[];
  /** The current certificate (PEM) and its serial (lower-case hex, as the server stores it). */
  certificate: string | null;
  serial: string | null;
  sessionKey: SoftKey | null;
  /** When the held nonce expires (ms since the epoch), from the last challenge or renewal; null: unknown. */
  nonceExpiresAt?: number | null;
}

/** A software P-256 key in the TPMT_PUBLIC of `template` (a TPM2B_PUBLIC with an empty point). */
export function softKey(template: Buffer): SoftKey {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  // the point from the SPKI's uncompressed 04‖x‖y, not from a JWK export: Node 20's JWK export of an
  // EC key can deadlock when a garbage collection during it finalizes a key-generation job (seen
  // as a hang of thousands of software devices; gdb: ExportJWKEcKey → GC → ~KeyGenJob → mutex)
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const point = spki.subarray(-64);
  const t = parsePublic(template);
  const pub = marshalPublic({
    ...t,
    ecc: { ...t.ecc!, x: Buffer.from(point.subarray(0, 32)), y: Buffer.from(point.subarray(32)) },
  });
  const parsed = parsePublic(pub);
  return { public: pub, parsed, name: objectName(parsed), privateKey, spki: Buffer.from(spki) };
}

/** A new device: AK from the agent's AK template, PCRs 0-7 with values of one (random) boot. */
export function createSoftDevice(o: { pcrs?: number[]; claims?: Claims } = {}): SoftDevice {
  const pcrs = o.pcrs ?? [0, 1, 2, 3, 4, 5, 6, 7];
  return {
    ak: softKey(akTemplate()),
    pcrValues: new Map(pcrs.map((i) => [i, createHash('sha256').update(randomBytes(32)).digest()])),
    claims: o.claims ?? { ...SOFT_CLAIMS },
    clock: BigInt(1_000_000 + Math.floor(Math.random() * 1_000_000)),
    resetCount: 1,
    restartCount: 0,
    deviceId: null,
    enrollmentToken: null,
    nonce: null,
    pcrs,
    certificate: null,
    serial: null,
    sessionKey: null,
  };
}

/** A TPM's ECDSA-SHA256 signature over `message` (TPM2_Quote/Certify sign SHA-256 of the attest bytes), as a TPMT_SIGNATURE. */
export function tpmSign(key: KeyObject, message: Buffer): TpmSignature {
  const p1363 = nodeSign('sha256', message, { key, dsaEncoding: 'ieee-p1363' });
  return { sigAlg: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256, ecdsa: { r: p1363.subarray(0, 32), s: p1363.subarray(32) } };
}

/** Qualified name of a child of the owner hierarchy (Part 1 §16: QN = nameAlg ‖ H(QN_parent ‖ name)). */
function qualifiedName(name: Buffer): Buffer {
  return Buffer.concat([name.subarray(0, 2), createHash('sha256').update(OWNER_HIERARCHY_NAME).update(name).digest()]);
}

function attestHeader(dev: SoftDevice, type: number, extraData: Buffer) {
  dev.clock += 7n;
  return {
    magic: TPM_GENERATED_VALUE,
    type,
    qualifiedSigner: qualifiedName(dev.ak.name),
    extraData,
    clockInfo: { clock: dev.clock, resetCount: dev.resetCount, restartCount: dev.restartCount, safe: true },
    firmwareVersion: 0x2000_0000_0001_0000n,
  };
}

/** TPM2_Certify of `key` by the AK with qualifyingData `nonce`: TPMS_ATTEST and its TPMT_SIGNATURE. */
export function certify(dev: SoftDevice, key: SoftKey, nonce: Buffer): { attest: Buffer; signature: Buffer } {
  const attest = marshalAttest({
    ...attestHeader(dev, TPM_ST_ATTEST_CERTIFY, nonce),
    certify: { name: key.name, qualifiedName: qualifiedName(key.name) },
  });
  return { attest, signature: marshalSignature(tpmSign(dev.ak.privateKey, attest)) };
}

/** TPM2_Quote of the sha256 bank `pcrs` by the AK: pcrDigest over the values in ascending order. */
export function quote(dev: SoftDevice, pcrs: number[], qualifyingData: Buffer): { attest: Buffer; signature: Buffer } {
  const sorted = [...pcrs].sort((a, b) => a - b);
  const values = sorted.map((i) => {
    const v = dev.pcrValues.get(i);
    if (!v) throw new Error(`softdevice: no value for PCR ${i}`);
    return v;
  });
  const attest = marshalAttest({
    ...attestHeader(dev, TPM_ST_ATTEST_QUOTE, qualifyingData),
    quote: { pcrSelect: [{ hashAlg: TPM_ALG.SHA256, pcrs: sorted }], pcrDigest: pcrDigest(TPM_ALG.SHA256, values) },
  });
  return { attest, signature: marshalSignature(tpmSign(dev.ak.privateKey, attest)) };
}

/** Ways to build a request wrong on purpose (to prove the server verifies). */
export interface SoftEvidenceOptions {
  /** Flip one byte of the quote's pcrDigest after signing (a tampered quote: quote_bad_signature). */
  tamperQuote?: boolean;
}

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64');

/** The renewal request for `nonce` (base64): a new session key, certify, quote, CSR, PCR values. */
export async function renewRequest(
  dev: SoftDevice,
  nonce: string,
  o: SoftEvidenceOptions = {},
): Promise<{ request: RenewRequest; sessionKey: SoftKey }> {
  if (!dev.deviceId) throw new Error('softdevice: not enrolled (seedSoftDevices)');
  const n = Buffer.from(nonce, 'base64');
  const key = softKey(sessionKeyTemplate());
  const cert = certify(dev, key, n);
  const q = quote(dev, dev.pcrs, quoteQualifyingData(n, dev.claims));
  if (o.tamperQuote) q.attest[q.attest.length - 1]! ^= 0x01;
  const csr = await buildCsr({
    spki: key.spki ?? publicKeySpkiDer(key.parsed),
    // TPM2_Sign of SHA-256(tbs) by an unrestricted ECDSA key = ECDSA-SHA256 over tbs
    sign: async (tbs) => signatureToDer(tpmSign(key.privateKey, tbs)),
  });
  const pcrValues: Record<string, string> = {};
  for (const i of dev.pcrs) pcrValues[String(i)] = b64(dev.pcrValues.get(i)!);
  return {
    sessionKey: key,
    request: {
      deviceId: dev.deviceId,
      nonce,
      sessionKeyPub: b64(key.public),
      certify: { attest: b64(cert.attest), signature: b64(cert.signature) },
      quote: { attest: b64(q.attest), signature: b64(q.signature) },
      pcrValues,
      claims: dev.claims,
      csr: b64(csr),
    },
  };
}

// --- seeding -------------------------------------------------------------------------------------

/**
 * Records `devices` in a server data dir as enrolled and active, through the server's own store
 * and CA, as enroll/finish writes them: a spent enrollment token each, the device's AK public and
 * name as its enrolled AK, a first certificate (`lifetimeSeconds`) for a session key. Sets
 * deviceId, enrollmentToken, certificate, serial. Run it while no server process uses the dir.
 */
export async function seedSoftDevices(
  dataDir: string,
  devices: SoftDevice[],
  o: { zone?: string; owner?: string; lifetimeSeconds?: number; configFile?: Record<string, unknown> } = {},
): Promise<void> {
  const zone = o.zone ?? 'default';
  const owner = o.owner ?? 'softdevice';
  // configFile: the server's own config, when the zone is not the default one
  const config = loadConfig({ argv: ['--data', dataDir, '--listen', '127.0.0.1:0'], env: {}, file: o.configFile ?? {} });
  const server = await createServer({ config, tls: false, logger: pino({ level: 'silent' }), housekeeping: false });
  const ctx = server.ctx;
  // test data written in bulk: no sync per commit (the close at the end checkpoints it to disk)
  if (ctx.store instanceof SqliteStore) ctx.store.db.pragma('synchronous = OFF');
  try {
    // 32 at a time: their writes share commits (the store's group commit)
    const seedOne = async (dev: SoftDevice, i: number) => {
      const t = await createToken(ctx, { zone, owner, name: `soft-${i}` }, { ip: '127.0.0.1', actor: 'admin' });
      const { sessionId, ekHash, now } = await openEnrollmentSession(ctx, t.id);
      const id = `dev-${randomBytes(8).toString('hex')}`;
      const key = softKey(sessionKeyTemplate());
      const spki = publicKeySpkiDer(key.parsed);
      const cert = await ctx.ca.issueDevice({
        deviceId: id,
        zone,
        spki,
        lifetimeSeconds: o.lifetimeSeconds ?? 86400,
        crlUrl: 'https://127.0.0.1/v1/crl',
      });
      const device: DeviceRecord = {
        id,
        zone,
        owner,
        name: `soft-${i}`,
        purpose: null,
        status: 'active',
        statusReason: null,
        ekHash,
        akPub: dev.ak.public,
        akName: dev.ak.name.toString('hex'),
        baseline: null,
        claims: null,
        baselineWindowUntil: null,
        enrolledBy: t.id,
        enrolledAt: now,
        retireBy: null,
        lastSeen: now,
        lastIp: '127.0.0.1',
        statusChangedAt: now,
      };
      const ok = await ctx.store.finishEnrollment({
        tokenId: t.id,
        sessionId,
        now,
        device,
        certificate: {
          serial: cert.serial,
          deviceId: id,
          notBefore: cert.notBefore.getTime(),
          notAfter: cert.notAfter.getTime(),
          spkiHash: createHash('sha256').update(spki).digest('hex'),
          issuedAt: now,
          revokedAt: null,
          reason: null,
        },
        // the enrollment's next nonce is not handed to the device: its first renewal starts with a challenge
        nonce: { value: randomBytes(32).toString('base64'), deviceId: id, createdAt: now, expiresAt: now + 3_600_000, usedAt: null },
        keepNonces: 3,
        audit: {
          time: now,
          actor: 'device',
          event: 'enroll.finish',
          deviceId: id,
          ip: '127.0.0.1',
          outcome: 'ok',
          details: { tokenId: t.id, serial: cert.serial, zone },
        },
      });
      if (ok !== true) throw new Error(`softdevice seed: finishEnrollment said ${JSON.stringify(ok)}`);
      dev.deviceId = id;
      dev.enrollmentToken = t.token;
      dev.certificate = cert.pem;
      dev.serial = cert.serial;
      dev.sessionKey = key;
    };
    for (let i = 0; i < devices.length; i += 32) await Promise.all(devices.slice(i, i + 32).map((d, k) => seedOne(d, i + k)));
  } finally {
    await server.close();
  }
}

// --- HTTP ----------------------------------------------------------------------------------------

export interface SoftResult<T = any> {
  status: number;
  body: T;
}

/** Keep-alive HTTPS to one server, pinned to its root CA: the device side of the API. */
export interface SoftClient {
  post<T = any>(path: string, body: unknown): Promise<SoftResult<T>>;
  /** Closes the pooled connections. */
  close(): void;
}

export function softClient(baseUrl: string, caPem: string, o: { maxSockets?: number; timeoutMs?: number } = {}): SoftClient {
  const agent = new https.Agent({ keepAlive: true, maxSockets: o.maxSockets ?? 256, ca: caPem });
  const once = (path: string, data: Buffer): Promise<SoftResult & { reused?: boolean; error?: NodeJS.ErrnoException }> =>
    new Promise((resolve, reject) => {
      const req = https.request(
        new URL(path, baseUrl),
        {
          method: 'POST',
          agent,
          headers: { 'content-type': 'application/json', 'content-length': data.length },
          timeout: o.timeoutMs ?? 60_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = text;
            try {
              parsed = JSON.parse(text);
            } catch {
              /* not JSON */
            }
            resolve({ status: res.statusCode ?? 0, body: parsed as any });
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`softdevice: ${path} timed out`)));
      req.on('error', (e: NodeJS.ErrnoException) =>
        // a pooled connection the server closed as idle just as it was reused: sent again once on a
        // new one (the pattern the Node docs give for request.reusedSocket)
        req.reusedSocket && e.code === 'ECONNRESET' ? resolve({ status: 0, body: null, reused: true, error: e }) : reject(e),
      );
      req.end(data);
    });
  return {
    async post(path, body) {
      const data = Buffer.from(JSON.stringify(body));
      const r = await once(path, data);
      if (!r.reused) return r;
      return once(path, data).then((again) => {
        if (again.reused) throw again.error;
        return again;
      });
    },
    close: () => agent.destroy(),
  };
}

/** POST /v1/renew/challenge {deviceId}; on 200 the nonce and PCR selection become the device's. */
export async function challenge(dev: SoftDevice, client: SoftClient): Promise<SoftResult> {
  const r = await client.post('/v1/renew/challenge', { deviceId: dev.deviceId });
  if (r.status === 200) {
    dev.nonce = r.body.nonce;
    dev.nonceExpiresAt = Date.parse(r.body.expiresAt);
    dev.pcrs = r.body.pcrs;
  }
  return r;
}

/** What one renewal sent and got (the nonce it spent, the certificate it received). */
export interface RenewOutcome extends SoftResult {
  nonce: string;
  /** Serial (lower-case hex) of the received certificate, on 200. */
  serial?: string;
}

/** POST /v1/renew with the device's current nonce (or `o.nonce`); on 200 the device takes the new certificate and next nonce. */
export async function renew(dev: SoftDevice, client: SoftClient, o: SoftEvidenceOptions & { nonce?: string } = {}): Promise<RenewOutcome> {
  const nonce = o.nonce ?? dev.nonce;
  if (!nonce) throw new Error('softdevice: no nonce (challenge first)');
  const { request, sessionKey } = await renewRequest(dev, nonce, o);
  const r = await client.post('/v1/renew', request);
  if (r.status !== 200) return { ...r, nonce };
  const serial = certificateSerial(r.body.certificate);
  dev.certificate = r.body.certificate;
  dev.serial = serial;
  dev.sessionKey = sessionKey;
  dev.nonce = r.body.renew.nonce;
  dev.nonceExpiresAt = Date.parse(r.body.renew.nonceExpiresAt);
  dev.pcrs = r.body.renew.pcrs;
  return { ...r, nonce, serial };
}

/**
 * The serial of a PEM certificate as the store keeps it: 16 bytes, lower-case hex (enroll-server/ca
 * randomSerial). Read from the DER without a certificate parser (the load generator does this per
 * renewal): Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version, serialNumber INTEGER … } }
 * (RFC 5280 §4.1); test/unit/softdevice-serial.test.ts checks it against X509Certificate.
 */
export function certificateSerial(pem: string): string {
  const der = Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  let at = 0;
  /** the header of the TLV at `at`: its tag, and where its value starts and ends */
  const tlv = () => {
    const tag = der[at]!;
    let len = der[at + 1]!;
    let start = at + 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      if (n < 1 || n > 3) throw new Error('certificateSerial: unexpected DER length');
      len = der.readUIntBE(start, n);
      start += n;
    }
    if (start + len > der.length) throw new Error('certificateSerial: truncated DER');
    return { tag, start, end: start + len };
  };
  const cert = tlv();
  if (cert.tag !== 0x30) throw new Error('certificateSerial: not a certificate');
  at = cert.start;
  const tbs = tlv();
  if (tbs.tag !== 0x30) throw new Error('certificateSerial: not a certificate');
  at = tbs.start;
  let f = tlv();
  if (f.tag === 0xa0) {
    at = f.end;
    f = tlv();
  }
  if (f.tag !== 0x02) throw new Error('certificateSerial: no serial number');
  let s = der.subarray(f.start, f.end).toString('hex');
  // the DER INTEGER's sign octet, when the top bit is set
  while (s.length > 32 && s.startsWith('00')) s = s.slice(2);
  return s;
}

/** An enroll/start body presenting `token` (for replays of a spent token: refused before any key is looked at). */
export function enrollStartBody(dev: SoftDevice, token: string): Record<string, unknown> {
  return { token, ekPub: b64(dev.ak.public), akPub: b64(dev.ak.public) };
}
