/**
 * The agent daemon (`edgeid-agent run`): keeps the certificate fresh, the MQTT session up, the
 * outbox flowing and the control channel watched.
 *
 *   const agent = await EdgeAgent.start({ config, log });
 *   await agent.publish('devices/<id>/telemetry', payload);   // durable, QoS 1
 *   const code = await agent.exited;                           // 0 after stop() or a wipe
 */
import type { SecureContext } from 'node:tls';
import type { Logger } from 'pino';
import { controlTopic, verifyControlCommand } from '../protocol/control.js';
import { EdgeidError, isEdgeidError } from '../protocol/errors/index.js';
import type { AgentConfig } from './config.js';
import { ControlMemory } from './control-memory.js';
import { continueEnrollment, renewCertificate, type IdentityDeps } from './identity.js';
import { MqttSession, type MqttState } from './mqtt-session.js';
import { Outbox, type OutboxMessage, type OutboxStats } from './outbox.js';
import { PostureCollector } from './posture.js';
import { backoffDelay, renewalTime } from './schedule.js';
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
  mqtt: { state: MqttState | 'disabled'; url: string | null; serial: string | null; connectedAt: string | null; connects: number; lastError: string | null };
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
  private renewTimer: NodeJS.Timeout | null = null;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private nextRenewal: Date | null = null;
  private failures = 0;
  private renewing: Promise<void> | null = null;
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
    this.deps = { store, tpm, posture: new PostureCollector({ config: opts.config }), log: opts.log, config: opts.config };
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
      });
      this.mqtt.on('connect', (serial: string) => void this.onMqttConnect(serial));
      this.mqtt.on('close', () => void this.writeStatus());
      this.mqtt.on('message', (topic: string, payload: Buffer) => {
        this.onMessage(topic, payload).catch((e: unknown) => this.log.error({ err: (e as Error).message, topic }, 'control message handling failed'));
      });
    } else {
      this.log.warn('no MQTT broker URL (config mqtt.url or the server): running without MQTT');
    }

    const cert = this.state.certificate;
    const valid = cert && Date.parse(cert.notAfter) > Date.now() + 1000;
    if (valid) {
      if (this.mqtt) await this.connectWithCurrent();
      this.schedule(renewalTime({ notBefore: new Date(cert.notBefore), notAfter: new Date(cert.notAfter) }, this.renewAfter()), 'schedule');
    } else {
      this.schedule(new Date(), cert ? 'expired' : 'startup');
    }
    if (!this.mqtt && this.state.previousSessionKey !== undefined) await this.dropPreviousKey();
    const hb = this.opts.config.mqtt.heartbeatSeconds;
    if (hb > 0) {
      this.heartbeatTimer = setInterval(() => this.heartbeat(), hb * 1000);
      this.heartbeatTimer.unref?.();
    }
    await this.writeStatus();
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
    return this.runRenewal(reason);
  }

  status(): AgentStatus {
    const cert = this.state.certificate;
    const left = cert ? Math.round((Date.parse(cert.notAfter) - Date.now()) / 1000) : 0;
    const m = this.mqtt?.info();
    return {
      running: !this.stopping,
      pid: process.pid,
      agentVersion: AGENT_VERSION,
      device: this.state.device ?? null,
      server: this.state.server.url,
      certificate: cert ? { serial: cert.serial, notBefore: cert.notBefore, notAfter: cert.notAfter, secondsLeft: Math.max(0, left), expired: left <= 0 } : null,
      renewal: {
        next: this.nextRenewal?.toISOString() ?? null,
        consecutiveFailures: this.failures,
        last: this.state.lastRenewal ?? null,
        total: this.state.renewals,
        tpmCommandsPerRenewal: this.state.tpmCommandsPerRenewal ?? null,
      },
      mqtt: m ?? { state: 'disabled', url: null, serial: null, connectedAt: null, connects: 0, lastError: null },
      outbox: this.outbox.stats(),
      control: { ...this.control },
      posture: this.posture,
      updatedAt: new Date().toISOString(),
    };
  }

  /** Stops timers and the MQTT session, releases the state dir and (if it opened it) the TPM. */
  async stop(code = 0): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.renewTimer) clearTimeout(this.renewTimer);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    await this.renewing?.catch(() => {});
    await this.mqtt?.close();
    await this.writeStatus(false).catch(() => {});
    if (this.ownsTpm) await this.tpm.close().catch(() => {});
    await this.store.close();
    this.resolveExit(code);
  }

  // ---- renewal ----------------------------------------------------------------------------

  private schedule(at: Date, reason: string): void {
    if (this.stopping) return;
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.nextRenewal = at;
    const delay = Math.max(0, at.getTime() - Date.now());
    // setTimeout caps at ~24.8 days; re-arm for longer waits
    const step = Math.min(delay, 2 ** 31 - 1);
    this.renewTimer = setTimeout(() => {
      if (step < delay) return this.schedule(at, reason);
      void this.runRenewal(reason);
    }, step);
    this.log.debug({ at: at.toISOString(), reason }, 'renewal scheduled');
  }

  private runRenewal(reason: string): Promise<void> {
    if (this.renewing) return this.renewing;
    if (this.stopping) return Promise.resolve();
    const cert = this.state.certificate;
    const why = cert && Date.parse(cert.notAfter) <= Date.now() ? 'expired' : reason;
    this.renewing = this.renewOnce(why).finally(() => {
      this.renewing = null;
    });
    return this.renewing;
  }

  private async renewOnce(reason: string): Promise<void> {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    const attempt = this.failures + 1;
    this.log.info({ reason, attempt }, 'renewal started');
    try {
      const outcome = await renewCertificate(this.deps, this.state, reason);
      this.state = outcome.state;
      this.failures = 0;
      this.posture = { ...(await this.deps.posture.claims()) };
      const cert = this.state.certificate!;
      if (this.mqtt && !this.stopping) await this.connectWithCurrent();
      else await this.dropPreviousKey();
      this.schedule(renewalTime({ notBefore: new Date(cert.notBefore), notAfter: new Date(cert.notAfter) }, this.renewAfter()), 'schedule');
    } catch (e) {
      this.failures++;
      const code = isEdgeidError(e) ? e.code : 'renewal_failed';
      const message = (e as Error).message;
      const delay = backoffDelay(this.failures, this.opts.config.renewal.backoff);
      this.log.warn({ reason, code, attempt, retryInMs: delay, err: message }, 'renewal failed');
      this.state = { ...this.state, lastRenewal: { at: new Date().toISOString(), ok: false, reason, code, message } };
      await this.store.save(this.state).catch((err: Error) => this.log.error({ err: err.message }, 'cannot save state'));
      this.schedule(new Date(Date.now() + delay), 'retry');
    }
    await this.writeStatus();
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
    await this.mqtt!.switchCredentials({ secureContext: ctx, serial: cert.serial });
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
    const root = this.state.server.rootPem ?? '';
    const chain = this.state.certificate?.chain ?? [];
    return [root, ...chain].map((p) => p.trimEnd() + '\n').join('');
  }

  private async onMqttConnect(serial: string): Promise<void> {
    // R3: the new certificate is in use; the previous key can go.
    if (serial === this.state.certificate?.serial) await this.dropPreviousKey();
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
      at: new Date().toISOString(),
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
      this.control.lastIgnored = { at: new Date().toISOString(), code };
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
  async wipe(origin: string): Promise<void> {
    this.log.warn({ origin }, 'wiping the device identity');
    this.stopping = true;
    if (this.renewTimer) clearTimeout(this.renewTimer);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    await this.renewing?.catch(() => {});
    await this.mqtt?.close();
    if (this.tlsContext) this.releaseTls(this.tlsContext);
    this.tlsContext = null;
    const removed = await this.store.wipe();
    await flushLeftoverObjects(this.tpm).catch(() => 0);
    this.log.warn({ removed: removed.length }, 'identity wiped');
    if (this.ownsTpm) await this.tpm.close().catch(() => {});
    await this.store.close();
    this.resolveExit(0);
  }

  private async writeStatus(running = true): Promise<void> {
    if (this.stopping && running) return;
    const s = { ...this.status(), running };
    await writeFileAtomic(this.store.path(STATUS_FILE), JSON.stringify(s, null, 2) + '\n').catch(() => {});
  }
}
