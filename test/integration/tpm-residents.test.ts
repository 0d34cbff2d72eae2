/**
 * Resident objects (budget: ≤ 6 TPM commands per renewal): the renewal keeps the SRK and the AK
 * loaded between batches. These tests break that state the ways a device can — a TPM reset, another
 * process flushing everything, a batch needing the slots, a handle that now names a foreign object —
 * and check that the next renewal still produces valid evidence and that nothing leaks.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { quoteQualifyingData } from '../../protocol/api.js';
import { makeCredential } from '../../protocol/tpm/makecredential.js';
import {
  akTemplate,
  objectName,
  parsePublic,
  sessionKeyTemplate,
  srkTemplate,
  verifyCertify,
  verifyQuote,
} from '../../protocol/tpm/index.js';
import { produceEvidence, type EvidenceResult } from '../../agent/evidence.js';
import { flushLeftoverObjects } from '../../agent/tpm-support.js';
import { Tpm, type KeyBlob } from '../../agent/tpm/index.js';
import { loadAddon } from '../../agent/tpm/native.js';
import { extendBootPcrs, startSwtpm, transientHandleCountViaTools, type Swtpm } from '../../scripts/harness/swtpm.js';

const run = promisify(execFile);
const PCRS = [0, 1, 2, 3, 7];
const CLAIMS = { agentVersion: '0.0.0-test', kernel: 'test' };
const WARM = { CreateLoaded: 1, Certify: 1, Quote: 1, Sign: 1, ContextSave: 1, FlushContext: 1 };

async function rig(t: TestContext): Promise<{ swtpm: Swtpm; tpm: Tpm; ak: KeyBlob }> {
  const swtpm = await startSwtpm();
  t.after(() => swtpm.stop());
  await extendBootPcrs(swtpm.tcti);
  const tpm = await Tpm.open(swtpm.tcti);
  t.after(() => tpm.close());
  const ak = await tpm.createAttestationKey();
  return { swtpm, tpm, ak };
}

let renewals = 0;
/** One renewal's TPM batch, with its evidence checked the way the server checks it. */
async function renew(tpm: Tpm, ak: KeyBlob): Promise<EvidenceResult> {
  const nonce = createHash('sha256').update(`renewal ${++renewals}`).digest();
  const ev = await produceEvidence(tpm, { ak, nonce, claims: CLAIMS, pcrs: PCRS, commonName: 'dev-residents' });
  const akPublic = parsePublic(ak.public);
  const b = (s: string) => Buffer.from(s, 'base64');
  const pcrValues = new Map(Object.entries(ev.evidence.pcrValues).map(([k, v]) => [Number(k), b(v)]));
  verifyQuote({
    akPublic,
    attest: b(ev.evidence.quote.attest),
    signature: b(ev.evidence.quote.signature),
    qualifyingData: quoteQualifyingData(nonce, CLAIMS),
    pcrValues,
  });
  verifyCertify({
    akPublic,
    attest: b(ev.evidence.certify.attest),
    signature: b(ev.evidence.certify.signature),
    qualifyingData: nonce,
    certifiedPublic: parsePublic(ev.sessionKey.public),
  });
  return ev;
}

test('after a TPM reset the next renewal drops the stale residents, reloads them once and succeeds', async (t) => {
  const { swtpm, tpm, ak } = await rig(t);
  await renew(tpm, ak);
  assert.deepEqual((await renew(tpm, ak)).tpmCommandStats, WARM);

  await swtpm.restart(); // TPM Reset: every transient object is gone, the handles are stale
  await extendBootPcrs(swtpm.tcti);
  const ev = await renew(tpm, ak);
  // The failed first attempt (CreateLoaded on the stale SRK: TPM_RC_REFERENCE_H0) and the flushes of
  // the stale handles are counted too; then the residents are recreated (same boot PCRs: no PCR_Read).
  assert.deepEqual(ev.tpmCommandStats, { ...WARM, CreateLoaded: 2, FlushContext: 3, CreatePrimary: 1, Load: 1 });
  assert.equal(await tpm.transientHandleCount(), 2);
  assert.deepEqual((await renew(tpm, ak)).tpmCommandStats, WARM, 'warm again');
});

test('residents flushed by another process are recreated by the next renewal', async (t) => {
  const { swtpm, tpm, ak } = await rig(t);
  await renew(tpm, ak);
  await run('tpm2_flushcontext', ['-T', swtpm.tcti, '-t']);
  assert.equal(await transientHandleCountViaTools(swtpm.tcti), 0);
  const ev = await renew(tpm, ak);
  assert.equal(ev.tpmCommandStats.CreatePrimary, 1);
  assert.equal(ev.tpmCommandStats.Load, 1);
  assert.equal(ev.tpmCommandStats.PCR_Read, undefined, 'the PCRs did not change: still no PCR_Read');
  assert.equal(await transientHandleCountViaTools(swtpm.tcti), 2);
});

