import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import type { ErrorCode } from '../../protocol/errors/index.js';
import {
  AK_ATTRIBUTES,
  SESSION_KEY_ATTRIBUTES,
  TPMA_OBJECT,
  TPM_ALG,
  TPM_ECC_CURVE,
  TPM_GENERATED_VALUE,
  TPM_ST_ATTEST_CERTIFY,
  TPM_ST_ATTEST_QUOTE,
  checkAkPublic,
  marshalAttest,
  marshalPublic,
  marshalSignature,
  objectName,
  parsePublic,
  pcrDigest,
  verifyCertify,
  verifyCertifyAsync,
  verifyQuote,
  verifyQuoteAsync,
  type TpmPublic,
  type TpmsAttest,
} from '../../protocol/tpm/index.js';
import { assertCode } from '../helpers/assert.js';

const fixture = (name: string): Buffer => readFileSync(new URL(`../fixtures/tpm/${name}`, import.meta.url));

/** An ECC P-256 key in node:crypto and as the TPM public area a TPM would report for it. */
function eccKey(
  attributes: number,
  scheme: TpmPublic['scheme'] = { alg: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 },
): { privateKey: KeyObject; pub: TpmPublic } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = publicKey.export({ format: 'jwk' });
  const pub = parsePublic(
    marshalPublic({
      type: TPM_ALG.ECC,
      nameAlg: TPM_ALG.SHA256,
      objectAttributes: attributes,
      authPolicy: Buffer.alloc(0),
      symmetric: { alg: TPM_ALG.NULL },
      scheme,
      ecc: {
        curve: TPM_ECC_CURVE.NIST_P256,
        kdf: { alg: TPM_ALG.NULL },
        x: Buffer.from(jwk.x!, 'base64url'),
        y: Buffer.from(jwk.y!, 'base64url'),
      },
    }),
  );
  return { privateKey, pub };
}

/** What TPM2_Sign with ECDSA would return for these bytes: TPMT_SIGNATURE. */
function tpmSign(key: KeyObject, message: Buffer, hashAlg: number = TPM_ALG.SHA256): Buffer {
  const hash = hashAlg === TPM_ALG.SHA384 ? 'sha384' : 'sha256';
  const rs = sign(hash, message, { key, dsaEncoding: 'ieee-p1363' });
  return marshalSignature({ sigAlg: TPM_ALG.ECDSA, hashAlg, ecdsa: { r: rs.subarray(0, 32), s: rs.subarray(32) } });
}

function attestBase(type: number, extraData: Buffer): TpmsAttest {
  return {
    magic: TPM_GENERATED_VALUE,
    type,
    qualifiedSigner: Buffer.concat([Buffer.from([0, 0x0b]), randomBytes(32)]),
    extraData,
    clockInfo: { clock: 123456n, resetCount: 3, restartCount: 0, safe: true },
    firmwareVersion: 0x2019102300163636n,
  };
}

const ak = eccKey(AK_ATTRIBUTES);
const nonce = createHash('sha256').update('nonce').digest();
const pcrValues = new Map<number, Buffer>([0, 1, 2, 3, 7].map((i) => [i, createHash('sha256').update(`pcr${i}`).digest()]));

function makeQuote(
  over: Partial<TpmsAttest> = {},
  opts: { signer?: KeyObject; hashAlg?: number } = {},
): { attest: Buffer; signature: Buffer } {
  const pcrs = [...pcrValues.keys()];
  const attest = marshalAttest({
    ...attestBase(TPM_ST_ATTEST_QUOTE, nonce),
    quote: {
      pcrSelect: [{ hashAlg: TPM_ALG.SHA256, pcrs }],
      pcrDigest: pcrDigest(
        TPM_ALG.SHA256,
        pcrs.map((i) => pcrValues.get(i)!),
      ),
    },
    ...over,
  });
  return { attest, signature: tpmSign(opts.signer ?? ak.privateKey, attest, opts.hashAlg) };
}

