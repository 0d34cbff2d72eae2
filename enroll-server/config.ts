import { readFileSync } from 'node:fs';
import { BlockList, isIP } from 'node:net';
import { resolve } from 'node:path';
import { USER_ROLES, type UserRole } from '../protocol/api.js';
import { EdgeidError } from '../protocol/errors/index.js';
import { parseDuration } from './duration.js';

/** How a zone judges posture: PCRs recorded at enrollment, or fixed golden values (hex sha256). */
export type PosturePolicy = { mode: 'baseline' } | { mode: 'golden'; values: Record<number, string> };

/**
 * Posture in the TCG event log's own terms (the log is first replayed against the quote). Event
 * types from the TCG PC Client PFP §10.4.1; digests are the events' sha256-bank digests (hex).
 */
export interface EventLogPolicy {
  /** A quote without an event log is quarantined. */
  required: boolean;
  /** The SecureBoot variable (EV_EFI_VARIABLE_DRIVER_CONFIG, EFI global variable) must be 1. */
  secureBoot: boolean;
  /** Allowed digests of EV_EFI_PLATFORM_FIRMWARE_BLOB / _BLOB2 events (null = any). */
  firmwareBlobs: string[] | null;
  /** Allowed digests of EV_EFI_BOOT_SERVICES_APPLICATION events (null = any). */
  bootApplications: string[] | null;
  /**
   * Allowed signers of boot applications: SHA-256 of the DER certificates that EV_EFI_VARIABLE_AUTHORITY
   * events name (null = any). A boot application passes by its digest or, with Secure Boot on, by
   * every authority event naming an allowed signer.
   */
  bootSigners: string[] | null;
  /** dbx must keep every entry of the approved (baseline) log's dbx. */
  dbxNoRollback: boolean;
}

export interface ZonePolicy {
  name: string;
  /** Certificate lifetime in seconds. */
  lifetime: number;
  /** PCR indices of the sha256 bank every quote must cover. */
  pcrs: number[];
  posture: PosturePolicy;
  claims: { minAgentVersion?: string };
  eventLog: EventLogPolicy;
  /** Allowed source networks; empty = any. */
  cidrs: string[];
  /** Devices retire automatically this long after enrollment (null = never). */
  retireAfter: number | null;
  /** A device whose last certificate expired longer ago than this must enroll again. */
  maxOffline: number;
  /** Checker built from `cidrs` (null = any). */
  allow: BlockList | null;
  /**
   * EK certificates in this zone: null = the server's rule (ek.requireEkCertificate); false = the
   * zone opted out explicitly: no EK certificate is checked and its devices are ekVerified: false.
   */
  requireEkCertificate: boolean | null;
}

export interface RateLimit {
  max: number;
  /** Window in seconds. */
  window: number;
}

/**
 * Where the server keeps its state: SQLite in the data dir (default), or a PostgreSQL database
 * shared by several server instances (store/postgres.ts). The password never sits in the config:
 * it comes from a 0600 file, a named environment variable, or libpq's PGPASSWORD / ~/.pgpass.
 */
export type StoreConfig =
  | { kind: 'sqlite' }
  | {
      kind: 'postgres';
      /** postgres://USER@HOST:PORT/DB (no password in it). */
      url: string;
      /** Connections per server instance. */
      poolSize: number;
      password: { file: string } | { env: string } | null;
    };

export interface ServerConfig {
  dataDir: string;
  store: StoreConfig;
  listen: { host: string; port: number };
  /** Names and addresses put into the server's TLS certificate (plus localhost/127.0.0.1). */
  hostnames: string[];
  /** URL devices use to reach this server; default https://<first hostname>:<port>. */
  publicUrl: string | null;
  logLevel: string;
  allowShortLifetimes: boolean;
  tokenDefaultTtl: number;
  enrollSessionTtl: number;
  challengeTtl: number;
  crlValidity: number;
  staleAfter: number;
  baselineWindow: number;
  housekeepingInterval: number;
  /**
   * Seconds between an instance's attempts to become the leader on a shared PostgreSQL database
   * (services/leader.ts): a dead leader's work moves to another instance within this time.
   */
  leaderInterval: number;
  /**
   * Imported public keys kept as KeyObjects (a device's AK is used twice per renewal): least
   * recently used goes first. About 3 KB of native memory each; a fleet larger than the cache
   * costs one key import per renewal (docs/SCALING.md).
   */
  keyCacheSize: number;
  /**
   * perAddress: every route, per source address, counted at onRequest (before any parsing or
   * validation); enroll / renew / admin: the per-route limits on top of it.
   */
  rateLimit: {
    perAddress: RateLimit;
    enroll: RateLimit;
    renew: RateLimit;
    admin: RateLimit;
    /** Open connections one network (an IPv6 /64) may hold; more are closed at once. */
    connectionsPerAddress: number;
  };
  /** GET /metrics: allowed from these sources (CIDRs; default loopback) or with the admin bearer token. */
  metrics: { allow: string[]; allowList: BlockList | null };
  /** Audit rows of identical unauthenticated refusals (source, route, code) are aggregated per minute. */
  audit: { aggregateRefusals: boolean };
  /**
   * Retention (days; null = keep for ever): audit rows older than auditDays and certificates
   * expired more than certificateDays ago are exported (JSON lines, 0600, under
   * `<data>/archive/`) and then deleted by housekeeping; the audit chain keeps its anchor.
   */
  retention: { auditDays: number | null; certificateDays: number | null };
  mqtt: { url: string | null };
  /** Broker integration: dynsec over MQTT as the server's broker identity, CRL file + reload. */
  broker: BrokerConfig | null;
  /**
   * EK trust: roots / intermediates added to the built-in TPM makers' store (files), whether the
   * built-in store is used, and whether an EK certificate chaining to the store is required
   * (null = not set: required, except in data dirs that held devices or tokens before EK
   * certificates were required by default).
   */
  ek: { roots: string[]; intermediates: string[]; builtinRoots: boolean; requireEkCertificate: boolean | null };
  zones: Record<string, ZonePolicy>;
  /** Alert rules on the audit stream, their thresholds (per zone) and where alerts go (services/alerts.ts). */
  alerts: AlertsConfig;
  /** Where the issuing CA's signing key lives (enroll-server/ca/keys.ts): a 0600 file in data/ca (default) or a PKCS#11 token. */
  ca: { key: 'file' } | { key: 'pkcs11'; pkcs11: Pkcs11KeyConfig };
  /** Single sign-on to the console with OpenID Connect (enroll-server/console/oidc.ts); null = off. */
  oidc: OidcConfig | null;
  /** The web console's own HTTPS listener (enroll-server/console/); null = no console. */
  console: ConsoleConfig | null;
}