test('flushLeftoverObjects (agent start, wipe) flushes the residents too, and the next renewal simply reloads them', async (t) => {
  const { swtpm, tpm, ak } = await rig(t);
  await renew(tpm, ak);
  assert.equal(tpm.residentObjectCount, 2);
  assert.equal(await flushLeftoverObjects(tpm), 2);
  assert.equal(tpm.residentObjectCount, 0);
  assert.equal(await transientHandleCountViaTools(swtpm.tcti), 0);
  const ev = await renew(tpm, ak);
  assert.deepEqual(ev.tpmCommandStats, { ...WARM, CreatePrimary: 1, Load: 1 }, 'no stale handle, no retry');
  assert.equal(await tpm.flushResidents(), 2);
  assert.equal(await transientHandleCountViaTools(swtpm.tcti), 0);
});

test('a batch that needs every slot evicts the residents it does not use; the next renewal reloads them', async (t) => {
  const { tpm, ak } = await rig(t);
  const [a, b] = [await tpm.createSigningKey(), await tpm.createSigningKey()];
  await renew(tpm, ak); // SRK + AK resident
  const loaded = await tpm.batch(async (s) => {
    await s.load(a); // under the resident SRK: the third slot
    await s.load(b); // OBJECT_MEMORY → the unused resident AK goes → loads
    return s.transientHandleCount();
  });
  assert.equal(loaded, 3);
  assert.equal(tpm.residentObjectCount, 1, 'the SRK stayed, the AK was evicted');
  assert.equal(await tpm.transientHandleCount(), 1);
  const ev = await renew(tpm, ak);
  assert.deepEqual(ev.tpmCommandStats, { ...WARM, Load: 1 }, 'only the AK is loaded again');
});

test('activating an enrollment credential makes room for the EK while the SRK and AK are resident', async (t) => {
  const { swtpm, tpm, ak } = await rig(t);
  await renew(tpm, ak);
  const ek = await tpm.endorsementKey('rsa');
  const secret = randomBytes(32);
  const cred = makeCredential(parsePublic(ek.public), objectName(parsePublic(ak.public)), secret);
  const ev = await produceEvidence(tpm, {
    ak,
    nonce: randomBytes(32),
    claims: CLAIMS,
    pcrs: PCRS,
    commonName: 'dev-residents',
    activate: { credentialBlob: cred.credentialBlob, encryptedSecret: cred.encryptedSecret, ek },
  });
  assert.deepEqual(ev.secret, secret);
  assert.equal(ev.tpmCommandStats.CreatePrimary, 1, 'the SRK, released for the EK, is resident again');
  assert.equal(await transientHandleCountViaTools(swtpm.tcti), 2);
  assert.deepEqual((await renew(tpm, ak)).tpmCommandStats, WARM);
});

test('a Tpm opened with keepResidents: false (the one-shot enroll command) leaves nothing loaded after the batch', async (t) => {
  const swtpm = await startSwtpm();
  t.after(() => swtpm.stop());
  const tpm = await Tpm.open(swtpm.tcti, { keepResidents: false });
  t.after(() => tpm.close());
  const ak = await tpm.createAttestationKey();
  const ev = await renew(tpm, ak);
  assert.equal(ev.tpmCommandStats.CreatePrimary, 1);
  assert.equal(ev.tpmCommandStats.FlushContext, 3, 'the session key, the AK and the SRK');
  assert.equal(tpm.residentObjectCount, 0);
  assert.equal(await transientHandleCountViaTools(swtpm.tcti), 0);
});

for (const [foreign, template, caughtBy] of [
  ['attestation key', akTemplate, 'the local check that our AK signed the quote and certification'],
  ['signing key', sessionKeyTemplate, 'the TPM error of Certify (unsupported scheme)'],
] as const) {
  test(`a resident handle that names a foreign ${foreign} after a TPM reset is caught by ${caughtBy} and replaced`, async (t) => {
    const { swtpm, tpm, ak } = await rig(t);
    await renew(tpm, ak);
    await swtpm.restart();
    // Another TPM user (no resource manager) now holds objects under the very handle numbers our
    // residents had: an SRK, and a key of its own where our AK was.
    const other = await Tpm.open(swtpm.tcti);
    t.after(() => other.close());
    const addon = loadAddon();
    const { ctx } = (other as unknown as { conn: { ctx: Parameters<typeof addon.flush>[0] } }).conn;
    const srk = await addon.createPrimary(ctx, addon.ESYS_TR.RH_OWNER, srkTemplate());
    await addon.createLoaded(ctx, srk.handle, template());
    assert.equal(await transientHandleCountViaTools(swtpm.tcti), 2);

    const ev = await renew(tpm, ak); // verifies against our AK: the foreign key's signatures were not used
    assert.equal(ev.tpmCommandStats.CreatePrimary, 1, 'the residents were recreated');
    assert.equal(ev.tpmCommandStats.Certify, 2, 'after one failed attempt');
    assert.equal(await tpm.transientHandleCount(), 2);
  });
}
