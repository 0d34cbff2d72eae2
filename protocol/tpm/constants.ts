/** TPM 2.0 constants (TPM 2.0 Library Part 2: Structures). Only what edgeid speaks. */

export const TPM_ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  MGF1: 0x0007,
  KEYEDHASH: 0x0008,
  XOR: 0x000a,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  SM3_256: 0x0012,
  SM4: 0x0013,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  SM2: 0x001b,
  ECSCHNORR: 0x001c,
  ECMQV: 0x001d,
  KDF1_SP800_56A: 0x0020,
  KDF2: 0x0021,
  KDF1_SP800_108: 0x0022,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  CAMELLIA: 0x0026,
  CTR: 0x0040,
  OFB: 0x0041,
  CBC: 0x0042,
  CFB: 0x0043,
  ECB: 0x0044,
} as const;

export const TPM_ECC_CURVE = {
  NIST_P256: 0x0003,
  NIST_P384: 0x0004,
  NIST_P521: 0x0005,
} as const;

/** TPMA_OBJECT bits. */
export const TPMA_OBJECT = {
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
} as const;

/** TPMS_ATTEST.magic of every structure the TPM itself produced. */
export const TPM_GENERATED_VALUE = 0xff544347;

export const TPM_ST_ATTEST_NV = 0x8014;
export const TPM_ST_ATTEST_COMMAND_AUDIT = 0x8015;
export const TPM_ST_ATTEST_SESSION_AUDIT = 0x8016;
export const TPM_ST_ATTEST_CERTIFY = 0x8017;
export const TPM_ST_ATTEST_QUOTE = 0x8018;
export const TPM_ST_ATTEST_TIME = 0x8019;
export const TPM_ST_ATTEST_CREATION = 0x801a;
export const TPM_ST_ATTEST_NV_DIGEST = 0x801c;

/** TPM_RH_ENDORSEMENT, the endorsement hierarchy handle (PolicySecret target of the EK policy). */
export const TPM_RH_ENDORSEMENT = 0x4000000b;

/** Implementation maxima used to bound untrusted lengths (TPM 2.0 Part 2 / reference implementation). */
export const TPM_LIMITS = {
  /** Largest digest (SHA-512). */
  MAX_DIGEST: 64,
  /** TPMU_HA plus the 2-byte algorithm: sizeof(TPMT_HA), the bound of TPM2B_DATA and TPM2B_NAME. */
  MAX_HA: 66,
  /** RSA up to 4096 bits. */
  MAX_RSA_KEY_BYTES: 512,
  /** ECC up to P-521. */
  MAX_ECC_KEY_BYTES: 66,
  /** PCRs per bank (the reference implementation has 24; the size-of-select allows up to 255 bytes but no TPM has more than 32). */
  MAX_PCR_SELECT_BYTES: 4,
  /** Banks in a TPML_PCR_SELECTION (HASH_COUNT upper bound). */
  MAX_PCR_BANKS: 16,
  /** Largest TPMT_PUBLIC we accept: RSA-4096 with a SHA-512 policy is well under 1 KiB. */
  MAX_PUBLIC: 1024,
  /** Largest TPMS_ATTEST we accept (the spec's sizeof(TPMS_ATTEST) is below 1 KiB for every type). */
  MAX_ATTEST: 2048,
} as const;

/** TPM_CAP: what TPM2_GetCapability reads (TPM 2.0 Library Part 2, section 6.12). Only those edgeid reads. */
export const TPM_CAP = {
  /** TPML_HANDLE: handles of loaded/defined objects, from `property` on. */
  HANDLES: 0x00000001,
  /** TPML_PCR_SELECTION: the active PCR banks. */
  PCRS: 0x00000005,
  /** TPML_TAGGED_TPM_PROPERTY: the TPM_PT properties below. */
  TPM_PROPERTIES: 0x00000006,
} as const;

/**
 * TPM_PT: property tags of TPM_CAP_TPM_PROPERTIES (TPM 2.0 Library Part 2, section 6.13).
 * The fixed group starts at PT_FIXED = PT_GROUP × 1 = 0x100.
 */
export const TPM_PT = {
  FIXED: 0x100,
  FAMILY_INDICATOR: 0x100,
  LEVEL: 0x101,
  REVISION: 0x102,
  DAY_OF_YEAR: 0x103,
  YEAR: 0x104,
  MANUFACTURER: 0x105,
  /** VENDOR_STRING_1..4 are 0x106..0x109. */
  VENDOR_STRING_1: 0x106,
  FIRMWARE_VERSION_1: 0x10b,
  FIRMWARE_VERSION_2: 0x10c,
  HR_TRANSIENT_MIN: 0x10e,
  HR_LOADED_MIN: 0x110,
  NV_BUFFER_MAX: 0x12c,
} as const;

/**
 * First handle of the transient-object range: TPM_HT_TRANSIENT (0x80, Part 2 section 7.2) in the
 * top octet, i.e. HR_TRANSIENT of TPM_HC (Part 2 section 7.5). The range spans 0x80000000..0x80FFFFFF.
 */
export const TPM_HR_TRANSIENT = 0x80000000;

/** TPMA_NV read-authorisation bits (TPM 2.0 Library Part 2, section 13.4). */
export const TPMA_NV = {
  /** TPMA_NV_PPREAD: the platform authorisation may read. */
  PPREAD: 1 << 16,
  /** TPMA_NV_OWNERREAD: the owner authorisation may read. */
  OWNERREAD: 1 << 17,
  /** TPMA_NV_AUTHREAD: the index's own authValue may read. */
  AUTHREAD: 1 << 18,
} as const;
