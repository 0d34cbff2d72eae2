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
  /** EK identity (SHA-256 hex of the EK's DER SPKI, protocol/tpm/ekidentity.ts) that first presented the token. */
  ekHash: string | null;
  boundAt: number | null;
  usedAt: number | null;
  deviceId: string | null;
}

export interface EnrollSessionRecord {
  id: string;
  tokenId: string;
  ekHash: string;
  /** Canonical TPM2B_PUBLIC of the EK. */
  ekPub?: Buffer | null;
  /** Whether the EK certificate chained to the EK trust store, and its issuer. */
  ekVerified?: boolean | null;
  ekIssuer?: string | null;
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
  /** EK identity (SHA-256 hex of the EK's DER SPKI); for legacy rows (ekLegacy) the hash of the TPMT_PUBLIC as sent. */
  ekHash: string;
  /** True for rows enrolled before the EK identity was canonical (their ekHash is the old one). */
  ekLegacy?: boolean;
  /** Canonical TPM2B_PUBLIC of the EK (absent for legacy rows). */
  ekPub?: Buffer | null;
  /** Whether its EK certificate chained to the EK trust store (null: not recorded, legacy rows). */
  ekVerified?: boolean | null;
  /** Issuer DN of the EK certificate, when one was verified. */
  ekIssuer?: string | null;
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
  /** PCR index → hex value of the last quote the server verified (accepted or refused), or null before one was stored. */
  lastPcrs?: Record<string, string> | null;
  /** When that quote was verified (ms since the epoch). */
  lastQuoteAt?: number | null;
  baselineWindowUntil: number | null;
  /** Id of the approval that opened the baseline window (in both audit rows: the approval and the renewal that closed it). */
  baselineApprovalId?: string | null;
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

/** A client certificate issued to a monitoring tool (its broker identity, CN edgeid-monitor-<name>). */
export interface BrokerMonitorRecord {
  serial: string;
  name: string;
  commonName: string;
  /** SHA-256 (hex) of the certificate's SPKI. */
  spkiHash: string;
  notBefore: number;
  notAfter: number;
  createdBy: string;
  createdAt: number;
  /** When it was removed (its serial is then on the CRL until notAfter), null while live. */
  removedAt: number | null;
}

export interface NonceRecord {
  /** base64 of 32 random bytes, as the API carries it. */
  value: string;
  deviceId: string;
  createdAt: number;
  expiresAt: number;
  usedAt: number | null;
}

/** A person's account of the admin API (services/users.ts). */
export interface UserRecord {
  name: string;
  role: 'viewer' | 'technician' | 'operator' | 'admin';
  /** The zones the user acts in; null = every zone. */
  zones: string[] | null;
  /** SHA-256 of the user's bearer token; the token itself is never stored. */
  tokenHash: Buffer;
  createdBy: string;
  createdAt: number;
  expiresAt: number | null;
  disabledAt: number | null;
  disabledBy: string | null;
  tokenRotatedAt: number | null;
  /** The user adopted from data/admin-token (its token follows that file). */
  bootstrap: boolean;
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
  /** Only devices in one of these zones (a zone-scoped user's listing). */
  zones?: string[];
  /** Only devices whose retireBy is set and at or before this time. */
  retireByAtOrBefore?: number;
  /** Only devices whose id, name, owner or last address contains this text (ASCII case-insensitive). */
  search?: string;
  /** Only devices whose baseline approval window is open (`open`) or not at `now`. */
  baselineWindow?: { open: boolean; now: number };
}

/** Sort keys of the device inventory: enrolledAt, name, lastSeen, the newest certificate's notAfter. */
export const DEVICE_SORTS = ['enrolled', 'name', 'lastSeen', 'expiry'] as const;
export type DeviceSort = (typeof DEVICE_SORTS)[number];

/**
 * One page of the device inventory, keyset-paged on (sort key, id) in `order` (ties by id in the
 * same direction). A missing name sorts as '', a missing lastSeen or certificate as 0 (first
 * ascending). `after` is the last row of the previous page: its sort key (deviceSortKey) and id;
 * `{ time, id }` is the enrolledAt form.
 */
export interface DevicePageRequest {
  limit: number;
  sort?: DeviceSort;
  order?: 'asc' | 'desc';
  after?: { key: number | string; id: string } | { time: number; id: string };
}

/** The value a listing row is sorted on (what a cursor after it carries). */
export function deviceSortKey(l: DeviceListing, sort: DeviceSort): number | string {
  switch (sort) {
    case 'enrolled':
      return l.device.enrolledAt;
    case 'name':
      return l.device.name ?? '';
    case 'lastSeen':
      return l.device.lastSeen ?? 0;
    case 'expiry':
      return l.lastCertificate?.notAfter ?? 0;
  }
}

/** A device with its newest certificate (by notAfter), as the inventory lists it. */
export interface DeviceListing {
  device: DeviceRecord;
  lastCertificate: CertificateRecord | null;
}

export type DevicePatch = Partial<
  Pick<
    DeviceRecord,
    | 'status'
    | 'statusReason'
    | 'baseline'
    | 'claims'
    | 'baselineWindowUntil'
    | 'baselineApprovalId'
    | 'lastSeen'
    | 'lastIp'
    | 'statusChangedAt'
    | 'eventLog'
    | 'baselineEventLog'
    | 'lastPcrs'
    | 'lastQuoteAt'
  >
>;

/** An operator's change to the EK trust store: an added anchor, or a built-in one switched off. */
export interface EkRootRecord {
  /** SHA-256 (hex) of the certificate's DER. */
  fingerprint: string;
  kind: 'anchor' | 'disabled';
  der: Buffer | null;
  subject: string;
  notAfter: number | null;
  addedBy: string;
  addedAt: number;
}

/** One device of a supplier manifest: its EK may enroll once without a token. */
export interface EkAllowRecord {
  id: string;
  /** EK identity (SHA-256 hex of the EK's DER SPKI). */
  ekId: string;
  zone: string;
  owner: string;
  name: string | null;
  /** Where it came from (manifest file name and line/index). */
  source: string | null;
  importedBy: string;
  importedAt: number;
  /** The token minted for its enrollment, once it tried. */
  tokenId: string | null;
  /** When that token was spent (read from it; ignored on import). */
  usedAt?: number | null;
  /** The device its enrollment created (read from the token; ignored on import). */
  deviceId?: string | null;
}

export type AlertSeverity = 'info' | 'warning' | 'critical';

/** An alert raised by a rule (services/alerts.ts). Times are milliseconds since the epoch. */
export interface AlertRecord {
  id: string;
  rule: string;
  severity: AlertSeverity;
  /** What the alert is about within its rule (device id, source network, fleet); one open alert per (rule, key). */
  key: string;
  deviceId: string | null;
  zone: string | null;
  address: string | null;
  summary: string;
  firstSeen: number;
  lastSeen: number;
  count: number;
  state: 'open' | 'acknowledged';
  acknowledgedBy: string | null;
  acknowledgedAt: number | null;
}

/**
 * One evaluation of a rule for a key: while an alert of (rule, key) is open it is bumped by
 * `bumpBy` (0: left as it is); otherwise, when `fire`, a new alert opens with `openCount`.
 */
export interface AlertOccurrence {
  /** Id the alert gets if this occurrence opens one. */
  id: string;
  rule: string;
  key: string;
  severity: AlertSeverity;
  deviceId: string | null;
  zone: string | null;
  address: string | null;
  summary: string;
  at: number;
  fire: boolean;
  openCount: number;
  bumpBy: number;
}

/** A webhook delivery of an alert (the persisted queue). */
export interface AlertDeliveryRecord {
  id: string;
  alertId: string;
  /** The exact JSON body sent on every attempt. */
  body: string;
  state: 'pending' | 'delivered' | 'failed';
  attempts: number;
  nextAt: number;
  lastStatus: number | null;
  lastError: string | null;
  createdAt: number;
  deliveredAt: number | null;
}

export interface AlertFilter {
  state?: 'open' | 'acknowledged';
  deviceId?: string;
  rule?: string;
  /** Only the alert of this key (the device id, the source network, … that the rule counts by). */
  key?: string;
  /** Only alerts whose zone is one of these (alerts without a zone are left out). */
  zones?: string[];
}

export interface Store {
  close(): Promise<void>;

