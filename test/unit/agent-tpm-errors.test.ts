/**
 * How the agent's TPM layer names a failed TSS call (the layer of the TSS2_RC decides), and how it
 * reads its deadlines. The behaviour behind them runs against swtpm in tpm-unresponsive.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { DEFAULT_COMMAND_DEADLINE_MS, DEFAULT_TLS_DEADLINE_MS, resolveDeadlines } from '../../agent/tpm/connection.js';
import { TpmError, failureKind } from '../../agent/tpm/errors.js';

const TCTI_IO_ERROR = 0xa000a;
const SYS_MALFORMED_RESPONSE = 0x80011;
const MU_BAD_SIZE = 0x90010;
const ESYS_MALFORMED_RESPONSE = 0x70011;
const ESYS_BAD_SEQUENCE = 0x70007;
const ESYS_BAD_TR = 0x70018;
const TPM_RC_HANDLE_1 = 0x18b;

test('a TCTI failure is tpm_unresponsive and breaks the connection', () => {
  const e = new TpmError(TCTI_IO_ERROR, 'Esys_GetRandom', 'tcti:IO failure');
  assert.equal(e.code, 'tpm_unresponsive');
  assert.equal(e.breaksConnection, true);
  assert.equal(failureKind(TCTI_IO_ERROR, 'edgeid (the TPM connection broke: it must be reconnected)'), 'transport');
});

test('a malformed response (SAPI, MU or ESYS response checks) is tpm_bad_response and breaks the connection', () => {
  for (const rc of [SYS_MALFORMED_RESPONSE, MU_BAD_SIZE, ESYS_MALFORMED_RESPONSE, ESYS_BAD_SEQUENCE]) {
    const e = new TpmError(rc, 'Esys_Quote', '');
    assert.equal(e.code, 'tpm_bad_response', `0x${rc.toString(16)}`);
    assert.equal(e.breaksConnection, true);
  }
});

test('a TPM error code, an ESYS refusal and our own argument unmarshalling leave the connection alone', () => {
  const cases: [number, string][] = [
    [TPM_RC_HANDLE_1, 'Esys_FlushContext'],
    [ESYS_BAD_TR, 'Esys_FlushContext'],
    [MU_BAD_SIZE, 'Tss2_MU_TPM2B_PRIVATE_Unmarshal'],
  ];
  for (const [rc, command] of cases) {
    const e = new TpmError(rc, command, '');
    assert.equal(e.code, 'tpm_command_failed', `${command} 0x${rc.toString(16)}`);
    assert.equal(e.breaksConnection, false);
  }
});

test('deadlines come from the options, else EDGEID_TPM_DEADLINE_MS / EDGEID_TPM_TLS_DEADLINE_MS, else 30 s / 5 s', (t) => {
  const saved = { c: process.env.EDGEID_TPM_DEADLINE_MS, l: process.env.EDGEID_TPM_TLS_DEADLINE_MS };
  t.after(() => {
    for (const [k, v] of [
      ['EDGEID_TPM_DEADLINE_MS', saved.c],
      ['EDGEID_TPM_TLS_DEADLINE_MS', saved.l],
    ] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
  delete process.env.EDGEID_TPM_DEADLINE_MS;
  delete process.env.EDGEID_TPM_TLS_DEADLINE_MS;
  assert.deepEqual(resolveDeadlines(), { commandMs: DEFAULT_COMMAND_DEADLINE_MS, tlsMs: DEFAULT_TLS_DEADLINE_MS });
  assert.deepEqual([DEFAULT_COMMAND_DEADLINE_MS, DEFAULT_TLS_DEADLINE_MS], [30_000, 5_000]);
  process.env.EDGEID_TPM_DEADLINE_MS = '1200';
  process.env.EDGEID_TPM_TLS_DEADLINE_MS = '300';
  assert.deepEqual(resolveDeadlines(), { commandMs: 1200, tlsMs: 300 });
  assert.deepEqual(resolveDeadlines({ commandMs: 50 }), { commandMs: 50, tlsMs: 300 });
  process.env.EDGEID_TPM_DEADLINE_MS = 'soon';
  assert.throws(
    () => resolveDeadlines(),
    (e) => isEdgeidError(e, 'tpm_bad_argument') && /EDGEID_TPM_DEADLINE_MS/.test((e as Error).message),
  );
  assert.throws(
    () => resolveDeadlines({ commandMs: 10, tlsMs: 0 }),
    (e) => isEdgeidError(e, 'tpm_bad_argument'),
  );
});
