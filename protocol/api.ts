import { createHash } from 'node:crypto';
import { EdgeidError } from './errors/index.js';
import Type, { type Static, type TSchema } from 'typebox';

/**
 * The HTTP API both the agent and the enrollment server speak. Binary fields are standard base64
 * (TPM structures in the byte conventions of protocol/tpm: TPM2B_PUBLIC with its size prefix,
 * TPMS_ATTEST without, TPMT_SIGNATURE); certificates are PEM; times are ISO-8601 UTC strings.
 * Errors are always `{ "error": { "code", "message" } }` with a code from protocol/errors.
 */

/**
 * Each request and response is defined once, as a TypeBox schema (JSON Schema); its TypeScript
 * type is derived with Static<>. The server validates requests and serialises responses with these
 * schemas, the agent validates the server's responses with them. Requests are strict
 * (additionalProperties false, bounded lengths); response schemas describe exactly what the
 * server sends.
 */

export type Base64 = string;
export type IsoTime = string;

const B64_PATTERN = '^[A-Za-z0-9+/]+={0,2}$';

/** Standard base64 of at most `maxBytes` bytes. */
const b64 = (maxBytes: number) => Type.String({ minLength: 1, maxLength: Math.ceil(maxBytes / 3) * 4, pattern: B64_PATTERN });
/** A string from a fixed list (JSON Schema `enum` on a string). */
const oneOf = <const T extends readonly string[]>(values: T) => Type.Unsafe<T[number]>({ type: 'string', enum: [...values] });
const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);
const Str = Type.String();
const Iso = Type.String();
const NullableStr = Nullable(Type.String());
/** A JSON object with any members (audit details, free-form data). */
const AnyObject = Type.Unsafe<Record<string, unknown>>({ type: 'object', additionalProperties: true });
const StringMap = Type.Unsafe<Record<string, string>>({ type: 'object', additionalProperties: { type: 'string' } });

export const DEVICE_ID_PATTERN = '^dev-[0-9a-f]{16}$';
export const DeviceId = Type.String({ pattern: DEVICE_ID_PATTERN });
const NonceB64 = Type.String({ minLength: 44, maxLength: 44, pattern: '^[A-Za-z0-9+/]{43}=$' });
const ZoneName = Type.String({ minLength: 1, maxLength: 63 });

/**
 * Text a device reports that reaches operators' terminals: printable only (no C0 or C1 control
 * characters, which a terminal would interpret — ECMA-48 §5.3 and §5.4), and bounded.
 */
const PRINTABLE = '^[^\\u0000-\\u001f\\u007f-\\u009f]*$';
const Printable = (maxLength: number) => Type.String({ maxLength, pattern: PRINTABLE });

/** The agent's version: a SemVer-like token (SemVer 2.0.0 characters, no spaces or controls). */
export const AGENT_VERSION_PATTERN = '^[0-9A-Za-z.+_-]{1,64}$';

/**
 * Posture claims the agent reports; canonical JSON of this object is bound into the quote. Every
 * member has a strict schema; unknown members are refused, so nothing unchecked reaches an
 * operator's screen.
 */
export const Claims = Type.Object(
  {
    agentVersion: Type.String({ minLength: 1, maxLength: 64, pattern: AGENT_VERSION_PATTERN }),
    // hex digests from the agent; any short token of digest characters (no spaces or controls)
    agentHash: Type.Optional(Type.String({ minLength: 1, maxLength: 128, pattern: '^[0-9A-Za-z+/=._-]{1,128}$' })),
    configHash: Type.Optional(Type.String({ minLength: 1, maxLength: 128, pattern: '^[0-9A-Za-z+/=._-]{1,128}$' })),
    kernel: Type.Optional(Printable(256)),
    os: Type.Optional(
      Type.Unsafe<Record<string, string>>({
        type: 'object',
        maxProperties: 64,
        // os-release(5) keys: upper-case letters, digits, underscores
        propertyNames: { pattern: '^[A-Z0-9_]{1,64}$' },
        additionalProperties: { type: 'string', maxLength: 512, pattern: PRINTABLE },
      }),
    ),
    /** Set when the evidence carries no TCG event log: why (e.g. `absent: eventlog_unreadable`). */
    eventLog: Type.Optional(Printable(256)),
  },
  { additionalProperties: false },
);
export type Claims = Static<typeof Claims> & { [extra: string]: unknown };

/** A TPM attestation: TPMS_ATTEST bytes and the TPMT_SIGNATURE over them, both base64. */
export const SignedAttest = Type.Object({ attest: b64(1024), signature: b64(1024) }, { additionalProperties: false });
export type SignedAttest = Static<typeof SignedAttest>;

/** Largest zlib-compressed event log a request may carry (real firmware logs compress to 1–17 KiB). */
export const MAX_EVENT_LOG_DEFLATE = 32 * 1024;

