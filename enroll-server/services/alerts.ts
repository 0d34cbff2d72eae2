/**
 * Alerts: rules evaluated on the audit stream (services/audit-feed.ts), plus two time-based checks
 * (stale devices, CA expiry). Every rule reads committed audit rows only, so it sees what any code
 * path or server instance did, and nothing that rolled back.
 *
 * Rules (thresholds per zone, config `alerts`; defaults in enroll-server/README.md "Alerts"):
 * - attestation_failures_device: failed renewals / renewal challenges of one device, N in M.
 * - attestation_failures_address: failed attestations (enrollment, renewal, challenge) from one
 *   source network (an IPv4 address, an IPv6 /64), N in M.
 * - renewal_new_network: a device renewed from a network (IPv4 /24, IPv6 /64) it never used.
 * - enrollment_bad_tokens: enrollment attempts with unknown, used or expired tokens from one network, N in M.
 * - device_quarantined, device_revoked: each one.
 * - device_stale: a live device's last contact is older than its zone's staleAfter.
 * - issuance_rate: certificates issued in the last 5 minutes above factor × the trailing hour's
 *   5-minute average, and at least floor.
 * - ca_expiry: the root or an issuing CA certificate expires within caExpiryDays.
 *
 * Exactly once: the seq of the last row evaluated, the rules' windows and marks, the alerts they
 * opened or bumped and the webhook deliveries of new alerts are written in one store transaction
 * (Store.commitAlerts). After a crash the rows after the committed cursor are evaluated again from
 * the committed state: nothing is missed and nothing is counted twice.
 */
import { randomBytes } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import type { Gauge } from 'prom-client';
import { ALERT_RULES, type Alert, type AlertDelivery, type AlertRule, type AuditRow } from '../../protocol/api.js';
import { ERRORS, EdgeidError, type ErrorCode } from '../../protocol/errors/index.js';
import type { AlertThresholds, AlertWindow } from '../config.js';
import { registerAlertGauge } from '../metrics.js';
import type { AlertDeliveryRecord, AlertOccurrence, AlertRecord, AlertSeverity } from '../store/store.js';
import { zonesOf, type Caller } from './access.js';
import { addressGroup } from './address.js';
import { startAlertDelivery, type AlertDelivery as DeliveryWorker } from './alert-delivery.js';
import { audited } from './audit.js';
import type { ServerContext } from './context.js';
import { parseCursor } from './devices.js';

export const RULE_SEVERITY: Record<AlertRule, AlertSeverity> = {
  attestation_failures_device: 'warning',
  attestation_failures_address: 'warning',
  renewal_new_network: 'warning',
  enrollment_bad_tokens: 'warning',
  device_quarantined: 'warning',
  device_revoked: 'warning',
  device_stale: 'info',
  issuance_rate: 'warning',
  ca_expiry: 'critical',
};

/** Token refusals of enroll/start that the bad-token rule counts. */
const BAD_TOKEN = new Set(['token_invalid', 'token_used', 'token_expired']);
/** Events whose failures are failed attestations (of an enrollment or a renewal). */
const ATTESTATION_EVENTS = new Set(['enroll.start', 'enroll.finish', 'renew.challenge', 'renew']);
/** Refusals the failure rules leave to other rules (quarantine) or that are not the caller's doing. */
const NOT_COUNTED = new Set(['device_quarantined']);
/** Networks remembered per device (the most recent ones). */
const NETWORKS_KEPT = 32;
/** Rows evaluated before their results are committed at the latest. */
const FLUSH_ROWS = 200;
/** Entries kept per sliding window. */
const WINDOW_ENTRIES = 10_000;
/** Sliding windows kept at most (one per device or source network with recent failures). */
const MAX_WINDOWS = 100_000;
const FLUSH_DELAY_MS = 50;
const MINUTE = 60_000;
/** The rules keyed by a source (a device id or a network) that anyone can make up: capped by alerts.maxOpenPerRule. */
const PER_SOURCE: ReadonlySet<string> = new Set(['attestation_failures_device', 'attestation_failures_address', 'enrollment_bad_tokens']);
/** The key of the alert that counts a per-source rule's sources beyond the cap, in one zone. */
const manyKey = (zone: string | null) => `many|${zone ?? '*'}`;

