/**
 * Pure parts of the agent's TPM layer: EK policy digests, DER trimming of NV certificates, and the
 * tpm2-tools PCR file layout (the byte-for-byte comparison with tpm2_quote is in
 * test/integration/tpm-cli.test.ts).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { TPMA_OBJECT, TPM_ALG, ekTemplateEccP384, ekTemplateRsa2048, parsePublic } from '../../protocol/tpm/index.js';
import { ekAuthorization, policyOrDigest, policySecretEndorsementDigest, trimDer } from '../../agent/tpm/ek.js';
import { tpm2ToolsPcrsFile } from '../../agent/tpm/tpm2-tools.js';

test('PolicyA and PolicyB digests equal the TCG EK profile constants', () => {
  assert.equal(
    policySecretEndorsementDigest(TPM_ALG.SHA256).toString('hex'),
    '837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa',
  );
  assert.equal(
    policySecretEndorsementDigest(TPM_ALG.SHA384).toString('hex'),
    '8bbf2266537c171cb56e403c4dc1d4b64f432611dc386e6f532050c3278c930e143e8bb1133824ccb431053871c6db53',
  );
  const auth = ekAuthorization(parsePublic(ekTemplateEccP384()));
  assert.equal(
    policyOrDigest(TPM_ALG.SHA384, auth.orDigests).toString('hex'),
    'b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419cacb47ba09699646150f9fc000f3f80e12',
  );
});

test('an EK with an unknown authPolicy and no userWithAuth is tpm_ek_policy_unsupported', () => {
  const ek = parsePublic(ekTemplateRsa2048());
  const odd = { ...ek, authPolicy: Buffer.alloc(32, 0x11) };
  assert.throws(
    () => ekAuthorization(odd),
    (e) => isEdgeidError(e, 'tpm_ek_policy_unsupported'),
  );
  const passwordEk = { ...ek, authPolicy: Buffer.alloc(0), objectAttributes: ek.objectAttributes | TPMA_OBJECT.userWithAuth };
  assert.deepEqual(ekAuthorization(passwordEk), { policyHashAlg: 0, orDigests: [] });
});

test('trimDer drops the padding after a certificate stored in a larger NV index', () => {
  const der = Buffer.concat([Buffer.from([0x30, 0x82, 0x01, 0x00]), Buffer.alloc(256, 7)]);
  assert.deepEqual(trimDer(Buffer.concat([der, Buffer.alloc(100, 0xff)])), der);
  assert.deepEqual(trimDer(Buffer.from([0x30, 0x03, 1, 2, 3, 0, 0])), Buffer.from([0x30, 0x03, 1, 2, 3]));
  assert.deepEqual(trimDer(Buffer.from([0xff, 0xff])), Buffer.from([0xff, 0xff]), 'not DER: unchanged');
});

test('tpm2ToolsPcrsFile lays out the C structures tpm2-tools dumps, eight digests per TPML_DIGEST', () => {
  const selection = [
    { hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 4, 5, 6, 7, 8] },
    { hashAlg: TPM_ALG.SHA384, pcrs: [23] },
  ];
  const values = [...Array.from({ length: 9 }, (_, i) => Buffer.alloc(32, i)), Buffer.alloc(48, 0xee)];
  const f = tpm2ToolsPcrsFile(selection, values);
  assert.equal(f.length, 132 + 4 + 2 * 532);
  assert.equal(f.readUInt32LE(0), 2);
  assert.deepEqual([...f.subarray(4, 12)], [0x0b, 0x00, 3, 0xff, 0x01, 0x00, 0x00, 0]);
  assert.deepEqual([...f.subarray(12, 20)], [0x0c, 0x00, 3, 0x00, 0x00, 0x80, 0x00, 0]);
  assert.equal(f.readUInt32LE(132), 2, 'two TPML_DIGEST');
  assert.equal(f.readUInt32LE(136), 8, 'first list is full');
  assert.equal(f.readUInt16LE(140), 32);
  assert.deepEqual(f.subarray(142, 174), Buffer.alloc(32, 0));
  const second = 136 + 532;
  assert.equal(f.readUInt32LE(second), 2);
  assert.deepEqual(f.subarray(second + 4 + 2, second + 4 + 2 + 32), Buffer.alloc(32, 8));
  assert.equal(f.readUInt16LE(second + 4 + 66), 48);
  assert.throws(() => tpm2ToolsPcrsFile(selection, values.slice(1)), RangeError);
});
