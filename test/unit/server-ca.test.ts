import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { stat, readFile } from 'node:fs/promises';
import path from 'node:path';
import * as x509 from '@peculiar/x509';
import { CertificateAuthority } from '../../enroll-server/ca/ca.js';
import { verifyControlCommand } from '../../protocol/control.js';
import { tmpDir } from '../../scripts/harness/fs.js';

/** A CA dir (not yet created) in a fresh temp dir. */
const tmp = async (t: { after: (fn: () => Promise<void>) => void }): Promise<string> => path.join(await tmpDir('edgeid-ca-', t), 'ca');

const spki = () => createPublicKey(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey).export({ type: 'spki', format: 'der' });

test('creates a P-256 root and issuing intermediate once, keys 0600, and reuses them on the next start', async (t) => {
  const dir = await tmp(t);
  const ca = await CertificateAuthority.open({ dir, hostnames: ['edgeid.plant.local'] });
  assert.equal(ca.created, true);
  for (const f of ['root.key', 'intermediate.key', 'server.key', 'control.key'])
    assert.equal((await stat(path.join(dir, f))).mode & 0o777, 0o600, f);
  const root = new X509Certificate(ca.rootPem);
  const inter = new X509Certificate(ca.chainPem[0]!);
  assert.equal(root.ca, true);
  assert.equal(inter.ca, true);
  assert.ok(inter.verify(root.publicKey));
  assert.equal(root.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  const again = await CertificateAuthority.open({ dir, hostnames: ['edgeid.plant.local'] });
  assert.equal(again.created, false);
  assert.equal(again.fingerprint, ca.fingerprint);
});

test('the server TLS certificate names the configured hosts plus localhost and 127.0.0.1 and chains to the root', async (t) => {
  const ca = await CertificateAuthority.open({ dir: await tmp(t), hostnames: ['edgeid.plant.local', '10.1.2.3'] });
  const leaf = new X509Certificate(ca.tls.cert);
  assert.match(leaf.subjectAltName ?? '', /DNS:edgeid\.plant\.local/);
  assert.match(leaf.subjectAltName ?? '', /IP Address:10\.1\.2\.3/);
  assert.match(leaf.subjectAltName ?? '', /DNS:localhost/);
  assert.match(leaf.subjectAltName ?? '', /IP Address:127\.0\.0\.1/);
  assert.ok(leaf.verify(new X509Certificate(ca.chainPem[0]!).publicKey));
});

test('issues a device certificate with every field of the device profile', async (t) => {
  const ca = await CertificateAuthority.open({ dir: await tmp(t), hostnames: [] });
  const key = spki();
  const before = Date.now();
  const c = await ca.issueDevice({
    deviceId: 'dev-0123456789abcdef',
    zone: 'line-3',
    spki: key,
    lifetimeSeconds: 3600,
    crlUrl: 'https://edgeid:8443/v1/crl',
  });
  const cert = new x509.X509Certificate(c.der);
  assert.equal(cert.subject, 'CN=dev-0123456789abcdef');
  assert.deepEqual(cert.getExtension(x509.SubjectAlternativeNameExtension)!.names.toJSON(), [
    { type: 'url', value: 'urn:edgeid:line-3:dev-0123456789abcdef' },
  ]);
  assert.deepEqual([...cert.getExtension(x509.ExtendedKeyUsageExtension)!.usages], ['1.3.6.1.5.5.7.3.2']);
  assert.equal(cert.getExtension(x509.KeyUsagesExtension)!.usages, x509.KeyUsageFlags.digitalSignature);
  assert.equal(cert.getExtension(x509.BasicConstraintsExtension)!.ca, false);
  assert.ok(cert.getExtension(x509.SubjectKeyIdentifierExtension));
  assert.ok(cert.getExtension(x509.AuthorityKeyIdentifierExtension));
  assert.equal(
    cert.getExtension(x509.CRLDistributionPointsExtension)!.distributionPoints[0]!.distributionPoint!.fullName![0]!
      .uniformResourceIdentifier,
    'https://edgeid:8443/v1/crl',
  );
  assert.ok(before - cert.notBefore.getTime() <= 60_000 && before - cert.notBefore.getTime() >= 58_000, 'backdated 60 s');
  assert.equal(Buffer.from(c.serial, 'hex').length, 16);
  assert.ok(Buffer.from(cert.publicKey.rawData).equals(key));
  assert.ok(new X509Certificate(c.der).verify(new X509Certificate(ca.chainPem[0]!).publicKey));
});

test('serials are random and never repeat', async (t) => {
  const ca = await CertificateAuthority.open({ dir: await tmp(t), hostnames: [] });
  const key = spki();
  const serials = new Set<string>();
  for (let i = 0; i < 20; i++)
    serials.add(
      (await ca.issueDevice({ deviceId: 'dev-0123456789abcdef', zone: 'z', spki: key, lifetimeSeconds: 300, crlUrl: 'https://x/v1/crl' }))
        .serial,
    );
  assert.equal(serials.size, 20);
});

test('a CRL lists the revoked serials with reasons, carries its number and a short nextUpdate, in "X509 CRL" PEM', async (t) => {
  const ca = await CertificateAuthority.open({ dir: await tmp(t), hostnames: [] });
  const crl = await ca.createCrl({
    number: 7n,
    validitySeconds: 600,
    entries: [{ serial: 'ab'.repeat(16), revokedAt: new Date(), reason: 'key-compromise' }],
  });
  const parsed = new x509.X509Crl(crl.der);
  assert.equal(parsed.entries.length, 1);
  assert.equal(parsed.entries[0]!.serialNumber, 'ab'.repeat(16));
  assert.equal(parsed.entries[0]!.reason, x509.X509CrlReason.keyCompromise);
  assert.ok(parsed.nextUpdate!.getTime() - Date.now() <= 600_000);
  assert.ok(await parsed.verify({ publicKey: await new x509.X509Certificate(ca.chainPem[0]!).publicKey.export() }));
  assert.match(crl.pem, /^-----BEGIN X509 CRL-----\n/);
  assert.equal(parsed.getExtension('2.5.29.20') !== null, true);
});

test('control commands are signed by a key chained to the CA and verify with protocol/control', async (t) => {
  const dir = await tmp(t);
  const ca = await CertificateAuthority.open({ dir, hostnames: [] });
  const signed = ca.signControl({ type: 'wipe', deviceId: 'dev-0123456789abcdef' });
  const cmd = verifyControlCommand(signed, { deviceId: 'dev-0123456789abcdef', trust: await readFile(path.join(dir, 'root.pem'), 'utf8') });
  assert.equal(cmd.type, 'wipe');
});
