/**
 * Enrollment of a software device (scripts/harness/softdevice.ts) over the real HTTPS API, for
 * load generators: a software EK and TPM2_ActivateCredential in node:crypto. Never imported by
 * the server.
 *
 * The EK is a P-256 key in the TCG EK Credential Profile's template L-2 (protocol/tpm/templates.ts
 * ekTemplateEccP256: SHA-256, AES-128-CFB). It has no EK certificate: the server must accept
 * enrollments without one (ek.requireEkCertificate false, or a zone that opts out).
 *
 * TPM2_ActivateCredential (TPM 2.0 Part 1 §24, Part 3 §12.5), the inverse of
 * protocol/tpm/makecredential.ts:
 *   encryptedSecret = TPM2B_ENCRYPTED_SECRET(TPMS_ECC_POINT Qe)      the server's ephemeral key
 *   Z               = x of d_EK · Qe                                  (one-pass ECDH, SP 800-56A)
 *   seed            = KDFe(nameAlg, Z, "IDENTITY", x_e, x_EK, 256)
 *   credentialBlob  = TPM2B_ID_OBJECT(TPM2B_DIGEST(outerHMAC) ‖ encIdentity)
 *   outerHMAC       must equal HMAC_SHA256(KDFa(nameAlg, seed, "INTEGRITY", -, -, 256), encIdentity ‖ AK name)
 *   secret          = TPM2B_DIGEST in AES-128-CFB⁻¹(KDFa(nameAlg, seed, "STORAGE", AK name, -, 128), IV 0, encIdentity)
 * A credential for another AK name, or altered, fails the HMAC check as TPM_RC_INTEGRITY would.
 */
import { createDecipheriv, createECDH, createHmac, timingSafeEqual } from 'node:crypto';
import type { EnrollStartResponse, IssueResponse } from '../../protocol/api.js';
import { TpmReader } from '../../protocol/tpm/buffer.js';
import { kdfa, kdfe } from '../../protocol/tpm/kdf.js';
import { ekTemplateEccP256 } from '../../protocol/tpm/templates.js';
import { renewRequest, softKey, type SoftClient, type SoftDevice, type SoftKey, type SoftResult } from './softdevice.js';

/** A software EK: P-256 in the EK template L-2 (no certificate). */
export function softEk(): SoftKey {
  return softKey(ekTemplateEccP256());
}

/** TPM2_ActivateCredential with a software ECC EK: the secret bound to `akName`, or an error (integrity). */
export function activateCredential(ek: SoftKey, akName: Buffer, credentialBlob: Buffer, encryptedSecret: Buffer): Buffer {
  const ecc = ek.parsed.ecc;
  if (!ecc) throw new Error('softenroll: the EK is not an ECC key');
  const nameAlg = ek.parsed.nameAlg;
  // TPM2B_ENCRYPTED_SECRET → TPMS_ECC_POINT { TPM2B x, TPM2B y }
  const point = new TpmReader(new TpmReader(encryptedSecret).tpm2b(256, 'TPM2B_ENCRYPTED_SECRET'));
  const ex = point.tpm2b(32, 'ephemeral x');
  const ey = point.tpm2b(32, 'ephemeral y');
  const ecdh = createECDH('prime256v1');
  // d from the SEC 1 ECPrivateKey (RFC 5915: 30 77 02 01 01 04 20 d…), not from a JWK export (see softdevice.ts softKey)
  const sec1 = ek.privateKey.export({ type: 'sec1', format: 'der' });
  if (sec1[5] !== 0x04 || sec1[6] !== 0x20) throw new Error('unexpected SEC 1 encoding of the software EK');
  ecdh.setPrivateKey(sec1.subarray(7, 39));
  const z = ecdh.computeSecret(Buffer.concat([Buffer.from([0x04]), ex, ey]));
  const seed = kdfe(nameAlg, z, 'IDENTITY', ex, ecc.x, 256);
  // TPM2B_ID_OBJECT → TPM2B_DIGEST outerHMAC ‖ encIdentity
  const id = new TpmReader(new TpmReader(credentialBlob).tpm2b(1024, 'TPM2B_ID_OBJECT'));
  const outerHmac = id.tpm2b(64, 'outer HMAC');
  const encIdentity = id.bytes(id.remaining);
  const hmacKey = kdfa(nameAlg, seed, 'INTEGRITY', null, null, 256);
  const expected = createHmac('sha256', hmacKey).update(encIdentity).update(akName).digest();
  if (expected.length !== outerHmac.length || !timingSafeEqual(expected, outerHmac))
    throw new Error('softenroll: credential integrity check failed (TPM_RC_INTEGRITY)');
  const keyBits = ek.parsed.symmetric.keyBits ?? 128;
  const symKey = kdfa(nameAlg, seed, 'STORAGE', akName, null, keyBits);
  const d = createDecipheriv(`aes-${keyBits}-cfb`, symKey, Buffer.alloc(16));
  const plain = Buffer.concat([d.update(encIdentity), d.final()]);
  return new TpmReader(plain).tpm2b(64, 'TPM2B_DIGEST secret');
}

export interface SoftEnrollResult {
  /** The status of the first call that did not answer 200 (start or finish), or 200. */
  status: number;
  body: unknown;
  step: 'start' | 'finish';
}

/**
 * Enrolls `dev` with `token`: enroll/start (EK and AK public areas, no EK certificate) →
 * ActivateCredential → enroll/finish with the evidence for the start's nonce. On 200 the device
 * has its deviceId, certificate and next renewal nonce, as after an agent's enrollment.
 */
export async function softEnroll(
  dev: SoftDevice,
  ek: SoftKey,
  client: SoftClient,
  token: string,
  zone?: string,
): Promise<SoftEnrollResult> {
  const b64 = (b: Buffer) => b.toString('base64');
  const start: SoftResult<EnrollStartResponse> = await client.post('/v1/enroll/start', {
    token,
    ekPub: b64(ek.public),
    akPub: b64(dev.ak.public),
    ...(zone ? { zone } : {}),
  });
  if (start.status !== 200) return { status: start.status, body: start.body, step: 'start' };
  const secret = activateCredential(
    ek,
    dev.ak.name,
    Buffer.from(start.body.credentialBlob, 'base64'),
    Buffer.from(start.body.encryptedSecret, 'base64'),
  );
  dev.pcrs = start.body.pcrs;
  // the evidence is a renewal's without deviceId and nonce (protocol/api.ts Evidence)
  dev.deviceId = 'enrolling';
  const { request, sessionKey } = await renewRequest(dev, start.body.nonce);
  dev.deviceId = null;
  const { deviceId: _d, nonce: _n, ...evidence } = request;
  const finish: SoftResult<IssueResponse> = await client.post('/v1/enroll/finish', {
    session: start.body.session,
    secret: b64(secret),
    ...evidence,
  });
  if (finish.status !== 200) return { status: finish.status, body: finish.body, step: 'finish' };
  dev.deviceId = finish.body.deviceId;
  dev.certificate = finish.body.certificate;
  dev.sessionKey = sessionKey;
  dev.nonce = finish.body.renew.nonce;
  dev.pcrs = finish.body.renew.pcrs;
  dev.enrollmentToken = token;
  return { status: 200, body: finish.body, step: 'finish' };
}
