/**
 * The server's device-certificate template encoder against the library: the same inputs give the
 * same TBSCertificate byte for byte (generated device ids, zones, CRL URLs, serials with and
 * without the high bit, times before and after 2050 and with milliseconds), and a certificate
 * signed with node:crypto over the template verifies with openssl up to the edgeid root.
 */
import 'reflect-metadata';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync, randomBytes, sign, webcrypto } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import * as x509 from '@peculiar/x509';
import fc from 'fast-check';
import { CertificateAuthority } from '../../enroll-server/ca/ca.js';
import { certificateDer, deviceTbs, deviceTemplate } from '../../enroll-server/ca/device-template.js';
import { readTlv } from '../../enroll-server/ca/der.js';
import { referenceDeviceCertificate } from '../helpers/cert-reference.js';

const RUNS = Number(process.env.FUZZ_RUNS ?? 2_000);
const SEED = Number(process.env.FUZZ_SEED ?? 20261201);

async function openCa(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-template-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const ca = await CertificateAuthority.open({ dir: path.join(dir, 'ca'), hostnames: [] });
  const keyPem = await readFile(path.join(dir, 'ca', 'intermediate.key'), 'utf8');
  const key = createPrivateKey(keyPem);
  const signingKey = await webcrypto.subtle.importKey(
    'pkcs8',
    key.export({ type: 'pkcs8', format: 'der' }),
    { name: 'ECDSA', namedCurve: 'P-256' },
    false,
    ['sign'],
  );
  return { dir, ca, key, signingKey, issuer: new x509.X509Certificate(ca.chainPem[0]!) };
}

const tbsOf = (certDer: Buffer) => readTlv(readTlv(certDer, 0, 'internal_error', 'x').contents, 0, 'internal_error', 'x').raw;

test(`device certificates: the template gives the library's TBSCertificate for ${RUNS} generated inputs`, async (t) => {
  const { ca, signingKey, issuer } = await openCa(t);
  const template = deviceTemplate(Buffer.from(issuer.rawData));
  const keys = Array.from({ length: 4 }, () =>
    generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' }),
  );
  const printable = fc.string({
    unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.:'.split('')),
    minLength: 1,
    maxLength: 140,
  });
  const time = fc.integer({ min: Date.UTC(1990, 0, 1), max: Date.UTC(2060, 0, 1) }).map((ms) => new Date(ms));
  await fc.assert(
    fc.asyncProperty(
      printable,
      printable,
      fc.webUrl({ withQueryParameters: true }),
      fc.uint8Array({ minLength: 16, maxLength: 16 }),
      time,
      time,
      fc.nat(keys.length - 1),
      async (deviceId, zone, crlUrl, serialBytes, notBefore, notAfter, k) => {
        if (serialBytes[0] === 0) serialBytes[0] = 1;
        const p = { serial: Buffer.from(serialBytes).toString('hex'), notBefore, notAfter, deviceId, zone, spki: keys[k]!, crlUrl };
        const ours = deviceTbs(template, p);
        assert.ok(ours, 'the template takes printable ids and ASCII URLs');
        const reference = await referenceDeviceCertificate({ issuer, signingKey, ...p });
        assert.deepEqual(ours.toString('hex'), tbsOf(reference).toString('hex'));
      },
    ),
    { numRuns: RUNS, seed: SEED },
  );
  assert.ok(ca.fingerprint);
});

