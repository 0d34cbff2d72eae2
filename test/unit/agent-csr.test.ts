import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AsnConvert } from '@peculiar/asn1-schema';
import { CertificationRequest } from '@peculiar/asn1-csr';
import { buildCsr } from '../../protocol/csr.js';

test('the agent\'s TPM-style CSR (digest signed as given) verifies with openssl: builds a CSR whose signature over the request info verifies with the given key (openssl req -verify)', async (t) => {
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
  const r = spawnSync('openssl', ['req', '-inform', 'DER', '-in', path.join(dir, 'req.der'), '-verify', '-noout', '-subject'], { encoding: 'utf8' });
  assert.match(r.stdout + r.stderr, /verify OK/);
  assert.doesNotMatch(r.stdout + r.stderr, /failure/);
  assert.match(r.stdout, /CN ?= ?dev-42/);
  const parsed = AsnConvert.parse(der, CertificationRequest);
  assert.equal(parsed.signatureAlgorithm.algorithm, '1.2.840.10045.4.3.2');
  assert.deepEqual(Buffer.from(AsnConvert.serialize(parsed.certificationRequestInfo.subjectPKInfo)), spki);
});