/** Text from our own validated values only: ids, codes, addresses; anything else becomes '?'. */
function safe(s: unknown): string {
  return typeof s === 'string' && /^[A-Za-z0-9:._/@-]{1,80}$/.test(s) ? s : '?';
}

const DEVICE_ID = /^dev-[0-9a-f]{16}$/;
const deviceIdOf = (v: unknown): string | null => (typeof v === 'string' && DEVICE_ID.test(v) ? v : null);

/** The network an address renews from, for the new-network rule: IPv4 /24, IPv6 /64. */
export function networkOf(ip: string | null | undefined): string | null {
  if (!ip) return null;
  const g = addressGroup(ip);
  if (isIPv4(g)) return `${g.split('.').slice(0, 3).join('.')}.0/24`;
  return isIPv6(ip) ? g : null;
}

/** The source group of a row's address (IPv4 address, IPv6 /64), only for a real address. */
function sourceOf(ip: string | null): string | null {
  if (!ip || (!isIPv4(ip) && !isIPv6(ip))) return null;
  return addressGroup(ip);
}

const fmtWindow = (s: number) => (s % 3600 === 0 ? `${s / 3600}h` : s % 60 === 0 ? `${s / 60}m` : `${s}s`);

export class AlertEngine {
  private cursor = 0;
  private readonly windows = new Map<string, [number, number][]>();
  private readonly nets = new Map<string, string[]>();
  private readonly staleMarks = new Map<string, number>();
  private readonly caMarks = new Map<string, number>();
  private readonly issuance = new Map<number, number>();
  private occurrences: AlertOccurrence[] = [];
  private dirty = new Set<string>();
  private pendingRows = 0;
  private flushTimer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> = Promise.resolve();
  private checkTimer: NodeJS.Timeout | null = null;
  private unsubscribe: (() => void) | null = null;
  private readonly zoneCache = new Map<string, string | null>();
  /** edgeid_alerts_open{rule,severity} in the server's registry. */
  readonly gauge: Gauge<'rule' | 'severity'>;
  readonly delivery: DeliveryWorker;

  private constructor(private readonly ctx: ServerContext) {
    this.gauge = openAlertsGauge(ctx);
    this.delivery = startAlertDelivery(ctx);
  }

  /** Loads the rules' state and subscribes to the audit feed after the committed cursor. */
  static async start(ctx: ServerContext, o: { periodic?: boolean } = {}): Promise<AlertEngine> {
    const e = new AlertEngine(ctx);
    await e.load();
    e.unsubscribe = await ctx.auditFeed.subscribe((row) => e.onRow(row), e.cursor);
    if (o.periodic ?? true) {
      const tick = () => {
        e.checkTimer = setTimeout(() => {
          e.checkNow()
            .catch((err) => ctx.log.error({ err }, 'alert checks failed'))
            .finally(tick);
        }, ctx.config.alerts.checkInterval * 1000);
        e.checkTimer.unref();
      };
      tick();
    }
    return e;
  }

  private async load(): Promise<void> {
    const state = await this.ctx.store.getAlertState();
    for (const [k, v] of Object.entries(state)) {
      try {
        if (k === 'cursor') this.cursor = Number(v);
        else if (k.startsWith('w:')) this.windows.set(k, JSON.parse(v) as [number, number][]);
        else if (k.startsWith('net:')) this.nets.set(k.slice(4), JSON.parse(v) as string[]);
        else if (k.startsWith('stale:')) this.staleMarks.set(k.slice(6), Number(v));
        else if (k.startsWith('ca:')) this.caMarks.set(k.slice(3), Number(v));
        else if (k === 'iss') for (const [m, n] of JSON.parse(v) as [number, number][]) this.issuance.set(m, n);
      } catch {
        this.ctx.log.warn({ key: k.slice(0, 80) }, 'alert state row unreadable; dropped');
        this.dirty.add(k);
      }
    }
    if (!('cursor' in state)) {
      // a new data dir (or one from before alerts): start at the newest row, history is not replayed
      const head = await this.ctx.store.getMeta('audit_head');
      this.cursor = head ? (JSON.parse(head) as { seq: number }).seq : 0;
      this.dirty.add('cursor');
      await this.flush();
    }
  }

