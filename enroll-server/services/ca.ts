import { Gauge } from 'prom-client';
import { EdgeidError } from '../../protocol/errors/index.js';
import { FIRST_ISSUING, type IssuingCa } from '../ca/ca.js';
import { certFingerprint, type CaRotateRootResponse, type CaStatus } from '../../protocol/api.js';
import { caExclusive } from '../backup/backup.js';
import type { ServerContext } from './context.js';
import { audited, type AuditedAction } from './audit.js';

/** POST /v1/admin/crl/regenerate: a new CRL now (number and nextUpdate of the short-lived one). */
export async function regenerateCrl(
  ctx: ServerContext,
  who: { actor: string; ip: string | null },
): Promise<{ number: string; nextUpdate: string }> {
  return audited(ctx, { event: 'admin.crl.regenerate', actor: who.actor, ip: who.ip }, async (a) => {
    const crl = await ctx.crl.regenerate('admin');
    a.details = { number: crl.number.toString() };
    return { number: crl.number.toString(), nextUpdate: crl.nextUpdate.toISOString() };
  });
}

/**
 * A CA certificate expiring within this many days is flagged (ca status, the server's start-up
 * log): half a year leaves time to rotate an issuing CA and to roll a new root out to agents.
 */
export const CA_EXPIRY_WARN_DAYS = 180;
/**
 * The server's TLS certificate lives 90 days and is re-issued when the server starts with less
 * than 30 days left (ca.ts): a warning at 30 days means the server has not restarted since.
 */
export const TLS_EXPIRY_WARN_DAYS = 30;
/** A rotated issuing CA is not rotated again within a day. */
export const MIN_ISSUING_AGE_MS = 86400_000;

/** Every CA certificate the server uses and how long it has left. */
export function caStatusOf(ctx: ServerContext): CaStatus {
  const now = ctx.now();
  return {
    warnDays: CA_EXPIRY_WARN_DAYS,
    cas: ctx.ca.expiries().map((e) => {
      const secondsLeft = Math.floor((Date.parse(e.notAfter) - now) / 1000);
      const warnDays = e.ca === 'server-tls' ? TLS_EXPIRY_WARN_DAYS : CA_EXPIRY_WARN_DAYS;
      return { ...e, secondsLeft, warnDays, warn: secondsLeft < warnDays * 86400 };
    }),
  };
}

/** GET /v1/admin/ca/status */
export async function caStatus(ctx: ServerContext, who: { actor: string; ip: string | null }): Promise<CaStatus> {
  return audited(ctx, { event: 'admin.ca.status', actor: who.actor, ip: who.ip }, async () => caStatusOf(ctx));
}

/**
 * POST /v1/admin/ca/rotate-issuing: a new issuing CA under the same root becomes the one that
 * issues (ca.ts rotateIssuing); devices move onto it at their next renewal, without enrolling
 * again (the root they pin is unchanged). A new CRL is published at once for every issuing CA.
 * `applyTls` hands the re-issued server certificate to the HTTPS listener.
 */
export async function rotateIssuingCa(
  ctx: ServerContext,
  who: { actor: string; ip: string | null },
  applyTls: (tls: { key: string; cert: string }) => void,
): Promise<{ issuer: string; subject: string; notAfter: string; previous: string; status: CaStatus }> {
  return audited(ctx, { event: 'admin.ca.rotate_issuing', actor: who.actor, ip: who.ip }, (a) =>
    caExclusive(ctx, async () => {
      const previous = ctx.ca.active;
      // a second rotation right after one is a mistake (a script run twice), never a plan: each
      // issuing CA stays trusted, and its CRL published, for as long as its certificate is valid
      const age = ctx.now() - previous.cert.notBefore.getTime();
      if (previous.name !== FIRST_ISSUING && age < MIN_ISSUING_AGE_MS) {
        throw new EdgeidError(
          'ca_rotation_invalid',
          `the active issuing CA ${previous.name} was created ${Math.round(age / 60000)} minutes ago by a rotation: rotate again after ${new Date(previous.cert.notBefore.getTime() + MIN_ISSUING_AGE_MS).toISOString()}`,
        );
      }
      const next = await switchIssuing(ctx, a, applyTls, () => ctx.ca.prepareIssuing(ctx.now()), 'issuing CA rotated');
      a.details = { ...a.details, previous: previous.name };
      return {
        issuer: next.name,
        subject: next.cert.subject,
        notAfter: next.cert.notAfter.toISOString(),
        previous: previous.name,
        status: caStatusOf(ctx),
      };
    }),
  );
}

