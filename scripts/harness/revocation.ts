/**
 * Tools for the revocation and blast-radius tests and `scripts/bench revoke`:
 * - a deployment (deployment.ts) whose CRL reload can be held, so a test can look
 *   at the window between the broker's deleteClient and the broker restart that loads the CRL;
 * - a device's MQTT identity read from an agent state dir (certificate + TPM key blobs), and TLS
 *   contexts whose key is that TPM key, for scripted clients that act as the device (or as an
 *   attacker who owns it and copied its disk);
 * - certificates for the device's TPM key from another CA or already expired;
 * - a wide-view observer on the broker (a client of its own that may read every topic).
 */
import 'reflect-metadata';
import { KeyObject, X509Certificate, webcrypto } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import tls, { type SecureContext } from 'node:tls';
import * as x509 from '@peculiar/x509';
import mqtt, { type IPublishPacket, type MqttClient } from 'mqtt';
// ca.js also points @peculiar/x509 at node's WebCrypto.
import { CertificateAuthority } from '../../enroll-server/ca/ca.js';
import { DynsecClient } from '../../enroll-server/broker/dynsec.js';
import type { Tpm, KeyBlob } from '../../agent/tpm/index.js';
import { brokerServerConfig, startDeployment, type Deployment, type DeploymentOptions } from './deployment.js';
import { tmpDir } from './fs.js';
import { waitForPort } from './ports.js';
import type { ServerProcess } from './server.js';
import { waitFor } from './wait.js';

// ---- deployment with a holdable CRL reload ------------------------------------------------

