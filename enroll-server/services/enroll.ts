import { createHash, randomBytes, timingSafeEqual, X509Certificate } from 'node:crypto';
import {
  deviceTopics,
  type EnrollFinishRequest,
  type EnrollFinishResponse,
  type EnrollStartRequest,
  type EnrollStartResponse,
} from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import { makeCredential } from '../../protocol/tpm/makecredential.js';
import { ekIdentity } from '../../protocol/tpm/ekidentity.js';
import { marshalPublic, objectName, parsePublic, type TpmPublic } from '../../protocol/tpm/public.js';
import { checkAkPublic } from '../../protocol/tpm/verify.js';
import { verifyEkCertificate } from '../../protocol/tpm/ekcert.js';
import { TPM_ALG } from '../../protocol/tpm/constants.js';
import type { DeviceRecord, TokenRecord } from '../store/store.js';
import { audited, type AuditedAction } from './audit.js';
import { checkSourceIp, runHooks, zoneOf, type RequestMeta, type ServerContext } from './context.js';
import { b64, sha256Hex, verifyEvidence } from './evidence.js';
import { certRecord, issueFor, issueResponse, newNonce, nextNonceTtl, NONCES_KEPT } from './issue.js';
import { ekCertRequired } from './ek.js';
import { checkEventLog, sha256Hex as eventLogSha256 } from './eventlog.js';
import { judgePosture } from './posture.js';
import { lookupToken } from './tokens.js';

const SECRET_BYTES = 32;

/** "This enrollment token expired at 14:02 UTC (2026-11-28)": what a technician reads on the device. */
function tokenExpired(expiresAt: number): EdgeidError {
  const at = new Date(expiresAt).toISOString();
  return new EdgeidError('token_expired', `This enrollment token expired at ${at.slice(11, 16)} UTC (${at.slice(0, 10)}).`, {
    expiresAt: at,
  });
}

export function newDeviceId(): string {
  return `dev-${randomBytes(8).toString('hex')}`;
}

/**
 * POST /v1/enroll/start. Checks, each failure its own code and audit row:
 * token known (token_invalid), unused (token_used), unexpired (token_expired), its zone
 * configured (zone_unknown) and the one the device asked for (token_zone_mismatch), the source
 * network (source_ip_not_allowed), the EK public area (tpm_malformed) matching a TCG EK template
 * (ek_template_mismatch; the EK's identity is its canonical key, ekidentity.ts), the token not bound to
 * another EK (token_bound_to_other_ek), the EK certificate against the manufacturer roots
 * (ek_cert_required / ek_cert_*), the AK (ak_attributes_invalid / ak_algorithm_invalid), no live
 * device on this EK (ek_already_enrolled: the audit row names it; an operator revokes or retires
 * it first, and a quarantined device counts as live). Without a token, the EK must be on a
 * supplier manifest (ek_not_allowed otherwise; see manifestToken). Then binds the token to the EK atomically and answers
 * MakeCredential(EK, name(AK), secret) with a fresh nonce.
 *
 * The token is spent by a failed evidence check (zone mismatch, EK, EK certificate, AK) from the
 * EK it is bound to, or from any EK while unbound; never by another EK's failure (that would let
 * a thief burn a technician's token) nor by context checks (source network). A manifest entry's
 * token is never spent here: nothing in a start proves the caller holds the EK (its public key
 * is no secret), so only a successful finish spends it (see manifestToken).
 */
