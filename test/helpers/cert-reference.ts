import 'reflect-metadata';
/**
 * The library-built (@peculiar/x509) device certificate: the reference the server's template
 * encoder (enroll-server/ca/device-template.ts) is checked against, byte for byte. The same
 * extensions, in the same order, as a device certificate has always had.
 */
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

export async function referenceDeviceCertificate(p: {
  issuer: x509.X509Certificate;
  signingKey: webcrypto.CryptoKey;
  serial: string;
  notBefore: Date;
  notAfter: Date;
  deviceId: string;
  zone: string;
  spki: Buffer;
  crlUrl: string;
}): Promise<Buffer> {
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: p.serial,
    subject: `CN=${p.deviceId}`,
    issuer: p.issuer.subject,
    notBefore: p.notBefore,
    notAfter: p.notAfter,
    publicKey: p.spki,
    signingKey: p.signingKey,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `urn:edgeid:${p.zone}:${p.deviceId}` }], false),
      new x509.CRLDistributionPointsExtension([p.crlUrl], false),
      await x509.SubjectKeyIdentifierExtension.create(p.spki),
      await x509.AuthorityKeyIdentifierExtension.create(p.issuer.publicKey),
    ],
  });
  return Buffer.from(cert.rawData);
}