/**
 * Makes a prepared issuing CA the one that issues. Prepared first, switched last: the new CA's CRL
 * is published and the broker loads it before any device can show a certificate of the new CA
 * (with CRL checking on, OpenSSL refuses a client whose issuer has no CRL loaded: "unable to get
 * certificate CRL"); a failure before the switch (e.g. storage_full) leaves the old CA issuing.
 */
async function switchIssuing(
  ctx: ServerContext,
  a: AuditedAction,
  applyTls: (tls: { key: string; cert: string }) => void,
  prepare: () => Promise<IssuingCa>,
  why: string,
): Promise<IssuingCa> {
  const next = await prepare();
  try {
    await ctx.crl.regenerate(why);
  } catch (e) {
    ctx.ca.discardIssuing(next);
    throw e;
  }
  a.details = {
    issuer: next.name,
    notAfter: next.cert.notAfter.toISOString(),
    serial: next.cert.serialNumber,
  };
  // the revoked set did not change, so the CRL schedule would not reload on its own
  if (ctx.broker?.crlStatus()) {
    try {
      await ctx.broker.reloadCrl(why);
      a.details.brokerCrlReloaded = true;
    } catch (e) {
      a.details.brokerCrlReloaded = false;
      ctx.log.error({ err: (e as Error).message }, `${why}, but the broker did not load the new CRLs: run edgeid-admin broker crl-reload`);
    }
  }
  try {
    await ctx.ca.activateIssuing(next);
  } catch (e) {
    ctx.ca.discardIssuing(next);
    throw e;
  }
  applyTls(ctx.ca.tls);
  return next;
}

/**
 * POST /v1/admin/ca/rotate-root: the first steps of a root rotation (docs/BACKUP-AND-CA-ROTATION.md).
 * A new root R2 and its cross certificate X(R2) by the current root R1 (ca.ts prepareRoot), then a
 * new issuing CA under R2 made active the way rotate-issuing does it. Devices renew onto it without
 * enrolling again: their chain [issuing (R2), X(R2), R1] still ends in the root they pin, and each
 * issuing response carries R2 (nextRoot) for agents to pin as well.
 */
export async function rotateRoot(
  ctx: ServerContext,
  who: { actor: string; ip: string | null },
  applyTls: (tls: { key: string; cert: string }) => void,
): Promise<CaRotateRootResponse> {
  return audited(ctx, { event: 'admin.ca.rotate_root', actor: who.actor, ip: who.ip }, (a) =>
    caExclusive(ctx, async () => {
      const previous = ctx.ca.active;
      const r2 = await ctx.ca.prepareRoot(ctx.now());
      const next = await switchIssuing(ctx, a, applyTls, () => ctx.ca.prepareIssuing(ctx.now(), 'root-2'), 'root rotated');
      a.details = {
        ...a.details,
        previous: previous.name,
        root: r2.cert.subject,
        rootFingerprint: certFingerprint(Buffer.from(r2.cert.rawData)),
        crossSerial: r2.cross.serialNumber,
      };
      return {
        issuer: next.name,
        subject: next.cert.subject,
        notAfter: next.cert.notAfter.toISOString(),
        previous: previous.name,
        root: {
          subject: r2.cert.subject,
          fingerprint: certFingerprint(Buffer.from(r2.cert.rawData)),
          notAfter: r2.cert.notAfter.toISOString(),
          pem: r2.cert.toString('pem') + '\n',
          crossPem: r2.cross.toString('pem') + '\n',
        },
        status: caStatusOf(ctx),
      };
    }),
  );
}

/** edgeid_ca_expiry_seconds{ca}: seconds until each CA certificate expires; a warning line at start for those within the window. */
export function registerCaMetrics(ctx: ServerContext): void {
  new Gauge({
    name: 'edgeid_ca_expiry_seconds',
    help: 'Seconds until each CA certificate the server uses expires (root, issuing:<name>, server-tls, control)',
    labelNames: ['ca'],
    registers: [ctx.metrics.registry],
    collect() {
      this.reset();
      for (const c of caStatusOf(ctx).cas) this.set({ ca: c.ca }, c.secondsLeft);
    },
  });
  for (const c of caStatusOf(ctx).cas.filter((x) => x.warn)) {
    ctx.log.warn(
      { ca: c.ca, notAfter: c.notAfter, daysLeft: Math.floor(c.secondsLeft / 86400) },
      `CA certificate ${c.ca} expires within ${c.warnDays} days: ${c.ca === 'server-tls' ? 'restart the server to re-issue it' : 'rotate it'}`,
    );
  }
}