test('verifyQuote accepts a correct quote and returns the quoted PCRs', () => {
  const q = makeQuote();
  const r = verifyQuote({ akPublic: ak.pub, ...q, qualifyingData: nonce, pcrValues });
  assert.deepEqual(r.pcrs, [0, 1, 2, 3, 7]);
  assert.deepEqual(r.attest.extraData, nonce);
});

test('verifyQuote accepts the real quote swtpm made with a tpm2_createak AK', () => {
  const data = JSON.parse(fixture('quote-pcrs.json').toString()) as { qualifyingData: string; pcrs: Record<string, string> };
  const values = new Map(Object.entries(data.pcrs).map(([k, v]) => [Number(k), Buffer.from(v, 'hex')]));
  const r = verifyQuote({
    akPublic: parsePublic(fixture('ak.pub')),
    attest: fixture('quote.msg'),
    signature: fixture('quote.sig'),
    qualifyingData: Buffer.from(data.qualifyingData, 'hex'),
    pcrValues: values,
  });
  assert.deepEqual(r.pcrs, [0, 1, 2, 3, 7]);
  // and a changed PCR value in that real evidence is caught
  values.set(2, Buffer.alloc(32));
  assertCode(
    () =>
      verifyQuote({
        akPublic: parsePublic(fixture('ak.pub')),
        attest: fixture('quote.msg'),
        signature: fixture('quote.sig'),
        qualifyingData: Buffer.from(data.qualifyingData, 'hex'),
        pcrValues: values,
      }),
    'quote_pcr_digest_mismatch',
  );
});

test('rejects a quote with one attest byte changed: quote_bad_signature', () => {
  const q = makeQuote();
  const attest = Buffer.from(q.attest);
  attest[20]! ^= 0x01; // inside qualifiedSigner: still parses, no longer signed
  assertCode(
    () => verifyQuote({ akPublic: ak.pub, attest, signature: q.signature, qualifyingData: nonce, pcrValues }),
    'quote_bad_signature',
  );
});

test('rejects a quote with a changed signature: quote_bad_signature', () => {
  const q = makeQuote();
  const signature = Buffer.from(q.signature);
  signature[10]! ^= 0x01;
  assertCode(() => verifyQuote({ akPublic: ak.pub, attest: q.attest, signature, qualifyingData: nonce, pcrValues }), 'quote_bad_signature');
});

test('rejects a quote signed by another key: quote_bad_signature', () => {
  const other = eccKey(AK_ATTRIBUTES);
  const q = makeQuote({}, { signer: other.privateKey });
  assertCode(() => verifyQuote({ akPublic: ak.pub, ...q, qualifyingData: nonce, pcrValues }), 'quote_bad_signature');
});

test('rejects a quote over another nonce: quote_nonce_mismatch', () => {
  const q = makeQuote();
  assertCode(() => verifyQuote({ akPublic: ak.pub, ...q, qualifyingData: Buffer.alloc(32), pcrValues }), 'quote_nonce_mismatch');
  assertCode(() => verifyQuote({ akPublic: ak.pub, ...q, qualifyingData: nonce.subarray(1), pcrValues }), 'quote_nonce_mismatch');
});

test('rejects a changed PCR value: quote_pcr_digest_mismatch', () => {
  const q = makeQuote();
  const changed = new Map(pcrValues);
  changed.set(7, Buffer.alloc(32, 0xee));
  assertCode(() => verifyQuote({ akPublic: ak.pub, ...q, qualifyingData: nonce, pcrValues: changed }), 'quote_pcr_digest_mismatch');
});