/**
 * The TCG event log (`binary_bios_measurements`, TCG PC Client PFP §10) sent with a quote, so the
 * server can replay it against the quoted PCRs and judge posture in the log's terms.
 * - `sha256`: hex SHA-256 of the uncompressed log;
 * - `deflate`: the log compressed with zlib (RFC 1950). To keep the cost per renewal small it is
 *   sent only when the log differs from the one the server last accepted for this device (the
 *   challenge and every issuing response name that one's digest as `eventLogSha256`); otherwise
 *   only `sha256` is sent and the server replays the log it holds.
 * No `eventLog` member: the device has no log, and its claims say why (`claims.eventLog`).
 */
export const EventLogEvidence = Type.Object(
  { sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }), deflate: Type.Optional(b64(MAX_EVENT_LOG_DEFLATE)) },
  { additionalProperties: false },
);
export type EventLogEvidence = Static<typeof EventLogEvidence>;

/**
 * Evidence sent with every certificate request (enrollment finish and renewal):
 * - `sessionKeyPub`: TPM2B_PUBLIC of the new TPM session key (the certificate's key);
 * - `certify`: TPM2_Certify of the session key by the AK, qualifyingData = nonce;
 * - `quote`: TPM2_Quote by the AK over the zone's PCRs, qualifyingData = quoteQualifyingData(nonce, claims);
 * - `pcrValues`: the sha256 bank values, keyed by decimal PCR index;
 * - `csr`: DER PKCS#10 signed by the session key.
 */
const evidenceProperties = {
  sessionKeyPub: b64(1024),
  certify: SignedAttest,
  quote: SignedAttest,
  pcrValues: Type.Unsafe<Record<string, Base64>>({
    type: 'object',
    minProperties: 1,
    maxProperties: 24,
    propertyNames: { pattern: '^(?:[0-9]|1[0-9]|2[0-3])$' },
    additionalProperties: b64(64),
  }),
  claims: Type.Unsafe<Claims>(Claims),
  csr: b64(4096),
  eventLog: Type.Optional(EventLogEvidence),
};
export const Evidence = Type.Object(evidenceProperties, { additionalProperties: false });
export type Evidence = Static<typeof Evidence>;

export const EnrollStartRequest = Type.Object(
  {
    /** Absent: zero-touch enrollment, allowed only for an EK on a supplier manifest (ek-allow). */
    token: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
    /** TPM2B_PUBLIC of the endorsement key. */
    ekPub: b64(1024),
    /** DER EK certificate from the TPM's NV, if it has one. */
    ekCert: Type.Optional(b64(8192)),
    /** TPM2B_PUBLIC of the attestation key. */
    akPub: b64(1024),
    /** The zone the device expects (from the enrollment URI); must match the token's zone if given. */
    zone: Type.Optional(ZoneName),
  },
  { additionalProperties: false },
);
export type EnrollStartRequest = Static<typeof EnrollStartRequest>;

export const EnrollStartResponse = Type.Object({
  session: Str,
  /** TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET for TPM2_ActivateCredential. */
  credentialBlob: Str,
  encryptedSecret: Str,
  nonce: Str,
  /** The zone's PCR selection (sha256 bank) the quote must cover. */
  pcrs: Type.Array(Type.Integer()),
  expiresAt: Iso,
});
export type EnrollStartResponse = Static<typeof EnrollStartResponse>;

export const EnrollFinishRequest = Type.Object(
  {
    session: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' }),
    /** The secret ActivateCredential recovered. */
    secret: b64(64),
    ...evidenceProperties,
  },
  { additionalProperties: false },
);
export type EnrollFinishRequest = Static<typeof EnrollFinishRequest>;

/** Renewal state every issuing response carries: the next single-use nonce and when to use it. */
export const RenewInfo = Type.Object({
  nonce: Str,
  nonceExpiresAt: Iso,
  renewAfter: Iso,
  notAfter: Iso,
  /** The zone's PCR selection for the next quote. */
  pcrs: Type.Array(Type.Integer()),
  /** SHA-256 of the event log the server holds for this device (null: none); send the log only when yours differs. */
  eventLogSha256: Type.Optional(NullableStr),
});
export type RenewInfo = Static<typeof RenewInfo>;

export const MqttInfo = Type.Object({
  url: NullableStr,
  topics: Type.Object({ publish: Str, control: Str }),
});
export type MqttInfo = Static<typeof MqttInfo>;

const issueProperties = {
  deviceId: Str,
  zone: Str,
  /** PEM leaf certificate for the TPM session key. */
  certificate: Str,
  /** PEM chain from the issuing intermediate up to the root. */
  chain: Type.Array(Str),
  renew: RenewInfo,
  /**
   * During a root rotation: PEM of the new root R2 (self-signed). The chain then holds X(R2), R2's
   * cross certificate by the pinned root; an agent pins R2 as well only when X(R2) verifies under
   * its pinned root and names R2's subject and key. Older agents ignore it.
   */
  nextRoot: Type.Optional(Str),
};
export const IssueResponse = Type.Object(issueProperties);
export type IssueResponse = Static<typeof IssueResponse>;