  getMeta(key: string): Promise<string | null>;
  setMeta(key: string, value: string): Promise<void>;
  /**
   * Reserves `count` consecutive CRL numbers atomically (one statement on the meta row
   * `crl_number`, which holds the last number spent) and returns the first: several server
   * instances on one database never get the same number, and each reservation is above every
   * earlier one (RFC 5280 §5.2.3: a CRL number increases monotonically).
   */
  nextCrlNumbers(count: number): Promise<bigint>;

  createToken(token: TokenRecord, audit: AuditInput): Promise<void>;
  getToken(id: string): Promise<TokenRecord | null>;
  listTokens(): Promise<TokenRecord[]>;
  /** Ends an unused token now (expiresAt = at) with its audit row; false (nothing written) if it was used or expired already. */
  expireToken(id: string, at: number, audit: AuditInput): Promise<boolean>;

  /**
   * Binds the token to the EK atomically (only if unbound or bound to the same EK, unused and
   * unexpired) and records a new enrollment session; earlier open sessions of the token are
   * superseded unless `keepOtherSessions`; `extendTokenUntil` moves the token's expiry to at
   * least that time. Returns why it refused, or 'ok'.
   */
  startEnrollment(p: {
    tokenId: string;
    ekHash: string;
    now: number;
    session: EnrollSessionRecord;
    audit: AuditInput;
    keepOtherSessions?: boolean;
    extendTokenUntil?: number;
  }): Promise<'ok' | 'bound_other' | 'used' | 'expired' | 'missing'>;
  getSession(id: string): Promise<EnrollSessionRecord | null>;
  /**
   * Spends the token and the session, creates the device, its first certificate and its first
   * renewal nonce, and appends the audit row — all or nothing. Returns false (and changes
   * nothing) if the token or session was spent meanwhile, and the live device's id (changing
   * nothing) if a live device with the same EK exists (checked in the transaction, and a unique
   * index on the EK identity of live devices backs it).
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
  }): Promise<boolean | { liveDevice: string }>;
  /**
   * A failed check: spend the token and close its sessions, and append the audit row; with
   * `keepToken`, close only the given session (the token stays usable).
   */
  failEnrollment(p: { tokenId: string; sessionId: string | null; now: number; audit: AuditInput; keepToken?: boolean }): Promise<void>;

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
  /**
   * A device with this EK that is still active or quarantined: ekHash against current rows,
   * legacyHashes against rows enrolled before the EK identity was canonical.
   */
  findLiveDeviceByEk(ekHash: string, legacyHashes?: string[]): Promise<DeviceRecord | null>;

