/**
 * Keys, quotes, certifications and signatures made by a real swtpm through the addon, verified by
 * the server-side verifiers in protocol/tpm; tampering with any part fails with its own code.
 */
import assert from 'node:assert/strict';
import { createHash, verify as cryptoVerify } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { isEdgeidError } from '../../protocol/errors/index.js';
import {
  TPMA_OBJECT,
  TPM_ALG,
  TPM_ECC_CURVE,
  checkAkPublic,
  parsePublic,
  parseSignature,
  publicKeyObject,
  signatureToDer,
  srkTemplate,
  verifyCertify,
  verifyQuote,
  type PcrSelection,
} from '../../protocol/tpm/index.js';
import { Tpm, type KeyBlob } from '../../agent/tpm/index.js';
import { extendBootPcrs, startSwtpm, type Swtpm } from '../../scripts/harness/swtpm.js';
import { assertCode } from '../helpers/assert.js';

const BOOT_PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
const SELECTION: PcrSelection[] = [{ hashAlg: TPM_ALG.SHA256, pcrs: BOOT_PCRS }];

function flip(buf: Buffer, at: number): Buffer {
  const copy = Buffer.from(buf);
  copy[at < 0 ? copy.length + at : at]! ^= 0x01;
  return copy;
}

describe('attestation with a real TPM', () => {
  let swtpm: Swtpm;
  let tpm: Tpm;
  let ak: KeyBlob;
  let sessionKey: KeyBlob;
  const nonce = createHash('sha256').update('server nonce').digest();

  before(async () => {
    swtpm = await startSwtpm();
    await extendBootPcrs(swtpm.tcti);
    tpm = await Tpm.open(swtpm.tcti);
    ak = await tpm.createAttestationKey();
    sessionKey = await tpm.createSigningKey();
  });
  after(async () => {
    await tpm?.close();
    await swtpm?.stop();
  });

  test('the attestation key is a restricted ECDSA-SHA256 P-256 signing key bound to this TPM', () => {
    const pub = parsePublic(ak.public);
    checkAkPublic(pub);
    const a = pub.objectAttributes;
    for (const bit of ['restricted', 'sign', 'fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'userWithAuth'] as const) {
      assert.ok(a & TPMA_OBJECT[bit], `${bit} set`);
    }
    assert.equal(a & TPMA_OBJECT.decrypt, 0);
    assert.equal(pub.ecc?.curve, TPM_ECC_CURVE.NIST_P256);
    assert.deepEqual(pub.scheme, { alg: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 });
    assert.equal(pub.nameAlg, TPM_ALG.SHA256);
  });

  test('the session key is an unrestricted P-256 signing key that never leaves the TPM', () => {
    const pub = parsePublic(sessionKey.public);
    const a = pub.objectAttributes;
    for (const bit of ['sign', 'fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'userWithAuth'] as const) {
      assert.ok(a & TPMA_OBJECT[bit], `${bit} set`);
    }
    assert.equal(a & (TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt), 0);
    assert.equal(pub.ecc?.curve, TPM_ECC_CURVE.NIST_P256);
  });

  test('a quote over the boot PCRs verifies in TS against the PCR values the TPM reports', async () => {
    const q = await tpm.quote(ak, SELECTION, nonce);
    const pcrValues = await tpm.readPcrBank(BOOT_PCRS);
    const { attest, pcrs } = verifyQuote({
      akPublic: parsePublic(ak.public),
      attest: q.attest,
      signature: q.signature,
      qualifyingData: nonce,
      pcrValues,
    });
    assert.deepEqual(pcrs, BOOT_PCRS);
    assert.deepEqual(attest.extraData, nonce);
    assert.ok(
      pcrValues.get(0)?.some((b) => b !== 0),
      'PCR 0 carries the fake boot measurement',
    );
  });

  test('tampered quote evidence fails with one code per cause', async () => {
    const q = await tpm.quote(ak, SELECTION, nonce);
    const pcrValues = await tpm.readPcrBank(BOOT_PCRS);
    const base = { akPublic: parsePublic(ak.public), attest: q.attest, signature: q.signature, qualifyingData: nonce, pcrValues };
    verifyQuote(base);

    assertCode(() => verifyQuote({ ...base, attest: flip(q.attest, 0) }), 'quote_bad_magic');
    assertCode(() => verifyQuote({ ...base, attest: flip(q.attest, -1) }), 'quote_bad_signature');
    assertCode(() => verifyQuote({ ...base, signature: flip(q.signature, 10) }), 'quote_bad_signature');
    assertCode(() => verifyQuote({ ...base, qualifyingData: flip(nonce, 0) }), 'quote_nonce_mismatch');
    const forgedPcr = new Map(pcrValues);
    forgedPcr.set(4, flip(pcrValues.get(4)!, 0));
    assertCode(() => verifyQuote({ ...base, pcrValues: forgedPcr }), 'quote_pcr_digest_mismatch');
    const missingPcr = new Map(pcrValues);
    missingPcr.delete(7);
    assertCode(() => verifyQuote({ ...base, pcrValues: missingPcr }), 'quote_pcr_selection_mismatch');
    const otherAk = await tpm.createAttestationKey();
    assertCode(() => verifyQuote({ ...base, akPublic: parsePublic(otherAk.public) }), 'quote_bad_signature');
  });

  test('a certification of the session key by the AK verifies in TS', async () => {
    const c = await tpm.certify(sessionKey, ak, nonce);
    const { certifiedName } = verifyCertify({
      akPublic: parsePublic(ak.public),
      attest: c.attest,
      signature: c.signature,
      certifiedPublic: parsePublic(sessionKey.public),
      qualifyingData: nonce,
    });
    assert.equal(certifiedName.readUInt16BE(0), TPM_ALG.SHA256);
  });

  test('tampered certify evidence fails with one code per cause', async () => {
    const c = await tpm.certify(sessionKey, ak, nonce);
    const base = {
      akPublic: parsePublic(ak.public),
      attest: c.attest,
      signature: c.signature,
      certifiedPublic: parsePublic(sessionKey.public),
      qualifyingData: nonce,
    };
    verifyCertify(base);
    assertCode(() => verifyCertify({ ...base, attest: flip(c.attest, 0) }), 'certify_bad_magic');
    assertCode(() => verifyCertify({ ...base, attest: flip(c.attest, -1) }), 'certify_bad_signature');
    assertCode(() => verifyCertify({ ...base, signature: flip(c.signature, 10) }), 'certify_bad_signature');
    assertCode(() => verifyCertify({ ...base, qualifyingData: flip(nonce, 0) }), 'certify_nonce_mismatch');
    const otherKey = await tpm.createSigningKey();
    assertCode(() => verifyCertify({ ...base, certifiedPublic: parsePublic(otherKey.public) }), 'certify_name_mismatch');
    // The AK certifying itself: genuine TPM evidence, but of a restricted key.
    const self = await tpm.certify(ak, ak, nonce);
    assertCode(
      () => verifyCertify({ ...base, attest: self.attest, signature: self.signature, certifiedPublic: parsePublic(ak.public) }),
      'certify_key_restricted',
    );
  });

  test('the session key signs SHA-256 and SHA-384 digests that verify with node:crypto', async () => {
    const key = publicKeyObject(parsePublic(sessionKey.public));
    for (const [hash, alg] of [
      ['sha256', TPM_ALG.SHA256],
      ['sha384', TPM_ALG.SHA384],
    ] as const) {
      const message = Buffer.from(`renewal CSR (${hash})`);
      const sig = parseSignature(await tpm.sign(sessionKey, createHash(hash).update(message).digest()));
      assert.equal(sig.sigAlg, TPM_ALG.ECDSA);
      assert.equal(sig.hashAlg, alg);
      assert.ok(cryptoVerify(hash, message, key, signatureToDer(sig)));
    }
  });

  test('the AK refuses to sign an arbitrary digest', async () => {
    await assert.rejects(tpm.sign(ak, Buffer.alloc(32)), (e) => isEdgeidError(e, 'tpm_bad_argument'));
  });

  test('a key created in one batch loads in a later one: the SRK is recreated identically', async () => {
    const blob = await tpm.batch((s) => s.createSigningKey());
    const srkPublics = await Promise.all([0, 1].map(() => tpm.batch(async (s) => (await s.createPrimary('owner', srkTemplate())).public)));
    assert.deepEqual(srkPublics[0], srkPublics[1]);
    const sig = await tpm.sign(blob, Buffer.alloc(32, 3));
    assert.ok(sig.length > 0);
    assert.equal(await tpm.transientHandleCount(), 0);
  });
});
