/**
 * The server drives the real broker: per-device dynsec clients on enrollment, wipe + kick + CRL
 * on revocation, reconciliation both ways. Devices here are real swtpm TPMs driven through the
 * TPM layer (test/helpers/device.ts); the agent's own MQTT session is covered by the agent tests.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import type { MqttClient } from 'mqtt';
import { startDeployment, TEST_DYNSEC_CN, type Deployment } from '../../scripts/harness/deployment.js';
import { startSwtpm, extendBootPcrs } from '../../scripts/harness/swtpm.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { TestDevice, httpsTransport } from '../helpers/device.js';
import { BROKER_ADMIN_CN, MONITOR_ROLE, type DynsecClient } from '../../enroll-server/broker/dynsec.js';

/** A dynsec connection with the test's own broker identity (never the server's: one CN is one client id). */
function adminDynsec(d: Deployment): Promise<DynsecClient> {
  return d.dynsec();
}

async function enrolledDevice(t: import('node:test').TestContext, d: Deployment): Promise<TestDevice> {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  const { token } = JSON.parse(await d.admin(['token', 'create', '--zone', 'default', '--owner', 'ops', '--json'])) as { token: string };
  await dev.enroll(httpsTransport(d.server.info.url, d.server.caPem), token);
  return dev;
}

async function auditEvents(d: Deployment, deviceId: string | null): Promise<{ event: string; outcome: string; reason: string | null }[]> {
  const lines = (await d.admin(['audit', 'export'])).split('\n').filter((l) => l.trim());
  return lines
    .map((l) => JSON.parse(l) as { event: string; outcome: string; reason: string | null; deviceId: string | null })
    .filter((r) => deviceId === null || r.deviceId === deviceId);
}

test('enrollment gives the device its broker client; revocation sends a signed wipe, kicks it and puts its serial on the broker CRL', async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  const dev = await enrolledDevice(t, d);
  const id = dev.deviceId!;

  const observer = await adminDynsec(d);
  t.after(() => observer.close());
  assert.ok((await observer.listClients()).includes(id), 'the device has a dynsec client after enrollment');

  // Watch the device's control topic with the test's identity (its role may read control topics).
  const control: Buffer[] = [];
  const m: MqttClient = observer.mqtt;
  m.on('message', (topic, payload) => {
    if (topic === `edgeid/${id}/control`) control.push(payload);
  });
  await m.subscribeAsync(`edgeid/${id}/control`, { qos: 1 });

  const serial = new X509Certificate(dev.certificate!).serialNumber.toLowerCase();
  const startsBefore = d.broker.starts();
  const out = JSON.parse(await d.admin(['revoke', id, '--reason', 'key-compromise', '--json'])) as {
    hooks: { hook: string; ok: boolean }[];
  };
  assert.ok(
    out.hooks.every((h) => h.ok),
    `every broker step succeeded: ${JSON.stringify(out.hooks)}`,
  );

  // The signed wipe was published to the device's control topic.
  await waitFor('wipe command on the control topic', () => control.length > 0, 15_000);
  const wipe = JSON.parse(control[0]!.toString()) as { payload: string };
  assert.equal(JSON.parse(wipe.payload).type, 'wipe');
  assert.equal(JSON.parse(wipe.payload).deviceId, id);

  // The broker's CRL file revokes the serial, and the broker was restarted to load it.
  const crl = new x509.X509Crl(await readFile(path.join(d.brokerDir, 'crl.pem'), 'utf8'));
  assert.ok(
    crl.entries.some((e) => e.serialNumber.toLowerCase().replace(/^0+/, '') === serial.replace(/^0+/, '')),
    'serial on the broker CRL',
  );
  assert.ok(crl.nextUpdate && crl.nextUpdate.getTime() - Date.now() > 20 * 86400 * 1000, 'the broker CRL is the long-lived copy');
  await waitFor('broker restarted for the CRL', () => d.broker.starts() > startsBefore, 15_000);

  // After the restart the observer reconnects by itself; the device's client is gone.
  await waitFor('device client removed', async () => !(await observer.listClients().catch(() => [id])).includes(id), 15_000);

  const events = await auditEvents(d, null);
  for (const ev of ['broker.wipe_sent', 'broker.session_kicked']) {
    assert.ok(
      events.some((e) => e.event === ev && e.outcome === 'ok'),
      `audit has ${ev}`,
    );
  }
  assert.ok(
    events.some((e) => e.event === 'broker.crl_published' && e.outcome === 'ok'),
    'audit has broker.crl_published',
  );
});