test('rejects missing, extra or other-bank PCRs: quote_pcr_selection_mismatch', () => {
  const q = makeQuote();
  const missing = new Map(pcrValues);
  missing.delete(3);
  assertCode(() => verifyQuote({ akPublic: ak.pub, ...q, qualifyingData: nonce, pcrValues: missing }), 'quote_pcr_selection_mismatch');
  const extra = new Map(pcrValues).set(9, Buffer.alloc(32));
  assertCode(() => verifyQuote({ akPublic: ak.pub, ...q, qualifyingData: nonce, pcrValues: extra }), 'quote_pcr_selection_mismatch');
  assertCode(
    () => verifyQuote({ akPublic: ak.pub, ...q, qualifyingData: nonce, pcrValues, hashAlg: TPM_ALG.SHA1 }),
    'quote_pcr_selection_mismatch',
  );
  const twoBanks = makeQuote({
    quote: {
      pcrSelect: [
        { hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 7] },
        { hashAlg: TPM_ALG.SHA1, pcrs: [0] },
      ],
      pcrDigest: Buffer.alloc(32),
    },
  });
  assertCode(() => verifyQuote({ akPublic: ak.pub, ...twoBanks, qualifyingData: nonce, pcrValues }), 'quote_pcr_selection_mismatch');
});

test('rejects a PCR value of the wrong length: tpm_malformed', () => {
  const q = makeQuote();
  const short = new Map(pcrValues).set(0, Buffer.alloc(20));
  assertCode(() => verifyQuote({ akPublic: ak.pub, ...q, qualifyingData: nonce, pcrValues: short }), 'tpm_malformed');
});

test('rejects a signed structure without TPM_GENERATED_VALUE: quote_bad_magic', () => {
  const q = makeQuote({ magic: 0x12345678 });
  assertCode(() => verifyQuote({ akPublic: ak.pub, ...q, qualifyingData: nonce, pcrValues }), 'quote_bad_magic');
});

test('rejects a certify passed as a quote: quote_wrong_type', () => {
  const attest = marshalAttest({
    ...attestBase(TPM_ST_ATTEST_CERTIFY, nonce),
    certify: { name: objectName(ak.pub), qualifiedName: objectName(ak.pub) },
  });
  assertCode(
    () => verifyQuote({ akPublic: ak.pub, attest, signature: tpmSign(ak.privateKey, attest), qualifyingData: nonce, pcrValues }),
    'quote_wrong_type',
  );
});

test('rejects a quote signed with a hash other than the AK scheme: quote_unsupported_signature', () => {
  const q = makeQuote({}, { hashAlg: TPM_ALG.SHA384 });
  assertCode(() => verifyQuote({ akPublic: ak.pub, ...q, qualifyingData: nonce, pcrValues }), 'quote_unsupported_signature');
});

test('rejects truncated evidence: tpm_malformed', () => {
  const q = makeQuote();
  assertCode(
    () => verifyQuote({ akPublic: ak.pub, attest: q.attest.subarray(0, 40), signature: q.signature, qualifyingData: nonce, pcrValues }),
    'tpm_malformed',
  );
  assertCode(
    () => verifyQuote({ akPublic: ak.pub, attest: q.attest, signature: q.signature.subarray(0, 5), qualifyingData: nonce, pcrValues }),
    'tpm_malformed',
  );
});

