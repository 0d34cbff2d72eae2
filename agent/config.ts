/**
 * Agent configuration: defaults, an optional JSON file (`--config FILE` or env EDGEID_AGENT_CONFIG),
 * then command-line flags / env for the common knobs. Validation names the bad field.
 */
import { readFileSync } from 'node:fs';
import { canonicalJson } from '../protocol/api.js';
import { EdgeidError } from '../protocol/errors/index.js';
import type { BackoffPolicy } from './schedule.js';

export interface AgentConfig {
  /** State directory (key blobs, certificate, state.json, outbox). */
  stateDir: string;
  /** TCTI configuration for the TPM (env EDGEID_TCTI); undefined = the TPM layer's default. */
  tcti?: string;
  mqtt: {
    /** Broker URL (mqtts://host:port); overrides the URL the server announces. */
    url?: string;
    /** Seconds between heartbeats to devices/<id>/state; 0 = no heartbeat. */
    heartbeatSeconds: number;
    keepaliveSeconds: number;
    /** Delay of mqtt.js' own reconnects. */
    reconnectPeriodMs: number;
    /** Minimum TLS version of the broker connection. */
    minTlsVersion: 'TLSv1.2' | 'TLSv1.3';
  };
  renewal: {
    backoff: BackoffPolicy;
  };
  control: {
    /** Commands older than this are stale. */
    maxAgeSeconds: number;
    /** Commands dated further in the future than this are stale. */
    maxFutureSkewSeconds: number;
  };
  outbox: { maxMessages: number; maxBytes: number };
  /** Total time of one request to the enrollment server (connect to last byte of the answer). */
  httpTimeoutMs: number;
  /**
   * The TCG event log sent with each quote (env EDGEID_EVENT_LOG); null = send none (the claims
   * say so). Default: the kernel's securityfs file of the firmware's log.
   */
  eventLog: string | null;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
}

export const DEFAULT_STATE_DIR = '/var/lib/edgeid';
/** Where Linux exposes the firmware's TCG event log (securityfs, drivers/char/tpm/eventlog). */
export const DEFAULT_EVENT_LOG = '/sys/kernel/security/tpm0/binary_bios_measurements';

export function defaultConfig(): AgentConfig {
  return {
    stateDir: DEFAULT_STATE_DIR,
    mqtt: { heartbeatSeconds: 30, keepaliveSeconds: 30, reconnectPeriodMs: 1000, minTlsVersion: 'TLSv1.2' },
    renewal: { backoff: { baseMs: 2_000, capMs: 5 * 60_000, factor: 2 } },
    control: { maxAgeSeconds: 300, maxFutureSkewSeconds: 60 },
    outbox: { maxMessages: 10_000, maxBytes: 16 * 1024 * 1024 },
    httpTimeoutMs: 15_000,
    logLevel: 'info',
    eventLog: DEFAULT_EVENT_LOG,
  };
}

type Json = Record<string, unknown>;

function bad(field: string, why: string): EdgeidError {
  return new EdgeidError('agent_config_invalid', `agent config: ${field} ${why}`, { field });
}

