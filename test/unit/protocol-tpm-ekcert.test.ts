import 'reflect-metadata';
import assert from 'node:assert/strict';
import { X509Certificate as NodeX509Certificate, webcrypto } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  AttributeTypeAndValue,
  AttributeValue,
  GeneralName,
  Name,
  RelativeDistinguishedName,
  SubjectAlternativeName,
} from '@peculiar/asn1-x509';
import * as x509 from '@peculiar/x509';
import {
  TPM_ALG,
  TPM_ECC_CURVE,
  marshalPublic,
  parsePublic,
  verifyEkCertificate,
  type EkTrust,
  type TpmPublic,
} from '../../protocol/tpm/index.js';
import { assertCode } from '../helpers/assert.js';

x509.cryptoProvider.set(webcrypto as never);
type CryptoKeyPair = webcrypto.CryptoKeyPair;

const fixture = (name: string): Buffer => readFileSync(new URL(`../fixtures/tpm/${name}`, import.meta.url));
const pemToDer = (name: string): Buffer => Buffer.from(new NodeX509Certificate(fixture(name)).raw);

const swtpmTrust: EkTrust = {
  roots: [pemToDer('swtpm-localca-rootca-cert.pem')],
  intermediates: [pemToDer('swtpm-localca-issuercert.pem')],
};
const rsaEk = parsePublic(fixture('ek-rsa-persistent.pub'));
const eccEk = parsePublic(fixture('ek-ecc384-persistent.pub'));

test("accepts swtpm's RSA and P-384 EK certificates chained via swtpm-localca, and reads the TCG SAN", () => {
  for (const [cert, ek] of [
    ['ekcert-rsa.der', rsaEk],
    ['ekcert-ecc384.der', eccEk],
  ] as const) {
    const r = verifyEkCertificate(fixture(cert), ek, swtpmTrust);
    assert.equal(r.chain.length, 3);
    assert.deepEqual(r.chain[0], fixture(cert));
    assert.deepEqual(r.chain[2], swtpmTrust.roots[0]);
    assert.deepEqual(r.tpm, { manufacturer: 'id:00001014', model: 'swtpm', version: 'id:20191023' });
  }
});

test('rejects an EK certificate for another key: ek_cert_key_mismatch', () => {
  assertCode(() => verifyEkCertificate(fixture('ekcert-rsa.der'), eccEk, swtpmTrust), 'ek_cert_key_mismatch');
  assertCode(() => verifyEkCertificate(fixture('ekcert-ecc384.der'), rsaEk, swtpmTrust), 'ek_cert_key_mismatch');
});

test('rejects a check time outside the validity of the chain: ek_cert_expired', () => {
  const notAfter = new NodeX509Certificate(fixture('ekcert-rsa.der')).validTo; // Dec 31 23:59:59 9999 GMT
  assert.match(notAfter, /9999/);
  assertCode(
    () => verifyEkCertificate(fixture('ekcert-rsa.der'), rsaEk, swtpmTrust, new Date('+010000-01-01T00:00:00Z')),
    'ek_cert_expired',
  );
  assertCode(() => verifyEkCertificate(fixture('ekcert-rsa.der'), rsaEk, swtpmTrust, new Date('2001-01-01T00:00:00Z')), 'ek_cert_expired');
});

test('rejects a chain to a foreign root or without the intermediate: ek_cert_untrusted', async () => {
  const foreign = await makeCa('CN=Some Other TPM Vendor Root');
  assertCode(
    () => verifyEkCertificate(fixture('ekcert-rsa.der'), rsaEk, { roots: [foreign.der], intermediates: swtpmTrust.intermediates! }),
    'ek_cert_untrusted',
  );
  assertCode(() => verifyEkCertificate(fixture('ekcert-rsa.der'), rsaEk, { roots: swtpmTrust.roots }), 'ek_cert_untrusted');
  assertCode(() => verifyEkCertificate(fixture('ekcert-rsa.der'), rsaEk, { roots: [] }), 'ek_cert_untrusted');
});

