import { X509Certificate as NodeX509Certificate } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  BasicConstraints,
  Certificate,
  CertificatePolicies,
  ExtendedKeyUsage,
  KeyUsage,
  SubjectAlternativeName,
  SubjectDirectoryAttributes,
  AuthorityKeyIdentifier,
  SubjectKeyIdentifier,
  id_ce_authorityKeyIdentifier,
  id_ce_basicConstraints,
  id_ce_certificatePolicies,
  id_ce_extKeyUsage,
  id_ce_issuerAltName,
  id_ce_keyUsage,
  id_ce_subjectAltName,
  id_ce_subjectDirectoryAttributes,
  id_ce_subjectKeyIdentifier,
} from '@peculiar/asn1-x509';
import { EdgeidError, type ErrorCode } from '../errors/index.js';
import { publicKeyObject, type TpmPublic } from './public.js';

/** TCG attribute OIDs in an EK certificate's subjectAltName directoryName (EK Credential Profile §3.2.9). */
export const TCG_OID = {
  tpmManufacturer: '2.23.133.2.1',
  tpmModel: '2.23.133.2.2',
  tpmVersion: '2.23.133.2.3',
  ekCertificatePurpose: '2.23.133.8.1',
} as const;

/**
 * Extensions we decode and understand, so they may be critical. Anything else marked critical
 * makes the certificate unacceptable (RFC 5280 §4.2), e.g. nameConstraints or policyConstraints
 * whose semantics we do not enforce.
 */
const UNDERSTOOD_EXTENSIONS: ReadonlyMap<string, (value: ArrayBuffer) => unknown> = new Map<string, (value: ArrayBuffer) => unknown>([
  [id_ce_basicConstraints, (v) => AsnConvert.parse(v, BasicConstraints)],
  [id_ce_keyUsage, (v) => AsnConvert.parse(v, KeyUsage)],
  [id_ce_authorityKeyIdentifier, (v) => AsnConvert.parse(v, AuthorityKeyIdentifier)],
  [id_ce_subjectKeyIdentifier, (v) => AsnConvert.parse(v, SubjectKeyIdentifier)],
  [id_ce_subjectAltName, (v) => AsnConvert.parse(v, SubjectAlternativeName)],
  [id_ce_issuerAltName, (v) => AsnConvert.parse(v, SubjectAlternativeName)],
  [id_ce_certificatePolicies, (v) => AsnConvert.parse(v, CertificatePolicies)],
  [id_ce_extKeyUsage, (v) => AsnConvert.parse(v, ExtendedKeyUsage)],
  [id_ce_subjectDirectoryAttributes, (v) => AsnConvert.parse(v, SubjectDirectoryAttributes)],
]);

const MAX_CHAIN_LENGTH = 6;

/** A certificate as OpenSSL (node:crypto) parsed it: enough to build and verify the chain. */
interface RawCert {
  der: Buffer;
  node: NodeX509Certificate;
}

/** Plus every field we use, decoded up front with @peculiar/asn1-x509 so later steps cannot throw. */
interface Cert extends RawCert {
  subject: string;
  notBefore: Date;
  notAfter: Date;
  extensions: Array<{ oid: string; critical: boolean; value: ArrayBuffer }>;
  basicConstraints: BasicConstraints | null;
}

export interface EkTrust {
  /** DER certificates of the TPM manufacturers' roots (trust anchors). */
  roots: Buffer[];
  /** DER intermediate CA certificates that may be used to build the chain. */
  intermediates?: Buffer[];
}

export interface TpmDeviceInfo {
  /** e.g. 'id:00001014' */
  manufacturer?: string;
  model?: string;
  version?: string;
}

export interface EkCertificateResult {
  /** leaf first, trust anchor last (DER) */
  chain: Buffer[];
  /** TPM manufacturer/model/version from the subjectAltName directoryName, where present. */
  tpm: TpmDeviceInfo;
}

function fail(code: ErrorCode, message?: string, details?: Record<string, unknown>): never {
  throw new EdgeidError(code, message, details);
}