  /** The seq of the last audit row evaluated (its results are committed with the next flush, within 50 ms). */
  get position(): number {
    return this.cursor;
  }

  async onRow(row: AuditRow): Promise<void> {
    if (row.seq <= this.cursor) return;
    try {
      await this.evaluate(row);
    } catch (e) {
      this.ctx.log.error({ err: e, seq: row.seq }, 'alert rules failed on a row');
    }
    this.cursor = row.seq;
    this.dirty.add('cursor');
    if (++this.pendingRows >= FLUSH_ROWS) await this.flush();
    else if (!this.flushTimer) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = null;
        // a failed commit is logged and kept for the next one
        this.flush().catch(() => undefined);
      }, FLUSH_DELAY_MS);
      this.flushTimer.unref();
    }
  }

  /** Every row committed so far evaluated and its results committed (tests, shutdown). */
  async settle(): Promise<void> {
    await this.ctx.auditFeed.drain();
    await this.flush();
  }

  /** Commits the pending results; serialised. */
  flush(): Promise<void> {
    const run = this.flushing.then(() => this.commit());
    this.flushing = run.catch(() => undefined);
    return run;
  }

  private async commit(): Promise<void> {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = null;
    if (this.occurrences.length === 0 && this.dirty.size === 0) return;
    const occurrences = this.occurrences;
    const keys = this.dirty;
    this.occurrences = [];
    this.dirty = new Set();
    this.pendingRows = 0;
    const state: Record<string, string | null> = {};
    for (const k of keys) state[k] = this.serialize(k);
    const webhook = this.ctx.config.alerts.webhook;
    let opened: AlertRecord[];
    try {
      opened = await this.ctx.store.commitAlerts({
        occurrences: await this.capped(occurrences),
        state,
        ...(webhook ? { delivery: (a) => this.deliveryFor(a) } : {}),
      });
    } catch (e) {
      // kept for the next commit (the store rolled the whole batch back)
      this.occurrences = [...occurrences, ...this.occurrences];
      for (const k of keys) this.dirty.add(k);
      this.ctx.log.error({ err: e }, 'committing alerts failed; retrying with the next batch');
      throw e;
    }
    for (const a of opened) {
      this.ctx.log.info({ alert: a.id, rule: a.rule, severity: a.severity, deviceId: a.deviceId, zone: a.zone }, 'alert opened');
      this.delivery.syslog(a);
    }
    if (opened.length > 0 && webhook) this.delivery.poke();
  }

  /**
   * A per-source rule holds at most alerts.maxOpenPerRule open alerts: once there, the events of
   * sources without one count on a single alert per rule and zone ("many sources"), which opens
   * once and is bumped after. Decided from the open counts before the batch plus the sources the
   * batch itself opens; the aggregate keeps the zone, so zone-limited users still see it.
   */
  private async capped(occurrences: AlertOccurrence[]): Promise<AlertOccurrence[]> {
    if (!occurrences.some((o) => o.fire && PER_SOURCE.has(o.rule))) return occurrences;
    const cap = this.ctx.config.alerts.maxOpenPerRule;
    const open = new Map<string, number>();
    for (const r of await this.ctx.store.countOpenAlerts()) open.set(r.rule, (open.get(r.rule) ?? 0) + r.count);
    const openKeys = new Map<string, Set<string>>();
    const out: AlertOccurrence[] = [];
    for (const o of occurrences) {
      if (!PER_SOURCE.has(o.rule)) {
        out.push(o);
        continue;
      }
      let keys = openKeys.get(o.rule);
      if (!keys) openKeys.set(o.rule, (keys = new Set()));
      if (keys.has(o.key)) {
        out.push(o);
        continue;
      }
      if ((open.get(o.rule) ?? 0) + keys.size < cap) {
        // (a source whose alert is open already is counted twice here: the cap errs low)
        if (o.fire) keys.add(o.key);
        out.push(o);
        continue;
      }
      // at the cap: a source whose alert is open keeps counting on it (the store bumps it)
      if (await this.isOpen(o.rule, o.key)) {
        out.push(o);
        continue;
      }
      out.push({
        ...o,
        key: manyKey(o.zone),
        deviceId: null,
        address: null,
        summary: `more than ${cap} sources at once; the latest: ${o.summary}`.slice(0, 500),
        openCount: o.bumpBy,
      });
    }
    return out;
  }

  private async isOpen(rule: string, key: string): Promise<boolean> {
    const [a] = await this.ctx.store.listAlerts({ state: 'open', rule, key }, { limit: 1 });
    return a !== undefined;
  }

  private deliveryFor(a: AlertRecord): AlertDeliveryRecord {
    return {
      id: `dlv-${randomBytes(8).toString('hex')}`,
      alertId: a.id,
      body: JSON.stringify({ type: 'alert.opened', alert: alertView(a) }),
      state: 'pending',
      attempts: 0,
      nextAt: this.ctx.now(),
      lastStatus: null,
      lastError: null,
      createdAt: this.ctx.now(),
      deliveredAt: null,
    };
  }

  private serialize(k: string): string | null {
    if (k === 'cursor') return String(this.cursor);
    if (k.startsWith('w:')) {
      const w = this.windows.get(k);
      return w && w.length > 0 ? JSON.stringify(w) : null;
    }
    if (k.startsWith('net:')) {
      const n = this.nets.get(k.slice(4));
      return n ? JSON.stringify(n) : null;
    }
    if (k.startsWith('stale:')) {
      const m = this.staleMarks.get(k.slice(6));
      return m === undefined ? null : String(m);
    }
    if (k.startsWith('ca:')) {
      const m = this.caMarks.get(k.slice(3));
      return m === undefined ? null : String(m);
    }
    if (k === 'iss') return this.issuance.size > 0 ? JSON.stringify([...this.issuance]) : null;
    return null;
  }

  private thresholds(zone: string | null): AlertThresholds {
    const a = this.ctx.config.alerts;
    return (zone !== null ? a.zones[zone] : undefined) ?? a.defaults;
  }

  private async deviceZone(id: string): Promise<string | null> {
    if (this.zoneCache.has(id)) return this.zoneCache.get(id)!;
    const d = await this.ctx.store.getDevice(id);
    if (this.zoneCache.size >= 10_000) this.zoneCache.clear();
    this.zoneCache.set(id, d?.zone ?? null);
    return d?.zone ?? null;
  }

  private async tokenZone(id: unknown): Promise<string | null> {
    if (typeof id !== 'string' || !/^[0-9a-f]{16}$/.test(id)) return null;
    return (await this.ctx.store.getToken(id))?.zone ?? null;
  }

  private occur(o: Omit<AlertOccurrence, 'id' | 'severity'> & { rule: AlertRule; severity?: AlertSeverity }): void {
    this.occurrences.push({ id: `alr-${randomBytes(8).toString('hex')}`, severity: RULE_SEVERITY[o.rule], ...o });
  }

  /**
   * A sliding window of `w.window` seconds: adds `n` events at `t`; the rule fires while the
   * window holds `w.count` or more. An open alert counts every further event; once acknowledged,
   * the next event that finds the window still at or above the threshold opens a new one.
   */
  private windowed(
    rule: AlertRule,
    key: string,
    w: AlertWindow,
    t: number,
    n: number,
    o: { deviceId: string | null; zone: string | null; address: string | null; summary: (count: number) => string },
  ): void {
    const wk = `w:${rule}:${key}`;
    const list = (this.windows.get(wk) ?? []).filter(([at]) => at > t - w.window * 1000);
    list.push([t, n]);
    // bounded: a flood keeps its newest entries (their sum stays far above any threshold)
    if (list.length > WINDOW_ENTRIES) list.splice(0, list.length - WINDOW_ENTRIES);
    if (!this.windows.has(wk) && this.windows.size >= MAX_WINDOWS) {
      // a flood from ever new sources: the oldest tenth of the windows is dropped, never the rules' other state
      let drop = MAX_WINDOWS / 10;
      for (const k of this.windows.keys()) {
        if (drop-- <= 0) break;
        this.windows.delete(k);
        this.dirty.add(k);
      }
    }
    this.windows.set(wk, list);
    this.dirty.add(wk);
    const total = list.reduce((s, [, c]) => s + c, 0);
    this.occur({ rule, key, ...o, summary: o.summary(total), at: t, fire: total >= w.count, openCount: total, bumpBy: n });
  }

  private async evaluate(row: AuditRow): Promise<void> {
    const t = Date.parse(row.time);
    const d = (row.details ?? {}) as Record<string, unknown>;
    // an aggregated summary row stands for `repeated` refusals (services/audit.ts RefusalAggregator)
    const n = d.aggregated === true && typeof d.repeated === 'number' && Number.isInteger(d.repeated) && d.repeated > 0 ? d.repeated : 1;
    const deviceId = deviceIdOf(row.deviceId);
    const reason = row.reason ?? '';
    if (row.outcome === 'fail') {
      if (row.event === 'renew' && reason.startsWith('posture_') && Array.isArray(d.serials) && deviceId) {
        const zone = await this.deviceZone(deviceId);
        this.occur({
          rule: 'device_quarantined',
          key: deviceId,
          deviceId,
          zone,
          address: sourceOf(row.ip),
          summary: `device ${deviceId} was quarantined (${safe(reason)})`,
          at: t,
          fire: true,
          openCount: 1,
          bumpBy: 1,
        });
        return;
      }
      if (row.event === 'enroll.start' && BAD_TOKEN.has(reason)) {
        const source = sourceOf(row.ip);
        if (!source) return;
        const zone = await this.tokenZone(d.tokenId);
        const w = this.thresholds(zone).badTokens;
        this.windowed('enrollment_bad_tokens', `${zone ?? '*'}|${source}`, w, t, n, {
          deviceId: null,
          zone,
          address: source,
          summary: (c) =>
            `${c} enrollment attempts with unknown, used or expired tokens from ${source} within ${fmtWindow(w.window)} (last: ${safe(reason)})`,
        });
        return;
      }
      if (!ATTESTATION_EVENTS.has(row.event) || NOT_COUNTED.has(reason) || reason.startsWith('posture_')) return;
      const code = ERRORS[reason as ErrorCode];
      if (!code || code.status >= 500) return;
      let zone: string | null = null;
      if (deviceId && (row.event === 'renew' || row.event === 'renew.challenge')) {
        zone = await this.deviceZone(deviceId);
        const w = this.thresholds(zone).failures;
        this.windowed('attestation_failures_device', deviceId, w, t, n, {
          deviceId,
          zone,
          address: sourceOf(row.ip),
          summary: (c) =>
            `${c} failed renewals or attestations of device ${deviceId} within ${fmtWindow(w.window)} (last: ${safe(reason)})`,
        });
      } else if (d.tokenId !== undefined) zone = await this.tokenZone(d.tokenId);
      const source = sourceOf(row.ip);
      if (!source) return;
      const w = this.thresholds(zone).addressFailures;
      this.windowed('attestation_failures_address', `${zone ?? '*'}|${source}`, w, t, n, {
        deviceId: null,
        zone,
        address: source,
        summary: (c) =>
          `${c} failed attestations, enrollments or renewals from ${source} within ${fmtWindow(w.window)} (last: ${safe(reason)})`,
      });
      return;
    }
    // outcome ok
    if ((row.event === 'renew' || row.event === 'enroll.finish') && deviceId) {
      this.countIssuance(t);
      if (row.event === 'renew' && this.staleMarks.delete(deviceId)) this.dirty.add(`stale:${deviceId}`);
      const net = networkOf(row.ip);
      if (!net) return;
      const seen = this.nets.get(deviceId);
      if (seen?.includes(net)) return;
      const list = [...(seen ?? []), net].slice(-NETWORKS_KEPT);
      this.nets.set(deviceId, list);
      this.dirty.add(`net:${deviceId}`);
      // the first network of a device is where it enrolled (or first renewed after alerts began)
      if (row.event !== 'renew' || !seen || seen.length === 0) return;
      const zone = await this.deviceZone(deviceId);
      if (!this.thresholds(zone).newNetwork) return;
      this.occur({
        rule: 'renewal_new_network',
        key: deviceId,
        deviceId,
        zone,
        address: net,
        summary: `device ${deviceId} renewed from ${net}, a network it never used (known: ${seen.slice(-3).join(', ')})`,
        at: t,
        fire: true,
        openCount: 1,
        bumpBy: 1,
      });
      return;
    }
    if (row.event === 'device.revoke' && deviceId) {
      const zone = await this.deviceZone(deviceId);
      const why = safe(d.reason);
      this.occur({
        rule: 'device_revoked',
        key: deviceId,
        severity: why === 'key-compromise' ? 'critical' : 'warning',
        deviceId,
        zone,
        address: null,
        summary: `device ${deviceId} was revoked by ${safe(row.actor)} (reason ${why})`,
        at: t,
        fire: true,
        openCount: 1,
        bumpBy: 1,
      });
    }
  }

  private countIssuance(t: number): void {
    const m = Math.floor(t / MINUTE);
    this.issuance.set(m, (this.issuance.get(m) ?? 0) + 1);
    for (const k of this.issuance.keys()) if (k < m - 64) this.issuance.delete(k);
    this.dirty.add('iss');
    let last5 = 0;
    let before = 0;
    for (const [k, c] of this.issuance) {
      if (k > m - 5) last5 += c;
      else if (k > m - 65) before += c;
    }
    const { factor, floor } = this.ctx.config.alerts.issuance;
    // the trailing hour before the last 5 minutes, per 5 minutes
    const normal = before / 12;
    const fire = last5 >= floor && last5 > factor * normal;
    if (!fire) return;
    this.occur({
      rule: 'issuance_rate',
      key: 'fleet',
      deviceId: null,
      zone: null,
      address: null,
      summary: `${last5} certificates issued in 5 minutes; the trailing hour averaged ${normal.toFixed(1)} per 5 minutes`,
      at: t,
      fire,
      openCount: last5,
      bumpBy: 1,
    });
  }

  /** The time-based rules: stale devices (per zone) and CA certificates near expiry. */
  async checkNow(): Promise<void> {
    const now = this.ctx.now();
    const stale = new Set<string>();
    for (const zone of Object.keys(this.ctx.config.zones)) {
      const thr = this.thresholds(zone);
      const devices = await this.ctx.store.listDevices({ zone, stale: { is: true, before: now - thr.staleAfter * 1000 } });
      for (const dev of devices) {
        stale.add(dev.id);
        const mark = dev.lastSeen ?? dev.enrolledAt;
        if (this.staleMarks.get(dev.id) === mark) continue;
        this.staleMarks.set(dev.id, mark);
        this.dirty.add(`stale:${dev.id}`);
        this.occur({
          rule: 'device_stale',
          key: dev.id,
          deviceId: dev.id,
          zone,
          address: null,
          summary: `device ${dev.id} was last seen ${new Date(mark).toISOString()}, longer ago than ${fmtWindow(thr.staleAfter)}`,
          at: now,
          fire: true,
          openCount: 1,
          bumpBy: 1,
        });
      }
    }
    for (const id of this.staleMarks.keys()) {
      if (stale.has(id)) continue;
      this.staleMarks.delete(id);
      this.dirty.add(`stale:${id}`);
    }
    // windows whose newest event is older than the longest window configured can never fire again
    const a = this.ctx.config.alerts;
    const longest =
      Math.max(
        ...[a.defaults, ...Object.values(a.zones)].flatMap((z) => [z.failures.window, z.addressFailures.window, z.badTokens.window]),
      ) * 1000;
    for (const [k, list] of this.windows) {
      if ((list.at(-1)?.[0] ?? 0) > now - longest) continue;
      this.windows.delete(k);
      this.dirty.add(k);
    }
    const days = this.ctx.config.alerts.caExpiryDays;
    for (const e of this.ctx.ca.expiries()) {
      if (e.ca !== 'root' && !e.ca.startsWith('issuing:')) continue;
      const notAfter = Date.parse(e.notAfter);
      const name = safe(e.ca);
      if (notAfter - now >= days * 86_400_000 || this.caMarks.get(name) === notAfter) continue;
      this.caMarks.set(name, notAfter);
      this.dirty.add(`ca:${name}`);
      this.occur({
        rule: 'ca_expiry',
        key: `${name}@${notAfter}`,
        deviceId: null,
        zone: null,
        address: null,
        summary: `the ${name} CA certificate expires ${e.notAfter} (in ${Math.max(0, Math.floor((notAfter - now) / 86_400_000))} days)`,
        at: now,
        fire: true,
        openCount: 1,
        bumpBy: 0,
      });
    }
    await this.flush();
  }

  async close(): Promise<void> {
    if (this.checkTimer) clearTimeout(this.checkTimer);
    this.checkTimer = null;
    this.unsubscribe?.();
    await this.flush().catch(() => undefined);
    await this.delivery.close();
  }
}

