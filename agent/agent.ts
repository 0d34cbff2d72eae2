/**
 * The agent daemon (`edgeid-agent run`): keeps the certificate fresh, the MQTT session up, the
 * outbox flowing and the control channel watched.
 *
 *   const agent = await EdgeAgent.start({ config, log });
 *   await agent.publish('devices/<id>/telemetry', payload);   // durable, QoS 1
 *   const code = await agent.exited;                           // 0 after stop() or a wipe
 *
 * Exit codes: 0 after stop() or a signed wipe command; EXIT_IDENTITY_ENDED (10) after the server
 * answered device_revoked or device_retired (the identity is wiped first; the systemd unit does not
 * restart on it: RestartPreventExitStatus=10).
 *
 * Renewals run on a RenewalScheduler (schedule.ts) with the agent's Clock (options.clock; for
 * integration tests EDGEID_TEST_CLOCK_OFFSET_MS): never lost, never closer than a floor, timed by
 * elapsed time so that a wrong device clock does not matter. stop() and wipe() abort requests to
 * the server instead of waiting for them.
 */
import type { SecureContext } from 'node:tls';
import type { Logger } from 'pino';
import { controlTopic, verifyControlCommand } from '../protocol/control.js';
import { EdgeidError, isEdgeidError } from '../protocol/errors/index.js';
import type { AgentConfig } from './config.js';
import { ControlMemory } from './control-memory.js';
import { clientFor, continueEnrollment, pinnedRootsPem, renewCertificate, type IdentityDeps } from './identity.js';
import { MqttSession, type MqttState } from './mqtt-session.js';
import { Outbox, type OutboxMessage, type OutboxStats } from './outbox.js';
import { PostureCollector } from './posture.js';
import {
  RenewalScheduler,
  backoffDelay,
  clockFromEnv,
  localExpiry,
  localRenewalTime,
  renewalFloorMs,
  type Clock,
  type RenewalPlan,
  type ScheduledCertificate,
} from './schedule.js';
import { writeFileAtomic } from './state/fs.js';
import { StateStore, sessionKeyName, type AgentState } from './state/store.js';
import { flushLeftoverObjects, tlsContextFromTpm, type SecureContextFactory } from './tpm-support.js';
import { Tpm, type KeyBlob } from './tpm/index.js';
import { AGENT_VERSION } from './version.js';

export interface AgentOptions {
  config: AgentConfig;
  log: Logger;
  /** An open TPM (tests); by default the agent opens config.tcti and closes it on exit. */
  tpm?: Tpm;
  /** Builds the MQTT TLS context for a TPM key + certificate; by default the TPM addon's. */
  secureContextFactory?: SecureContextFactory;
  /** The agent's clock (tests); by default the system clock, or EDGEID_TEST_CLOCK_OFFSET_MS from it. */
  clock?: Clock;
}

/**
 * Every renewal leaves garbage whose weight is native, not JavaScript: the replaced TLS context (an
 * OpenSSL SSL_CTX with its CA store and TPM key), the ended MQTT connection's socket. V8 counts each
 * at about 1 KB and, with a heap this small, runs a full collection rarely, so RSS grew by ~50 KB
 * per renewal for hundreds of renewals (measured: scripts/bench agent --soak). One full collection
 * after a renewal — an hourly event, a few ms — returns it. `gc` exists when Node runs with
 * --expose-gc (the systemd unit's ExecStart); without it this does nothing.
 */
function collectReplacedContexts(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (typeof gc === 'function') setImmediate(gc);
}

/** A clock set back by less than this since the certificate arrived changes the schedule too little to matter. */
const CLOCK_SET_BACK_TOLERANCE_MS = 60_000;

/** Exit code after the server ended this identity (device_revoked, device_retired) and it was wiped. */
export const EXIT_IDENTITY_ENDED = 10;

/**
 * Whether an error is the server's final word on this identity: a revoked or retired device, in an
 * answer of the pinned server (serverError sets httpStatus). A network failure never has these
 * codes, so no outage, proxy or unauthenticated party can make the agent wipe itself.
 */
function isTerminalAnswer(e: unknown): e is EdgeidError {
  return (isEdgeidError(e, 'device_revoked') || isEdgeidError(e, 'device_retired')) && typeof e.details?.httpStatus === 'number';
}

