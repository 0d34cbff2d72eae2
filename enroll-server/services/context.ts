import type { BrokerCrlStatus, SignedControl } from '../../protocol/api.js';
import type { Logger } from 'pino';
import { EdgeidError } from '../../protocol/errors/index.js';
import type { CertificateAuthority } from '../ca/ca.js';
import type { ServerConfig, ZonePolicy } from '../config.js';
import type { CrlChange, EdgeidHooks, HookName, HookResult } from '../hooks.js';
import type { Metrics } from '../metrics.js';
import type { Store } from '../store/store.js';

/** Everything a service needs; built once by the composition root (composition.ts). */
export interface ServerContext {
  config: ServerConfig;
  store: Store;
  ca: CertificateAuthority;
  log: Logger;
  metrics: Metrics;
  hooks: EdgeidHooks[];
  /** Milliseconds since the epoch; replaceable in tests. */
  now: () => number;
  /** The EK trust store (DER): built-in TPM makers' CAs, configured and operators' ones (services/ek.ts). */
  ekTrust: { roots: Buffer[]; intermediates: Buffer[] } | null;
  /** Whether zones without their own requireEkCertificate require an EK certificate. */
  ekRequireDefault: boolean;
  crl: import('./crl.js').CrlService;
  /** The URL devices use (known once the server listens). */
  publicUrl: () => string;
  /** The broker integration, when config.broker is set. */
  broker: BrokerPort | null;
  /** Every committed audit row, in order, to subscribers (alert rules, the console's live views). */
  auditFeed: import('./audit-feed.js').AuditFeed;
  /** The alert rules on the audit feed (started by createServer). */
  alerts?: import('./alerts.js').AlertEngine;
}

/**
 * The broker as the rest of the server sees it: one device's rights, its session, the CRL the
 * broker checks, and signed commands to a device. broker/integration.ts implements it for
 * Mosquitto 2.0 (dynsec + crlfile); the composition root wires it; nothing else knows which
 * broker it is.
 */
export interface BrokerPort {
  /** Gives the device its rights (its telemetry topics, its control topic). Idempotent; never drops a live session. */
  provisionDevice(deviceId: string): Promise<void>;
  /** Takes every right from the device and ends its live session now; a reconnect gets nothing. Idempotent. */
  removeDevice(deviceId: string): Promise<void>;
  /**
   * Revocation: delivers the signed wipe while the device still has its session, then removes its
   * rights and ends its session whatever became of the wipe; throws if either step failed.
   */
  revokeDevice(deviceId: string, wipe: SignedControl): Promise<void>;
  /** A new CRL: handed to the broker, which loads it on its reload schedule (never later than it needs to stay valid). */
  publishCrl(e: CrlChange): Promise<void>;
  /** Makes the broker load the latest CRL now; resolves with the schedule after it. */
  reloadCrl(why?: string): Promise<BrokerCrlStatus>;
  /** The CRL reload schedule; null when the server does not manage the broker's CRL. */
  crlStatus(): BrokerCrlStatus | null;
  /** Publishes a signed command to the device's control topic; resolves once the broker has it. */
  sendControl(deviceId: string, signed: SignedControl): Promise<void>;
  /** Makes the broker's per-device clients match the inventory. */
  reconcile(): Promise<{ added: string[]; removed: string[] }>;
  /**
   * Quarantine: the device's broker rights shrink to its control topic (subscribe and receive,
   * so a signed `renew-now` still reaches it while its certificate is accepted); nothing else.
   */
  restrictDevice(deviceId: string): Promise<void>;
  /** Approval: the device's full role again, the quarantine role gone. */
  restoreDevice(deviceId: string): Promise<void>;
  /** A monitoring tool's broker client (username = its certificate CN) with the read-only monitor role; 'exists' if taken. */
  addMonitor(username: string): Promise<'created' | 'exists'>;
  /** Deletes a monitoring tool's broker client, ending its session; false when there was none. */
  removeMonitor(username: string): Promise<boolean>;
  close(): Promise<void>;
}

/** Who made the request and from where: goes into every audit row. */
export interface RequestMeta {
  ip: string | null;
  requestId?: string;
}

export function zoneOf(ctx: ServerContext, name: string): ZonePolicy {
  const z = ctx.config.zones[name];
  if (!z) throw new EdgeidError('zone_unknown', `zone "${name}" is not configured on this server`, { zone: name });
  return z;
}

export function checkSourceIp(zone: ZonePolicy, ip: string | null): void {
  if (!zone.allow) return;
  const addr = ip?.startsWith('::ffff:') ? ip.slice(7) : ip;
  const family = addr?.includes(':') ? 'ipv6' : 'ipv4';
  if (!addr || !zone.allow.check(addr, family)) {
    throw new EdgeidError('source_ip_not_allowed', `source ${ip ?? 'unknown'} is not in zone ${zone.name}'s networks`, {
      ip,
      zone: zone.name,
    });
  }
}

/** Runs one hook on every registered implementation; failures are logged and audited, never thrown. */
export async function runHooks<K extends HookName>(
  ctx: ServerContext,
  name: K,
  event: Parameters<NonNullable<import('../hooks.js').EdgeidHooks[K]>>[0],
  deviceId: string | null,
): Promise<HookResult[]> {
  const results: HookResult[] = [];
  for (const h of ctx.hooks) {
    const fn = h[name] as ((e: unknown) => void | Promise<void>) | undefined;
    if (!fn) continue;
    const t0 = performance.now();
    try {
      await fn.call(h, event);
      results.push({ hook: `${h.name}.${name}`, ok: true, ms: performance.now() - t0 });
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      results.push({ hook: `${h.name}.${name}`, ok: false, ms: performance.now() - t0, error: msg });
      ctx.log.error({ hook: h.name, event: name, err: msg }, 'hook failed');
      await ctx.store.appendAudit({
        time: ctx.now(),
        actor: 'server',
        event: `hook.${name}`,
        deviceId,
        outcome: 'fail',
        reason: 'hook_failed',
        details: { hook: h.name, message: msg.slice(0, 300) },
      });
    }
  }
  return results;
}
