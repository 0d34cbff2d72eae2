/**
 * Device certificates from a pre-encoded template: the hot path of every renewal. Everything that
 * is the same for every device certificate of one issuing CA (version, signature algorithm, issuer
 * name, the constant extensions, the authority key identifier) is encoded once; per certificate
 * only the serial, the validity, the subject CN, the key, the SAN, the CRL distribution point and
 * the subject key identifier are spliced in. The result is byte for byte the certificate the
 * library builds from the same inputs (test/unit/server-ca-template.test.ts checks it against
 * test/helpers/cert-reference.ts and `openssl verify`). RFC 5280 §4.1 (TBSCertificate) and §4.2
 * (extensions).
 */
import { createHash } from 'node:crypto';
import { EdgeidError } from '../../protocol/errors/index.js';
import { TAG, children, readTlv, tlv, unsignedInteger, x509Time } from './der.js';

/** AlgorithmIdentifier { ecdsa-with-SHA256 }, parameters absent (RFC 5758 §3.2). */
const ECDSA_WITH_SHA256 = Buffer.from('300a06082a8648ce3d040302', 'hex');
/** version [0] EXPLICIT INTEGER 2 (v3). */
const VERSION_V3 = Buffer.from('a003020102', 'hex');
/** basicConstraints, critical, cA FALSE (RFC 5280 §4.2.1.9). */
const EXT_BASIC_CONSTRAINTS = Buffer.from('300c0603551d130101ff04023000', 'hex');
/** keyUsage, critical, digitalSignature (RFC 5280 §4.2.1.3). */
const EXT_KEY_USAGE = Buffer.from('300e0603551d0f0101ff040403020780', 'hex');
/** extKeyUsage clientAuth (RFC 5280 §4.2.1.12). */
const EXT_CLIENT_AUTH = Buffer.from('30130603551d25040c300a06082b06010505070302', 'hex');
const OID_SAN = Buffer.from('0603551d11', 'hex');
const OID_CRL_DP = Buffer.from('0603551d1f', 'hex');
const OID_SKI = Buffer.from('0603551d0e', 'hex');
const OID_AKI = Buffer.from('0603551d23', 'hex');
const OID_COMMON_NAME = Buffer.from('0603550403', 'hex');
/** GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String (RFC 5280 §4.2.1.6). */
const GN_URI = 0x86;

/** PrintableString's characters (X.680 §41.4): what the library encodes a CN in when it can. */
const PRINTABLE = /^[A-Za-z0-9 '()+,\-./:=?]+$/;
const IA5 = /^[\x00-\x7f]*$/;

export interface DeviceTemplate {
  /** The issuing CA's subject Name, DER: the issuer of every certificate. */
  issuerName: Buffer;
  /** The authorityKeyIdentifier extension, DER. */
  authorityKeyId: Buffer;
}

/** The key identifier of RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey BIT STRING's bits. */
export function keyIdentifier(spki: Buffer): Buffer {
  const [, bits] = children(readTlv(spki, 0, 'internal_error', 'a public key').contents, 'internal_error', 'a public key');
  if (!bits || bits.tag !== TAG.BIT_STRING) throw new EdgeidError('internal_error', 'a public key without its BIT STRING');
  return createHash('sha1').update(bits.contents.subarray(1)).digest();
}

/** The constant parts for an issuing CA, from its certificate (DER). Runs once per CA, not per certificate. */
export function deviceTemplate(issuerCertDer: Buffer): DeviceTemplate {
  const what = 'the issuing CA certificate';
  const [tbs] = children(readTlv(issuerCertDer, 0, 'internal_error', what).contents, 'internal_error', what);
  // TBSCertificate: version, serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, …
  const f = children(tbs!.contents, 'internal_error', what);
  const subject = f[5];
  const spki = f[6];
  if (!subject || subject.tag !== TAG.SEQUENCE || !spki || spki.tag !== TAG.SEQUENCE)
    throw new EdgeidError('internal_error', `${what} has no subject or key`);
  const aki = tlv(TAG.SEQUENCE, OID_AKI, tlv(TAG.OCTET_STRING, tlv(TAG.SEQUENCE, tlv(0x80, keyIdentifier(spki.raw)))));
  return { issuerName: Buffer.from(subject.raw), authorityKeyId: aki };
}

export interface DeviceCertificateInput {
  /** Hex, as randomSerial gives it. */
  serial: string;
  notBefore: Date;
  notAfter: Date;
  deviceId: string;
  zone: string;
  /** SPKI DER of the device's session key. */
  spki: Buffer;
  crlUrl: string;
}

/**
 * The TBSCertificate of a device certificate, or null when an input needs an encoding the template
 * does not make (a CN outside PrintableString, a non-ASCII URI): the caller then builds it with the
 * library. Device ids and zones from this server always fit.
 */
export function deviceTbs(t: DeviceTemplate, p: DeviceCertificateInput): Buffer | null {
  const uri = `urn:edgeid:${p.zone}:${p.deviceId}`;
  if (!PRINTABLE.test(p.deviceId) || !IA5.test(uri) || !IA5.test(p.crlUrl)) return null;
  const subject = tlv(
    TAG.SEQUENCE,
    tlv(TAG.SET, tlv(TAG.SEQUENCE, OID_COMMON_NAME, tlv(TAG.PRINTABLE_STRING, Buffer.from(p.deviceId, 'ascii')))),
  );
  const san = tlv(TAG.SEQUENCE, OID_SAN, tlv(TAG.OCTET_STRING, tlv(TAG.SEQUENCE, tlv(GN_URI, Buffer.from(uri, 'ascii')))));
  // DistributionPoint { distributionPoint [0] { fullName [0] { uniformResourceIdentifier } } } (RFC 5280 §4.2.1.13)
  const crlDp = tlv(
    TAG.SEQUENCE,
    OID_CRL_DP,
    tlv(TAG.OCTET_STRING, tlv(TAG.SEQUENCE, tlv(TAG.SEQUENCE, tlv(0xa0, tlv(0xa0, tlv(GN_URI, Buffer.from(p.crlUrl, 'ascii'))))))),
  );
  const ski = tlv(TAG.SEQUENCE, OID_SKI, tlv(TAG.OCTET_STRING, tlv(TAG.OCTET_STRING, keyIdentifier(p.spki))));
  const extensions = tlv(0xa3, tlv(TAG.SEQUENCE, EXT_BASIC_CONSTRAINTS, EXT_KEY_USAGE, EXT_CLIENT_AUTH, san, crlDp, ski, t.authorityKeyId));
  return tlv(
    TAG.SEQUENCE,
    VERSION_V3,
    unsignedInteger(Buffer.from(p.serial, 'hex')),
    ECDSA_WITH_SHA256,
    t.issuerName,
    tlv(TAG.SEQUENCE, x509Time(p.notBefore), x509Time(p.notAfter)),
    subject,
    p.spki,
    extensions,
  );
}

/** Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue } with a DER ECDSA signature. */
export function certificateDer(tbs: Buffer, signatureDer: Buffer): Buffer {
  return tlv(TAG.SEQUENCE, tbs, ECDSA_WITH_SHA256, tlv(TAG.BIT_STRING, Buffer.from([0]), signatureDer));
}
