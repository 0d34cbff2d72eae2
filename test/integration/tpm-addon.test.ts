/**
 * The TPM addon and its TS API against a real swtpm: capabilities, randomness, PCRs, errors,
 * the batch/queue discipline and the command counter.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { TPM_ALG } from '../../protocol/tpm/index.js';
import { TPM_RC, Tpm, TpmError } from '../../agent/tpm/index.js';
import { bootMeasurement, extendBootPcrs, startSwtpm, transientHandleCountViaTools, type Swtpm } from '../../scripts/harness/swtpm.js';

const run = promisify(execFile);

describe('TPM addon on swtpm', () => {
  let swtpm: Swtpm;
  let tpm: Tpm;

  before(async () => {
    swtpm = await startSwtpm();
    tpm = await Tpm.open(swtpm.tcti);
  });
  after(async () => {
    await tpm?.close();
    await swtpm?.stop();
  });

  test('info reports the manufacturer, firmware, spec, slots and the active sha256 bank', async () => {
    const info = await tpm.info();
    assert.equal(info.manufacturer, 'IBM');
    assert.equal(info.vendor, 'SWTPM');
    assert.match(info.firmwareVersion, /^\d+\.\d+\.\d+\.\d+$/);
    assert.equal(info.spec.family, '2.0');
    assert.match(info.spec.revision, /^1\.\d\d$/);
    assert.equal(info.transientObjectSlots, 3);
    assert.deepEqual(info.pcrBanks, [{ hashAlg: TPM_ALG.SHA256, pcrs: Array.from({ length: 24 }, (_, i) => i) }]);
  });

  test('getRandom returns the requested number of bytes, across several TPM calls', async () => {
    const before = tpm.commandCount;
    const bytes = await tpm.getRandom(100);
    assert.equal(bytes.length, 100);
    assert.ok(tpm.commandCount - before >= 4, 'at most 32 bytes per GetRandom');
    assert.notDeepEqual(bytes, await tpm.getRandom(100));
  });

  test('readPcrs returns values in TPM order and follows extensions', async () => {
    await extendBootPcrs(swtpm.tcti, 'addon-test', [0, 1]);
    const bank = await tpm.readPcrBank([1, 0, 16]);
    const expected0 = createHash('sha256').update(Buffer.alloc(32)).update(bootMeasurement(0, 'addon-test')).digest();
    assert.deepEqual(bank.get(0), expected0);
    assert.deepEqual(bank.get(16), Buffer.alloc(32));
    assert.deepEqual([...bank.keys()], [0, 1, 16]);

    await tpm.extendPcr(16, Buffer.alloc(32, 0xab));
    const after16 = (await tpm.readPcrBank([16])).get(16);
    assert.deepEqual(after16, createHash('sha256').update(Buffer.alloc(32)).update(Buffer.alloc(32, 0xab)).digest());
  });

  test('readPcrs reads more than 8 PCRs (several PCR_Read calls)', async () => {
    const values = await tpm.readPcrs([{ hashAlg: TPM_ALG.SHA256, pcrs: Array.from({ length: 24 }, (_, i) => i) }]);
    assert.deepEqual(
      values.map((v) => v.pcr),
      Array.from({ length: 24 }, (_, i) => i),
    );
    assert.ok(values.every((v) => v.hashAlg === TPM_ALG.SHA256 && v.value.length === 32));
  });

  test('readPcrs of an inactive bank fails with tpm_pcr_unavailable', async () => {
    await assert.rejects(tpm.readPcrs([{ hashAlg: TPM_ALG.SHA1, pcrs: [0] }]), (e) => isEdgeidError(e, 'tpm_pcr_unavailable'));
  });

  test('a TPM error surfaces as TpmError with its response code, decoded text and command', async () => {
    const key = await tpm.createSigningKey();
    const damaged = Buffer.from(key.private);
    damaged[damaged.length - 1]! ^= 0x01; // breaks the blob's integrity HMAC
    const err = await tpm.sign({ public: key.public, private: damaged }, Buffer.alloc(32)).then(
      () => assert.fail('loading a damaged blob must fail'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof TpmError, String(err));
    assert.equal(err.code, 'tpm_command_failed');
    assert.equal(err.command, 'Esys_Load');
    assert.equal(err.layer, 0);
    assert.equal(err.tpmCode, TPM_RC.INTEGRITY);
    assert.match(err.text, /integrity/i);
    assert.match(err.message, /Esys_Load failed: 0x[0-9a-f]+ /);
    assert.equal(await tpm.transientHandleCount(), 0, 'the SRK of the failed batch was flushed');
  });

  test('a batch flushes everything it loaded when its callback throws', async () => {
    const ak = await tpm.createAttestationKey();
    await assert.rejects(
      tpm.batch(async (s) => {
        await s.load(ak);
        await s.createLoaded((await import('../../protocol/tpm/index.js')).sessionKeyTemplate());
        assert.equal(await s.transientHandleCount(), 3);
        throw new Error('boom');
      }),
      /boom/,
    );
    assert.equal(await tpm.transientHandleCount(), 0);
    assert.equal(await transientHandleCountViaTools(swtpm.tcti), 0);
  });

  test('only three objects fit: a fourth load fails with OBJECT_MEMORY, flushing early makes room', async () => {
    const [a, b, c] = [await tpm.createSigningKey(), await tpm.createSigningKey(), await tpm.createSigningKey()];
    const err = await tpm
      .batch(async (s) => {
        await s.load(a); // SRK + a
        await s.load(b); // SRK + a + b
        await s.load(c); // a fourth object
      })
      .catch((e: unknown) => e);
    assert.ok(err instanceof TpmError && err.tpmCode === TPM_RC.OBJECT_MEMORY, String(err));
    const loaded = await tpm.batch(async (s) => {
      const ka = await s.load(a);
      const kb = await s.load(b);
      await s.flush(ka);
      await s.load(c);
      await s.flush(kb);
      await s.releaseSrk();
      return s.transientHandleCount();
    });
    assert.equal(loaded, 1, 'only c is left inside the batch');
    assert.equal(await tpm.transientHandleCount(), 0);
  });

  test('flushTransientObjects clears objects another process left loaded', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-leftover-'));
    try {
      for (let i = 0; i < 2; i++) await run('tpm2_createprimary', ['-T', swtpm.tcti, '-C', 'o', '-c', path.join(dir, `p${i}.ctx`)]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    assert.equal(await tpm.transientHandleCount(), 2);
    assert.equal(await tpm.flushTransientObjects(), 2);
    assert.equal(await tpm.transientHandleCount(), 0);
    assert.equal(await tpm.flushTransientObjects(), 0);
  });

  test('calls queue behind each other and a nested call inside a batch is refused', async () => {
    const order: string[] = [];
    const first = tpm.batch(async (s) => {
      await s.getRandom(8);
      order.push('first');
      await assert.rejects(tpm.getRandom(8), (e) => isEdgeidError(e, 'tpm_nested_batch'));
    });
    const second = tpm.getRandom(8).then(() => order.push('second'));
    await Promise.all([first, second]);
    assert.deepEqual(order, ['first', 'second']);
  });

  test('a malformed TPM structure as argument rejects with its unmarshal error and reaches no TPM', async () => {
    const key = await tpm.createSigningKey();
    const good = await tpm.batch(async (s) => s.transientHandleCount());
    await assert.rejects(
      tpm.batch(async (s) => {
        await s.srk();
        const before = s.commandCount;
        try {
          return await s.load({ public: key.public, private: Buffer.from([0x00, 0x10, 0x01]) });
        } finally {
          assert.equal(s.commandCount, before, 'no Load was sent');
        }
      }),
      (e) => e instanceof TpmError && e.code === 'tpm_command_failed' && e.command === 'Tss2_MU_TPM2B_PRIVATE_Unmarshal',
    );
    await assert.rejects(
      tpm.batch(async (s) => s.contextLoad(Buffer.concat([Buffer.alloc(8), Buffer.from('trailing')]), key.public)),
      (e) => e instanceof TpmError && e.command === 'Tss2_MU_TPMS_CONTEXT_Unmarshal',
    );
    assert.equal(await tpm.transientHandleCount(), good, 'nothing left loaded');
  });

  test('a session used after its batch ended is refused with tpm_closed', async () => {
    const leaked = await tpm.batch(async (s) => s);
    await assert.rejects(leaked.getRandom(4), (e) => isEdgeidError(e, 'tpm_closed'));
  });

  test('contextSave/contextLoad keep a key usable without its parent', async () => {
    const key = await tpm.createSigningKey();
    const saved = await tpm.batch(async (s) => {
      const k = await s.load(key);
      return s.contextSave(k);
    });
    const sig = await tpm.batch(async (s) => {
      const k = await s.contextLoad(saved, key.public);
      assert.equal(await s.transientHandleCount(), 1, 'no SRK needed');
      return s.sign(k, Buffer.alloc(32, 7));
    });
    assert.ok(sig.length > 64);
    assert.equal(await tpm.transientHandleCount(), 0);
  });

  test('commandCount and commandStats count every TPM command, flushes included', async () => {
    const key = await tpm.createSigningKey();
    const before = tpm.commandCount;
    const statsBefore = tpm.commandStats();
    await tpm.sign(key, Buffer.alloc(32, 1));
    // CreatePrimary(SRK) + Load + Sign + 2 × FlushContext
    assert.equal(tpm.commandCount - before, 5);
    const stats = tpm.commandStats();
    assert.equal((stats.Sign ?? 0) - (statsBefore.Sign ?? 0), 1);
    assert.equal((stats.FlushContext ?? 0) - (statsBefore.FlushContext ?? 0), 2);
  });
});

test('opening an unreachable TPM fails with tpm_unavailable and the TCTI response code', async () => {
  const err = await Tpm.open('swtpm:host=127.0.0.1,port=1').then(
    () => assert.fail('nothing listens on port 1'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof TpmError, String(err));
  assert.equal(err.code, 'tpm_unavailable');
  assert.equal(err.command, 'Tss2_TctiLdr_Initialize');
  assert.equal(err.layer, 10, 'TCTI layer');
  assert.match(err.text, /IO failure/);
});

test('a closed Tpm refuses further calls with tpm_closed', async (t) => {
  const swtpm = await startSwtpm({ bare: true });
  t.after(() => swtpm.stop());
  const tpm = await Tpm.open(swtpm.tcti);
  assert.equal((await tpm.getRandom(4)).length, 4);
  await tpm.close();
  await assert.rejects(tpm.getRandom(4), (e) => isEdgeidError(e, 'tpm_closed'));
});