test('reconcile heals the broker both ways: missing device clients come back, unknown ones go; other identities stay', async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  const dev = await enrolledDevice(t, d);
  const observer = await adminDynsec(d);
  t.after(() => observer.close());
  const monitor = await d.serviceIdentity('edgeid-ops-monitor', { roles: [MONITOR_ROLE] });

  const ghost = 'dev-0123456789abcdef';
  await observer.removeDevice(dev.deviceId!);
  await observer.provisionDevice(ghost);
  const others = (await observer.listClients()).filter((u) => u !== ghost).sort();
  assert.deepEqual(others, [BROKER_ADMIN_CN, monitor.cn, TEST_DYNSEC_CN, `${TEST_DYNSEC_CN}-1`].sort());
  const res = JSON.parse(await d.admin(['broker', 'reconcile', '--json'])) as { added: string[]; removed: string[] };
  assert.deepEqual(res, { added: [dev.deviceId], removed: [ghost] });
  const clients = await observer.listClients();
  assert.ok(clients.includes(dev.deviceId!));
  assert.ok(!clients.includes(ghost));
  // the server's own identity and the operators' tools (no device ids) are not the server's to remove
  assert.deepEqual(clients.filter((u) => u !== dev.deviceId).sort(), others);
  // A second run has nothing to do.
  assert.deepEqual(JSON.parse(await d.admin(['broker', 'reconcile', '--json'])), { added: [], removed: [] });
  // Each reconcile is one action with one audit row (the start-up reconcile is one too).
  const rows = JSON.parse(await d.admin(['audit', 'export', '--json'])) as {
    event: string;
    actor: string;
    details: { added?: string[] } | null;
  }[];
  const reconciles = rows.filter((r) => /reconcile/.test(r.event));
  assert.equal(reconciles.filter((r) => r.actor === 'server').length, 1, 'the start-up reconcile');
  assert.deepEqual(
    reconciles.filter((r) => r.actor === 'user:admin').map((r) => r.details?.added),
    [[dev.deviceId], []],
  );
  assert.ok(
    reconciles.every((r) => r.event === 'admin.broker.reconcile'),
    JSON.stringify(reconciles.map((r) => r.event)),
  );
});

test('a hung broker does not stop a revocation: the call returns, each failed step is audited, the CRL still goes out', async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  const dev = await enrolledDevice(t, d);
  const id = dev.deviceId!;
  const serial = new X509Certificate(dev.certificate!).serialNumber.toLowerCase().replace(/^0+/, '');
  const pid = Number((await readFile(d.broker.reloadCommand[2]!.match(/'([^']+)'/)![1]!, 'utf8')).trim());
  process.kill(pid, 'SIGSTOP');
  t.after(() => {
    try {
      process.kill(pid, 'SIGCONT');
    } catch {
      /* gone */
    }
  });

  const out = JSON.parse(await d.admin(['revoke', id, '--reason', 'key-compromise', '--json'])) as {
    device: { status: string };
    hooks: { ok: boolean }[];
  };
  assert.equal(out.device.status, 'revoked');
  assert.ok(
    out.hooks.some((h) => !h.ok),
    'the broker step is reported as failed',
  );
  const events = await auditEvents(d, id);
  assert.ok(events.some((e) => e.event === 'broker.wipe_sent' && e.outcome === 'fail' && e.reason === 'broker_unavailable'));
  assert.ok(
    events.some((e) => e.event === 'broker.session_kicked' && e.outcome === 'fail'),
    'the kick was still attempted',
  );
  const crl = new x509.X509Crl(await readFile(path.join(d.brokerDir, 'crl.pem'), 'utf8'));
  assert.ok(
    crl.entries.some((e) => e.serialNumber.toLowerCase().replace(/^0+/, '') === serial),
    'the broker CRL file revokes the serial',
  );

  // The broker comes back: reconcile removes the revoked device's client.
  process.kill(pid, 'SIGCONT');
  await waitFor(
    'reconcile removes the device',
    async () => {
      const r = JSON.parse(await d.admin(['broker', 'reconcile', '--json']).catch(() => '{"removed":[]}')) as { removed: string[] };
      const observer = await adminDynsec(d);
      try {
        return !(await observer.listClients()).includes(id) || r.removed.includes(id);
      } finally {
        await observer.close();
      }
    },
    60_000,
  );
});