export const EnrollFinishResponse = Type.Object({ ...issueProperties, mqtt: MqttInfo });
export type EnrollFinishResponse = Static<typeof EnrollFinishResponse>;

/**
 * Exactly one of: the device id, or — for an agent that crashed after the server issued its first
 * certificate but before it stored the answer — the hex TPM name of its AK. The renewal that
 * follows proves possession of that AK, so the lookup reveals nothing a caller could use.
 */
export const RenewChallengeRequest = Type.Object(
  { deviceId: Type.Optional(DeviceId), akName: Type.Optional(Type.String({ pattern: '^000[bcd][0-9a-fA-F]{64,128}$' })) },
  { additionalProperties: false, minProperties: 1, maxProperties: 1 },
);
export type RenewChallengeRequest = Static<typeof RenewChallengeRequest>;

export const RenewChallengeResponse = Type.Object({
  nonce: Str,
  expiresAt: Iso,
  pcrs: Type.Array(Type.Integer()),
  deviceId: Str,
  zone: Str,
  /** SHA-256 of the event log the server holds for this device (null: none); send the log only when yours differs. */
  eventLogSha256: Type.Optional(NullableStr),
});
export type RenewChallengeResponse = Static<typeof RenewChallengeResponse>;

export const RenewRequest = Type.Object({ deviceId: DeviceId, nonce: NonceB64, ...evidenceProperties }, { additionalProperties: false });
export type RenewRequest = Static<typeof RenewRequest>;

export const RenewResponse = IssueResponse;
export type RenewResponse = IssueResponse;

export const ErrorBody = Type.Object({
  error: Type.Object({ code: Str, message: Str, details: Type.Optional(AnyObject) }),
});
export type ErrorBody = Static<typeof ErrorBody>;

export const HealthResponse = Type.Object({ status: Str, caFingerprint: Str });
export type HealthResponse = Static<typeof HealthResponse>;

/** `?format=der|pem` of /v1/crl and /v1/ca. */
export const FormatQuery = Type.Object({ format: Type.Optional(oneOf(['der', 'pem'] as const)) }, { additionalProperties: false });
export const EmptyQuery = Type.Object({}, { additionalProperties: false });
export const EmptyBody = Type.Object({}, { additionalProperties: false });

// --- control channel ---------------------------------------------------------------------------

export const CONTROL_COMMAND_TYPES = ['wipe', 'renew-now'] as const;
export type ControlCommandType = (typeof CONTROL_COMMAND_TYPES)[number];

export interface ControlCommand {
  type: ControlCommandType;
  deviceId: string;
  id: string;
  issuedAt: IsoTime;
  /** Free text for logs, e.g. the revocation reason. */
  reason?: string;
}

/**
 * A command signed by the server's control key: `signature` is a DER ECDSA-SHA256 signature over
 * the UTF-8 bytes of `payload` (canonical JSON of the command); `signer` is the control key's PEM
 * certificate, issued by the edgeid issuing CA.
 */
export const SignedControl = Type.Object({ payload: Str, signature: Str, signer: Str });
export type SignedControl = Static<typeof SignedControl>;

// --- admin API ---------------------------------------------------------------------------------

export const DEVICE_STATUSES = ['active', 'quarantined', 'revoked', 'retired'] as const;
export type DeviceStatus = (typeof DEVICE_STATUSES)[number];

/** The reasons `revoke` accepts (RFC 5280 names, kebab-case). */
export const REVOKE_REASONS = [
  'unspecified',
  'key-compromise',
  'affiliation-changed',
  'superseded',
  'cessation-of-operation',
  'privilege-withdrawn',
] as const;
export type RevokeReason = (typeof REVOKE_REASONS)[number];

export const TokenCreateRequest = Type.Object(
  {
    zone: ZoneName,
    owner: Type.String({ minLength: 1, maxLength: 128 }),
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
    purpose: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
    ttlSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 * 86400 })),
  },
  { additionalProperties: false },
);
export type TokenCreateRequest = Static<typeof TokenCreateRequest>;

export const TokenCreateResponse = Type.Object({
  id: Str,
  token: Str,
  uri: Str,
  server: Str,
  caFingerprint: Str,
  zone: Str,
  owner: Str,
  name: NullableStr,
  expiresAt: Iso,
});
export type TokenCreateResponse = Static<typeof TokenCreateResponse>;