export interface RevocationDeployment {
  readonly server: ServerProcess;
  readonly broker: Deployment['broker'];
  readonly brokerDir: string;
  readonly dataDir: string;
  /** edgeid-admin against this server; returns stdout. */
  admin(args: string[]): Promise<string>;
  /** An admin API call over HTTPS (bearer token, pinned to the server's root), for precise timing. */
  adminApi<T = unknown>(method: 'GET' | 'POST', p: string, body?: unknown): Promise<{ status: number; body: T }>;
  /**
   * From now on the server's CRL reload command (the broker restart) waits until releaseReload().
   * The server keeps waiting inside the revoke call, so release within its reload timeout (30 s).
   */
  holdReload(): Promise<void>;
  releaseReload(): Promise<void>;
  /** A dynsec connection with the test's own identity (Deployment.dynsec): list clients, read topics. */
  dynsec(): Promise<DynsecClient>;
  serviceIdentity: Deployment['serviceIdentity'];
  /** PEM of the edgeid root + issuing CA: what the broker trusts and devices check the broker against. */
  caBundle(): Promise<string>;
  /** Resolves once the broker restarted more often than `startsBefore` and accepts connections again. */
  brokerRestarted(startsBefore: number, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

/**
 * startDeployment, then the server restarted with a reload command that first waits while a
 * hold file exists (the rest of the deployment is unchanged: the supervised Mosquitto restarts).
 */
export async function startRevocationDeployment(
  serverConfig: Record<string, unknown> = {},
  o: DeploymentOptions = {},
): Promise<RevocationDeployment> {
  const inner = await startDeployment(serverConfig, o);
  const holdDir = await tmpDir('edgeid-reload-hold-');
  const holdFile = path.join(holdDir, 'hold');
  try {
    const base = brokerServerConfig(inner.broker, inner.brokerDir, o);
    const [sh, flag, kill] = base.reloadCommand as string[];
    if (sh !== 'sh' || flag !== '-c' || !kill) throw new Error(`unexpected broker reload command ${JSON.stringify(base.reloadCommand)}`);
    const reloadCommand = ['sh', '-c', `while [ -e '${holdFile}' ]; do sleep 0.02; done; ${kill}`];
    const url = inner.broker.url;
    const config = {
      ...serverConfig,
      mqtt: { url },
      broker: { ...base, reloadCommand },
    };
    await inner.restartServer(config);
  } catch (e) {
    await inner.stop();
    await rm(holdDir, { recursive: true, force: true });
    throw e;
  }
  const srv = inner.server;
  const d: RevocationDeployment = {
    server: srv,
    broker: inner.broker,
    brokerDir: inner.brokerDir,
    dataDir: inner.dataDir,
    admin: (args) => inner.admin(args),
    adminApi: (method, p, body) => srv.admin(method, p, body),
    holdReload: () => writeFile(holdFile, ''),
    releaseReload: () => rm(holdFile, { force: true }),
    dynsec: () => inner.dynsec(),
    serviceIdentity: (cn, rights) => inner.serviceIdentity(cn, rights),
    caBundle: () => readFile(path.join(inner.brokerDir, 'ca.pem'), 'utf8'),
    async brokerRestarted(startsBefore, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      await waitFor('the broker to restart', () => inner.broker.starts() > startsBefore, { timeoutMs, intervalMs: 20 });
      await waitForPort(inner.broker.port, Math.max(1000, deadline - Date.now()));
    },
    async stop() {
      await rm(holdFile, { force: true });
      await inner.stop();
      await rm(holdDir, { recursive: true, force: true });
    },
  };
  return d;
}

// ---- a device's MQTT identity ----------------------------------------------------------------

export interface DeviceIdentity {
  deviceId: string;
  serial: string;
  /** PEM: the leaf, then the issuing CA (what the device presents). */
  certPem: string;
  /** PEM: what the device trusts for the broker (the edgeid root and chain). */
  trustPem: string;
  /** The session key's blobs (TPM2B_PUBLIC / TPM2B_PRIVATE, useless off this TPM). */
  key: KeyBlob;
  /** SPKI (DER) of the TPM session key. */
  spki: Buffer;
}

interface StateFile {
  server: { rootPem?: string };
  device?: { id: string };
  certificate?: { pem: string; chain: string[]; serial: string; sessionKey: number };
}

/** Reads the current identity from an agent state dir (as an attacker with a copy of the disk would). */
export async function readDeviceIdentity(stateDir: string): Promise<DeviceIdentity> {
  const s = JSON.parse(await readFile(path.join(stateDir, 'state.json'), 'utf8')) as StateFile;
  if (!s.device || !s.certificate) throw new Error(`${stateDir} holds no enrolled identity`);
  const c = s.certificate;
  const pems = (list: string[]) => list.map((p) => p.trimEnd() + '\n').join('');
  return {
    deviceId: s.device.id,
    serial: c.serial,
    certPem: pems([c.pem, ...c.chain.slice(0, -1)]),
    trustPem: pems([s.server.rootPem ?? '', ...c.chain]),
    key: {
      public: await readFile(path.join(stateDir, `session-${c.sessionKey}.pub`)),
      private: await readFile(path.join(stateDir, `session-${c.sessionKey}.priv`)),
    },
    spki: Buffer.from(new X509Certificate(c.pem).publicKey.export({ type: 'spki', format: 'der' })),
  };
}

/** A TLS client context presenting `certPem` with the private key in the TPM (the device's key). */
export function tpmTlsContext(tpm: Tpm, id: DeviceIdentity, certPem = id.certPem): Promise<SecureContext> {
  return tpm.tlsSecureContext({ key: id.key, certPem, caPem: id.trustPem, minVersion: 'TLSv1.2' });
}

export type HandshakeResult = { ok: true; connack: number } | { ok: false; code: string; message: string };

/** CONNACK return code 1, "unacceptable protocol version": the probe's verdict for an accepted certificate. */
export const PROBE_ACCEPTED_CONNACK = 1;

/**
 * A CONNECT (clean session, keepalive 10 s) with this client id and a protocol level no broker
 * speaks (0x7f): the broker answers CONNACK 1 once it took the client certificate, before it
 * authenticates the client or looks at sessions. A probe with a valid level would be named by the
 * certificate's CN (`use_username_as_clientid`) and take over the device's live session.
 */
function mqttConnectPacket(clientId: string): Buffer {
  const id = Buffer.from(clientId, 'utf8');
  const body = Buffer.concat([
    Buffer.from([0, 4]),
    Buffer.from('MQTT'),
    Buffer.from([0x7f, 0x02, 0, 10]),
    Buffer.from([id.length >> 8, id.length & 0xff]),
    id,
  ]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

/**
 * A fresh TLS connection to the broker with this client context, followed by an MQTT CONNECT:
 * says whether the broker accepted the client certificate. The broker negotiates TLS 1.3
 * (Mosquitto 2.0's `tls_version` is a minimum), where the client's handshake completes before the
 * server has checked the client certificate; the broker's verdict is either an alert (refused) or,
 * once it took the certificate, its answer to CONNECT (CONNACK 1, PROBE_ACCEPTED_CONNACK: the
 * probe never opens an MQTT session, so it never ends the device's).
 */
export function tlsHandshake(port: number, secureContext: SecureContext, timeoutMs = 10_000): Promise<HandshakeResult> {
  return new Promise((resolve) => {
    const sock = tls.connect({ host: '127.0.0.1', port, secureContext, servername: 'localhost' });
    const timer = setTimeout(() => finish({ ok: false, code: 'TIMEOUT', message: `no verdict within ${timeoutMs} ms` }), timeoutMs);
    let done = false;
    function finish(r: HandshakeResult): void {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    }
    sock.once('secureConnect', () => sock.write(mqttConnectPacket(`edgeid-probe-${Math.random().toString(16).slice(2, 10)}`)));
    sock.on('data', (b: Buffer) => {
      if (b[0] === 0x20 && b.length >= 4) finish({ ok: true, connack: b[3]! });
      else finish({ ok: false, code: 'NOT_CONNACK', message: `unexpected first packet 0x${b.toString('hex').slice(0, 16)}` });
    });
    sock.once('error', (e: NodeJS.ErrnoException) => finish({ ok: false, code: e.code ?? 'ERROR', message: e.message }));
    sock.once('close', () => finish({ ok: false, code: 'CLOSED', message: 'the broker closed the connection without a verdict' }));
  });
}

/** An MQTT 5 client as the device (TPM key), with no reconnects: a closed session stays closed. */
export function connectAsDevice(
  url: string,
  secureContext: SecureContext,
  clientId: string,
  opts: { clean?: boolean } = {},
): Promise<MqttClient> {
  return mqtt.connectAsync(url, {
    secureContext,
    clientId,
    protocolVersion: 5,
    clean: opts.clean ?? true,
    reconnectPeriod: 0,
    connectTimeout: 10_000,
    rejectUnauthorized: true,
  } as mqtt.IClientOptions);
}

/** Reason code of a QoS 1 publish: 0 when the broker took it, 135 when it refused it (MQTT 5). */
export async function publishReason(client: MqttClient, topic: string, payload: string): Promise<number> {
  try {
    const packet = await client.publishAsync(topic, payload, { qos: 1 });
    return (packet as { reasonCode?: number } | undefined)?.reasonCode ?? 0;
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'number') return code;
    throw e;
  }
}

/** Granted QoS per filter (0–2), or the refusal reason code (128+, 135 = not authorized). */
export async function subscribeReasons(client: MqttClient, filters: string[]): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const f of filters) {
    try {
      const granted = await client.subscribeAsync(f, { qos: 1 });
      out.set(f, granted[0]?.qos ?? -1);
    } catch (e) {
      // mqtt.js rejects a refused subscription; the SUBACK's reason code is on the error
      const code = (e as { code?: unknown }).code ?? (e as { packet?: { granted?: number[] } }).packet?.granted?.[0];
      if (typeof code !== 'number') throw e;
      out.set(f, code);
    }
  }
  return out;
}

// ---- certificates for the device's TPM key that the broker must refuse ----------------------

const EC_ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/** A certificate for `spki` with CN `cn` from a freshly made CA that edgeid never heard of. */
export async function foreignCaCertificate(cn: string, spki: Buffer): Promise<string> {
  const keys = (await webcrypto.subtle.generateKey(EC_ALG, false, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const now = Date.now();
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=edgeid Root CA, O=edgeid',
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 86400_000),
    keys,
    signingAlgorithm: EC_ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
    ],
  });
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: '02',
    subject: `CN=${cn}`,
    issuer: ca.subject,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 3600_000),
    publicKey: spki,
    signingKey: keys.privateKey,
    signingAlgorithm: EC_ALG,
    extensions: [
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false),
    ],
  });
  return leaf.toString('pem') + '\n' + ca.toString('pem') + '\n';
}