test('checkAkPublic rejects an unrestricted, decrypting or non-fixed AK and other algorithms', () => {
  checkAkPublic(ak.pub);
  checkAkPublic(parsePublic(fixture('ak.pub')));
  assertCode(() => checkAkPublic(eccKey(AK_ATTRIBUTES & ~TPMA_OBJECT.restricted).pub), 'ak_attributes_invalid');
  assertCode(() => checkAkPublic(eccKey(AK_ATTRIBUTES & ~TPMA_OBJECT.fixedTPM).pub), 'ak_attributes_invalid');
  assertCode(() => checkAkPublic(eccKey(AK_ATTRIBUTES & ~TPMA_OBJECT.sensitiveDataOrigin).pub), 'ak_attributes_invalid');
  assertCode(() => checkAkPublic(eccKey(AK_ATTRIBUTES | TPMA_OBJECT.decrypt).pub), 'ak_attributes_invalid');
  assertCode(() => checkAkPublic(eccKey(AK_ATTRIBUTES, { alg: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA384 }).pub), 'ak_algorithm_invalid');
  assertCode(() => checkAkPublic(eccKey(AK_ATTRIBUTES, { alg: TPM_ALG.NULL }).pub), 'ak_algorithm_invalid');
  assertCode(() => checkAkPublic(parsePublic(fixture('ek-rsa-persistent.pub'))), 'ak_attributes_invalid');
  // an unrestricted AK must not be able to vouch for a quote (it could sign a forged TPMS_ATTEST)
  const loose = eccKey(SESSION_KEY_ATTRIBUTES, { alg: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 });
  const attest = marshalAttest({
    ...attestBase(TPM_ST_ATTEST_QUOTE, nonce),
    quote: {
      pcrSelect: [{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 7] }],
      pcrDigest: pcrDigest(TPM_ALG.SHA256, [...pcrValues.values()]),
    },
  });
  assertCode(
    () => verifyQuote({ akPublic: loose.pub, attest, signature: tpmSign(loose.privateKey, attest), qualifyingData: nonce, pcrValues }),
    'ak_attributes_invalid',
  );
});

// ---- certify ----

const sessionKey = eccKey(SESSION_KEY_ATTRIBUTES, { alg: TPM_ALG.NULL });

function makeCertify(certified: TpmPublic, over: Partial<TpmsAttest> = {}): { attest: Buffer; signature: Buffer } {
  const attest = marshalAttest({
    ...attestBase(TPM_ST_ATTEST_CERTIFY, nonce),
    certify: { name: objectName(certified), qualifiedName: Buffer.concat([Buffer.from([0, 0x0b]), randomBytes(32)]) },
    ...over,
  });
  return { attest, signature: tpmSign(ak.privateKey, attest) };
}

test('verifyCertify accepts a certification of an unrestricted fixed signing key', () => {
  const c = makeCertify(sessionKey.pub);
  const r = verifyCertify({ akPublic: ak.pub, ...c, certifiedPublic: sessionKey.pub, qualifyingData: nonce });
  assert.deepEqual(r.certifiedName, objectName(sessionKey.pub));
});

test('verifyCertify accepts the real tpm2_certify output from swtpm', () => {
  const r = verifyCertify({
    akPublic: parsePublic(fixture('ak.pub')),
    attest: fixture('certify.attest'),
    signature: fixture('certify.sig'),
    certifiedPublic: parsePublic(fixture('certified-key.pub')),
    qualifyingData: Buffer.from('00ff55aa', 'hex'),
  });
  assert.equal(r.attest.type, TPM_ST_ATTEST_CERTIFY);
});

test('rejects a certification with one attest byte changed: certify_bad_signature', () => {
  const c = makeCertify(sessionKey.pub);
  const attest = Buffer.from(c.attest);
  attest[attest.length - 1]! ^= 0x80; // last byte of qualifiedName
  assertCode(
    () => verifyCertify({ akPublic: ak.pub, attest, signature: c.signature, certifiedPublic: sessionKey.pub, qualifyingData: nonce }),
    'certify_bad_signature',
  );
  const signature = Buffer.from(c.signature);
  signature[signature.length - 1]! ^= 0x01;
  assertCode(
    () => verifyCertify({ akPublic: ak.pub, attest: c.attest, signature, certifiedPublic: sessionKey.pub, qualifyingData: nonce }),
    'certify_bad_signature',
  );
});

test('rejects a certification over another nonce: certify_nonce_mismatch', () => {
  const c = makeCertify(sessionKey.pub);
  assertCode(
    () => verifyCertify({ akPublic: ak.pub, ...c, certifiedPublic: sessionKey.pub, qualifyingData: Buffer.alloc(32) }),
    'certify_nonce_mismatch',
  );
});