/**
 * The console's OpenID Connect relying party (OpenID Connect Core 1.0 §3.1, authorization code
 * flow with PKCE, RFC 7636) and how a provider's claims become an edgeid role and zones.
 */
export interface OidcConfig {
  /** The provider's issuer identifier; discovery reads `<issuer>/.well-known/openid-configuration`. */
  issuer: URL;
  clientId: string;
  /** The client secret: a 0600 file (read when the console starts) or, less preferred, inline. */
  clientSecret: { file: string } | { value: string };
  /** The console's callback, registered at the provider: https://HOST[:PORT]/console/oidc/callback. */
  redirectUri: URL;
  /** Space-separated scopes asked for; always includes openid. */
  scopes: string;
  /** Claim whose value is the person's edgeid user name (audit actor user:NAME); sub when absent. */
  usernameClaim: string;
  /** Claim (string or array of strings, e.g. groups) whose values roleMap maps to roles. */
  roleClaim: string;
  /** Claim value → role; of all values that map, the highest role wins; none → login refused. */
  roleMap: Record<string, UserRole>;
  /** Claim (string or array) naming zones, directly or through zoneMap; null = zoneMap over roleClaim's values. */
  zonesClaim: string | null;
  /** Claim value → zones ("*" = every zone). */
  zoneMap: Record<string, string[] | '*'>;
  /** Allows http:// issuer and redirect URI on a loopback host (tests only). */
  allowInsecureIssuer: boolean;
}

/** N events in a sliding window of `window` seconds. */
export interface AlertWindow {
  count: number;
  window: number;
}

/** Thresholds of the alert rules one zone's devices are judged by. */
export interface AlertThresholds {
  /** Failed attestations or renewals of one device. */
  failures: AlertWindow;
  /** Failed attestations, enrollments or renewals from one source network. */
  addressFailures: AlertWindow;
  /** Enrollment attempts with unknown, used or expired tokens from one source network. */
  badTokens: AlertWindow;
  /** Alert when a device renews from a network (IPv4 /24, IPv6 /64) it never used. */
  newNetwork: boolean;
  /** A device is stale when its last contact is older than this (seconds). */
  staleAfter: number;
}

export interface AlertsConfig {
  defaults: AlertThresholds;
  /** Zones with their own thresholds (each key missing there is the default's). */
  zones: Record<string, AlertThresholds>;
  /** Fleet-wide: certificates issued in the last 5 minutes above factor × the trailing hour's 5-minute average and at least floor. */
  issuance: { factor: number; floor: number };
  /** Fleet-wide: the root or an issuing CA certificate expires within this many days. */
  caExpiryDays: number;
  /** Seconds between the time-based checks (stale devices, CA expiry). */
  checkInterval: number;
  /**
   * Open alerts one per-source rule (failures of a device or a network, bad tokens) may hold; beyond
   * it, new sources count on one alert per rule and zone, so a flood from ever new addresses or
   * device ids cannot grow the alerts or the webhook queue without bound.
   */
  maxOpenPerRule: number;
  webhook: AlertWebhookConfig | null;
  syslog: AlertSyslogConfig | null;
}

export interface AlertWebhookConfig {
  /** https://, or http:// to a loopback address only. */
  url: string;
  /** File (mode 0600) holding the HMAC-SHA256 key. */
  secretFile: string;
  /** PEM CA certificates the receiver's certificate must chain to (default: Node's built-in roots). */
  caFile: string | null;
  maxAttempts: number;
  /** First retry delay and the cap of the exponential backoff (seconds). */
  backoff: number;
  maxBackoff: number;
  /** Per attempt (seconds). */
  timeout: number;
}

export interface AlertSyslogConfig {
  host: string;
  port: number;
  protocol: 'udp' | 'tcp';
  /** RFC 5424 §6.2.1 facility code (default 16, local0). */
  facility: number;
  appName: string;
}

export interface ConsoleConfig {
  listen: { host: string; port: number };
  /**
   * Whether `listen` was derived (the main listener's host, its port + 1; port 0 when the main port
   * is 0) rather than configured: a derived address that is taken only logs a warning.
   */
  derived: boolean;
  /** A session ends after this many seconds without a request (default 15 min) … */
  idleTimeout: number;
  /** … and this long after login whatever happens (default 8 h). */
  absoluteTimeout: number;
  /** Login attempts per source address (RFC 6585 429 beyond). */
  loginLimit: RateLimit;
  /** Seconds between the live view's checks for devices that went stale. */
  staleCheckInterval: number;
}

/**
 * An issuing key inside a PKCS#11 token (PKCS#11 v2.40 §4.9: CKA_SENSITIVE, non-CKA_EXTRACTABLE
 * private key; found by CKA_LABEL). The PIN comes from a 0600 file or an environment variable.
 */
export interface Pkcs11KeyConfig {
  /** The vendor's PKCS#11 module (.so). */
  module: string;
  /** Token label (CK_TOKEN_INFO.label). */
  token: string;
  /** CKA_LABEL of the key pair. */
  keyLabel: string;
  pin: { file: string } | { env: string };
}

export interface BrokerConfig {
  /** mqtts:// URL the server connects to as its broker identity (CN edgeid-broker-admin). */
  url: string;
  /** TLS server name to expect from the broker (default: the URL's host). */
  servername: string | null;
  /** The broker's crlfile; null = the server does not manage the broker's CRL. */
  crlFile: string | null;
  /**
   * argv that makes the broker load its crlfile, e.g. ["systemctl","reload","mosquitto"] (SIGHUP:
   * Mosquitto 2.0.11 re-reads the CRL and keeps sessions) or ["systemctl","restart","mosquitto"]
   * (every session drops). Runs on the crlReload schedule.
   */
  reloadCommand: string[] | null;
  /**
   * When the broker loads a new CRL (broker/crl-schedule.ts), in seconds: at most once per `every`
   * for new revocations (0 = after each one; the revoked device is cut at once by dynsec anyway),
   * and always `refreshBefore` before the loaded copy's nextUpdate.
   */
  crlReload: { every: number; refreshBefore: number };
  /** Reconcile dynsec clients with the device table at start (default true). */
  reconcileOnStart: boolean;
}