export const TokenView = Type.Object({
  id: Str,
  zone: Str,
  owner: Str,
  name: NullableStr,
  createdBy: Str,
  createdAt: Iso,
  expiresAt: Iso,
  boundAt: Nullable(Iso),
  usedAt: Nullable(Iso),
  deviceId: NullableStr,
});
export type TokenView = Static<typeof TokenView>;
/** Paged listings: at most `limit` items (default and maximum 1000); `next` is the cursor of the following page (absent on the last). */
export const LIST_PAGE_MAX = 1000;
const PageLimit = Type.String({ pattern: '^(1000|[1-9][0-9]{0,2})$' });
const PageCursor = Type.String({ pattern: '^[0-9]{1,15}:[A-Za-z0-9_.-]{1,64}$' });
export const TokensQuery = Type.Object(
  { limit: Type.Optional(PageLimit), after: Type.Optional(PageCursor) },
  { additionalProperties: false },
);
export const TokenList = Type.Object({ tokens: Type.Array(TokenView), next: Type.Optional(Str) });
export const TokenParams = Type.Object({ id: Type.String({ pattern: '^[0-9a-f]{16}$' }) }, { additionalProperties: false });
export const TokenExpireResponse = Type.Object({ token: TokenView });

export const EkRootView = Type.Object({
  /** SHA-256 of the certificate's DER (hex). */
  fingerprint: Str,
  subject: Str,
  issuer: Str,
  notAfter: Iso,
  role: oneOf(['anchor', 'intermediate'] as const),
  source: oneOf(['builtin', 'config', 'operator'] as const),
  origin: Str,
  disabled: Type.Boolean(),
});
export type EkRootView = Static<typeof EkRootView>;
export const EkRootList = Type.Object({ roots: Type.Array(EkRootView) });
export const EkRootAddRequest = Type.Object(
  { certificate: Type.String({ minLength: 1, maxLength: 65536 }) },
  { additionalProperties: false },
);
export type EkRootAddRequest = Static<typeof EkRootAddRequest>;
export const EkRootParams = Type.Object(
  /** The SHA-256 fingerprint (hex, colons allowed), or a unique prefix of at least 8 hex digits. */
  { fingerprint: Type.String({ pattern: '^[0-9A-Fa-f:]{1,95}$' }) },
  { additionalProperties: false },
);

export const EkAllowEntry = Type.Object({
  id: Str,
  /** EK identity: SHA-256 (hex) of the EK's DER SubjectPublicKeyInfo. */
  ekId: Str,
  zone: Str,
  owner: Str,
  name: NullableStr,
  source: NullableStr,
  importedBy: Str,
  importedAt: Iso,
  /** The token minted for its enrollment (set at the first attempt). */
  tokenId: NullableStr,
  /** open (never tried), attempted (an enrollment started) or used (enrolled: it allows no other). */
  state: oneOf(['open', 'attempted', 'used'] as const),
  /** The device its enrollment created. */
  deviceId: NullableStr,
});
export type EkAllowEntry = Static<typeof EkAllowEntry>;
export const EkAllowList = Type.Object({ entries: Type.Array(EkAllowEntry) });
export const EkAllowImportRequest = Type.Object(
  {
    zone: ZoneName,
    owner: Type.String({ minLength: 1, maxLength: 200 }),
    /** The manifest file's text (CSV or JSON). */
    content: Type.String({ minLength: 1, maxLength: 16 * 1024 * 1024 }),
    format: Type.Optional(oneOf(['csv', 'json'] as const)),
    /** File name, recorded with each entry. */
    source: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  },
  { additionalProperties: false },
);
export type EkAllowImportRequest = Static<typeof EkAllowImportRequest>;
export const EkAllowImportResponse = Type.Object({ added: Type.Array(EkAllowEntry), skipped: Type.Integer() });
export type EkAllowImportResponse = Static<typeof EkAllowImportResponse>;
export const EkAllowRemoveResponse = Type.Object({ removed: Str });
export const EkAllowParams = Type.Object({ id: Type.String({ pattern: '^ekm-[0-9a-f]{12}$' }) }, { additionalProperties: false });

export const CertificateView = Type.Object({
  serial: Str,
  notBefore: Iso,
  notAfter: Iso,
  revokedAt: Nullable(Iso),
  reason: NullableStr,
});
export type CertificateView = Static<typeof CertificateView>;

