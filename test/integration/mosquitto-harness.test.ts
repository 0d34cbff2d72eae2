import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import mqtt from 'mqtt';
import { startMosquitto } from '../helpers/mosquitto.js';

const run = promisify(execFile);

/** A throwaway software PKI for the harness test only (the product's certificates come from the edgeid CA). */
async function testPki(dir: string): Promise<void> {
  const o = (args: string[]) => run('openssl', args, { cwd: dir });
  await o(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'ca.key']);
  await o(['req', '-x509', '-new', '-key', 'ca.key', '-subj', '/CN=harness-ca', '-days', '1', '-out', 'ca.pem']);
  for (const [name, cn] of [['server', 'localhost'], ['client', 'device-1']] as const) {
    await o(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`]);
    await o(['req', '-new', '-key', `${name}.key`, '-subj', `/CN=${cn}`, '-out', `${name}.csr`]);
    await o(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1', '-out', `${name}.pem`]);
  }
}

test('mosquitto harness: TLS client certificate becomes the username; no certificate is refused', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-pki-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await testPki(dir);
  const broker = await startMosquitto({
    caFile: path.join(dir, 'ca.pem'), certFile: path.join(dir, 'server.pem'), keyFile: path.join(dir, 'server.key'),
    extra: ['allow_anonymous true'],
  });
  t.after(() => broker.stop());
  const ca = await readFile(path.join(dir, 'ca.pem'));
  const client = await mqtt.connectAsync(broker.url, {
    ca, cert: await readFile(path.join(dir, 'client.pem')), key: await readFile(path.join(dir, 'client.key')),
    servername: 'localhost', reconnectPeriod: 0,
  });
  await client.endAsync();
  assert.match(broker.log(), /u'device-1'/);

  await assert.rejects(mqtt.connectAsync(broker.url, { ca, servername: 'localhost', reconnectPeriod: 0, connectTimeout: 3000 }));
});