test('rejects an EK certificate whose signature was tampered with: ek_cert_untrusted', () => {
  const der = Buffer.from(fixture('ekcert-rsa.der'));
  der[der.length - 10]! ^= 0x01; // inside the signature value
  assertCode(() => verifyEkCertificate(der, rsaEk, swtpmTrust), 'ek_cert_untrusted');
});

test('rejects bytes that are not a certificate: ek_cert_malformed', () => {
  assertCode(() => verifyEkCertificate(Buffer.from('not a certificate'), rsaEk, swtpmTrust), 'ek_cert_malformed');
  assertCode(() => verifyEkCertificate(fixture('ekcert-rsa.der').subarray(0, 300), rsaEk, swtpmTrust), 'ek_cert_malformed');
  assertCode(() => verifyEkCertificate(Buffer.alloc(0), rsaEk, swtpmTrust), 'ek_cert_malformed');
  // bytes after the certificate are covered by no signature: OpenSSL would ignore them, we do not
  assertCode(
    () => verifyEkCertificate(Buffer.concat([fixture('ekcert-rsa.der'), Buffer.from([0, 0])]), rsaEk, swtpmTrust),
    'ek_cert_malformed',
  );
});

// ---- synthetic chains: empty subject, critical SAN, unknown critical extensions, CA constraints ----

const EC = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

async function makeCa(
  name: string,
  issuer?: { name: string; keys: CryptoKeyPair },
  extra: x509.Extension[] = [],
  ca = true,
  notAfter = new Date('2040-01-01T00:00:00Z'),
): Promise<{ name: string; keys: CryptoKeyPair; der: Buffer }> {
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '01',
    subject: name,
    issuer: issuer?.name ?? name,
    notBefore: new Date('2020-01-01T00:00:00Z'),
    notAfter,
    publicKey: keys.publicKey,
    signingKey: (issuer?.keys ?? keys).privateKey,
    signingAlgorithm: EC,
    extensions: [
      new x509.BasicConstraintsExtension(ca, undefined, true),
      ...(ca ? [new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)] : []),
      ...extra,
    ],
  });
  return { name, keys, der: Buffer.from(cert.rawData) };
}

function tcgSan(critical: boolean): x509.Extension {
  const attr = (type: string, value: string) => new AttributeTypeAndValue({ type, value: new AttributeValue({ utf8String: value }) });
  const dirName = new Name([
    new RelativeDistinguishedName([attr('2.23.133.2.1', 'id:54434700'), attr('2.23.133.2.2', 'EDGE'), attr('2.23.133.2.3', 'id:00070002')]),
  ]);
  const san = new SubjectAlternativeName([new GeneralName({ directoryName: dirName })]);
  return new x509.Extension('2.5.29.17', critical, AsnConvert.serialize(san));
}

/** An EK certificate like the TCG profile describes: empty subject, critical SAN with the TPM attributes. */
async function makeEkCert(
  issuer: { name: string; keys: CryptoKeyPair },
  extra: x509.Extension[] = [],
): Promise<{ der: Buffer; ek: TpmPublic }> {
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
  const jwk = await webcrypto.subtle.exportKey('jwk', keys.publicKey);
  const ek = parsePublic(
    marshalPublic({
      type: TPM_ALG.ECC,
      nameAlg: TPM_ALG.SHA256,
      objectAttributes: 0x000300b2,
      authPolicy: Buffer.alloc(32),
      symmetric: { alg: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB },
      scheme: { alg: TPM_ALG.NULL },
      ecc: {
        curve: TPM_ECC_CURVE.NIST_P256,
        kdf: { alg: TPM_ALG.NULL },
        x: Buffer.from(jwk.x!, 'base64url'),
        y: Buffer.from(jwk.y!, 'base64url'),
      },
    }),
  );
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '1234',
    subject: '',
    issuer: issuer.name,
    notBefore: new Date('2020-01-01T00:00:00Z'),
    notAfter: new Date('2039-01-01T00:00:00Z'),
    publicKey: keys.publicKey,
    signingKey: issuer.keys.privateKey,
    signingAlgorithm: EC,
    extensions: [
      tcgSan(true),
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyAgreement, true),
      new x509.ExtendedKeyUsageExtension(['2.23.133.8.1']),
      new x509.CertificatePolicyExtension(['1.2.840.113741.1.5.2.4'], true),
      ...extra,
    ],
  });
  return { der: Buffer.from(cert.rawData), ek };
}

