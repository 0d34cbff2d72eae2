/**
 * Outside review: broker edges a device (or a certificate without a dynsec client) could try.
 * Real server, real Mosquitto with the config `edgeid-admin broker config` renders, real TLS.
 * Each assertion is the safe outcome.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, webcrypto, KeyObject } from 'node:crypto';
import mqtt, { type IClientOptions, type IConnackPacket, type MqttClient } from 'mqtt';
import { MONITOR_ROLE } from '../../enroll-server/broker/dynsec.js';
import { startDeployment, type Deployment } from '../../scripts/harness/deployment.js';
import { edgeidCa, publishReason, subscribeReasons } from '../../scripts/harness/revocation.js';
import { waitFor } from '../../scripts/harness/wait.js';

type Tls = Pick<IClientOptions, 'ca' | 'cert' | 'key'>;

async function deviceTls(d: Deployment, deviceId: string): Promise<Tls> {
  const ca = await edgeidCa(d.dataDir);
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

const newDeviceId = () => `dev-${randomBytes(8).toString('hex')}`;

async function connect(
  t: import('node:test').TestContext,
  url: string,
  tls: Tls,
  clientId: string,
  extra: Partial<IClientOptions> = {},
): Promise<{ client: MqttClient; connack: IConnackPacket | null; error: unknown }> {
  const client = mqtt.connect(url, { ...tls, clientId, protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 10_000, clean: true, ...extra });
  t.after(() => client.endAsync(true));
  return new Promise((resolve) => {
    client.once('connect', (connack) => resolve({ client, connack, error: null }));
    client.once('error', (error) => resolve({ client, connack: null, error }));
    client.once('close', () => resolve({ client, connack: null, error: new Error('closed') }));
  });
}

test('a valid edgeid certificate without a dynsec client has no rights at all', async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  const B = newDeviceId();
  await (await d.dynsec()).provisionDevice(B);
  const X = newDeviceId(); // certificate from the CA, never provisioned (e.g. its client was deleted)
  const { client, connack } = await connect(t, d.broker.url, await deviceTls(d, X), X);
  if (connack === null) return; // refused at CONNECT: safe
  const subs = await subscribeReasons(client, ['#', 'devices/#', `edgeid/${B}/control`, `edgeid/${X}/control`, '$CONTROL/#', '$SYS/#']);
  for (const [f, code] of subs) assert.ok(code >= 128, `subscribe ${f} refused (got ${code})`);
  for (const topic of [`devices/${X}/state`, `devices/${B}/state`, `edgeid/${B}/control`, '$CONTROL/dynamic-security/v1'])
    assert.ok((await publishReason(client, topic, '{}')) >= 128, `publish ${topic} refused`);
});

test('a device can publish neither to a control topic (own or other) nor to $CONTROL, not even through its will', async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  const dyn = await d.dynsec();
  const A = newDeviceId();
  const B = newDeviceId();
  await dyn.provisionDevice(A);
  await dyn.provisionDevice(B);
  const tlsA = await deviceTls(d, A);
  const monitorId = await d.serviceIdentity('edgeid-review-monitor', { roles: [MONITOR_ROLE] });
  const { client: monitor } = await connect(t, d.broker.url, monitorId.tls, 'm');
  const seen: string[] = [];
  monitor.on('message', (topic, p) => seen.push(`${topic} ${p.toString()}`));
  await monitor.subscribeAsync(['devices/#', 'edgeid/+/control'], { qos: 1 });

  const { client: a } = await connect(t, d.broker.url, tlsA, A);
  for (const topic of [`edgeid/${B}/control`, `edgeid/${A}/control`, '$CONTROL/dynamic-security/v1', `devices/${B}/state`])
    assert.equal(await publishReason(a, topic, 'forged'), 135, `publish ${topic}`);
  assert.ok((await subscribeReasons(a, ['$SYS/#'])).get('$SYS/#')! >= 128, '$SYS refused');
  await a.endAsync();

  // Wills: one to B's control topic, one creating a dynsec admin client.
  const evil = `evil-${randomBytes(3).toString('hex')}`;
  const wills = [
    { topic: `edgeid/${B}/control`, payload: Buffer.from('will-forged'), qos: 1 as const, retain: false },
    {
      topic: '$CONTROL/dynamic-security/v1',
      payload: Buffer.from(JSON.stringify({ commands: [{ command: 'createClient', username: evil, roles: [{ rolename: 'edgeid-admin' }] }] })),
      qos: 1 as const,
      retain: false,
    },
  ];
  for (const will of wills) {
    const { client: w, connack } = await connect(t, d.broker.url, tlsA, A, { will });
    if (connack === null) continue; // refused at CONNECT: safe
    const before = d.broker.log().length;
    w.stream.destroy(); // no DISCONNECT: the broker sends the will
    await waitFor('the broker to drop A', () => /disconnect|closing|closed|Socket error/i.test(d.broker.log().slice(before)), 10_000).catch((e) => {
      console.log('BROKER LOG TAIL', d.broker.log().slice(-3000));
      throw e;
    });
  }
  // a round trip after the wills
  const { client: b } = await connect(t, d.broker.url, await deviceTls(d, B), B);
  const marker = `m-${randomBytes(4).toString('hex')}`;
  await b.publishAsync(`devices/${B}/state`, marker, { qos: 1 });
  await waitFor('marker at the monitor', () => seen.includes(`devices/${B}/state ${marker}`));
  assert.deepEqual(
    seen.filter((s) => s.startsWith('edgeid/')),
    [],
    'no control message was delivered',
  );
  assert.ok(!(await dyn.listClients()).includes(evil), 'no dynsec client was created by a will');
});

test('one device cannot make the broker hold an unbounded message (no max_packet_size / message_size_limit)', async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  const A = newDeviceId();
  await (await d.dynsec()).provisionDevice(A);
  const { client: a } = await connect(t, d.broker.url, await deviceTls(d, A), A);
  // 64 MiB, 4x the agent's own largest message (outbox.maxBytes 16 MiB); MQTT allows 256 MiB
  const huge = Buffer.alloc(64 * 1024 * 1024, 0x61);
  let outcome: string;
  try {
    const packet = await a.publishAsync(`devices/${A}/blob`, huge, { qos: 1 });
    const rc = (packet as { reasonCode?: number } | undefined)?.reasonCode ?? 0;
    outcome = rc >= 128 ? `refused ${rc}` : `accepted ${rc}`;
  } catch (e) {
    outcome = `refused ${String((e as Error).message)}`;
  }
  assert.match(outcome, /^refused/, `the broker bounds a device's message size: ${outcome}`);
});
