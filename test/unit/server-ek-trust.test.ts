/**
 * EK identity (canonical key, TCG EK templates), the built-in TPM makers' trust store and its
 * rules, chains under roots shaped like the built-in ones, and supplier manifest parsing.
 */
import 'reflect-metadata';
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, X509Certificate, webcrypto } from 'node:crypto';

type CryptoKeyPair = webcrypto.CryptoKeyPair;
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import * as x509 from '@peculiar/x509';
import { TPM_ALG, TPM_ECC_CURVE, TPMA_OBJECT } from '../../protocol/tpm/constants.js';
import { canonicalEkPublic, ekIdentity, keyIdentity } from '../../protocol/tpm/ekidentity.js';
import { verifyEkCertificate } from '../../protocol/tpm/ekcert.js';
import { marshalPublic, parsePublic, type TpmPublic } from '../../protocol/tpm/public.js';
import { EK_ATTRIBUTES, EK_POLICY_SHA256 } from '../../protocol/tpm/templates.js';
import { builtinEkCas, classifyEkCas, manifestEkId, parseManifest, resolveEkRoot } from '../../enroll-server/services/ek.js';
import { assertCode } from '../helpers/assert.js';

const fixture = (name: string): Buffer => readFileSync(new URL(`../fixtures/tpm/${name}`, import.meta.url));
const rsaEk = parsePublic(fixture('ek-rsa-persistent.pub'));
const eccEk = parsePublic(fixture('ek-ecc384-persistent.pub'));
const reencode = (p: TpmPublic, change: Partial<TpmPublic>): TpmPublic => {
  const { tpmtPublic: _t, ...rest } = { ...p, ...change };
  return parsePublic(marshalPublic(rest));
};

test("swtpm's EKs match templates L-1 and H-3, and the canonical form is the TPM's own encoding", () => {
  const r = canonicalEkPublic(rsaEk);
  assert.equal(r.template, 'L-1');
  assert.deepEqual(r.public.tpmtPublic, rsaEk.tpmtPublic);
  const e = canonicalEkPublic(eccEk);
  assert.equal(e.template, 'H-3');
  assert.deepEqual(e.public.tpmtPublic, eccEk.tpmtPublic);
});

test('the EK identity is the key: exponent 65537 for 0 and ECC coordinates without leading zeros give the same identity', () => {
  const id = ekIdentity(rsaEk).id;
  assert.equal(ekIdentity(reencode(rsaEk, { rsa: { ...rsaEk.rsa!, exponent: 65537 } })).id, id);
  // it equals SHA-256 of the EK certificate's SubjectPublicKeyInfo, so a manifest of certificates names the same EK
  const certSpki = new X509Certificate(fixture('ekcert-rsa.der')).publicKey.export({ type: 'spki', format: 'der' });
  assert.equal(id, createHash('sha256').update(certSpki).digest('hex'));
  assert.equal(manifestEkId(fixture('ekcert-rsa.der').toString('base64'), 't'), id);
  assert.equal(manifestEkId(fixture('ek-rsa-persistent.pub').toString('base64'), 't'), id);

  // an L-2 EK whose x coordinate starts with a zero byte, sent with and without it
  let jwk: webcrypto.JsonWebKey | null = null;
  for (let i = 0; i < 5000 && !jwk; i++) {
    const k = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' });
    if (Buffer.from(k.x!, 'base64url')[0] === 0) jwk = k;
  }
  assert.ok(jwk, 'found a key with a leading zero byte');
  const x = Buffer.from(jwk.x!, 'base64url');
  const y = Buffer.from(jwk.y!, 'base64url');
  const l2 = (xb: Buffer) =>
    parsePublic(
      marshalPublic({
        type: TPM_ALG.ECC,
        nameAlg: TPM_ALG.SHA256,
        objectAttributes: EK_ATTRIBUTES,
        authPolicy: EK_POLICY_SHA256,
        symmetric: { alg: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB },
        scheme: { alg: TPM_ALG.NULL },
        ecc: { curve: TPM_ECC_CURVE.NIST_P256, kdf: { alg: TPM_ALG.NULL }, x: xb, y },
      }),
    );
  const full = ekIdentity(l2(x));
  const stripped = ekIdentity(l2(x.subarray(1)));
  assert.equal(full.template, 'L-2');
  assert.equal(stripped.id, full.id);
  assert.deepEqual(stripped.canonical.tpmtPublic, full.canonical.tpmtPublic, 'canonical form pads the coordinate');
  assert.equal(keyIdentity(l2(x)), full.id);
});

