import type { AuditRow, AuditVerifyResult, Claims, DeviceStatus, RevokeReason } from '../../protocol/api.js';

/**
 * The one storage interface of the server (smallstep's db/ idea): domain-level operations, each
 * atomic. Times are milliseconds since the epoch. SQLite implements it now (store/sqlite.ts);
 * the SQL is kept portable so a PostgreSQL implementation can follow.
 */

export interface TokenRecord {
  id: string;
  /** SHA-256 of the token's secret part; the secret itself is never stored. */
  secretHash: Buffer;
  zone: string;
  owner: string;
  name: string | null;
  purpose: string | null;
  createdBy: string;
  createdAt: number;
  expiresAt: number;
  /** SHA-256 (hex) of the EK public area that first presented the token. */
  ekHash: string | null;
  boundAt: number | null;
  usedAt: number | null;
  deviceId: string | null;
}

export interface EnrollSessionRecord {
  id: string;
  tokenId: string;
  ekHash: string;
  akPub: Buffer;
  /** SHA-256 of the MakeCredential secret. */
  secretHash: Buffer;
  nonce: Buffer;
  ip: string | null;
  createdAt: number;
  expiresAt: number;
  usedAt: number | null;
}

export interface DeviceRecord {
  id: string;
  zone: string;
  owner: string;
  name: string | null;
  purpose: string | null;
  status: DeviceStatus;
  statusReason: string | null;
  ekHash: string;
  akPub: Buffer;
  /** Hex TPM name (nameAlg ‖ digest) of the AK, computed by the service that verified it; null only for rows from before it was stored. */
  akName: string | null;
  /** PCR index → hex sha256 value approved for this device. */
  baseline: Record<string, string> | null;
  claims: Claims | null;
  /** The last TCG event log accepted with a quote (uncompressed), or null (always set when read from the store). */
  eventLog?: Buffer | null;
  /** The TCG event log approved with the PCR baseline, or null. */
  baselineEventLog?: Buffer | null;
  baselineWindowUntil: number | null;
  enrolledBy: string;
  enrolledAt: number;
  retireBy: number | null;
  lastSeen: number | null;
  lastIp: string | null;
  statusChangedAt: number | null;
}

export interface CertificateRecord {
  serial: string;
  deviceId: string;
  notBefore: number;
  notAfter: number;
  /** SHA-256 (hex) of the certificate's SPKI. */
  spkiHash: string;
  issuedAt: number;
  revokedAt: number | null;
  reason: RevokeReason | null;
}

export interface NonceRecord {
  /** base64 of 32 random bytes, as the API carries it. */
  value: string;
  deviceId: string;
  createdAt: number;
  expiresAt: number;
  usedAt: number | null;
}

export interface AuditInput {
  time: number;
  actor: string;
  event: string;
  deviceId?: string | null;
  ip?: string | null;
  outcome: 'ok' | 'fail';
  reason?: string | null;
  details?: Record<string, unknown> | null;
}

/** Which devices a listing returns; every field narrows it (in the query, not after it). */
export interface DeviceFilter {
  status?: DeviceStatus[];
  zone?: string;
  /**
   * Stale or not: a device is stale when it is active or quarantined and its last contact (or its
   * enrollment, before any) is older than `before`.
   */
  stale?: { is: boolean; before: number };
  /** Only devices whose retireBy is set and at or before this time. */
  retireByAtOrBefore?: number;
}

/** A device with its newest certificate (by notAfter), as the inventory lists it. */
export interface DeviceListing {
  device: DeviceRecord;
  lastCertificate: CertificateRecord | null;
}

export type DevicePatch = Partial<
  Pick<DeviceRecord, 'status' | 'statusReason' | 'baseline' | 'claims' | 'baselineWindowUntil' | 'lastSeen' | 'lastIp' | 'statusChangedAt' | 'eventLog' | 'baselineEventLog'>
>;

export interface Store {
  close(): Promise<void>;

  getMeta(key: string): Promise<string | null>;
  setMeta(key: string, value: string): Promise<void>;

  createToken(token: TokenRecord, audit: AuditInput): Promise<void>;
  getToken(id: string): Promise<TokenRecord | null>;
  listTokens(): Promise<TokenRecord[]>;