const at = new Date('2030-06-01T00:00:00Z');

test('accepts an EK certificate with an empty subject and a critical TCG subjectAltName', async () => {
  const root = await makeCa('CN=Test TPM Root');
  const inter = await makeCa('CN=Test TPM EK CA', root);
  const leaf = await makeEkCert(inter);
  assert.equal(new x509.X509Certificate(leaf.der).subject, '');
  const r = verifyEkCertificate(leaf.der, leaf.ek, { roots: [root.der], intermediates: [inter.der] }, at);
  assert.equal(r.chain.length, 3);
  assert.deepEqual(r.tpm, { manufacturer: 'id:54434700', model: 'EDGE', version: 'id:00070002' });
  // a leaf issued by the root directly chains too
  const direct = await makeEkCert(root);
  assert.equal(verifyEkCertificate(direct.der, direct.ek, { roots: [root.der] }, at).chain.length, 2);
});

test('rejects an EK certificate with an unknown critical extension: ek_cert_malformed (non-critical is ignored)', async () => {
  const root = await makeCa('CN=Test TPM Root');
  const unknown = (critical: boolean) => new x509.Extension('1.3.6.1.4.1.55555.1', critical, new Uint8Array([0x05, 0x00]));
  const bad = await makeEkCert(root, [unknown(true)]);
  assertCode(() => verifyEkCertificate(bad.der, bad.ek, { roots: [root.der] }, at), 'ek_cert_malformed');
  const fine = await makeEkCert(root, [unknown(false)]);
  verifyEkCertificate(fine.der, fine.ek, { roots: [root.der] }, at);
});

test('rejects a critical extension we understand but cannot decode: ek_cert_malformed', async () => {
  const root = await makeCa('CN=Test TPM Root');
  const garbage = new x509.Extension('2.5.29.9', true, new Uint8Array([0x04, 0x01, 0x00])); // subjectDirectoryAttributes as an OCTET STRING
  const bad = await makeEkCert(root, [garbage]);
  assertCode(() => verifyEkCertificate(bad.der, bad.ek, { roots: [root.der] }, at), 'ek_cert_malformed');
});

test('rejects an intermediate that is not a CA or carries constraints we do not enforce: ek_cert_untrusted', async () => {
  const root = await makeCa('CN=Test TPM Root');
  const notCa = await makeCa('CN=Not A CA', root, [], false);
  const leaf1 = await makeEkCert(notCa);
  assertCode(() => verifyEkCertificate(leaf1.der, leaf1.ek, { roots: [root.der], intermediates: [notCa.der] }, at), 'ek_cert_untrusted');
  const nameConstraints = new x509.Extension('2.5.29.30', true, new Uint8Array([0x30, 0x00]));
  const constrained = await makeCa('CN=Constrained CA', root, [nameConstraints]);
  const leaf2 = await makeEkCert(constrained);
  assertCode(
    () => verifyEkCertificate(leaf2.der, leaf2.ek, { roots: [root.der], intermediates: [constrained.der] }, at),
    'ek_cert_untrusted',
  );
});

test('rejects a chain whose intermediate has expired at the check time: ek_cert_expired', async () => {
  const root = await makeCa('CN=Test TPM Root');
  const inter = await makeCa('CN=Test TPM EK CA', root, [], true, new Date('2030-01-01T00:00:00Z'));
  const leaf = await makeEkCert(inter); // valid until 2039
  assertCode(() => verifyEkCertificate(leaf.der, leaf.ek, { roots: [root.der], intermediates: [inter.der] }, at), 'ek_cert_expired');
  verifyEkCertificate(leaf.der, leaf.ek, { roots: [root.der], intermediates: [inter.der] }, new Date('2025-01-01T00:00:00Z'));
});