function num(obj: Json, key: string, field: string, min: number, max: number): number | undefined {
  const v = obj[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw bad(field, `must be a number from ${min} to ${max}`);
  return v;
}

function str(obj: Json, key: string, field: string): string | undefined {
  const v = obj[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.length === 0) throw bad(field, 'must be a non-empty string');
  return v;
}

function section(obj: Json, key: string): Json {
  const v = obj[key];
  if (v === undefined) return {};
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(key, 'must be an object');
  return v as Json;
}

const KNOWN: Record<string, string[]> = {
  '': ['stateDir', 'tcti', 'mqtt', 'renewal', 'control', 'outbox', 'httpTimeoutMs', 'logLevel', 'eventLog'],
  mqtt: ['url', 'heartbeatSeconds', 'keepaliveSeconds', 'reconnectPeriodMs', 'minTlsVersion'],
  renewal: ['backoffBaseMs', 'backoffCapMs'],
  control: ['maxAgeSeconds', 'maxFutureSkewSeconds'],
  outbox: ['maxMessages', 'maxBytes'],
};

function checkKnown(obj: Json, where: string): void {
  for (const k of Object.keys(obj)) {
    if (!KNOWN[where]!.includes(k)) throw bad(where ? `${where}.${k}` : k, 'is not a known option');
  }
}

/** Applies a parsed config file (object) over `base`; throws agent_config_invalid naming the field. */
export function applyConfigObject(base: AgentConfig, raw: unknown): AgentConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('(root)', 'must be a JSON object');
  const obj = raw as Json;
  checkKnown(obj, '');
  const c: AgentConfig = structuredClone(base);
  c.stateDir = str(obj, 'stateDir', 'stateDir') ?? c.stateDir;
  const tcti = str(obj, 'tcti', 'tcti');
  if (tcti) c.tcti = tcti;
  c.httpTimeoutMs = num(obj, 'httpTimeoutMs', 'httpTimeoutMs', 100, 600_000) ?? c.httpTimeoutMs;
  if (obj.eventLog === null) c.eventLog = null;
  else c.eventLog = str(obj, 'eventLog', 'eventLog') ?? c.eventLog;
  if (obj.logLevel !== undefined) {
    const levels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
    if (typeof obj.logLevel !== 'string' || !levels.includes(obj.logLevel)) throw bad('logLevel', `must be one of ${levels.join(', ')}`);
    c.logLevel = obj.logLevel as AgentConfig['logLevel'];
  }

  const m = section(obj, 'mqtt');
  checkKnown(m, 'mqtt');
  const url = str(m, 'url', 'mqtt.url');
  if (url !== undefined) {
    if (!/^(mqtts|ssl|wss):\/\//.test(url)) throw bad('mqtt.url', 'must be a TLS URL (mqtts://host:port)');
    c.mqtt.url = url;
  }
  c.mqtt.heartbeatSeconds = num(m, 'heartbeatSeconds', 'mqtt.heartbeatSeconds', 0, 86_400) ?? c.mqtt.heartbeatSeconds;
  c.mqtt.keepaliveSeconds = num(m, 'keepaliveSeconds', 'mqtt.keepaliveSeconds', 5, 3_600) ?? c.mqtt.keepaliveSeconds;
  c.mqtt.reconnectPeriodMs = num(m, 'reconnectPeriodMs', 'mqtt.reconnectPeriodMs', 100, 600_000) ?? c.mqtt.reconnectPeriodMs;
  if (m.minTlsVersion !== undefined) {
    if (m.minTlsVersion !== 'TLSv1.2' && m.minTlsVersion !== 'TLSv1.3') throw bad('mqtt.minTlsVersion', 'must be TLSv1.2 or TLSv1.3');
    c.mqtt.minTlsVersion = m.minTlsVersion;
  }

  const r = section(obj, 'renewal');
  checkKnown(r, 'renewal');
  c.renewal.backoff.baseMs = num(r, 'backoffBaseMs', 'renewal.backoffBaseMs', 10, 3_600_000) ?? c.renewal.backoff.baseMs;
  c.renewal.backoff.capMs = num(r, 'backoffCapMs', 'renewal.backoffCapMs', 10, 86_400_000) ?? c.renewal.backoff.capMs;
  if (c.renewal.backoff.capMs < c.renewal.backoff.baseMs) throw bad('renewal.backoffCapMs', 'must not be below renewal.backoffBaseMs');

  const ctl = section(obj, 'control');
  checkKnown(ctl, 'control');
  c.control.maxAgeSeconds = num(ctl, 'maxAgeSeconds', 'control.maxAgeSeconds', 1, 86_400) ?? c.control.maxAgeSeconds;
  c.control.maxFutureSkewSeconds =
    num(ctl, 'maxFutureSkewSeconds', 'control.maxFutureSkewSeconds', 0, 3_600) ?? c.control.maxFutureSkewSeconds;

  const o = section(obj, 'outbox');
  checkKnown(o, 'outbox');
  c.outbox.maxMessages = num(o, 'maxMessages', 'outbox.maxMessages', 1, 10_000_000) ?? c.outbox.maxMessages;
  c.outbox.maxBytes = num(o, 'maxBytes', 'outbox.maxBytes', 1024, 4 * 1024 ** 3) ?? c.outbox.maxBytes;
  return c;
}

export function loadConfigFile(file: string, base: AgentConfig = defaultConfig()): AgentConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new EdgeidError('agent_config_invalid', `cannot read agent config ${file}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new EdgeidError('agent_config_invalid', `agent config ${file} is not valid JSON: ${(e as Error).message}`);
  }
  return applyConfigObject(base, raw);
}

/**
 * The part of the effective config that defines the agent's behaviour, hashed into the posture
 * claims. Device-local plumbing (state dir path, TCTI, log level) is left out so that moving the
 * state dir or a simulator's port does not look like a posture change.
 */
export function effectiveConfigForPosture(c: AgentConfig): unknown {
  return { mqtt: c.mqtt, renewal: c.renewal, control: c.control, outbox: c.outbox, httpTimeoutMs: c.httpTimeoutMs };
}

export function configCanonicalJson(c: AgentConfig): string {
  return canonicalJson(effectiveConfigForPosture(c));
}
