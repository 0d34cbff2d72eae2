import { randomUUID } from 'node:crypto';
import {
  LIST_PAGE_MAX,
  type CertificateView,
  type ControlCommandType,
  type DeviceStatus,
  type DeviceView,
  type RevokeReason,
  type SignedControl,
} from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import { objectName, parsePublic } from '../../protocol/tpm/public.js';
import type { HookResult } from '../hooks.js';
import { deviceSortKey, type CertificateRecord, type DeviceFilter, type DeviceRecord, type DeviceSort } from '../store/store.js';
import { storageFailure } from '../files.js';
import { checkZone } from './access.js';
import { audited } from './audit.js';
import { eventLogDiff, sha256Hex, storedLog } from './eventlog.js';
import { runHooks, type ServerContext } from './context.js';

const iso = (v: number | null) => (v === null ? null : new Date(v).toISOString());

export function certificateView(c: CertificateRecord): CertificateView {
  return { serial: c.serial, notBefore: iso(c.notBefore)!, notAfter: iso(c.notAfter)!, revokedAt: iso(c.revokedAt), reason: c.reason };
}

export function deviceView(
  ctx: ServerContext,
  d: DeviceRecord,
  certificates?: CertificateRecord[],
  last?: CertificateRecord | null,
): DeviceView {
  const now = ctx.now();
  const live = d.status === 'active' || d.status === 'quarantined';
  const windowOpen = d.baselineWindowUntil !== null && d.baselineWindowUntil > now;
  return {
    id: d.id,
    zone: d.zone,
    owner: d.owner,
    name: d.name,
    purpose: d.purpose,
    status: d.status,
    statusReason: d.statusReason,
    posture: d.status === 'quarantined' ? 'quarantined' : windowOpen ? 'baseline-window' : 'ok',
    enrolledBy: d.enrolledBy,
    enrolledAt: iso(d.enrolledAt)!,
    retireBy: iso(d.retireBy),
    lastSeen: iso(d.lastSeen),
    lastIp: d.lastIp,
    stale: live && (d.lastSeen ?? d.enrolledAt) + ctx.config.staleAfter * 1000 < now,
    baselineWindowUntil: iso(d.baselineWindowUntil),
    ekHash: d.ekHash,
    ekVerified: d.ekVerified ?? null,
    ekIssuer: d.ekIssuer ?? null,
    claims: d.claims,
    baseline: d.baseline,
    certificateNotAfter: iso(
      (last ?? certificates?.reduce<CertificateRecord | null>((a, c) => (!a || c.notAfter > a.notAfter ? c : a), null))?.notAfter ?? null,
    ),
    ...(certificates ? { certificates: certificates.map(certificateView) } : {}),
    ...(certificates && (d.eventLog || d.baselineEventLog) ? { eventLog: eventLogView(d) } : {}),
    ...(certificates ? { lastQuote: lastQuoteView(ctx, d) } : {}),
  };
}

/** `device show`: the last verified quote's PCRs, and the zone's golden values they are judged against (golden mode). */
function lastQuoteView(ctx: ServerContext, d: DeviceRecord): NonNullable<DeviceView['lastQuote']> | null {
  if (!d.lastPcrs || d.lastQuoteAt === null || d.lastQuoteAt === undefined) return null;
  const posture = ctx.config.zones[d.zone]?.posture;
  const golden = posture?.mode === 'golden' ? Object.fromEntries(Object.entries(posture.values).map(([k, v]) => [String(k), v])) : null;
  return { at: iso(d.lastQuoteAt)!, pcrs: d.lastPcrs, golden };
}

/** `device show`: the approved and the current event log, and what differs between them. */
function eventLogView(d: DeviceRecord): NonNullable<DeviceView['eventLog']> {
  return {
    baselineSha256: d.baselineEventLog ? sha256Hex(d.baselineEventLog) : null,
    currentSha256: d.eventLog ? sha256Hex(d.eventLog) : null,
    ...eventLogDiff(storedLog(d.baselineEventLog), storedLog(d.eventLog)),
  };
}