test('a public area outside the TCG EK templates is refused with ek_template_mismatch', () => {
  const cases: Array<[string, Partial<TpmPublic>]> = [
    ['userWithAuth on a low-range EK', { objectAttributes: rsaEk.objectAttributes | TPMA_OBJECT.userWithAuth }],
    ['fixedTPM cleared', { objectAttributes: rsaEk.objectAttributes & ~TPMA_OBJECT.fixedTPM }],
    ['empty authPolicy', { authPolicy: Buffer.alloc(0) }],
    ['other authPolicy', { authPolicy: Buffer.alloc(32, 1) }],
    ['exponent 3', { rsa: { ...rsaEk.rsa!, exponent: 3 } }],
    ['AES-256 on L-1', { symmetric: { alg: TPM_ALG.AES, keyBits: 256, mode: TPM_ALG.CFB } }],
    ['no symmetric', { symmetric: { alg: TPM_ALG.NULL } }],
    ['an RSASSA scheme', { scheme: { alg: TPM_ALG.RSASSA, hashAlg: TPM_ALG.SHA256 } }],
    ['RSA-3072 with L-1 fields', { rsa: { keyBits: 3072, exponent: 0, modulus: Buffer.alloc(384, 0xab) } }],
  ];
  for (const [what, change] of cases) assertCode(() => ekIdentity(reencode(rsaEk, change)), 'ek_template_mismatch');
  assertCode(() => ekIdentity(reencode(eccEk, { nameAlg: TPM_ALG.SHA256, authPolicy: Buffer.alloc(32) })), 'ek_template_mismatch');
});

test("the built-in store: self-signed roots and makers' top CAs whose root is unpublished are anchors, the rest intermediates", () => {
  const all = builtinEkCas();
  assert.equal(all.length, 45);
  const role = (file: string) => all.find((c) => c.origin === file)?.role;
  assert.equal(role('GS_TPM_RT.pem'), 'anchor');
  assert.equal(role('INF_RSA_010RT.pem'), 'anchor');
  assert.equal(role('INF_RSA_011.pem'), 'intermediate');
  assert.equal(role('NTC1.pem'), 'anchor');
  assert.equal(role('INTEL_I.pem'), 'intermediate');
  // "IFX TPM EK Root CA" is signed by a root that was not published: anchored on itself
  assert.equal(role('IFX_RSA_RT.pem'), 'anchor');
  assert.equal(role('IFX_RSA_17I.pem'), 'intermediate');
  // its issuer's name is in the set, but not the key that signed it (another generation of that root)
  assert.equal(role('IFX_RSA_02I.pem'), 'anchor');
  assert.equal(role('STM_RSA_RT.pem'), 'intermediate', "issued by GlobalSign's TPM root");
  // expired maker CAs are shipped (devices with such EK certificates exist) and listed with their date
  const expired = all.filter((c) => c.notAfter.getTime() < Date.parse('2026-01-01T00:00:00Z')).map((c) => c.origin);
  assert.ok(expired.includes('IFX_RSA_01I.pem'), expired.join(','));
});

// ---- a chain under roots shaped like the built-in ones ----

const RSA = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256', publicExponent: new Uint8Array([1, 0, 1]), modulusLength: 2048 } as const;

