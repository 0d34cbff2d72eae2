/**
 * Alert delivery beyond the integration test's loopback HTTP: the webhook over HTTPS to a receiver
 * whose certificate chains to `caFile` (delivered), the same receiver without `caFile` (refused by
 * TLS, retried, then `failed` after maxAttempts, the error recorded), and syslog over TCP with
 * RFC 6587 octet-counting framing. The queue is a real SQLite store.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import type { AlertWebhookConfig, AlertSyslogConfig } from '../../enroll-server/config.js';
import { startAlertDelivery } from '../../enroll-server/services/alert-delivery.js';
import type { ServerContext } from '../../enroll-server/services/context.js';
import { SqliteStore } from '../../enroll-server/store/sqlite.js';
import type { AlertOccurrence, AlertRecord } from '../../enroll-server/store/store.js';
import { makeTestCa } from '../../scripts/harness/pki.js';

const occurrence = (id: string): AlertOccurrence => ({
  id,
  rule: 'device_revoked',
  key: id,
  severity: 'warning',
  deviceId: 'dev-0123456789abcdef',
  zone: 'a',
  address: null,
  summary: 'device dev-0123456789abcdef was revoked',
  at: Date.now(),
  fire: true,
  openCount: 1,
  bumpBy: 1,
});

function context(store: SqliteStore, alerts: { webhook: AlertWebhookConfig | null; syslog: AlertSyslogConfig | null }): ServerContext {
  return { config: { alerts }, store, log: pino({ level: 'silent' }), now: Date.now } as unknown as ServerContext;
}

async function until(cond: () => Promise<boolean> | boolean, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

test('webhook over HTTPS: delivered with caFile; without it refused by TLS, retried, then failed', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-alert-delivery-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const pki = await makeTestCa();
  const caFile = path.join(dir, 'ca.pem');
  const secretFile = path.join(dir, 'secret');
  await writeFile(caFile, pki.caPem);
  await writeFile(secretFile, 'a-webhook-secret-of-some-length\n', { mode: 0o600 });
  const got: string[] = [];
  const receiver = https.createServer({ cert: pki.server.certPem, key: pki.server.keyPem }, (req, res) => {
    req.resume();
    req.on('end', () => {
      got.push(String(req.headers['x-edgeid-delivery']));
      res.writeHead(200).end();
    });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  t.after(() => receiver.close());
  const url = `https://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
  const store = new SqliteStore(path.join(dir, 'edgeid.db'));
  t.after(() => store.close());
  const enqueue = async (id: string) =>
    store.commitAlerts({
      occurrences: [occurrence(id)],
      state: {},
      delivery: (a: AlertRecord) => ({
        id: `dlv-${id.slice(4)}`,
        alertId: a.id,
        body: JSON.stringify({ type: 'alert.opened', alert: { id: a.id } }),
        state: 'pending',
        attempts: 0,
        nextAt: Date.now(),
        lastStatus: null,
        lastError: null,
        createdAt: Date.now(),
        deliveredAt: null,
      }),
    });
  const base = { url, secretFile, maxAttempts: 3, backoff: 0.02, maxBackoff: 0.05, timeout: 5 };

  const trusted = startAlertDelivery(context(store, { webhook: { ...base, caFile }, syslog: null }));
  await enqueue('alr-00000000000000a1');
  trusted.poke();
  await until(async () => (await store.listAlertDeliveries({ limit: 10 }))[0]?.state === 'delivered', 'delivery over HTTPS');
  await trusted.close();
  assert.deepEqual(got, ['dlv-00000000000000a1']);
  const [ok] = await store.listAlertDeliveries({ limit: 10 });
  assert.deepEqual([ok!.attempts, ok!.lastStatus, ok!.lastError], [1, 200, null]);

  const untrusted = startAlertDelivery(context(store, { webhook: { ...base, caFile: null }, syslog: null }));
  await enqueue('alr-00000000000000a2');
  untrusted.poke();
  const second = async () => (await store.listAlertDeliveries({ alertId: 'alr-00000000000000a2', limit: 1 }))[0]!;
  await until(async () => (await second()).state === 'failed', 'the delivery to give up');
  await untrusted.close();
  const failed = await second();
  assert.equal(failed.attempts, 3, 'maxAttempts');
  assert.equal(failed.lastStatus, null);
  assert.match(failed.lastError ?? '', /CERT|SIGNATURE|ISSUER/, 'the TLS refusal recorded');
  assert.deepEqual(got, ['dlv-00000000000000a1'], 'nothing reached the receiver without a trusted chain');
});

test('webhook: a receiver that trickles its answer a byte at a time fails the attempt at `timeout` (timed out)', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-alert-delivery-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const secretFile = path.join(dir, 'secret');
  await writeFile(secretFile, 'a-webhook-secret-of-some-length\n', { mode: 0o600 });
  // never idle long enough for a socket timeout, never done: a header byte every 100 ms
  const sockets = new Set<net.Socket>();
  const receiver = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.write('HTTP/1.1 200 OK\r\nX-Slow: ');
    const drip = setInterval(() => s.write('a'), 100);
    s.on('close', () => {
      clearInterval(drip);
      sockets.delete(s);
    });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const s of sockets) s.destroy();
    receiver.close();
  });
  const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
  const store = new SqliteStore(path.join(dir, 'edgeid.db'));
  t.after(() => store.close());
  await store.commitAlerts({
    occurrences: [occurrence('alr-00000000000000b1')],
    state: {},
    delivery: (a: AlertRecord) => ({
      id: 'dlv-00000000000000b1',
      alertId: a.id,
      body: JSON.stringify({ type: 'alert.opened', alert: { id: a.id } }),
      state: 'pending',
      attempts: 0,
      nextAt: Date.now(),
      lastStatus: null,
      lastError: null,
      createdAt: Date.now(),
      deliveredAt: null,
    }),
  });
  const started = Date.now();
  const worker = startAlertDelivery(
    context(store, {
      webhook: { url, secretFile, caFile: null, maxAttempts: 1, backoff: 0.02, maxBackoff: 0.05, timeout: 1 },
      syslog: null,
    }),
  );
  worker.poke();
  const d = async () => (await store.listAlertDeliveries({ limit: 1 }))[0]!;
  await until(async () => (await d()).state === 'failed', 'the attempt to time out');
  await worker.close();
  assert.deepEqual([(await d()).lastStatus, (await d()).lastError], [null, 'timed out']);
  assert.ok(Date.now() - started < 10_000, 'within the timeout, not when the receiver stops');
});

test('syslog over TCP: RFC 6587 octet-counting frames of RFC 5424 messages', async (t) => {
  const frames: Buffer[] = [];
  const server = net.createServer((s) => s.on('data', (c: Buffer) => frames.push(c)));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => server.close());
  const syslog: AlertSyslogConfig = {
    host: '127.0.0.1',
    port: (server.address() as AddressInfo).port,
    protocol: 'tcp',
    facility: 4,
    appName: 'edgeid',
  };
  const d = startAlertDelivery(context(null as unknown as SqliteStore, { webhook: null, syslog }));
  const alert: AlertRecord = {
    ...occurrence('alr-00000000000000b1'),
    summary: 'device dev-0123456789abcdef was revoked ünïcode',
    firstSeen: 1,
    lastSeen: 1,
    count: 1,
    state: 'open',
    acknowledgedBy: null,
    acknowledgedAt: null,
  };
  d.syslog(alert);
  await until(() => Buffer.concat(frames).length > 0 && Buffer.concat(frames).toString('utf8').endsWith('ünïcode'), 'the frame');
  await d.close();
  const data = Buffer.concat(frames);
  const sp = data.indexOf(0x20);
  const len = Number(data.subarray(0, sp).toString());
  const msg = data.subarray(sp + 1);
  assert.equal(len, msg.length, 'MSG-LEN counts octets, not characters');
  assert.match(msg.toString('utf8'), /^<36>1 \S+ \S+ edgeid \d+ alert \[edgeid@32473 alert="alr-00000000000000b1" rule="device_revoked" /);
});