  listEkRoots(): Promise<EkRootRecord[]>;
  /** Adds or replaces the operator's row for this fingerprint. */
  putEkRoot(r: EkRootRecord, audit: AuditInput): Promise<void>;
  /** Deletes the operator's row for this fingerprint; false if there was none. */
  deleteEkRoot(fingerprint: string, audit: AuditInput): Promise<boolean>;

  listEkAllow(): Promise<EkAllowRecord[]>;
  getEkAllowByEk(ekId: string): Promise<EkAllowRecord | null>;
  /** Inserts the entries whose EK is not listed yet, in one transaction; returns those it inserted. */
  importEkAllow(entries: EkAllowRecord[], audit: (added: EkAllowRecord[]) => AuditInput): Promise<EkAllowRecord[]>;
  /** Removes an entry (and expires its minted token if that is unused); false if it does not exist. */
  removeEkAllow(id: string, now: number, audit: AuditInput): Promise<boolean>;
  /**
   * Tokenless enrollment: mints `token` for the entry (only if the entry still exists and its
   * token is still `previousTokenId`) in one transaction. Returns false if it lost to a removal or another attempt.
   */
  claimEkAllow(p: { entryId: string; previousTokenId: string | null; token: TokenRecord }): Promise<boolean>;
  /** The device whose AK has this TPM name (hex), most recent first; any status. */
  findDeviceByAkName(akName: string): Promise<DeviceRecord | null>;
  /** Applies the patch (only while the device's status is one of `onlyIfStatus`, if given); true if a row changed. */
  updateDevice(id: string, patch: DevicePatch, audit?: AuditInput, onlyIfStatus?: DeviceStatus[]): Promise<boolean>;

