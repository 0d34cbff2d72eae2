/**
 * The broker identity of a device is its certificate, not the client id it sends. The Mosquitto
 * config that `edgeid-admin broker config` renders has `use_username_as_clientid true`
 * (mosquitto.conf(5)) next to `use_identity_as_username true`: the client id becomes the
 * certificate's CN. Real server (its CA issues the certificates), real Mosquitto 2.0 with that
 * config, real TLS; the device keys are software keys here (the TPM path is covered by the agent
 * and revocation tests), their certificates are the ones the server issues to devices.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import mqtt, { type IClientOptions, type IConnackPacket, type MqttClient } from 'mqtt';
import { MONITOR_ROLE } from '../../enroll-server/broker/dynsec.js';
import { startDeployment, type Deployment } from '../../scripts/harness/deployment.js';
import { softwareDeviceTls, publishReason, subscribeReasons } from '../../scripts/harness/revocation.js';
import { waitFor } from '../../scripts/harness/wait.js';

const NOT_AUTHORIZED_V5 = 135;
const FAILURE_V311 = 128;

type Tls = Pick<IClientOptions, 'ca' | 'cert' | 'key'>;

/** A device certificate from the server's CA for a fresh software key. */
const deviceTls = (d: Deployment, deviceId: string): Promise<Tls> => softwareDeviceTls(d.dataDir, deviceId);

const newDeviceId = () => `dev-${randomBytes(8).toString('hex')}`;

/** One connection attempt, no reconnects: the client and the broker's CONNACK. */
async function connectOnce(
  t: import('node:test').TestContext,
  url: string,
  tls: Tls,
  clientId: string,
  protocolVersion: 4 | 5,
): Promise<{ client: MqttClient; connack: IConnackPacket }> {
  const client = mqtt.connect(url, { ...tls, clientId, protocolVersion, reconnectPeriod: 0, connectTimeout: 10_000, clean: true });
  t.after(() => client.endAsync(true));
  const connack = await new Promise<IConnackPacket>((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
    client.once('close', () => reject(new Error(`${clientId}: closed before CONNACK`)));
  });
  return { client, connack };
}

/** Lines of the broker log that announce a new client. */
function connectedLines(d: Deployment): string[] {
  return d.broker
    .log()
    .split('\n')
    .filter((l) => l.includes('New client connected'));
}

test("a device that sends another device's client id gets its own: the other's session stays up, and it reads nothing of the other's", async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  const A = newDeviceId();
  const B = newDeviceId();
  const dyn = await d.dynsec();
  await dyn.provisionDevice(A);
  await dyn.provisionDevice(B);
  const [tlsA, tlsB] = [await deviceTls(d, A), await deviceTls(d, B)];

  // A monitor with its own identity watches device topics.
  const monitorId = await d.serviceIdentity('edgeid-test-monitor', { roles: [MONITOR_ROLE] });
  const { client: monitor } = await connectOnce(t, d.broker.url, monitorId.tls, 'monitor', 5);
  const seen: { topic: string; payload: string }[] = [];
  monitor.on('message', (topic, payload) => seen.push({ topic, payload: payload.toString() }));
  await monitor.subscribeAsync('devices/#', { qos: 1 });

  // B's session: subscribed to its control topic; every sign of its end is recorded.
  const { client: b } = await connectOnce(t, d.broker.url, tlsB, B, 5);
  assert.deepEqual([...(await subscribeReasons(b, [`edgeid/${B}/control`]))], [[`edgeid/${B}/control`, 1]]);
  const bEvents: string[] = [];
  for (const ev of ['close', 'offline', 'disconnect', 'end', 'error'] as const) b.on(ev, () => bEvents.push(ev));

  for (const protocolVersion of [5, 4, 5, 4] as const) {
    const before = connectedLines(d).length;
    const { client: a, connack } = await connectOnce(t, d.broker.url, tlsA, B, protocolVersion);
    // Accepted, silently under A's own id: Mosquitto 2.0 sends no Assigned Client Identifier.
    assert.equal(protocolVersion === 5 ? connack.reasonCode : connack.returnCode, 0);
    assert.equal(connack.sessionPresent, false);
    assert.equal(connack.properties?.assignedClientIdentifier, undefined);
    // Mosquitto logs MQTT 5 as p5 and 3.1.1 as p2 (its own protocol enumeration)
    const p = protocolVersion === 5 ? 'p5' : 'p2';
    const line = await waitFor(`the broker to log A's connection (${p})`, () => connectedLines(d).slice(before)[0], 10_000);
    assert.match(line, new RegExp(` as ${A} \\(${p}, c1, k\\d+, u'${A}'\\)\\.$`), 'named by its certificate');

    // A has A's rights and none of B's.
    const refused = protocolVersion === 5 ? NOT_AUTHORIZED_V5 : FAILURE_V311;
    const subs = await subscribeReasons(a, [`edgeid/${B}/control`, `devices/${B}/#`, `edgeid/${A}/control`]);
    assert.deepEqual([...subs.values()], [refused, refused, 1]);
    if (protocolVersion === 5) {
      const marker = `a-${randomBytes(4).toString('hex')}`;
      assert.equal(await publishReason(a, `devices/${B}/state`, marker), NOT_AUTHORIZED_V5);
      assert.equal(await publishReason(a, `devices/${A}/state`, marker), 0);
      await waitFor("A's own publish at the monitor", () => seen.some((m) => m.topic === `devices/${A}/state` && m.payload === marker));
      assert.ok(!seen.some((m) => m.topic === `devices/${B}/state` && m.payload === marker), 'nothing of A under B');
    }
    await a.endAsync();
    assert.deepEqual(bEvents, [], "B's session is untouched");
  }

  // After every attempt B's session still works both ways: it publishes, and its subscription
  // (its control topic) still delivers.
  assert.equal(b.connected, true);
  const marker = `b-${randomBytes(4).toString('hex')}`;
  assert.equal(await publishReason(b, `devices/${B}/state`, marker), 0);
  await waitFor("B's publish at the monitor", () => seen.some((m) => m.topic === `devices/${B}/state` && m.payload === marker));
  assert.deepEqual(bEvents, []);
  assert.doesNotMatch(d.broker.log(), /already connected, closing old connection/, "no session was taken over, the server's neither");
  assert.match(d.broker.log(), /New client connected from \S+ as edgeid-broker-admin \(p5, c1, k\d+, u'edgeid-broker-admin'\)/);
});