function load(der: Buffer): RawCert {
  const node = new NodeX509Certificate(der);
  // OpenSSL stops at the end of the certificate; bytes after it are not part of any signature
  if (!node.raw.equals(der)) throw new Error('bytes after the certificate or non-DER encoding');
  return { der: Buffer.from(der), node };
}

function decode(raw: RawCert): Cert {
  const tbs = AsnConvert.parse(raw.der, Certificate).tbsCertificate;
  const extensions = (tbs.extensions ?? []).map((e) => ({ oid: e.extnID, critical: e.critical, value: e.extnValue.buffer }));
  const bc = extensions.find((e) => e.oid === id_ce_basicConstraints);
  return {
    ...raw,
    subject: raw.node.subject,
    notBefore: tbs.validity.notBefore.getTime(),
    notAfter: tbs.validity.notAfter.getTime(),
    extensions,
    basicConstraints: bc ? AsnConvert.parse(bc.value, BasicConstraints) : null,
  };
}

/** Trust anchors are parsed once per distinct DER (they come from configuration and repeat on every call). */
const trustCache = new Map<string, Cert>();

function loadTrusted(der: Buffer, what: string): Cert {
  const key = der.toString('base64');
  const cached = trustCache.get(key);
  if (cached) return cached;
  let cert: Cert;
  try {
    cert = decode(load(der));
  } catch (err) {
    // A broken trust anchor is our configuration's fault, not the device's.
    throw new Error(`invalid ${what} certificate in the EK trust configuration: ${(err as Error).message}`);
  }
  if (trustCache.size >= 256) trustCache.clear();
  trustCache.set(key, cert);
  return cert;
}

/** Each critical extension must be one we understand, and each understood one must decode. */
function checkExtensions(cert: Cert, onFailure: ErrorCode): void {
  for (const ext of cert.extensions) {
    const decode = UNDERSTOOD_EXTENSIONS.get(ext.oid);
    if (!decode) {
      if (ext.critical)
        fail(onFailure, `unsupported critical extension ${ext.oid} in ${cert.subject || 'a certificate with an empty subject'}`, {
          oid: ext.oid,
        });
      continue;
    }
    try {
      decode(ext.value);
    } catch {
      fail(onFailure, `extension ${ext.oid} cannot be decoded`, { oid: ext.oid });
    }
  }
}

function issued(child: RawCert, issuer: RawCert): boolean {
  try {
    // checkIssued: issuer name, authority/subject key identifiers, keyCertSign if keyUsage is present
    return child.node.checkIssued(issuer.node) && child.node.verify(issuer.node.publicKey);
  } catch {
    return false;
  }
}

/** Depth-first search for the issuers of a leaf (intermediates*, then a root) in which every signature verifies. */
function buildChain(leaf: RawCert, intermediates: Cert[], roots: Cert[]): Cert[] | null {
  const issuers: Cert[] = [];
  const extend = (cert: RawCert): Cert[] | null => {
    const root = roots.find((r) => issued(cert, r));
    if (root) return [...issuers, root];
    if (issuers.length >= MAX_CHAIN_LENGTH - 2) return null;
    for (const ca of intermediates) {
      if (issuers.includes(ca) || !issued(cert, ca)) continue;
      issuers.push(ca);
      const found = extend(ca);
      if (found) return found;
      issuers.pop();
    }
    return null;
  };
  return extend(leaf);
}

/** TCG TPM attributes from the leaf's subjectAltName directoryName (single- or multi-valued RDNs). */
function tpmDeviceInfo(cert: Cert): TpmDeviceInfo {
  const info: TpmDeviceInfo = {};
  const ext = cert.extensions.find((e) => e.oid === id_ce_subjectAltName);
  if (!ext) return info;
  for (const name of AsnConvert.parse(ext.value, SubjectAlternativeName)) {
    for (const rdn of name.directoryName ?? []) {
      for (const atv of rdn) {
        const value = atv.value.toString();
        if (atv.type === TCG_OID.tpmManufacturer) info.manufacturer = value;
        else if (atv.type === TCG_OID.tpmModel) info.model = value;
        else if (atv.type === TCG_OID.tpmVersion) info.version = value;
      }
    }
  }
  return info;
}