const MIN_LIFETIME = 300;
const MAX_LIFETIME = 86400;
const SHORT_LIFETIME_FLOOR = 5;

class Field {
  constructor(readonly path: string) {}
  fail(what: string): never {
    throw new EdgeidError('config_invalid', `config: ${this.path}: ${what}`, { field: this.path });
  }
  at(key: string | number): Field {
    return new Field(this.path ? `${this.path}.${key}` : String(key));
  }
}

function asObject(f: Field, v: unknown): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) f.fail('must be an object');
  return v as Record<string, unknown>;
}

function onlyKeys(f: Field, o: Record<string, unknown>, keys: string[]): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) f.at(k).fail(`unknown field (known: ${keys.join(', ')})`);
}

function str(f: Field, v: unknown): string {
  if (typeof v !== 'string' || v.length === 0) f.fail('must be a non-empty string');
  return v;
}

function bool(f: Field, v: unknown): boolean {
  if (typeof v !== 'boolean') f.fail('must be true or false');
  return v;
}

function int(f: Field, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) f.fail(`must be an integer from ${min} to ${max}`);
  return v;
}

function duration(f: Field, v: unknown, min: number, max: number): number {
  const s = parseDuration(v);
  if (s === null) f.fail('must be a duration: seconds or e.g. "90s", "5m", "8h", "7d"');
  if (s < min || s > max) f.fail(`must be from ${min}s to ${max}s (got ${s}s)`);
  return s;
}

function strings(f: Field, v: unknown): string[] {
  if (!Array.isArray(v)) f.fail('must be an array of strings');
  return v.map((x, i) => str(f.at(i), x));
}

function semver(f: Field, v: unknown): string {
  const s = str(f, v);
  if (!/^\d+(\.\d+){0,2}$/.test(s)) f.fail('must be a version like 1.4.2');
  return s;
}

function buildAllowList(f: Field, cidrs: string[]): BlockList | null {
  if (cidrs.length === 0) return null;
  const list = new BlockList();
  cidrs.forEach((c, i) => {
    const [addr = '', bitsText] = c.split('/');
    const family = isIP(addr);
    const bits = bitsText === undefined ? (family === 6 ? 128 : 32) : Number(bitsText);
    if (!addr || family === 0 || !Number.isInteger(bits) || bits < 0 || bits > (family === 6 ? 128 : 32)) {
      f.at(i).fail(`"${c}" is not a CIDR like 10.1.0.0/16`);
    }
    list.addSubnet(addr, bits, family === 6 ? 'ipv6' : 'ipv4');
  });
  return list;
}

function zone(f: Field, name: string, v: unknown, allowShort: boolean): ZonePolicy {
  if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(name)) f.fail('zone names are lower-case letters, digits and dashes');
  const o = asObject(f, v ?? {});
  onlyKeys(f, o, ['lifetime', 'pcrs', 'posture', 'claims', 'eventLog', 'cidrs', 'retireAfter', 'maxOffline', 'requireEkCertificate']);
  const floor = allowShort ? SHORT_LIFETIME_FLOOR : MIN_LIFETIME;
  const lifetime = o.lifetime === undefined ? 3600 : duration(f.at('lifetime'), o.lifetime, floor, MAX_LIFETIME);
  let pcrs = [0, 1, 2, 3, 4, 5, 6, 7];
  if (o.pcrs !== undefined) {
    const list: unknown = o.pcrs;
    const pf: Field = f.at('pcrs');
    if (!Array.isArray(list) || list.length === 0) pf.fail('must be a non-empty array of PCR indices');
    pcrs = list.map((p, i) => int(f.at('pcrs').at(i), p, 0, 23));
    if (new Set(pcrs).size !== pcrs.length) f.at('pcrs').fail('lists a PCR twice');
    pcrs.sort((a, b) => a - b);
  }
  let posture: PosturePolicy = { mode: 'baseline' };
  if (o.posture !== undefined && o.posture !== 'baseline') {
    const p = asObject(f.at('posture'), o.posture);
    onlyKeys(f.at('posture'), p, ['golden']);
    const g = asObject(f.at('posture').at('golden'), p.golden);
    const values: Record<number, string> = {};
    for (const [k, hex] of Object.entries(g) as [string, unknown][]) {
      const gf: Field = f.at('posture').at('golden').at(k);
      const idx = Number(k);
      if (!pcrs.includes(idx)) gf.fail("is not in the zone's pcrs selection");
      if (typeof hex !== 'string' || !/^[0-9a-fA-F]{64}$/.test(hex)) gf.fail('must be a 64-digit hex sha256 value');
      values[idx] = hex.toLowerCase();
    }
    for (const p of pcrs) if (!(p in values)) f.at('posture').at('golden').fail(`has no value for PCR ${p}`);
    posture = { mode: 'golden', values };
  }
  const claims: ZonePolicy['claims'] = {};
  if (o.claims !== undefined) {
    const c = asObject(f.at('claims'), o.claims);
    onlyKeys(f.at('claims'), c, ['minAgentVersion']);
    if (c.minAgentVersion !== undefined) claims.minAgentVersion = semver(f.at('claims').at('minAgentVersion'), c.minAgentVersion);
  }
  const cidrs = o.cidrs === undefined ? [] : strings(f.at('cidrs'), o.cidrs);
  const allow = buildAllowList(f.at('cidrs'), cidrs);
  const retireAfter =
    o.retireAfter === undefined || o.retireAfter === null ? null : duration(f.at('retireAfter'), o.retireAfter, 60, 100 * 365 * 86400);
  const maxOffline = o.maxOffline === undefined ? 7 * 86400 : duration(f.at('maxOffline'), o.maxOffline, 0, 365 * 86400);
  const requireEkCertificate = o.requireEkCertificate === undefined ? null : bool(f.at('requireEkCertificate'), o.requireEkCertificate);
  const eventLog = eventLogPolicy(f.at('eventLog'), o.eventLog, pcrs);
  return { name, lifetime, pcrs, posture, claims, eventLog, cidrs, retireAfter, maxOffline, allow, requireEkCertificate };
}

function digestList(f: Field, v: unknown): string[] {
  if (!Array.isArray(v)) f.fail('must be an array of 64-digit hex sha256 digests');
  return v.map((x, i) => {
    if (typeof x !== 'string' || !/^[0-9a-fA-F]{64}$/.test(x)) f.at(i).fail('must be a 64-digit hex sha256 digest');
    return x.toLowerCase();
  });
}