export const DeviceView = Type.Object({
  id: Str,
  zone: Str,
  owner: Str,
  name: NullableStr,
  purpose: NullableStr,
  status: oneOf(DEVICE_STATUSES),
  statusReason: NullableStr,
  posture: oneOf(['ok', 'quarantined', 'baseline-window'] as const),
  enrolledBy: Str,
  enrolledAt: Iso,
  retireBy: Nullable(Iso),
  lastSeen: Nullable(Iso),
  lastIp: NullableStr,
  stale: Type.Boolean(),
  baselineWindowUntil: Nullable(Iso),
  ekHash: Str,
  /** true: its EK certificate chained to the EK trust store; false: enrolled without that check (zone opted out); null: not recorded. */
  ekVerified: Type.Optional(Nullable(Type.Boolean())),
  /** Issuer DN of the verified EK certificate. */
  ekIssuer: Type.Optional(NullableStr),
  claims: Nullable(Type.Unsafe<Claims>({ type: 'object', additionalProperties: true })),
  baseline: Nullable(StringMap),
  /** notAfter of the device's newest certificate (null before the first one). */
  certificateNotAfter: Nullable(Iso),
  certificates: Type.Optional(Type.Array(CertificateView)),
  /**
   * `device show` only: the approved (baseline) and the last accepted TCG event log, by digest, and
   * their difference as lines (`- PCR 0 EV_… digest`, `+ …`; strings from the device, escape them).
   */
  eventLog: Type.Optional(
    Type.Object({ baselineSha256: NullableStr, currentSha256: NullableStr, diff: Type.Array(Str), unchanged: Type.Integer() }),
  ),
  /**
   * `device show` only: the PCR values (index → hex) of the last quote the server verified for the
   * device, accepted or refused (null before one was stored), when, and for a zone in golden mode
   * the zone's values (the quote passes when it equals them or the device's approved baseline).
   */
  lastQuote: Type.Optional(Nullable(Type.Object({ at: Iso, pcrs: StringMap, golden: Nullable(StringMap) }))),
});
export type DeviceView = Static<typeof DeviceView>;
export const DeviceList = Type.Object({ devices: Type.Array(DeviceView), next: Type.Optional(Str) });
export const DeviceShow = Type.Object({ device: DeviceView });

export const DeviceParams = Type.Object({ id: DeviceId }, { additionalProperties: false });
export const DevicesQuery = Type.Object(
  {
    status: Type.Optional(oneOf(DEVICE_STATUSES)),
    zone: Type.Optional(Type.String({ maxLength: 63 })),
    stale: Type.Optional(oneOf(['true', 'false'] as const)),
    /** Text the device's id, name, owner or last address contains. */
    q: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
    posture: Type.Optional(oneOf(['ok', 'quarantined', 'baseline-window'] as const)),
    /** Sort key (enrolledAt, name, lastSeen, the newest certificate's notAfter; default enrolled) and direction (default asc); ties by id. */
    sort: Type.Optional(oneOf(['enrolled', 'name', 'lastSeen', 'expiry'] as const)),
    order: Type.Optional(oneOf(['asc', 'desc'] as const)),
    limit: Type.Optional(PageLimit),
    /** The `next` of the previous page with the same sort and order (checked by the service: invalid_cursor). */
    after: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
  },
  { additionalProperties: false },
);

export const RevokeRequest = Type.Object({ reason: oneOf(REVOKE_REASONS) }, { additionalProperties: false });
export type RevokeRequest = Static<typeof RevokeRequest>;

/** Result of a hook run after a committed change (reported by revoke and retire). */
export const HookResult = Type.Object({ hook: Str, ok: Type.Boolean(), ms: Type.Number(), error: Type.Optional(Str) });
export type HookResult = Static<typeof HookResult>;

export const RevokeResponse = Type.Object({ device: DeviceView, serials: Type.Array(Str), crlNumber: Str, hooks: Type.Array(HookResult) });
export type RevokeResponse = Static<typeof RevokeResponse>;
export const RetireResponse = Type.Object({ device: DeviceView, serials: Type.Array(Str), hooks: Type.Array(HookResult) });
export type RetireResponse = Static<typeof RetireResponse>;

export const ControlRequest = Type.Object(
  { type: oneOf(CONTROL_COMMAND_TYPES), reason: Type.Optional(Type.String({ maxLength: 256 })) },
  { additionalProperties: false },
);
export type ControlRequest = Static<typeof ControlRequest>;
export const ControlResponse = Type.Object({ payload: Str, signature: Str, signer: Str, published: Type.Boolean() });
export type ControlResponse = Static<typeof ControlResponse>;

