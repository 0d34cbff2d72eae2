import { createHash, createPublicKey } from 'node:crypto';
import {
  MONITOR_CN_PREFIX,
  MONITOR_DAYS_DEFAULT,
  type BrokerCrlStatus,
  type BrokerMonitorAddRequest,
  type BrokerMonitorView,
} from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import type { BrokerMonitorRecord } from '../store/store.js';
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
        // the chain up to (without) the root: through X(R2) after a root rotation, so that agents
        // pinned to the first root verify the broker
        certificate: cert.pem + ctx.ca.chainPem.slice(0, -1).join(''),
        caBundle: ctx.ca.trustBundlePem,
        crl: ctx.crl.longLived?.pem ?? null,
        notAfter: cert.notAfter.toISOString(),
      };
    },
  );
}

function monitorView(m: BrokerMonitorRecord): BrokerMonitorView {
  return {
    name: m.name,
    commonName: m.commonName,
    serial: m.serial,
    notAfter: new Date(m.notAfter).toISOString(),
    createdAt: new Date(m.createdAt).toISOString(),
    createdBy: m.createdBy,
  };
}

function brokerUnavailable(e: unknown, what: string): EdgeidError {
  if (e instanceof EdgeidError) return e;
  return new EdgeidError('broker_unavailable', `${what}: ${(e as Error).message.slice(0, 200)}`);
}

/**
 * POST /v1/admin/broker/monitors: a monitoring tool's own broker identity. Its key was made where
 * the tool runs (only the public key comes here); the server issues a client certificate with CN
 * `edgeid-monitor-<name>` (the broker's username and client id) for a bounded lifetime, gives that
 * name a dynsec client with the read-only monitor role, and records the certificate so that
 * removing the monitor puts it on the CRL. Nothing is issued when the name is taken, here or on
 * the broker.
 */
export async function addBrokerMonitor(
  ctx: ServerContext,
  req: BrokerMonitorAddRequest,
  who: Actor,
): Promise<{ monitor: BrokerMonitorView; certificate: string; caBundle: string; brokerUrl: string | null }> {
  const days = req.days ?? MONITOR_DAYS_DEFAULT;
  return audited(ctx, { event: 'admin.broker.monitor.add', actor: who.actor, ip: who.ip, details: { name: req.name, days } }, async (a) => {
    const broker = ctx.broker;
    if (!broker) throw new EdgeidError('broker_not_configured');
    const spki = Buffer.from(req.spki, 'base64');
    let spkiDer: Buffer;
    try {
      const k = createPublicKey({ key: spki, format: 'der', type: 'spki' });
      if (k.asymmetricKeyType !== 'ec') throw new EdgeidError('bad_request', `spki must be an EC public key, not ${k.asymmetricKeyType}`);
      spkiDer = k.export({ type: 'spki', format: 'der' });
    } catch (e) {
      if (e instanceof EdgeidError) throw e;
      throw new EdgeidError('bad_request', `spki is not a usable public key: ${(e as Error).message.slice(0, 120)}`);
    }
    const commonName = `${MONITOR_CN_PREFIX}${req.name}`;
    if (await ctx.store.getBrokerMonitor(req.name)) throw new EdgeidError('broker_monitor_exists', `monitor ${req.name} already exists`);
    let created: 'created' | 'exists';
    try {
      created = await broker.addMonitor(commonName);
    } catch (e) {
      throw brokerUnavailable(e, 'creating the monitor client failed');
    }
    if (created === 'exists') throw new EdgeidError('broker_monitor_exists', `the broker already has a client ${commonName}`);
    try {
      const cert = await ctx.ca.issueClient({ commonName, spki: spkiDer, lifetimeSeconds: days * 86400 });
      const rec: BrokerMonitorRecord = {
        serial: cert.serial,
        name: req.name,
        commonName,
        spkiHash: createHash('sha256').update(spkiDer).digest('hex'),
        notBefore: cert.notBefore.getTime(),
        notAfter: cert.notAfter.getTime(),
        createdBy: who.actor,
        createdAt: a.time,
        removedAt: null,
      };
      const ok = await ctx.store.addBrokerMonitor(rec, a.okRow({ name: req.name, commonName, serial: cert.serial, days }));
      if (!ok) throw new EdgeidError('broker_monitor_exists', `monitor ${req.name} already exists`);
      a.recorded();
      return {
        monitor: monitorView(rec),
        certificate: cert.pem + ctx.ca.chainPem[0],
        caBundle: ctx.ca.trustBundlePem,
        brokerUrl: ctx.config.mqtt.url ?? ctx.config.broker?.url ?? null,
      };
    } catch (e) {
      // the client made above must not outlive a failed add
      await broker
        .removeMonitor(commonName)
        .catch((err: unknown) => ctx.log.warn({ err: (err as Error).message }, 'monitor client left behind'));
      throw e;
    }
  });
}

/** GET /v1/admin/broker/monitors: the live monitoring identities. */
export async function listBrokerMonitors(ctx: ServerContext, who: Actor): Promise<{ monitors: BrokerMonitorView[] }> {
  return audited(ctx, { event: 'admin.broker.monitor.list', actor: who.actor, ip: who.ip }, async (a) => {
    const monitors = (await ctx.store.listBrokerMonitors()).map(monitorView);
    a.details = { monitors: monitors.length };
    return { monitors };
  });
}

/**
 * POST /v1/admin/broker/monitors/:name/remove: the dynsec client goes (its session is ended and a
 * reconnect has no rights), then the certificate's serial goes on the CRL (whose publication makes
 * the broker refuse the certificate at the TLS handshake). A client the broker has under that CN
 * without a recorded certificate (made by hand) is removed too.
 */
export async function removeBrokerMonitor(
  ctx: ServerContext,
  name: string,
  who: Actor,
): Promise<{ removed: string; revokedSerial: string | null; crlNumber: string }> {
  return audited(ctx, { event: 'admin.broker.monitor.remove', actor: who.actor, ip: who.ip, details: { name } }, async (a) => {
    const broker = ctx.broker;
    if (!broker) throw new EdgeidError('broker_not_configured');
    const commonName = `${MONITOR_CN_PREFIX}${name}`;
    const rec = await ctx.store.getBrokerMonitor(name);
    let existed: boolean;
    try {
      existed = await broker.removeMonitor(commonName);
    } catch (e) {
      throw brokerUnavailable(e, 'deleting the monitor client failed');
    }
    if (!rec && !existed) throw new EdgeidError('broker_monitor_unknown', `there is no monitor ${name}`);
    const removed = await ctx.store.removeBrokerMonitor(
      name,
      a.time,
      a.okRow({ name, commonName, serial: rec?.serial ?? null, brokerClient: existed }),
    );
    a.recorded();
    const crl = await ctx.crl.regenerate(`remove monitor ${name}`);
    return { removed: commonName, revokedSerial: removed?.serial ?? null, crlNumber: crl.number.toString() };
  });
}
