/**
 * MakeCredential (protocol/tpm, what the server runs) → ActivateCredential through the addon, for
 * both EKs swtpm_setup creates (RSA-2048 with PolicyA, ECC P-384 with PolicyB) — persistent and
 * recreated from the TCG templates — and tpm2_makecredential's output activating through the addon.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { makeCredential, parseTpm2ToolsCredentialFile } from '../../protocol/tpm/makecredential.js';
import { objectName, parsePublic } from '../../protocol/tpm/index.js';
import { TPM_RC, Tpm, TpmError } from '../../agent/tpm/index.js';
import { startSwtpm } from '../../scripts/harness/swtpm.js';

const run = promisify(execFile);

async function openTpm(t: import('node:test').TestContext, evictEks = false): Promise<Tpm> {
  const swtpm = await startSwtpm();
  t.after(() => swtpm.stop());
  if (evictEks) {
    for (const handle of ['0x81010001', '0x81010016']) await run('tpm2_evictcontrol', ['-T', swtpm.tcti, '-C', 'o', '-c', handle]);
  }
  const tpm = await Tpm.open(swtpm.tcti);
  t.after(() => tpm.close());
  return tpm;
}

for (const evict of [false, true]) {
  const how = evict ? 'recreated from the TCG template' : 'persistent';
  test(`MakeCredential → ActivateCredential returns the secret with the RSA and the ECC P-384 EK (${how})`, async (t) => {
    const tpm = await openTpm(t, evict);
    const ak = await tpm.createAttestationKey();
    const akName = objectName(parsePublic(ak.public));
    for (const kind of ['rsa', 'ecc'] as const) {
      const ek = await tpm.endorsementKey(kind);
      assert.equal(ek.persistentHandle === undefined, evict);
      const secret = randomBytes(32);
      const cred = makeCredential(parsePublic(ek.public), akName, secret);
      const before = tpm.commandStats().ActivateCredential ?? 0;
      assert.deepEqual(await tpm.activateCredential(ak, cred.credentialBlob, cred.encryptedSecret, kind), secret, kind);
      // StartAuthSession, PolicySecret, [PolicyOR for the P-384 EK], ActivateCredential, FlushContext
      assert.equal((tpm.commandStats().ActivateCredential ?? 0) - before, kind === 'rsa' ? 4 : 5);
    }
    assert.equal(await tpm.transientHandleCount(), 0);
  });
}

test('a credential made for another key name does not activate: TpmError from ActivateCredential', async (t) => {
  const tpm = await openTpm(t);
  const ak = await tpm.createAttestationKey();
  const other = await tpm.createAttestationKey();
  const ek = await tpm.endorsementKey('rsa');
  const cred = makeCredential(parsePublic(ek.public), objectName(parsePublic(other.public)), randomBytes(32));
  const err = await tpm.activateCredential(ak, cred.credentialBlob, cred.encryptedSecret, ek).catch((e: unknown) => e);
  assert.ok(err instanceof TpmError, String(err));
  assert.equal(err.command, 'Esys_ActivateCredential');
  assert.equal(err.tpmCode, TPM_RC.INTEGRITY);
  assert.equal(await tpm.transientHandleCount(), 0, 'the policy session and loaded objects are gone');
});

test('the output of tpm2_makecredential --tcti none activates through the addon, for both EKs', async (t) => {
  const tpm = await openTpm(t);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-cred-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const ak = await tpm.createAttestationKey();
  const akName = objectName(parsePublic(ak.public)).toString('hex');
  for (const kind of ['rsa', 'ecc'] as const) {
    const ek = await tpm.endorsementKey(kind);
    const secret = randomBytes(32);
    await writeFile(path.join(dir, `${kind}.pub`), ek.public);
    await writeFile(path.join(dir, `${kind}.secret`), secret);
    await run('tpm2_makecredential', [
      '-T',
      'none',
      '-u',
      path.join(dir, `${kind}.pub`),
      '-s',
      path.join(dir, `${kind}.secret`),
      '-n',
      akName,
      '-o',
      path.join(dir, `${kind}.cred`),
    ]);
    const cred = parseTpm2ToolsCredentialFile(await readFile(path.join(dir, `${kind}.cred`)));
    assert.deepEqual(await tpm.activateCredential(ak, cred.credentialBlob, cred.encryptedSecret, kind), secret, kind);
  }
});
