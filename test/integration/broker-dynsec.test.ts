import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { startMosquitto } from '../../scripts/harness/mosquitto.js';
import { makeTestPki, type TestPki } from '../../scripts/harness/pki.js';
import { publishReason } from '../../scripts/harness/revocation.js';
import { DynsecClient, BROKER_ADMIN_CN, MONITOR_ROLE } from '../../enroll-server/broker/dynsec.js';
import { initialDynsecConfig } from '../../enroll-server/broker/mosquitto-config.js';

async function setup(t: import('node:test').TestContext) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-dynsec-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const pki = await makeTestPki(dir, [
    { name: 'server', cn: 'localhost' },
    { name: 'admin', cn: BROKER_ADMIN_CN },
    { name: 'a', cn: 'dev-a' },
    { name: 'b', cn: 'dev-b' },
    { name: 'monitor', cn: 'edgeid-test-monitor' },
  ]);
  const dynsecFile = path.join(dir, 'dynsec.json');
  await writeFile(dynsecFile, JSON.stringify(initialDynsecConfig()), { mode: 0o600 });
  const broker = await startMosquitto({
    caFile: pki.caFile,
    certFile: pki.files('server').cert,
    keyFile: pki.files('server').key,
    dynsecFile,
  });
  t.after(() => broker.stop());
  const tlsOf = async (name: string) => ({
    ca: await readFile(pki.caFile),
    cert: await readFile(pki.files(name).cert),
    key: await readFile(pki.files(name).key),
    servername: 'localhost',
  });
  const dynsec = await DynsecClient.connect({ url: broker.url, tls: await tlsOf('admin') });
  t.after(() => dynsec.close());
  const connect = async (name: string, extra: mqtt.IClientOptions = {}): Promise<MqttClient> => {
    const c = await mqtt.connectAsync(broker.url, { ...(await tlsOf(name)), reconnectPeriod: 0, protocolVersion: 5, ...extra });
    t.after(() => c.endAsync(true));
    return c;
  };
  /** A monitoring tool with its own identity (the server's role reads no device topic). */
  const monitor = async (): Promise<MqttClient> => {
    await dynsec.send([{ command: 'createClient', username: 'edgeid-test-monitor', roles: [{ rolename: MONITOR_ROLE }] }]);
    return connect('monitor');
  };
  return { pki, broker, dynsec, connect, monitor } as {
    pki: TestPki;
    broker: typeof broker;
    dynsec: DynsecClient;
    connect: typeof connect;
    monitor: typeof monitor;
  };
}

/** Whether the broker grants a subscription (MQTT 5 answers 0x87 "not authorized" otherwise). */
async function canSubscribe(c: MqttClient, topic: string): Promise<boolean> {
  try {
    const [g] = await c.subscribeAsync(topic, { qos: 1 });
    return g !== undefined && g.qos < 128;
  } catch (e) {
    if (/not authori[sz]ed/i.test(String((e as Error).message))) return false;
    throw e;
  }
}

/**
 * Publishes at QoS 1 and reports whether the watcher (subscribed to `topic`) received it. The
 * broker's PUBACK is the verdict (MQTT 5: 0 = accepted, 135 = not authorized, never forwarded);
 * an accepted message must then reach the watcher.
 */
async function delivered(pub: MqttClient, watcher: MqttClient, topic: string): Promise<boolean> {
  const marker = `m-${Math.random()}`;
  let on: ((tp: string, payload: Buffer) => void) | undefined;
  let timer: NodeJS.Timeout | undefined;
  const got = new Promise<void>((resolve, reject) => {
    on = (tp, payload) => {
      if (tp === topic && payload.toString() === marker) resolve();
    };
    watcher.on('message', on);
    timer = setTimeout(() => reject(new Error(`the broker accepted a message on ${topic} but the watcher never got it`)), 10_000);
  });
  got.catch(() => {});
  try {
    const reason = await publishReason(pub, topic, marker);
    if (reason === 135) return false;
    assert.equal(reason, 0, `PUBACK reason code for ${topic}`);
    await got;
    return true;
  } finally {
    clearTimeout(timer);
    watcher.off('message', on!);
  }
}

test('a provisioned device may publish only under devices/<own id>/ and subscribe only to its own control topic', async (t) => {
  const { dynsec, connect, monitor } = await setup(t);
  await dynsec.provisionDevice('dev-a');
  await dynsec.provisionDevice('dev-b');
  await dynsec.provisionDevice('dev-a'); // idempotent
  assert.deepEqual((await dynsec.listClients()).sort(), [BROKER_ADMIN_CN, 'dev-a', 'dev-b'].sort());

  const a = await connect('a');
  const b = await connect('b');
  assert.equal(await canSubscribe(b, 'edgeid/dev-b/control'), true);
  for (const topic of ['edgeid/dev-b/control', '#', '$CONTROL/#', 'devices/dev-b/#', 'devices/dev-a/#']) {
    assert.equal(await canSubscribe(a, topic), false, `dev-a must not subscribe to ${topic}`);
  }

  // A monitor with its own identity watches device state topics; the server's identity may not.
  assert.equal(await canSubscribe(dynsec.mqtt, 'devices/+/state'), false, 'the server reads no device topic');
  const watcher = await monitor();
  await watcher.subscribeAsync('devices/+/state', { qos: 0 });
  assert.equal(await delivered(a, watcher, 'devices/dev-a/state'), true);
  assert.equal(await delivered(a, watcher, 'devices/dev-b/state'), false);
});

test('removeDevice kicks the live session at once and a reconnect gets no permission', async (t) => {
  const { dynsec, connect, monitor } = await setup(t);
  await dynsec.provisionDevice('dev-a');
  const a = await connect('a');
  const closed = new Promise<void>((resolve) => a.once('close', () => resolve()));
  await dynsec.removeDevice('dev-a');
  await closed;
  await dynsec.removeDevice('dev-a'); // idempotent
  const again = await connect('a');
  assert.equal(await canSubscribe(again, 'edgeid/dev-a/control'), false);
  const watcher = await monitor();
  await watcher.subscribeAsync('devices/+/state', { qos: 0 });
  assert.equal(await delivered(again, watcher, 'devices/dev-a/state'), false);
});