/** The edgeid CA of a server data dir, opened in-process (its real keys in data/ca). */
export function edgeidCa(dataDir: string): Promise<CertificateAuthority> {
  return CertificateAuthority.open({ dir: path.join(dataDir, 'ca'), hostnames: [] });
}

/**
 * TLS options of a device whose certificate comes from the server's CA (what enrollment issues, 1 h)
 * for a fresh software key: for broker tests where the broker, not the TPM, is under test.
 */
export async function softwareDeviceTls(dataDir: string, deviceId: string): Promise<{ ca: string; cert: string; key: string }> {
  const ca = await edgeidCa(dataDir);
  const alg = { name: 'ECDSA', namedCurve: 'P-256' } as const;
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const spki = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
  const issued = await ca.issueDevice({ deviceId, zone: 'default', spki, lifetimeSeconds: 3600, crlUrl: 'https://127.0.0.1/v1/crl' });
  return {
    ca: ca.chainPem.join(''),
    cert: issued.pem + ca.chainPem[0]!,
    key: KeyObject.from(keys.privateKey).export({ type: 'pkcs8', format: 'pem' }) as string,
  };
}

/** A device certificate from the real edgeid CA whose notAfter passed `agoSeconds` ago (PEM leaf + issuing CA). */
export async function expiredDeviceCertificate(dataDir: string, deviceId: string, spki: Buffer, agoSeconds = 30): Promise<string> {
  const ca = await edgeidCa(dataDir);
  // issueWith backdates notBefore by 60 s, so a lifetime of -agoSeconds (< 60) gives a valid, expired window.
  const c = await ca.issueDevice({ deviceId, zone: 'default', spki, lifetimeSeconds: -agoSeconds, crlUrl: 'https://127.0.0.1/v1/crl' });
  return c.pem + ca.chainPem[0]!;
}

