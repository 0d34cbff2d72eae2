/**
 * The load generator's software TPM2_ActivateCredential (scripts/harness/softenroll.ts) against the
 * server's TPM2_MakeCredential (protocol/tpm/makecredential.ts): the secret comes back for the AK
 * the credential names, and a credential for another key, or altered, fails the integrity check.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { makeCredential } from '../../protocol/tpm/makecredential.js';
import { akTemplate } from '../../protocol/tpm/templates.js';
import { softKey } from '../../scripts/harness/softdevice.js';
import { activateCredential, softEk } from '../../scripts/harness/softenroll.js';

test('software ActivateCredential recovers the secret MakeCredential bound to the AK name', () => {
  const ek = softEk();
  const ak = softKey(akTemplate());
  for (let i = 0; i < 5; i++) {
    const secret = randomBytes(32);
    const c = makeCredential(ek.parsed, ak.name, secret);
    assert.deepEqual(activateCredential(ek, ak.name, c.credentialBlob, c.encryptedSecret), secret);
  }
});

test('software ActivateCredential refuses another AK, another EK and an altered blob (integrity)', () => {
  const ek = softEk();
  const ak = softKey(akTemplate());
  const other = softKey(akTemplate());
  const c = makeCredential(ek.parsed, ak.name, randomBytes(32));
  assert.throws(() => activateCredential(ek, other.name, c.credentialBlob, c.encryptedSecret), /integrity/);
  assert.throws(() => activateCredential(softEk(), ak.name, c.credentialBlob, c.encryptedSecret), /integrity/);
  const bad = Buffer.from(c.credentialBlob);
  bad[bad.length - 1]! ^= 1;
  assert.throws(() => activateCredential(ek, ak.name, bad, c.encryptedSecret), /integrity/);
});