export async function enrollStart(ctx: ServerContext, req: EnrollStartRequest, meta: RequestMeta): Promise<EnrollStartResponse> {
  return audited(ctx, { event: 'enroll.start', actor: 'device', ip: meta.ip }, async (a) => {
    const now = a.time;
    let spendable = false;
    let manifestEntry: string | null = null;
    let token: TokenRecord;
    if (req.token !== undefined) {
      token = await lookupToken(ctx, req.token);
    } else {
      const m = await manifestToken(ctx, req, now, a);
      token = m.token;
      manifestEntry = m.entry;
    }
    const manifest = manifestEntry !== null;
    a.actor = manifestEntry ? `ek-allow:${manifestEntry}` : `token:${token.id}`;
    a.details = { tokenId: token.id, ...(manifestEntry ? { manifestEntry } : {}) };
    // a failed evidence check spends the token (see above); `spendable` says whether it has been reached
    a.onFailure(async (row) => {
      if (!manifest && spendable && token.usedAt === null && token.expiresAt > now)
        await ctx.store.failEnrollment({ tokenId: token.id, sessionId: null, now, audit: row });
      else await ctx.store.appendAudit(row);
    });
    if (token.usedAt !== null) throw new EdgeidError('token_used');
    if (token.expiresAt <= now) throw tokenExpired(token.expiresAt);
    const zone = zoneOf(ctx, token.zone);
    checkSourceIp(zone, meta.ip);
    spendable = token.ekHash === null;
    if (req.zone !== undefined && req.zone !== token.zone) {
      throw new EdgeidError('token_zone_mismatch', `the token is for zone ${token.zone}, the device asked for ${req.zone}`, {
        tokenZone: token.zone,
        requested: req.zone,
      });
    }

    const ekPubBytes = b64('ekPub', req.ekPub);
    const ekAsSent = parsePublic(ekPubBytes);
    // identity and public area from the canonical form, never from the bytes as sent (ekidentity.ts)
    const { id: ekHash, canonical: ek, template } = ekIdentity(ekAsSent);
    a.details = { ...a.details, ekHash };
    if (token.ekHash !== null && token.ekHash !== ekHash) throw new EdgeidError('token_bound_to_other_ek');
    spendable = true;

    let ekVerified = false;
    let ekIssuer: string | null = null;
    if (zone.requireEkCertificate === false) {
      // the zone opted out explicitly: nothing about the EK certificate is checked or recorded
    } else if (req.ekCert !== undefined && ctx.ekTrust) {
      try {
        const r = verifyEkCertificate(b64('ekCert', req.ekCert), ek, ctx.ekTrust, new Date(now));
        ekVerified = true;
        ekIssuer = new X509Certificate(r.chain[0]!).issuer.replace(/\n/g, ', ');
      } catch (e) {
        // where certificates are optional, one from an unknown CA is recorded as unverified;
        // anything else (a certificate for another key, a broken or expired one) is refused
        if (ekCertRequired(ctx, zone) || !(e instanceof EdgeidError) || e.code !== 'ek_cert_untrusted') throw e;
      }
    } else if (ekCertRequired(ctx, zone)) {
      throw new EdgeidError('ek_cert_required');
    }

    const ak: TpmPublic = parsePublic(b64('akPub', req.akPub));
    checkAkPublic(ak);

    // devices enrolled before the identity was canonical are matched by the old hash of both encodings
    const live = await ctx.store.findLiveDeviceByEk(ekHash, [sha256Hex(ekAsSent.tpmtPublic), sha256Hex(ek.tpmtPublic)]);
    if (live) {
      spendable = false;
      // the existing device is named for the operator (audit row), not for the caller
      a.details = { ...a.details, existingDevice: live.id, existingStatus: live.status };
      throw new EdgeidError('ek_already_enrolled');
    }

    const secret = randomBytes(SECRET_BYTES);
    const cred = makeCredential(ek, objectName(ak), secret);
    const nonce = randomBytes(32);
    const sessionId = randomBytes(18).toString('base64url');
    // a manifest token lives as long as its newest session, and its sessions do not supersede
    // each other: a start by someone who knows only the public EK cannot end the TPM's own session
    const ttl = ctx.config.enrollSessionTtl * 1000;
    const expiresAt = manifest ? now + ttl : Math.min(now + ttl, token.expiresAt);
    const result = await ctx.store.startEnrollment({
      tokenId: token.id,
      ekHash,
      now,
      ...(manifest ? { keepOtherSessions: true, extendTokenUntil: expiresAt } : {}),
      session: {
        id: sessionId,
        tokenId: token.id,
        ekHash,
        ekPub: marshalPublic(ek),
        ekVerified,
        ekIssuer,
        akPub: b64('akPub', req.akPub),
        secretHash: createHash('sha256').update(secret).digest(),
        nonce,
        ip: meta.ip,
        createdAt: now,
        expiresAt,
        usedAt: null,
      },
      audit: a.okRow({
        tokenId: token.id,
        ...(manifestEntry ? { manifestEntry } : {}),
        ekHash,
        ekTemplate: template,
        ekType: ek.type === TPM_ALG.RSA ? 'rsa' : 'ecc',
        ekCert: req.ekCert !== undefined,
        ekVerified,
        ekIssuer,
      }),
    });
    secret.fill(0);
    if (result === 'ok') a.recorded();
    else if (manifest) {
      // used or removed meanwhile: the same answer as for an unlisted EK, the reason in the audit row
      a.details = { ...a.details, manifestState: result === 'expired' ? 'removed' : result };
      a.auditAs(
        new EdgeidError('ek_not_allowed', `manifest entry ${manifestEntry} was ${result === 'expired' ? 'removed' : result} meanwhile`),
      );
      throw new EdgeidError('ek_not_allowed');
    } else {
      spendable = false;
      throw new EdgeidError(
        result === 'bound_other'
          ? 'token_bound_to_other_ek'
          : result === 'used'
            ? 'token_used'
            : result === 'expired'
              ? 'token_expired'
              : 'token_invalid',
        result === 'expired' ? tokenExpired(token.expiresAt).message : undefined,
      );
    }
    return {
      session: sessionId,
      credentialBlob: cred.credentialBlob.toString('base64'),
      encryptedSecret: cred.encryptedSecret.toString('base64'),
      nonce: nonce.toString('base64'),
      pcrs: zone.pcrs,
      expiresAt: new Date(expiresAt).toISOString(),
    };
  });
}

