import { defineErrors } from './types.js';

/**
 * Codes of the agent's TPM layer (agent/tpm). They arise on the device; a server never answers
 * with them, so the statuses only say whose fault it is (5xx: the TPM or the agent's build).
 */
export const agentTpmErrors = defineErrors({
  tpm_unavailable: {
    status: 503,
    message: 'The TPM could not be opened.',
    fix: 'Check the TCTI (--tcti or EDGEID_TCTI, default device:/dev/tpmrm0): the device must exist and be readable by the agent user (group tss), or the simulator must be running on that port.',
  },
  tpm_command_failed: {
    status: 500,
    message: 'A TPM command failed.',
    fix: 'The message names the command and the TPM response code. 0x902 (object memory) means transient objects were left loaded: run `tpm2_flushcontext -t`. Lockout or hierarchy-auth errors need the TPM owner.',
  },
  tpm_addon_missing: {
    status: 500,
    message: 'The TPM addon (edgeid_tpm.node) could not be loaded.',
    fix: 'Build it with `npm run build:addon` (needs libtss2-dev), or point EDGEID_TPM_ADDON at the shipped edgeid_tpm.node.',
  },
  tpm_closed: {
    status: 500,
    message: 'The TPM connection was already closed.',
    fix: 'A bug in the agent: it used the TPM after shutting it down. Report it with the log.',
  },
  tpm_nested_batch: {
    status: 500,
    message: 'A TPM method was called on the Tpm object inside one of its own batches.',
    fix: 'A bug in the agent: inside tpm.batch(), use the session passed to the callback (it would otherwise wait for itself forever).',
  },
  tpm_bad_argument: {
    status: 500,
    message: 'A TPM method was called with an argument it cannot use.',
    fix: 'A bug in the agent: the message names the argument.',
  },
  tpm_ek_not_found: {
    status: 500,
    message: 'The TPM has no endorsement key of the requested kind.',
    fix: 'Check `edgeid-agent tpm info`. A TPM without an EK certificate can still use the RSA EK from the TCG template; ask for kind rsa.',
  },
  tpm_ek_mismatch: {
    status: 500,
    message: 'The endorsement key in the TPM does not match the key in its EK certificate.',
    fix: 'The TPM was re-provisioned or the certificate in NV is stale or foreign. Do not enroll this device; ask the vendor or re-provision the EK certificate.',
  },
  tpm_ek_policy_unsupported: {
    status: 500,
    message: "The endorsement key's authorisation policy is not one the agent knows how to satisfy.",
    fix: 'Use the other EK kind (rsa or ecc), or report the EK public area (tpm2_readpublic) so the policy can be supported.',
  },
  tpm_pcr_unavailable: {
    status: 500,
    message: 'The TPM did not return a value for every requested PCR.',
    fix: 'The PCR bank (e.g. sha256) is probably not active on this TPM; check with `tpm2_getcap pcrs` and select an active bank.',
  },
  tpm_tls_openssl_mismatch: {
    status: 500,
    message: 'The TPM addon was built against another OpenSSL than the one inside this Node.',
    fix: 'Rebuild the addon for this Node (`npm run build:addon`, which compiles against /usr/include/node); the TPM-backed TLS key needs the same OpenSSL major.minor as Node.',
  },
  tpm_tls_node_internals_changed: {
    status: 500,
    message: "This Node's tls.SecureContext no longer exposes the SSL_CTX the TPM key is installed into (context._external).",
    fix: 'A Node upgrade changed an internal the agent relies on. Run the agent on the Node version it was released for and report the Node version; test/integration/tpm-tls.test.ts shows the failing check.',
  },
  tpm_tls_key_mismatch: {
    status: 500,
    message: "The TLS certificate's public key is not the TPM key's.",
    fix: 'A bug in the agent or a state dir out of step: the certificate must be the one issued for this session key. Renew to get a matching pair.',
  },
  tpm_tls_key_rejected: {
    status: 500,
    message: 'OpenSSL did not accept the TPM-backed key for the TLS context.',
    fix: 'The message names the OpenSSL reason. Check that certPem holds the leaf certificate first and that the key is an unrestricted ECC P-256/P-384 signing key.',
  },
  tpm_unresponsive: {
    status: 503,
    message: 'The TPM did not answer a command within its deadline, or the connection to it broke.',
    fix: 'Check the TPM (kernel log for tpm_tis/tpm_crb timeouts) or the simulator and the link to it. The agent fails TPM calls at once while the TPM stays silent and reconnects by itself when it answers again. The deadline is EDGEID_TPM_DEADLINE_MS (default 30000) for queued commands and EDGEID_TPM_TLS_DEADLINE_MS (default 5000) for the TLS signature.',
  },
  tpm_bad_response: {
    status: 503,
    message: 'The TPM answered with a malformed response (truncated, padded or corrupted on the way).',
    fix: 'Check the link to the TPM (bus, cable, simulator, proxy). The agent opens a fresh TPM connection before its next command; if this repeats, the TPM or its driver is faulty.',
  },
  tpm_lockout: {
    status: 503,
    message: 'The TPM is in dictionary-attack lockout and refuses authorised commands for now.',
    fix: 'Wait for the lockout to expire (the TPM owner can clear it with tpm2_dictionarylockout --clear-lockout), then restart the agent.',
  },
});
