/**
 * Blast radius of one owned device, against a real server, the Mosquitto that
 * `edgeid-admin broker config` configures, and agents enrolled on swtpm with `edgeid-agent enroll`.
 * Device B runs its agent (`edgeid-agent run`); device A is in an attacker's hands: a scripted MQTT
 * client presents A's certificate with A's TPM-resident key and tries everything else. A wide
 * observer (a dynsec client that may read `#`) and B's agent show what got through.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { Tpm } from '../../agent/tpm/index.js';
import {
  connectAsDevice,
  expiredDeviceCertificate,
  foreignCaCertificate,
  publishReason,
  readDeviceIdentity,
  startRevocationDeployment,
  subscribeReasons,
  PROBE_ACCEPTED_CONNACK,
  tlsHandshake,
  tpmTlsContext,
  wideObserver,
  type RevocationDeployment,
} from '../../scripts/harness/revocation.js';
import { extendBootPcrs, startSwtpm, type Swtpm } from '../../scripts/harness/swtpm.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { agentCli, spawnAgent } from '../helpers/agent.js';

const NOT_AUTHORIZED = 135;

async function enrollAgent(
  t: { after(fn: () => Promise<void>): void },
  d: RevocationDeployment,
  dir: string,
): Promise<{ tpm: Swtpm; stateDir: string; deviceId: string }> {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const { uri } = JSON.parse(await d.admin(['token', 'create', '--zone', 'default', '--owner', 'controls-team', '--json'])) as {
    uri: string;
  };
  const stateDir = path.join(dir, `state-${randomUUID().slice(0, 8)}`);
  const r = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--json']);
  assert.equal(r.code, 0, r.stderr);
  return { tpm, stateDir, deviceId: (JSON.parse(r.stdout) as { deviceId: string }).deviceId };
}

test('one owned device reaches only its own topics; foreign, expired and revoked certificates are refused at TLS', async (t) => {
  const d = await startRevocationDeployment();
  t.after(() => d.stop());
  const work = await tmpDir('edgeid-blast-', t);
  const [devA, devB] = await Promise.all([enrollAgent(t, d, work), enrollAgent(t, d, work)]);
  const A = devA.deviceId;
  const B = devB.deviceId;

  const observer = await wideObserver(d);
  t.after(() => observer.close());
  const fromB = () => observer.messages.filter((m) => m.topic === `devices/${B}/state`).length;

  // B runs its agent; its heartbeats show it is live on the broker.
  const agentB = spawnAgent(['run', '--state', devB.stateDir, '--tcti', devB.tpm.tcti, '--heartbeat', '0.5']);
  t.after(async () => {
    if (agentB.child.exitCode === null) agentB.child.kill('SIGTERM');
    await agentB.exit;
  });
  await waitFor("B's heartbeats at the observer", () => fromB() >= 2, 60_000);

  // The attacker holds A's TPM and a copy of A's disk (certificate + key blobs).
  const idA = await readDeviceIdentity(devA.stateDir);
  const tpmA = await Tpm.open(devA.tpm.tcti);
  t.after(() => tpmA.close());
  const ctxA = await tpmTlsContext(tpmA, idA);
  const clientA = await connectAsDevice(d.broker.url, ctxA, A);
  t.after(() => clientA.endAsync(true).catch(() => {}));
  const receivedByA: { topic: string; payload: string }[] = [];
  clientA.on('message', (topic, payload) => receivedByA.push({ topic, payload: payload.toString() }));
  const marker = `blast-${randomUUID()}`;

  await t.test("A's certificate publishes to devices/A/… and nowhere else: not B's topics, no control topic, not $CONTROL", async () => {
    const denied = [
      `devices/${B}/state`,
      `devices/${B}/telemetry`,
      `devices/${B}`,
      `edgeid/${B}/control`,
      `edgeid/${A}/control`,
      `edgeid/${A}/status`,
      'devices/other-device/state',
      `plant/${A}`,
      '$SYS/broker/version',
    ];
    for (const topic of denied) {
      assert.equal(await publishReason(clientA, topic, `${marker} ${topic}`), NOT_AUTHORIZED, `publish to ${topic} refused`);
    }
    // A dynsec command from A: it would make A an admin and open every topic.
    const takeover = {
      commands: [
        {
          command: 'createRole',
          rolename: `evil-${A}`,
          acls: [
            { acltype: 'subscribePattern', topic: '#', allow: true },
            { acltype: 'publishClientSend', topic: '#', allow: true },
          ],
        },
        { command: 'createClient', username: `evil-${A}`, roles: [{ rolename: `evil-${A}` }] },
        { command: 'addClientRole', username: A, rolename: 'edgeid-admin' },
      ],
      marker,
    };
    assert.equal(
      await publishReason(clientA, '$CONTROL/dynamic-security/v1', JSON.stringify(takeover)),
      NOT_AUTHORIZED,
      'publish to $CONTROL refused',
    );
    // Positive control: its own telemetry goes through.
    assert.equal(await publishReason(clientA, `devices/${A}/telemetry`, `${marker} allowed`), 0);
    assert.equal(await publishReason(clientA, `devices/${A}/done`, `${marker} done`), 0);
    // The broker handles one connection's packets in order: once "done" is at the observer, every
    // earlier publish of A has been routed (or dropped).
    await waitFor("A's last publish at the observer", () => observer.messages.some((m) => m.topic === `devices/${A}/done`));
    const seen = observer.messages
      .filter((m) => m.payload.includes(marker))
      .map((m) => m.topic)
      .sort();
    assert.deepEqual(seen, [`devices/${A}/done`, `devices/${A}/telemetry`], 'only what A may publish reached a subscriber');

    const dyn = await d.dynsec();
    try {
      const clients = await dyn.listClients();
      assert.ok(!clients.includes(`evil-${A}`), 'no client was created by A');
      const [got] = await dyn.send([{ command: 'getClient', username: A }]);
      const roles = ((got?.data as { client?: { roles?: { rolename?: string }[] } } | undefined)?.client?.roles ?? []).map(
        (r) => r.rolename,
      );
      assert.deepEqual(roles, [`edgeid-device-${A}`], 'A kept exactly its one role');
    } finally {
      await dyn.close();
    }
  });

  await t.test(
    "A's certificate subscribes to its own control topic only: not B's topics, other control topics, $CONTROL/# or #",
    async () => {
      const filters = [
        `devices/${B}/#`,
        `devices/${B}/state`,
        `edgeid/${B}/control`,
        'edgeid/+/control',
        'edgeid/#',
        'devices/+/state',
        'devices/#',
        '$CONTROL/#',
        '$CONTROL/dynamic-security/v1/response',
        '$SYS/#',
        '+/#',
        '#',
      ];
      const reasons = await subscribeReasons(clientA, filters);
      for (const f of filters) assert.equal(reasons.get(f), NOT_AUTHORIZED, `subscription to ${f} refused`);
      assert.equal(
        (await subscribeReasons(clientA, [`edgeid/${A}/control`])).get(`edgeid/${A}/control`),
        1,
        'its own control topic is granted',
      );

      // Traffic A must not see: B's heartbeats and a control command to B (a valid one the server signs).
      const before = fromB();
      const toB = await d.adminApi<{ published: boolean }>('POST', `/v1/admin/devices/${B}/control`, { type: 'renew-now' });
      assert.equal(toB.status, 200);
      assert.equal(toB.body.published, true);
      // …and one it must see: a command to A on its own control topic.
      const toA = await d.adminApi<{ published: boolean }>('POST', `/v1/admin/devices/${A}/control`, { type: 'renew-now' });
      assert.equal(toA.status, 200);
      await waitFor(
        "new heartbeats from B and B's control command at the observer",
        () => fromB() >= before + 2 && observer.messages.some((m) => m.topic === `edgeid/${B}/control`),
        30_000,
      );
      // A PUBACK round trip: whatever the broker queued for A before it is now in A's hands (TCP order).
      assert.equal(await publishReason(clientA, `devices/${A}/sync`, 'sync'), 0);
      await waitFor('the command to A', () => receivedByA.length > 0);
      assert.deepEqual(
        receivedByA.map((m) => m.topic),
        [`edgeid/${A}/control`],
        'A received its own control command and nothing else',
      );
    },
  );

  await t.test('B never receives what A attempted', async () => {
    // B's agent counts every message on its control topic (accepted or ignored) in status.json;
    // the only one it got is the server's signed renew-now above, which it obeyed.
    const status = await waitFor(
      "B's status after the server's renew-now",
      async () => {
        const s = JSON.parse(await readFile(path.join(devB.stateDir, 'status.json'), 'utf8')) as {
          control: { accepted: number; ignored: number };
        };
        return s.control.accepted >= 1 ? s : null;
      },
      30_000,
    );
    assert.deepEqual({ accepted: status.control.accepted, ignored: status.control.ignored }, { accepted: 1, ignored: 0 });
    assert.doesNotMatch(agentB.log(), new RegExp(marker), "nothing of A in B's log");
    assert.doesNotMatch(agentB.log(), /control command ignored/);
  });

  await t.test(
    "the broker refuses at TLS A's key under another CA's certificate, an expired edgeid certificate, and A's own after revocation",
    async () => {
      assert.deepEqual(
        await tlsHandshake(d.broker.port, ctxA),
        { ok: true, connack: PROBE_ACCEPTED_CONNACK },
        "A's valid certificate passes (control)",
      );

      const foreign = await tlsHandshake(d.broker.port, await tpmTlsContext(tpmA, idA, await foreignCaCertificate(A, idA.spki)));
      assert.equal(foreign.ok, false);
      assert.equal(!foreign.ok && foreign.code, 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', JSON.stringify(foreign));

      const expired = await tlsHandshake(
        d.broker.port,
        await tpmTlsContext(tpmA, idA, await expiredDeviceCertificate(d.dataDir, A, idA.spki)),
      );
      assert.equal(expired.ok, false);
      assert.equal(!expired.ok && expired.code, 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED', JSON.stringify(expired));

      const startsBefore = d.broker.starts();
      const out = JSON.parse(await d.admin(['revoke', A, '--reason', 'key-compromise', '--json'])) as {
        hooks: { hook: string; ok: boolean }[];
      };
      assert.ok(
        out.hooks.every((h) => h.ok),
        JSON.stringify(out.hooks),
      );
      await d.brokerRestarted(startsBefore);
      const revoked = await waitFor('a handshake the restarted broker answers', async () => {
        const r = await tlsHandshake(d.broker.port, ctxA);
        return !r.ok && r.code === 'ECONNREFUSED' ? null : r;
      });
      assert.equal(revoked.ok, false);
      assert.equal(!revoked.ok && revoked.code, 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED', JSON.stringify(revoked));

      // B is untouched: its agent reconnects after the broker restart and keeps publishing.
      const after = fromB();
      await waitFor('B publishing again after the restart', () => fromB() >= after + 2, 30_000);
    },
  );
});
