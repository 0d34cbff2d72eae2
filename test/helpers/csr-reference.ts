import 'reflect-metadata';
/** The library-built (@peculiar/asn1-csr) PKCS#10 builder: the reference the agent's hand-encoded CSR (agent/tpm/csr.ts) is checked against, and the test devices' CSR builder. */
import { createHash } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import { CertificationRequest, CertificationRequestInfo } from '@peculiar/asn1-csr';
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  AttributeValue,
  Name,
  RelativeDistinguishedName,
  SubjectPublicKeyInfo,
} from '@peculiar/asn1-x509';

const ECDSA_WITH_SHA256 = '1.2.840.10045.4.3.2';
const COMMON_NAME = '2.5.4.3';

/**
 * Builds a DER PKCS#10 request for a key whose private half never leaves the TPM: the caller
 * signs the CertificationRequestInfo (a TPM signs its SHA-256 digest with TPM2_Sign, then
 * signatureToDer) and returns the DER ECDSA signature. The server ignores the subject (it sets CN = deviceId).
 */
export async function buildCsr(p: {
  /** SPKI DER of the key (publicKeySpkiDer of the TPM public area). */
  spki: Buffer;
  /**
   * Returns a DER ECDSA-SHA256 signature over `tbs` (the DER CertificationRequestInfo); `digest` is
   * SHA-256(tbs) for signers that take a digest (TPM2_Sign).
   */
  sign: (tbs: Buffer, digest: Buffer) => Promise<Buffer>;
  commonName?: string;
}): Promise<Buffer> {
  const subject = new Name([
    new RelativeDistinguishedName([
      new AttributeTypeAndValue({ type: COMMON_NAME, value: new AttributeValue({ utf8String: p.commonName ?? 'edgeid-device' }) }),
    ]),
  ]);
  const info = new CertificationRequestInfo({
    version: 0,
    subject,
    subjectPKInfo: AsnConvert.parse(p.spki, SubjectPublicKeyInfo),
  });
  const tbs = Buffer.from(AsnConvert.serialize(info));
  const signature = await p.sign(tbs, createHash('sha256').update(tbs).digest());
  const csr = new CertificationRequest({
    certificationRequestInfo: info,
    signatureAlgorithm: new AlgorithmIdentifier({ algorithm: ECDSA_WITH_SHA256 }),
    signature: new Uint8Array(signature).buffer,
  });
  return Buffer.from(AsnConvert.serialize(csr));
}
