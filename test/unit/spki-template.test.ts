import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { EdgeidError } from '../../protocol/errors/index.js';
import { TPM_ALG, TPM_ECC_CURVE } from '../../protocol/tpm/constants.js';
import { publicKeySpki, type TpmPublic } from '../../protocol/tpm/public.js';

const ecPublic = (curve: number, x: Buffer, y: Buffer) =>
  ({
    type: TPM_ALG.ECC,
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: 0,
    authPolicy: Buffer.alloc(0),
    ecc: { curve, x, y },
  }) as unknown as TpmPublic;

for (const [name, curve, size] of [
  ['P-256', TPM_ECC_CURVE.NIST_P256, 32],
  ['P-384', TPM_ECC_CURVE.NIST_P384, 48],
] as const) {
  test(`SPKI template (${name}): byte for byte OpenSSL's export, for 300 keys and until 3 points with a leading zero byte`, () => {
    let shortCoordinate = 0;
    for (let i = 0; i < 300 || (shortCoordinate < 3 && i < 20_000); i++) {
      const { publicKey } = generateKeyPairSync('ec', { namedCurve: name });
      const openssl = publicKey.export({ type: 'spki', format: 'der' });
      const point = openssl.subarray(-2 * size);
      let x = point.subarray(0, size);
      let y = point.subarray(size);
      // a TPM may hand a coordinate without its leading zero bytes (TPM2B_ECC_PARAMETER)
      if (x[0] === 0) {
        x = x.subarray(1);
        shortCoordinate++;
      }
      if (y[0] === 0) y = y.subarray(1);
      const { der, key } = publicKeySpki(ecPublic(curve, x, y));
      assert.deepEqual(der, openssl);
      assert.ok(key.equals(publicKey));
    }
    assert.ok(shortCoordinate >= 3, 'x coordinates that start with a zero byte were tried');
  });
}

test('SPKI template: a point not on the curve is refused (tpm_malformed), like the JWK import refused it', () => {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const point = publicKey.export({ type: 'spki', format: 'der' }).subarray(-64);
  const y = Buffer.from(point.subarray(32));
  y[31] = y[31]! ^ 1;
  assert.throws(
    () => publicKeySpki(ecPublic(TPM_ECC_CURVE.NIST_P256, point.subarray(0, 32), y)),
    (e: unknown) => e instanceof EdgeidError && e.code === 'tpm_malformed',
  );
  assert.throws(
    () => publicKeySpki(ecPublic(TPM_ECC_CURVE.NIST_P256, Buffer.alloc(33, 1), point.subarray(32))),
    (e: unknown) => e instanceof EdgeidError && e.code === 'tpm_malformed',
  );
});

test('SPKI: other curves still go through the import and export (P-521)', () => {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-521' });
  const openssl = publicKey.export({ type: 'spki', format: 'der' });
  const point = openssl.subarray(-132);
  const { der } = publicKeySpki(ecPublic(TPM_ECC_CURVE.NIST_P521, point.subarray(0, 66), point.subarray(66)));
  assert.deepEqual(der, openssl);
  assert.ok(createPublicKey({ key: der, format: 'der', type: 'spki' }).equals(publicKey));
});

test('CSR check with the session key already imported: its own key passes, another key is csr_key_mismatch', async () => {
  const { webcrypto } = await import('node:crypto');
  const x509 = await import('@peculiar/x509');
  const { checkCsr } = await import('../../enroll-server/services/csr.js');
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
  const a = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const b = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const csrOf = async (keys: { publicKey: unknown; privateKey: unknown }) =>
    Buffer.from((await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=dev', keys, signingAlgorithm: alg } as never)).rawData);
  const spkiA = Buffer.from(await webcrypto.subtle.exportKey('spki', a.publicKey));
  const keyA = createPublicKey({ key: spkiA, format: 'der', type: 'spki' });
  checkCsr(await csrOf(a), spkiA, keyA);
  const other = await csrOf(b);
  for (const key of [keyA, undefined]) {
    assert.throws(
      () => checkCsr(other, spkiA, key),
      (e: unknown) => e instanceof EdgeidError && e.code === 'csr_key_mismatch',
    );
  }
});