/**
 * `edgeid_alerts_open` in the server's registry, registered once (read from the store at each
 * scrape): every instance on a shared database exports it, also those that do not run the rules
 * (services/leader.ts), and an engine started again keeps the one registered first.
 */
export function openAlertsGauge(ctx: ServerContext): Gauge<'rule' | 'severity'> {
  const known = ctx.metrics.registry.getSingleMetric('edgeid_alerts_open') as Gauge<'rule' | 'severity'> | undefined;
  return (
    known ??
    registerAlertGauge(ctx.metrics.registry, async () => {
      const rows = await ctx.store.countOpenAlerts();
      const out = new Map<string, { rule: string; severity: string; count: number }>();
      for (const r of ALERT_RULES) out.set(`${r}|${RULE_SEVERITY[r]}`, { rule: r, severity: RULE_SEVERITY[r], count: 0 });
      for (const r of rows) out.set(`${r.rule}|${r.severity}`, r);
      return [...out.values()];
    })
  );
}

/** The wire form of an alert (protocol/api.ts Alert). */
export function alertView(a: AlertRecord): Alert {
  const iso = (v: number | null) => (v === null ? null : new Date(v).toISOString());
  return {
    id: a.id,
    rule: a.rule as AlertRule,
    severity: a.severity,
    deviceId: a.deviceId,
    zone: a.zone,
    address: a.address,
    summary: a.summary,
    firstSeen: new Date(a.firstSeen).toISOString(),
    lastSeen: new Date(a.lastSeen).toISOString(),
    count: a.count,
    state: a.state,
    acknowledgedBy: a.acknowledgedBy,
    acknowledgedAt: iso(a.acknowledgedAt),
  };
}

