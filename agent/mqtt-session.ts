/**
 * The device's MQTT session: mqtt.js v5 over TLS with a client certificate whose
 * private key is in the TPM. The TLS material comes as a ready `tls.SecureContext` (built by the
 * TPM addon, which installs the TPM-backed key); this module never sees a private key.
 *
 * - Reconnection is this module's, not mqtt.js's: mqtt.js retries at a fixed `reconnectPeriod`
 *   (a setInterval, no jitter), so it runs with reconnectPeriod 0 and every reconnect is scheduled
 *   here with exponential backoff, jitter and a cap (schedule.ts reconnectDelay), calling
 *   `client.reconnect()` with mqtt.js' own stores so nothing in flight is forgotten. Each attempt
 *   is a TLS handshake signed by the TPM: a fleet must not hammer the broker or its TPMs in step.
 * - A refusal of the certificate (a TLS alert about it, or CONNACK "not authorized"/"bad
 *   credentials"/"banned") or an expired certificate suspends the session: no more attempts with
 *   this certificate; 'suspended' tells the agent, whose next renewal brings new credentials
 *   (`switchCredentials` resumes).
 * - Every application message goes through the durable Outbox first and is handed to mqtt.js
 *   (QoS 1) only while connected; the outbox entry is removed on PUBACK. On every (re)connect,
 *   whatever is still pending is sent again: at least once, with the id in the MQTT 5 user
 *   property `edgeid-msg-id` for de-duplication.
 * - A message larger than the broker's Maximum Packet Size (CONNACK, MQTT 5 §3.2.2.3.6) is never
 *   sent: the broker would end the connection (DISCONNECT 0x95) and every reconnect would resend
 *   it. It is dropped from the outbox with a warning and counted (outbox `tooLarge`).
 * - `switchCredentials` (after a renewal) closes the current client and opens a new one with the
 *   new certificate; messages published in between wait in the outbox.
 */
import { EventEmitter } from 'node:events';
import type { SecureContext } from 'node:tls';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import type { Logger } from 'pino';
import type { Outbox, OutboxMessage } from './outbox.js';
import { reconnectDelay, systemClock, type Clock } from './schedule.js';

export const MSG_ID_PROPERTY = 'edgeid-msg-id';

export type MqttState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'switching' | 'suspended' | 'closed';

export interface MqttCredentials {
  secureContext: SecureContext;
  /** Serial of the certificate in the context (for logs and status). */
  serial: string;
  /** Agent-clock time the certificate expires: no attempt is made with it afterwards. */
  expiresAt?: number;
}

export interface MqttSessionOptions {
  url: string;
  clientId: string;
  /** Topics to subscribe (QoS 1) on every connect, e.g. the control topic. */
  subscriptions: string[];
  outbox: Outbox;
  log: Logger;
  keepaliveSeconds?: number;
  /** First reconnect delay (backoff base); delays double per failed attempt, with jitter. */
  reconnectPeriodMs?: number;
  /** Upper bound of a reconnect delay (default 5 min). */
  reconnectCapMs?: number;
  /**
   * The first reconnect after the broker closed a live connection waits a uniformly random time
   * in [0, reconnectSpreadMs] (default 10 × reconnectPeriodMs), so a fleet does not come back in
   * the same second after a broker restart (schedule.ts reconnectDelay).
   */
  reconnectSpreadMs?: number;
  connectTimeoutMs?: number;
  clock?: Clock;
  /** How long the broker keeps the session (subscriptions, queued QoS 1 messages) while offline. */
  sessionExpirySeconds?: number;
}

interface Generation {
  client: MqttClient;
  serial: string;
  expiresAt: number | undefined;
  /** Outbox ids handed to this client and not yet acknowledged or failed. */
  inflight: Set<string>;
}

/**
 * Events: 'connect' (serial), 'close', 'message' (topic, payload, packet), 'fault' (err; never 'error', so an unobserved failure cannot throw),
 * 'suspended' (reason: 'refused' | 'expired', detail).
 */

