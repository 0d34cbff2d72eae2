/**
 * The agent's MQTT session against a real Mosquitto with edgeid's max_packet_size: a message the
 * broker would refuse (larger than the Maximum Packet Size of its CONNACK) is dropped and counted,
 * never sent, so the broker never ends the connection over it and no reconnect resends it forever.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import tls from 'node:tls';
import pino from 'pino';
import { MqttSession, publishPacketBytes } from '../../agent/mqtt-session.js';
import { Outbox } from '../../agent/outbox.js';
import { BROKER_MAX_PACKET_BYTES } from '../../enroll-server/broker/mosquitto-config.js';
import { startMosquitto } from '../../scripts/harness/mosquitto.js';
import { makeTestPki } from '../../scripts/harness/pki.js';
import { waitFor } from '../../scripts/harness/wait.js';

test('a message larger than the broker accepts is dropped and counted; the session stays up and later messages are delivered', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-oversized-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const pki = await makeTestPki(dir, [
    { name: 'server', cn: 'localhost' },
    { name: 'client', cn: 'device-1' },
  ]);
  const broker = await startMosquitto({
    caFile: pki.caFile,
    certFile: pki.files('server').cert,
    keyFile: pki.files('server').key,
    extra: ['allow_anonymous true'],
  });
  t.after(() => broker.stop());
  const secureContext = tls.createSecureContext({
    ca: await readFile(pki.caFile),
    cert: await readFile(pki.files('client').cert),
    key: await readFile(pki.files('client').key),
  });
  const warnings: { msg?: string; packetBytes?: number; maximumPacketSize?: number }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) warnings.push(JSON.parse(line) as (typeof warnings)[number]);
      cb();
    },
  });
  const outbox = await Outbox.open(path.join(dir, 'outbox'));
  const topic = 'devices/device-1/blob';
  // header bytes of our PUBLISH at this size (every message id is a 36-character UUID)
  const header = publishPacketBytes(topic, BROKER_MAX_PACKET_BYTES, randomUUID()) - BROKER_MAX_PACKET_BYTES;
  // one left from an earlier run (far over the limit), later one byte over and one exactly at it
  const early = await outbox.add(topic, Buffer.alloc(BROKER_MAX_PACKET_BYTES, 0x61));
  const session = new MqttSession({
    url: `mqtts://localhost:${broker.port}`,
    clientId: 'device-1',
    subscriptions: [],
    outbox,
    log: pino({ level: 'warn' }, sink),
    reconnectPeriodMs: 100,
  });
  t.after(() => session.close());
  await session.switchCredentials({ secureContext, serial: '01' });
  await waitFor('connected', () => session.state === 'connected');
  await waitFor('the early message dropped', () => outbox.stats().tooLarge === 1);

  const late = await session.publish(topic, Buffer.alloc(BROKER_MAX_PACKET_BYTES + 1 - header, 0x61));
  assert.equal(publishPacketBytes(topic, late.payload.length, late.id), BROKER_MAX_PACKET_BYTES + 1);
  // exactly at the limit: the broker takes it (so the size computed is the size on the wire)
  const atLimit = await session.publish(topic, Buffer.alloc(BROKER_MAX_PACKET_BYTES - header, 0x61));
  const small = await session.publish('devices/device-1/state', 'ok');
  await waitFor('the fitting messages acknowledged', () => outbox.stats().delivered === 2 && outbox.stats().pending === 0);

  const stats = outbox.stats();
  assert.equal(stats.tooLarge, 2, 'both oversized messages counted');
  assert.equal(stats.dropped, 0, 'not counted as dropped for a full outbox');
  assert.ok(![early, late, atLimit, small].some((m) => outbox.has(m.id)));
  assert.equal(session.info().connects, 1, 'the broker never ended the connection');
  assert.equal(session.state, 'connected');
  const drops = warnings.filter((w) => w.msg === 'mqtt message larger than the broker accepts: dropped');
  assert.equal(drops.length, 2);
  assert.ok(drops.every((w) => w.maximumPacketSize === BROKER_MAX_PACKET_BYTES && w.packetBytes! > BROKER_MAX_PACKET_BYTES));
  // the count survives a restart of the agent
  assert.equal((await Outbox.open(path.join(dir, 'outbox'))).stats().tooLarge, 2);
});