const PAGE_MAX = 1000;

/**
 * GET /v1/admin/alerts: newest first (keyset on firstSeen, id). A zone-scoped user sees the alerts
 * of its zones; alerts about no zone (an address, the fleet, the CA) only users with every zone.
 */
export async function listAlerts(
  ctx: ServerContext,
  q: { state?: 'open' | 'acknowledged'; deviceId?: string; rule?: string; limit?: number; after?: string },
  who: Caller,
): Promise<{ alerts: Alert[]; next?: string }> {
  return audited(ctx, { event: 'admin.alerts.list', actor: who.actor, ip: who.ip }, async (a) => {
    const limit = Math.min(PAGE_MAX, Math.max(1, q.limit ?? PAGE_MAX));
    const after = parseCursor(q.after);
    const zones = zonesOf(who);
    const rows = await ctx.store.listAlerts(
      {
        ...(q.state ? { state: q.state } : {}),
        ...(q.deviceId ? { deviceId: q.deviceId } : {}),
        ...(q.rule ? { rule: q.rule } : {}),
        ...(zones ? { zones } : {}),
      },
      { limit: limit + 1, ...(after ? { after } : {}) },
    );
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    a.details = { rows: page.length };
    return { alerts: page.map(alertView), ...(rows.length > limit && last ? { next: `${last.firstSeen}:${last.id}` } : {}) };
  });
}