test('rejects a certification of another key than the one submitted: certify_name_mismatch', () => {
  const other = eccKey(SESSION_KEY_ATTRIBUTES, { alg: TPM_ALG.NULL });
  const c = makeCertify(other.pub);
  assertCode(
    () => verifyCertify({ akPublic: ak.pub, ...c, certifiedPublic: sessionKey.pub, qualifyingData: nonce }),
    'certify_name_mismatch',
  );
  // same key, attributes edited after the fact: the name changes too
  const edited = parsePublic(marshalPublic({ ...sessionKey.pub, objectAttributes: SESSION_KEY_ATTRIBUTES | TPMA_OBJECT.noDA }));
  const c2 = makeCertify(sessionKey.pub);
  assertCode(() => verifyCertify({ akPublic: ak.pub, ...c2, certifiedPublic: edited, qualifyingData: nonce }), 'certify_name_mismatch');
});

test('rejects certified keys without the required attributes, each with its own code', () => {
  const cases: Array<[number, ErrorCode]> = [
    [SESSION_KEY_ATTRIBUTES & ~TPMA_OBJECT.fixedTPM, 'certify_not_fixed_tpm'],
    [SESSION_KEY_ATTRIBUTES & ~TPMA_OBJECT.fixedParent, 'certify_not_fixed_parent'],
    [SESSION_KEY_ATTRIBUTES & ~TPMA_OBJECT.sensitiveDataOrigin, 'certify_not_sensitive_data_origin'],
    [SESSION_KEY_ATTRIBUTES | TPMA_OBJECT.restricted, 'certify_key_restricted'],
    [(SESSION_KEY_ATTRIBUTES & ~TPMA_OBJECT.sign) | TPMA_OBJECT.decrypt, 'certify_not_signing_key'],
  ];
  for (const [attributes, code] of cases) {
    const key = eccKey(attributes, { alg: TPM_ALG.NULL });
    const c = makeCertify(key.pub);
    assertCode(() => verifyCertify({ akPublic: ak.pub, ...c, certifiedPublic: key.pub, qualifyingData: nonce }), code);
  }
  const c = makeCertify(sessionKey.pub);
  assertCode(
    () => verifyCertify({ akPublic: ak.pub, ...c, certifiedPublic: sessionKey.pub, qualifyingData: nonce, require: { restricted: true } }),
    'certify_key_not_restricted',
  );
  // requirements can be relaxed explicitly
  const noFixed = eccKey(SESSION_KEY_ATTRIBUTES & ~TPMA_OBJECT.fixedTPM, { alg: TPM_ALG.NULL });
  const c3 = makeCertify(noFixed.pub);
  verifyCertify({ akPublic: ak.pub, ...c3, certifiedPublic: noFixed.pub, qualifyingData: nonce, require: { fixedTPM: false } });
});

test('rejects bad magic and a quote passed as a certification', () => {
  const c = makeCertify(sessionKey.pub, { magic: 0 });
  assertCode(() => verifyCertify({ akPublic: ak.pub, ...c, certifiedPublic: sessionKey.pub, qualifyingData: nonce }), 'certify_bad_magic');
  const q = makeQuote();
  assertCode(() => verifyCertify({ akPublic: ak.pub, ...q, certifiedPublic: sessionKey.pub, qualifyingData: nonce }), 'certify_wrong_type');
  const attest = makeCertify(sessionKey.pub).attest;
  assertCode(
    () =>
      verifyCertify({
        akPublic: ak.pub,
        attest,
        signature: tpmSign(ak.privateKey, attest, TPM_ALG.SHA384),
        certifiedPublic: sessionKey.pub,
        qualifyingData: nonce,
      }),
    'certify_unsupported_signature',
  );
});

// ---- the thread-pool variants ----

/** The outcome of a check as a string: 'ok' or the error code. */
async function outcome(fn: () => unknown): Promise<string> {
  try {
    await fn();
    return 'ok';
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  }
}