/** TLS alerts by which a broker refuses our certificate (RFC 8446 §6.2), as OpenSSL names them. */
const CERT_REFUSED_ALERT =
  /ALERT_(CERTIFICATE_(REVOKED|EXPIRED|UNKNOWN|REQUIRED)|BAD_CERTIFICATE|UNSUPPORTED_CERTIFICATE|UNKNOWN_CA|ACCESS_DENIED)/i;
/** CONNACK reason codes of refused credentials: MQTT 5 §3.2.2.2 (0x86, 0x87, 0x8A, 0x8C); MQTT 3.1.1 §3.2.2.3 (4, 5). */
const CONNACK_REFUSED = new Set([0x86, 0x87, 0x8a, 0x8c]);

/** Whether a client error says the broker refuses this certificate (not a network failure). */
export function isCredentialRefusal(err: Error & { code?: unknown }): boolean {
  if (typeof err.code === 'number')
    return CONNACK_REFUSED.has(err.code) || /^Connection refused: (Bad username|Not authorized)/i.test(err.message);
  return CERT_REFUSED_ALERT.test(String(err.code ?? '')) || CERT_REFUSED_ALERT.test(err.message.replace(/ /g, '_'));
}
/** Bytes of a Variable Byte Integer (MQTT 5 §1.5.5). */
function varIntBytes(n: number): number {
  return n < 128 ? 1 : n < 16_384 ? 2 : n < 2_097_152 ? 3 : 4;
}

/**
 * Size of the QoS 1 PUBLISH that `send` writes, the whole packet as Maximum Packet Size counts it
 * (MQTT 5 §3.3): fixed header, topic, packet id, properties (one user property with the id), payload.
 */
export function publishPacketBytes(topic: string, payloadBytes: number, msgId: string): number {
  const props = 1 + 2 + Buffer.byteLength(MSG_ID_PROPERTY) + 2 + Buffer.byteLength(msgId);
  const remaining = 2 + Buffer.byteLength(topic) + 2 + varIntBytes(props) + props + payloadBytes;
  return 1 + varIntBytes(remaining) + remaining;
}

export class MqttSession extends EventEmitter {
  private gen: Generation | null = null;
  private stateValue: MqttState = 'idle';
  private lastError: string | null = null;
  private connectedAt: Date | null = null;
  private connects = 0;
  /** Connection attempts (TLS handshakes) started, for status and tests. */
  private attempts = 0;
  /** Failed attempts since the last successful connect (the backoff exponent). */
  private failures = 0;
  private reconnectTimer: unknown = null;
  private readonly clock: Clock;

  constructor(private readonly opts: MqttSessionOptions) {
    super();
    this.clock = opts.clock ?? systemClock;
  }

  get state(): MqttState {
    return this.stateValue;
  }

  /** Serial of the certificate of the current client. */
  get serial(): string | null {
    return this.gen?.serial ?? null;
  }

  info(): {
    state: MqttState;
    url: string;
    serial: string | null;
    connectedAt: string | null;
    connects: number;
    attempts: number;
    lastError: string | null;
  } {
    return {
      state: this.stateValue,
      url: this.opts.url,
      serial: this.serial,
      connectedAt: this.connectedAt?.toISOString() ?? null,
      connects: this.connects,
      attempts: this.attempts,
      lastError: this.lastError,
    };
  }

  /** Starts a client with these credentials (closing the current one first, if any). */
  async switchCredentials(creds: MqttCredentials): Promise<void> {
    this.cancelReconnect();
    const old = this.gen;
    if (old) {
      this.stateValue = 'switching';
      this.gen = null;
      await this.endClient(old);
    }
    this.startClient(creds);
  }

  /** Persists the message, then sends it if connected (else it waits in the outbox). */
  async publish(topic: string, payload: Buffer | string): Promise<OutboxMessage> {
    const msg = await this.opts.outbox.add(topic, payload);
    const g = this.gen;
    if (g && g.client.connected) this.send(g, msg);
    return msg;
  }