/** Broker URLs the agent accepts: TLS only (mqtts://, ssl://, wss://); a plaintext one is refused. */
export function checkBrokerUrl(url: string, origin: string): void {
  let protocol: string;
  try {
    protocol = new URL(url).protocol;
  } catch {
    throw new EdgeidError('mqtt_url_insecure', `the MQTT broker URL from ${origin} is not a URL: ${url}`);
  }
  if (protocol !== 'mqtts:' && protocol !== 'ssl:' && protocol !== 'wss:') {
    throw new EdgeidError(
      'mqtt_url_insecure',
      `the MQTT broker URL from ${origin} is not TLS (${protocol}//): ${url}; the agent only connects with mqtts://`,
      { url, origin },
    );
  }
}

export interface AgentStatus {
  running: boolean;
  pid: number;
  agentVersion: string;
  device: { id: string; zone: string; enrolledAt: string } | null;
  server: string;
  certificate: { serial: string; notBefore: string; notAfter: string; secondsLeft: number; expired: boolean } | null;
  renewal: {
    next: string | null;
    consecutiveFailures: number;
    last: AgentState['lastRenewal'] | null;
    total: number;
    /**
     * TPM commands of a steady-state renewal: every command incl. flushes of a renewal that found
     * the SRK and AK resident (CreateLoaded, Certify, Quote, Sign, ContextSave, FlushContext = 6;
     * + PCR_Read when the PCRs changed). `last.tpmCommands`/`last.tpmCommandStats`: the last one's.
     */
    tpmCommandsPerRenewal: number | null;
  };
  mqtt: {
    state: MqttState | 'disabled';
    url: string | null;
    serial: string | null;
    connectedAt: string | null;
    connects: number;
    /** Connection attempts (TLS handshakes) started by this process. */
    attempts?: number;
    lastError: string | null;
  };
  outbox: OutboxStats;
  control: { accepted: number; ignored: number; lastIgnored: { at: string; code: string } | null };
  posture: Record<string, unknown> | null;
  updatedAt: string;
}

const STATUS_FILE = 'status.json';

export class EdgeAgent {
  private state: AgentState;
  private readonly deps: IdentityDeps;
  private mqtt: MqttSession | null = null;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private failures = 0;
  private readonly clock: Clock;
  private readonly scheduler: RenewalScheduler;
  /** Aborted by stop() and wipe(): no request to the server outlives the agent. */
  private readonly abort = new AbortController();
  private stopping = false;
  private resolveExit!: (code: number) => void;
  private control = { accepted: 0, ignored: 0, lastIgnored: null as { at: string; code: string } | null };
  private posture: Record<string, unknown> | null = null;
  /** The TLS context the MQTT session uses now (its TPM key is released when it is replaced). */
  private tlsContext: SecureContext | null = null;
  /** Resolves with the process exit code once the agent stopped (0 after stop() or a wipe). */
  readonly exited: Promise<number>;

  private constructor(
    private readonly opts: AgentOptions,
    private readonly store: StateStore,
    private readonly tpm: Tpm,
    private readonly ownsTpm: boolean,
    private readonly outbox: Outbox,
    private readonly memory: ControlMemory,
    state: AgentState,
    private readonly contextFactory: SecureContextFactory,
  ) {
    this.state = state;
    this.clock = opts.clock ?? clockFromEnv();
    this.deps = {
      store,
      tpm,
      posture: new PostureCollector({ config: opts.config }),
      log: opts.log,
      config: opts.config,
      signal: this.abort.signal,
      now: () => this.clock.now(),
    };
    this.scheduler = new RenewalScheduler({
      clock: this.clock,
      run: (reason) => this.renewOnce(reason),
      floorMs: () => renewalFloorMs(this.scheduledCert()),
      onPlanned: (at, reason) => {
        this.log.debug({ at: new Date(at).toISOString(), reason }, 'renewal scheduled');
        void this.writeStatus();
      },
    });
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
  }

