/** Errors a technician can act on: the specific cause, with its own code. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TpmError } from '../../agent/tpm/errors.js';
import { ERRORS } from '../../protocol/errors/index.js';

test('a TPM in dictionary-attack lockout surfaces as tpm_lockout, other TPM failures as tpm_command_failed', () => {
  const lockout = new TpmError(
    0x921,
    'Esys_ActivateCredential',
    'tpm:warn(2.0): authorizations for objects subject to DA protection are not allowed at this time because the TPM is in DA lockout mode',
  );
  assert.equal(lockout.code, 'tpm_lockout');
  assert.match(ERRORS.tpm_lockout.fix, /dictionarylockout/);
  assert.equal(new TpmError(0x98e, 'Esys_Load', 'integrity').code, 'tpm_command_failed');
  assert.equal(new TpmError(0xa000a, 'Tss2_TctiLdr_Initialize', 'io error').code, 'tpm_unavailable');
  // an ESYS-layer code with the same low bits is not a lockout
  assert.equal(new TpmError(0x70921, 'Esys_Sign', 'esys').code, 'tpm_command_failed');
});

test('the registry explains a wrong device clock and an expired token in words a technician can act on', () => {
  assert.match(ERRORS.clock_skew.fix, /NTP|clock/);
  assert.match(ERRORS.token_expired.fix, /edgeid-admin token create/);
});
