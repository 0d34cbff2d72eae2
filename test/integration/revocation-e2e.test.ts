/**
 * Remote revocation end to end: a real server, the Mosquitto that `edgeid-admin broker
 * config` configures, and the agent on swtpm as processes (`edgeid-agent enroll`, `edgeid-agent
 * run`). `edgeid-admin revoke ID --reason key-compromise` must refuse renewals, deliver a signed
 * wipe the agent obeys, kick the device's sessions, leave a reconnect with the still-valid
 * certificate without rights until the CRL reload, and refuse it at TLS after; every step audited.
 *
 * The CRL reload (the broker restart) is held until the test has looked at the window before it.
 * A second session with the device's TPM key, opened by a scripted client under another client id,
 * gets the device's own client id (the certificate's CN, `use_username_as_clientid`): it cannot
 * run beside the agent, whose session takes it over. A copy of the state dir taken before the
 * revoke is what an attacker who owns the device would keep.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cp, readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import type { IDisconnectPacket } from 'mqtt';
import pino from 'pino';
import { applyConfigObject, defaultConfig } from '../../agent/config.js';
import { renewCertificate } from '../../agent/identity.js';
import { PostureCollector } from '../../agent/posture.js';
import { StateStore } from '../../agent/state/store.js';
import { Tpm } from '../../agent/tpm/index.js';
import { isEdgeidError } from '../../protocol/errors/index.js';
import type { AuditRow } from '../../protocol/api.js';
import {
  connectAsDevice,
  publishReason,
  readDeviceIdentity,
  startRevocationDeployment,
  subscribeReasons,
  wideObserver,
  PROBE_ACCEPTED_CONNACK,
  tlsHandshake,
  tpmTlsContext,
} from '../../scripts/harness/revocation.js';
import { extendBootPcrs, startSwtpm, transientHandleCountViaTools } from '../../scripts/harness/swtpm.js';
import { NO_EVENT_LOG } from '../../scripts/harness/eventlog.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { agentCli, spawnAgent } from '../helpers/agent.js';

const NOT_AUTHORIZED = 135;
const SENTINEL_TOPIC = 'edgeid-test/sentinel';

test('revoking a running agent refuses renewals, wipes it, kicks its sessions, leaves reconnects without rights until the CRL reload refuses them at TLS, and audits every step', async (t) => {
  const d = await startRevocationDeployment();
  t.after(() => d.stop());
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const work = await tmpDir('edgeid-revoke-e2e-', t);
  const stateDir = path.join(work, 'state');

  const { uri } = JSON.parse(await d.admin(['token', 'create', '--zone', 'default', '--owner', 'controls-team', '--json'])) as {
    uri: string;
  };
  const enrolled = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--json']);
  assert.equal(enrolled.code, 0, enrolled.stderr);
  const id = (JSON.parse(enrolled.stdout) as { deviceId: string }).deviceId;
  const stateFiles = await readdir(stateDir);
  assert.ok(
    stateFiles.includes('ak.priv') && stateFiles.some((n) => /^session-\d+\.priv$/.test(n)),
    `key blobs after enrollment: ${stateFiles.join(',')}`,
  );

  // The attacker's copy of the disk, and the device's identity as read from it.
  const stolenDir = path.join(work, 'stolen');
  await cp(stateDir, stolenDir, { recursive: true });
  const identity = await readDeviceIdentity(stolenDir);

  // The subscriber: a test identity of its own that may read every topic (never the server's identity).
  const observer = await wideObserver(d, [`devices/${id}/state`, `edgeid/${id}/control`, SENTINEL_TOPIC]);
  const subscriber = observer.client;
  t.after(() => observer.close());
  const seen: { topic: string; payload: string; at: number }[] = [];
  subscriber.on('message', (topic, payload) => seen.push({ topic, payload: payload.toString(), at: Date.now() }));
  const fromDevice = () =>
    seen.filter((m) => m.topic === `devices/${id}/state`).map((m) => JSON.parse(m.payload) as { at: string; held?: boolean; seq?: number });

  // A second session with the device's TPM key under another client id, before the agent runs.
  // It handshakes now, while the TPM is free (swtpm serves one connection at a time), and then
  // publishes as the device every 25 ms. The broker names it by the certificate's CN.
  const tpmForHeld = await Tpm.open(tpm.tcti);
  const held = await connectAsDevice(d.broker.url, await tpmTlsContext(tpmForHeld, identity), `${id}-second-session`);
  await tpmForHeld.close();
  t.after(() => held.endAsync(true).catch(() => {}));
  let heldDisconnect: IDisconnectPacket | null = null;
  let heldClosedAt = 0;
  held.on('disconnect', (p) => (heldDisconnect = p));
  held.on('close', () => (heldClosedAt ||= Date.now()));
  let seq = 0;
  const heldTimer = setInterval(() => {
    if (held.connected)
      held.publish(`devices/${id}/state`, JSON.stringify({ deviceId: id, at: new Date().toISOString(), held: true, seq: seq++ }), {
        qos: 0,
      });
  }, 25);
  t.after(() => clearInterval(heldTimer));
  await waitFor('heartbeats of the second session at the subscriber', () => fromDevice().filter((m) => m.held).length >= 3, 30_000);
  assert.match(
    d.broker.log(),
    new RegExp(`New client connected from 127\\.0\\.0\\.1:\\d+ as ${id} \\(p5, .*u'${id}'\\)`),
    'the broker named the second session by its certificate, not by the client id it sent',
  );
  assert.doesNotMatch(d.broker.log(), /second-session/);

  // The agent, heartbeating every 200 ms: its session has the same client id and takes the second one over.
  const agent = spawnAgent(['run', '--state', stateDir, '--tcti', tpm.tcti, '--heartbeat', '0.2', '--log-level', 'info']);
  t.after(async () => {
    if (agent.child.exitCode === null) agent.child.kill('SIGKILL');
    await agent.exit;
  });
  await waitFor('heartbeats of the agent at the subscriber', () => fromDevice().filter((m) => !m.held).length >= 3, 60_000);
  await waitFor('the broker to end the second session', () => heldClosedAt > 0);
  // Mosquitto 2.0.11 closes the older connection without an MQTT 5 DISCONNECT (no reason code)
  assert.equal(heldDisconnect, null);
  assert.match(
    d.broker.log(),
    new RegExp(`Client ${id} already connected, closing old connection`),
    "the agent's session took the client id over",
  );

  // ---- revoke, with the broker restart (CRL reload) held ----
  await d.holdReload();
  const startsBefore = d.broker.starts();
  const revokeRun = d.admin(['revoke', id, '--reason', 'key-compromise', '--json']);
  revokeRun.catch(() => {});

  const code = await agent.exit;
  assert.equal(code, 0, `the agent exits 0 after the wipe:\n${agent.log().slice(-3000)}`);
  const agentLog = agent
    .log()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg: string; command?: string });
  assert.ok(
    agentLog.some((l) => l.msg === 'control command accepted' && l.command === 'wipe'),
    'the agent verified and accepted the signed wipe',
  );
  assert.ok(agentLog.some((l) => l.msg === 'identity wiped'));
  const left = await readdir(stateDir);
  assert.deepEqual(
    left.filter((n) => /\.(pub|priv)$/.test(n) || n === 'state.json' || n === 'cert.pem'),
    [],
    `no key blob or state left: ${left.join(',')}`,
  );
  assert.deepEqual(
    left.filter((n) => n !== 'lock'),
    [],
    `the state dir is empty but for its lock: ${left.join(',')}`,
  );
  assert.equal(await transientHandleCountViaTools(tpm.tcti), 0, 'no TPM object left loaded');

  // The signed wipe went out on the device's control topic.
  await waitFor('the wipe at the subscriber', () => seen.some((m) => m.topic === `edgeid/${id}/control`), 10_000).catch((e: Error) => {
    const brokerLog = d.broker
      .log()
      .split('\n')
      .filter((l) => l.includes(id) || l.includes('edgeid-test-observer'))
      .join('\n');
    throw new Error(`${e.message}; subscriber connected: ${subscriber.connected}; broker log:\n${brokerLog}`);
  });
  const wipes = seen
    .filter((m) => m.topic === `edgeid/${id}/control`)
    .map((m) => JSON.parse((JSON.parse(m.payload) as { payload: string }).payload) as { type: string; deviceId: string });
  assert.deepEqual(
    wipes.map((w) => [w.type, w.deviceId]),
    [['wipe', id]],
  );

  // Renewals are refused: the attacker's copy of the state (AK blobs, nonce) on the same TPM.
  {
    const config = applyConfigObject(defaultConfig(), { stateDir: stolenDir, tcti: tpm.tcti, logLevel: 'silent', eventLog: NO_EVENT_LOG });
    const store = await StateStore.open(stolenDir, { lock: true });
    const tpmDev = await Tpm.open(tpm.tcti);
    try {
      const state = (await store.load())!;
      await assert.rejects(
        renewCertificate(
          { store, tpm: tpmDev, config, log: pino({ level: 'silent' }), posture: new PostureCollector({ config }) },
          state,
          'attacker',
        ),
        // the stolen state holds a nonce and the renewal is signed by the device's own AK: the caller is the device and learns its state
        (e: unknown) => isEdgeidError(e, 'device_revoked'),
      );
    } finally {
      await tpmDev.close();
      await store.close();
    }
  }

  // Before the CRL reload: the CRL file already revokes the serial, but the broker has not loaded it.
  // A reconnect with the still-valid certificate gets in (CONNACK 0) and has no rights at all.
  assert.equal(d.broker.starts(), startsBefore, 'the broker was not restarted yet');
  const crl = new x509.X509Crl(await readFile(path.join(d.brokerDir, 'crl.pem'), 'utf8'));
  const norm = (s: string) => s.toLowerCase().replace(/^0+/, '');
  assert.ok(
    crl.entries.some((e) => norm(e.serialNumber) === norm(identity.serial)),
    "the serial is in the broker's CRL file",
  );
  const attackerMarker = `after-kick-${randomUUID()}`;
  {
    const tpmDev = await Tpm.open(tpm.tcti);
    try {
      const ctx = await tpmTlsContext(tpmDev, identity);
      assert.deepEqual(
        await tlsHandshake(d.broker.port, ctx),
        { ok: true, connack: PROBE_ACCEPTED_CONNACK },
        'the not yet reloaded broker still accepts the certificate',
      );
      const again = await connectAsDevice(d.broker.url, ctx, id, { clean: false });
      try {
        assert.equal(
          await publishReason(
            again,
            `devices/${id}/state`,
            JSON.stringify({ deviceId: id, at: new Date().toISOString(), marker: attackerMarker }),
          ),
          NOT_AUTHORIZED,
        );
        assert.equal(await publishReason(again, `devices/${id}/telemetry`, attackerMarker), NOT_AUTHORIZED);
        const subs = await subscribeReasons(again, [`edgeid/${id}/control`, `devices/${id}/#`]);
        assert.deepEqual([...subs.values()], [NOT_AUTHORIZED, NOT_AUTHORIZED], 'no subscription granted');
      } finally {
        await again.endAsync(true);
      }
    } finally {
      await tpmDev.close();
    }
  }
  const dyn = await d.dynsec();
  try {
    assert.ok(!(await dyn.listClients()).includes(id), 'the device has no dynsec client');
  } finally {
    await dyn.close();
  }
  // Marker round trip on the subscriber's connection: the attacker's refused publishes came before it.
  const sentinel = `sentinel-${randomUUID()}`;
  await subscriber.publishAsync(SENTINEL_TOPIC, sentinel, { qos: 1 });
  await waitFor('the sentinel', () => seen.some((m) => m.payload === sentinel));
  assert.equal(seen.filter((m) => m.payload.includes(attackerMarker)).length, 0, 'nothing the reconnect published reached the subscriber');

  // ---- the CRL reload ----
  const releasedAt = Date.now();
  await d.releaseReload();
  const out = JSON.parse(await revokeRun) as { device: { status: string }; serials: string[]; hooks: { hook: string; ok: boolean }[] };
  assert.equal(out.device.status, 'revoked');
  assert.ok(out.serials.map(norm).includes(norm(identity.serial)));
  assert.ok(out.hooks.length > 0 && out.hooks.every((h) => h.ok), JSON.stringify(out.hooks));
  await d.brokerRestarted(startsBefore);
  const refused = await waitFor('a verdict from the restarted broker', async () => {
    const tpmDev = await Tpm.open(tpm.tcti);
    try {
      const r = await tlsHandshake(d.broker.port, await tpmTlsContext(tpmDev, identity));
      return !r.ok && r.code === 'ECONNREFUSED' ? null : r;
    } finally {
      await tpmDev.close();
    }
  });
  assert.equal(refused.ok, false, 'after the reload the handshake is refused');
  assert.equal(!refused.ok && refused.code, 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED', JSON.stringify(refused));

  // ---- the audit trail ----
  const rows = (await d.admin(['audit', 'export']))
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as AuditRow);
  const one = (event: string, pred: (r: AuditRow) => boolean = () => true) => {
    const r = rows.find((x) => x.event === event && pred(x));
    assert.ok(r, `audit has ${event}: ${JSON.stringify(rows.map((x) => [x.event, x.outcome, x.deviceId]))}`);
    return r;
  };
  const revoked = one('device.revoke', (r) => r.deviceId === id && r.outcome === 'ok');
  assert.equal(revoked.details?.reason, 'key-compromise');
  const wipeSent = one('broker.wipe_sent', (r) => r.deviceId === id && r.outcome === 'ok');
  const kicked = one('broker.session_kicked', (r) => r.deviceId === id && r.outcome === 'ok');
  const crlPublished = one('broker.crl_published', (r) => r.outcome === 'ok' && r.seq > revoked.seq);
  const renewRefused = one('renew', (r) => r.deviceId === id && r.outcome === 'fail');
  assert.equal(renewRefused.reason, 'device_revoked');
  const time = (r: AuditRow) => Date.parse(r.time);
  assert.ok(
    time(revoked) <= time(wipeSent) && time(wipeSent) <= time(kicked) && time(kicked) <= time(crlPublished),
    'revoke → wipe → kick → CRL, in order',
  );
  assert.ok(revoked.seq < wipeSent.seq && wipeSent.seq < kicked.seq && kicked.seq < crlPublished.seq);
  const reloadedAt = Date.parse(String(crlPublished.details?.reloadedAt));
  assert.ok(reloadedAt >= releasedAt, 'the broker reload happened when the test released it');
  const audit = JSON.parse(await d.admin(['audit', 'verify', '--json'])) as { ok: boolean };
  assert.equal(audit.ok, true, 'the audit hash chain verifies');

  // ---- the subscriber's view ----
  // Everything from the device that reached the subscriber was published before the broker
  // removed it (the session_kicked row is written once deleteClient was answered), by the agent
  // or the second session; nothing of the refused reconnect.
  const msgs = fromDevice();
  assert.ok(msgs.length > 0);
  const late = msgs.filter((m) => Date.parse(m.at) > time(kicked));
  assert.deepEqual(late, [], 'nothing published after the kick reached the subscriber');
  assert.ok(heldClosedAt <= time(revoked), 'the second session had ended (taken over by the agent) before the revoke');
});