  static async start(opts: AgentOptions): Promise<EdgeAgent> {
    const { config, log } = opts;
    const store = await StateStore.open(config.stateDir, { lock: true });
    let tpm: Tpm | undefined;
    try {
      const state = await store.load();
      if (!state) throw new EdgeidError('not_enrolled', `no identity in ${config.stateDir}`);
      const removed = await store.cleanupOrphans(state);
      if (removed.length) log.info({ removed }, 'removed leftovers of an interrupted step');
      tpm = opts.tpm ?? (await Tpm.open(config.tcti));
      const flushed = await flushLeftoverObjects(tpm);
      if (flushed > 0) log.warn({ flushed }, 'flushed TPM objects left by an earlier agent process');
      const outbox = await Outbox.open(store.path('outbox'), config.outbox);
      const memory = await ControlMemory.open(config.stateDir, (config.control.maxAgeSeconds + config.control.maxFutureSkewSeconds) * 2000);
      const agent = new EdgeAgent(opts, store, tpm, !opts.tpm, outbox, memory, state, opts.secureContextFactory ?? tlsContextFromTpm(tpm));
      await agent.begin();
      return agent;
    } catch (e) {
      if (tpm && !opts.tpm) await tpm.close().catch(() => {});
      await store.close();
      throw e;
    }
  }

  private get log(): Logger {
    return this.opts.log;
  }

  private async begin(): Promise<void> {
    if (!this.state.device && this.state.pendingEnrollment) {
      this.log.info('continuing an interrupted enrollment');
      this.state = await continueEnrollment(this.deps, this.state);
    }
    if (!this.state.device) throw new EdgeidError('not_enrolled', `no identity in ${this.opts.config.stateDir}`);
    this.posture = { ...(await this.deps.posture.claims()) };
    const url = this.opts.config.mqtt.url ?? this.state.mqtt?.url ?? null;
    if (url) checkBrokerUrl(url, this.opts.config.mqtt.url ? 'the agent config' : 'the enrollment server');
    if (url) {
      const deviceId = this.state.device.id;
      this.mqtt = new MqttSession({
        url,
        clientId: deviceId,
        subscriptions: [controlTopic(deviceId)],
        outbox: this.outbox,
        log: this.log.child({ part: 'mqtt' }),
        keepaliveSeconds: this.opts.config.mqtt.keepaliveSeconds,
        reconnectPeriodMs: this.opts.config.mqtt.reconnectPeriodMs,
        clock: this.clock,
      });
      this.mqtt.on('connect', (serial: string) => void this.onMqttConnect(serial));
      this.mqtt.on('close', () => void this.writeStatus());
      this.mqtt.on('suspended', (reason: 'refused' | 'expired', _detail: string, failures: number) =>
        this.onMqttSuspended(reason, failures),
      );
      this.mqtt.on('message', (topic: string, payload: Buffer) => {
        this.onMessage(topic, payload).catch((e: unknown) =>
          this.log.error({ err: (e as Error).message, topic }, 'control message handling failed'),
        );
      });
    } else {
      this.log.warn('no MQTT broker URL (config mqtt.url or the server): running without MQTT');
    }

    const cert = this.scheduledCert();
    const valid = cert && localExpiry(cert) > this.clock.now() + 1000;
    // The clock offset measured at issuance holds while the device clock runs on; a clock set back
    // since (a reboot without RTC, a manual change) shows as a certificate received "in the
    // future": the offset is stale, and only a renewal measures it again.
    const clockSetBack = cert?.receivedAt !== undefined && cert.receivedAt > this.clock.now() + CLOCK_SET_BACK_TOLERANCE_MS;
    if (clockSetBack) {
      this.log.warn(
        { receivedAt: new Date(cert!.receivedAt!).toISOString(), now: new Date(this.clock.now()).toISOString() },
        'the device clock was set back since the certificate arrived; renewing now',
      );
      void this.scheduler.due('clock-changed');
    } else if (valid) {
      if (this.mqtt) await this.connectWithCurrent();
      this.scheduler.plan({ at: localRenewalTime(cert!, this.renewAfter()), reason: 'schedule' });
    } else {
      void this.scheduler.due(cert ? 'expired' : 'startup');
    }
    if (!this.mqtt && this.state.previousSessionKey !== undefined) await this.dropPreviousKey();
    const hb = this.opts.config.mqtt.heartbeatSeconds;
    if (hb > 0) {
      this.heartbeatTimer = setInterval(() => this.heartbeat(), hb * 1000);
      this.heartbeatTimer.unref?.();
    }
    await this.writeStatus();
  }

  /** The current certificate as the schedule sees it (server times plus the measured clock offset). */
  private scheduledCert(): ScheduledCertificate | null {
    const c = this.state.certificate;
    if (!c) return null;
    return {
      notBefore: new Date(c.notBefore),
      notAfter: new Date(c.notAfter),
      ...(c.clockOffsetMs !== undefined ? { clockOffsetMs: c.clockOffsetMs } : {}),
      ...(c.receivedAt ? { receivedAt: Date.parse(c.receivedAt) } : {}),
    };
  }

