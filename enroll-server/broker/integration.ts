/**
 * BrokerPort (services/context.ts) for Mosquitto 2.0 with its dynamic-security plugin; the server's
 * events reach it through services/broker.ts brokerHooks:
 * - provision → the device gets its dynsec client and its one role;
 * - revoke    → a signed `wipe` goes to its control topic first (so it is delivered), then
 *               `deleteClient` kicks the live session and leaves any reconnect without rights;
 * - remove    → `deleteClient`;
 * - new CRL   → written atomically to the broker's crlfile; the reload command runs on the
 *               schedule of crl-schedule.ts (batched; always well before the loaded copy expires).
 * Every step is audited with its outcome; dynsec failures are retried with backoff.
 * `reconcile()` makes the broker's dynsec device clients match the active devices, both ways.
 * All of it goes through one MQTT connection as the server's broker identity: the broker's client
 * id is the certificate's CN (`use_username_as_clientid`), so a second connection with that CN
 * would end the first.
 */
import type { Logger } from 'pino';
import type { SignedControl, ControlCommand } from '../../protocol/api.js';
import 'reflect-metadata';
import type { CrlChange } from '../hooks.js';
import type { AuditInput } from '../store/store.js';
import { CrlPublisher } from './crl-publisher.js';
import { DEVICE_ID_PATTERN } from '../../protocol/api.js';
import { CrlReloadSchedule, type CrlReloadPolicy, type CrlReloadStatus, type ReloadOutcome } from './crl-schedule.js';
import { writeFileAtomic } from '../files.js';
import { BROKER_ADMIN_CN, DynsecClient, type DynsecClientOptions } from './dynsec.js';
import { serviceRoles } from './mosquitto-config.js';

const DEVICE_ID_RE = new RegExp(DEVICE_ID_PATTERN);

export interface BrokerIntegrationOptions {
  dynsec: DynsecClientOptions;
  crl?: {
    file: string;
    reloadCommand?: string[];
    /** Where what the broker loaded is remembered (crl-schedule.ts). */
    stateFile: string;
    policy: CrlReloadPolicy;
  };
  audit: (row: Omit<AuditInput, 'time' | 'actor'>) => Promise<void>;
  /** Devices that should have broker rights (status active or quarantined). */
  activeDeviceIds: () => Promise<string[]>;
  /** Of those, the quarantined ones (their rights reduced to the control topic). */
  quarantinedDeviceIds?: () => Promise<string[]>;
  log: Logger;
  retries?: number;
}

/** One attempt may take this long: mqtt.js waits for a reconnect forever, a revocation must not. */
const ATTEMPT_TIMEOUT_MS = 3000;