export interface Actor {
  actor: string;
  ip: string | null;
  /** A zone-scoped person's zones (services/users.ts); absent or null = every zone. */
  zones?: readonly string[] | null;
}

/** The device, when it exists and is in the caller's zones (403 forbidden_zone otherwise). */
async function mustGet(ctx: ServerContext, id: string, who: Actor): Promise<DeviceRecord> {
  const d = await ctx.store.getDevice(id);
  if (!d) throw new EdgeidError('device_not_found', `no device ${id}`);
  checkZone(who, d.zone);
  return d;
}

/** What `devices list` may filter on (each narrows the listing). */
export interface DeviceQuery {
  status?: DeviceStatus;
  zone?: string;
  stale?: boolean;
  /** Text the id, name, owner or last address contains. */
  search?: string;
  /** As DeviceView.posture reports it. */
  posture?: DeviceView['posture'];
  /** Sort key and direction (default enrolled, asc). */
  sort?: DeviceSort;
  order?: 'asc' | 'desc';
  /** Page size (1 … 1000, default 1000) and the `next` of the previous page (deviceCursor). */
  limit?: number;
  after?: string;
}

const ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const NUM_RE = /^(0|[1-9][0-9]{0,15})$/;

/**
 * The cursor after a listing row: `<enrolledAt>:<id>` for the default sort (enrolled, asc; as
 * before sorting existed), else `<sort>~<order>~<key as base64url>~<id>`, so that a cursor is only
 * taken by the listing it came from.
 */
export function deviceCursor(sort: DeviceSort, order: 'asc' | 'desc', key: number | string, id: string): string {
  if (sort === 'enrolled' && order === 'asc') return `${key}:${id}`;
  return `${sort}~${order}~${Buffer.from(String(key), 'utf8').toString('base64url')}~${id}`;
}

/** Reads a device cursor for this sort and order; invalid_cursor when malformed or from another sort or order. */
export function parseDeviceCursor(c: string, sort: DeviceSort, order: 'asc' | 'desc'): { key: number | string; id: string } {
  const bad = (why: string) => new EdgeidError('invalid_cursor', `the cursor ${why}`, { sort, order });
  let keyText: string;
  let id: string;
  if (sort === 'enrolled' && order === 'asc' && !c.includes('~')) {
    const i = c.indexOf(':');
    if (i < 0) throw bad('is malformed');
    keyText = c.slice(0, i);
    id = c.slice(i + 1);
  } else {
    const parts = c.split('~');
    if (parts.length !== 4 || !/^[A-Za-z0-9_-]*$/.test(parts[2]!)) throw bad('is malformed');
    if (parts[0] !== sort || parts[1] !== order)
      throw bad(`belongs to sort=${String(parts[0]).slice(0, 16)} order=${String(parts[1]).slice(0, 8)}, not this listing's`);
    keyText = Buffer.from(parts[2]!, 'base64url').toString('utf8');
    if (Buffer.from(keyText, 'utf8').toString('base64url') !== parts[2]) throw bad('is malformed');
    id = parts[3]!;
  }
  if (!ID_RE.test(id)) throw bad('is malformed');
  if (sort === 'name') return { key: keyText, id };
  if (!NUM_RE.test(keyText)) throw bad('is malformed');
  return { key: Number(keyText), id };
}

/** A listing cursor `<time>:<id>` (validated by the API schema). */
export function parseCursor(c: string | undefined): { time: number; id: string } | undefined {
  if (!c) return undefined;
  const i = c.indexOf(':');
  return { time: Number(c.slice(0, i)), id: c.slice(i + 1) };
}

