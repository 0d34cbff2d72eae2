/**
 * Alerts are exactly once across kill -9: a real edgeid-server process on SQLite, software devices
 * failing renewals (tampered quotes) concurrently over HTTPS, the server killed with SIGKILL in the
 * middle, restarted on the same data dir, then more failures. With a threshold of 1, an alert's
 * count must equal the failed renewals the audit log holds for its device — every committed row
 * counted once, none twice, whatever the kill interrupted — and each alert has exactly one queued
 * webhook delivery. The webhook secret never appears in the server's log (checked at every stop).
 *
 * EDGEID_ALERT_CRASH_DEVICES (default 12) and EDGEID_ALERT_CRASH_KILLS (default 2) deepen it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { ERRORS, type ErrorCode } from '../../protocol/errors/index.js';
import { recordSecret } from '../../scripts/harness/secrets.js';
import { startServerProcess } from '../../scripts/harness/server.js';
import { challenge, createSoftDevice, renew, seedSoftDevices, softClient, type SoftDevice } from '../../scripts/harness/softdevice.js';
import { waitFor } from '../../scripts/harness/wait.js';

const DEVICES = Number(process.env.EDGEID_ALERT_CRASH_DEVICES ?? 12);
const KILLS = Number(process.env.EDGEID_ALERT_CRASH_KILLS ?? 2);
const big = { max: 1_000_000, window: '1m' };

test('alerts across kill -9: counts equal the committed audit rows, one delivery per alert', { timeout: 300_000 }, async (t) => {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-alerts-crash-'));
  t.after(() => rm(dataDir, { recursive: true, force: true }));
  const secretFile = path.join(dataDir, '..', `${path.basename(dataDir)}.secret`);
  const secret = randomBytes(24).toString('base64url');
  recordSecret(secret, 'webhook secret');
  await writeFile(secretFile, secret, { mode: 0o600 });
  t.after(() => rm(secretFile, { force: true }));
  const receiver = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(204).end());
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  t.after(() => receiver.close());

  const config = {
    rateLimit: { perAddress: big, enroll: big, renew: big, admin: big },
    alerts: {
      defaults: { failures: { count: 1, window: '1h' } },
      webhook: {
        url: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`,
        secretFile,
        backoff: '0.05',
        maxBackoff: '0.5',
      },
    },
  };
  const devices: SoftDevice[] = Array.from({ length: DEVICES }, () => createSoftDevice());
  await seedSoftDevices(dataDir, devices, { configFile: config });
  const srv = await startServerProcess({ dataDir, config });
  t.after(() => srv.close());

  /** Each device: challenge + tampered renewal, `rounds` times; connection errors (the kill) end its loop. */
  const storm = async (rounds: number, onProgress?: (n: number) => void) => {
    const client = softClient(srv.url, srv.caPem, { timeoutMs: 10_000 });
    let done = 0;
    await Promise.all(
      devices.map(async (dev) => {
        try {
          for (let i = 0; i < rounds; i++) {
            if ((await challenge(dev, client)).status !== 200) return;
            const r = await renew(dev, client, { tamperQuote: true });
            assert.equal(r.status, 400);
            onProgress?.(++done);
          }
        } catch {
          // the server was killed under this request
        }
      }),
    );
    client.close();
  };

  for (let k = 0; k < KILLS; k++) {
    const total = DEVICES * 8;
    let killed = false;
    await storm(8, (n) => {
      if (!killed && n >= total / 2) {
        killed = true;
        srv.proc!.kill('SIGKILL');
      }
    });
    assert.ok(killed, 'the server was killed in the middle of the storm');
    await srv.start();
  }
  await storm(3);

  // wait until the rules have evaluated every committed row (their cursor reaches the audit head)
  const db = new Database(path.join(dataDir, 'edgeid.db'), { readonly: true });
  t.after(() => db.close());
  await waitFor(
    'the alert rules to catch up',
    () => {
      const head = (db.prepare('SELECT MAX(seq) AS s FROM audit').get() as { s: number }).s;
      const cursor = Number((db.prepare(`SELECT value FROM alert_state WHERE state_key = 'cursor'`).get() as { value: string }).value);
      return cursor >= head ? true : null;
    },
    { timeoutMs: 30_000, intervalMs: 50 },
  );
  // what the device rule counts, computed from the audit log on its own
  const failures = new Map<string, number>();
  for (const r of db.prepare(`SELECT event, device_id, reason FROM audit WHERE outcome = 'fail' AND device_id IS NOT NULL`).all() as {
    event: string;
    device_id: string;
    reason: string;
  }[]) {
    if (r.event !== 'renew' && r.event !== 'renew.challenge') continue;
    if (r.reason.startsWith('posture_') || r.reason === 'device_quarantined' || ERRORS[r.reason as ErrorCode].status >= 500) continue;
    failures.set(r.device_id, (failures.get(r.device_id) ?? 0) + 1);
  }
  const alerts = db.prepare(`SELECT id, device_id, count FROM alerts WHERE rule = 'attestation_failures_device'`).all() as {
    id: string;
    device_id: string;
    count: number;
  }[];
  assert.equal(alerts.length, DEVICES, 'one open alert per device');
  for (const a of alerts) assert.equal(a.count, failures.get(a.device_id), `alert of ${a.device_id}: every committed failure once`);
  const total = [...failures.values()].reduce((s, n) => s + n, 0);
  t.diagnostic(`${total} failed renewals over ${KILLS} kill(s); alert counts match the audit log`);
  const deliveries = db.prepare('SELECT alert_id, COUNT(*) AS n FROM alert_deliveries GROUP BY alert_id').all() as {
    alert_id: string;
    n: number;
  }[];
  const allAlerts = db.prepare('SELECT id FROM alerts').all() as { id: string }[];
  assert.deepEqual(deliveries.map((d) => d.alert_id).sort(), allAlerts.map((a) => a.id).sort(), 'every alert queued for the webhook');
  assert.ok(
    deliveries.every((d) => d.n === 1),
    'exactly one delivery per alert',
  );
  await srv.stop(); // checks the log for the webhook secret
});