export const AuditRow = Type.Object({
  seq: Type.Integer(),
  time: Iso,
  actor: Str,
  event: Str,
  deviceId: NullableStr,
  ip: NullableStr,
  outcome: oneOf(['ok', 'fail'] as const),
  reason: NullableStr,
  details: Nullable(AnyObject),
  prevHash: Str,
  hash: Str,
});
export type AuditRow = Static<typeof AuditRow>;
/** Roles of the admin API, each allowed what the ones before it are (services/users.ts). */
export const USER_ROLES = ['viewer', 'technician', 'operator', 'admin'] as const;
export type UserRole = (typeof USER_ROLES)[number];
export const UserName = Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,63}$' });
export const UserCreateRequest = Type.Object(
  {
    name: UserName,
    role: oneOf(USER_ROLES),
    zones: Type.Optional(Type.Array(ZoneName, { minItems: 1, maxItems: 64 })),
    expiresInSeconds: Type.Optional(Type.Integer({ minimum: 60, maximum: 10 * 366 * 86400 })),
  },
  { additionalProperties: false },
);
export type UserCreateRequest = Static<typeof UserCreateRequest>;
export const UserView = Type.Object({
  name: Str,
  role: oneOf(USER_ROLES),
  /** null: every zone. */
  zones: Nullable(Type.Array(Str)),
  createdBy: Str,
  createdAt: Iso,
  expiresAt: Nullable(Iso),
  disabledAt: Nullable(Iso),
  disabledBy: NullableStr,
  tokenRotatedAt: Nullable(Iso),
  /** The user whose token is data/admin-token on the server host. */
  bootstrap: Type.Boolean(),
  /** At the time of the answer: disabled, else expired (expiresAt passed), else enabled. */
  state: oneOf(['enabled', 'disabled', 'expired'] as const),
});
export type UserView = Static<typeof UserView>;
export const UserList = Type.Object({ users: Type.Array(UserView) });
export const UserDisableResponse = Type.Object({ user: UserView });
/** The user's personal token: shown once, only its SHA-256 is stored. */
export const UserTokenResponse = Type.Object({
  name: Str,
  role: oneOf(USER_ROLES),
  zones: Nullable(Type.Array(Str)),
  token: Str,
  expiresAt: Nullable(Iso),
});
export type UserTokenResponse = Static<typeof UserTokenResponse>;
export const UserParams = Type.Object({ name: UserName }, { additionalProperties: false });
/** POST /v1/admin/users/:name/set-role: `zones` absent keeps the account's zones, null = every zone. */
export const UserSetRoleRequest = Type.Object(
  {
    role: oneOf(USER_ROLES),
    zones: Type.Optional(Nullable(Type.Array(ZoneName, { minItems: 1, maxItems: 64 }))),
  },
  { additionalProperties: false },
);
export type UserSetRoleRequest = Static<typeof UserSetRoleRequest>;

export const AuditQuery = Type.Object(
  {
    after: Type.Optional(Type.String({ pattern: '^[0-9]{1,12}$' })),
    /** Only rows before this seq. */
    before: Type.Optional(Type.String({ pattern: '^[0-9]{1,12}$' })),
    /** `desc`: newest first (page back with `before`); default oldest first. */
    order: Type.Optional(oneOf(['asc', 'desc'] as const)),
    limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,5}$' })),
    deviceId: Type.Optional(DeviceId),
    /** Only the rows of this user (actor user:NAME). */
    user: Type.Optional(UserName),
  },
  { additionalProperties: false },
);
export const AuditExport = Type.Object({ rows: Type.Array(AuditRow) });

export const AuditProblem = Type.Object({
  seq: Type.Integer(),
  kind: oneOf(['hash_mismatch', 'chain_broken', 'gap', 'head_mismatch'] as const),
  detail: Str,
});
export type AuditProblem = Static<typeof AuditProblem>;
export const AuditVerifyResult = Type.Object({
  ok: Type.Boolean(),
  rows: Type.Integer(),
  /** The first seq checked when older rows were pruned by retention (absent: from row 1). */
  from: Type.Optional(Type.Integer()),
  /** First problem found, if any. */
  problem: Type.Optional(AuditProblem),
  /** Every problem found, in seq order (at most 1000; the rest counted in problemsOmitted). */
  problems: Type.Optional(Type.Array(AuditProblem)),
  problemsOmitted: Type.Optional(Type.Integer()),
});
export type AuditVerifyResult = Static<typeof AuditVerifyResult>;

export const CrlRegenerateResponse = Type.Object({ number: Str, nextUpdate: Iso });
/** GET /v1/crl/:issuer — the CRL of a later issuing CA (after a rotation). */
export const CrlIssuerParams = Type.Object({ issuer: Type.String({ pattern: '^issuing-[0-9]{1,6}$' }) }, { additionalProperties: false });
export const CaExpiryView = Type.Object({
  /** root, issuing:<name>, server-tls, control */
  ca: Str,
  subject: Str,
  notBefore: Iso,
  notAfter: Iso,
  active: Type.Optional(Type.Boolean()),
  /** Seconds until notAfter (negative: expired). */
  secondsLeft: Type.Integer(),
  /** Its warning window in days (180 for CA certificates; 30 for the server's 90-day TLS certificate). */
  warnDays: Type.Integer(),
  /** True when it expires within its warning window. */
  warn: Type.Boolean(),
});
export const CaStatus = Type.Object({ warnDays: Type.Integer(), cas: Type.Array(CaExpiryView) });
export type CaStatus = Static<typeof CaStatus>;
export const CaRotateResponse = Type.Object({ issuer: Str, subject: Str, notAfter: Iso, previous: Str, status: CaStatus });
export type CaRotateResponse = Static<typeof CaRotateResponse>;
/** POST /v1/admin/ca/rotate-root: the new issuing CA (as rotate-issuing) and the new root R2 with its cross certificate X(R2). */
export const CaRotateRootResponse = Type.Object({
  issuer: Str,
  subject: Str,
  notAfter: Iso,
  previous: Str,
  root: Type.Object({ subject: Str, fingerprint: Str, notAfter: Iso, pem: Str, crossPem: Str }),
  status: CaStatus,
});
export type CaRotateRootResponse = Static<typeof CaRotateRootResponse>;
/** POST /v1/admin/backup: the passphrase the backup is sealed with (the answer is the backup file, application/octet-stream). */
export const BackupRequest = Type.Object({ passphrase: Type.String({ minLength: 1, maxLength: 1024 }) }, { additionalProperties: false });
export type BackupRequest = Static<typeof BackupRequest>;
export const BrokerReconcileResponse = Type.Object({ added: Type.Array(Str), removed: Type.Array(Str) });