  /** QoS 1 publish outside the outbox (heartbeats: stale ones are worthless after an outage). */
  publishVolatile(topic: string, payload: Buffer | string): boolean {
    const g = this.gen;
    if (!g || !g.client.connected) return false;
    g.client.publish(topic, payload, { qos: 1 }, (err) => {
      if (err) this.opts.log.debug({ err: err.message, topic }, 'heartbeat not delivered');
    });
    return true;
  }

  async close(): Promise<void> {
    this.cancelReconnect();
    const g = this.gen;
    this.gen = null;
    this.stateValue = 'closed';
    if (g) await this.endClient(g);
  }

  private startClient(creds: MqttCredentials): void {
    const options: IClientOptions & { secureContext: SecureContext } = {
      clientId: this.opts.clientId,
      protocolVersion: 5,
      // A persistent session: QoS 1 control commands sent while the device reconnects (e.g. for a
      // certificate switch) are queued by the broker and delivered, not dropped.
      clean: false,
      properties: { sessionExpiryInterval: this.opts.sessionExpirySeconds ?? 3600 },
      keepalive: this.opts.keepaliveSeconds ?? 30,
      reconnectPeriod: 0, // reconnects are scheduled by scheduleReconnect (backoff with jitter)
      connectTimeout: this.opts.connectTimeoutMs ?? 15_000,
      rejectUnauthorized: true,
      secureContext: creds.secureContext,
      resubscribe: false, // we subscribe on every 'connect' ourselves
      // mqtt-packet's default write cache is 65,536 pre-built 2-byte Buffers (~6.5 MB of heap, a
      // third of the agent's RSS goal); encoding a packet id or topic length on the fly costs nothing.
      writeCache: false,
    };
    if (creds.expiresAt !== undefined && creds.expiresAt <= this.clock.now()) {
      // never start a handshake with a certificate known to be expired
      this.gen = null;
      this.suspend('expired', `certificate ${creds.serial} expired at ${new Date(creds.expiresAt).toISOString()} (agent clock)`);
      return;
    }
    this.attempts++;
    const client = mqtt.connect(this.opts.url, options);
    const g: Generation = { client, serial: creds.serial, expiresAt: creds.expiresAt, inflight: new Set() };
    this.gen = g;
    this.stateValue = 'connecting';

    client.on('connect', () => {
      if (this.gen !== g) return;
      this.stateValue = 'connected';
      this.connectedAt = new Date();
      this.connects++;
      this.failures = 0;
      this.lastError = null;
      this.opts.log.info({ url: this.opts.url, serial: g.serial }, 'mqtt connected');
      if (this.opts.subscriptions.length > 0) {
        client.subscribe(this.opts.subscriptions, { qos: 1 }, (err, granted) => {
          if (err) this.opts.log.warn({ err: err.message }, 'mqtt subscribe failed');
          else if (granted?.some((x) => x.qos >= 128)) this.opts.log.warn({ granted }, 'mqtt subscription refused by the broker');
        });
      }
      // mqtt.js resends what it already holds; hand over only what it never had.
      for (const m of this.opts.outbox.pending()) if (!g.inflight.has(m.id)) this.send(g, m);
      this.emit('connect', g.serial);
    });
    client.on('close', () => {
      if (this.gen !== g || this.stateValue === 'suspended') return;
      if (this.stateValue === 'connected') this.opts.log.warn({ url: this.opts.url }, 'mqtt connection closed');
      const wasConnected = this.stateValue === 'connected';
      this.stateValue = 'reconnecting';
      this.emit('close');
      this.scheduleReconnect(g, wasConnected);
    });
    client.on('error', (err) => {
      if (this.gen !== g) return;
      this.lastError = err.message;
      const code = (err as NodeJS.ErrnoException).code;
      this.opts.log.warn({ err: err.message, code }, 'mqtt error');
      this.emit('fault', err);
      if (isCredentialRefusal(err as Error & { code?: unknown })) {
        this.suspend('refused', `the broker refuses certificate ${g.serial}: ${err.message}`);
        g.client.end(true);
      }
    });
    client.on('message', (topic: string, payload: Buffer, packet: IPublishPacket) => {
      if (this.gen !== g) return;
      this.emit('message', topic, payload, packet);
    });
  }

