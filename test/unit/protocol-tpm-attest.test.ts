import assert from 'node:assert/strict';
import { verify as cryptoVerify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import {
  TPM_ALG,
  TPM_GENERATED_VALUE,
  TPM_ST_ATTEST_CERTIFY,
  TPM_ST_ATTEST_QUOTE,
  marshalAttest,
  marshalPcrSelection,
  marshalSignature,
  objectName,
  parseAttest,
  parsePcrSelection,
  parsePublic,
  parseSignature,
  pcrDigest,
  publicKeyObject,
  signatureToDer,
  verifyTpmSignature,
} from '../../protocol/tpm/index.js';
import { assertCode } from '../helpers/assert.js';

const fixture = (name: string): Buffer => readFileSync(new URL(`../fixtures/tpm/${name}`, import.meta.url));
const quotePcrs = JSON.parse(fixture('quote-pcrs.json').toString()) as { qualifyingData: string; pcrs: Record<string, string> };

test('parses a real tpm2_quote TPMS_ATTEST and its PCR digest matches the quoted values', () => {
  const a = parseAttest(fixture('quote.msg'));
  assert.equal(a.magic, TPM_GENERATED_VALUE);
  assert.equal(a.type, TPM_ST_ATTEST_QUOTE);
  assert.equal(a.extraData.toString('hex'), quotePcrs.qualifyingData);
  assert.deepEqual(a.quote?.pcrSelect, [{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 7] }]);
  assert.equal(a.clockInfo.safe, true);
  const values = Object.keys(quotePcrs.pcrs)
    .map(Number)
    .sort((x, y) => x - y)
    .map((i) => Buffer.from(quotePcrs.pcrs[String(i)]!, 'hex'));
  assert.deepEqual(pcrDigest(TPM_ALG.SHA256, values), a.quote?.pcrDigest);
  assert.deepEqual(marshalAttest(a), fixture('quote.msg'));
});

test('parses a real tpm2_certify TPMS_ATTEST whose certified name is the key name', () => {
  const a = parseAttest(fixture('certify.attest'));
  assert.equal(a.type, TPM_ST_ATTEST_CERTIFY);
  assert.deepEqual(a.certify?.name, objectName(parsePublic(fixture('certified-key.pub'))));
  assert.deepEqual(marshalAttest(a), fixture('certify.attest'));
});

test('real quote and certify signatures verify with the AK and fail on one flipped byte', () => {
  const ak = parsePublic(fixture('ak.pub'));
  for (const [msgFile, sigFile] of [
    ['quote.msg', 'quote.sig'],
    ['certify.attest', 'certify.sig'],
  ] as const) {
    const msg = fixture(msgFile);
    const sig = parseSignature(fixture(sigFile));
    assert.equal(sig.sigAlg, TPM_ALG.ECDSA);
    assert.equal(sig.hashAlg, TPM_ALG.SHA256);
    assert.deepEqual(marshalSignature(sig), fixture(sigFile));
    assert.equal(verifyTpmSignature(ak, msg, sig), true);
    // the DER form verifies with plain node:crypto too
    assert.equal(cryptoVerify('sha256', msg, publicKeyObject(ak), signatureToDer(sig)), true);
    const tampered = Buffer.from(msg);
    tampered[tampered.length - 1]! ^= 1;
    assert.equal(verifyTpmSignature(ak, tampered, sig), false);
  }
});

test('signatureToDer pads a high r with 0x00 and strips leading zeros of s', () => {
  const der = signatureToDer({
    sigAlg: TPM_ALG.ECDSA,
    hashAlg: TPM_ALG.SHA256,
    ecdsa: { r: Buffer.from([0x80, 1]), s: Buffer.from([0, 0, 5]) },
  });
  assert.equal(der.toString('hex'), '3008' + '0203008001' + '020105');
});

test('verifyTpmSignature answers false (never throws) for a signature of the wrong key type', () => {
  const rsaEk = parsePublic(fixture('ek-rsa-persistent.pub'));
  assert.equal(verifyTpmSignature(rsaEk, fixture('quote.msg'), parseSignature(fixture('quote.sig'))), false);
});

test('PCR selections marshal and parse symmetrically with at least a 3-byte bitmap', () => {
  const sel = [
    { hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 7] },
    { hashAlg: TPM_ALG.SHA1, pcrs: [23] },
  ];
  const bytes = marshalPcrSelection(sel);
  assert.equal(bytes.toString('hex'), '00000002' + '000b' + '03' + '8f0000' + '0004' + '03' + '000080');
  assert.deepEqual(parsePcrSelection(bytes), sel);
  assert.equal(marshalPcrSelection([{ hashAlg: TPM_ALG.SHA256, pcrs: [] }]).toString('hex'), '00000001000b03000000');
  // the selection inside the real quote
  assert.deepEqual(
    fixture('quote.msg')
      .subarray(0x55, 0x55 + 10)
      .toString('hex'),
    marshalPcrSelection([{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 7] }]).toString('hex'),
  );
});

test('malformed PCR selections, attests and signatures yield tpm_malformed or tpm_unsupported_algorithm', () => {
  assertCode(() => parsePcrSelection(Buffer.from('00000001000b05ffffffffff', 'hex')), 'tpm_malformed'); // 5-byte bitmap
  assertCode(() => parsePcrSelection(Buffer.from('ffffffff', 'hex')), 'tpm_malformed'); // absurd count
  assertCode(() => parsePcrSelection(Buffer.from('00000001001203ffffff', 'hex')), 'tpm_unsupported_algorithm'); // SM3 bank
  assertCode(() => parsePcrSelection(Buffer.from('00000001000b03ffffff00', 'hex')), 'tpm_malformed'); // trailing byte
  const quote = fixture('quote.msg');
  assertCode(() => parseAttest(quote.subarray(0, quote.length - 1)), 'tpm_malformed');
  assertCode(() => parseAttest(Buffer.concat([quote, Buffer.alloc(1)])), 'tpm_malformed');
  const badSafe = Buffer.from(quote);
  badSafe[4 + 2 + (2 + 34) + (2 + 16) + 8 + 4 + 4]! = 2; // magic, type, qualifiedSigner, extraData, clock, resetCount, restartCount, then safe = 2
  assertCode(() => parseAttest(badSafe), 'tpm_malformed');
  const sig = fixture('quote.sig');
  assertCode(() => parseSignature(Buffer.concat([sig, Buffer.alloc(1)])), 'tpm_malformed');
  assertCode(() => parseSignature(Buffer.from('00050004', 'hex')), 'tpm_unsupported_algorithm'); // HMAC signature
  assertCode(() => parseSignature(Buffer.from('0018000b00430000', 'hex')), 'tpm_malformed'); // r of 67 bytes
});
