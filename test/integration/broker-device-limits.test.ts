/**
 * What one device (or a certificate without a dynsec client) can and cannot make the broker do:
 * rights, control topics, wills, and the memory it can make the broker hold (max_packet_size,
 * max_queued_bytes). Real server, real Mosquitto with the config `edgeid-admin broker config`
 * renders, real TLS. Each assertion is the safe outcome.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import mqtt, { type IClientOptions, type IConnackPacket, type MqttClient } from 'mqtt';
import { MONITOR_ROLE } from '../../enroll-server/broker/dynsec.js';
import { BROKER_MAX_PACKET_BYTES, BROKER_MAX_QUEUED_BYTES } from '../../enroll-server/broker/mosquitto-config.js';
import { startDeployment, type Deployment } from '../../scripts/harness/deployment.js';
import { softwareDeviceTls, publishReason, subscribeReasons } from '../../scripts/harness/revocation.js';
import { waitFor } from '../../scripts/harness/wait.js';

type Tls = Pick<IClientOptions, 'ca' | 'cert' | 'key'>;

/** A device certificate from the server's CA for a fresh software key. */
const deviceTls = (d: Deployment, deviceId: string): Promise<Tls> => softwareDeviceTls(d.dataDir, deviceId);

/** PUBACK reason code (MQTT 5 §3.4.2.1; absent = 0 success). */
const pubackReason = (p: unknown): number => (p as { reasonCode?: number } | undefined)?.reasonCode ?? 0;

const newDeviceId = () => `dev-${randomBytes(8).toString('hex')}`;

async function connect(
  t: import('node:test').TestContext,
  url: string,
  tls: Tls,
  clientId: string,
  extra: Partial<IClientOptions> = {},
): Promise<{ client: MqttClient; connack: IConnackPacket | null; error: unknown }> {
  const client = mqtt.connect(url, {
    ...tls,
    clientId,
    protocolVersion: 5,
    reconnectPeriod: 0,
    connectTimeout: 10_000,
    clean: true,
    ...extra,
  });
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
      payload: Buffer.from(
        JSON.stringify({ commands: [{ command: 'createClient', username: evil, roles: [{ rolename: 'edgeid-admin' }] }] }),
      ),
      qos: 1 as const,
      retain: false,
    },
  ];
  for (const will of wills) {
    const { client: w, connack } = await connect(t, d.broker.url, tlsA, A, { will });
    if (connack === null) continue; // refused at CONNECT: safe
    const before = d.broker.log().length;
    w.stream.destroy(); // no DISCONNECT: the broker sends the will
    await waitFor('the broker to drop A', () => /disconnect|closing|closed|Socket error/i.test(d.broker.log().slice(before)), 10_000).catch(
      (e) => {
        console.log('BROKER LOG TAIL', d.broker.log().slice(-3000));
        throw e;
      },
    );
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

test('a device packet larger than max_packet_size ends its connection with DISCONNECT 0x95 and reaches no subscriber', async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  const A = newDeviceId();
  await (await d.dynsec()).provisionDevice(A);
  const monitorId = await d.serviceIdentity('edgeid-limits-monitor', { roles: [MONITOR_ROLE] });
  const { client: monitor } = await connect(t, d.broker.url, monitorId.tls, 'm');
  const seen: { topic: string; bytes: number }[] = [];
  monitor.on('message', (topic, p) => seen.push({ topic, bytes: p.length }));
  await monitor.subscribeAsync(`devices/${A}/#`, { qos: 1 });

  const tlsA = await deviceTls(d, A);
  const { client: a, connack } = await connect(t, d.broker.url, tlsA, A);
  // the broker announces its limit (MQTT 5 §3.2.2.3.6), which the agent reads
  assert.equal(connack?.properties?.maximumPacketSize, BROKER_MAX_PACKET_BYTES, 'CONNACK Maximum Packet Size');
  const disconnected = new Promise<number | undefined>((resolve) => a.once('disconnect', (p) => resolve(p.reasonCode)));
  const closed = new Promise<void>((resolve) => a.once('close', () => resolve()));
  // the payload alone is the limit: with its header the packet is larger
  a.publish(`devices/${A}/blob`, Buffer.alloc(BROKER_MAX_PACKET_BYTES, 0x61), { qos: 1 }, () => undefined);
  assert.equal(await disconnected, 0x95, 'DISCONNECT reason: packet too large (MQTT 5 §3.14.2.1)');
  await closed;

  // a message just under the limit still goes through, and the large one was never delivered
  const { client: a2 } = await connect(t, d.broker.url, tlsA, A);
  const fits = BROKER_MAX_PACKET_BYTES - 1024;
  assert.equal(pubackReason(await a2.publishAsync(`devices/${A}/fits`, Buffer.alloc(fits, 0x62), { qos: 1 })), 0);
  await waitFor('the fitting message at the monitor', () => seen.some((m) => m.topic === `devices/${A}/fits`));
  assert.deepEqual(seen, [{ topic: `devices/${A}/fits`, bytes: fits }]);
});

test('the broker queues at most max_queued_bytes of one device messages for an offline subscriber', async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  const A = newDeviceId();
  await (await d.dynsec()).provisionDevice(A);
  const monitorId = await d.serviceIdentity('edgeid-limits-slow', { roles: [MONITOR_ROLE] });
  const persistent = { clean: false, properties: { sessionExpiryInterval: 600 } };
  const { client: m1 } = await connect(t, d.broker.url, monitorId.tls, 'slow', persistent);
  await m1.subscribeAsync(`devices/${A}/#`, { qos: 1 });
  await m1.endAsync(); // offline: the broker queues for its session

  const { client: a } = await connect(t, d.broker.url, await deviceTls(d, A), A);
  const each = BROKER_MAX_PACKET_BYTES - 1024;
  const sent = Math.ceil((2 * BROKER_MAX_QUEUED_BYTES) / each); // twice what may be queued
  for (let i = 0; i < sent; i++) {
    const ack = await a.publishAsync(`devices/${A}/bulk`, Buffer.alloc(each, 0x63), { qos: 1 });
    assert.equal(pubackReason(ack), 0, `publish ${i} accepted by the broker`);
  }

  const received: { topic: string; bytes: number }[] = [];
  const { client: m2 } = await connect(t, d.broker.url, monitorId.tls, 'slow', persistent);
  m2.on('message', (topic, p) => received.push({ topic, bytes: p.length }));
  // QoS 1 to one subscriber keeps its order: once the marker is here, the queue has been delivered
  await a.publishAsync(`devices/${A}/marker`, 'end', { qos: 1 });
  await waitFor('the marker', () => received.some((m) => m.topic === `devices/${A}/marker`), 60_000);
  const bulk = received.filter((m) => m.topic === `devices/${A}/bulk`);
  assert.ok(bulk.length > 0, 'the queue delivered something');
  assert.ok(bulk.length < sent, `${bulk.length} of ${sent} queued: the rest was dropped`);
  // max_queued_bytes counts queued messages beyond those in flight: bounded by the limit plus one window
  const bytes = bulk.reduce((n, m) => n + m.bytes, 0);
  assert.ok(bytes <= BROKER_MAX_QUEUED_BYTES + 21 * each, `${bytes} bytes were held for the offline subscriber`);
  assert.match(d.broker.log(), /Outgoing messages are being dropped for client/);
});