test('a template certificate signed with node:crypto verifies with openssl to the root and reads back its fields', async (t) => {
  const { dir, ca, key, issuer } = await openCa(t);
  const spki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  const serial = 'ff' + randomBytes(15).toString('hex'); // high bit: DER needs a leading zero
  const now = Date.now();
  const tbs = deviceTbs(deviceTemplate(Buffer.from(issuer.rawData)), {
    serial,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 3_600_000),
    deviceId: 'dev-0123456789abcdef',
    zone: 'line-3',
    spki,
    crlUrl: 'https://edgeid.plant.example:8443/v1/crl',
  })!;
  const der = certificateDer(tbs, sign('sha256', tbs, { key, dsaEncoding: 'der' }));
  const leaf = path.join(dir, 'leaf.pem');
  await writeFile(leaf, new x509.X509Certificate(der).toString('pem') + '\n');
  await writeFile(path.join(dir, 'root.pem'), ca.rootPem);
  await writeFile(path.join(dir, 'inter.pem'), ca.chainPem[0]!);
  const out = execFileSync(
    'openssl',
    ['verify', '-purpose', 'sslclient', '-CAfile', path.join(dir, 'root.pem'), '-untrusted', path.join(dir, 'inter.pem'), leaf],
    { encoding: 'utf8' },
  );
  assert.match(out, /leaf\.pem: OK/);
  const c = new x509.X509Certificate(der);
  assert.equal(c.serialNumber, serial);
  assert.equal(c.subject, 'CN=dev-0123456789abcdef');
  assert.equal(c.getExtension(x509.SubjectAlternativeNameExtension)!.names.items[0]!.value, 'urn:edgeid:line-3:dev-0123456789abcdef');
});

test('inputs the template does not encode (a CN outside PrintableString, a non-ASCII URL) are left to the library', async (t) => {
  const { issuer } = await openCa(t);
  const template = deviceTemplate(Buffer.from(issuer.rawData));
  const base = {
    serial: '01'.repeat(16),
    notBefore: new Date(),
    notAfter: new Date(),
    zone: 'z',
    spki: generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' }),
    crlUrl: 'https://x/v1/crl',
  };
  assert.equal(deviceTbs(template, { ...base, deviceId: 'gerät' }), null);
  assert.equal(deviceTbs(template, { ...base, deviceId: 'a_b' }), null);
  assert.equal(deviceTbs(template, { ...base, deviceId: 'd', crlUrl: 'https://ü/crl' }), null);
});

test("CertificateAuthority.issueDevice issues from the template: the library's TBSCertificate for the same serial and times, the library's PEM, openssl-verified", async (t) => {
  const { dir, ca, signingKey, issuer } = await openCa(t);
  const spki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  const p = { deviceId: 'dev-00112233aabbccdd', zone: 'default', spki, lifetimeSeconds: 3600, crlUrl: 'https://127.0.0.1:8443/v1/crl' };
  const got = await ca.issueDevice(p);
  const reference = await referenceDeviceCertificate({
    issuer,
    signingKey,
    serial: got.serial,
    notBefore: got.notBefore,
    notAfter: got.notAfter,
    ...p,
  });
  assert.equal(tbsOf(got.der).toString('hex'), tbsOf(reference).toString('hex'));
  assert.equal(got.pem, new x509.X509Certificate(got.der).toString('pem') + '\n');
  assert.equal(got.notBefore.getTime() % 1000, 0);
  assert.ok(got.notAfter.getTime() - Date.now() <= 3_600_000 && got.notAfter.getTime() - Date.now() > 3_590_000);
  await writeFile(path.join(dir, 'leaf.pem'), got.pem);
  await writeFile(path.join(dir, 'root.pem'), ca.rootPem);
  await writeFile(path.join(dir, 'inter.pem'), ca.chainPem[0]!);
  const out = execFileSync(
    'openssl',
    ['verify', '-CAfile', path.join(dir, 'root.pem'), '-untrusted', path.join(dir, 'inter.pem'), path.join(dir, 'leaf.pem')],
    { encoding: 'utf8' },
  );
  assert.match(out, /leaf\.pem: OK/);
  // an id outside PrintableString still gets a certificate (the library's encoding)
  const odd = await ca.issueDevice({ ...p, deviceId: 'dev_odd' });
  assert.equal(new x509.X509Certificate(odd.der).subject, 'CN=dev_odd');
});