  /**
   * Binds the token to the EK atomically (only if unbound or bound to the same EK, unused and
   * unexpired) and records a new enrollment session; earlier open sessions of the token are
   * superseded. Returns why it refused, or 'ok'.
   */
  startEnrollment(p: { tokenId: string; ekHash: string; now: number; session: EnrollSessionRecord; audit: AuditInput }): Promise<
    'ok' | 'bound_other' | 'used' | 'expired' | 'missing'
  >;
  getSession(id: string): Promise<EnrollSessionRecord | null>;
  /**
   * Spends the token and the session, creates the device, its first certificate and its first
   * renewal nonce, and appends the audit row — all or nothing. Returns false (and changes
   * nothing) if the token or session was spent meanwhile.
   */
  finishEnrollment(p: {
    tokenId: string;
    sessionId: string;
    now: number;
    device: DeviceRecord;
    certificate: CertificateRecord;
    nonce: NonceRecord;
    /** Unused issued nonces kept per device (the newest ones). */
    keepNonces: number;
    audit: AuditInput;
  }): Promise<boolean>;
  /** A finish that failed a check: spend token and session and append the audit row. */
  failEnrollment(p: { tokenId: string; sessionId: string | null; now: number; audit: AuditInput }): Promise<void>;

  getDevice(id: string): Promise<DeviceRecord | null>;
  listDevices(filter?: DeviceFilter): Promise<DeviceRecord[]>;
  /** How many devices there are in each status (statuses without devices are absent). */
  countDevicesByStatus(): Promise<Partial<Record<DeviceStatus, number>>>;
  /** The devices the filter selects, each with its newest certificate, in one query. */
  listDevicesWithLastCertificate(filter?: DeviceFilter): Promise<DeviceListing[]>;
  /** Devices stored without an AK name (enrolled before it was stored). */
  devicesWithoutAkName(): Promise<{ id: string; akPub: Buffer }[]>;
  /** Records a device's AK name (only where none is stored). */
  setAkName(id: string, akName: string): Promise<void>;
  /** A device with this EK that is still active or quarantined. */
  findLiveDeviceByEk(ekHash: string): Promise<DeviceRecord | null>;
  /** The device whose AK has this TPM name (hex), most recent first; any status. */
  findDeviceByAkName(akName: string): Promise<DeviceRecord | null>;
  /** Applies the patch (only while the device's status is one of `onlyIfStatus`, if given); true if a row changed. */
  updateDevice(id: string, patch: DevicePatch, audit?: AuditInput, onlyIfStatus?: DeviceStatus[]): Promise<boolean>;

  /**
   * Stores a challenge nonce and appends the audit row; only challenge nonces beyond the newest
   * `keep` of the device are evicted, never an issued one.
   */
  createNonce(n: NonceRecord, keep: number, audit: AuditInput): Promise<void>;
  getNonce(value: string): Promise<NonceRecord | null>;
  /** Marks the nonce used (false if it already was) and appends the audit row in one transaction. */
  spendNonce(value: string, now: number, audit?: AuditInput): Promise<boolean>;
  /**
   * Renewal: spends the nonce, records the certificate, stores the next nonce, updates the device
   * and appends the audit row — all or nothing. False (no change) if the nonce was spent meanwhile.
   */
  renew(p: {
    nonce: string;
    now: number;
    deviceId: string;
    patch: DevicePatch;
    certificate: CertificateRecord;
    nextNonce: NonceRecord;
    /** Unused issued nonces kept per device (the newest ones). */
    keepNonces: number;
    audit: AuditInput;
  }): Promise<boolean>;

  listCertificates(deviceId: string): Promise<CertificateRecord[]>;
  /** The newest certificate of the device. */
  lastCertificate(deviceId: string): Promise<CertificateRecord | null>;
  /**
   * Sets the device's status (revoked / retired), revokes its unexpired certificates and appends
   * the audit row in one transaction. Returns the serials it revoked.
   */
  endDevice(p: { deviceId: string; status: 'revoked' | 'retired'; reason: RevokeReason; statusReason: string; now: number; audit: AuditInput }): Promise<string[]>;
  /** Revoked certificates that have not expired yet at `now` (the CRL's entries). */
  listRevokedUnexpired(now: number): Promise<CertificateRecord[]>;

  appendAudit(a: AuditInput): Promise<AuditRow>;
  listAudit(p?: { afterSeq?: number; limit?: number; deviceId?: string }): Promise<AuditRow[]>;
  verifyAudit(): Promise<AuditVerifyResult>;
}