/** GET /v1/admin/devices: the inventory, filtered by the store's query. */
export async function listDevices(ctx: ServerContext, q: DeviceQuery, who: Actor): Promise<{ devices: DeviceView[]; next?: string }> {
  const details: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(q)) if (v !== undefined) details[k] = String(v);
  return audited(ctx, { event: 'admin.devices.list', actor: who.actor, ip: who.ip, details }, async (a) => {
    if (q.zone) checkZone(who, q.zone);
    const filter: DeviceFilter = {
      ...(q.status ? { status: [q.status] } : {}),
      ...(q.zone ? { zone: q.zone } : {}),
      // a zone-scoped user's listing holds only its zones (a zone outside them: forbidden_zone)
      ...(who.zones ? { zones: [...who.zones] } : {}),
      ...(q.stale !== undefined ? { stale: { is: q.stale, before: a.time - ctx.config.staleAfter * 1000 } } : {}),
      ...(q.search !== undefined ? { search: q.search } : {}),
    };
    // posture as deviceView derives it: quarantined is a status; the window is open or not (not quarantined)
    if (q.posture) {
      const statuses = q.posture === 'quarantined' ? ['quarantined' as const] : (['active', 'revoked', 'retired'] as const);
      filter.status = statuses.filter((st) => !q.status || st === q.status);
      if (q.posture !== 'quarantined') filter.baselineWindow = { open: q.posture === 'baseline-window', now: a.time };
    }
    // one page (keyset on enrolledAt, id): a listing never loads the whole table
    const limit = Math.min(LIST_PAGE_MAX, Math.max(1, q.limit ?? LIST_PAGE_MAX));
    const sort = q.sort ?? 'enrolled';
    const order = q.order ?? 'asc';
    const after = q.after === undefined ? undefined : parseDeviceCursor(q.after, sort, order);
    const rows = await ctx.store.pageDevicesWithLastCertificate(filter, { limit: limit + 1, sort, order, ...(after ? { after } : {}) });
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    a.details = { ...a.details, rows: page.length };
    return {
      devices: page.map((r) => deviceView(ctx, r.device, undefined, r.lastCertificate)),
      ...(rows.length > limit && last ? { next: deviceCursor(sort, order, deviceSortKey(last, sort), last.device.id) } : {}),
    };
  });
}

/** GET /v1/admin/devices/:id: one device with all its certificates. */
export async function showDevice(ctx: ServerContext, id: string, who: Actor): Promise<{ device: DeviceView }> {
  return audited(ctx, { event: 'admin.device.show', actor: who.actor, ip: who.ip, deviceId: id, details: { deviceId: id } }, async () => {
    const d = await mustGet(ctx, id, who);
    return { device: deviceView(ctx, d, await ctx.store.listCertificates(id)) };
  });
}

/**
 * POST /v1/admin/devices/:id/control: a command signed by the server's control key. With a broker
 * integration it also goes to the device's control topic (published: true once the broker has
 * it); without one the caller delivers it.
 */
export async function sendControl(
  ctx: ServerContext,
  id: string,
  cmd: { type: ControlCommandType; reason?: string },
  who: Actor,
): Promise<SignedControl & { published: boolean }> {
  return audited(
    ctx,
    { event: 'admin.control.sign', actor: who.actor, ip: who.ip, deviceId: id, details: { deviceId: id, type: cmd.type } },
    async () => {
      await mustGet(ctx, id, who);
      const signed = ctx.ca.signControl({ type: cmd.type, deviceId: id, ...(cmd.reason ? { reason: cmd.reason } : {}) });
      let published = false;
      if (ctx.broker) {
        try {
          await ctx.broker.sendControl(id, signed);
          published = true;
        } catch (e) {
          throw new EdgeidError('broker_unavailable', `the command was signed but not delivered: ${(e as Error).message.slice(0, 200)}`);
        }
      }
      return { ...signed, published };
    },
  );
}