/**
 * Verifies an EK certificate against the configured TPM manufacturer roots and the EK the device
 * presented. Checks, in this order, each failure with its own code:
 *  1. the certificate parses (DER X.509 via OpenSSL; an empty subject is fine) → ek_cert_malformed
 *  2. a chain leaf → intermediates* → root exists in which each certificate is issued by the next
 *     (names, key identifiers, keyCertSign) and its signature verifies      → ek_cert_untrusted
 *     (before any further decoding, so the JS ASN.1 decoder only sees CA-signed bytes)
 *  3. the leaf decodes, every critical extension of it is one we understand (basicConstraints,
 *     keyUsage, subjectAltName incl. the TCG directoryName, certificatePolicies, extendedKeyUsage,
 *     subjectDirectoryAttributes, key identifiers, issuerAltName), and every understood
 *     extension decodes                                                     → ek_cert_malformed
 *  4. every intermediate: no unknown critical extension, basicConstraints CA=true, and its
 *     pathLenConstraint allows the CAs below it                             → ek_cert_untrusted
 *  5. every certificate of the chain (root included) is valid at `at`      → ek_cert_expired
 *  6. the leaf's public key equals the EK's public key                      → ek_cert_key_mismatch
 * Not checked: revocation (TPM vendors rarely publish CRLs for EK CAs), certificate policies and
 * the EK-certificate extended key usage (older vendor certificates lack it).
 * Trust anchors are configuration: a malformed one throws a plain Error, not an EdgeidError.
 */
export function verifyEkCertificate(certDer: Buffer, ekPublic: TpmPublic, trust: EkTrust, at: Date = new Date()): EkCertificateResult {
  let raw: RawCert;
  try {
    raw = load(certDer);
  } catch (err) {
    fail('ek_cert_malformed', `EK certificate cannot be parsed: ${(err as Error).message}`);
  }

  const roots = trust.roots.map((der) => loadTrusted(der, 'root'));
  const intermediates = (trust.intermediates ?? []).map((der) => loadTrusted(der, 'intermediate'));
  const issuers = buildChain(raw, intermediates, roots);
  if (!issuers) fail('ek_cert_untrusted', undefined, { issuer: raw.node.issuer });

  let leaf: Cert;
  try {
    leaf = decode(raw);
  } catch (err) {
    fail('ek_cert_malformed', `EK certificate cannot be decoded: ${(err as Error).message}`);
  }
  checkExtensions(leaf, 'ek_cert_malformed');
  const chain: Cert[] = [leaf, ...issuers];

  chain.slice(1, -1).forEach((ca, below) => {
    checkExtensions(ca, 'ek_cert_untrusted');
    const bc = ca.basicConstraints;
    if (!bc?.cA) fail('ek_cert_untrusted', `intermediate ${ca.subject} is not a CA`);
    // `below` = number of intermediates between this CA and the leaf
    if (bc.pathLenConstraint !== undefined && below > bc.pathLenConstraint)
      fail('ek_cert_untrusted', `path length constraint of ${ca.subject} exceeded`);
  });

  for (const cert of chain) {
    if (at < cert.notBefore || at > cert.notAfter) {
      fail('ek_cert_expired', undefined, {
        subject: cert.subject,
        notBefore: cert.notBefore.toISOString(),
        notAfter: cert.notAfter.toISOString(),
      });
    }
  }

  let certKeyMatches: boolean;
  try {
    certKeyMatches = publicKeyObject(ekPublic).equals(leaf.node.publicKey);
  } catch (err) {
    if (err instanceof EdgeidError) throw err;
    fail('ek_cert_malformed', `EK certificate key cannot be read: ${(err as Error).message}`);
  }
  if (!certKeyMatches) fail('ek_cert_key_mismatch');

  let tpm: TpmDeviceInfo;
  try {
    tpm = tpmDeviceInfo(leaf);
  } catch {
    tpm = {}; // decodability was checked in step 3; this only guards the attribute walk
  }
  return { chain: chain.map((c) => c.der), tpm };
}
