/**
 * Quarantine cuts access, end to end: a real server, the Mosquitto `edgeid-admin broker config`
 * configures, and the agent on swtpm as processes. The device boots a changed boot chain; a
 * signed `renew-now` makes the running agent renew; the server quarantines it, puts its live
 * certificate on the CRL (reason privilegeWithdrawn), reduces its broker rights to its control
 * topic at once, and the broker restart that loads the CRL refuses its certificate. Approval
 * restores the role; the agent's own renewal retry then gets a new certificate and it is back.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as x509 from '@peculiar/x509';
import type { AuditRow } from '../../protocol/api.js';
import { quarantineRoleName, deviceRoleName } from '../../enroll-server/broker/dynsec.js';
import { readDeviceIdentity, startRevocationDeployment, wideObserver } from '../../scripts/harness/revocation.js';
import { extendBootPcrs, startSwtpm } from '../../scripts/harness/swtpm.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { agentCli, spawnAgent } from '../helpers/agent.js';

test('a quarantined agent loses its certificate (CRL) and its broker rights but its control topic; approval restores them and its renewal brings it back', async (t) => {
  const d = await startRevocationDeployment();
  t.after(() => d.stop());
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const work = await tmpDir('edgeid-quarantine-e2e-', t);
  const stateDir = path.join(work, 'state');
  const configFile = path.join(work, 'agent.json');
  // quick renewal retries, so the test waits on the agent's own retry after the approval
  await writeFile(configFile, JSON.stringify({ renewal: { backoffBaseMs: 200, backoffCapMs: 1000 } }));

  const { uri } = JSON.parse(await d.admin(['token', 'create', '--zone', 'default', '--owner', 'controls-team', '--json'])) as {
    uri: string;
  };
  const enrolled = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--config', configFile, '--json']);
  assert.equal(enrolled.code, 0, enrolled.stderr);
  const id = (JSON.parse(enrolled.stdout) as { deviceId: string }).deviceId;
  const oldSerial =
    (await readDeviceIdentity(stateDir)).certPem &&
    new x509.X509Certificate((await readDeviceIdentity(stateDir)).certPem).serialNumber.toLowerCase();

  // The device reboots into a changed boot chain (PCR 4), then runs.
  await extendBootPcrs(tpm.tcti, 'changed-boot-chain', [4]);
  const observer = await wideObserver(d, [`devices/${id}/state`, `edgeid/${id}/control`]);
  t.after(() => observer.close());
  const beats = () => observer.messages.filter((m) => m.topic === `devices/${id}/state`).length;
  const agent = spawnAgent([
    'run',
    '--state',
    stateDir,
    '--tcti',
    tpm.tcti,
    '--config',
    configFile,
    '--heartbeat',
    '0.2',
    '--log-level',
    'info',
  ]);
  t.after(async () => {
    if (agent.child.exitCode === null) agent.child.kill('SIGKILL');
    await agent.exit;
  });
  await waitFor('heartbeats of the agent', () => beats() >= 3, 60_000);

  // ---- quarantine: renew-now, the renewal quotes the changed PCR ----
  const refusals = () =>
    agent
      .log()
      .split('\n')
      .filter((l) => l.includes('"mqtt error"') || l.includes('mqtt connection closed') || l.includes('mqtt suspended')).length;
  const refusedBefore = refusals();
  const startsBefore = d.broker.starts();
  const sent = await d.adminApi<{ published: boolean }>('POST', `/v1/admin/devices/${id}/control`, { type: 'renew-now' });
  assert.equal(sent.status, 200, JSON.stringify(sent.body));
  const device = async () =>
    (
      await d.adminApi<{
        device: {
          status: string;
          statusReason: string | null;
          certificates: { serial: string; revokedAt: string | null; reason: string | null }[];
        };
      }>('GET', `/v1/admin/devices/${id}`)
    ).body.device;
  await waitFor('the device to be quarantined', async () => (await device()).status === 'quarantined', 30_000);
  const q = await device();
  assert.match(q.statusReason!, /PCRs 4 differ/);
  const oldCert = q.certificates.find((c) => c.serial.toLowerCase() === oldSerial)!;
  assert.ok(oldCert.revokedAt, 'the live certificate is revoked');
  assert.equal(oldCert.reason, 'privilege-withdrawn');

  // the broker rights shrank to the control topic: the quarantine role only, with control ACLs only
  const audit = async () =>
    (await d.admin(['audit', 'export']))
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as AuditRow)
      .filter((r) => r.deviceId === id);
  await waitFor('broker.quarantine in the audit log', async () => (await audit()).some((r) => r.event === 'broker.quarantine'), 30_000);
  assert.equal((await audit()).find((r) => r.event === 'broker.quarantine')!.outcome, 'ok');
  const dyn = await d.dynsec();
  try {
    const [c] = await dyn.send([{ command: 'getClient', username: id }]);
    const roles = (c!.data as { client: { roles: { rolename: string }[] } }).client.roles.map((r) => r.rolename);
    assert.deepEqual(roles, [quarantineRoleName(id)]);
    const [r] = await dyn.send([{ command: 'getRole', rolename: quarantineRoleName(id) }]);
    const acls = (r!.data as { role: { acls: { acltype: string; topic: string; allow: boolean }[] } }).role.acls;
    assert.deepEqual(acls.map((a) => `${a.acltype} ${a.topic} ${a.allow}`).sort(), [
      `publishClientReceive edgeid/${id}/control true`,
      `subscribePattern edgeid/${id}/control true`,
    ]);
  } finally {
    await dyn.close();
  }

  // the CRL the broker loads revokes the serial, and the broker restarted to load it
  await d.brokerRestarted(startsBefore, 30_000);
  const crl = new x509.X509Crl(await readFile(path.join(d.brokerDir, 'crl.pem'), 'utf8'));
  const entry = crl.entries.find((e) => e.serialNumber.toLowerCase() === oldSerial);
  assert.ok(entry, 'the serial is on the broker CRL');
  assert.equal(entry!.reason, x509.X509CrlReason.privilegeWithdrawn);
  // the agent's old certificate is refused at the TLS handshake from now on: its reconnects fail
  const beatsAtCut = beats();
  // the agent backs off (and suspends MQTT) once the broker refuses its certificate, maybe already
  // before the restart was seen here: one refusal since the quarantine is the signal
  await waitFor('the agent to be refused by the broker', () => refusals() >= refusedBefore + 1, 60_000);
  assert.ok(beats() - beatsAtCut <= 1, `no heartbeat got through after the CRL reload (${beats() - beatsAtCut})`);
  // ---- approval: the role comes back, the agent's retry renews, and it publishes again ----
  const approved = await d.adminApi<{ device: { status: string } }>('POST', `/v1/admin/devices/${id}/approve-baseline`, {});
  assert.equal(approved.status, 200);
  await waitFor('heartbeats with a new certificate', () => beats() >= beatsAtCut + 3, 60_000).catch(async (e: Error) => {
    const tail = agent
      .log()
      .split('\n')
      .slice(-25)
      .map((l) => l.slice(0, 300))
      .join('\n');
    const rows = (await audit())
      .slice(-8)
      .map((r) => `${r.event} ${r.outcome} ${r.reason}`)
      .join('\n');
    throw new Error(`${e.message}\nagent:\n${tail}\naudit:\n${rows}`);
  });
  const rows = await audit();
  assert.ok(
    rows.some((r) => r.event === 'broker.restore' && r.outcome === 'ok'),
    'broker.restore audited',
  );
  const closed = rows.filter((r) => r.event === 'renew' && r.outcome === 'ok').at(-1)!;
  assert.equal(
    (closed.details as { baselineWindowClosed?: { newBaseline: boolean } }).baselineWindowClosed?.newBaseline,
    true,
    'the renewal after approval recorded the new baseline',
  );
  const dyn2 = await d.dynsec();
  try {
    const [c] = await dyn2.send([{ command: 'getClient', username: id }]);
    assert.deepEqual(
      (c!.data as { client: { roles: { rolename: string }[] } }).client.roles.map((r) => r.rolename),
      [deviceRoleName(id)],
    );
  } finally {
    await dyn2.close();
  }
  const now = await device();
  assert.equal(now.status, 'active');
  assert.ok(
    now.certificates.some((c) => c.revokedAt === null && c.serial.toLowerCase() !== oldSerial),
    'a new, unrevoked certificate',
  );
});
