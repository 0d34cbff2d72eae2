/**
 * The PKCS#10 request for a TPM session key, DER-encoded by hand.
 *
 * Hand-written on purpose (the agent keeps its RSS under 60 MB; a general ASN.1 library would cost several MB): test/helpers/csr-reference.ts builds the same bytes with
 * @peculiar/asn1-csr, but that library family (+ reflect-metadata, asn1js, tslib) costs the running
 * agent about 1 MB of heap for a structure that is fixed here — one CN, an SPKI that
 * publicKeySpkiDer already encoded, no attributes, ECDSA with SHA-256:
 *
 *   CertificationRequest ::= SEQUENCE {
 *     certificationRequestInfo SEQUENCE { version INTEGER 0, subject Name, subjectPKInfo, attributes [0] {} },
 *     signatureAlgorithm AlgorithmIdentifier { ecdsa-with-SHA256 },
 *     signature BIT STRING }
 *
 * test/unit/agent-csr.test.ts checks it byte for byte against test/helpers/csr-reference.ts and with openssl.
 */
import { createHash } from 'node:crypto';

/** DER length octets (definite form). */
function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), derLength(body.length), body]);
}

const SEQUENCE = 0x30;
const SET = 0x31;
const INTEGER = 0x02;
const BIT_STRING = 0x03;
const UTF8_STRING = 0x0c;
const ATTRIBUTES = 0xa0; // [0] IMPLICIT SET OF Attribute, constructed
/** OID 2.5.4.3 (commonName), DER. */
const OID_COMMON_NAME = Buffer.from('0603550403', 'hex');
/** AlgorithmIdentifier { 1.2.840.10045.4.3.2 ecdsa-with-SHA256 } (no parameters), DER. */
const ECDSA_WITH_SHA256 = Buffer.from('300a06082a8648ce3d040302', 'hex');

/**
 * Builds a DER PKCS#10 request for a key whose private half never leaves the TPM: `sign` receives
 * the DER CertificationRequestInfo and its SHA-256 digest (what TPM2_Sign takes) and returns the
 * DER ECDSA signature. Same inputs and output as test/helpers/csr-reference.ts's buildCsr.
 */
export async function buildCsr(p: {
  /** SPKI DER of the key (publicKeySpkiDer of the TPM public area). */
  spki: Buffer;
  sign: (tbs: Buffer, digest: Buffer) => Promise<Buffer>;
  commonName?: string;
}): Promise<Buffer> {
  const subject = tlv(
    SEQUENCE,
    tlv(SET, tlv(SEQUENCE, OID_COMMON_NAME, tlv(UTF8_STRING, Buffer.from(p.commonName ?? 'edgeid-device', 'utf8')))),
  );
  const info = tlv(SEQUENCE, tlv(INTEGER, Buffer.from([0])), subject, p.spki, tlv(ATTRIBUTES));
  const signature = await p.sign(info, createHash('sha256').update(info).digest());
  return tlv(SEQUENCE, info, ECDSA_WITH_SHA256, tlv(BIT_STRING, Buffer.from([0]), signature));
}
