/**
 * A crowd of devices for broker-scale tests: rows in the server's inventory like enrolled devices,
 * each with a real certificate from the server's edgeid CA for a software P-256 key (no TPM: the
 * broker only sees TLS), and MQTT clients that connect as them. Their reconnects after a lost
 * session follow the agent's policy (agent/schedule.ts reconnectDelay), so a broker restart
 * measures what a fleet of agents would do.
 */
import { generateKeyPairSync, createHash, randomBytes } from 'node:crypto';
import pino from 'pino';
import mqtt, { type MqttClient } from 'mqtt';
import { reconnectDelay } from '../../agent/schedule.js';
import { loadConfig } from '../../enroll-server/config.js';
import { createServer } from '../../enroll-server/server.js';
import { createToken } from '../../enroll-server/services/tokens.js';
import type { DeviceRecord } from '../../enroll-server/store/store.js';
import { openEnrollmentSession } from './seed.js';

export interface CrowdIdentity {
  deviceId: string;
  serial: string;
  certPem: string;
  keyPem: string;
}

/**
 * Adds `n` active devices with certificates (1 day) to a server data dir, through the server's own
 * store and CA (the same writes enrollment makes). Run it while no server process uses the dir.
 */
export async function seedCrowd(dataDir: string, n: number, prefix = 'crowd'): Promise<CrowdIdentity[]> {
  const config = loadConfig({ argv: ['--data', dataDir, '--listen', '127.0.0.1:0'], env: {}, file: {} });
  const server = await createServer({ config, tls: false, logger: pino({ level: 'silent' }), housekeeping: false });
  const ctx = server.ctx;
  const out: CrowdIdentity[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const t = await createToken(ctx, { zone: 'default', owner: 'crowd', name: `${prefix}-${i}` }, { ip: '127.0.0.1', actor: 'admin' });
      const { sessionId, ekHash, now } = await openEnrollmentSession(ctx, t.id);
      const id = `dev-${randomBytes(8).toString('hex')}`;
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const spki = publicKey.export({ type: 'spki', format: 'der' });
      const cert = await ctx.ca.issueDevice({
        deviceId: id,
        zone: 'default',
        spki,
        lifetimeSeconds: 86400,
        crlUrl: 'https://127.0.0.1/v1/crl',
      });
      const device: DeviceRecord = {
        id,
        zone: 'default',
        owner: 'crowd',
        name: `${prefix}-${i}`,
        purpose: null,
        status: 'active',
        statusReason: null,
        ekHash,
        akPub: randomBytes(64),
        akName: randomBytes(34).toString('hex'),
        baseline: null,
        claims: null,
        baselineWindowUntil: null,
        enrolledBy: t.id,
        enrolledAt: now,
        retireBy: null,
        lastSeen: now,
        lastIp: '127.0.0.1',
        statusChangedAt: now,
      };
      const ok = await ctx.store.finishEnrollment({
        tokenId: t.id,
        sessionId,
        now,
        device,
        certificate: {
          serial: cert.serial,
          deviceId: id,
          notBefore: cert.notBefore.getTime(),
          notAfter: cert.notAfter.getTime(),
          spkiHash: createHash('sha256').update(spki).digest('hex'),
          issuedAt: now,
          revokedAt: null,
          reason: null,
        },
        nonce: { value: randomBytes(32).toString('base64'), deviceId: id, createdAt: now, expiresAt: now + 3_600_000, usedAt: null },
        keepNonces: 3,
        audit: {
          time: now,
          actor: 'device',
          event: 'enroll.finish',
          deviceId: id,
          ip: '127.0.0.1',
          outcome: 'ok',
          details: { tokenId: t.id, serial: cert.serial, zone: 'default' },
        },
      });
      if (ok !== true) throw new Error(`crowd: finishEnrollment said ${JSON.stringify(ok)}`);
      out.push({
        deviceId: id,
        serial: cert.serial,
        certPem: cert.pem + ctx.ca.chainPem[0]!,
        keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
      });
    }
  } finally {
    await server.close();
  }
  return out;
}

export interface CrowdMember {
  id: CrowdIdentity;
  client: MqttClient;
  /** Times its connection closed (any cause). */
  closes: number[];
  /** Times it (re)connected (CONNACK). */
  connects: number[];
  /** Whether it reconnects after a lost session (when the crowd has a reconnect policy). */
  reconnect: boolean;
  /** Times it started a reconnect attempt (a TLS handshake). */
  attempts: number[];
}

export interface Crowd {
  members: CrowdMember[];
  /** Members whose connection is up now. */
  connected(): number;
  close(): Promise<void>;
}

export interface CrowdOptions {
  url: string;
  caPem: string;
  /** Reconnect after a lost session like an agent (spread, base); default: no reconnects. */
  reconnect?: { baseMs: number; spreadMs: number; capMs?: number };
  /** Connections opened at once while the crowd starts. */
  parallel?: number;
}

/** Connects every identity (MQTT 5, clean session, client id = device id) and keeps count of closes and connects. */
export async function connectCrowd(ids: CrowdIdentity[], o: CrowdOptions): Promise<Crowd> {
  const members: CrowdMember[] = [];
  let stopped = false;
  const connectOne = async (id: CrowdIdentity): Promise<CrowdMember> => {
    const client = await mqtt.connectAsync(o.url, {
      cert: id.certPem,
      key: id.keyPem,
      ca: o.caPem,
      clientId: id.deviceId,
      protocolVersion: 5,
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: 30_000,
      keepalive: 60,
    });
    const m: CrowdMember = { id, client, closes: [], connects: [Date.now()], reconnect: true, attempts: [] };
    let failures = 0;
    let wasUp = true;
    client.on('connect', () => {
      m.connects.push(Date.now());
      failures = 0;
      wasUp = true;
    });
    client.on('error', () => undefined);
    client.on('close', () => {
      m.closes.push(Date.now());
      const r = o.reconnect;
      if (!r || stopped || !m.reconnect) return;
      failures++;
      const delay = reconnectDelay(failures, wasUp, { baseMs: r.baseMs, capMs: r.capMs ?? 60_000, factor: 2, spreadMs: r.spreadMs });
      wasUp = false;
      setTimeout(() => {
        if (stopped) return;
        m.attempts.push(Date.now());
        client.reconnect();
      }, delay).unref();
    });
    return m;
  };
  const queue = [...ids];
  const workers = Array.from({ length: Math.min(o.parallel ?? 20, queue.length) }, async () => {
    for (let id = queue.shift(); id; id = queue.shift()) members.push(await connectOne(id));
  });
  try {
    await Promise.all(workers);
  } catch (e) {
    stopped = true;
    await Promise.all(members.map((m) => m.client.endAsync(true).catch(() => undefined)));
    throw e;
  }
  return {
    members,
    connected: () => members.filter((m) => m.client.connected).length,
    async close() {
      stopped = true;
      await Promise.all(members.map((m) => m.client.endAsync(true).catch(() => undefined)));
    },
  };
}
