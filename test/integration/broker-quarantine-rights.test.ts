/**
 * Quarantine and reconcile never give a device more broker rights than its target, at any moment:
 * the device's dynsec roles are read back from a real Mosquitto after every dynsec message the
 * server sends, so a state between two messages (the only ones a reconnecting device could see)
 * is observed, not guessed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import pino from 'pino';
import { BrokerIntegration } from '../../enroll-server/broker/integration.js';
import {
  BROKER_ADMIN_CN,
  DynsecClient,
  deviceRoleName,
  quarantineRoleName,
  type DynsecCommand,
} from '../../enroll-server/broker/dynsec.js';
import { initialDynsecConfig } from '../../enroll-server/broker/mosquitto-config.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { startMosquitto } from '../../scripts/harness/mosquitto.js';
import { makeTestPki } from '../../scripts/harness/pki.js';
import { publishReason, subscribeReasons } from '../../scripts/harness/revocation.js';

const ACTIVE = 'dev-00000000000000aa';
const QUARANTINED = 'dev-00000000000000bb';

async function setup(t: import('node:test').TestContext) {
  const dir = await tmpDir('edgeid-quarantine-rights-', t);
  const pki = await makeTestPki(dir, [
    { name: 'server', cn: 'localhost' },
    { name: 'admin', cn: BROKER_ADMIN_CN },
    { name: 'observer', cn: 'edgeid-test-observer' },
    { name: 'q', cn: QUARANTINED },
  ]);
  const dynsecFile = path.join(dir, 'dynsec.json');
  const initial = initialDynsecConfig() as { clients: { username: string; roles: { rolename: string }[] }[] };
  // a second admin identity reads the state back (one CN is one client id: not the server's)
  initial.clients.push({ username: 'edgeid-test-observer', roles: [{ rolename: 'edgeid-admin' }] });
  await writeFile(dynsecFile, JSON.stringify(initial), { mode: 0o600 });
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
  const observer = await DynsecClient.connect({ url: broker.url, tls: await tlsOf('observer'), clientId: 'edgeid-test-observer' });
  t.after(() => observer.close());
  const send = DynsecClient.prototype.send;
  /** The device's roles as the broker holds them now (null: no client). */
  const rolesOf = async (id: string): Promise<string[] | null> => {
    const [r] = await send.call(observer, [{ command: 'getClient', username: id }], /not found/i);
    if (r?.error) return null;
    return ((r?.data as { client?: { roles?: { rolename: string }[] } }).client?.roles ?? []).map((x) => x.rolename).sort();
  };
  /** Every dynsec message any server-side DynsecClient sends is followed by a read of `id`'s roles. */
  const watchRoles = (id: string): { seen: { after: string; roles: string[] | null }[] } => {
    const seen: { after: string; roles: string[] | null }[] = [];
    DynsecClient.prototype.send = async function (this: DynsecClient, commands: DynsecCommand[], tolerate: RegExp | null = null) {
      try {
        return await send.call(this, commands, tolerate);
      } finally {
        if (this !== observer) seen.push({ after: commands.map((c) => c.command).join(','), roles: await rolesOf(id) });
      }
    };
    t.after(() => {
      DynsecClient.prototype.send = send;
    });
    return { seen };
  };
  const connect = async (name: string): Promise<MqttClient> => {
    const c = await mqtt.connectAsync(broker.url, { ...(await tlsOf(name)), reconnectPeriod: 0, protocolVersion: 5 });
    t.after(() => c.endAsync(true));
    return c;
  };
  /** A read through the observer, never recorded. */
  const read = (command: DynsecCommand) => send.call(observer, [command], /not found/i);
  return { broker, tlsOf, rolesOf, watchRoles, connect, read };
}

test('reconcile creates a missing quarantined device with its quarantine role only: its full role never exists', async (t) => {
  const s = await setup(t);
  const integration = new BrokerIntegration({
    dynsec: { url: s.broker.url, tls: await s.tlsOf('admin'), clientId: BROKER_ADMIN_CN },
    audit: async () => undefined,
    activeDeviceIds: async () => [ACTIVE, QUARANTINED],
    quarantinedDeviceIds: async () => [QUARANTINED],
    log: pino({ level: 'silent' }),
  });
  t.after(() => integration.close());
  const { seen } = s.watchRoles(QUARANTINED);

  assert.deepEqual(await integration.reconcile(), { added: [ACTIVE, QUARANTINED], removed: [] });

  const q = quarantineRoleName(QUARANTINED);
  assert.ok(seen.length > 0, 'the roles were read after each message');
  for (const step of seen) assert.ok(step.roles === null || (step.roles.length === 1 && step.roles[0] === q), JSON.stringify(step));
  assert.deepEqual(await s.rolesOf(QUARANTINED), [q]);
  assert.deepEqual(await s.rolesOf(ACTIVE), [deviceRoleName(ACTIVE)]);
  // the full role of the quarantined device was never even created
  const [role] = await s.read({ command: 'getRole', rolename: deviceRoleName(QUARANTINED) });
  assert.match(String(role?.error), /Role not found/);

  // the device itself: its control topic, nothing under devices/<id>/ (PUBACK 135 not authorized)
  const dev = await s.connect('q');
  assert.equal((await subscribeReasons(dev, [`edgeid/${QUARANTINED}/control`])).get(`edgeid/${QUARANTINED}/control`), 1);
  assert.equal(await publishReason(dev, `devices/${QUARANTINED}/state`, 'x'), 135);
});

test('quarantining a provisioned device never lets it hold its full role and the quarantine role together', async (t) => {
  const s = await setup(t);
  const dyn = await DynsecClient.connect({ url: s.broker.url, tls: await s.tlsOf('admin'), clientId: BROKER_ADMIN_CN });
  t.after(() => dyn.close());
  await dyn.provisionDevice(QUARANTINED);
  const dev = await s.connect('q');
  assert.equal(await publishReason(dev, `devices/${QUARANTINED}/state`, 'before'), 0);
  const kicked = new Promise<void>((resolve) => dev.once('close', () => resolve()));
  const { seen } = s.watchRoles(QUARANTINED);

  await dyn.restrictDevice(QUARANTINED);

  const full = deviceRoleName(QUARANTINED);
  const q = quarantineRoleName(QUARANTINED);
  // after each message: the full role alone (before), the quarantine role alone (after), or less
  for (const step of seen) {
    const r = step.roles ?? [];
    assert.ok(!(r.includes(full) && r.includes(q)), `both roles at once after ${step.after}: ${JSON.stringify(r)}`);
  }
  assert.deepEqual(seen.at(-1)?.roles, [q]);
  await kicked; // the live session with the full rights ended
  const again = await s.connect('q');
  assert.equal(await publishReason(again, `devices/${QUARANTINED}/state`, 'after'), 135);
  // idempotent: a second quarantine changes nothing
  await dyn.restrictDevice(QUARANTINED);
  assert.deepEqual(await s.rolesOf(QUARANTINED), [q]);
});
