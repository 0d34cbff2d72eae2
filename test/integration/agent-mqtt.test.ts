/**
 * The agent's MQTT session on its TPM-resident key, against a real Mosquitto with
 * `require_certificate` and `use_identity_as_username`, a real edgeid-server and swtpm:
 * no message lost across ≥ 3 renewals of 20-second certificates, and the control channel.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createHash } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import mqtt, { type IPublishPacket, type MqttClient } from 'mqtt';
import pino from 'pino';
import { EdgeAgent } from '../../agent/agent.js';
import { applyConfigObject, defaultConfig } from '../../agent/config.js';
import { MSG_ID_PROPERTY } from '../../agent/mqtt-session.js';
import { signControlCommand } from '../../protocol/control.js';
import { startMosquitto, type Mosquitto } from '../../scripts/harness/mosquitto.js';
import { extendBootPcrs, startSwtpm, transientHandleCountViaTools, type Swtpm } from '../../scripts/harness/swtpm.js';
import { NO_EVENT_LOG } from '../../scripts/harness/eventlog.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { edgeidCaBundle, softwareClientCert } from '../../scripts/harness/pki.js';
import { createToken, startServerProcess, type ServerProcess } from '../../scripts/harness/server.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { agentCli } from '../helpers/agent.js';

/** Renewals with 20-second certificates take minutes on a busy machine. */
const SLOW = 180_000;

/** How many SUBACKs the broker sent to this client (Mosquitto logs each one; the subscription is in place by then). */
function subacksTo(broker: Mosquitto, clientId: string): number {
  return broker
    .log()
    .split('\n')
    .filter((l) => l.endsWith(`Sending SUBACK to ${clientId}`)).length;
}

function memoryLogger(): { log: pino.Logger; lines: () => Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines: () => lines };
}

interface Rig {
  tpm: Swtpm;
  srv: ServerProcess;
  broker: Mosquitto;
  bundle: string;
  stateDir: string;
  deviceId: string;
}

async function rig(t: { after(fn: () => Promise<void>): void }, lifetime: number): Promise<Rig> {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const srv = await startServerProcess({
    config: { allowShortLifetimes: true, rateLimit: { renew: { max: 1000, window: 60 } }, zones: { default: { lifetime } } },
  });
  t.after(() => srv.close());
  const dir = await tmpDir('edgeid-agent-mqtt-', t);
  const bundle = path.join(dir, 'edgeid-ca.pem');
  await writeFile(bundle, await edgeidCaBundle(srv));
  const broker = await startMosquitto({
    caFile: bundle,
    certFile: path.join(srv.dataDir, 'ca', 'server.pem'),
    keyFile: path.join(srv.dataDir, 'ca', 'server.key'),
  });
  t.after(() => broker.stop());
  const stateDir = path.join(dir, 'state');
  const { uri } = await createToken(srv);
  const r = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--json']);
  assert.equal(r.code, 0, r.stderr);
  return { tpm, srv, broker, bundle, stateDir, deviceId: (JSON.parse(r.stdout) as { deviceId: string }).deviceId };
}

async function observer(
  r: Rig,
  topics: string[],
): Promise<{ client: MqttClient; messages: { topic: string; payload: string; packet: IPublishPacket }[] }> {
  const { cert, key } = await softwareClientCert(r.srv, 'edgeid-test-observer');
  const client = mqtt.connect(r.broker.url, { cert, key, ca: await readFile(r.bundle, 'utf8'), protocolVersion: 5, reconnectPeriod: 500 });
  const messages: { topic: string; payload: string; packet: IPublishPacket }[] = [];
  client.on('message', (topic, payload, packet) => messages.push({ topic, payload: payload.toString(), packet }));
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => client.subscribe(topics, { qos: 1 }, (err) => (err ? reject(err) : resolve())));
    client.once('error', reject);
  });
  return { client, messages };
}

