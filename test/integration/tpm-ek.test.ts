/**
 * Endorsement keys on a real swtpm: found in the TCG places, their public keys equal their
 * certificates' keys, the certificates chain to the swtpm-localca root, recreated from the TCG
 * templates when not persistent, and a certificate for another key is refused.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { verifyEkCertificate } from '../../protocol/tpm/ekcert.js';
import { TPMA_OBJECT, TPM_ALG, TPM_ECC_CURVE, parsePublic, publicKeyObject } from '../../protocol/tpm/index.js';
import { ekAuthorization, policyOrDigest, policySecretEndorsementDigest } from '../../agent/tpm/ek.js';
import { Tpm } from '../../agent/tpm/index.js';
import { SWTPM_LOCALCA_ISSUER, SWTPM_LOCALCA_ROOT, startSwtpm } from '../../scripts/harness/swtpm.js';

const run = promisify(execFile);

async function pemToDer(file: string): Promise<Buffer> {
  return Buffer.from(new X509Certificate(await readFile(file)).raw);
}

async function localCaTrust(): Promise<{ roots: Buffer[]; intermediates: Buffer[] }> {
  return { roots: [await pemToDer(SWTPM_LOCALCA_ROOT)], intermediates: [await pemToDer(SWTPM_LOCALCA_ISSUER)] };
}

test("both EKs equal their certificates' keys and the certificates chain to the swtpm-localca root", async (t) => {
  const swtpm = await startSwtpm();
  t.after(() => swtpm.stop());
  const tpm = await Tpm.open(swtpm.tcti);
  t.after(() => tpm.close());
  const trust = await localCaTrust();

  const rsa = await tpm.endorsementKey('rsa');
  assert.equal(rsa.kind, 'rsa');
  assert.equal(rsa.persistentHandle, 0x81010001);
  assert.equal(rsa.certificateIndex, 0x01c00002);
  assert.ok(rsa.certificate);
  const rsaPub = parsePublic(rsa.public);
  assert.equal(rsaPub.type, TPM_ALG.RSA);
  assert.equal(rsaPub.rsa?.keyBits, 2048);
  assert.ok(new X509Certificate(rsa.certificate).publicKey.equals(publicKeyObject(rsaPub)));
  assert.equal(verifyEkCertificate(rsa.certificate, rsaPub, trust).chain.length, 3);

  const ecc = await tpm.endorsementKey('ecc');
  assert.equal(ecc.persistentHandle, 0x81010016);
  assert.equal(ecc.certificateIndex, 0x01c00016);
  assert.ok(ecc.certificate);
  const eccPub = parsePublic(ecc.public);
  assert.equal(eccPub.ecc?.curve, TPM_ECC_CURVE.NIST_P384);
  assert.ok(new X509Certificate(ecc.certificate).publicKey.equals(publicKeyObject(eccPub)));
  assert.equal(verifyEkCertificate(ecc.certificate, eccPub, trust).chain.length, 3);

  assert.deepEqual((await tpm.endorsementKey()).public, rsa.public, 'RSA is the default');
  assert.equal(await tpm.transientHandleCount(), 0);
});

test('the EK policies are worked out from the EK public areas: PolicyA for RSA, PolicyB (OR) for P-384', async (t) => {
  const swtpm = await startSwtpm();
  t.after(() => swtpm.stop());
  const tpm = await Tpm.open(swtpm.tcti);
  t.after(() => tpm.close());

  const rsa = parsePublic((await tpm.endorsementKey('rsa')).public);
  assert.equal(rsa.objectAttributes & TPMA_OBJECT.userWithAuth, 0, 'the RSA EK needs its policy');
  assert.deepEqual(ekAuthorization(rsa), { policyHashAlg: TPM_ALG.SHA256, orDigests: [] });
  assert.equal(
    policySecretEndorsementDigest(TPM_ALG.SHA256).toString('hex'),
    '837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa',
  );

  const ecc = parsePublic((await tpm.endorsementKey('ecc')).public);
  const auth = ekAuthorization(ecc);
  assert.equal(auth.policyHashAlg, TPM_ALG.SHA384);
  assert.equal(auth.orDigests.length, 2);
  assert.deepEqual(policyOrDigest(TPM_ALG.SHA384, auth.orDigests), ecc.authPolicy);
  assert.deepEqual(auth.orDigests[0], policySecretEndorsementDigest(TPM_ALG.SHA384));
});

test('EKs that are not persistent are recreated from the TCG templates and still match their certificates', async (t) => {
  const swtpm = await startSwtpm();
  t.after(() => swtpm.stop());
  for (const handle of ['0x81010001', '0x81010016']) {
    await run('tpm2_evictcontrol', ['-T', swtpm.tcti, '-C', 'o', '-c', handle]);
  }
  const tpm = await Tpm.open(swtpm.tcti);
  t.after(() => tpm.close());
  const trust = await localCaTrust();
  for (const [kind, index] of [
    ['rsa', 0x01c00002],
    ['ecc', 0x01c00016],
  ] as const) {
    const ek = await tpm.endorsementKey(kind);
    assert.equal(ek.persistentHandle, undefined);
    assert.equal(ek.certificateIndex, index);
    assert.ok(ek.template && ek.certificate);
    verifyEkCertificate(ek.certificate, parsePublic(ek.public), trust);
  }
  assert.equal(await tpm.transientHandleCount(), 0, 'the recreated EKs were flushed');
});

test('a TPM without EK certificates or persistent EKs yields the EKs of the low-range templates, uncertified', async (t) => {
  const swtpm = await startSwtpm({ bare: true });
  t.after(() => swtpm.stop());
  const tpm = await Tpm.open(swtpm.tcti);
  t.after(() => tpm.close());
  const rsa = await tpm.endorsementKey();
  assert.equal(rsa.kind, 'rsa');
  assert.equal(rsa.certificate, null);
  assert.equal(rsa.persistentHandle, undefined);
  assert.equal(parsePublic(rsa.public).rsa?.keyBits, 2048);
  const ecc = await tpm.endorsementKey('ecc');
  assert.equal(parsePublic(ecc.public).ecc?.curve, TPM_ECC_CURVE.NIST_P256);
  assert.equal(ecc.certificate, null);
});

test('a certificate in an EK index that matches no EK in the TPM is refused with tpm_ek_mismatch', async (t) => {
  const swtpm = await startSwtpm();
  t.after(() => swtpm.stop());
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-ek-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  // Put the RSA EK's certificate where the ECC P-256 (L-2) EK certificate belongs.
  const tpm0 = await Tpm.open(swtpm.tcti);
  const rsaCert = (await tpm0.endorsementKey('rsa')).certificate!;
  await tpm0.close();
  const file = path.join(dir, 'cert.der');
  await writeFile(file, rsaCert);
  await run('tpm2_nvdefine', [
    '-T',
    swtpm.tcti,
    '0x01c0000a',
    '-C',
    'o',
    '-s',
    String(rsaCert.length),
    '-a',
    'ownerread|ownerwrite|authread|authwrite|no_da',
  ]);
  await run('tpm2_nvwrite', ['-T', swtpm.tcti, '0x01c0000a', '-C', 'o', '-i', file]);

  const tpm = await Tpm.open(swtpm.tcti);
  t.after(() => tpm.close());
  await assert.rejects(tpm.endorsementKey('ecc'), (e) => isEdgeidError(e, 'tpm_ek_mismatch') && /0x1c0000a/.test(e.message));
  assert.equal(await tpm.transientHandleCount(), 0);
});