  /**
   * Stores a challenge nonce and appends the audit row; only challenge nonces beyond the newest
   * `keep` of the device are evicted, never an issued one.
   */
  /** A challenge nonce; the newest `keep` are kept per device and requesting network (`requester`). */
  createNonce(n: NonceRecord, keep: number, audit: AuditInput, requester?: string): Promise<void>;
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
  endDevice(p: {
    deviceId: string;
    status: 'revoked' | 'retired';
    reason: RevokeReason;
    statusReason: string;
    now: number;
    audit: AuditInput;
  }): Promise<string[]>;
  /**
   * Quarantines an active (or already quarantined) device in one transaction: status, the patch,
   * its unexpired certificates revoked with `reason`, and the audit row (with the serials). A
   * device revoked or retired meanwhile is left as it is (null; the row is still written).
   */
  quarantineDevice(p: {
    deviceId: string;
    statusReason: string;
    reason: RevokeReason;
    now: number;
    patch: DevicePatch;
    audit: AuditInput;
  }): Promise<string[] | null>;
  /** Revoked certificates that have not expired yet at `now` (the CRL's entries). */
  listRevokedUnexpired(now: number): Promise<CertificateRecord[]>;

  /** The live (not removed) monitor of this name, or null. */
  getBrokerMonitor(name: string): Promise<BrokerMonitorRecord | null>;
  /** Live monitors, by name. */
  listBrokerMonitors(): Promise<BrokerMonitorRecord[]>;
  /** Records a monitor's certificate with the audit row; false (nothing written) if a live monitor has that name. */
  addBrokerMonitor(m: BrokerMonitorRecord, audit: AuditInput): Promise<boolean>;
  /** Marks the live monitor of this name removed, with the audit row; returns it, or null if there was none (the row is still written). */
  removeBrokerMonitor(name: string, now: number, audit: AuditInput): Promise<BrokerMonitorRecord | null>;
  /** Certificates of removed monitors that have not expired yet at `now` (CRL entries, reason cessation-of-operation). */
  listRemovedMonitorsUnexpired(now: number): Promise<BrokerMonitorRecord[]>;

  /** Only the ids of the devices the filter selects (no row decoding), in id order. */
  listDeviceIds(filter?: DeviceFilter): Promise<string[]>;
  /**
   * One page of a listing in its sort order (devices: DevicePageRequest, default enrolledAt, id;
   * tokens: createdAt, id), after the cursor `after` (the last item of the previous page).
   */
  pageDevicesWithLastCertificate(filter: DeviceFilter, page: DevicePageRequest): Promise<DeviceListing[]>;
  pageTokens(
    page: { after?: { time: number; id: string }; limit: number },
    filter?: { zones?: string[]; createdBy?: string },
  ): Promise<TokenRecord[]>;

  /** Retention: the highest seq of a row older than `before` (never the newest row), or null. */
  auditPruneLimit(before: number): Promise<number | null>;
  /**
   * Deletes the audit rows after the current anchor up to `throughSeq` and records the last one as
   * the new anchor (audit_checkpoint) with the file they were exported to — in one transaction,
   * with the audit row that reports it.
   */
  pruneAudit(p: {
    throughSeq: number;
    now: number;
    file: string;
    audit: AuditInput;
  }): Promise<{ rows: number; anchor: { seq: number; hash: string } }>;
  /** The current anchor of the chain (the last pruned row), null when nothing was pruned. */
  auditAnchor(): Promise<{ seq: number; hash: string } | null>;
  /** Certificates that expired before `before`, oldest first, at most `limit`. */
  listExpiredCertificates(before: number, limit: number): Promise<CertificateRecord[]>;
  /** Deletes these certificates (only those still expired before `before`); returns how many. */
  deleteCertificates(serials: string[], before: number): Promise<number>;

