import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import { EdgeidError } from '../../protocol/errors/index.js';
import { TAG, children as derChildren, readTlv as readDer, type Tlv } from '../ca/der.js';

/**
 * The server's check of a device's PKCS#10 request (RFC 2986 §4), read strictly as DER (X.690 §10)
 * without a general ASN.1 library: the request is one value with nothing after it, every length
 * is definite and minimal, the signature algorithm is ecdsa-with-SHA256 (RFC 5758 §3.2, what a TPM
 * session key made from the agent's template signs with), and the signature verifies over the
 * CertificationRequestInfo's exact bytes with the request's own key. The subject and the
 * attributes are not used (the server names the certificate itself) but must be well-formed.
 */

/** AlgorithmIdentifier { 1.2.840.10045.4.3.2 ecdsa-with-SHA256 }, parameters absent (RFC 5758 §3.2). */
const ECDSA_WITH_SHA256 = Buffer.from('300a06082a8648ce3d040302', 'hex');
const ATTRIBUTES = 0xa0;

const WHAT = 'the CSR';
const readTlv = (buf: Buffer, off: number) => readDer(buf, off, 'csr_malformed', WHAT);
const children = (contents: Buffer) => derChildren(contents, 'csr_malformed', WHAT);

function malformed(why: string): EdgeidError {
  return new EdgeidError('csr_malformed', `the CSR is not valid: ${why}`);
}

function expectTag(t: Tlv | undefined, tag: number, what: string): Tlv {
  if (!t || t.tag !== tag) throw malformed(`${what} expected`);
  return t;
}

/** Name (RFC 5280 §4.1.2.4): a SEQUENCE of SETs of SEQUENCEs, each well-formed DER. */
function checkName(name: Tlv): void {
  for (const rdn of children(name.contents)) {
    expectTag(rdn, TAG.SET, 'RelativeDistinguishedName');
    for (const atv of children(rdn.contents)) {
      const parts = children(expectTag(atv, TAG.SEQUENCE, 'AttributeTypeAndValue').contents);
      if (parts.length !== 2 || parts[0]!.tag !== TAG.OID) throw malformed('AttributeTypeAndValue');
    }
  }
}

export interface ParsedCsr {
  /** The CertificationRequestInfo's DER bytes: what was signed. */
  info: Buffer;
  spki: Buffer;
  signature: Buffer;
}

/** Parses a PKCS#10 request strictly (see above); throws csr_malformed. */
export function parseCsr(der: Buffer): ParsedCsr {
  const outer = expectTag(readTlv(der, 0), TAG.SEQUENCE, 'CertificationRequest');
  if (outer.raw.length !== der.length) throw malformed('bytes after the request');
  const [info, alg, sig, ...rest] = children(outer.contents);
  if (rest.length) throw malformed('extra fields in CertificationRequest');
  expectTag(info, TAG.SEQUENCE, 'CertificationRequestInfo');
  if (!alg || !alg.raw.equals(ECDSA_WITH_SHA256)) throw malformed('signature algorithm is not ecdsa-with-SHA256');
  expectTag(sig, TAG.BIT_STRING, 'signature');
  if (sig!.contents.length < 2 || sig!.contents[0] !== 0) throw malformed('signature BIT STRING');
  const [version, subject, spki, attributes, ...more] = children(info!.contents);
  if (more.length) throw malformed('extra fields in CertificationRequestInfo');
  if (!version || !version.raw.equals(Buffer.from([TAG.INTEGER, 1, 0]))) throw malformed('version is not v1(0)');
  checkName(expectTag(subject, TAG.SEQUENCE, 'subject'));
  const key = children(expectTag(spki, TAG.SEQUENCE, 'subjectPKInfo').contents);
  if (key.length !== 2 || key[0]!.tag !== TAG.SEQUENCE || key[1]!.tag !== TAG.BIT_STRING) throw malformed('subjectPKInfo');
  for (const a of children(expectTag(attributes, ATTRIBUTES, 'attributes').contents)) expectTag(a, TAG.SEQUENCE, 'Attribute');
  return { info: info!.raw, spki: spki!.raw, signature: sig!.contents.subarray(1) };
}

/**
 * Checks a device's request for the session key `spki` (SPKI DER), in this order: strict DER
 * (csr_malformed), the signature with the request's own key (csr_bad_signature), the request's
 * key is the certified session key, compared as keys (csr_key_mismatch).
 */
export function checkCsr(der: Buffer, spki: Buffer, spkiKey?: KeyObject): void {
  const c = csrKey(der, spki, spkiKey);
  let ok = false;
  try {
    ok = verify('sha256', c.csr.info, { key: c.key, dsaEncoding: 'der' }, c.csr.signature);
  } catch {
    ok = false;
  }
  keyMatches(c, ok, spki);
}

/** checkCsr with the signature checked in libuv's thread pool (node:crypto `verify` with a callback); same checks and codes. */
export async function checkCsrAsync(der: Buffer, spki: Buffer, spkiKey?: KeyObject): Promise<void> {
  const c = csrKey(der, spki, spkiKey);
  const ok = await new Promise<boolean>((resolve) => {
    try {
      verify('sha256', c.csr.info, { key: c.key, dsaEncoding: 'der' }, c.csr.signature, (err, v) => resolve(!err && v));
    } catch {
      resolve(false);
    }
  });
  keyMatches(c, ok, spki);
}

/** The parsed request and its key (an EC key, or csr_bad_signature). */
function csrKey(der: Buffer, spki: Buffer, spkiKey?: KeyObject): { csr: ParsedCsr; key: KeyObject; same: boolean } {
  const csr = parseCsr(der);
  // the usual case: the request carries the session key's SPKI byte for byte, already imported
  // by the caller (`spkiKey`, the KeyObject of `spki`), so it is neither imported nor exported again
  const same = spkiKey !== undefined && csr.spki.equals(spki);
  let key: KeyObject;
  try {
    key = same ? spkiKey : createPublicKey({ key: csr.spki, format: 'der', type: 'spki' });
  } catch {
    throw new EdgeidError('csr_bad_signature', 'the CSR key cannot be read, so its signature cannot be verified');
  }
  if (key.asymmetricKeyType !== 'ec') throw new EdgeidError('csr_bad_signature');
  return { csr, key, same };
}

function keyMatches(c: { key: KeyObject; same: boolean }, signatureOk: boolean, spki: Buffer): void {
  // OpenSSL decodes the DER ECDSA-Sig-Value and re-encodes it before it verifies, so a signature
  // that is not exactly DER fails too
  if (!signatureOk) throw new EdgeidError('csr_bad_signature');
  // compared as keys, not as the CSR's bytes: an SPKI has more than one encoding of one key (e.g.
  // a compressed EC point, SEC 1 §2.3.3), so both sides go through node:crypto's DER export
  if (!c.same && !c.key.export({ type: 'spki', format: 'der' }).equals(spki)) throw new EdgeidError('csr_key_mismatch');
}