async function ca(
  name: string,
  issuer: { name: string; keys: CryptoKeyPair } | null,
  notAfter = new Date('2045-01-01T00:00:00Z'),
  pathLen?: number,
) {
  const keys = (await webcrypto.subtle.generateKey(RSA, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '0a',
    subject: name,
    issuer: issuer?.name ?? name,
    notBefore: new Date('2015-01-01T00:00:00Z'),
    notAfter,
    publicKey: keys.publicKey,
    signingKey: (issuer?.keys ?? keys).privateKey,
    signingAlgorithm: RSA,
    extensions: [
      new x509.BasicConstraintsExtension(true, pathLen, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ...(issuer ? [await x509.AuthorityKeyIdentifierExtension.create(issuer.keys.publicKey)] : []),
    ],
  });
  return { name, keys, der: Buffer.from(cert.rawData) };
}

/** An RSA-2048 EK (template L-1) and its EK certificate from `issuer`, as a maker issues it. */
async function ekCert(issuer: { name: string; keys: CryptoKeyPair }) {
  const keys = (await webcrypto.subtle.generateKey(RSA, true, ['sign', 'verify'])) as CryptoKeyPair;
  const jwk = await webcrypto.subtle.exportKey('jwk', keys.publicKey);
  const ek = parsePublic(
    marshalPublic({
      type: TPM_ALG.RSA,
      nameAlg: TPM_ALG.SHA256,
      objectAttributes: EK_ATTRIBUTES,
      authPolicy: EK_POLICY_SHA256,
      symmetric: { alg: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB },
      scheme: { alg: TPM_ALG.NULL },
      rsa: { keyBits: 2048, exponent: 0, modulus: Buffer.from(jwk.n!, 'base64url') },
    }),
  );
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '77',
    subject: '',
    issuer: issuer.name,
    notBefore: new Date('2020-01-01T00:00:00Z'),
    notAfter: new Date('2040-01-01T00:00:00Z'),
    publicKey: keys.publicKey,
    signingKey: issuer.keys.privateKey,
    signingAlgorithm: RSA,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension(['2.23.133.8.1']),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.keys.publicKey),
    ],
  });
  return { ek, der: Buffer.from(cert.rawData) };
}

test('ek-roots remove takes the fingerprint as list shows it (a unique prefix); an unknown or ambiguous one is refused with its code', () => {
  const all = builtinEkCas();
  const gs = all.find((c) => c.origin === 'GS_TPM_RT.pem')!;
  // the 16 hex digits `ek-roots list` prints, the full value, and the colon form (any case)
  assert.equal(resolveEkRoot(all, gs.fingerprint.slice(0, 16)).origin, 'GS_TPM_RT.pem');
  assert.equal(resolveEkRoot(all, gs.fingerprint).origin, 'GS_TPM_RT.pem');
  assert.equal(resolveEkRoot(all, gs.fingerprint.toUpperCase().match(/../g)!.join(':')).origin, 'GS_TPM_RT.pem');
  assertCode(() => resolveEkRoot(all, '0123456789abcdef'.repeat(4)), 'ek_root_unknown');
  assertCode(() => resolveEkRoot(all, gs.fingerprint.slice(0, 7)), 'ek_root_unknown');
  // a switched-off certificate is not removed again
  assertCode(() => resolveEkRoot([{ ...gs, disabled: true }], gs.fingerprint.slice(0, 16)), 'ek_root_unknown');
  // two certificates sharing the prefix: refused, naming both full fingerprints
  const twin = { ...all[1]!, fingerprint: `${gs.fingerprint.slice(0, 16)}${'0'.repeat(48)}` };
  assert.throws(
    () => resolveEkRoot([...all, twin], gs.fingerprint.slice(0, 16)),
    (e: unknown) => {
      assert.equal((e as { code?: string }).code, 'ek_root_ambiguous');
      assert.match((e as Error).message, new RegExp(`${gs.fingerprint}.*${twin.fingerprint}`));
      return true;
    },
  );
  assert.equal(resolveEkRoot([...all, twin], gs.fingerprint.slice(0, 17)).origin, 'GS_TPM_RT.pem', 'one more digit tells them apart');
});