function agentConfig(r: Rig, extra: Record<string, unknown> = {}) {
  return applyConfigObject(defaultConfig(), {
    stateDir: r.stateDir,
    tcti: r.tpm.tcti,
    eventLog: NO_EVENT_LOG,
    mqtt: { url: r.broker.url, heartbeatSeconds: 2, reconnectPeriodMs: 300 },
    renewal: { backoffBaseMs: 200, backoffCapMs: 2000 },
    ...extra,
  });
}

test('publishes through the TPM-keyed session with no message lost across ≥ 3 renewals of 20-second certificates', async (t) => {
  const r = await rig(t, 20);
  const obs = await observer(r, [`devices/${r.deviceId}/#`]);
  t.after(async () => {
    obs.client.end(true);
  });
  const { log } = memoryLogger();
  const agent = await EdgeAgent.start({ config: agentConfig(r), log });
  t.after(() => agent.stop());

  await waitFor('MQTT connected', () => agent.status().mqtt.state === 'connected', SLOW);
  assert.match(r.broker.log(), new RegExp(`u'${r.deviceId}'`), "the broker's log shows the deviceId as username");

  const serials = new Map<string, string>(); // serial -> SPKI hash
  const track = async () => {
    const s = JSON.parse(await readFile(path.join(r.stateDir, 'state.json'), 'utf8'));
    const c = new X509Certificate(s.certificate.pem);
    serials.set(
      s.certificate.serial,
      createHash('sha256')
        .update(c.publicKey.export({ type: 'spki', format: 'der' }))
        .digest('hex'),
    );
  };
  await track();
  let sent = 0;
  const failures: unknown[] = [];
  const timer = setInterval(() => {
    agent.publish(`devices/${r.deviceId}/seq`, String(sent++)).catch((e: unknown) => failures.push(e));
  }, 100);
  const startRenewals = agent.status().renewal.total;
  await waitFor(
    '3 renewals while publishing',
    async () => {
      await track();
      return (
        agent.status().renewal.total >= startRenewals + 3 &&
        agent.status().mqtt.state === 'connected' &&
        agent.status().mqtt.serial === agent.status().certificate?.serial
      );
    },
    SLOW,
  );
  clearInterval(timer);
  assert.deepEqual(failures, []);
  const seq = () => new Set(obs.messages.filter((m) => m.topic.endsWith('/seq')).map((m) => Number(m.payload)));
  await waitFor('every number at the subscriber', () => seq().size === sent, 60_000).catch(() => {
    const got = seq();
    const missing = [...Array(sent).keys()].filter((n) => !got.has(n));
    assert.fail(`lost ${missing.length} of ${sent} messages: ${missing.slice(0, 20).join(',')}`);
  });
  assert.ok(sent >= 300, `published ${sent} messages`);
  for (const m of obs.messages.filter((x) => x.topic.endsWith('/seq'))) {
    const id = (m.packet.properties?.userProperties as Record<string, string> | undefined)?.[MSG_ID_PROPERTY];
    assert.match(String(id), /^[0-9a-f-]{36}$/, 'every message carries its de-duplication id');
  }
  assert.ok(serials.size >= 4, `saw ${serials.size} certificates`);
  assert.equal(new Set(serials.values()).size, serials.size, 'each renewal has a new public key');
  assert.ok(
    obs.messages.some((m) => m.topic === `devices/${r.deviceId}/state`),
    'heartbeats arrive',
  );
  // the subscriber can see the last message before the broker's PUBACK reaches the agent
  await waitFor('outbox drained', () => agent.status().outbox.pending === 0, SLOW);
  const st = agent.status();
  assert.equal(st.outbox.pending, 0);
  assert.equal(st.outbox.dropped, 0);
  assert.ok((st.renewal.tpmCommandsPerRenewal ?? 0) > 0);
  await agent.stop();
  const sessions = (await readdir(r.stateDir)).filter((n) => n.startsWith('session-'));
  assert.equal(sessions.length, 2, `only the key in use remains once the new certificate is live: ${sessions.join(',')}`);
  assert.equal(await transientHandleCountViaTools(r.tpm.tcti), 0);
});

