/**
 * The `alerts` config section (defaults, per-zone thresholds, every refusal as config_invalid
 * naming the field), the webhook secret file (0600, never shown), the webhook signature and
 * backoff, the RFC 5424 message builder and the network a renewal comes from.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { loadConfig, type AlertSyslogConfig, type AlertWebhookConfig } from '../../enroll-server/config.js';
import { createServer } from '../../enroll-server/server.js';
import { backoffMs, readWebhookSecret, syslogMessage, webhookSignature } from '../../enroll-server/services/alert-delivery.js';
import { networkOf } from '../../enroll-server/services/alerts.js';
import type { AlertRecord } from '../../enroll-server/store/store.js';
import { EdgeidError } from '../../protocol/errors/index.js';

const load = (alerts: unknown, extra: Record<string, unknown> = {}) =>
  loadConfig({ argv: ['--data', '/tmp/x'], env: {}, file: { zones: { a: {}, b: {} }, ...extra, alerts } });

function refused(alerts: unknown, field: string, message: RegExp) {
  assert.throws(
    () => load(alerts),
    (e: unknown) => {
      assert.ok(e instanceof EdgeidError);
      assert.equal(e.code, 'config_invalid');
      assert.equal(e.details?.field, field);
      assert.match(e.message, message);
      return true;
    },
  );
}

test('alerts config: documented defaults; a zone overrides some keys and inherits the rest', () => {
  const c = load(undefined, { staleAfter: '12h' }).alerts;
  assert.deepEqual(c.defaults, {
    failures: { count: 5, window: 600 },
    addressFailures: { count: 20, window: 600 },
    badTokens: { count: 5, window: 600 },
    newNetwork: true,
    staleAfter: 43200,
  });
  assert.deepEqual(
    [c.issuance, c.caExpiryDays, c.checkInterval, c.webhook, c.syslog, c.zones],
    [{ factor: 10, floor: 50 }, 30, 60, null, null, {}],
  );
  const z = load({ defaults: { failures: { count: 9 } }, zones: { b: { failures: { window: '1h' }, newNetwork: false } } }).alerts;
  assert.deepEqual(z.defaults.failures, { count: 9, window: 600 });
  assert.deepEqual(z.zones.b!.failures, { count: 9, window: 3600 }, 'count from the defaults, window from the zone');
  assert.equal(z.zones.b!.newNetwork, false);
  assert.equal(z.zones.a, undefined);
  const w = load({ webhook: { url: 'https://hooks.example/edgeid', secretFile: 'secret' } }).alerts.webhook!;
  assert.deepEqual(
    { ...w, secretFile: path.basename(w.secretFile) },
    { url: 'https://hooks.example/edgeid', secretFile: 'secret', caFile: null, maxAttempts: 10, backoff: 5, maxBackoff: 3600, timeout: 10 },
  );
  assert.deepEqual(load({ syslog: { host: '127.0.0.1' } }).alerts.syslog, {
    host: '127.0.0.1',
    port: 514,
    protocol: 'udp',
    facility: 16,
    appName: 'edgeid',
  });
  for (const url of ['http://127.0.0.1:9/x', 'http://localhost/x', 'http://[::1]:8080/x'])
    assert.equal(load({ webhook: { url, secretFile: 's' } }).alerts.webhook!.url, url);
});

test('alerts config: every mistake is config_invalid naming the field', () => {
  refused('on', 'alerts', /must be an object/);
  refused({ bogus: 1 }, 'alerts.bogus', /unknown field/);
  refused({ defaults: { failures: { count: 0 } } }, 'alerts.defaults.failures.count', /integer from 1/);
  refused({ defaults: { badTokens: { window: 'soon' } } }, 'alerts.defaults.badTokens.window', /must be a duration/);
  refused({ defaults: { issuance: { factor: 1 } } }, 'alerts.defaults.issuance.factor', /from 2 to 1000/);
  refused({ defaults: { caExpiryDays: -1 } }, 'alerts.defaults.caExpiryDays', /integer/);
  refused({ zones: { nope: {} } }, 'alerts.zones.nope', /not a configured zone \(zones: a, b\)/);
  refused({ zones: { a: { issuance: { factor: 5 } } } }, 'alerts.zones.a.issuance', /unknown field/);
  refused({ zones: { a: { newNetwork: 'yes' } } }, 'alerts.zones.a.newNetwork', /true or false/);
  refused({ webhook: { secretFile: 's' } }, 'alerts.webhook.url', /non-empty string/);
  refused({ webhook: { url: 'not a url', secretFile: 's' } }, 'alerts.webhook.url', /not a URL/);
  refused({ webhook: { url: 'http://hooks.example/x', secretFile: 's' } }, 'alerts.webhook.url', /https:\/\/…, or http:\/\/ to a loopback/);
  refused({ webhook: { url: 'ftp://127.0.0.1/x', secretFile: 's' } }, 'alerts.webhook.url', /https/);
  refused({ webhook: { url: 'https://u:p@hooks.example/x', secretFile: 's' } }, 'alerts.webhook.url', /credentials/);
  refused({ webhook: { url: 'https://hooks.example/x' } }, 'alerts.webhook.secretFile', /non-empty string/);
  refused({ webhook: { url: 'https://h.example/', secretFile: 's', maxAttempts: 0 } }, 'alerts.webhook.maxAttempts', /1 to 100/);
  refused(
    { webhook: { url: 'https://h.example/', secretFile: 's', backoff: '1m', maxBackoff: '10s' } },
    'alerts.webhook.maxBackoff',
    /below backoff/,
  );
  refused({ syslog: { host: '127.0.0.1', protocol: 'sctp' } }, 'alerts.syslog.protocol', /"udp" or "tcp"/);
  refused({ syslog: { host: '127.0.0.1', appName: 'edge id' } }, 'alerts.syslog.appName', /printable ASCII/);
  refused({ syslog: { host: '127.0.0.1', facility: 24 } }, 'alerts.syslog.facility', /0 to 23/);
  refused({ syslog: { port: 514 } }, 'alerts.syslog.host', /non-empty string/);
});

test('webhook secret: a 0600 file of at least 16 characters; refusals never show its content', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-hook-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'secret');
  const secret = 'S3cr3t-value-that-must-never-show';
  await writeFile(file, `${secret}\n`, { mode: 0o644 });
  const refusedWith = (re: RegExp) =>
    assert.throws(
      () => readWebhookSecret(file),
      (e: unknown) => e instanceof EdgeidError && e.code === 'config_invalid' && re.test(e.message) && !e.message.includes(secret),
    );
  refusedWith(/must be mode 0600 \(it is 644\)/);
  await chmod(file, 0o600);
  assert.equal(readWebhookSecret(file).toString(), secret);
  await writeFile(file, 'short\n', { mode: 0o600 });
  refusedWith(/at least 16 characters/);
  assert.throws(() => readWebhookSecret(path.join(dir, 'missing')), /cannot read .*ENOENT/);

  // the server does not start with a group-readable secret
  await writeFile(file, `${secret}\n`);
  await chmod(file, 0o640);
  const config = loadConfig({
    argv: ['--data', path.join(dir, 'data'), '--listen', '127.0.0.1:0'],
    env: {},
    file: { alerts: { webhook: { url: 'https://hooks.example/x', secretFile: file } } },
  });
  await assert.rejects(
    createServer({ config, tls: false, logger: pino({ level: 'silent' }), housekeeping: false }),
    (e: unknown) => e instanceof EdgeidError && e.code === 'config_invalid' && e.details?.field === 'alerts.webhook.secretFile',
  );
});

test('webhook signature over "<timestamp>.<raw body>"; backoff doubles, is capped, jittered by 0.5 … 1', () => {
  const key = Buffer.from('0123456789abcdef0123');
  const body = '{"type":"alert.opened"}';
  const want = createHmac('sha256', key).update(`1764547200.${body}`).digest('hex');
  assert.equal(webhookSignature(key, '1764547200', body), `sha256=${want}`);
  assert.notEqual(webhookSignature(key, '1764547201', body), `sha256=${want}`, 'the timestamp is under the MAC');
  const cfg = { backoff: 2, maxBackoff: 60 } as AlertWebhookConfig;
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6, 7, 10].map((n) => backoffMs(cfg, n, () => 1)),
    [2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000],
  );
  assert.equal(
    backoffMs(cfg, 3, () => 0),
    4000,
    'at least half',
  );
});

test('RFC 5424 message: PRI, header, escaped structured data, no control characters', () => {
  const cfg: AlertSyslogConfig = { host: '127.0.0.1', port: 514, protocol: 'udp', facility: 16, appName: 'edgeid' };
  const alert: AlertRecord = {
    id: 'alr-0123456789abcdef',
    rule: 'device_stale',
    severity: 'warning',
    key: 'k',
    deviceId: 'dev-0123456789abcdef',
    zone: 'pl"an]t\\1',
    address: null,
    summary: 'line one\nline\u001b[2J two\u0085',
    firstSeen: 0,
    lastSeen: 0,
    count: 3,
    state: 'open',
    acknowledgedBy: null,
    acknowledgedAt: null,
  };
  const m = syslogMessage(cfg, alert, Date.parse('2026-12-01T08:00:00.000Z'), 'gw\nhost 1');
  assert.equal(
    m,
    `<132>1 2026-12-01T08:00:00.000Z gwhost1 edgeid ${process.pid} alert [edgeid@32473 alert="alr-0123456789abcdef" rule="device_stale" severity="warning" device="dev-0123456789abcdef" zone="pl\\"an\\]t\\\\1" count="3"] line oneline[2J two`,
  );
  assert.ok(!/[\u0000-\u001f\u007f-\u009f]/.test(m));
});

test('the network of a renewal: IPv4 /24, IPv6 /64, mapped IPv4 as IPv4', () => {
  assert.equal(networkOf('10.1.2.3'), '10.1.2.0/24');
  assert.equal(networkOf('::ffff:10.1.2.3'), '10.1.2.0/24');
  assert.equal(networkOf('2001:db8:0:1:aaaa::1'), '2001:db8:0:1::/64');
  assert.equal(networkOf('not an address'), null);
  assert.equal(networkOf(null), null);
});