test('one certificate is one client id: a second connection with the same certificate ends the first', async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  const A = newDeviceId();
  await (await d.dynsec()).provisionDevice(A);
  const tlsA = await deviceTls(d, A);
  const { client: first } = await connectOnce(t, d.broker.url, tlsA, `${A}-1`, 5);
  let disconnectReason: number | null = null;
  first.on('disconnect', (p) => (disconnectReason = p.reasonCode ?? 0));
  let closed = false;
  first.once('close', () => (closed = true));
  const { client: second } = await connectOnce(t, d.broker.url, tlsA, `${A}-2`, 5);
  await waitFor('the first connection to be closed by the broker', () => closed, 10_000);
  assert.match(d.broker.log(), new RegExp(`Client ${A} already connected, closing old connection`));
  // Mosquitto 2.0.11 closes the older connection without an MQTT 5 DISCONNECT
  assert.equal(disconnectReason, null);
  assert.equal(second.connected, true);
});

test('a monitor identity reads device and control topics and can neither publish a control command nor drive dynsec', async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  const B = newDeviceId();
  await (await d.dynsec()).provisionDevice(B);
  const { client: b } = await connectOnce(t, d.broker.url, await deviceTls(d, B), B, 5);
  const got: string[] = [];
  b.on('message', (_topic, payload) => got.push(payload.toString()));
  await b.subscribeAsync(`edgeid/${B}/control`, { qos: 1 });

  const monitorId = await d.serviceIdentity('edgeid-test-monitor', { roles: [MONITOR_ROLE] });
  const { client: monitor } = await connectOnce(t, d.broker.url, monitorId.tls, 'monitor', 5);
  const subs = await subscribeReasons(monitor, ['devices/#', 'edgeid/+/control', '$CONTROL/dynamic-security/#', '#']);
  assert.deepEqual(Object.fromEntries(subs), {
    'devices/#': 1,
    'edgeid/+/control': 1,
    '$CONTROL/dynamic-security/#': NOT_AUTHORIZED_V5,
    '#': NOT_AUTHORIZED_V5,
  });
  const command = JSON.stringify({ payload: JSON.stringify({ type: 'wipe', deviceId: B }), signature: 'forged' });
  assert.equal(await publishReason(monitor, `edgeid/${B}/control`, command), NOT_AUTHORIZED_V5);
  assert.equal(await publishReason(monitor, `devices/${B}/state`, 'x'), NOT_AUTHORIZED_V5);
  const dynsecCommand = JSON.stringify({
    commands: [{ command: 'createClient', username: 'evil', roles: [{ rolename: 'edgeid-admin' }] }],
  });
  assert.equal(await publishReason(monitor, '$CONTROL/dynamic-security/v1', dynsecCommand), NOT_AUTHORIZED_V5);

  // B's own round trip through the broker after the monitor's attempts: nothing of them reached it.
  const marker = `m-${randomBytes(4).toString('hex')}`;
  const mine = new Promise<void>((resolve) =>
    monitor.on('message', (topic, p) => topic === `devices/${B}/state` && p.toString() === marker && resolve()),
  );
  await b.publishAsync(`devices/${B}/state`, marker, { qos: 1 });
  await mine;
  assert.deepEqual(got, [], 'B received no control command');
  assert.ok(!(await (await d.dynsec()).listClients()).includes('evil'), 'no client was created');
});