/**
 * Zero-touch enrollment: an EK on a supplier manifest (ek-allow) enrolls without a token. The
 * server mints an internal token for the entry, bound to the EK, zone and owner of the entry,
 * with an unguessable secret nobody learns; the rest of the enrollment is the token flow
 * unchanged, except what spends the token. An EK's public key is no secret (it is in its
 * certificate and in the manifest), so until ActivateCredential has proven that the caller holds
 * the EK nothing may spend the entry: failed starts and finishes end at most their own session,
 * and only a successful finish (the device created, in the same transaction) spends it. Each
 * entry enrolls once; to allow another enrollment an operator removes the entry and imports it
 * again (an import skips an EK that is listed already, used or not).
 * Unknown, used or removed: ek_not_allowed, one answer for all three (an anonymous caller must not
 * learn which EKs are listed); the audit row says which (auditAs: its message, and for a listed
 * EK the entry as actor with manifestEntry and manifestState in the details).
 */
async function manifestToken(
  ctx: ServerContext,
  req: EnrollStartRequest,
  now: number,
  a: AuditedAction,
): Promise<{ token: TokenRecord; entry: string }> {
  const { id } = ekIdentity(parsePublic(b64('ekPub', req.ekPub)));
  const entry = await ctx.store.getEkAllowByEk(id);
  if (!entry) {
    // an anonymous refusal like any other (aggregated per source and minute)
    a.auditAs(new EdgeidError('ek_not_allowed', `no supplier manifest lists this EK (${id})`));
    throw new EdgeidError('ek_not_allowed');
  }
  // a listed EK's refusal is one row under the entry, so an operator finds why it was refused
  a.actor = `ek-allow:${entry.id}`;
  a.details = { ekHash: id, manifestEntry: entry.id };
  let previous: TokenRecord | null = null;
  if (entry.tokenId !== null) {
    previous = await ctx.store.getToken(entry.tokenId);
    if (previous && previous.usedAt === null && previous.expiresAt > now) return { token: previous, entry: entry.id };
    if (!previous || previous.usedAt !== null) {
      const device = previous?.deviceId ?? null;
      a.details = { ...a.details, manifestState: 'used', tokenId: entry.tokenId, existingDevice: device };
      a.auditAs(
        new EdgeidError(
          'ek_not_allowed',
          `manifest entry ${entry.id} was used already${device ? ` (device ${device})` : ''}: ek-allow remove ${entry.id}, then import it, to allow another enrollment`,
        ),
      );
      throw new EdgeidError('ek_not_allowed');
    }
  }
  const token: TokenRecord = {
    id: randomBytes(8).toString('hex'),
    secretHash: createHash('sha256').update(randomBytes(32)).digest(),
    zone: entry.zone,
    owner: entry.owner,
    name: entry.name,
    purpose: null,
    createdBy: `ek-allow:${entry.id}`,
    createdAt: now,
    expiresAt: now + ctx.config.enrollSessionTtl * 1000,
    ekHash: id,
    boundAt: now,
    usedAt: null,
    deviceId: null,
  };
  if (!(await ctx.store.claimEkAllow({ entryId: entry.id, previousTokenId: entry.tokenId, token }))) {
    a.details = { ...a.details, manifestState: 'removed or claimed meanwhile' };
    a.auditAs(new EdgeidError('ek_not_allowed', `manifest entry ${entry.id} was removed or claimed by a concurrent request`));
    throw new EdgeidError('ek_not_allowed');
  }
  return { token, entry: entry.id };
}