/**
 * The PCRs each event-log rule reads (PFP §3.3.4: PCR 0 platform firmware, 2 option ROM code,
 * 4 boot applications, 7 Secure Boot policy): the quote must cover them, else the log's events
 * there are unvouched and the rule would judge what the device merely says.
 */
const RULE_PCRS: Record<'secureBoot' | 'firmwareBlobs' | 'bootApplications' | 'bootSigners' | 'dbxNoRollback', number[]> = {
  secureBoot: [7],
  firmwareBlobs: [0, 2],
  bootApplications: [4],
  bootSigners: [4, 7],
  dbxNoRollback: [7],
};

function eventLogPolicy(f: Field, v: unknown, pcrs: number[]): EventLogPolicy {
  const p: EventLogPolicy = {
    required: false,
    secureBoot: false,
    firmwareBlobs: null,
    bootApplications: null,
    bootSigners: null,
    // on by default where the zone quotes PCR 7
    dbxNoRollback: pcrs.includes(7),
  };
  if (v === undefined) return p;
  const o = asObject(f, v);
  onlyKeys(f, o, ['required', 'secureBoot', 'firmwareBlobs', 'bootApplications', 'bootSigners', 'dbxNoRollback']);
  if (o.required !== undefined) p.required = bool(f.at('required'), o.required);
  if (o.secureBoot !== undefined) p.secureBoot = bool(f.at('secureBoot'), o.secureBoot);
  if (o.dbxNoRollback !== undefined) p.dbxNoRollback = bool(f.at('dbxNoRollback'), o.dbxNoRollback);
  if (o.firmwareBlobs !== undefined) p.firmwareBlobs = digestList(f.at('firmwareBlobs'), o.firmwareBlobs);
  if (o.bootApplications !== undefined) p.bootApplications = digestList(f.at('bootApplications'), o.bootApplications);
  if (o.bootSigners !== undefined) p.bootSigners = digestList(f.at('bootSigners'), o.bootSigners);
  for (const [rule, needs] of Object.entries(RULE_PCRS) as [keyof typeof RULE_PCRS, number[]][]) {
    const on = rule === 'secureBoot' || rule === 'dbxNoRollback' ? p[rule] : p[rule] !== null;
    const missing = needs.filter((n) => !pcrs.includes(n));
    if (on && missing.length > 0)
      f.at(rule).fail(`reads PCR ${needs.join(' and ')}, but the zone's pcrs do not include ${missing.join(', ')}: add them to "pcrs"`);
  }
  // a rule in the log's terms needs the log
  if (p.secureBoot || p.firmwareBlobs || p.bootApplications || p.bootSigners) p.required = o.required === undefined ? true : p.required;
  return p;
}

const LOOPBACK_HOSTS = ['localhost', '127.0.0.1', '[::1]'];

function httpUrl(f: Field, v: unknown, allowInsecure: boolean): URL {
  let u: URL;
  try {
    u = new URL(str(f, v));
  } catch {
    f.fail('must be an absolute https:// URL');
  }
  if (u.search || u.hash) f.fail('must have no query or fragment');
  if (u.protocol === 'https:') return u;
  if (u.protocol === 'http:' && allowInsecure && LOOPBACK_HOSTS.includes(u.hostname)) return u;
  if (u.protocol === 'http:' && LOOPBACK_HOSTS.includes(u.hostname))
    f.fail('is http://: allowed only with "allowInsecureIssuer": true (tests)');
  return f.fail('must be an https:// URL');
}

/** The `oidc` section (see OidcConfig); zone names must be configured zones. */
function oidc(f: Field, v: unknown, cwd: string, zoneNames: string[]): OidcConfig {
  const o = asObject(f, v);
  const keys = ['issuer', 'clientId', 'clientSecret', 'clientSecretFile', 'redirectUri', 'scopes', 'usernameClaim', 'roleClaim'];
  onlyKeys(f, o, [...keys, 'roleMap', 'zonesClaim', 'zoneMap', 'allowInsecureIssuer']);
  const allowInsecureIssuer = o.allowInsecureIssuer === undefined ? false : bool(f.at('allowInsecureIssuer'), o.allowInsecureIssuer);
  const issuer = httpUrl(f.at('issuer'), o.issuer, allowInsecureIssuer);
  const redirectUri = httpUrl(f.at('redirectUri'), o.redirectUri, allowInsecureIssuer);
  if (redirectUri.pathname !== '/console/oidc/callback')
    f.at('redirectUri').fail("must be the console's https://HOST[:PORT]/console/oidc/callback");
  if ((o.clientSecret === undefined) === (o.clientSecretFile === undefined))
    f.fail('needs exactly one of clientSecretFile (a 0600 file, preferred) and clientSecret');
  const clientSecret =
    o.clientSecretFile !== undefined
      ? { file: resolve(cwd, str(f.at('clientSecretFile'), o.clientSecretFile)) }
      : { value: str(f.at('clientSecret'), o.clientSecret) };
  const scopes = o.scopes === undefined ? 'openid profile email' : str(f.at('scopes'), o.scopes).trim();
  if (!scopes.split(/\s+/).includes('openid')) f.at('scopes').fail('must include openid');
  const claimName = (k: string, def: string | null) => (o[k] === undefined ? def : str(f.at(k), o[k]));
  // Object.fromEntries defines own properties: a claim value "__proto__" stays a key, not a prototype
  const roleMap: Record<string, UserRole> = Object.fromEntries(
    Object.entries(asObject(f.at('roleMap'), o.roleMap)).map(([value, role]) => {
      if (typeof role !== 'string' || !(USER_ROLES as readonly string[]).includes(role))
        f.at('roleMap')
          .at(value)
          .fail(`must be a role: ${USER_ROLES.join(', ')}`);
      return [value, role as UserRole];
    }),
  );
  if (Object.keys(roleMap).length === 0) f.at('roleMap').fail('must map at least one claim value to a role');
  const zoneMap: Record<string, string[] | '*'> = Object.fromEntries(
    Object.entries(o.zoneMap === undefined ? {} : asObject(f.at('zoneMap'), o.zoneMap)).map(([value, zones]) => {
      const zf = f.at('zoneMap').at(value);
      if (zones === '*') return [value, '*' as const];
      const list = strings(zf, zones);
      if (list.length === 0) zf.fail('must name at least one zone, or be "*" (every zone)');
      list.forEach((z, i) => {
        if (!zoneNames.includes(z)) zf.at(i).fail(`zone "${z}" is not configured (zones: ${zoneNames.join(', ')})`);
      });
      return [value, list];
    }),
  );
  return {
    issuer,
    clientId: str(f.at('clientId'), o.clientId),
    clientSecret,
    redirectUri,
    scopes,
    usernameClaim: claimName('usernameClaim', 'preferred_username')!,
    roleClaim: str(f.at('roleClaim'), o.roleClaim),
    roleMap,
    zonesClaim: claimName('zonesClaim', null),
    zoneMap,
    allowInsecureIssuer,
  };
}

