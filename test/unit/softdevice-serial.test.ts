import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { webcrypto, X509Certificate } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { certificateSerial } from '../../scripts/harness/softdevice.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

test('the load generator reads a certificate serial from the DER exactly as X509Certificate does', async () => {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await webcrypto.subtle.generateKey(alg, false, ['sign', 'verify']);
  // 16-byte serials with and without the top bit (a DER sign octet), a short one, and a long subject
  // (a multi-byte DER length in the certificate and the tbsCertificate)
  const serials = ['7f' + '11'.repeat(15), '80' + '22'.repeat(15), 'ff'.repeat(16), '0a' + '00'.repeat(15), '01'];
  for (const [i, serialNumber] of serials.entries()) {
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber,
      name: `CN=serial-${i}${i === 2 ? `, O=${'x'.repeat(400)}` : ''}`,
      notBefore: new Date(),
      notAfter: new Date(Date.now() + 3_600_000),
      keys,
      signingAlgorithm: alg,
    });
    const pem = cert.toString('pem');
    let want = new X509Certificate(pem).serialNumber.toLowerCase();
    while (want.length > 32 && want.startsWith('00')) want = want.slice(2);
    assert.equal(certificateSerial(pem), want, serialNumber);
  }
  assert.throws(() => certificateSerial('-----BEGIN CERTIFICATE-----\nAgEB\n-----END CERTIFICATE-----'), /not a certificate/);
});