test('EK certificates chain to roots with the built-in profile: root + intermediate, and a top CA whose root is unpublished', async () => {
  // like INF_RSA_010RT → INF_RSA_011 (root and manufacturing CA both shipped)
  const root = await ca('CN=Test OPTIGA(TM) RSA Root CA,O=Test TPM Maker,C=DE', null);
  const mfg = await ca('CN=Test OPTIGA(TM) RSA Manufacturing CA 011,O=Test TPM Maker,C=DE', root, undefined, 0);
  // like IFX_RSA_RT (issued by a root that is not in the set) → IFX_RSA_02I
  const hidden = await ca('CN=Unpublished Maker Root', null);
  const top = await ca('CN=Test TPM EK Root CA,O=Test TPM Maker,C=DE', hidden);
  const inter = await ca('CN=Test TPM EK Intermediate CA 02,O=Test TPM Maker,C=DE', top);
  const set = classifyEkCas(
    [root, mfg, top, inter].map((c, i) => ({ origin: `t${i}.pem`, der: c.der })),
    'builtin',
  );
  assert.deepEqual(
    set.map((c) => c.role),
    ['anchor', 'intermediate', 'anchor', 'intermediate'],
  );
  const trust = {
    roots: set.filter((c) => c.role === 'anchor').map((c) => c.der),
    intermediates: set.filter((c) => c.role === 'intermediate').map((c) => c.der),
  };

  const a = await ekCert(mfg);
  assert.equal(verifyEkCertificate(a.der, a.ek, trust).chain.length, 3);
  const b = await ekCert(inter);
  assert.equal(verifyEkCertificate(b.der, b.ek, trust).chain.length, 3);
  // the same chains together with the real built-in store
  const builtin = builtinEkCas();
  const withBuiltin = {
    roots: [...builtin.filter((c) => c.role === 'anchor').map((c) => c.der), ...trust.roots],
    intermediates: [...builtin.filter((c) => c.role === 'intermediate').map((c) => c.der), ...trust.intermediates],
  };
  verifyEkCertificate(a.der, a.ek, withBuiltin);
  // and nothing of ours chains to the built-in store alone
  assertCode(
    () =>
      verifyEkCertificate(a.der, a.ek, {
        roots: builtin.filter((c) => c.role === 'anchor').map((c) => c.der),
        intermediates: builtin.filter((c) => c.role === 'intermediate').map((c) => c.der),
      }),
    'ek_cert_untrusted',
  );
});

test('an EK certificate under an expired maker CA is refused with ek_cert_expired', async () => {
  const root = await ca('CN=Old Maker Root', null);
  const old = await ca('CN=Old Maker Intermediate 01', root, new Date('2025-10-20T13:47:43Z'));
  const e = await ekCert(old);
  const trust = { roots: [root.der], intermediates: [old.der] };
  verifyEkCertificate(e.der, e.ek, trust, new Date('2025-01-01T00:00:00Z'));
  assertCode(() => verifyEkCertificate(e.der, e.ek, trust, new Date('2026-11-30T00:00:00Z')), 'ek_cert_expired');
});

test('supplier manifests: JSON and CSV, certificates and keys; any unreadable entry refuses the whole file with its place', () => {
  const certPem = new X509Certificate(fixture('ekcert-rsa.der')).toString();
  const id = ekIdentity(rsaEk).id;
  const spkiPem = new X509Certificate(fixture('ekcert-ecc384.der')).publicKey.export({ type: 'spki', format: 'pem' }).toString();
  const eccId = ekIdentity(eccEk).id;
  assert.deepEqual(
    parseManifest(
      JSON.stringify({
        devices: [
          { serial: 'A1', ekCert: certPem },
          { name: 'B2', ekPub: spkiPem },
        ],
      }),
      undefined,
    ).map((e) => [e.ekId, e.name]),
    [
      [id, 'A1'],
      [eccId, 'B2'],
    ],
  );
  const csv = `name,ek_cert\r\n"GW ""1""","${certPem}"\r\nGW2,${fixture('ek-ecc384-persistent.pub').toString('base64')}\r\n`;
  assert.deepEqual(
    parseManifest(csv, undefined).map((e) => [e.ekId, e.name]),
    [
      [id, 'GW "1"'],
      [eccId, 'GW2'],
    ],
  );
  assertCode(() => parseManifest('name,ek_cert\nGW1,not-base64!\n', 'csv'), 'ek_allow_invalid');
  assertCode(() => parseManifest('name,colour\nGW1,red\n', 'csv'), 'ek_allow_invalid');
  assertCode(() => parseManifest('[{"name":"x"}]', 'json'), 'ek_allow_invalid');
  assertCode(() => parseManifest('[]', 'json'), 'ek_allow_invalid');
  assertCode(() => parseManifest('{', 'json'), 'ek_allow_invalid');
  try {
    parseManifest(`ek\n${certPem.replace(/\n/g, ' ')}\nAAAA\n`, 'csv');
    assert.fail('accepted');
  } catch (e) {
    assert.match((e as Error).message, /row 2|row 3/);
  }
});
