import 'reflect-metadata';
/**
 * A throwaway software test CA for the TPM TLS tests and the bench: it issues the broker's
 * certificate (software key) and client certificates for TPM-resident keys (only their public
 * keys pass through here). Product certificates come from the edgeid CA; this stands in for it.
 */
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { parsePublic, publicKeySpkiDer } from '../../protocol/tpm/index.js';
import type { KeyBlob } from '../../agent/tpm/index.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALG = { name: 'ECDSA', hash: 'SHA-256' } as const;
const KEY_ALG = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const HOUR = 3600_000;

export interface TestCa {
  caPem: string;
  /** The broker's certificate (CN localhost, SAN localhost + 127.0.0.1) and its PKCS#8 key. */
  server: { certPem: string; keyPem: string };
  /** A client certificate with this CN for the TPM key's public key. */
  issueForTpmKey(key: KeyBlob, cn: string): Promise<string>;
  /** A client certificate for a fresh software key (to test mismatches). */
  issueSoftware(cn: string): Promise<string>;
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

export async function makeTestCa(): Promise<TestCa> {
  const subtle = webcrypto.subtle;
  const caKeys = (await subtle.generateKey(KEY_ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const now = Date.now();
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=edgeid tls test CA',
    notBefore: new Date(now - HOUR),
    notAfter: new Date(now + 24 * HOUR),
    keys: caKeys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    ],
  });
  let serial = 1;
  const issue = async (subject: string, publicKey: x509.PublicKey | webcrypto.CryptoKey, extensions: x509.Extension[]) =>
    x509.X509CertificateGenerator.create({
      serialNumber: (++serial).toString(16).padStart(2, '0'),
      subject,
      issuer: ca.subject,
      notBefore: new Date(now - HOUR),
      notAfter: new Date(now + 24 * HOUR),
      publicKey,
      signingKey: caKeys.privateKey,
      signingAlgorithm: ALG,
      extensions: [new x509.BasicConstraintsExtension(false, undefined, true), ...extensions],
    });

  const serverKeys = (await subtle.generateKey(KEY_ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const serverCert = await issue('CN=localhost', serverKeys.publicKey, [
    new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: 'localhost' }, { type: 'ip', value: '127.0.0.1' }]),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
  ]);
  const clientExtensions = () => [
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
  ];

  return {
    caPem: ca.toString('pem') + '\n',
    server: { certPem: serverCert.toString('pem') + '\n', keyPem: pem('PRIVATE KEY', await subtle.exportKey('pkcs8', serverKeys.privateKey)) },
    async issueForTpmKey(key, cn) {
      const spki = publicKeySpkiDer(parsePublic(key.public));
      const cert = await issue(`CN=${cn}`, new x509.PublicKey(spki), clientExtensions());
      return cert.toString('pem') + '\n';
    },
    async issueSoftware(cn) {
      const keys = (await subtle.generateKey(KEY_ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
      return (await issue(`CN=${cn}`, keys.publicKey, clientExtensions())).toString('pem') + '\n';
    },
  };
}
