import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { startMosquitto } from '../../scripts/harness/mosquitto.js';
import { makeTestPki } from '../../scripts/harness/pki.js';
import { waitFor } from '../../scripts/harness/wait.js';

test('mosquitto harness: TLS client certificate becomes the username; no certificate is refused', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-pki-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await makeTestPki(dir, [
    { name: 'server', cn: 'localhost' },
    { name: 'client', cn: 'device-1' },
  ]);
  const broker = await startMosquitto({
    caFile: path.join(dir, 'ca.pem'),
    certFile: path.join(dir, 'server.pem'),
    keyFile: path.join(dir, 'server.key'),
    extra: ['allow_anonymous true'],
  });
  t.after(() => broker.stop());
  const ca = await readFile(path.join(dir, 'ca.pem'));
  const client = await mqtt.connectAsync(broker.url, {
    ca,
    cert: await readFile(path.join(dir, 'client.pem')),
    key: await readFile(path.join(dir, 'client.key')),
    servername: 'localhost',
    reconnectPeriod: 0,
  });
  await client.endAsync();
  assert.match(broker.log(), /u'device-1'/);

  await assert.rejects(mqtt.connectAsync(broker.url, { ca, servername: 'localhost', reconnectPeriod: 0, connectTimeout: 3000 }));
});

test('a supervised broker comes back on the same port after its reload command', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-pki-'));
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
    supervised: true,
  });
  t.after(() => broker.stop());
  const { execFile } = await import('node:child_process');
  const [cmd, ...args] = broker.reloadCommand as [string, ...string[]];
  await new Promise<void>((resolve, reject) => execFile(cmd, args, (e) => (e ? reject(e) : resolve())));
  const tls = {
    ca: await readFile(pki.caFile),
    cert: await readFile(pki.files('client').cert),
    key: await readFile(pki.files('client').key),
    servername: 'localhost',
  };
  await waitFor('the broker to start again', () => broker.starts() >= 2, 5000);
  assert.equal(broker.starts(), 2);
  const client = await mqtt.connectAsync(broker.url, { ...tls, reconnectPeriod: 0 });
  await client.endAsync();
});
