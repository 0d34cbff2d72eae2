import { defineErrors } from './types.js';

/**
 * Codes of the enrollment server's device-facing API (enrollment, renewal, CRL) and of the HTTP
 * layer both the device API and the admin API share. One code per failed check.
 */
export const enrollErrors = defineErrors({
  // --- HTTP layer -------------------------------------------------------------------------
  bad_request: {
    status: 400,
    message: 'The request does not match the API schema.',
    fix: 'Check the field named in the message; the client and the server may be different versions.',
  },
  text_not_well_formed: {
    status: 400,
    message: 'A text in the request holds a lone UTF-16 surrogate or a NUL character.',
    fix: 'Send well-formed Unicode text (every string valid UTF-8, no U+0000).',
  },
  malformed_json: {
    status: 400,
    message: 'The request body is not valid JSON.',
    fix: 'Send a JSON object with Content-Type: application/json.',
  },
  body_too_large: {
    status: 413,
    message: 'The request body is larger than the server accepts (64 KiB).',
    fix: 'Evidence is a few KiB; a larger body is not an edgeid client. Check what sends it.',
  },
  unsupported_media_type: {
    status: 415,
    message: 'The request body must be application/json.',
    fix: 'Send Content-Type: application/json.',
  },
  not_found: {
    status: 404,
    message: 'There is no such API route.',
    fix: 'Check the URL and the client version.',
  },
  rate_limited: {
    status: 429,
    message: 'Too many requests; slow down.',
    fix: 'Wait for the time in the Retry-After header; a device that keeps hitting this is misbehaving.',
  },
  internal_error: {
    status: 500,
    message: 'The server failed; the request was not processed.',
    fix: 'Retry later; operators find the cause in the server log under the request id.',
  },

  // --- enrollment tokens ------------------------------------------------------------------
  token_invalid: {
    status: 401,
    message: 'The enrollment token is not known to this server.',
    fix: 'Check the token (copy it again or rescan the QR code), or create a new one with edgeid-admin token create.',
  },
  token_expired: {
    status: 401,
    message: 'The enrollment token has expired.',
    fix: 'Ask your operator for a new one (edgeid-admin token create --zone … --owner …).',
  },
  token_used: {
    status: 409,
    message: 'The enrollment token has already been used.',
    fix: 'Tokens are one-time; create a new one with edgeid-admin token create.',
  },
  token_bound_to_other_ek: {
    status: 409,
    message: 'The enrollment token is already bound to another TPM.',
    fix: 'A token enrolls exactly one device; create a new token for this device. If you did not use it elsewhere, the token may have leaked.',
  },
  token_zone_mismatch: {
    status: 403,
    message: 'The enrollment token belongs to another zone than the one the device asked for.',
    fix: 'Use a token created for this zone (edgeid-admin token create --zone ...).',
  },
  zone_unknown: {
    status: 403,
    message: 'The zone is not configured on this server.',
    fix: 'Add the zone to the server configuration or create the token for a configured zone.',
  },

  // --- enrollment evidence ----------------------------------------------------------------
  ek_cert_required: {
    status: 400,
    message: 'This server requires an EK certificate and none was sent.',
    fix: 'The TPM has no EK certificate in NV, or the agent did not find it; use a TPM with a manufacturer certificate.',
  },
  ek_already_enrolled: {
    status: 409,
    message: 'A device with this TPM is already enrolled and not revoked or retired.',
    fix: 'The audit row of this refusal names the existing device; an operator revokes or retires it (edgeid-admin device revoke|retire) before the TPM may enroll again. A quarantined device is not cleared by enrolling again.',
  },
  ek_template_mismatch: {
    status: 400,
    message:
      'The EK public area matches no TCG EK template (attributes, authPolicy, exponent, scheme, symmetric algorithm, key size or curve).',
    fix: 'Send the EK as the TPM reports it (TPM2_ReadPublic of the EK created from a TCG EK Credential Profile template); an edited public area is refused.',
  },
  ek_not_allowed: {
    status: 401,
    message:
      "Enrollment without a token needs this TPM's EK on a supplier manifest (ek-allow) with its one enrollment unused; it is not listed, or its entry was removed or used already.",
    fix: 'An operator imports the supplier manifest (edgeid-admin ek-allow import FILE --zone Z --owner O), or gives a token. The audit row of this refusal says which case it was; a used entry is allowed again with edgeid-admin ek-allow remove ID, then ek-allow import (an import skips EKs that are listed, used or not).',
  },
  session_invalid: {
    status: 401,
    message: 'The enrollment session is unknown.',
    fix: 'Start the enrollment again (the agent does this by itself while the token lives).',
  },
  session_expired: {
    status: 401,
    message: 'The enrollment session has expired.',
    fix: 'Start the enrollment again while the token lives.',
  },
  session_used: {
    status: 409,
    message: 'The enrollment session has already been finished or superseded.',
    fix: 'Start the enrollment again while the token lives.',
  },
  activation_secret_mismatch: {
    status: 403,
    message: 'The credential activation proof is wrong: the AK and the EK are not in the same TPM.',
    fix: 'Enroll from the TPM that holds both keys; this can also mean tampering.',
  },
  csr_malformed: {
    status: 400,
    message: 'The certificate signing request cannot be parsed.',
    fix: 'Check the agent version.',
  },
  csr_bad_signature: {
    status: 400,
    message: 'The signature of the certificate signing request is invalid.',
    fix: 'The CSR must be signed by the TPM session key; check the agent version.',
  },
  csr_key_mismatch: {
    status: 403,
    message: 'The key in the certificate signing request is not the key the TPM certified.',
    fix: 'The CSR must carry the certified TPM session key; this can also mean tampering.',
  },
  session_key_malformed: {
    status: 400,
    message: 'The session key public area is not an ECC P-256 signing key.',
    fix: 'Check the agent version.',
  },
  claims_invalid: {
    status: 400,
    message: 'The posture claims are not a JSON object of the accepted shape.',
    fix: 'Check the agent version.',
  },
  pcr_values_invalid: {
    status: 400,
    message: "The reported PCR values are not the zone's PCR selection of SHA-256 digests.",
    fix: "Report exactly the PCRs of the zone's selection (sha256 bank); check the agent version.",
  },
  posture_pcr_mismatch: {
    status: 403,
    message: 'The measured PCRs differ from the approved baseline: the device is quarantined.',
    fix: 'Check the device (firmware, boot chain). If the change is expected, run edgeid-admin approve-baseline ID.',
  },
  posture_claims_rejected: {
    status: 403,
    message: 'The posture claims violate the zone policy.',
    fix: "Update the agent or the device as the message says, or change the zone's claim rules.",
  },
  source_ip_not_allowed: {
    status: 403,
    message: 'The request comes from a network the zone does not allow.',
    fix: "Connect from the zone's network or add the network to the zone's cidrs.",
  },

  // --- devices and renewal ----------------------------------------------------------------
  device_not_found: {
    status: 404,
    message: 'No such device.',
    fix: 'Check the device id (edgeid-admin devices list).',
  },
  device_revoked: {
    status: 403,
    message: 'The device has been revoked.',
    fix: 'A revoked device must be enrolled again with a new token after the cause is understood.',
  },
  device_retired: {
    status: 403,
    message: 'The device has been retired.',
    fix: 'A retired device must be enrolled again with a new token.',
  },
  device_quarantined: {
    status: 403,
    message: 'The device is quarantined because its posture changed.',
    fix: 'Check the device; if the change is expected run edgeid-admin approve-baseline ID.',
  },
  renewal_refused: {
    status: 403,
    message: 'This device cannot renew.',
    fix: 'The device is unknown, revoked, retired or quarantined; an operator sees which in edgeid-admin devices show ID and in the audit log. A quarantined device renews again after approve-baseline; the others must enroll again with a new token.',
  },
  device_offline_too_long: {
    status: 403,
    message: "The device was offline for longer than the zone's maxOffline.",
    fix: 'Enroll the device again with a new token, or raise maxOffline for the zone.',
  },
  nonce_unknown: {
    status: 401,
    message: 'The renewal nonce is not known.',
    fix: 'Ask for a fresh nonce with POST /v1/renew/challenge (the agent does this by itself).',
  },
  nonce_used: {
    status: 409,
    message: 'The renewal nonce has already been used.',
    fix: 'Ask for a fresh nonce with POST /v1/renew/challenge; a replay can also mean tampering.',
  },
  nonce_expired: {
    status: 401,
    message: 'The renewal nonce has expired.',
    fix: 'Ask for a fresh nonce with POST /v1/renew/challenge.',
  },
  nonce_wrong_device: {
    status: 403,
    message: 'The renewal nonce was issued to another device.',
    fix: "Use this device's own nonce; this usually means tampering.",
  },
});
