import type { RenewChallengeRequest, RenewChallengeResponse, RenewRequest, RenewResponse } from '../../protocol/api.js';
import { addressGroup } from './address.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import { parsePublic } from '../../protocol/tpm/public.js';
import type { ZonePolicy } from '../config.js';
import type { DevicePatch, DeviceRecord } from '../store/store.js';
import { audited, type AuditedAction } from './audit.js';
import { checkSourceIp, runHooks, zoneOf, type RequestMeta, type ServerContext } from './context.js';
import { retireDevice } from './devices.js';
import { verifyEvidence } from './evidence.js';
import { certRecord, issueFor, issueResponse, newNonce, nextNonceTtl, NONCES_KEPT } from './issue.js';
import { checkEventLog, sha256Hex as eventLogSha256 } from './eventlog.js';
import { judgePosture } from './posture.js';

/**
 * Lifecycle checks shared by challenge and renewal: device known (device_not_found), not revoked
 * (device_revoked), not retired and retireBy not passed (device_retired — a device past retireBy is
 * retired on the spot), not quarantined (device_quarantined, with the recorded reason), source
 * network allowed (source_ip_not_allowed).
 */
async function liveDevice(ctx: ServerContext, deviceId: string, meta: RequestMeta): Promise<{ device: DeviceRecord; zone: ZonePolicy }> {
  const device = await ctx.store.getDevice(deviceId);
  if (!device) throw new EdgeidError('device_not_found');
  if (device.status === 'revoked')
    throw new EdgeidError('device_revoked', undefined, { since: device.statusChangedAt && new Date(device.statusChangedAt).toISOString() });
  if (device.status === 'retired') throw new EdgeidError('device_retired');
  if (device.retireBy !== null && device.retireBy <= ctx.now()) {
    await retireDevice(ctx, device.id, { actor: 'server', ip: null, automatic: true });
    throw new EdgeidError('device_retired', 'the device passed its retire-by date and was retired');
  }
  if (device.status === 'quarantined') {
    throw new EdgeidError('device_quarantined', `the device is quarantined: ${device.statusReason ?? 'posture changed'}`, {
      reason: device.statusReason,
    });
  }
  const zone = zoneOf(ctx, device.zone);
  checkSourceIp(zone, meta.ip);
  return { device, zone };
}

/**
 * After a quarantine committed: the broker rights shrink to the control topic at once (the
 * session is cut; BrokerPort.restrictDevice), the hooks run, then the new CRL goes out (once the
 * broker has loaded it, on its reload schedule, it refuses the revoked certificate at the handshake).
 * Failures are audited by the broker step and the hook runner; they never undo the quarantine.
 */
async function cutAccess(ctx: ServerContext, device: DeviceRecord, reason: string, code: string, serials: string[]): Promise<void> {
  if (ctx.broker) {
    try {
      await ctx.broker.restrictDevice(device.id);
    } catch (e) {
      ctx.log.error({ deviceId: device.id, err: (e as Error).message }, 'quarantine: the broker rights could not be reduced');
    }
  }
  await runHooks(
    ctx,
    'onDeviceQuarantined',
    { device: { ...device, status: 'quarantined', statusReason: reason }, reason, code },
    device.id,
  );
  if (serials.length > 0) await ctx.crl.regenerate(`quarantine ${device.id}`);
}

/** Lifecycle refusals whose cause an anonymous caller must not learn (they all answer renewal_refused). */
const HIDDEN_STATES = new Set(['device_not_found', 'device_revoked', 'device_retired', 'device_quarantined']);

function isHiddenState(e: unknown): e is EdgeidError {
  return e instanceof EdgeidError && HIDDEN_STATES.has(e.code);
}

/**
 * Answers a lifecycle refusal with the one generic code, its real cause going to the audit row
 * (and from there to the admin API): an anonymous caller learns that this id cannot renew — which
 * the challenge must reveal anyway by giving live devices a nonce — but not whether the device is
 * unknown, revoked, retired or quarantined.
 */
function refuseAnonymously(a: AuditedAction, e: EdgeidError): never {
  a.auditAs(e);
  throw new EdgeidError('renewal_refused');
}

/**
 * True when the renewal request is signed by the device's enrolled AK (quote and certify over the
 * request's nonce): the caller holds the device's AK, so it may learn the device's state. The
 * nonce need not be live; only possession of the AK is proven here.
 */