  private renewAfter(): Date | undefined {
    const r = this.state.renew?.renewAfter;
    return r ? new Date(r) : undefined;
  }

  // ---- public API -------------------------------------------------------------------------

  get deviceId(): string {
    return this.state.device!.id;
  }

  /** Publishes with QoS 1 through the durable outbox; resolves once the message is on disk. */
  async publish(topic: string, payload: Buffer | string): Promise<OutboxMessage> {
    if (this.stopping) throw new EdgeidError('outbox_unusable', 'the agent is stopping');
    if (this.mqtt) return this.mqtt.publish(topic, payload);
    return this.outbox.add(topic, payload);
  }

  /** Starts a renewal now (control `renew-now`, tests); resolves when it finished (either way). */
  renewNow(reason = 'renew-now'): Promise<void> {
    return this.scheduler.due(reason);
  }

  status(): AgentStatus {
    const cert = this.state.certificate;
    const sc = this.scheduledCert();
    const left = sc ? Math.round((localExpiry(sc) - this.clock.now()) / 1000) : 0;
    const next = this.scheduler.next;
    const m = this.mqtt?.info();
    return {
      running: !this.stopping,
      pid: process.pid,
      agentVersion: AGENT_VERSION,
      device: this.state.device ?? null,
      server: this.state.server.url,
      certificate: cert
        ? { serial: cert.serial, notBefore: cert.notBefore, notAfter: cert.notAfter, secondsLeft: Math.max(0, left), expired: left <= 0 }
        : null,
      renewal: {
        next: next === null ? null : new Date(next).toISOString(),
        consecutiveFailures: this.failures,
        last: this.state.lastRenewal ?? null,
        total: this.state.renewals,
        tpmCommandsPerRenewal: this.state.tpmCommandsPerRenewal ?? null,
      },
      mqtt: m ?? { state: 'disabled', url: null, serial: null, connectedAt: null, connects: 0, lastError: null },
      outbox: this.outbox.stats(),
      control: { ...this.control },
      posture: this.posture,
      updatedAt: new Date(this.clock.now()).toISOString(),
    };
  }

  /**
   * Stops timers and the MQTT session, releases the state dir and (if it opened it) the TPM. Never
   * waits on the server: a renewal in flight has its request aborted and ends at once.
   */
  stop(code = 0): Promise<void> {
    return this.shutdown({ code, wipe: false, origin: 'stop' });
  }

  /**
   * One shutdown per agent: a second caller (stop() during a wipe) gets the first one's promise and
   * resolves when the agent really stopped; a call from inside the renewal that the shutdown waits
   * for returns at once (waiting there would wait on itself).
   */
  private shutdown(o: { code: number; wipe: boolean; origin: string; insideRenewal?: boolean }): Promise<void> {
    if (this.shutdownDone) return o.insideRenewal ? Promise.resolve() : this.shutdownDone;
    this.shutdownDone = this.shutdownNow(o);
    return this.shutdownDone;
  }
  private shutdownDone: Promise<void> | null = null;

  private async shutdownNow(o: { code: number; wipe: boolean; origin: string; insideRenewal?: boolean }): Promise<void> {
    this.stopping = true;
    if (o.wipe) this.log.warn({ origin: o.origin }, 'wiping the device identity');
    this.scheduler.stop();
    this.abort.abort();
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    // the renewal's requests were just aborted; what is left of it is local (disk, TPM)
    if (!o.insideRenewal) await this.scheduler.idle();
    await this.mqtt?.close();
    // publishes accepted before the stop finish writing before the state dir is released
    await this.outbox.idle();
    this.deps.client?.close();
    if (o.wipe) {
      if (this.tlsContext) this.releaseTls(this.tlsContext);
      this.tlsContext = null;
      const removed = await this.store.wipe();
      await flushLeftoverObjects(this.tpm).catch(() => 0);
      this.log.warn({ removed: removed.length, origin: o.origin, exitCode: o.code }, 'identity wiped');
    } else {
      await this.writeStatus(false).catch(() => {});
    }
    if (this.ownsTpm) await this.tpm.close().catch(() => {});
    // a read-only state dir keeps its lock file (a stale lock is taken over at the next start)
    await this.store
      .close()
      .catch((e: unknown) =>
        this.log.warn({ code: isEdgeidError(e) ? e.code : undefined, err: (e as Error).message }, 'cannot release the state dir lock'),
      );
    this.resolveExit(o.code);
  }

