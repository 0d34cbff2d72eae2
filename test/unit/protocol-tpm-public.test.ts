import assert from 'node:assert/strict';
import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import {
  AK_ATTRIBUTES,
  SESSION_KEY_ATTRIBUTES,
  TPMA_OBJECT,
  TPM_ALG,
  TPM_ECC_CURVE,
  akTemplate,
  digestSize,
  ekTemplateEccP256,
  ekTemplateEccP384,
  ekTemplateRsa2048,
  hashName,
  marshalPublic,
  objectName,
  parsePublic,
  parseTpmtPublic,
  publicKeyObject,
  publicKeySpkiDer,
  sessionKeyTemplate,
  setKeyCacheSize,
  srkTemplate,
  type TpmPublic,
} from '../../protocol/tpm/index.js';
import { assertCode } from '../helpers/assert.js';

const fixture = (name: string): Buffer => readFileSync(new URL(`../fixtures/tpm/${name}`, import.meta.url));

/** The public area with its unique field (the key) blanked the way the TCG templates have it. */
function withTemplateUnique(p: TpmPublic, eccBytes: number): Omit<TpmPublic, 'tpmtPublic'> {
  return {
    ...p,
    rsa: p.rsa && { ...p.rsa, modulus: Buffer.alloc(p.rsa.keyBits / 8) },
    ecc: p.ecc && { ...p.ecc, x: Buffer.alloc(eccBytes), y: Buffer.alloc(eccBytes) },
  };
}

test('ekTemplateRsa2048 is byte for byte the TCG L-1 template of the RSA EK swtpm made', () => {
  const ek = parsePublic(fixture('ek-rsa-persistent.pub'));
  assert.deepEqual(marshalPublic(withTemplateUnique(ek, 0)), ekTemplateRsa2048());
  const t = parsePublic(ekTemplateRsa2048());
  assert.equal(t.objectAttributes, 0x000300b2);
  assert.equal(t.authPolicy.toString('hex').toUpperCase(), '837197674484B3F81A90CC8D46A5D724FD52D76E06520B64F2A1DA1B331469AA');
  assert.deepEqual(t.symmetric, { alg: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB });
  assert.deepEqual(t.rsa, { keyBits: 2048, exponent: 0, modulus: Buffer.alloc(256) });
});

test('ekTemplateEccP256 is byte for byte the TCG L-2 template of the EK tpm2_createek -G ecc made', () => {
  const ek = parsePublic(fixture('ek-ecc256-created.pub'));
  assert.deepEqual(marshalPublic(withTemplateUnique(ek, 32)), ekTemplateEccP256());
});

test("ekTemplateEccP384 is the H-3 template of swtpm's persistent P-384 EK (empty unique)", () => {
  const ek = parsePublic(fixture('ek-ecc384-persistent.pub'));
  assert.deepEqual(marshalPublic(withTemplateUnique(ek, 0)), ekTemplateEccP384());
});

test('akTemplate has the attributes and scheme tpm2_createak gives an ECDSA AK', () => {
  const real = parsePublic(fixture('ak.pub'));
  const mine = parsePublic(akTemplate());
  assert.equal(mine.objectAttributes, AK_ATTRIBUTES);
  assert.equal(real.objectAttributes, AK_ATTRIBUTES);
  assert.deepEqual(marshalPublic({ ...real, ecc: { ...real.ecc!, x: Buffer.alloc(0), y: Buffer.alloc(0) } }), akTemplate());
});

test('srk and session key templates carry the contract attributes', () => {
  const srk = parsePublic(srkTemplate());
  const A = TPMA_OBJECT;
  assert.equal(
    srk.objectAttributes,
    A.restricted | A.decrypt | A.fixedTPM | A.fixedParent | A.sensitiveDataOrigin | A.userWithAuth | A.noDA,
  );
  assert.equal(srk.ecc?.curve, TPM_ECC_CURVE.NIST_P256);
  assert.deepEqual(srk.symmetric, { alg: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB });
  const session = parsePublic(sessionKeyTemplate());
  assert.equal(session.objectAttributes, SESSION_KEY_ATTRIBUTES);
  assert.equal(session.objectAttributes & A.restricted, 0);
  assert.deepEqual(session.scheme, { alg: TPM_ALG.NULL });
  // the certified key tpm2_create made with the same attributes
  assert.equal(parsePublic(fixture('certified-key.pub')).objectAttributes, SESSION_KEY_ATTRIBUTES);
});

