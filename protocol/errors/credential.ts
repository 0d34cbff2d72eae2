import { defineErrors } from './types.js';

/** Codes of MakeCredential (protocol/tpm/makecredential.ts): what the server refuses to encrypt to. */
export const credentialErrors = defineErrors({
  credential_ek_unsupported: {
    status: 400,
    message:
      'The endorsement key cannot be used for credential activation: its type, curve, key size, name algorithm or symmetric cipher is not supported.',
    fix: 'edgeid supports TCG EK templates: RSA-2048 or ECC P-256/P-384, nameAlg SHA-256/384/512, AES-CFB. Send the EK the TPM made from such a template.',
  },
  credential_ek_not_storage_key: {
    status: 400,
    message: 'The endorsement key is not a restricted decryption key, so the TPM would refuse ActivateCredential with it.',
    fix: 'Send the EK public area itself (restricted and decrypt set), not another key of the TPM.',
  },
  credential_name_invalid: {
    status: 400,
    message: 'The name of the key to be credentialed is not a TPM object name (hash algorithm followed by a digest of its size).',
    fix: 'Compute the name from the key public area (nameAlg || H(TPMT_PUBLIC)); check the attestation key sent by the device.',
  },
  credential_secret_invalid: {
    status: 500,
    message: 'The credential secret is empty or longer than the digest of the endorsement key name algorithm.',
    fix: 'Server bug: the credential secret must be 1 to digest-size bytes (32 for a SHA-256 EK).',
  },
});