function bounded<T>(what: string, p: Promise<T>, ms = ATTEMPT_TIMEOUT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer from the broker within ${ms} ms`)), ms);
  });
  // the abandoned attempt may still fail later: that must not become an unhandled rejection
  p.catch(() => undefined);
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

async function withRetry<T>(what: string, retries: number, fn: () => Promise<T>, log: Logger): Promise<T> {
  let delay = 100;
  for (let attempt = 0; ; attempt++) {
    try {
      return await bounded(what, fn());
    } catch (e) {
      if (attempt >= retries) throw e;
      log.warn({ err: (e as Error).message, attempt: attempt + 1, what }, 'broker step failed; retrying');
      await new Promise((r) => setTimeout(r, delay + Math.random() * delay));
      delay = Math.min(delay * 2, 2000);
    }
  }
}

/**
 * Devices a reconcile works on at once. It saves round trips, not broker work: Mosquitto's dynsec
 * plugin rewrites its whole JSON file after each change, so a fleet's first reconcile is bound by
 * the broker, and more in flight only makes each command wait longer (ATTEMPT_TIMEOUT_MS).
 */
const RECONCILE_PARALLEL = 4;

/** Runs fn over items with at most `n` running at once; the first failure is thrown after all settled. */
async function inParallel<T>(items: T[], n: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  const queue = [...items];
  let firstError: unknown = null;
  await Promise.all(
    Array.from({ length: Math.min(n, queue.length) }, async () => {
      for (let item = queue.shift(); item !== undefined; item = queue.shift()) {
        try {
          await fn(item);
        } catch (e) {
          firstError ??= e;
        }
      }
    }),
  );
  if (firstError) throw firstError;
}

/** Structurally a BrokerPort (services/context.ts; checked where composition.ts assigns it). */
export class BrokerIntegration {
  private dynsec: DynsecClient | null = null;
  private readonly crlSchedule: CrlReloadSchedule | null;
  private readonly retries: number;

  constructor(private readonly opts: BrokerIntegrationOptions) {
    const crl = opts.crl;
    if (crl) {
      const publisher = new CrlPublisher({ crlFile: crl.file, ...(crl.reloadCommand ? { reloadCommand: crl.reloadCommand } : {}) });
      this.crlSchedule = new CrlReloadSchedule({
        crlFile: crl.file,
        stateFile: crl.stateFile,
        policy: crl.policy,
        publish: (pem) => publisher.publish(pem),
        // the CRL is public data; the broker (user mosquitto) must be able to read it
        write: (pem) => writeFileAtomic(crl.file, pem, 0o644),
        onReload: (r) => this.auditReload(r),
      });
    } else {
      this.crlSchedule = null;
    }
    this.retries = opts.retries ?? 2;
  }

  private connecting: Promise<DynsecClient> | null = null;

  private async client(): Promise<DynsecClient> {
    if (this.dynsec) {
      await this.rolesUpdated;
      return this.dynsec;
    }
    // one connection for concurrent callers; a failed attempt is forgotten so the next call retries
    this.connecting ??= DynsecClient.connect(this.opts.dynsec).finally(() => {
      this.connecting = null;
    });
    const c = await bounded('connect to the broker', this.connecting, 10_000);
    this.dynsec = c;
    // once per connection, before it is used: concurrent callers wait for the same update
    this.rolesUpdated ??= this.updateServiceRoles(c);
    await this.rolesUpdated;
    return c;
  }

  private rolesUpdated: Promise<void> | null = null;

  /**
   * Service roles written by an older edgeid are brought up to date (serviceRoles) on every new
   * connection and every reconcile; one audit row when something changed. A failure is logged and
   * audited, never fatal: the next connection or reconcile tries again.
   */
  private async updateServiceRoles(c: DynsecClient): Promise<void> {
    try {
      const changes = await bounded('update service roles', c.updateServiceRoles(serviceRoles()), 30_000);
      if (changes.length > 0)
        await this.opts.audit({ event: 'broker.service_roles_updated', deviceId: null, outcome: 'ok', details: { changes } });
    } catch (e) {
      const message = (e as Error).message.slice(0, 300);
      this.opts.log.warn({ err: message }, 'updating the broker service roles failed');
      await this.opts.audit({
        event: 'broker.service_roles_updated',
        deviceId: null,
        outcome: 'fail',
        reason: 'broker_unavailable',
        details: { message },
      });
    }
  }

  /** A monitoring tool's dynsec client with the monitor role; 'exists' when the name is taken (not retried: a retry would see its own client). */
  async addMonitor(username: string): Promise<'created' | 'exists'> {
    return bounded('add a monitor client', (await this.client()).createMonitorClient(username));
  }

  /** Deletes a monitoring tool's dynsec client (kicks its session); false when there was none. */
  async removeMonitor(username: string): Promise<boolean> {
    return withRetry('remove a monitor client', this.retries, async () => (await this.client()).deleteClient(username), this.opts.log);
  }

  private async step(event: string, deviceId: string | null, fn: () => Promise<Record<string, unknown> | void>): Promise<void> {
    const t0 = Date.now();
    try {
      const details = await withRetry(event, this.retries, fn, this.opts.log);
      await this.opts.audit({ event, deviceId, outcome: 'ok', details: { ms: Date.now() - t0, ...(details ?? {}) } });
    } catch (e) {
      const message = (e as Error).message.slice(0, 300);
      await this.opts.audit({ event, deviceId, outcome: 'fail', reason: 'broker_unavailable', details: { ms: Date.now() - t0, message } });
      throw e;
    }
  }

  async provisionDevice(deviceId: string): Promise<void> {
    await this.step('broker.provision', deviceId, async () => {
      await (await this.client()).provisionDevice(deviceId);
    });
  }

  /** dynsec deleteClient: the live session is kicked at once and a reconnect has no rights. */
  async removeDevice(deviceId: string): Promise<void> {
    await this.step('broker.remove', deviceId, async () => {
      await (await this.client()).removeDevice(deviceId);
    });
  }

  /**
   * A new CRL: the long-lived copy goes to the broker's crlfile when it revokes something new, and
   * the broker loads it on the reload schedule (crl-schedule.ts). The revoked device itself was
   * already cut by revokeDevice (its dynsec client is gone), so no other session has to drop for it.
   */
  async publishCrl(e: CrlChange): Promise<void> {
    await this.crlSchedule?.changed(e);
  }

  async revokeDevice(id: string, wipe: SignedControl): Promise<void> {
    // The wipe first, while the device still has its subscription; PUBACK means the broker has it.
    // The kick happens whatever became of the wipe: a revoked device must lose its session.
    let wipeError: unknown = null;
    try {
      await this.step('broker.wipe_sent', id, async () => {
        const c = await this.client();
        await c.mqtt.publishAsync(`edgeid/${id}/control`, JSON.stringify(wipe), { qos: 1 });
        return { commandId: (JSON.parse(wipe.payload) as ControlCommand).id };
      });
    } catch (err) {
      wipeError = err;
    }
    await this.step('broker.session_kicked', id, async () => {
      await (await this.client()).removeDevice(id);
    });
    if (wipeError) throw wipeError;
  }

  /** Publishes a signed command to the device's control topic (QoS 1; resolves on the broker's PUBACK). */
  async sendControl(deviceId: string, signed: SignedControl): Promise<void> {
    const cmd = JSON.parse(signed.payload) as ControlCommand;
    await this.step('broker.control_sent', deviceId, async () => {
      await (await this.client()).mqtt.publishAsync(`edgeid/${deviceId}/control`, JSON.stringify(signed), { qos: 1 });
      return { type: cmd.type, commandId: cmd.id };
    });
  }

  /** Quarantine: the device's rights shrink to its control topic (DynsecClient.restrictDevice). */
  async restrictDevice(deviceId: string): Promise<void> {
    await this.step('broker.quarantine', deviceId, async () => {
      await (await this.client()).restrictDevice(deviceId);
    });
  }

  /** Approval: the device's full role again. */
  async restoreDevice(deviceId: string): Promise<void> {
    await this.step('broker.restore', deviceId, async () => {
      await (await this.client()).restoreDevice(deviceId);
    });
  }

  /** Makes the broker load the latest CRL now (operator's request); throws when the reload failed. */
  async reloadCrl(why = 'admin'): Promise<CrlReloadStatus> {
    if (!this.crlSchedule) throw new Error("this server does not manage the broker's CRL (broker.crlFile is not set)");
    const r = await this.crlSchedule.reload(why);
    if (r.reloadError) throw new Error(r.reloadError);
    return this.crlSchedule.status();
  }

  /** What the broker has loaded, what is pending and when the next reload runs; null without broker.crlFile. */
  crlStatus(): CrlReloadStatus | null {
    return this.crlSchedule?.status() ?? null;
  }

  private async auditReload(r: ReloadOutcome): Promise<void> {
    await this.opts.audit({
      event: 'broker.crl_published',
      deviceId: null,
      outcome: r.reloadError ? 'fail' : 'ok',
      reason: r.reloadError ? 'broker_reload_failed' : null,
      details: {
        crlNumber: r.crlNumber,
        revoked: r.revoked,
        why: r.why,
        writtenAt: r.writtenAt.toISOString(),
        reloadedAt: r.reloadedAt?.toISOString() ?? null,
        ...(r.reloadError ? { message: r.reloadError } : {}),
      },
    });
  }

  /**
   * Makes dynsec match the DB: missing devices are provisioned, unknown clients removed. The
   * caller's action (an admin request or the start-up reconcile) writes the one audit row.
   */
  async reconcile(): Promise<{ added: string[]; removed: string[] }> {
    const c = await this.client();
    await this.updateServiceRoles(c);
    const want = new Set(await this.opts.activeDeviceIds());
    // Only device clients are the server's to add and remove: the server's own identity and the
    // operators' tools (monitors, each with its own certificate CN) are left alone.
    const have = new Set((await c.listClients()).filter((u) => u !== BROKER_ADMIN_CN && DEVICE_ID_RE.test(u)));
    const added = [...want].filter((id) => !have.has(id));
    const removed = [...have].filter((id) => !want.has(id));
    // A quarantined device gets (or keeps) the quarantine role only: one that is missing is created
    // with it directly, never with its full role first (restrictDevice).
    const quarantined = new Set((await this.opts.quarantinedDeviceIds?.()) ?? []);
    // several commands in flight (answers are matched by correlationData): a fleet of thousands
    // must not wait for one round trip after another
    await inParallel(
      added.filter((id) => !quarantined.has(id)),
      RECONCILE_PARALLEL,
      (id) => withRetry('provision', this.retries, () => c.provisionDevice(id), this.opts.log),
    );
    await inParallel(removed, RECONCILE_PARALLEL, (id) => withRetry('remove', this.retries, () => c.removeDevice(id), this.opts.log));
    await inParallel(
      [...quarantined].filter((id) => want.has(id)),
      RECONCILE_PARALLEL,
      (id) => withRetry('quarantine', this.retries, () => c.restrictDevice(id), this.opts.log),
    );
    return { added, removed };
  }

  async close(): Promise<void> {
    this.crlSchedule?.close();
    await this.dynsec?.close();
    this.dynsec = null;
    this.rolesUpdated = null;
  }
}