async function signedByDeviceAk(ctx: ServerContext, deviceId: string, req: RenewRequest): Promise<boolean> {
  const device = await ctx.store.getDevice(deviceId);
  if (!device) return false;
  try {
    const zone = zoneOf(ctx, device.zone);
    await verifyEvidence({ akPublic: parsePublic(device.akPub), nonce: Buffer.from(req.nonce, 'base64'), evidence: req, zone });
    return true;
  } catch {
    return false;
  }
}

/**
 * POST /v1/renew/challenge: a fresh single-use nonce bound to the device. The caller is not
 * authenticated: an unknown, revoked, retired or quarantined device gets renewal_refused alike.
 */
export async function renewChallenge(ctx: ServerContext, req: RenewChallengeRequest, meta: RequestMeta): Promise<RenewChallengeResponse> {
  return audited(ctx, { event: 'renew.challenge', actor: 'device', ip: meta.ip, deviceId: req.deviceId ?? null }, async (a) => {
    let deviceId = req.deviceId ?? null;
    if (deviceId === null) {
      const byAk = await ctx.store.findDeviceByAkName(req.akName!);
      if (!byAk) refuseAnonymously(a, new EdgeidError('device_not_found', 'no device is enrolled with this attestation key'));
      deviceId = byAk.id;
      a.deviceId = deviceId;
    }
    try {
      const { zone, device } = await liveDevice(ctx, deviceId, meta);
      const nonce = newNonce(ctx, deviceId, ctx.config.challengeTtl);
      await ctx.store.createNonce(
        nonce,
        NONCES_KEPT,
        a.okRow({ nonceExpiresAt: new Date(nonce.expiresAt).toISOString() }),
        addressGroup(meta.ip),
      );
      a.recorded();
      return {
        nonce: nonce.value,
        expiresAt: new Date(nonce.expiresAt).toISOString(),
        pcrs: zone.pcrs,
        deviceId,
        zone: zone.name,
        eventLogSha256: device.eventLog ? eventLogSha256(device.eventLog) : null,
      };
    } catch (e) {
      // an unknown device id is not recorded as a device
      if (e instanceof EdgeidError && e.code === 'device_not_found') a.deviceId = null;
      if (isHiddenState(e)) refuseAnonymously(a, e);
      throw e;
    }
  });
}

/**
 * POST /v1/renew. Checks, each failure its own code and audit row: the device's lifecycle
 * (liveDevice; answered renewal_refused unless the request is signed by the device's AK), the nonce (nonce_unknown / nonce_wrong_device / nonce_used / nonce_expired), the
 * evidence against the device's enrolled AK (verifyEvidence), the time offline
 * (device_offline_too_long: last certificate expired longer than maxOffline ago), then posture: a mismatch
 * quarantines the device (posture_pcr_mismatch / posture_claims_rejected with the PCRs or claims).
 * The nonce is spent only by the transaction that records the new certificate; a failed attempt
 * changes nothing but the audit log (and the device's status on a posture mismatch).
 */