  /** The next attempt after a failed one: backoff with jitter and a cap; never with an expired certificate. */
  private scheduleReconnect(g: Generation, afterConnected = false): void {
    this.cancelReconnect();
    this.failures++;
    const baseMs = this.opts.reconnectPeriodMs ?? 1000;
    const delay = reconnectDelay(this.failures, afterConnected, {
      baseMs,
      capMs: this.opts.reconnectCapMs ?? 5 * 60_000,
      factor: 2,
      spreadMs: this.opts.reconnectSpreadMs ?? 10 * baseMs,
    });
    this.reconnectTimer = this.clock.setTimeout(() => {
      this.reconnectTimer = null;
      if (this.gen !== g || this.stateValue === 'suspended' || this.stateValue === 'closed') return;
      if (g.expiresAt !== undefined && g.expiresAt <= this.clock.now()) {
        this.suspend('expired', `certificate ${g.serial} expired (agent clock)`);
        g.client.end(true);
        return;
      }
      this.attempts++;
      this.stateValue = 'connecting';
      // mqtt.js' reconnect() replaces its message stores unless given: keep them (QoS 1 in flight)
      g.client.reconnect({ incomingStore: g.client.incomingStore, outgoingStore: g.client.outgoingStore });
    }, delay);
    this.opts.log.debug({ inMs: delay, failures: this.failures }, 'mqtt reconnect scheduled');
  }

  private cancelReconnect(): void {
    if (this.reconnectTimer !== null) this.clock.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  private suspend(reason: 'refused' | 'expired', detail: string): void {
    this.cancelReconnect();
    this.failures++;
    this.stateValue = 'suspended';
    this.lastError = detail;
    this.opts.log.warn({ reason, detail }, 'mqtt suspended until the next renewal');
    this.emit('suspended', reason, detail, this.failures);
  }

  private send(g: Generation, m: OutboxMessage): void {
    const limit = g.client.serverProperties?.maximumPacketSize;
    if (limit !== undefined) {
      const size = publishPacketBytes(m.topic, m.payload.length, m.id);
      if (size > limit) {
        this.opts.log.warn(
          { id: m.id, topic: m.topic, packetBytes: size, maximumPacketSize: limit },
          'mqtt message larger than the broker accepts: dropped',
        );
        this.opts.outbox.dropTooLarge(m.id).catch((e: Error) => this.opts.log.warn({ err: e.message }, 'outbox drop failed'));
        return;
      }
    }
    g.inflight.add(m.id);
    g.client.publish(m.topic, m.payload, { qos: 1, properties: { userProperties: { [MSG_ID_PROPERTY]: m.id } } }, (err) => {
      g.inflight.delete(m.id);
      if (err) {
        // stays in the outbox; sent again on the next connect
        this.opts.log.debug({ err: err.message, id: m.id }, 'mqtt publish not acknowledged');
        return;
      }
      this.opts.outbox.ack(m.id).catch((e: Error) => this.opts.log.warn({ err: e.message }, 'outbox ack failed'));
    });
  }

  /**
   * Ends a client: graceful (waits for outstanding PUBACKs) for up to 2 s, then forced. A client
   * that is not connected (broker gone, network cut, suspended, an attempt hanging in a blackhole)
   * has nothing to wait for: a graceful end would queue a DISCONNECT on a dead stream and wait for a
   * close that already happened, delaying the next session by the whole 2 s.
   */
  private async endClient(g: Generation): Promise<void> {
    if (!g.client.connected) g.client.end(true);
    else await this.endGracefully(g);
    g.client.removeAllListeners('message');
    g.inflight.clear();
  }

  private endGracefully(g: Generation): Promise<void> {
    return new Promise<void>((resolve) => {
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        g.client.end(true, {}, () => finish());
        setTimeout(finish, 500);
      }, 2000);
      g.client.end(false, {}, () => finish());
    });
  }
}
