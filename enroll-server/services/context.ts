import type { SignedControl } from '../../protocol/api.js';
import type { Logger } from 'pino';
import { EdgeidError } from '../../protocol/errors/index.js';
import type { CertificateAuthority } from '../ca/ca.js';
import type { ServerConfig, ZonePolicy } from '../config.js';
import type { EdgeidHooks, HookName, HookResult } from '../hooks.js';
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
}

/** The broker as services use it (broker/integration.ts implements it; the composition root wires it). */
export interface BrokerPort {
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
