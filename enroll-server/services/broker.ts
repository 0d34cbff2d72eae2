import { createPublicKey } from 'node:crypto';
import type { BrokerCrlStatus } from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import { audited } from './audit.js';
import type { EdgeidHooks } from '../hooks.js';
import type { BrokerPort, ServerContext } from './context.js';

type Actor = { actor: string; ip: string | null };

/**
 * The server's events as broker actions, through BrokerPort only (whichever broker implements
 * it): an enrolled device gets its rights; a revoked one gets the signed wipe and loses its rights
 * and session; a retired one loses them; a new CRL goes to the broker's reload schedule.
 */
export function brokerHooks(ctx: ServerContext, broker: BrokerPort): EdgeidHooks {
  return {
    name: 'broker',
    onDeviceEnrolled: (e) => broker.provisionDevice(e.device.id),
    onDeviceRevoked: (e) => broker.revokeDevice(e.device.id, ctx.ca.signControl({ type: 'wipe', deviceId: e.device.id, reason: e.reason })),
    onDeviceRetired: (e) => broker.removeDevice(e.device.id),
    onCrlChanged: (e) => broker.publishCrl(e),
  };
}

/** Validity of the broker's TLS certificate issued by `broker config`. */
const BROKER_CERT_SECONDS = 365 * 86400;

/** POST /v1/admin/broker/reconcile: makes the broker's per-device clients match the inventory. */
export async function reconcileBroker(ctx: ServerContext, who: Actor): Promise<{ added: string[]; removed: string[] }> {
  return audited(ctx, { event: 'admin.broker.reconcile', actor: who.actor, ip: who.ip }, async (a) => {
    if (!ctx.broker) throw new EdgeidError('broker_not_configured');
    try {
      const r = await ctx.broker.reconcile();
      a.details = { added: r.added, removed: r.removed };
      return r;
    } catch (e) {
      throw new EdgeidError('broker_unavailable', `broker reconcile failed: ${(e as Error).message.slice(0, 200)}`);
    }
  });
}

/** GET /v1/admin/broker/crl: what the broker loaded, what is pending, when the next reload runs. */
export async function brokerCrlStatus(ctx: ServerContext, who: Actor): Promise<BrokerCrlStatus> {
  return audited(ctx, { event: 'admin.broker.crl_status', actor: who.actor, ip: who.ip }, async () => {
    const s = ctx.broker?.crlStatus() ?? null;
    if (!s) throw new EdgeidError('broker_not_configured', "this server does not manage the broker's CRL (broker.crlFile is not set)");
    return s;
  });
}

/** POST /v1/admin/broker/crl/reload: the broker loads the latest CRL now (audited). */
export async function reloadBrokerCrl(ctx: ServerContext, who: Actor): Promise<BrokerCrlStatus> {
  return audited(ctx, { event: 'admin.broker.crl_reload', actor: who.actor, ip: who.ip }, async (a) => {
    if (!ctx.broker?.crlStatus())
      throw new EdgeidError('broker_not_configured', "this server does not manage the broker's CRL (broker.crlFile is not set)");
    try {
      const s = await ctx.broker.reloadCrl('admin');
      a.details = { crlNumber: s.loaded?.crlNumber ?? null, revoked: s.loaded?.revoked ?? 0, nextReloadAt: s.nextReloadAt };
      return s;
    } catch (e) {
      throw new EdgeidError('broker_unavailable', `broker CRL reload failed: ${(e as Error).message.slice(0, 200)}`);
    }
  });
}

/**
 * POST /v1/admin/broker/certificate: the broker's own TLS server certificate for a public key
 * generated where the broker runs, with the CA bundle and the long-lived CRL it needs.
 */
export async function issueBrokerCertificate(
  ctx: ServerContext,
  req: { spki: string; hostnames: string[] },
  who: Actor,
): Promise<{ certificate: string; caBundle: string; crl: string | null; notAfter: string }> {
  return audited(
    ctx,
    { event: 'admin.broker.certificate', actor: who.actor, ip: who.ip, details: { hostnames: req.hostnames } },
    async (a) => {
      const spki = Buffer.from(req.spki, 'base64');
      try {
        const k = createPublicKey({ key: spki, format: 'der', type: 'spki' });
        if (k.asymmetricKeyType !== 'ec' && k.asymmetricKeyType !== 'rsa') {
          throw new EdgeidError('bad_request', `spki is not a usable public key: unsupported key type ${k.asymmetricKeyType}`);
        }
      } catch (e) {
        if (e instanceof EdgeidError) throw e;
        throw new EdgeidError('bad_request', `spki is not a usable public key: ${(e as Error).message.slice(0, 120)}`);
      }
      const cert = await ctx.ca.issueServer({
        commonName: req.hostnames[0]!,
        hostnames: req.hostnames,
        spki,
        lifetimeSeconds: BROKER_CERT_SECONDS,
      });
      await ctx.crl.regenerate('broker config');
      a.details = { serial: cert.serial, hostnames: req.hostnames };
      return {
        certificate: cert.pem + ctx.ca.chainPem[0],
        caBundle: ctx.ca.chainPem.join(''),
        crl: ctx.crl.longLived?.pem ?? null,
        notAfter: cert.notAfter.toISOString(),
      };
    },
  );
}