/** POST /v1/admin/alerts/:id/ack: the alert acknowledged by the caller (operator, in the alert's zone). */
export async function acknowledgeAlert(ctx: ServerContext, id: string, who: Caller): Promise<Alert> {
  return audited(ctx, { event: 'alert.ack', actor: who.actor, ip: who.ip, details: { alert: id } }, async (a) => {
    const alert = await ctx.store.getAlert(id);
    if (!alert) throw new EdgeidError('alert_not_found');
    a.deviceId = alert.deviceId;
    a.details = { alert: id, rule: alert.rule };
    if (who.zones) {
      if (alert.zone === null)
        throw new EdgeidError('forbidden_zone', 'this alert is about no single zone: only users with every zone acknowledge it', {
          zone: null,
        });
      if (!who.zones.includes(alert.zone))
        throw new EdgeidError('forbidden_zone', `zone "${alert.zone}" is not one of this user's zones (${who.zones.join(', ')})`, {
          zone: alert.zone,
        });
    }
    if (alert.state !== 'open') throw new EdgeidError('alert_not_open');
    const done = await ctx.store.acknowledgeAlert(id, who.actor, a.time, a.okRow());
    if (!done) throw new EdgeidError('alert_not_open', 'the alert was acknowledged by a concurrent request');
    a.recorded();
    return alertView(done);
  });
}