// ---- an observer that may read every topic ---------------------------------------------------

export interface Observer {
  client: MqttClient;
  messages: { topic: string; payload: string; packet: IPublishPacket }[];
  close(): Promise<void>;
}

const OBSERVER_CN = 'edgeid-test-observer';
let observers = 0;

/**
 * Connects a client that may subscribe to and receive every topic (`#`; MQTT's `#` never matches
 * `$`-topics) and publish under `edgeid-test/` (marker round trips). It has an identity of its own
 * (Deployment.serviceIdentity: CN edgeid-test-observer-N, a software key from the edgeid CA: it is
 * the test's eyes, not a device), so it never shares a client id with the server or another tool.
 */
export async function wideObserver(d: RevocationDeployment, topics: string[] = ['#']): Promise<Observer> {
  const { tls: creds } = await d.serviceIdentity(`${OBSERVER_CN}-${++observers}`, {
    acls: [
      { acltype: 'subscribePattern', topic: '#', allow: true, priority: 0 },
      { acltype: 'publishClientReceive', topic: '#', allow: true, priority: 0 },
      { acltype: 'publishClientSend', topic: 'edgeid-test/#', allow: true, priority: 0 },
    ],
  });
  const client = await mqtt.connectAsync(d.broker.url, { ...creds, protocolVersion: 5, reconnectPeriod: 300 });
  const messages: Observer['messages'] = [];
  client.on('message', (topic, payload, packet) => messages.push({ topic, payload: payload.toString(), packet }));
  await client.subscribeAsync(topics, { qos: 1 });
  return { client, messages, close: () => client.endAsync(true) };
}