  // ---- renewal ----------------------------------------------------------------------------

  /** One renewal (the scheduler runs one at a time); returns the next one to plan, or null when ending. */
  private async renewOnce(reason: string): Promise<RenewalPlan | null> {
    if (this.stopping) return null;
    const sc = this.scheduledCert();
    const why = sc && localExpiry(sc) <= this.clock.now() ? 'expired' : reason;
    const attempt = this.failures + 1;
    this.log.info({ reason: why, attempt }, 'renewal started');
    try {
      // one client (one https.Agent, one TLS context) for the agent's life, not one per renewal
      this.deps.client ??= clientFor(this.state, this.opts.config, this.abort.signal, () => this.clock.now());
      const outcome = await renewCertificate(this.deps, this.state, why);
      this.state = outcome.state;
      this.failures = 0;
      this.posture = { ...(await this.deps.posture.claims()) };
      if (this.mqtt && !this.stopping) await this.connectWithCurrent();
      else await this.dropPreviousKey();
      collectReplacedContexts();
      return { at: localRenewalTime(this.scheduledCert()!, this.renewAfter()), reason: 'schedule' };
    } catch (e) {
      if (this.stopping) {
        this.log.info({ code: isEdgeidError(e) ? e.code : undefined }, 'renewal abandoned: the agent is stopping');
        return null;
      }
      if (isTerminalAnswer(e)) {
        // The pinned server says this identity is over: do what a signed wipe command would.
        this.log.error({ code: e.code, err: e.message }, 'the server ended this identity; wiping it and exiting');
        await this.shutdown({ code: EXIT_IDENTITY_ENDED, wipe: true, origin: `server:${e.code}`, insideRenewal: true });
        return null;
      }
      this.failures++;
      const code = isEdgeidError(e) ? e.code : 'renewal_failed';
      const message = (e as Error).message;
      const delay = backoffDelay(this.failures, this.opts.config.renewal.backoff);
      this.log.warn({ reason: why, code, attempt, retryInMs: delay, err: message }, 'renewal failed');
      this.state = { ...this.state, lastRenewal: { at: new Date(this.clock.now()).toISOString(), ok: false, reason: why, code, message } };
      await this.store
        .save(this.state)
        .catch((err: Error) => this.log.error({ code: isEdgeidError(err) ? err.code : undefined, err: err.message }, 'cannot save state'));
      return { at: this.clock.now() + delay, reason: 'retry' };
    }
  }

  /**
   * The broker refuses the certificate, or it expired: MQTT waits (no more handshakes with it) and
   * a renewal is brought forward, with backoff over successive refusals — the renewal either brings
   * a certificate the broker accepts or the server's final answer.
   */
  private onMqttSuspended(reason: 'refused' | 'expired', failures: number): void {
    if (this.stopping) return;
    const delay = backoffDelay(failures, { baseMs: this.opts.config.mqtt.reconnectPeriodMs, capMs: 5 * 60_000 });
    const at = this.clock.now() + delay;
    const next = this.scheduler.next;
    if (next === null || at < next) this.scheduler.plan({ at, reason: reason === 'expired' ? 'expired' : 'mqtt-refused' });
    void this.writeStatus();
  }

  // ---- MQTT -------------------------------------------------------------------------------

  private async connectWithCurrent(): Promise<void> {
    const cert = this.state.certificate!;
    let ctx: SecureContext;
    try {
      const key: KeyBlob = await this.store.readKey(sessionKeyName(cert.sessionKey));
      ctx = await this.contextFactory({
        key,
        certPem: [cert.pem, ...cert.chain.slice(0, -1)].map((p) => p.trimEnd() + '\n').join(''),
        caPem: this.trustPem(),
        minVersion: this.opts.config.mqtt.minTlsVersion,
      });
    } catch (e) {
      this.log.error({ code: isEdgeidError(e) ? e.code : undefined, err: (e as Error).message }, 'cannot build the MQTT TLS context');
      return;
    }
    const sc = this.scheduledCert()!;
    await this.mqtt!.switchCredentials({ secureContext: ctx, serial: cert.serial, expiresAt: localExpiry(sc) });
    const old = this.tlsContext;
    this.tlsContext = ctx;
    if (old) this.releaseTls(old);
  }