test('parse then marshal reproduces every captured public area exactly', () => {
  for (const f of ['ek-rsa-persistent.pub', 'ek-ecc384-persistent.pub', 'ek-ecc256-created.pub', 'ak.pub', 'certified-key.pub']) {
    const raw = fixture(f);
    const p = parsePublic(raw);
    assert.deepEqual(marshalPublic(p), raw, f);
    assert.deepEqual(p.tpmtPublic, raw.subarray(2), f);
    assert.deepEqual(parseTpmtPublic(raw.subarray(2)).tpmtPublic, p.tpmtPublic);
  }
});

test('objectName equals the names the TPM reported', () => {
  assert.deepEqual(objectName(parsePublic(fixture('ak.pub'))), fixture('ak.name'));
  // from tpm2_readpublic -c 0x81010016 (SHA-384 name)
  assert.equal(
    objectName(parsePublic(fixture('ek-ecc384-persistent.pub'))).toString('hex'),
    '000ca4b99091209751c44af68ce2c8615d83c22f671b5c60cceffb28936aec76262b5cd387d18f484bf7ffd1e0d1f63dd916',
  );
});

test('publicKeyObject gives the same key as the EK certificates for RSA-2048 and P-384, and a P-256 key for the AK', () => {
  for (const [pub, cert] of [
    ['ek-rsa-persistent.pub', 'ekcert-rsa.der'],
    ['ek-ecc384-persistent.pub', 'ekcert-ecc384.der'],
  ] as const) {
    const key = publicKeyObject(parsePublic(fixture(pub)));
    assert.ok(key.equals(new X509Certificate(fixture(cert)).publicKey), pub);
  }
  const ak = publicKeyObject(parsePublic(fixture('ak.pub')));
  assert.equal(ak.asymmetricKeyType, 'ec');
  assert.equal(ak.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  assert.equal(publicKeySpkiDer(parsePublic(fixture('ak.pub'))).length, 91);
  const rsa = publicKeyObject(parsePublic(fixture('ek-rsa-persistent.pub')));
  assert.equal(rsa.asymmetricKeyDetails?.publicExponent, 65537n);
});

test('hashName and digestSize cover the four TPM hashes and reject others with tpm_unsupported_algorithm', () => {
  assert.equal(hashName(TPM_ALG.SHA256), 'sha256');
  assert.equal(digestSize(TPM_ALG.SHA384), 48);
  assert.equal(digestSize(TPM_ALG.SHA1), 20);
  assert.equal(hashName(TPM_ALG.SHA512), 'sha512');
  assertCode(() => hashName(TPM_ALG.SM3_256), 'tpm_unsupported_algorithm');
  assertCode(() => digestSize(0x9999), 'tpm_unsupported_algorithm');
});

test('rejects trailing bytes, truncation and a size prefix that disagrees with the content', () => {
  const raw = fixture('ak.pub');
  assertCode(() => parsePublic(Buffer.concat([raw, Buffer.from([0])])), 'tpm_malformed');
  assertCode(() => parsePublic(raw.subarray(0, raw.length - 1)), 'tpm_malformed');
  const shortened = Buffer.from(raw);
  shortened.writeUInt16BE(raw.length - 3); // inner TPMT_PUBLIC now ends early, one byte left over
  assertCode(() => parsePublic(shortened), 'tpm_malformed');
  assertCode(() => parsePublic(Buffer.from([0, 0])), 'tpm_malformed');
  assertCode(() => parsePublic(Buffer.alloc(0)), 'tpm_malformed');
});

test('rejects a TPM2B above its type maximum with tpm_malformed', () => {
  // ECC x of 67 bytes (> 66, the P-521 coordinate) inside an otherwise valid AK public
  const ak = parsePublic(fixture('ak.pub'));
  const oversized = marshalPublic({ ...ak, ecc: { ...ak.ecc!, x: Buffer.alloc(67, 1) } });
  assertCode(() => parsePublic(oversized), 'tpm_malformed');
  // a whole TPM2B_PUBLIC claiming 60000 bytes
  const huge = Buffer.alloc(60002);
  huge.writeUInt16BE(60000);
  assertCode(() => parsePublic(huge), 'tpm_malformed');
});

test('rejects unknown algorithms, curves and schemes with tpm_unsupported_algorithm', () => {
  const ak = parsePublic(fixture('ak.pub'));
  const variants: Array<Omit<TpmPublic, 'tpmtPublic'>> = [
    { ...ak, nameAlg: TPM_ALG.SM3_256 },
    { ...ak, type: TPM_ALG.KEYEDHASH },
    { ...ak, scheme: { alg: TPM_ALG.ECDAA, hashAlg: TPM_ALG.SHA256 } },
    { ...ak, scheme: { alg: TPM_ALG.ECDSA, hashAlg: 0x0099 } },
    { ...ak, symmetric: { alg: TPM_ALG.SM4, keyBits: 128, mode: TPM_ALG.CFB } },
    { ...ak, ecc: { ...ak.ecc!, curve: 0x0020 } },
  ];
  for (const v of variants) {
    const bytes = Buffer.from(marshalPublicLoose(v));
    assertCode(() => parsePublic(bytes), 'tpm_unsupported_algorithm');
  }
});

/** marshalPublic refuses unknown types itself; build the bytes of an unknown type by hand. */
function marshalPublicLoose(v: Omit<TpmPublic, 'tpmtPublic'>): Buffer {
  if (v.type === TPM_ALG.ECC || v.type === TPM_ALG.RSA) return marshalPublic(v);
  const inner = Buffer.from([v.type >> 8, v.type & 0xff, 0, 0x0b, 0, 0, 0, 0, 0, 0]);
  return Buffer.concat([Buffer.from([0, inner.length]), inner]);
}

test('publicKeyObject rejects a point that is not on the curve with tpm_malformed', () => {
  const ak = parsePublic(fixture('ak.pub'));
  const bad = parsePublic(marshalPublic({ ...ak, ecc: { ...ak.ecc!, y: Buffer.alloc(32, 7) } }));
  assertCode(() => publicKeyObject(bad), 'tpm_malformed');
  const shortModulus = parsePublic(
    marshalPublic({ ...parsePublic(fixture('ek-rsa-persistent.pub')), rsa: { keyBits: 2048, exponent: 0, modulus: Buffer.alloc(10, 1) } }),
  );
  assertCode(() => publicKeyObject(shortModulus), 'tpm_malformed');
});

test('imported keys: an AK used on every renewal stays cached (least recently used goes first); session keys are not cached', () => {
  const ecc = (): TpmPublic => {
    // the point from the SPKI (Node 20's JWK export can deadlock with a GC of key-generation jobs)
    const point = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' }).subarray(-64);
    const t = parsePublic(akTemplate());
    return { ...t, ecc: { ...t.ecc!, x: Buffer.from(point.subarray(0, 32)), y: Buffer.from(point.subarray(32)) } };
  };
  setKeyCacheSize(16);
  try {
    const ak = ecc();
    const first = publicKeyObject(ak);
    for (let i = 0; i < 100; i++) {
      publicKeySpkiDer(ecc()); // a renewal's fresh session key
      if (i % 8 === 0) publicKeyObject(ecc()); // another device's AK
      assert.equal(publicKeyObject(ak), first, `the AK was imported again at step ${i}`);
    }
    // 16 other AKs in a row push it out
    for (let i = 0; i < 16; i++) publicKeyObject(ecc());
    assert.notEqual(publicKeyObject(ak), first);
  } finally {
    setKeyCacheSize(16_384);
  }
});