/**
 * POST /v1/enroll/finish. Checks the session (session_invalid / session_used / session_expired)
 * and its token (token_used / token_expired), then — each failure spends the token — the
 * activation secret (activation_secret_mismatch), the evidence (verifyEvidence: certify, quote,
 * CSR), posture (posture_pcr_mismatch / posture_claims_rejected) and the source network. On
 * success the device, its certificate row and its first renewal nonce are written in the
 * transaction that spends the token. A manifest entry's token is spent only by that success: a
 * failure ends just its session (see manifestToken).
 */
export async function enrollFinish(ctx: ServerContext, req: EnrollFinishRequest, meta: RequestMeta): Promise<EnrollFinishResponse> {
  const count = (outcome: 'ok' | 'fail') => ctx.metrics.enrollments.inc({ outcome });
  return audited(ctx, { event: 'enroll.finish', actor: 'device', ip: meta.ip, count }, async (a) => {
    const now = a.time;
    let spend: { tokenId: string; sessionId: string; keepToken: boolean } | null = null;
    // from the token check on, a failure spends the token and the session with its audit row
    // (for a manifest token: the session only)
    a.onFailure(async (row) => {
      if (spend) await ctx.store.failEnrollment({ ...spend, now, audit: row });
      else await ctx.store.appendAudit(row);
    });
    const session = await ctx.store.getSession(req.session);
    if (!session) throw new EdgeidError('session_invalid');
    a.actor = `token:${session.tokenId}`;
    a.details = { tokenId: session.tokenId, ekHash: session.ekHash };
    if (session.usedAt !== null) throw new EdgeidError('session_used');
    if (session.expiresAt <= now) throw new EdgeidError('session_expired');
    const token = await ctx.store.getToken(session.tokenId);
    if (!token || token.usedAt !== null) throw new EdgeidError('token_used');
    if (token.expiresAt <= now) throw tokenExpired(token.expiresAt);
    const manifestEntry = token.createdBy.startsWith('ek-allow:') ? token.createdBy.slice('ek-allow:'.length) : null;
    spend = { tokenId: token.id, sessionId: session.id, keepToken: manifestEntry !== null };
    if (manifestEntry) a.details = { ...a.details, manifestEntry };

    const zone = zoneOf(ctx, token.zone);
    checkSourceIp(zone, meta.ip);

    const secret = b64('secret', req.secret);
    const secretHash = createHash('sha256').update(secret).digest();
    if (!timingSafeEqual(secretHash, session.secretHash)) throw new EdgeidError('activation_secret_mismatch');

    const akPublic = parsePublic(session.akPub);
    const ev = await verifyEvidence({ akPublic, nonce: session.nonce, evidence: req, zone });

    // the event log must replay to the quote; accepted at enrollment, it is the approved log
    const eventLog = checkEventLog(req.eventLog, null, ev.pcrs, ev.claims.eventLog);
    const verdict = judgePosture({ zone, pcrs: ev.pcrs, claims: ev.claims, baseline: null, windowOpen: false, eventLog: eventLog.logs });
    if (!verdict.ok) throw new EdgeidError(verdict.code, verdict.reason, { pcrs: verdict.pcrs, claims: verdict.claims });

    const deviceId = newDeviceId();
    const cert = await issueFor(ctx, { deviceId, zone, spki: ev.spki });
    const device: DeviceRecord = {
      id: deviceId,
      zone: zone.name,
      owner: token.owner,
      name: token.name,
      purpose: token.purpose,
      status: 'active',
      statusReason: null,
      statusChangedAt: now,
      ekHash: session.ekHash,
      ekPub: session.ekPub ?? null,
      ekVerified: session.ekVerified ?? false,
      ekIssuer: session.ekIssuer ?? null,
      akPub: session.akPub,
      akName: objectName(akPublic).toString('hex'),
      // golden zones judge against the zone's values: a device-specific baseline exists only once
      // an operator approves one, so new golden values bind devices already enrolled too
      baseline: zone.posture.mode === 'golden' ? null : (verdict.newBaseline ?? ev.pcrs),
      claims: ev.claims,
      baselineWindowUntil: null,
      enrolledBy: `${token.createdBy} (token ${token.id})`,
      enrolledAt: now,
      retireBy: zone.retireAfter === null ? null : now + zone.retireAfter * 1000,
      lastSeen: now,
      lastIp: meta.ip,
      eventLog: eventLog.bytes,
      baselineEventLog: eventLog.bytes,
      lastPcrs: ev.pcrs,
      lastQuoteAt: now,
    };
    const nonce = newNonce(ctx, deviceId, nextNonceTtl(zone));
    const committed = await ctx.store.finishEnrollment({
      tokenId: token.id,
      sessionId: session.id,
      now,
      device,
      certificate: certRecord(deviceId, cert, ev.spkiHash, now),
      nonce,
      keepNonces: NONCES_KEPT,
      audit: {
        ...a.okRow({
          tokenId: token.id,
          ...(manifestEntry ? { manifestEntry } : {}),
          serial: cert.serial,
          notAfter: cert.notAfter.toISOString(),
          zone: zone.name,
          owner: token.owner,
          ekVerified: device.ekVerified,
        }),
        deviceId,
      },
    });
    if (committed !== true) {
      spend = null;
      if (committed === false) throw new EdgeidError('session_used', 'the session or its token was used by a concurrent request');
      // another session of the same EK created a live device first (checked in the transaction)
      a.details = { ...a.details, existingDevice: committed.liveDevice };
      throw new EdgeidError('ek_already_enrolled');
    }
    a.recorded();
    a.deviceId = deviceId;
    await runHooks(ctx, 'onDeviceEnrolled', { device, serial: cert.serial, certificatePem: cert.pem }, deviceId);
    await runHooks(ctx, 'onCertificateIssued', { device, serial: cert.serial, notAfter: cert.notAfter, renewal: false }, deviceId);
    const issued = issueResponse(ctx, deviceId, zone, cert, nonce, now);
    issued.renew.eventLogSha256 = eventLog.bytes ? eventLogSha256(eventLog.bytes) : null;
    return {
      ...issued,
      mqtt: { url: ctx.config.mqtt.url, topics: deviceTopics(deviceId) },
    };
  });
}
