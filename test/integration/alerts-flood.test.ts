/**
 * A flood of refusals from ever new sources cannot grow the alerts without bound: a per-source
 * rule holds at most alerts.maxOpenPerRule open alerts, and further sources count on one
 * "many sources" alert per rule and zone (real server in-process, real SQLite, refusals sent as
 * HTTP requests from chosen source addresses).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { loadConfig } from '../../enroll-server/config.js';
import { createServer } from '../../enroll-server/server.js';
import { refusalAggregator } from '../../enroll-server/services/audit.js';
import { createSoftDevice, enrollStartBody } from '../../scripts/harness/softdevice.js';

test('alerts: a flood of bad tokens from many sources opens at most maxOpenPerRule alerts, the rest count on one', async (t) => {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-alert-flood-'));
  t.after(() => rm(dataDir, { recursive: true, force: true }));
  const big = { max: 1_000_000, window: '1m' };
  const config = loadConfig({
    argv: ['--data', dataDir, '--listen', '127.0.0.1:0'],
    env: {},
    file: {
      rateLimit: { perAddress: big, enroll: big, renew: big, admin: big },
      alerts: { maxOpenPerRule: 3, defaults: { badTokens: { count: 1, window: '10m' } } },
    },
  });
  const clock = { offset: 0 };
  const srv = await createServer({
    config,
    logger: pino({ level: 'silent' }),
    housekeeping: false,
    tls: false,
    now: () => Date.now() + clock.offset,
  });
  t.after(() => srv.close());
  const dev = createSoftDevice();
  const badToken = async (ip: string) => {
    const fake = `${randomBytes(8).toString('hex')}.${randomBytes(32).toString('base64url')}`;
    const r = await srv.app.inject({
      method: 'POST',
      url: '/v1/enroll/start',
      remoteAddress: ip,
      payload: enrollStartBody(dev, fake) as object,
    });
    assert.deepEqual([r.statusCode, r.json().error.code], [401, 'token_invalid']);
  };
  const open = async () => {
    await srv.ctx.alerts!.settle();
    return (await srv.ctx.store.listAlerts({ state: 'open', rule: 'enrollment_bad_tokens' }, { limit: 100 })).sort((a, b) =>
      a.key.localeCompare(b.key),
    );
  };

  for (let i = 1; i <= 8; i++) await badToken(`10.9.0.${i}`);
  let alerts = await open();
  assert.equal(alerts.length, 4, JSON.stringify(alerts.map((a) => a.key)));
  const many = alerts.find((a) => a.key === 'many|*')!;
  assert.ok(many, 'one alert counts the sources beyond the cap');
  assert.deepEqual([many.address, many.deviceId, many.count], [null, null, 5]);
  assert.match(many.summary, /^more than 3 sources at once; the latest: /);
  assert.deepEqual(
    alerts.filter((a) => a !== many).map((a) => [a.address, a.count]),
    [
      ['10.9.0.1', 1],
      ['10.9.0.2', 1],
      ['10.9.0.3', 1],
    ],
  );

  // 40 more sources: still four alerts, the aggregate counts them
  for (let i = 1; i <= 40; i++) await badToken(`10.9.1.${i}`);
  alerts = await open();
  assert.equal(alerts.length, 4);
  assert.equal(alerts.find((a) => a.key === 'many|*')!.count, 45);

  // a source with an alert of its own keeps counting on it
  await badToken('10.9.0.1');
  clock.offset += 61_000;
  await refusalAggregator(srv.ctx)!.flush(false);
  alerts = await open();
  assert.deepEqual(
    [alerts.find((a) => a.address === '10.9.0.1')?.count, alerts.find((a) => a.key === 'many|*')!.count, alerts.length],
    [2, 45, 4],
  );
});
