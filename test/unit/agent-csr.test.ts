import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { generateKeyPairSync, sign as nodeSign } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AsnConvert } from '@peculiar/asn1-schema';
import { CertificationRequest } from '@peculiar/asn1-csr';
import { buildCsr } from '../helpers/csr-reference.js';
import { buildCsr as buildCsrDer } from '../../agent/tpm/csr.js';

test("the agent's TPM-style CSR (digest signed as given) verifies with openssl: builds a CSR whose signature over the request info verifies with the given key (openssl req -verify)", async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'edgeid-csr-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  writeFileSync(path.join(dir, 'key.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  // Stand-in for TPM2_Sign: signs the digest as given (no second hash), like the TPM does.
  const sign = async (_tbs: Buffer, digest: Buffer): Promise<Buffer> => {
    writeFileSync(path.join(dir, 'digest'), digest);
    return execFileSync('openssl', ['pkeyutl', '-sign', '-inkey', path.join(dir, 'key.pem'), '-in', path.join(dir, 'digest')]);
  };
  const der = await buildCsr({ spki, commonName: 'dev-42', sign });
  writeFileSync(path.join(dir, 'req.der'), der);
  // openssl exits 0 even when the self-signature fails: judge by what it prints.
  const r = spawnSync('openssl', ['req', '-inform', 'DER', '-in', path.join(dir, 'req.der'), '-verify', '-noout', '-subject'], {
    encoding: 'utf8',
  });
  assert.match(r.stdout + r.stderr, /verify OK/);
  assert.doesNotMatch(r.stdout + r.stderr, /failure/);
  assert.match(r.stdout, /CN ?= ?dev-42/);
  const parsed = AsnConvert.parse(der, CertificationRequest);
  assert.equal(parsed.signatureAlgorithm.algorithm, '1.2.840.10045.4.3.2');
  assert.deepEqual(Buffer.from(AsnConvert.serialize(parsed.certificationRequestInfo.subjectPKInfo)), spki);
});

test("the agent's hand-encoded CSR (agent/tpm/csr.ts) is byte for byte the one @peculiar builds (test/helpers/csr-reference.ts), for short and long names", async () => {
  for (const [curve, commonName] of [
    ['P-256', 'dev-42'],
    ['P-256', 'd'.repeat(200)],
    ['P-384', 'edgeid-enrollment'],
    ['P-256', 'gerät-ü'],
  ] as const) {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: curve });
    const spki = publicKey.export({ type: 'spki', format: 'der' });
    // Any fixed DER ECDSA signature will do (the structure is compared, not verified, here).
    const signature = nodeSign('sha256', Buffer.from('any'), privateKey);
    const tbs: Buffer[] = [];
    const sign = async (info: Buffer): Promise<Buffer> => (tbs.push(info), signature);
    const reference = await buildCsr({ spki, commonName, sign });
    const ours = await buildCsrDer({ spki, commonName, sign });
    assert.deepEqual(ours, reference, `${curve} CN=${commonName.slice(0, 20)}`);
    assert.deepEqual(tbs[1], tbs[0], 'both had the same CertificationRequestInfo signed');
    const parsed = AsnConvert.parse(ours, CertificationRequest);
    assert.deepEqual(Buffer.from(AsnConvert.serialize(parsed.certificationRequestInfo.subjectPKInfo)), spki);
  }
});

test("the agent's hand-encoded CSR verifies with openssl (req -verify) and names the CN", async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'edgeid-csr-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  // Signs the digest as given (TPM2_Sign semantics): ECDSA over SHA-256(tbs) = a normal sha256 signature over tbs.
  const der = await buildCsrDer({ spki, commonName: 'dev-43', sign: async (tbs) => nodeSign('sha256', tbs, privateKey) });
  writeFileSync(path.join(dir, 'req.der'), der);
  const r = spawnSync('openssl', ['req', '-inform', 'DER', '-in', path.join(dir, 'req.der'), '-verify', '-noout', '-subject'], {
    encoding: 'utf8',
  });
  assert.match(r.stdout + r.stderr, /verify OK/);
  assert.doesNotMatch(r.stdout + r.stderr, /failure/);
  assert.match(r.stdout, /CN ?= ?dev-43/);
});
