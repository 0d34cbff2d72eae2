/**
 * JSON schemas of every route. Ajv runs without type coercion and with additionalProperties
 * false, so a field of the wrong type or an unknown field is a 400 `bad_request` before any
 * handler runs. Binary fields are standard base64 with sane maximum lengths.
 */

const b64 = (maxBytes: number) => ({
  type: 'string',
  minLength: 1,
  maxLength: Math.ceil(maxBytes / 3) * 4,
  pattern: '^[A-Za-z0-9+/]+={0,2}$',
});

export const DEVICE_ID = { type: 'string', pattern: '^dev-[0-9a-f]{16}$' } as const;
const NONCE = { type: 'string', minLength: 44, maxLength: 44, pattern: '^[A-Za-z0-9+/]{43}=$' } as const;

const signedAttest = {
  type: 'object',
  additionalProperties: false,
  required: ['attest', 'signature'],
  properties: { attest: b64(1024), signature: b64(1024) },
};

const claims = {
  type: 'object',
  maxProperties: 64,
  required: ['agentVersion'],
  properties: {
    agentVersion: { type: 'string', minLength: 1, maxLength: 64 },
    agentHash: { type: 'string', maxLength: 128 },
    configHash: { type: 'string', maxLength: 128 },
    kernel: { type: 'string', maxLength: 256 },
    os: { type: 'object', maxProperties: 64, additionalProperties: { type: 'string', maxLength: 512 } },
  },
};

const evidence = {
  sessionKeyPub: b64(1024),
  certify: signedAttest,
  quote: signedAttest,
  pcrValues: {
    type: 'object',
    minProperties: 1,
    maxProperties: 24,
    propertyNames: { pattern: '^(?:[0-9]|1[0-9]|2[0-3])$' },
    additionalProperties: b64(64),
  },
  claims,
  csr: b64(4096),
};
const evidenceRequired = ['sessionKeyPub', 'certify', 'quote', 'pcrValues', 'claims', 'csr'];

export const enrollStartBody = {
  type: 'object',
  additionalProperties: false,
  required: ['token', 'ekPub', 'akPub'],
  properties: {
    token: { type: 'string', minLength: 1, maxLength: 128 },
    ekPub: b64(1024),
    ekCert: b64(8192),
    akPub: b64(1024),
    zone: { type: 'string', minLength: 1, maxLength: 63 },
  },
};

export const enrollFinishBody = {
  type: 'object',
  additionalProperties: false,
  required: ['session', 'secret', ...evidenceRequired],
  properties: {
    session: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' },
    secret: b64(64),
    ...evidence,
  },
};

export const renewChallengeBody = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  maxProperties: 1,
  properties: { deviceId: DEVICE_ID, akName: { type: 'string', pattern: '^000[bcd][0-9a-fA-F]{64,128}$' } },
};

export const renewBody = {
  type: 'object',
  additionalProperties: false,
  required: ['deviceId', 'nonce', ...evidenceRequired],
  properties: { deviceId: DEVICE_ID, nonce: NONCE, ...evidence },
};

export const crlQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { format: { type: 'string', enum: ['der', 'pem'] } },
};

export const emptyQuery = { type: 'object', additionalProperties: false, properties: {} };

export const tokenCreateBody = {
  type: 'object',
  additionalProperties: false,
  required: ['zone', 'owner'],
  properties: {
    zone: { type: 'string', minLength: 1, maxLength: 63 },
    owner: { type: 'string', minLength: 1, maxLength: 128 },
    name: { type: 'string', minLength: 1, maxLength: 128 },
    purpose: { type: 'string', minLength: 1, maxLength: 256 },
    ttlSeconds: { type: 'integer', minimum: 1, maximum: 100 * 86400 },
  },
};

export const deviceParams = {
  type: 'object',
  additionalProperties: false,
  required: ['id'],
  properties: { id: DEVICE_ID },
};

export const devicesQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    status: { type: 'string', enum: ['active', 'quarantined', 'revoked', 'retired'] },
    zone: { type: 'string', maxLength: 63 },
    stale: { type: 'string', enum: ['true', 'false'] },
  },
};

export const revokeBody = {
  type: 'object',
  additionalProperties: false,
  required: ['reason'],
  properties: {
    reason: {
      type: 'string',
      enum: ['unspecified', 'key-compromise', 'affiliation-changed', 'superseded', 'cessation-of-operation', 'privilege-withdrawn'],
    },
  },
};

export const emptyBody = { type: 'object', additionalProperties: false, properties: {} };

export const auditQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    after: { type: 'string', pattern: '^[0-9]{1,12}$' },
    limit: { type: 'string', pattern: '^[0-9]{1,5}$' },
    deviceId: DEVICE_ID,
  },
};

export const controlBody = {
  type: 'object',
  additionalProperties: false,
  required: ['type'],
  properties: { type: { type: 'string', enum: ['wipe', 'renew-now'] }, reason: { type: 'string', maxLength: 256 } },
};

export const brokerCertificateBody = {
  type: 'object',
  additionalProperties: false,
  required: ['spki', 'hostnames'],
  properties: {
    /** base64 DER SubjectPublicKeyInfo of the broker's own TLS key (generated where the broker runs). */
    spki: { type: 'string', minLength: 40, maxLength: 2000, pattern: '^[A-Za-z0-9+/]+={0,2}$' },
    hostnames: { type: 'array', minItems: 1, maxItems: 20, items: { type: 'string', minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9.:-]+$' } },
  },
};