export async function renew(ctx: ServerContext, req: RenewRequest, meta: RequestMeta): Promise<RenewResponse> {
  const count = (outcome: 'ok' | 'fail') => ctx.metrics.renewals.inc({ outcome });
  return audited(ctx, { event: 'renew', actor: `device:${req.deviceId}`, ip: meta.ip, deviceId: req.deviceId, count }, async (a) => {
    const now = a.time;
    let live: { device: DeviceRecord; zone: ZonePolicy };
    try {
      live = await liveDevice(ctx, req.deviceId, meta);
    } catch (e) {
      if (e instanceof EdgeidError && e.code === 'device_not_found') a.deviceId = null;
      // the real cause only for a caller that proves it holds the device's AK
      if (isHiddenState(e) && !(e.code !== 'device_not_found' && (await signedByDeviceAk(ctx, req.deviceId, req)))) refuseAnonymously(a, e);
      throw e;
    }
    const { device, zone } = live;

    const nonce = await ctx.store.getNonce(req.nonce);
    if (!nonce) throw new EdgeidError('nonce_unknown');
    if (nonce.deviceId !== device.id) throw new EdgeidError('nonce_wrong_device');
    if (nonce.usedAt !== null) throw new EdgeidError('nonce_used');
    if (nonce.expiresAt <= now) throw new EdgeidError('nonce_expired');

    const ev = await verifyEvidence({ akPublic: parsePublic(device.akPub), nonce: Buffer.from(req.nonce, 'base64'), evidence: req, zone });

    // only after the evidence proved the device's AK: how long a device was offline is its state,
    // which an anonymous caller must not learn
    const last = await ctx.store.lastCertificate(device.id);
    if (last && last.notAfter + zone.maxOffline * 1000 < now) {
      throw new EdgeidError(
        'device_offline_too_long',
        `the last certificate expired ${new Date(last.notAfter).toISOString()}, longer ago than maxOffline`,
      );
    }

    // the event log must replay to the quote (else refused with eventlog_*, nothing changes)
    const eventLog = checkEventLog(req.eventLog, device, ev.pcrs, ev.claims.eventLog);

    const windowOpen = device.baselineWindowUntil !== null && device.baselineWindowUntil > now;
    const verdict = judgePosture({
      zone,
      pcrs: ev.pcrs,
      claims: ev.claims,
      baseline: device.baseline,
      windowOpen,
      eventLog: eventLog.logs,
    });
    if (!verdict.ok) {
      const err = new EdgeidError(verdict.code, `${verdict.reason}; the device is quarantined`, {
        pcrs: verdict.pcrs,
        claims: verdict.claims,
      });
      // Quarantine cuts access (docs/SECURITY.md, "Server side"): the live certificates go on the
      // CRL for good (reason privilegeWithdrawn, RFC 5280 §5.3.1 — an approved device renews and
      // gets a new one), and the broker rights shrink to the control topic. A revocation or
      // retirement that landed meanwhile wins: never turned back into quarantine (serials null).
      const serials = await ctx.store.quarantineDevice({
        deviceId: device.id,
        statusReason: verdict.reason,
        reason: 'privilege-withdrawn',
        now,
        // the log replayed to the quote, so it is kept: `device show` diffs it against the approved one
        // the refused quote's PCRs too: the console shows which values differ from the baseline
        patch: { lastSeen: now, lastIp: meta.ip, eventLog: eventLog.bytes, lastPcrs: ev.pcrs, lastQuoteAt: now },
        audit: a.failRow(err),
      });
      a.recorded();
      if (serials !== null) await cutAccess(ctx, device, verdict.reason, verdict.code, serials);
      throw err;
    }

    const cert = await issueFor(ctx, { deviceId: device.id, zone, spki: ev.spki });
    const next = newNonce(ctx, device.id, nextNonceTtl(zone));
    const patch: DevicePatch = {
      lastSeen: now,
      lastIp: meta.ip,
      claims: ev.claims,
      eventLog: eventLog.bytes,
      lastPcrs: ev.pcrs,
      lastQuoteAt: now,
    };
    if (verdict.newBaseline) {
      patch.baseline = verdict.newBaseline;
      // the approved log is recorded with the PCRs it explains
      patch.baselineEventLog = eventLog.bytes;
    }
    // An approval covers exactly one boot state: the first successful renewal after it closes the
    // window whether or not the PCRs changed, so a later boot-chain change is a mismatch again.
    // Its audit row names the approval (approvalId is also in the approval's row).
    let window: Record<string, unknown> | null = null;
    if (windowOpen) {
      patch.baselineWindowUntil = null;
      patch.baselineApprovalId = null;
      window = { approvalId: device.baselineApprovalId ?? null, newBaseline: verdict.newBaseline !== null };
    }
    const committed = await ctx.store.renew({
      nonce: req.nonce,
      now,
      deviceId: device.id,
      patch,
      certificate: certRecord(device.id, cert, ev.spkiHash, now),
      nextNonce: next,
      keepNonces: NONCES_KEPT,
      audit: a.okRow({
        serial: cert.serial,
        notAfter: cert.notAfter.toISOString(),
        ...(verdict.newBaseline && device.baseline ? { newBaseline: true } : {}),
        ...(window ? { baselineWindowClosed: window } : {}),
      }),
    });
    if (!committed) throw new EdgeidError('nonce_used', 'the nonce was used by a concurrent request, or the device changed state');
    a.recorded();
    await runHooks(
      ctx,
      'onCertificateIssued',
      { device: { ...device, ...patch } as DeviceRecord, serial: cert.serial, notAfter: cert.notAfter, renewal: true },
      device.id,
    );
    const issued = issueResponse(ctx, device.id, zone, cert, next, now);
    issued.renew.eventLogSha256 = eventLog.bytes ? eventLogSha256(eventLog.bytes) : null;
    return issued;
  });
}
