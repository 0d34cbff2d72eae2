/**
 * Monitoring tools get broker identities of their own: `edgeid-admin broker monitor add NAME
 * --out DIR` makes the key where the tool runs, the server issues a client certificate with CN
 * edgeid-monitor-NAME from its CA and gives that name a dynsec client with the read-only monitor
 * role; `remove` deletes the client and puts the certificate on the CRL. Real server, real CLI,
 * real Mosquitto 2.0 (the config `broker config` renders), real TLS. Plus: a broker whose dynsec
 * file an older edgeid wrote has its service roles brought up to date when the server connects.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createPrivateKey, createPublicKey, randomBytes, X509Certificate } from 'node:crypto';
import { readFile, stat, writeFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import * as x509 from '@peculiar/x509';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { AuditRow } from '../../protocol/api.js';
import type { DynsecClient } from '../../enroll-server/broker/dynsec.js';
import { MONITOR_ROLE } from '../../enroll-server/broker/dynsec.js';
import { initialDynsecConfig } from '../../enroll-server/broker/mosquitto-config.js';
import { programCommand } from '../../scripts/harness/bins.js';
import { addTestDynsecClient, startDeployment } from '../../scripts/harness/deployment.js';
import { REPO, tmpDir } from '../../scripts/harness/fs.js';
import {
  publishReason,
  softwareDeviceTls,
  startRevocationDeployment,
  subscribeReasons,
  tlsHandshake,
  PROBE_ACCEPTED_CONNACK,
  type RevocationDeployment,
} from '../../scripts/harness/revocation.js';
import { waitFor } from '../../scripts/harness/wait.js';

const run = promisify(execFile);
const NOT_AUTHORIZED_V5 = 135;

type Tls = Pick<IClientOptions, 'ca' | 'cert' | 'key'>;

/** edgeid-admin against the deployment's server, failures included: exit code, stdout, stderr. */
async function adminRun(dataDir: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const [program, ...pre] = programCommand('edgeid-admin');
  try {
    const r = await run(program, [...pre, ...args, '--data', dataDir], { cwd: REPO, timeout: 60_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

interface AddOutput {
  monitor: { name: string; commonName: string; serial: string; notAfter: string };
  files: { dir: string; keyFile: string; certFile: string; caFile: string };
  brokerUrl: string | null;
}

/** The TLS options a tool builds from the files `broker monitor add` wrote. */
async function monitorTls(out: AddOutput): Promise<Tls> {
  return {
    ca: await readFile(out.files.caFile, 'utf8'),
    cert: await readFile(out.files.certFile, 'utf8'),
    key: await readFile(out.files.keyFile, 'utf8'),
  };
}

const deviceTls = softwareDeviceTls;

function connect(t: import('node:test').TestContext, url: string, creds: Tls, clientId: string): Promise<MqttClient> {
  const p = mqtt.connectAsync(url, { ...creds, clientId, protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 10_000, clean: true });
  p.then((c) => t.after(() => c.endAsync(true))).catch(() => {});
  return p;
}

async function auditRows(d: { admin(args: string[]): Promise<string> }): Promise<AuditRow[]> {
  return JSON.parse(await d.admin(['audit', 'export', '--json'])) as AuditRow[];
}

const norm = (s: string) => s.toLowerCase().replace(/^0+/, '');

test('broker monitor add/list/remove: own identities that read and never write; mistakes change nothing; remove ends the tool', async (t) => {
  const d: RevocationDeployment = await startRevocationDeployment();
  t.after(() => d.stop());
  const B = `dev-${randomBytes(8).toString('hex')}`;
  const dyn = await d.dynsec();
  t.after(() => dyn.close());
  await dyn.provisionDevice(B);

  // ---- add: key made by the CLI, files written, the certificate is the tool's own identity ----
  const outDir = await tmpDir('edgeid-monitor-');
  const a = JSON.parse(await d.admin(['broker', 'monitor', 'add', 'ops-a', '--out', outDir, '--days', '30', '--json'])) as AddOutput;
  assert.equal(a.monitor.commonName, 'edgeid-monitor-ops-a');
  assert.equal(a.brokerUrl, d.broker.url);
  assert.equal((await stat(a.files.keyFile)).mode & 0o777, 0o600, 'the private key is 0600');
  const certPem = await readFile(a.files.certFile, 'utf8');
  const cert = new X509Certificate(certPem);
  assert.equal(cert.subject, 'CN=edgeid-monitor-ops-a');
  assert.equal(norm(cert.serialNumber), norm(a.monitor.serial));
  const days = (Date.parse(cert.validTo) - Date.now()) / 86400_000;
  assert.ok(days > 29 && days <= 30.01, `--days 30 gives a 30-day certificate (${days})`);
  const keySpki = createPublicKey(createPrivateKey(await readFile(a.files.keyFile, 'utf8'))).export({ type: 'spki', format: 'der' });
  assert.ok(Buffer.from(cert.publicKey.export({ type: 'spki', format: 'der' })).equals(keySpki), 'the certificate is for the key in DIR');
  assert.ok(!d.server.log().includes((await readFile(a.files.keyFile, 'utf8')).split('\n')[1]!), 'no key material in the server log');
  const human = await d.admin(['broker', 'monitor', 'add', 'ops-b', '--out', outDir]);
  assert.match(
    human,
    /mosquitto_sub -h 127\.0\.0\.1 -p \d+ --cafile \S+ca\.pem --cert \S+edgeid-monitor-ops-b\.pem --key \S+edgeid-monitor-ops-b\.key/,
  );
  const b: AddOutput = {
    monitor: { name: 'ops-b', commonName: 'edgeid-monitor-ops-b', serial: '', notAfter: '' },
    files: {
      dir: outDir,
      keyFile: path.join(outDir, 'edgeid-monitor-ops-b.key'),
      certFile: path.join(outDir, 'edgeid-monitor-ops-b.pem'),
      caFile: path.join(outDir, 'ca.pem'),
    },
    brokerUrl: null,
  };

  // ---- both tools connect with the written files, each as itself ----
  const tlsA = await monitorTls(a);
  const monA = await connect(t, d.broker.url, tlsA, 'any-client-id');
  const monB = await connect(t, d.broker.url, await monitorTls(b), 'any-client-id');
  const aEvents: string[] = [];
  for (const ev of ['close', 'offline', 'disconnect', 'error'] as const) monA.on(ev, () => aEvents.push(ev));
  const seenA: { topic: string; payload: string }[] = [];
  const seenB: { topic: string; payload: string }[] = [];
  monA.on('message', (topic, p) => seenA.push({ topic, payload: p.toString() }));
  monB.on('message', (topic, p) => seenB.push({ topic, payload: p.toString() }));
  assert.deepEqual(
    Object.fromEntries(await subscribeReasons(monA, ['devices/#', 'edgeid/+/control', '#', '$CONTROL/dynamic-security/#'])),
    { 'devices/#': 1, 'edgeid/+/control': 1, '#': NOT_AUTHORIZED_V5, '$CONTROL/dynamic-security/#': NOT_AUTHORIZED_V5 },
  );
  assert.deepEqual(Object.fromEntries(await subscribeReasons(monB, ['devices/#', 'edgeid/+/control'])), {
    'devices/#': 1,
    'edgeid/+/control': 1,
  });
  assert.match(d.broker.log(), /as edgeid-monitor-ops-a \(p5, c1, k\d+, u'edgeid-monitor-ops-a'\)/, 'named by its certificate');
  assert.match(d.broker.log(), /as edgeid-monitor-ops-b \(p5, c1, k\d+, u'edgeid-monitor-ops-b'\)/);

  // A device's publish reaches both; a control command (the server's, signed) reaches both.
  const dev = await connect(t, d.broker.url, await deviceTls(d.dataDir, B), B);
  const marker = `m-${randomBytes(4).toString('hex')}`;
  assert.equal(await publishReason(dev, `devices/${B}/state`, marker), 0);
  await waitFor('the device publish at both monitors', () =>
    [seenA, seenB].every((s) => s.some((m) => m.topic === `devices/${B}/state` && m.payload === marker)),
  );
  const controlBy = new Promise<string>((resolve) => {
    dev.on('message', (topic, p) => topic === `edgeid/${B}/control` && resolve(p.toString()));
  });
  await dev.subscribeAsync(`edgeid/${B}/control`, { qos: 1 });
  // the control publisher here is a test identity with that one right (the device is not enrolled)
  const publisher = await d.serviceIdentity('edgeid-test-control', {
    acls: [{ acltype: 'publishClientSend', topic: 'edgeid/+/control', allow: true, priority: 0 }],
  });
  const ctl = await connect(t, d.broker.url, publisher.tls, publisher.cn);
  const command = JSON.stringify({ payload: JSON.stringify({ type: 'renew-now', deviceId: B }), signature: 'x' });
  assert.equal(await publishReason(ctl, `edgeid/${B}/control`, command), 0);
  assert.equal(await controlBy, command);
  await waitFor('the control command at both monitors', () =>
    [seenA, seenB].every((s) => s.some((m) => m.topic === `edgeid/${B}/control` && m.payload === command)),
  );
  // …and a monitor can neither send one nor publish as a device.
  assert.equal(await publishReason(monA, `edgeid/${B}/control`, command.replace('renew-now', 'wipe')), NOT_AUTHORIZED_V5);
  assert.equal(await publishReason(monA, `devices/${B}/state`, 'forged'), NOT_AUTHORIZED_V5);
  const after = `n-${randomBytes(4).toString('hex')}`;
  assert.equal(await publishReason(dev, `devices/${B}/state`, after), 0);
  await waitFor('a later device publish at monitor B', () => seenB.some((m) => m.payload === after));
  assert.ok(!seenB.some((m) => m.payload === 'forged' || m.payload.includes('wipe')), "nothing of monitor A's attempts was delivered");
  assert.deepEqual(aEvents, [], 'two monitors do not end each other');
  assert.doesNotMatch(d.broker.log(), /already connected, closing old connection/);

  // ---- mistakes: 4xx with a stable code, nothing changed ----
  const listBefore = await d.admin(['broker', 'monitor', 'list', '--json']);
  const clientsBefore = (await dyn.listClients()).sort();
  const spki = createPublicKey(createPrivateKey(tlsA.key as string))
    .export({ type: 'spki', format: 'der' })
    .toString('base64');
  for (const [body, status, code] of [
    [{ name: 'ops-a', spki }, 409, 'broker_monitor_exists'],
    [{ name: 'Ops_A', spki }, 400, 'bad_request'],
    [{ name: '-ops', spki }, 400, 'bad_request'],
    [{ name: 'x'.repeat(33), spki }, 400, 'bad_request'],
    [{ name: 'ops-c', spki, days: 366 }, 400, 'bad_request'],
    [{ name: 'ops-c', spki: Buffer.from('not a key, just bytes that are long enough').toString('base64') }, 400, 'bad_request'],
  ] as const) {
    const r = await d.adminApi<{ error: { code: string } }>('POST', '/v1/admin/broker/monitors', body);
    assert.equal(r.status, status, JSON.stringify({ body: { ...body, spki: '…' }, got: r.body }));
    assert.equal(r.body.error.code, code);
  }
  const gone = await d.adminApi<{ error: { code: string } }>('POST', '/v1/admin/broker/monitors/nobody/remove', {});
  assert.deepEqual([gone.status, gone.body.error.code], [404, 'broker_monitor_unknown']);
  // the CLI: a bad NAME is a usage error before anything is asked; a duplicate is the server's 409
  const dupDir = await tmpDir('edgeid-monitor-dup-');
  const bad = await adminRun(d.dataDir, ['broker', 'monitor', 'add', 'Bad_Name', '--out', dupDir]);
  assert.equal(bad.code, 2, bad.stderr);
  const dup = await adminRun(d.dataDir, ['broker', 'monitor', 'add', 'ops-a', '--out', dupDir]);
  assert.equal(dup.code, 1);
  assert.match(dup.stderr, /broker_monitor_exists/);
  assert.deepEqual(await readdir(dupDir), [], 'a refused add writes no file');
  assert.equal(await d.admin(['broker', 'monitor', 'list', '--json']), listBefore);
  assert.deepEqual((await dyn.listClients()).sort(), clientsBefore);
  assert.deepEqual(aEvents, [], "a duplicate add does not touch the live monitor's session");
  const listed = JSON.parse(listBefore) as { name: string; serial: string }[];
  assert.deepEqual(
    listed.map((m) => m.name),
    ['ops-a', 'ops-b'],
  );

  // ---- remove: the session ends at once; until the CRL is loaded a reconnect has no rights ----
  await d.holdReload();
  const closed = new Promise<void>((resolve) => monA.once('close', () => resolve()));
  const removing = d.adminApi<{ removed: string; revokedSerial: string | null; crlNumber: string }>(
    'POST',
    '/v1/admin/broker/monitors/ops-a/remove',
    {},
  );
  await closed;
  await waitFor('the broker to log the kick', () =>
    d.broker.log().includes('Client edgeid-monitor-ops-a been disconnected by administrative action.'),
  );
  const again = await connect(t, d.broker.url, tlsA, 'edgeid-monitor-ops-a');
  assert.equal(again.connected, true, 'Mosquitto still accepts the certificate until it loads the CRL (CONNACK 0)…');
  assert.deepEqual(Object.fromEntries(await subscribeReasons(again, ['devices/#', 'edgeid/+/control'])), {
    'devices/#': NOT_AUTHORIZED_V5,
    'edgeid/+/control': NOT_AUTHORIZED_V5,
  });
  assert.equal(await publishReason(again, `devices/${B}/state`, 'x'), NOT_AUTHORIZED_V5, '…but gives it no rights');
  await again.endAsync(true);

  // ---- …and once the CRL is out, the broker refuses the certificate at the handshake ----
  await d.releaseReload();
  const removed = await removing;
  assert.equal(removed.status, 200, JSON.stringify(removed.body));
  assert.equal(removed.body.removed, 'edgeid-monitor-ops-a');
  assert.equal(norm(removed.body.revokedSerial ?? ''), norm(a.monitor.serial));
  const brokerCrl = new x509.X509Crl(await readFile(path.join(d.brokerDir, 'crl.pem'), 'utf8'));
  assert.ok(
    brokerCrl.entries.some((e) => norm(e.serialNumber) === norm(a.monitor.serial)),
    "the monitor's serial is on the broker's CRL",
  );
  const ctx = tls.createSecureContext({ ca: tlsA.ca as string, cert: tlsA.cert as string, key: tlsA.key as string, minVersion: 'TLSv1.2' });
  const verdict = await waitFor('a verdict from the broker with the new CRL', async () => {
    const r = await tlsHandshake(d.broker.port, ctx);
    return (!r.ok && (r.code === 'ECONNREFUSED' || r.code === 'ECONNRESET' || r.code === 'CLOSED')) ||
      (r.ok && r.connack === PROBE_ACCEPTED_CONNACK)
      ? null
      : r;
  });
  assert.equal(!verdict.ok && verdict.code, 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED', JSON.stringify(verdict));
  // the other monitor is still itself and still sees devices (after the broker came back)
  const monB2 = await connect(t, d.broker.url, await monitorTls(b), 'x');
  assert.deepEqual(Object.fromEntries(await subscribeReasons(monB2, ['devices/#'])), { 'devices/#': 1 });
  const listedAfter = JSON.parse(await d.admin(['broker', 'monitor', 'list', '--json'])) as { name: string }[];
  assert.deepEqual(
    listedAfter.map((m) => m.name),
    ['ops-b'],
  );
  assert.ok(!(await dyn.listClients()).sort().includes('edgeid-monitor-ops-a'));
  // a second remove: nothing left to remove
  const twice = await d.adminApi<{ error: { code: string } }>('POST', '/v1/admin/broker/monitors/ops-a/remove', {});
  assert.deepEqual([twice.status, twice.body.error.code], [404, 'broker_monitor_unknown']);

  // ---- one audit row per action ----
  const rows = (await auditRows(d)).filter((r) => r.event.startsWith('admin.broker.monitor.'));
  const summary = rows.map((r) =>
    `${r.event} ${r.outcome} ${r.reason ?? ''} ${(r.details as { name?: string } | null)?.name ?? ''}`.trim(),
  );
  assert.deepEqual(summary.slice(0, 3), [
    'admin.broker.monitor.add ok  ops-a',
    'admin.broker.monitor.add ok  ops-b',
    'admin.broker.monitor.list ok',
  ]);
  assert.equal(summary.filter((s) => s === 'admin.broker.monitor.add fail broker_monitor_exists ops-a').length, 2, summary.join('\n'));
  assert.equal(summary.filter((s) => s === 'admin.broker.monitor.remove ok  ops-a').length, 1, summary.join('\n'));
  assert.equal(
    summary.filter((s) => s.startsWith('admin.broker.monitor.remove fail broker_monitor_unknown')).length,
    2,
    summary.join('\n'),
  );
  const removeRow = rows.find((r) => r.event === 'admin.broker.monitor.remove' && r.outcome === 'ok')!;
  assert.equal(norm(String((removeRow.details as { serial?: string }).serial)), norm(a.monitor.serial));
});

/** The dynsec file `broker config` wrote before monitors had their own role: the server's role read device topics. */
function olderDynsecConfig(): Record<string, unknown> {
  const doc = initialDynsecConfig() as { roles: { rolename: string; acls: unknown[] }[] };
  const allow = (acltype: string, topic: string) => ({ acltype, topic, allow: true, priority: 0 });
  return {
    ...doc,
    roles: [
      {
        rolename: 'edgeid-admin',
        acls: [
          allow('publishClientSend', '$CONTROL/dynamic-security/#'),
          allow('publishClientReceive', '$CONTROL/dynamic-security/#'),
          allow('subscribePattern', '$CONTROL/dynamic-security/#'),
          allow('publishClientSend', 'edgeid/+/control'),
          allow('subscribePattern', 'edgeid/+/control'),
          allow('publishClientReceive', 'edgeid/+/control'),
          allow('subscribePattern', 'devices/#'),
          allow('publishClientReceive', 'devices/#'),
        ],
      },
    ],
  };
}

type RoleAcl = { acltype: string; topic: string; allow: boolean };
async function roleAcls(dyn: DynsecClient, rolename: string): Promise<string[] | null> {
  const [r] = await dyn.send([{ command: 'getRole', rolename }], /not found/i);
  if (r?.error) return null;
  return ((r?.data as { role: { acls: RoleAcl[] } }).role.acls ?? []).map((a) => `${a.acltype} ${a.topic}`).sort();
}

test("a broker set up by an older edgeid: the server's connection brings its service roles up to date, once", async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  // The broker restarted on a dynsec file as an older `broker config` wrote it (plus the tests' client).
  await d.server.stop();
  const file = path.join(d.brokerDir, 'dynsec.json');
  await writeFile(file, JSON.stringify(olderDynsecConfig()), { mode: 0o600 });
  await addTestDynsecClient(file);
  await d.broker.restart();
  const want = (initialDynsecConfig().roles as { rolename: string; acls: RoleAcl[] }[]).map((r) => ({
    rolename: r.rolename,
    acls: r.acls.map((a) => `${a.acltype} ${a.topic}`).sort(),
  }));
  const dyn = await d.dynsec();
  t.after(() => dyn.close());
  assert.equal((await roleAcls(dyn, 'edgeid-admin'))?.length, 8, 'the old admin role is in place');
  assert.equal(await roleAcls(dyn, MONITOR_ROLE), null, 'no monitor role yet');

  await d.restartServer();
  const updated = await waitFor('the service roles update in the audit log', async () =>
    (await auditRows(d)).find((r) => r.event === 'broker.service_roles_updated'),
  );
  assert.equal(updated.outcome, 'ok', JSON.stringify(updated));
  assert.deepEqual((updated.details as { changes: string[] }).changes.sort(), [
    'created role edgeid-monitor',
    'removed publishClientReceive devices/# from edgeid-admin',
    'removed publishClientReceive edgeid/+/control from edgeid-admin',
    'removed subscribePattern devices/# from edgeid-admin',
    'removed subscribePattern edgeid/+/control from edgeid-admin',
  ]);
  for (const r of want) assert.deepEqual(await roleAcls(dyn, r.rolename), r.acls, r.rolename);

  // Idempotent: another start (and its reconcile) changes nothing and writes no second row.
  await d.restartServer();
  await waitFor('the second start-up reconcile', async () =>
    (await auditRows(d)).filter((r) => r.event === 'admin.broker.reconcile' && r.actor === 'server').length >= 2 ? true : null,
  );
  JSON.parse(await d.admin(['broker', 'reconcile', '--json']));
  assert.equal((await auditRows(d)).filter((r) => r.event === 'broker.service_roles_updated').length, 1);
  for (const r of want) assert.deepEqual(await roleAcls(dyn, r.rolename), r.acls, r.rolename);

  // The upgraded broker takes monitors.
  const outDir = await tmpDir('edgeid-monitor-up-');
  const m = JSON.parse(await d.admin(['broker', 'monitor', 'add', 'legacy-ops', '--out', outDir, '--json'])) as AddOutput;
  const mon = await connect(t, d.broker.url, await monitorTls(m), 'x');
  assert.deepEqual(Object.fromEntries(await subscribeReasons(mon, ['devices/#'])), { 'devices/#': 1 });
});