function listen(f: Field, v: unknown): { host: string; port: number } {
  const s = str(f, v);
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(s);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!m || !host || !Number.isInteger(port) || port > 65535) f.fail(`"${s}" is not HOST:PORT`);
  return { host, port };
}

function rate(f: Field, v: unknown, def: RateLimit): RateLimit {
  if (v === undefined) return def;
  const o = asObject(f, v);
  onlyKeys(f, o, ['max', 'window']);
  return {
    max: o.max === undefined ? def.max : int(f.at('max'), o.max, 1, 1_000_000),
    window: o.window === undefined ? def.window : duration(f.at('window'), o.window, 1, 86400),
  };
}

function alertWindow(f: Field, v: unknown, def: AlertWindow): AlertWindow {
  if (v === undefined) return def;
  const o = asObject(f, v);
  onlyKeys(f, o, ['count', 'window']);
  return {
    count: o.count === undefined ? def.count : int(f.at('count'), o.count, 1, 1_000_000),
    window: o.window === undefined ? def.window : duration(f.at('window'), o.window, 1, 7 * 86400),
  };
}

const ZONE_ALERT_KEYS = ['failures', 'addressFailures', 'badTokens', 'newNetwork', 'staleAfter'];

function alertThresholds(f: Field, o: Record<string, unknown>, def: AlertThresholds): AlertThresholds {
  return {
    failures: alertWindow(f.at('failures'), o.failures, def.failures),
    addressFailures: alertWindow(f.at('addressFailures'), o.addressFailures, def.addressFailures),
    badTokens: alertWindow(f.at('badTokens'), o.badTokens, def.badTokens),
    newNetwork: o.newNetwork === undefined ? def.newNetwork : bool(f.at('newNetwork'), o.newNetwork),
    staleAfter: o.staleAfter === undefined ? def.staleAfter : duration(f.at('staleAfter'), o.staleAfter, 10, 365 * 86400),
  };
}

const isLoopbackHost = (h: string) => h === 'localhost' || h === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);

/** The `alerts` section; its defaults are documented in enroll-server/README.md ("Alerts"). */
function alertsConfig(f: Field, v: unknown, zones: Record<string, ZonePolicy>, staleAfter: number, cwd: string): AlertsConfig {
  const o = v === undefined ? {} : asObject(f, v);
  onlyKeys(f, o, ['defaults', 'zones', 'checkInterval', 'maxOpenPerRule', 'webhook', 'syslog']);
  const df = f.at('defaults');
  const d = o.defaults === undefined ? {} : asObject(df, o.defaults);
  onlyKeys(df, d, [...ZONE_ALERT_KEYS, 'issuance', 'caExpiryDays']);
  const defaults = alertThresholds(df, d, {
    failures: { count: 5, window: 600 },
    addressFailures: { count: 20, window: 600 },
    badTokens: { count: 5, window: 600 },
    newNetwork: true,
    staleAfter,
  });
  const isf = df.at('issuance');
  const is = d.issuance === undefined ? {} : asObject(isf, d.issuance);
  onlyKeys(isf, is, ['factor', 'floor']);
  const issuance = {
    factor: is.factor === undefined ? 10 : int(isf.at('factor'), is.factor, 2, 1000),
    floor: is.floor === undefined ? 50 : int(isf.at('floor'), is.floor, 1, 1_000_000),
  };
  const caExpiryDays = d.caExpiryDays === undefined ? 30 : int(df.at('caExpiryDays'), d.caExpiryDays, 1, 36500);
  const zf = f.at('zones');
  const zr = o.zones === undefined ? {} : asObject(zf, o.zones);
  const perZone: Record<string, AlertThresholds> = {};
  for (const [name, z] of Object.entries(zr)) {
    if (!zones[name]) zf.at(name).fail(`is not a configured zone (zones: ${Object.keys(zones).join(', ')})`);
    const zo = asObject(zf.at(name), z);
    onlyKeys(zf.at(name), zo, ZONE_ALERT_KEYS);
    perZone[name] = alertThresholds(zf.at(name), zo, defaults);
  }
  let webhook: AlertWebhookConfig | null = null;
  if (o.webhook !== undefined && o.webhook !== null) {
    const wf = f.at('webhook');
    const w = asObject(wf, o.webhook);
    onlyKeys(wf, w, ['url', 'secretFile', 'caFile', 'maxAttempts', 'backoff', 'maxBackoff', 'timeout']);
    const url = str(wf.at('url'), w.url);
    const parsed = URL.canParse(url) ? new URL(url) : wf.at('url').fail('is not a URL');
    if (parsed.username || parsed.password) wf.at('url').fail('must not carry credentials (the HMAC secret comes from secretFile)');
    if (parsed.protocol !== 'https:' && !(parsed.protocol === 'http:' && isLoopbackHost(parsed.hostname)))
      wf.at('url').fail('must be https://…, or http:// to a loopback address (127.0.0.0/8, [::1], localhost)');
    const backoff = w.backoff === undefined ? 5 : duration(wf.at('backoff'), w.backoff, 0.01, 3600);
    const maxBackoff = w.maxBackoff === undefined ? 3600 : duration(wf.at('maxBackoff'), w.maxBackoff, 0.01, 86400);
    if (maxBackoff < backoff) wf.at('maxBackoff').fail('must not be below backoff');
    webhook = {
      url,
      secretFile: resolve(cwd, str(wf.at('secretFile'), w.secretFile)),
      caFile: w.caFile === undefined || w.caFile === null ? null : resolve(cwd, str(wf.at('caFile'), w.caFile)),
      maxAttempts: w.maxAttempts === undefined ? 10 : int(wf.at('maxAttempts'), w.maxAttempts, 1, 100),
      backoff,
      maxBackoff,
      timeout: w.timeout === undefined ? 10 : duration(wf.at('timeout'), w.timeout, 0.1, 120),
    };
  }
  let syslog: AlertSyslogConfig | null = null;
  if (o.syslog !== undefined && o.syslog !== null) {
    const sf = f.at('syslog');
    const sl = asObject(sf, o.syslog);
    onlyKeys(sf, sl, ['host', 'port', 'protocol', 'facility', 'appName']);
    const protocol = sl.protocol === undefined ? 'udp' : sl.protocol;
    if (protocol !== 'udp' && protocol !== 'tcp') return sf.at('protocol').fail('must be "udp" or "tcp"');
    const appName = sl.appName === undefined ? 'edgeid' : str(sf.at('appName'), sl.appName);
    // RFC 5424 §6.2.5: APP-NAME is 1*48PRINTUSASCII
    if (!/^[!-~]{1,48}$/.test(appName)) sf.at('appName').fail('must be 1 to 48 printable ASCII characters without spaces');
    syslog = {
      host: str(sf.at('host'), sl.host),
      port: sl.port === undefined ? 514 : int(sf.at('port'), sl.port, 1, 65535),
      protocol,
      facility: sl.facility === undefined ? 16 : int(sf.at('facility'), sl.facility, 0, 23),
      appName,
    };
  }
  return {
    defaults,
    zones: perZone,
    issuance,
    caExpiryDays,
    checkInterval: o.checkInterval === undefined ? 60 : duration(f.at('checkInterval'), o.checkInterval, 1, 86400),
    maxOpenPerRule: o.maxOpenPerRule === undefined ? 200 : int(f.at('maxOpenPerRule'), o.maxOpenPerRule, 1, 100_000),
    webhook,
    syslog,
  };
}

