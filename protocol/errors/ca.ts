import { defineErrors } from './types.js';

/**
 * Codes of the issuing CA's signing key (file or PKCS#11 token, enroll-server/ca/keys.ts) and of
 * `edgeid-server ca …`. All are the server's own start-up or an operator's command: 5xx.
 */
export const caErrors = defineErrors({
  hsm_pin_file_insecure: {
    status: 500,
    message: 'The PKCS#11 PIN file is readable or writable by its group or by others.',
    fix: 'chmod 0600 the PIN file (owner: the server user), or pass the PIN in the environment variable named by ca.pkcs11.pinEnv.',
  },
  hsm_pin_unavailable: {
    status: 500,
    message: 'The PKCS#11 PIN cannot be read (PIN file missing or empty, or the PIN environment variable unset).',
    fix: 'Create the file named by ca.pkcs11.pinFile (mode 0600) or set the variable named by ca.pkcs11.pinEnv for the server.',
  },
  hsm_module_unusable: {
    status: 500,
    message: 'The PKCS#11 module cannot be loaded or initialised.',
    fix: "Check ca.pkcs11.module (the vendor's .so, e.g. /usr/lib/softhsm/libsofthsm2.so) and the module's own configuration (SoftHSM2: SOFTHSM2_CONF).",
  },
  hsm_token_not_found: {
    status: 500,
    message: 'No token with the configured label is present in the PKCS#11 module.',
    fix: 'Check ca.pkcs11.token against the token labels the module lists (softhsm2-util --show-slots, pkcs11-tool -L).',
  },
  hsm_login_failed: {
    status: 500,
    message: 'The PKCS#11 token refused the PIN (wrong PIN, or the PIN is locked).',
    fix: "Put the token's user PIN into the PIN file or variable; a locked PIN must be reset by the token's security officer.",
  },
  hsm_key_not_found: {
    status: 500,
    message: 'The token holds no issuing key with the configured label (private and public key objects).',
    fix: 'Check ca.pkcs11.keyLabel, or create the key with `edgeid-server ca init --pkcs11`.',
  },
  hsm_key_ambiguous: {
    status: 500,
    message: 'The token holds more than one private key with the configured label.',
    fix: 'Give the issuing key a label of its own (ca.pkcs11.keyLabel) or remove the extra objects with the token tools.',
  },
  hsm_key_exportable: {
    status: 500,
    message:
      'The issuing key in the token is or was exportable (not CKA_SENSITIVE, CKA_EXTRACTABLE, or imported: not CKA_ALWAYS_SENSITIVE / CKA_NEVER_EXTRACTABLE); edgeid uses only keys that never left the token.',
    fix: 'Create a new key with `edgeid-server ca init --pkcs11` (generated inside the token, sensitive and non-extractable) under a new label.',
  },
  ca_issuing_missing: {
    status: 500,
    message:
      "The issuing CA certificate (data/ca/intermediate.pem) is missing and cannot be made here: the root's key is not on this host.",
    fix: 'Finish the offline-root ceremony: `edgeid-server ca init --pkcs11 --csr-out FILE`, have the root sign it, then `edgeid-server ca import-issuing CERT --root ROOT`.',
  },
  ca_issuing_mismatch: {
    status: 500,
    message: "The issuing CA certificate's public key is not the configured signing key.",
    fix: 'Use the certificate issued for this key (ca import-issuing checks it), or point ca.pkcs11 at the key the certificate was issued for.',
  },
  ca_issuing_invalid: {
    status: 500,
    message:
      'The issuing CA certificate is not acceptable: not a CA certificate for certificate and CRL signing, not valid now, or not signed by the root.',
    fix: 'Have the root sign the CSR from `ca init --csr-out` as a CA certificate (basicConstraints CA:TRUE, keyUsage keyCertSign and cRLSign) and pass the matching root with --root.',
  },
});