/**
 * A CRL that could not be written after the device's end was committed (data dir full or
 * read-only): the answer says what did happen. The CRL service serves the new list from memory
 * once it could be built, and builds and writes it again on the next request for it.
 */
function committedButNoCrl(e: unknown, id: string, done: 'revoked' | 'retired'): unknown {
  const storage = storageFailure(e);
  if (!storage) return e;
  return new EdgeidError(
    storage.code,
    `device ${id} is ${done} (committed), but the CRL files could not be written: ${storage.message} The CRL is built and written again on the next request for it.`,
    { ...storage.details, deviceId: id, committed: true },
  );
}

/**
 * Revokes a device: status `revoked` (renewals refused from the commit on), its unexpired
 * certificates revoked and its open nonces spent in the same transaction, a new CRL at once, then
 * the onDeviceRevoked hooks (broker kick, wipe command).
 */
export async function revokeDevice(
  ctx: ServerContext,
  id: string,
  reason: RevokeReason,
  who: Actor,
): Promise<{ device: DeviceView; serials: string[]; crlNumber: string; hooks: HookResult[] }> {
  return audited(ctx, { event: 'device.revoke', actor: who.actor, ip: who.ip, deviceId: id, details: { reason } }, async (a) => {
    const d = await mustGet(ctx, id, who);
    if (d.status === 'revoked' || d.status === 'retired') {
      throw new EdgeidError('device_state_conflict', `device ${id} is already ${d.status}`, { status: d.status });
    }
    const now = a.time;
    const serials = await ctx.store.endDevice({
      deviceId: id,
      status: 'revoked',
      reason,
      statusReason: `revoked: ${reason}`,
      now,
      audit: a.okRow(),
    });
    a.recorded();
    // Hooks first: the broker sends the signed wipe while the device is still connected, then cuts
    // its session; only then does the new CRL go out (the broker loads it on its reload schedule).
    const after = (await ctx.store.getDevice(id))!;
    // runHooks audits a failing hook and never throws, so the CRL goes out whatever the hooks did
    const hooks = await runHooks(ctx, 'onDeviceRevoked', { device: after, reason, serials, at: new Date(now) }, id);
    const crl = await ctx.crl.regenerate(`revoke ${id}`).catch((e: unknown) => Promise.reject(committedButNoCrl(e, id, 'revoked')));
    return { device: deviceView(ctx, after), serials, crlNumber: crl.number.toString(), hooks };
  });
}

/** Retires a device (by an operator, or automatically past retireBy): like revoke with reason cessation-of-operation. */
export async function retireDevice(
  ctx: ServerContext,
  id: string,
  who: Actor & { automatic?: boolean },
): Promise<{ device: DeviceView; serials: string[]; hooks: HookResult[] }> {
  return audited(
    ctx,
    { event: 'device.retire', actor: who.actor, ip: who.ip, deviceId: id, details: { automatic: who.automatic === true } },
    async (a) => {
      const d = await mustGet(ctx, id, who);
      if (d.status === 'revoked' || d.status === 'retired') {
        throw new EdgeidError('device_state_conflict', `device ${id} is already ${d.status}`, { status: d.status });
      }
      const now = a.time;
      const serials = await ctx.store.endDevice({
        deviceId: id,
        status: 'retired',
        reason: 'cessation-of-operation',
        statusReason: who.automatic ? 'retired: retire-by date passed' : 'retired by an operator',
        now,
        audit: a.okRow(),
      });
      a.recorded();
      const after = (await ctx.store.getDevice(id))!;
      const hooks = await runHooks(
        ctx,
        'onDeviceRetired',
        { device: after, serials, at: new Date(now), automatic: who.automatic === true },
        id,
      );
      if (serials.length > 0)
        await ctx.crl.regenerate(`retire ${id}`).catch((e: unknown) => Promise.reject(committedButNoCrl(e, id, 'retired')));
      return { device: deviceView(ctx, after), serials, hooks };
    },
  );
}