export interface ConfigSources {
  argv?: string[];
  env?: NodeJS.ProcessEnv;
  /** Parsed config object (instead of --config FILE); used by tests. */
  file?: unknown;
  cwd?: string;
}

/** Parses `--data`, `--listen`, `--config` (also `--flag=value`); unknown flags are an error. */
export function parseServerArgs(argv: string[]): { data?: string; listen?: string; config?: string; help?: boolean } {
  const out: { data?: string; listen?: string; config?: string; help?: boolean } = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') {
      out.help = true;
      continue;
    }
    const m = /^--(data|listen|config)(?:=(.*))?$/.exec(a);
    if (!m) throw new EdgeidError('config_invalid', `unknown argument ${a} (known: --data DIR, --listen HOST:PORT, --config FILE)`);
    const value = m[2] ?? argv[++i];
    if (value === undefined || value === '') throw new EdgeidError('config_invalid', `--${m[1]} needs a value`);
    out[m[1] as 'data' | 'listen' | 'config'] = value;
  }
  return out;
}

/**
 * The effective configuration: embedded defaults, then the config file, then env, then flags.
 * Throws EdgeidError('config_invalid') naming the field; nothing starts with a bad config.
 */
export function loadConfig(src: ConfigSources = {}): ServerConfig {
  const env = src.env ?? process.env;
  const cwd = src.cwd ?? process.cwd();
  const args = parseServerArgs(src.argv ?? []);
  let raw: unknown = src.file ?? {};
  if (args.config) {
    let text: string;
    try {
      text = readFileSync(resolve(cwd, args.config), 'utf8');
    } catch (e) {
      throw new EdgeidError('config_invalid', `config: cannot read ${args.config}: ${(e as Error).message}`);
    }
    try {
      raw = JSON.parse(text);
    } catch (e) {
      throw new EdgeidError('config_invalid', `config: ${args.config} is not valid JSON: ${(e as Error).message}`);
    }
  }
  const root = new Field('');
  const o = asObject(new Field('(config)'), raw);
  onlyKeys(new Field('(config)'), o, [
    'dataDir',
    'listen',
    'hostnames',
    'publicUrl',
    'logLevel',
    'allowShortLifetimes',
    'tokenTtl',
    'enrollSessionTtl',
    'challengeTtl',
    'crlValidity',
    'staleAfter',
    'baselineWindow',
    'housekeepingInterval',
    'leaderInterval',
    'keyCacheSize',
    'rateLimit',
    'mqtt',
    'broker',
    'ek',
    'zones',
    'metrics',
    'audit',
    'retention',
    'ca',
    'oidc',
    'store',
    'alerts',
    'console',
  ]);

  const dataDir = resolve(cwd, args.data ?? env.EDGEID_DATA ?? (o.dataDir === undefined ? './data' : str(root.at('dataDir'), o.dataDir)));
  const listenText = args.listen ?? env.EDGEID_LISTEN ?? (o.listen === undefined ? '0.0.0.0:8443' : o.listen);
  const listenAt = listen(
    args.listen ? new Field('--listen') : env.EDGEID_LISTEN ? new Field('EDGEID_LISTEN') : root.at('listen'),
    listenText,
  );
  const hostnames = o.hostnames === undefined ? [] : strings(root.at('hostnames'), o.hostnames);
  let publicUrl: string | null = null;
  if (o.publicUrl !== undefined) {
    publicUrl = str(root.at('publicUrl'), o.publicUrl).replace(/\/+$/, '');
    if (!/^https:\/\/[^/]+$/.test(publicUrl)) root.at('publicUrl').fail('must be https://HOST[:PORT]');
  }
  const logLevel = o.logLevel === undefined ? (env.EDGEID_LOG_LEVEL ?? 'info') : str(root.at('logLevel'), o.logLevel);
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(logLevel)) root.at('logLevel').fail('must be a pino level');
  const allowShortLifetimes = o.allowShortLifetimes === undefined ? false : bool(root.at('allowShortLifetimes'), o.allowShortLifetimes);

  const rl = o.rateLimit === undefined ? {} : asObject(root.at('rateLimit'), o.rateLimit);
  onlyKeys(root.at('rateLimit'), rl, ['perAddress', 'enroll', 'renew', 'admin', 'connectionsPerAddress']);

  const metricsRaw = o.metrics === undefined ? {} : asObject(root.at('metrics'), o.metrics);
  onlyKeys(root.at('metrics'), metricsRaw, ['allow']);
  const metricsAllow =
    metricsRaw.allow === undefined ? ['127.0.0.1/8', '::1/128'] : strings(root.at('metrics').at('allow'), metricsRaw.allow);
  const auditRaw = o.audit === undefined ? {} : asObject(root.at('audit'), o.audit);
  onlyKeys(root.at('audit'), auditRaw, ['aggregateRefusals']);
  const retRaw = o.retention === undefined ? {} : asObject(root.at('retention'), o.retention);
  onlyKeys(root.at('retention'), retRaw, ['auditDays', 'certificateDays']);
  const days = (k: 'auditDays' | 'certificateDays', def: number) =>
    retRaw[k] === undefined ? def : retRaw[k] === null ? null : int(root.at('retention').at(k), retRaw[k], 1, 100 * 365);

  const mqttRaw = o.mqtt === undefined ? {} : asObject(root.at('mqtt'), o.mqtt);
  onlyKeys(root.at('mqtt'), mqttRaw, ['url']);
  const mqttUrl = mqttRaw.url === undefined || mqttRaw.url === null ? null : str(root.at('mqtt').at('url'), mqttRaw.url);

  let broker: BrokerConfig | null = null;
  if (o.broker !== undefined && o.broker !== null) {
    const bf = root.at('broker');
    const b = asObject(bf, o.broker);
    onlyKeys(bf, b, ['url', 'servername', 'crlFile', 'reloadCommand', 'reconcileOnStart', 'crlReload']);
    const rf = bf.at('crlReload');
    const rr = b.crlReload === undefined ? {} : asObject(rf, b.crlReload);
    onlyKeys(rf, rr, ['every', 'refreshBefore']);
    const url = str(bf.at('url'), b.url);
    if (!/^mqtts:\/\/[^/]+(:\d+)?\/?$/.test(url)) bf.at('url').fail("must be mqtts://HOST:PORT (the broker's TLS listener)");
    const reload = b.reloadCommand === undefined || b.reloadCommand === null ? null : strings(bf.at('reloadCommand'), b.reloadCommand);
    if (reload && reload.length === 0) bf.at('reloadCommand').fail('must name a program (argv array)');
    broker = {
      url,
      servername: b.servername === undefined ? null : str(bf.at('servername'), b.servername),
      crlFile: b.crlFile === undefined || b.crlFile === null ? null : resolve(cwd, str(bf.at('crlFile'), b.crlFile)),
      reloadCommand: reload,
      reconcileOnStart: b.reconcileOnStart === undefined ? true : bool(bf.at('reconcileOnStart'), b.reconcileOnStart),
      crlReload: {
        // at most one broker reload a day for revocations (a restart drops every session)
        every: rr.every === undefined ? 86400 : duration(rf.at('every'), rr.every, 0, 7 * 86400),
        // the broker's copy is valid 30 days (LONG_LIVED_CRL_SECONDS) and regenerated at least every
        // 3.5 days: a week's margin leaves a failing reload command days of retries before
        // OpenSSL refuses every client with an expired CRL; at least a day, at most 20 days
        refreshBefore: rr.refreshBefore === undefined ? 7 * 86400 : duration(rf.at('refreshBefore'), rr.refreshBefore, 86400, 20 * 86400),
      },
    };
  }

  const ekRaw = o.ek === undefined ? {} : asObject(root.at('ek'), o.ek);
  onlyKeys(root.at('ek'), ekRaw, ['roots', 'intermediates', 'builtinRoots', 'requireEkCertificate']);
  const ek = {
    roots: (ekRaw.roots === undefined ? [] : strings(root.at('ek').at('roots'), ekRaw.roots)).map((p) => resolve(cwd, p)),
    intermediates: (ekRaw.intermediates === undefined ? [] : strings(root.at('ek').at('intermediates'), ekRaw.intermediates)).map((p) =>
      resolve(cwd, p),
    ),
    builtinRoots: ekRaw.builtinRoots === undefined ? true : bool(root.at('ek').at('builtinRoots'), ekRaw.builtinRoots),
    requireEkCertificate:
      ekRaw.requireEkCertificate === undefined ? null : bool(root.at('ek').at('requireEkCertificate'), ekRaw.requireEkCertificate),
  };

  const zonesRaw = o.zones === undefined ? { default: {} } : asObject(root.at('zones'), o.zones);
  const zones: Record<string, ZonePolicy> = {};
  for (const [name, z] of Object.entries(zonesRaw)) zones[name] = zone(root.at('zones').at(name), name, z, allowShortLifetimes);
  if (Object.keys(zones).length === 0) root.at('zones').fail('must define at least one zone');

  const caRaw = o.ca === undefined ? {} : asObject(root.at('ca'), o.ca);
  onlyKeys(root.at('ca'), caRaw, ['key', 'pkcs11']);
  let ca: ServerConfig['ca'] = { key: 'file' };
  if (caRaw.key === 'pkcs11') {
    const pf = root.at('ca').at('pkcs11');
    const p = asObject(pf, caRaw.pkcs11);
    onlyKeys(pf, p, ['module', 'token', 'keyLabel', 'pinFile', 'pinEnv']);
    if ((p.pinFile === undefined) === (p.pinEnv === undefined))
      pf.fail('needs exactly one of pinFile (a 0600 file) and pinEnv (a variable name)');
    ca = {
      key: 'pkcs11',
      pkcs11: {
        module: resolve(cwd, str(pf.at('module'), p.module)),
        token: str(pf.at('token'), p.token),
        keyLabel: str(pf.at('keyLabel'), p.keyLabel),
        pin: p.pinFile !== undefined ? { file: resolve(cwd, str(pf.at('pinFile'), p.pinFile)) } : { env: str(pf.at('pinEnv'), p.pinEnv) },
      },
    };
  } else if (caRaw.key !== undefined && caRaw.key !== 'file') root.at('ca').at('key').fail('must be "file" or "pkcs11"');
  else if (caRaw.pkcs11 !== undefined) root.at('ca').at('pkcs11').fail('is read only with "key": "pkcs11"');

  const oidcConfig = o.oidc === undefined || o.oidc === null ? null : oidc(root.at('oidc'), o.oidc, cwd, Object.keys(zones));
  const store = storeConfig(env.EDGEID_STORE ? new Field('EDGEID_STORE') : root.at('store'), env.EDGEID_STORE ?? o.store, cwd);
  let consoleCfg: ConsoleConfig | null = null;
  if (o.console !== null && o.console !== false) {
    const cf = root.at('console');
    const c = o.console === undefined ? {} : asObject(cf, o.console);
    onlyKeys(cf, c, ['listen', 'idleTimeout', 'absoluteTimeout', 'loginLimit', 'staleCheckInterval']);
    const derived = c.listen === undefined;
    const idleTimeout = c.idleTimeout === undefined ? 15 * 60 : duration(cf.at('idleTimeout'), c.idleTimeout, 10, 86400);
    const absoluteTimeout =
      c.absoluteTimeout === undefined ? 8 * 3600 : duration(cf.at('absoluteTimeout'), c.absoluteTimeout, 10, 30 * 86400);
    if (idleTimeout > absoluteTimeout) cf.at('idleTimeout').fail('must not be longer than absoluteTimeout');
    consoleCfg = {
      listen: derived
        ? { host: listenAt.host, port: listenAt.port === 0 ? 0 : listenAt.port === 65535 ? 0 : listenAt.port + 1 }
        : listen(cf.at('listen'), c.listen),
      derived,
      idleTimeout,
      absoluteTimeout,
      loginLimit: rate(cf.at('loginLimit'), c.loginLimit, { max: 10, window: 60 }),
      staleCheckInterval: c.staleCheckInterval === undefined ? 30 : duration(cf.at('staleCheckInterval'), c.staleCheckInterval, 1, 3600),
    };
  }

  const minLifetime = Math.min(...Object.values(zones).map((z) => z.lifetime));
  const staleAfter = o.staleAfter === undefined ? 86400 : duration(root.at('staleAfter'), o.staleAfter, 10, 365 * 86400);
  return {
    dataDir,
    store,
    listen: listenAt,
    hostnames,
    publicUrl,
    logLevel,
    allowShortLifetimes,
    tokenDefaultTtl: o.tokenTtl === undefined ? 8 * 3600 : duration(root.at('tokenTtl'), o.tokenTtl, 60, 30 * 86400),
    enrollSessionTtl: o.enrollSessionTtl === undefined ? 600 : duration(root.at('enrollSessionTtl'), o.enrollSessionTtl, 10, 86400),
    challengeTtl: o.challengeTtl === undefined ? 300 : duration(root.at('challengeTtl'), o.challengeTtl, 5, 86400),
    crlValidity:
      o.crlValidity === undefined
        ? Math.max(60, Math.min(3600, minLifetime))
        : duration(root.at('crlValidity'), o.crlValidity, 10, 7 * 86400),
    staleAfter,
    baselineWindow: o.baselineWindow === undefined ? 86400 : duration(root.at('baselineWindow'), o.baselineWindow, 10, 30 * 86400),
    housekeepingInterval:
      o.housekeepingInterval === undefined ? 60 : duration(root.at('housekeepingInterval'), o.housekeepingInterval, 1, 86400),
    leaderInterval: o.leaderInterval === undefined ? 10 : duration(root.at('leaderInterval'), o.leaderInterval, 1, 3600),
    keyCacheSize: o.keyCacheSize === undefined ? 16_384 : int(root.at('keyCacheSize'), o.keyCacheSize, 16, 1_000_000),
    rateLimit: {
      perAddress: rate(root.at('rateLimit').at('perAddress'), rl.perAddress, { max: 1200, window: 60 }),
      enroll: rate(root.at('rateLimit').at('enroll'), rl.enroll, { max: 30, window: 60 }),
      renew: rate(root.at('rateLimit').at('renew'), rl.renew, { max: 10, window: 60 }),
      admin: rate(root.at('rateLimit').at('admin'), rl.admin, { max: 600, window: 60 }),
      connectionsPerAddress:
        rl.connectionsPerAddress === undefined
          ? 256
          : int(root.at('rateLimit').at('connectionsPerAddress'), rl.connectionsPerAddress, 1, 100_000),
    },
    metrics: { allow: metricsAllow, allowList: buildAllowList(root.at('metrics').at('allow'), metricsAllow) },
    audit: {
      aggregateRefusals:
        auditRaw.aggregateRefusals === undefined ? true : bool(root.at('audit').at('aggregateRefusals'), auditRaw.aggregateRefusals),
    },
    retention: { auditDays: days('auditDays', 400), certificateDays: days('certificateDays', 400) },
    mqtt: { url: mqttUrl },
    broker,
    ek,
    zones,
    ca,
    oidc: oidcConfig,
    alerts: alertsConfig(root.at('alerts'), o.alerts, zones, staleAfter, cwd),
    console: consoleCfg,
  };
}