/** GET /v1/admin/broker/crl and POST /v1/admin/broker/crl/reload: the broker's CRL reload schedule. */
export const BrokerCrlStatus = Type.Object({
  reloadEverySeconds: Type.Integer(),
  refreshBeforeSeconds: Type.Integer(),
  /** What the broker loaded at its last successful reload (null: not known yet). */
  loaded: Nullable(Type.Object({ crlNumber: Str, revoked: Type.Integer(), nextUpdate: Iso, reloadedAt: Iso })),
  /** Revoked certificates in the broker's crlfile that it has not loaded yet (their devices are cut by dynsec already). */
  pending: Type.Integer(),
  nextReloadAt: Nullable(Iso),
  lastError: NullableStr,
});
export type BrokerCrlStatus = Static<typeof BrokerCrlStatus>;

export const BrokerCertificateRequest = Type.Object(
  {
    /** base64 DER SubjectPublicKeyInfo of the broker's own TLS key (generated where the broker runs). */
    spki: Type.String({ minLength: 40, maxLength: 2000, pattern: B64_PATTERN }),
    hostnames: Type.Array(Type.String({ minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9.:-]+$' }), { minItems: 1, maxItems: 20 }),
  },
  { additionalProperties: false },
);
export type BrokerCertificateRequest = Static<typeof BrokerCertificateRequest>;
export const BrokerCertificateResponse = Type.Object({ certificate: Str, caBundle: Str, crl: NullableStr, notAfter: Iso });

/** A monitoring tool's name: its broker identity is the certificate CN `edgeid-monitor-<name>`. */
export const MONITOR_NAME_PATTERN = '^[a-z0-9][a-z0-9-]{0,31}$';
export const MONITOR_CN_PREFIX = 'edgeid-monitor-';
export const MONITOR_DAYS_DEFAULT = 90;
export const MONITOR_DAYS_MAX = 365;
const MonitorName = Type.String({ pattern: MONITOR_NAME_PATTERN });
export const BrokerMonitorAddRequest = Type.Object(
  {
    name: MonitorName,
    /** base64 DER SubjectPublicKeyInfo of the tool's P-256 key (generated where the tool runs, never sent). */
    spki: Type.String({ minLength: 40, maxLength: 2000, pattern: B64_PATTERN }),
    /** Certificate lifetime in days (default 90). */
    days: Type.Optional(Type.Integer({ minimum: 1, maximum: MONITOR_DAYS_MAX })),
  },
  { additionalProperties: false },
);
export type BrokerMonitorAddRequest = Static<typeof BrokerMonitorAddRequest>;
export const BrokerMonitorView = Type.Object({
  name: Str,
  /** Certificate CN = broker username = MQTT client id. */
  commonName: Str,
  serial: Str,
  notAfter: Iso,
  createdAt: Iso,
  createdBy: Str,
});
export type BrokerMonitorView = Static<typeof BrokerMonitorView>;
export const BrokerMonitorAddResponse = Type.Object({
  monitor: BrokerMonitorView,
  /** PEM: the certificate, then the issuing CA. */
  certificate: Str,
  /** PEM: what the tool trusts for the broker. */
  caBundle: Str,
  /** The broker URL from the server's config, if any. */
  brokerUrl: NullableStr,
});
export const BrokerMonitorList = Type.Object({ monitors: Type.Array(BrokerMonitorView) });
export const BrokerMonitorParams = Type.Object({ name: MonitorName }, { additionalProperties: false });
export const BrokerMonitorRemoveResponse = Type.Object({
  removed: Str,
  /** The certificate's serial, now on the CRL (null: the server had no certificate recorded for it). */
  revokedSerial: NullableStr,
  crlNumber: Str,
});

// --- canonical claims and the quote's qualifyingData -------------------------------------------

/**
 * Canonical JSON: object keys sorted by UTF-16 code units, no whitespace, strings and finite
 * numbers as JSON.stringify writes them (RFC 8785 for the values edgeid uses). Both sides hash
 * this, so any divergence breaks the quote; undefined members are dropped like JSON.stringify.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new TypeError('canonicalJson: non-finite number');
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v === undefined ? null : v)).join(',')}]`;
  if (typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj)
      .filter((k) => obj[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
  }
  throw new TypeError(`canonicalJson: unsupported type ${typeof value}`);
}

export function claimsDigest(claims: unknown): Buffer {
  return createHash('sha256').update(canonicalJson(claims), 'utf8').digest();
}

/** qualifyingData of the posture quote: SHA-256(nonce ‖ SHA-256(canonicalJson(claims))). */
export function quoteQualifyingData(nonce: Buffer, claims: unknown): Buffer {
  return createHash('sha256').update(nonce).update(claimsDigest(claims)).digest();
}

/** SHA-256 fingerprint of a DER certificate as the enrollment URI carries it: `sha256:<hex>`. */
export function certFingerprint(der: Uint8Array): string {
  return `sha256:${createHash('sha256').update(der).digest('hex')}`;
}

/** `edgeid://enroll?server=…&token=…&ca=sha256:…[&zone=…]` */
export function enrollUri(p: { server: string; token: string; caFingerprint: string; zone?: string }): string {
  const q = new URLSearchParams({ server: p.server, token: p.token, ca: p.caFingerprint });
  if (p.zone) q.set('zone', p.zone);
  return `edgeid://enroll?${q.toString()}`;
}

/** Reads an enrollment link (a QR code's text: untrusted); anything else is `enroll_uri_invalid`. */
export function parseEnrollUri(uri: string): { server: string; token: string; caFingerprint: string; zone?: string } {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw new EdgeidError('enroll_uri_invalid', 'not a URI');
  }
  if (u.protocol !== 'edgeid:' || (u.hostname !== 'enroll' && u.pathname.replace(/^\/+/, '') !== 'enroll')) {
    throw new EdgeidError('enroll_uri_invalid', 'not an edgeid://enroll URI');
  }
  const server = u.searchParams.get('server');
  const token = u.searchParams.get('token');
  const ca = u.searchParams.get('ca');
  if (!server || !token || !ca) throw new EdgeidError('enroll_uri_invalid', 'edgeid://enroll URI needs server, token and ca');
  const zone = u.searchParams.get('zone');
  return { server, token, caFingerprint: ca, ...(zone ? { zone } : {}) };
}

/** Topics a device may use on the broker (the broker integration grants exactly these). */
export function deviceTopics(deviceId: string): { publish: string; control: string } {
  return { publish: `devices/${deviceId}/#`, control: `edgeid/${deviceId}/control` };
}

/** Alert rules (services/alerts.ts) and severities. */
export const ALERT_RULES = [
  'attestation_failures_device',
  'attestation_failures_address',
  'renewal_new_network',
  'enrollment_bad_tokens',
  'device_quarantined',
  'device_revoked',
  'device_stale',
  'issuance_rate',
  'ca_expiry',
] as const;
export type AlertRule = (typeof ALERT_RULES)[number];
export const ALERT_SEVERITIES = ['info', 'warning', 'critical'] as const;
export const ALERT_STATES = ['open', 'acknowledged'] as const;
const AlertId = Type.String({ pattern: '^alr-[0-9a-f]{16}$' });
/** An alert as the admin API, the webhook and `edgeid-admin alerts list --json` carry it. */
export const Alert = Type.Object({
  id: Str,
  rule: oneOf(ALERT_RULES),
  severity: oneOf(ALERT_SEVERITIES),
  deviceId: NullableStr,
  zone: NullableStr,
  /** The source network (an IPv4 address, an IPv4 /24 or an IPv6 /64), for rules about an address. */
  address: NullableStr,
  summary: Str,
  firstSeen: Iso,
  lastSeen: Iso,
  count: Type.Integer(),
  state: oneOf(ALERT_STATES),
  acknowledgedBy: NullableStr,
  acknowledgedAt: Nullable(Iso),
});
export type Alert = Static<typeof Alert>;
export const AlertList = Type.Object({ alerts: Type.Array(Alert), next: Type.Optional(Str) });
export type AlertList = Static<typeof AlertList>;
export const AlertsQuery = Type.Object(
  {
    state: Type.Optional(oneOf(ALERT_STATES)),
    deviceId: Type.Optional(DeviceId),
    rule: Type.Optional(oneOf(ALERT_RULES)),
    limit: Type.Optional(PageLimit),
    after: Type.Optional(PageCursor),
  },
  { additionalProperties: false },
);
export const AlertParams = Type.Object({ id: AlertId }, { additionalProperties: false });
/** A webhook delivery of an alert: the persisted queue's state. */
export const AlertDelivery = Type.Object({
  id: Str,
  alertId: Str,
  state: oneOf(['pending', 'delivered', 'failed'] as const),
  attempts: Type.Integer(),
  nextAttemptAt: Nullable(Iso),
  lastStatus: Nullable(Type.Integer()),
  lastError: NullableStr,
  createdAt: Iso,
  deliveredAt: Nullable(Iso),
});
export type AlertDelivery = Static<typeof AlertDelivery>;
export const AlertDeliveryList = Type.Object({ deliveries: Type.Array(AlertDelivery) });
export const AlertDeliveriesQuery = Type.Object(
  { alertId: Type.Optional(AlertId), limit: Type.Optional(PageLimit) },
  { additionalProperties: false },
);