/**
 * Approval of a quarantined device: its broker role back, then a signed `renew-now` on its control
 * topic (reaches it while the broker still accepts its certificate; otherwise its own renewal
 * retry brings it back). Its quarantine-time certificates stay revoked: it renews for a new one.
 * Broker failures are audited (broker.restore / broker.control_sent) and never undo the approval.
 */
async function restoreAccess(ctx: ServerContext, id: string): Promise<void> {
  const broker = ctx.broker!;
  try {
    await broker.restoreDevice(id);
    await broker.sendControl(id, ctx.ca.signControl({ type: 'renew-now', deviceId: id, reason: 'baseline approved' }));
  } catch (e) {
    ctx.log.error({ deviceId: id, err: (e as Error).message }, 'approval: the broker rights could not be restored');
  }
}

/**
 * Opens the baseline window: the device becomes active again (if quarantined) and the next
 * quote it sends within `baselineWindow` becomes its new PCR baseline; that first successful
 * renewal closes the window whatever its PCRs are.
 */
export async function approveBaseline(ctx: ServerContext, id: string, who: Actor): Promise<{ device: DeviceView }> {
  return audited(ctx, { event: 'device.approve_baseline', actor: who.actor, ip: who.ip, deviceId: id }, async (a) => {
    const d = await mustGet(ctx, id, who);
    if (d.status !== 'active' && d.status !== 'quarantined') {
      throw new EdgeidError('device_state_conflict', `device ${id} is ${d.status}`, { status: d.status });
    }
    const now = a.time;
    const until = now + ctx.config.baselineWindow * 1000;
    // links this row to the renewal row that closes the window (details.baselineWindowClosed.approvalId)
    const approvalId = randomUUID();
    await ctx.store.updateDevice(
      id,
      {
        status: 'active',
        statusReason: null,
        statusChangedAt: d.status === 'active' ? d.statusChangedAt : now,
        baselineWindowUntil: until,
        baselineApprovalId: approvalId,
      },
      a.okRow({ approvalId, previousStatus: d.status, previousReason: d.statusReason, windowUntil: new Date(until).toISOString() }),
    );
    a.recorded();
    const after = (await ctx.store.getDevice(id))!;
    if (d.status === 'quarantined' && ctx.broker) await restoreAccess(ctx, id);
    await runHooks(ctx, 'onBaselineApproved', { device: after, windowUntil: new Date(until) }, id);
    return { device: deviceView(ctx, after) };
  });
}

/** Periodic work: retire devices past retireBy, keep the CRL fresh. */
export async function housekeeping(ctx: ServerContext): Promise<{ retired: string[] }> {
  const now = ctx.now();
  const retired: string[] = [];
  // ids only, through the retire_by index: the rows are not decoded here
  for (const id of await ctx.store.listDeviceIds({ status: ['active', 'quarantined'], retireByAtOrBefore: now })) {
    try {
      await retireDevice(ctx, id, { actor: 'server', ip: null, automatic: true });
      retired.push(id);
    } catch (e) {
      ctx.log.error({ err: e, deviceId: id }, 'automatic retire failed');
    }
  }
  await ctx.crl.get();
  return { retired };
}

/**
 * Stores the AK name of devices enrolled before it was stored (schema migration 002 adds the
 * column empty): the name is computed here, from the AK the device enrolled with. An AK that does
 * not parse keeps no name; such a device can still renew by its id.
 */
export async function backfillAkNames(ctx: ServerContext): Promise<number> {
  let n = 0;
  for (const d of await ctx.store.devicesWithoutAkName()) {
    let name: string;
    try {
      name = objectName(parsePublic(d.akPub)).toString('hex');
    } catch {
      ctx.log.warn({ deviceId: d.id }, 'the stored AK does not parse; the device has no AK name');
      continue;
    }
    await ctx.store.setAkName(d.id, name);
    n++;
  }
  return n;
}
