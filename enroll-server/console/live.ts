/**
 * What the console's live views hear: device changes derived from the audit feed (every committed
 * audit row, in order), each with the device as it is now, and devices going stale (a periodic
 * check, since going stale writes no row). The event stream filters them by the user's zones.
 */
import type { DeviceView } from '../../protocol/api.js';
import type { AuditRow } from '../../protocol/api.js';
import type { CertificateRecord } from '../store/store.js';
import type { ServerContext } from '../services/context.js';
import { deviceView } from '../services/devices.js';

export type LiveKind = 'enrolled' | 'renewed' | 'quarantined' | 'revoked' | 'retired' | 'approved' | 'stale';

export interface LiveEvent {
  kind: LiveKind;
  /** The audit row's seq (null for a stale transition, which has none). */
  seq: number | null;
  time: string;
  device: DeviceView;
}

type Listener = (e: LiveEvent) => void;

/** The kind of change an audit row means for its device, or null for rows the views ignore. */
function kindOf(row: AuditRow, status: string): LiveKind | null {
  switch (row.event) {
    case 'enroll.finish':
      return row.outcome === 'ok' ? 'enrolled' : null;
    case 'renew':
      // a refused renewal that quarantined the device; other refusals change nothing shown
      return row.outcome === 'ok' ? 'renewed' : status === 'quarantined' ? 'quarantined' : null;
    case 'device.revoke':
      return row.outcome === 'ok' ? 'revoked' : null;
    case 'device.retire':
      return row.outcome === 'ok' ? 'retired' : null;
    case 'device.approve_baseline':
      return row.outcome === 'ok' ? 'approved' : null;
    default:
      return null;
  }
}

const EVENTS = new Set(['enroll.finish', 'renew', 'device.revoke', 'device.retire', 'device.approve_baseline']);

export class LiveEvents {
  private readonly listeners = new Set<Listener>();
  private unsubscribe: (() => void) | null = null;
  private starting: Promise<void> | null = null;
  private staleTimer: NodeJS.Timeout | null = null;
  /** Ids of the devices stale at the last check (null before the first check). */
  private stale: Set<string> | null = null;
  private closed = false;
  private firstCheck: Promise<void> | null = null;

  constructor(
    private readonly ctx: ServerContext,
    private readonly staleCheckMs: number,
  ) {}

  /** Starts delivering to `fn`; returns the function that stops. */
  async subscribe(subscriber: Listener): Promise<() => void> {
    // only what is committed after this call: the shared feed may still deliver older rows
    const head = await this.ctx.store.getMeta('audit_head');
    const after = head ? (JSON.parse(head) as { seq: number }).seq : 0;
    const fn: Listener = (e) => {
      if (e.seq === null || e.seq > after) subscriber(e);
    };
    this.listeners.add(fn);
    if (!this.unsubscribe && !this.starting) {
      this.starting = this.ctx.auditFeed
        .subscribe((row) => this.onRow(row))
        .then((u) => {
          this.unsubscribe = u;
          this.starting = null;
          if (this.closed) u();
        });
      this.staleTimer = setInterval(() => void this.checkStale().catch(() => undefined), this.staleCheckMs);
      this.staleTimer.unref();
      this.firstCheck = this.checkStale().catch(() => undefined);
    }
    await this.starting;
    // the stale set is known before the subscriber hears anything (a later transition is news)
    await this.firstCheck;
    return () => {
      this.listeners.delete(fn);
      if (this.listeners.size === 0) this.stop();
    };
  }

  close(): void {
    this.closed = true;
    this.listeners.clear();
    this.stop();
  }

  private stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
    if (this.staleTimer) clearInterval(this.staleTimer);
    this.staleTimer = null;
    this.stale = null;
  }

  private emit(e: LiveEvent): void {
    for (const fn of [...this.listeners]) {
      try {
        fn(e);
      } catch (err) {
        this.ctx.log.warn({ err }, 'a console event listener failed');
      }
    }
  }

  private async view(id: string) {
    const d = await this.ctx.store.getDevice(id);
    if (!d) return null;
    const certs = await this.ctx.store.listCertificates(id);
    const last = certs.reduce<CertificateRecord | null>((a, c) => (!a || c.notAfter > a.notAfter ? c : a), null);
    return deviceView(this.ctx, d, undefined, last);
  }

  private async onRow(row: AuditRow): Promise<void> {
    if (!row.deviceId || !EVENTS.has(row.event) || this.listeners.size === 0) return;
    const device = await this.view(row.deviceId);
    if (!device) return;
    const kind = kindOf(row, device.status);
    if (!kind) return;
    this.stale?.delete(device.id);
    this.emit({ kind, seq: row.seq, time: row.time, device });
  }

  /** Devices that went stale since the last check (the first check only learns the set). */
  private async checkStale(): Promise<void> {
    if (this.listeners.size === 0) return;
    const before = this.ctx.now() - this.ctx.config.staleAfter * 1000;
    const now = new Set<string>();
    const fresh: DeviceView[] = [];
    let after: { time: number; id: string } | undefined;
    for (;;) {
      const rows = await this.ctx.store.pageDevicesWithLastCertificate(
        { status: ['active', 'quarantined'], stale: { is: true, before } },
        { limit: 1000, ...(after ? { after } : {}) },
      );
      for (const r of rows) {
        now.add(r.device.id);
        if (this.stale && !this.stale.has(r.device.id)) fresh.push(deviceView(this.ctx, r.device, undefined, r.lastCertificate));
      }
      const last = rows.at(-1)?.device;
      if (rows.length < 1000 || !last) break;
      after = { time: last.enrolledAt, id: last.id };
    }
    this.stale = now;
    const time = new Date(this.ctx.now()).toISOString();
    for (const device of fresh) this.emit({ kind: 'stale', seq: null, time, device });
  }
}