test('ignores forged, replayed, stale and foreign control commands and obeys a signed wipe', async (t) => {
  const r = await rig(t, 300);
  const obs = await observer(r, ['#']);
  t.after(async () => {
    obs.client.end(true);
  });
  const { log, lines } = memoryLogger();
  const agent = await EdgeAgent.start({ config: agentConfig(r), log });
  t.after(() => agent.stop());
  // the agent's MQTT client id is its device id; inject only once the broker acknowledged the subscription
  await waitFor('the control subscription acknowledged by the broker', () => subacksTo(r.broker, r.deviceId) >= 1, SLOW);
  assert.equal(agent.status().mqtt.state, 'connected');

  const topic = `edgeid/${r.deviceId}/control`;
  const send = (msg: unknown) =>
    new Promise<void>((res, rej) =>
      obs.client.publish(topic, typeof msg === 'string' ? msg : JSON.stringify(msg), { qos: 1 }, (e) => (e ? rej(e) : res())),
    );
  const ignored = (code: string, n = 1) =>
    waitFor(`${n}× ${code}`, () => lines().filter((l) => l.msg === 'control command ignored' && l.code === code).length >= n, 20_000);
  const signer = {
    key: await readFile(path.join(r.srv.dataDir, 'ca', 'control.key'), 'utf8'),
    certPem: await readFile(path.join(r.srv.dataDir, 'ca', 'control.pem'), 'utf8'),
  };

  // forged: a renew-now turned into a wipe after signing
  const renew = (await r.srv.admin('POST', `/v1/admin/devices/${r.deviceId}/control`, { type: 'renew-now' })).body;
  await send({ ...renew, payload: renew.payload.replace('renew-now', 'wipe') });
  await ignored('control_bad_signature');
  // foreign: validly signed, for another device, sent on this device's topic
  await send(signControlCommand({ type: 'wipe', deviceId: 'dev-someone-else' }, signer));
  await ignored('control_wrong_device');
  // stale
  await send(signControlCommand({ type: 'wipe', deviceId: r.deviceId, issuedAt: new Date(Date.now() - 3600_000).toISOString() }, signer));
  await ignored('control_stale');
  // replayed: the same signed renew-now twice — the first one renews, the second is ignored
  const before = agent.status().renewal.total;
  const subacksBefore = subacksTo(r.broker, r.deviceId);
  await send(renew);
  await waitFor('renew-now obeyed', () => agent.status().renewal.total > before, 30_000);
  await waitFor(
    'reconnected with the new certificate',
    () => agent.status().mqtt.state === 'connected' && agent.status().mqtt.serial === agent.status().certificate?.serial,
    SLOW,
  );
  await waitFor("the new connection's control subscription acknowledged", () => subacksTo(r.broker, r.deviceId) > subacksBefore, SLOW);
  await send(renew);
  await ignored('control_replayed');
  assert.equal(agent.status().control.ignored, 4);
  assert.ok((await readdir(r.stateDir)).includes('ak.priv'), 'nothing was wiped by the bad commands');

  const wipe = (await r.srv.admin('POST', `/v1/admin/devices/${r.deviceId}/control`, { type: 'wipe', reason: 'test' })).body;
  await send(wipe);
  assert.equal(await agent.exited, 0, 'a signed wipe ends the agent with exit code 0');
  const left = await readdir(r.stateDir);
  assert.deepEqual(
    left.filter((n) => /\.(pub|priv)$|^state\.json$|^cert\.pem$/.test(n)),
    [],
    `no key blob or state left: ${left.join(',')}`,
  );
  assert.equal(await transientHandleCountViaTools(r.tpm.tcti), 0, 'TPM objects flushed');
});