  private releaseTls(ctx: SecureContext): void {
    try {
      this.tpm.releaseTlsKey(ctx);
    } catch (e) {
      this.log.debug({ err: (e as Error).message }, 'releasing a TLS key failed');
    }
  }

  private trustPem(): string {
    const chain = this.state.certificate?.chain ?? [];
    return pinnedRootsPem(this.state) + chain.map((p) => p.trimEnd() + '\n').join('');
  }

  private async onMqttConnect(serial: string): Promise<void> {
    // R3: the new certificate is in use; the previous key can go.
    if (serial === this.state.certificate?.serial) {
      // a full or read-only state dir: the key is dropped after the next renewal instead
      await this.dropPreviousKey().catch((e: unknown) =>
        this.log.warn(
          { code: isEdgeidError(e) ? e.code : undefined, err: (e as Error).message },
          'cannot delete the previous session key yet',
        ),
      );
    }
    this.heartbeat();
    await this.writeStatus();
  }

  private async dropPreviousKey(): Promise<void> {
    const prev = this.state.previousSessionKey;
    if (prev === undefined) return;
    const next = { ...this.state };
    delete next.previousSessionKey;
    await this.store.save(next);
    this.state = next;
    await this.store.removeKey(sessionKeyName(prev));
    this.log.info({ sessionKey: prev }, 'previous session key deleted');
  }

  private heartbeat(): void {
    if (!this.mqtt || !this.state.device) return;
    const s = this.status();
    const body = {
      deviceId: this.state.device.id,
      at: new Date(this.clock.now()).toISOString(),
      agentVersion: AGENT_VERSION,
      certificate: s.certificate && { serial: s.certificate.serial, notAfter: s.certificate.notAfter },
      nextRenewal: s.renewal.next,
      lastRenewal: s.renewal.last && { at: s.renewal.last.at, ok: s.renewal.last.ok, code: s.renewal.last.code },
      posture: this.posture && { agentHash: this.posture.agentHash, configHash: this.posture.configHash, kernel: this.posture.kernel },
      outbox: { pending: s.outbox.pending, dropped: s.outbox.dropped },
    };
    this.mqtt.publishVolatile(`devices/${this.state.device.id}/state`, JSON.stringify(body));
    void this.writeStatus();
  }

  // ---- control channel --------------------------------------------------------------------

  private async onMessage(topic: string, payload: Buffer): Promise<void> {
    const deviceId = this.state.device?.id;
    if (!deviceId || topic !== controlTopic(deviceId)) return;
    let cmd;
    try {
      cmd = verifyControlCommand(payload, {
        deviceId,
        trust: this.trustPem(),
        maxAgeMs: this.opts.config.control.maxAgeSeconds * 1000,
        maxFutureSkewMs: this.opts.config.control.maxFutureSkewSeconds * 1000,
        seen: (id) => this.memory.has(id),
      });
    } catch (e) {
      const code = isEdgeidError(e) ? e.code : 'control_malformed';
      this.control.ignored++;
      this.control.lastIgnored = { at: new Date(this.clock.now()).toISOString(), code };
      this.log.warn({ code, err: (e as Error).message }, 'control command ignored');
      await this.writeStatus();
      return;
    }
    try {
      await this.memory.remember(cmd.id);
    } catch (e) {
      // e.g. disk full: a verified command is still obeyed (replaying a wipe or a renew-now within
      // the freshness window does no harm); the failure is logged
      this.log.error({ err: (e as Error).message, id: cmd.id }, 'could not record the control command id');
    }
    this.control.accepted++;
    this.log.info({ command: cmd.type, id: cmd.id, issuedAt: cmd.issuedAt }, 'control command accepted');
    switch (cmd.type) {
      case 'wipe':
        await this.wipe('control');
        return;
      case 'renew-now':
        await this.renewNow('renew-now');
        return;
      default:
        this.log.warn({ code: 'control_unknown_command', command: cmd.type }, 'control command ignored');
    }
  }

  /** Deletes the identity (key blobs, state, outbox), flushes TPM objects, stops with exit code 0. */
  wipe(origin: string): Promise<void> {
    return this.shutdown({ code: 0, wipe: true, origin });
  }

  private async writeStatus(running = true): Promise<void> {
    if (this.stopping && running) return;
    const s = { ...this.status(), running };
    await writeFileAtomic(this.store.path(STATUS_FILE), JSON.stringify(s, null, 2) + '\n').catch(() => {});
  }
}
