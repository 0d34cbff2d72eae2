import { randomBytes, randomInt } from 'node:crypto';
import type { IssueResponse, RenewInfo } from '../../protocol/api.js';
import type { ZonePolicy } from '../config.js';
import { crlPath, type IssuedCertificate } from '../ca/ca.js';
import type { CertificateRecord, NonceRecord } from '../store/store.js';
import type { ServerContext } from './context.js';

export const NONCE_BYTES = 32;
/** Live (unused) nonces kept per device; challenges are unauthenticated, so this is bounded. */
export const NONCES_KEPT = 5;

export function newNonce(ctx: ServerContext, deviceId: string, ttlSeconds: number): NonceRecord {
  const now = ctx.now();
  return { value: randomBytes(NONCE_BYTES).toString('base64'), deviceId, createdAt: now, expiresAt: now + ttlSeconds * 1000, usedAt: null };
}

/** The next nonce rides on the issuing response; it lives long enough for a device that renews late. */
export function nextNonceTtl(zone: ZonePolicy): number {
  return Math.max(600, zone.lifetime * 2);
}

export async function issueFor(ctx: ServerContext, p: { deviceId: string; zone: ZonePolicy; spki: Buffer }): Promise<IssuedCertificate> {
  return ctx.ca.issueDevice({
    deviceId: p.deviceId,
    zone: p.zone.name,
    spki: p.spki,
    lifetimeSeconds: p.zone.lifetime,
    crlUrl: `${ctx.publicUrl()}${crlPath(ctx.ca.active.name)}`,
  });
}

export function certRecord(deviceId: string, cert: IssuedCertificate, spkiHash: string, now: number): CertificateRecord {
  return {
    serial: cert.serial,
    deviceId,
    notBefore: cert.notBefore.getTime(),
    notAfter: cert.notAfter.getTime(),
    spkiHash,
    issuedAt: now,
    revokedAt: null,
    reason: null,
  };
}

/** renewAfter: about two thirds into the lifetime, with ±5 % jitter so a fleet does not renew in step. */
export function renewInfo(zone: ZonePolicy, cert: IssuedCertificate, nonce: NonceRecord, now: number): RenewInfo {
  const lifetimeMs = cert.notAfter.getTime() - now;
  const jitter = randomInt(-50, 51) / 1000;
  const renewAfter = now + Math.round(lifetimeMs * (2 / 3 + jitter));
  return {
    nonce: nonce.value,
    nonceExpiresAt: new Date(nonce.expiresAt).toISOString(),
    renewAfter: new Date(renewAfter).toISOString(),
    notAfter: cert.notAfter.toISOString(),
    pcrs: zone.pcrs,
  };
}

export function issueResponse(
  ctx: ServerContext,
  deviceId: string,
  zone: ZonePolicy,
  cert: IssuedCertificate,
  nonce: NonceRecord,
  now: number,
): IssueResponse {
  const nextRoot = ctx.ca.nextRootPem;
  return {
    deviceId,
    zone: zone.name,
    certificate: cert.pem,
    chain: ctx.ca.chainPem,
    renew: renewInfo(zone, cert, nonce, now),
    ...(nextRoot ? { nextRoot } : {}),
  };
}