test('verifyQuoteAsync and verifyCertifyAsync reach the same outcome and code as the synchronous checks, in the same order', async () => {
  const flip = (b: Buffer, at: number) => {
    const c = Buffer.from(b);
    c[at < 0 ? c.length + at : at]! ^= 0x01;
    return c;
  };
  const q = makeQuote();
  const other = eccKey(AK_ATTRIBUTES);
  const loose = eccKey(SESSION_KEY_ATTRIBUTES, { alg: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 });
  const quotes: Parameters<typeof verifyQuote>[0][] = [
    { akPublic: ak.pub, ...q, qualifyingData: nonce, pcrValues },
    { akPublic: ak.pub, attest: flip(q.attest, -1), signature: q.signature, qualifyingData: nonce, pcrValues },
    { akPublic: ak.pub, attest: q.attest, signature: flip(q.signature, -1), qualifyingData: nonce, pcrValues },
    { akPublic: ak.pub, ...makeQuote({}, { signer: other.privateKey }), qualifyingData: nonce, pcrValues },
    { akPublic: ak.pub, ...q, qualifyingData: randomBytes(32), pcrValues },
    { akPublic: ak.pub, ...makeQuote({}, { hashAlg: TPM_ALG.SHA384 }), qualifyingData: nonce, pcrValues },
    { akPublic: ak.pub, attest: q.attest, signature: q.signature.subarray(0, 10), qualifyingData: nonce, pcrValues },
    { akPublic: ak.pub, attest: q.attest.subarray(0, 20), signature: q.signature, qualifyingData: nonce, pcrValues },
    // a bad signature and a bad nonce: the signature is reported, as before
    { akPublic: ak.pub, attest: q.attest, signature: flip(q.signature, -1), qualifyingData: randomBytes(32), pcrValues },
    // an AK the checks refuse before they parse anything
    { akPublic: loose.pub, ...q, qualifyingData: nonce, pcrValues },
  ];
  const seen = new Set<string>();
  for (const p of quotes) {
    const sync = await outcome(() => verifyQuote(p));
    assert.equal(await outcome(() => verifyQuoteAsync(p)), sync);
    seen.add(sync);
  }
  assert.deepEqual([...seen].sort(), [
    'ak_attributes_invalid',
    'ok',
    'quote_bad_signature',
    'quote_nonce_mismatch',
    'quote_unsupported_signature',
    'tpm_malformed',
  ]);

  const c = makeCertify(sessionKey.pub);
  const certifies: Parameters<typeof verifyCertify>[0][] = [
    { akPublic: ak.pub, ...c, certifiedPublic: sessionKey.pub, qualifyingData: nonce },
    { akPublic: ak.pub, attest: flip(c.attest, -1), signature: c.signature, certifiedPublic: sessionKey.pub, qualifyingData: nonce },
    { akPublic: ak.pub, attest: c.attest, signature: flip(c.signature, -1), certifiedPublic: sessionKey.pub, qualifyingData: nonce },
    { akPublic: ak.pub, ...c, certifiedPublic: sessionKey.pub, qualifyingData: randomBytes(32) },
    { akPublic: ak.pub, ...c, certifiedPublic: eccKey(SESSION_KEY_ATTRIBUTES, { alg: TPM_ALG.NULL }).pub, qualifyingData: nonce },
    { akPublic: ak.pub, attest: c.attest, signature: c.signature.subarray(0, 5), certifiedPublic: sessionKey.pub, qualifyingData: nonce },
  ];
  seen.clear();
  for (const p of certifies) {
    const sync = await outcome(() => verifyCertify(p));
    assert.equal(await outcome(() => verifyCertifyAsync(p)), sync);
    seen.add(sync);
  }
  assert.deepEqual([...seen].sort(), ['certify_bad_signature', 'certify_name_mismatch', 'certify_nonce_mismatch', 'ok', 'tpm_malformed']);
});