/** The wire form of a webhook delivery. */
export function deliveryView(d: AlertDeliveryRecord): AlertDelivery {
  const iso = (v: number | null) => (v === null ? null : new Date(v).toISOString());
  return {
    id: d.id,
    alertId: d.alertId,
    state: d.state,
    attempts: d.attempts,
    nextAttemptAt: d.state === 'pending' ? iso(d.nextAt) : null,
    lastStatus: d.lastStatus,
    lastError: d.lastError,
    createdAt: new Date(d.createdAt).toISOString(),
    deliveredAt: iso(d.deliveredAt),
  };
}

/** GET /v1/admin/alerts/deliveries: the webhook queue, newest first (admins). */
export async function listAlertDeliveries(
  ctx: ServerContext,
  q: { alertId?: string; limit?: number },
  who: Caller,
): Promise<{ deliveries: AlertDelivery[] }> {
  return audited(ctx, { event: 'admin.alerts.deliveries', actor: who.actor, ip: who.ip }, async (a) => {
    const rows = await ctx.store.listAlertDeliveries({
      ...(q.alertId ? { alertId: q.alertId } : {}),
      limit: Math.min(PAGE_MAX, q.limit ?? 100),
    });
    a.details = { rows: rows.length };
    return { deliveries: rows.map(deliveryView) };
  });
}
