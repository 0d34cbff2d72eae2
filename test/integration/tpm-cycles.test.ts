/**
 * No leaks: swtpm has no resource manager and only 3 object slots, so a single unflushed object
 * breaks the agent within a few renewals.
 * - 200 quote + certify + sign cycles through the convenience methods leave the TPM's
 *   transient-handle count (read through the addon) at 0 after every cycle.
 * - 200 renewal batches (agent/evidence.ts) keep exactly the two residents — the SRK and the AK —
 *   between cycles and nothing else, use 6 TPM commands each once warm, and leave 0 after close().
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { quoteQualifyingData } from '../../protocol/api.js';
import { TPM_ALG, parsePublic, verifyCertify, verifyQuote } from '../../protocol/tpm/index.js';
import { produceEvidence } from '../../agent/evidence.js';
import { Tpm } from '../../agent/tpm/index.js';
import { extendBootPcrs, startSwtpm, transientHandleCountViaTools } from '../../scripts/harness/swtpm.js';

const CYCLES = 200;

test(`${CYCLES} quote + certify + sign cycles leave 0 transient objects after each`, async (t) => {
  const swtpm = await startSwtpm();
  t.after(() => swtpm.stop());
  const tpm = await Tpm.open(swtpm.tcti);
  t.after(() => tpm.close());
  const ak = await tpm.createAttestationKey();
  const sessionKey = await tpm.createSigningKey();
  const akPublic = parsePublic(ak.public);
  const selection = [{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3] }];

  const counts: number[] = [];
  for (let i = 0; i < CYCLES; i++) {
    const nonce = createHash('sha256').update(`cycle ${i}`).digest();
    const q = await tpm.quote(ak, selection, nonce);
    const c = await tpm.certify(sessionKey, ak, nonce);
    const sig = await tpm.sign(sessionKey, nonce);
    assert.ok(sig.length > 0);
    counts.push(await tpm.transientHandleCount());
    if (i % 50 === 0) {
      // Spot-check that the evidence is real, not just that nothing leaked.
      verifyQuote({
        akPublic,
        attest: q.attest,
        signature: q.signature,
        qualifyingData: nonce,
        pcrValues: await tpm.readPcrBank([0, 1, 2, 3]),
      });
      verifyCertify({
        akPublic,
        attest: c.attest,
        signature: c.signature,
        qualifyingData: nonce,
        certifiedPublic: parsePublic(sessionKey.public),
      });
    }
  }
  assert.deepEqual(counts, new Array(CYCLES).fill(0));
  assert.equal(tpm.residentObjectCount, 0, 'the convenience methods make nothing resident');
  assert.equal(await transientHandleCountViaTools(swtpm.tcti), 0, 'tpm2-tools agrees');
});

test(`${CYCLES} renewal batches keep exactly the SRK and the AK loaded between cycles, 6 commands each, and 0 objects after close`, async (t) => {
  const swtpm = await startSwtpm();
  t.after(() => swtpm.stop());
  await extendBootPcrs(swtpm.tcti);
  const tpm = await Tpm.open(swtpm.tcti);
  t.after(() => tpm.close());
  const ak = await tpm.createAttestationKey();
  const akPublic = parsePublic(ak.public);
  const pcrs = [0, 1, 2, 3, 7];
  const claims = { agentVersion: '0.0.0-test', kernel: 'test' };

  const viaTools: number[] = [];
  const commands: number[] = [];
  for (let i = 0; i < CYCLES; i++) {
    const nonce = createHash('sha256').update(`renewal ${i}`).digest();
    const ev = await produceEvidence(tpm, { ak, nonce, claims, pcrs, commonName: 'dev-cycles' });
    commands.push(ev.tpmCommands);
    if (i === 0) {
      assert.deepEqual(
        ev.tpmCommandStats,
        { CreatePrimary: 1, Load: 1, CreateLoaded: 1, Certify: 1, Quote: 1, PCR_Read: 1, Sign: 1, ContextSave: 1, FlushContext: 1 },
        'the first renewal loads the residents and reads the PCRs',
      );
    } else {
      assert.deepEqual(
        ev.tpmCommandStats,
        { CreateLoaded: 1, Certify: 1, Quote: 1, Sign: 1, ContextSave: 1, FlushContext: 1 },
        `renewal ${i}`,
      );
    }
    assert.equal(await tpm.transientHandleCount(), 2, `renewal ${i}: exactly the SRK and the AK stay loaded`);
    if (i % 20 === 0) viaTools.push(await transientHandleCountViaTools(swtpm.tcti));
    if (i % 50 === 0) {
      // Spot-check that the evidence is real, not just that nothing leaked.
      const values = new Map(Object.entries(ev.evidence.pcrValues).map(([k, v]) => [Number(k), Buffer.from(v, 'base64')]));
      const q = ev.evidence.quote;
      const c = ev.evidence.certify;
      const qd = quoteQualifyingData(nonce, claims);
      verifyQuote({
        akPublic,
        attest: Buffer.from(q.attest, 'base64'),
        signature: Buffer.from(q.signature, 'base64'),
        qualifyingData: qd,
        pcrValues: values,
      });
      verifyCertify({
        akPublic,
        attest: Buffer.from(c.attest, 'base64'),
        signature: Buffer.from(c.signature, 'base64'),
        qualifyingData: nonce,
        certifiedPublic: parsePublic(ev.sessionKey.public),
      });
    }
  }
  assert.deepEqual(commands.slice(1), new Array(CYCLES - 1).fill(6), 'a warm renewal is 6 TPM commands, flushes included');
  assert.deepEqual(viaTools, new Array(viaTools.length).fill(2), 'tpm2-tools sees the same 2 objects between cycles');
  assert.equal(tpm.residentObjectCount, 2);
  await tpm.close();
  assert.equal(await transientHandleCountViaTools(swtpm.tcti), 0, 'close() flushed the residents');
});
