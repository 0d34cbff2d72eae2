import { createHash } from 'node:crypto';

/**
 * The HTTP API both the agent and the enrollment server speak. Binary fields are standard base64
 * (TPM structures in the byte conventions of protocol/tpm: TPM2B_PUBLIC with its size prefix,
 * TPMS_ATTEST without, TPMT_SIGNATURE); certificates are PEM; times are ISO-8601 UTC strings.
 * Errors are always `{ "error": { "code", "message" } }` with a code from protocol/errors.
 */

export type Base64 = string;
export type IsoTime = string;

/** Posture claims the agent reports; canonical JSON of this object is bound into the quote. */
export interface Claims {
  agentVersion: string;
  agentHash?: string;
  configHash?: string;
  os?: Record<string, string>;
  kernel?: string;
  [extra: string]: unknown;
}

/** A TPM attestation: TPMS_ATTEST bytes and the TPMT_SIGNATURE over them, both base64. */
export interface SignedAttest {
  attest: Base64;
  signature: Base64;
}

/**
 * Evidence sent with every certificate request (enrollment finish and renewal):
 * - `sessionKeyPub`: TPM2B_PUBLIC of the new TPM session key (the certificate's key);
 * - `certify`: TPM2_Certify of the session key by the AK, qualifyingData = nonce;
 * - `quote`: TPM2_Quote by the AK over the zone's PCRs, qualifyingData = quoteQualifyingData(nonce, claims);
 * - `pcrValues`: the sha256 bank values, keyed by decimal PCR index;
 * - `csr`: DER PKCS#10 signed by the session key.
 */
export interface Evidence {
  sessionKeyPub: Base64;
  certify: SignedAttest;
  quote: SignedAttest;
  pcrValues: Record<string, Base64>;
  claims: Claims;
  csr: Base64;
}

export interface EnrollStartRequest {
  token: string;
  /** TPM2B_PUBLIC of the endorsement key. */
  ekPub: Base64;
  /** DER EK certificate from the TPM's NV, if it has one. */
  ekCert?: Base64;
  /** TPM2B_PUBLIC of the attestation key. */
  akPub: Base64;
  /** The zone the device expects (from the enrollment URI); must match the token's zone if given. */
  zone?: string;
}

export interface EnrollStartResponse {
  session: string;
  /** TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET for TPM2_ActivateCredential. */
  credentialBlob: Base64;
  encryptedSecret: Base64;
  nonce: Base64;
  /** The zone's PCR selection (sha256 bank) the quote must cover. */
  pcrs: number[];
  expiresAt: IsoTime;
}

export interface EnrollFinishRequest extends Evidence {
  session: string;
  /** The secret ActivateCredential recovered. */
  secret: Base64;
}

/** Renewal state every issuing response carries: the next single-use nonce and when to use it. */
export interface RenewInfo {
  nonce: Base64;
  nonceExpiresAt: IsoTime;
  renewAfter: IsoTime;
  notAfter: IsoTime;
  /** The zone's PCR selection for the next quote. */
  pcrs: number[];
}

export interface MqttInfo {
  url: string | null;
  topics: { publish: string; control: string };
}

export interface IssueResponse {
  deviceId: string;
  zone: string;
  /** PEM leaf certificate for the TPM session key. */
  certificate: string;
  /** PEM chain from the issuing intermediate up to the root. */
  chain: string[];
  renew: RenewInfo;
}

export interface EnrollFinishResponse extends IssueResponse {
  mqtt: MqttInfo;
}

/**
 * Either the device id, or — for an agent that crashed after the server issued its first
 * certificate but before it stored the answer — the hex TPM name of its AK. The renewal that
 * follows proves possession of that AK, so the lookup reveals nothing a caller could use.
 */
export type RenewChallengeRequest = { deviceId: string; akName?: never } | { akName: string; deviceId?: never };

export interface RenewChallengeResponse {
  nonce: Base64;
  expiresAt: IsoTime;
  pcrs: number[];
  deviceId: string;
  zone: string;
}

export interface RenewRequest extends Evidence {
  deviceId: string;
  nonce: Base64;
}

export type RenewResponse = IssueResponse;

export interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

// --- control channel (issue 4/5) -------------------------------------------------------------

export type ControlCommandType = 'wipe' | 'renew-now';

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
export interface SignedControl {
  payload: string;
  signature: Base64;
  signer: string;
}

// --- admin API ---------------------------------------------------------------------------------

export type DeviceStatus = 'active' | 'quarantined' | 'revoked' | 'retired';

export interface TokenCreateRequest {
  zone: string;
  owner: string;
  name?: string;
  purpose?: string;
  ttlSeconds?: number;
}

export interface TokenCreateResponse {
  id: string;
  token: string;
  uri: string;
  server: string;
  caFingerprint: string;
  zone: string;
  owner: string;
  name: string | null;
  expiresAt: IsoTime;
}

export interface TokenView {
  id: string;
  zone: string;
  owner: string;
  name: string | null;
  createdBy: string;
  createdAt: IsoTime;
  expiresAt: IsoTime;
  boundAt: IsoTime | null;
  usedAt: IsoTime | null;
  deviceId: string | null;
}

export interface DeviceView {
  id: string;
  zone: string;
  owner: string;
  name: string | null;
  purpose: string | null;
  status: DeviceStatus;
  statusReason: string | null;
  posture: 'ok' | 'quarantined' | 'baseline-window';
  enrolledBy: string;
  enrolledAt: IsoTime;
  retireBy: IsoTime | null;
  lastSeen: IsoTime | null;
  lastIp: string | null;
  stale: boolean;
  baselineWindowUntil: IsoTime | null;
  ekHash: string;
  claims: Claims | null;
  baseline: Record<string, string> | null;
  /** notAfter of the device's newest certificate (null before the first one). */
  certificateNotAfter: IsoTime | null;
  certificates?: CertificateView[];
}

export interface CertificateView {
  serial: string;
  notBefore: IsoTime;
  notAfter: IsoTime;
  revokedAt: IsoTime | null;
  reason: string | null;
}

export interface AuditRow {
  seq: number;
  time: IsoTime;
  actor: string;
  event: string;
  deviceId: string | null;
  ip: string | null;
  outcome: 'ok' | 'fail';
  reason: string | null;
  details: Record<string, unknown> | null;
  prevHash: string;
  hash: string;
}

export interface AuditVerifyResult {
  ok: boolean;
  rows: number;
  /** First problem found, if any. */
  problem?: { seq: number; kind: 'hash_mismatch' | 'chain_broken' | 'gap' | 'head_mismatch'; detail: string };
}

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

export function parseEnrollUri(uri: string): { server: string; token: string; caFingerprint: string; zone?: string } {
  const u = new URL(uri);
  if (u.protocol !== 'edgeid:' || (u.hostname !== 'enroll' && u.pathname.replace(/^\/+/, '') !== 'enroll')) {
    throw new TypeError('not an edgeid://enroll URI');
  }
  const server = u.searchParams.get('server');
  const token = u.searchParams.get('token');
  const ca = u.searchParams.get('ca');
  if (!server || !token || !ca) throw new TypeError('edgeid://enroll URI needs server, token and ca');
  const zone = u.searchParams.get('zone');
  return { server, token, caFingerprint: ca, ...(zone ? { zone } : {}) };
}

/** Topics a device may use on the broker (issue 5 grants exactly these). */
export function deviceTopics(deviceId: string): { publish: string; control: string } {
  return { publish: `devices/${deviceId}/#`, control: `edgeid/${deviceId}/control` };
}