  getUser(name: string): Promise<UserRecord | null>;
  getUserByTokenHash(tokenHash: Buffer): Promise<UserRecord | null>;
  listUsers(): Promise<UserRecord[]>;
  /** Inserts the user with the audit row; false (nothing written) if the name is taken. */
  createUser(u: UserRecord, audit: AuditInput | null): Promise<boolean>;
  /**
   * Changes the user's token hash, role and zones, and/or disables it, with the audit row; false if
   * there is no such user. With `keepAdminAt`, the change is made only if afterwards some admin is
   * still enabled and unexpired at that time (checked in the same transaction, so two concurrent
   * changes cannot both remove the last admin): else nothing is written and the answer is 'last_admin'.
   */
  updateUser(
    name: string,
    patch: Partial<Pick<UserRecord, 'tokenHash' | 'tokenRotatedAt' | 'disabledAt' | 'disabledBy' | 'role' | 'zones'>>,
    audit: AuditInput | null,
    opts?: { keepAdminAt?: number },
  ): Promise<boolean | 'last_admin'>;

  appendAudit(a: AuditInput): Promise<AuditRow>;
  /**
   * Audit rows after `afterSeq` (and before `beforeSeq`), oldest first unless `newestFirst`; `actor` keeps one actor's rows; `zones` keeps the rows about
   * devices in those zones plus the rows of `ownActor` (a zone-scoped user's view).
   */
  listAudit(p?: {
    afterSeq?: number;
    /** Only rows before this seq. */
    beforeSeq?: number;
    /** Newest first (a listing that pages backwards with beforeSeq). */
    newestFirst?: boolean;
    limit?: number;
    deviceId?: string;
    actor?: string;
    zones?: string[];
    ownActor?: string;
  }): Promise<AuditRow[]>;
  verifyAudit(): Promise<AuditVerifyResult>;

  /** Every row of the alert rules' state (key → value). */
  getAlertState(): Promise<Record<string, string>>;
  /**
   * The rules' results of a run of audit rows, in one transaction: the occurrences in order (each
   * bumps the open alert of its rule and key, or opens one), the state keys (null deletes), and a
   * webhook delivery for each alert opened when `delivery` gives one. Returns the alerts opened.
   */
  commitAlerts(p: {
    occurrences: AlertOccurrence[];
    state: Record<string, string | null>;
    delivery?: (opened: AlertRecord) => AlertDeliveryRecord | null;
  }): Promise<AlertRecord[]>;
  getAlert(id: string): Promise<AlertRecord | null>;
  /** Newest first (firstSeen, id descending), after the cursor (the last item of the previous page). */
  listAlerts(filter: AlertFilter, page: { after?: { time: number; id: string }; limit: number }): Promise<AlertRecord[]>;
  /** Open alerts by rule and severity. */
  countOpenAlerts(): Promise<{ rule: string; severity: AlertSeverity; count: number }[]>;
  /** Acknowledges the alert (only while open) with the audit row; null (nothing written) if it is not open. */
  acknowledgeAlert(id: string, by: string, at: number, audit: AuditInput): Promise<AlertRecord | null>;
  /** Pending deliveries due at `now`, oldest first. */
  dueAlertDeliveries(now: number, limit: number): Promise<AlertDeliveryRecord[]>;
  /** The earliest nextAt of a pending delivery, or null. */
  nextAlertDelivery(): Promise<number | null>;
  updateAlertDelivery(
    id: string,
    patch: Partial<Pick<AlertDeliveryRecord, 'state' | 'attempts' | 'nextAt' | 'lastStatus' | 'lastError' | 'deliveredAt'>>,
  ): Promise<void>;
  /** Newest first. */
  listAlertDeliveries(p: { alertId?: string; limit: number }): Promise<AlertDeliveryRecord[]>;
}