/**
 * `store`: absent or "sqlite" (the data dir's edgeid.db), a postgres:// URL, or
 * { url, poolSize, passwordFile | passwordEnv }. A password inside the URL is refused: config
 * files are read by people and tools, and URLs end up in messages.
 */
function storeConfig(f: Field, v: unknown, cwd: string): StoreConfig {
  if (v === undefined || v === null || v === 'sqlite') return { kind: 'sqlite' };
  const o: Record<string, unknown> = typeof v === 'string' ? { url: v } : asObject(f, v);
  if (typeof v !== 'string') onlyKeys(f, o, ['url', 'poolSize', 'passwordFile', 'passwordEnv']);
  const uf = typeof v === 'string' ? f : f.at('url');
  const url = str(uf, o.url);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return uf.fail('must be "sqlite" or a URL postgres://USER@HOST:PORT/DATABASE');
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:')
    uf.fail('must be "sqlite" or a URL postgres://USER@HOST:PORT/DATABASE');
  if (parsed.password)
    uf.fail('must not contain a password: put it in a 0600 file (store.passwordFile) or the environment (store.passwordEnv, PGPASSWORD)');
  if (!parsed.hostname || parsed.pathname.length < 2) uf.fail('must name a host and a database (postgres://USER@HOST:PORT/DATABASE)');
  if (o.passwordFile !== undefined && o.passwordEnv !== undefined) f.fail('takes one of passwordFile and passwordEnv, not both');
  return {
    kind: 'postgres',
    url,
    poolSize: o.poolSize === undefined ? 10 : int(f.at('poolSize'), o.poolSize, 1, 1000),
    password:
      o.passwordFile !== undefined
        ? { file: resolve(cwd, str(f.at('passwordFile'), o.passwordFile)) }
        : o.passwordEnv !== undefined
          ? { env: str(f.at('passwordEnv'), o.passwordEnv) }
          : null,
  };
}

/** The URL devices are told to use (enrollment URI, CRL distribution point). */
export function serverUrl(cfg: ServerConfig, boundPort?: number): string {
  if (cfg.publicUrl) return cfg.publicUrl;
  const port = boundPort ?? cfg.listen.port;
  let host = cfg.hostnames[0] ?? (cfg.listen.host === '0.0.0.0' || cfg.listen.host === '::' ? 'localhost' : cfg.listen.host);
  if (isIP(host) === 6) host = `[${host}]`;
  return `https://${host}:${port}`;
}
