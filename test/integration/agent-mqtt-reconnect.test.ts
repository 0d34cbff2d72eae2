/**
 * The agent's MQTT session against a real Mosquitto that restarts: the first reconnect after the
 * broker dropped a live session is spread over the whole window (schedule.ts reconnectDelay), not
 * the equal-jitter half period, so a fleet does not come back in the same instant.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import tls from 'node:tls';
import pino from 'pino';
import { MqttSession } from '../../agent/mqtt-session.js';
import { Outbox } from '../../agent/outbox.js';
import { startMosquitto } from '../../scripts/harness/mosquitto.js';
import { makeTestPki } from '../../scripts/harness/pki.js';
import { waitFor } from '../../scripts/harness/wait.js';

test('after a broker restart, the first reconnect of each session is drawn from [0, spread], not from [base/2, base]', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-reconnect-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  // one certificate per session: the broker names a client by its certificate's CN
  // (use_username_as_clientid), so sessions sharing one would end each other's
  const pki = await makeTestPki(dir, [
    { name: 'server', cn: 'localhost' },
    ...Array.from({ length: 20 }, (_, i) => ({ name: `client-${i}`, cn: `device-${i}` })),
  ]);
  const broker = await startMosquitto({
    caFile: pki.caFile,
    certFile: pki.files('server').cert,
    keyFile: pki.files('server').key,
    extra: ['allow_anonymous true'],
  });
  t.after(() => broker.stop());
  const secureContextOf = async (i: number) =>
    tls.createSecureContext({
      ca: await readFile(pki.caFile),
      cert: await readFile(pki.files(`client-${i}`).cert),
      key: await readFile(pki.files(`client-${i}`).key),
    });

  // the sessions' debug log: 'mqtt reconnect scheduled' carries each delay
  const scheduled: { inMs: number; failures: number }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) {
        const r = JSON.parse(line) as { msg?: string; inMs?: number; failures?: number };
        if (r.msg === 'mqtt reconnect scheduled') scheduled.push({ inMs: r.inMs!, failures: r.failures! });
      }
      cb();
    },
  });
  const log = pino({ level: 'debug' }, sink);
  const BASE = 200;
  const SPREAD = 4000;
  const sessions: MqttSession[] = [];
  for (let i = 0; i < 20; i++) {
    const s = new MqttSession({
      url: `mqtts://localhost:${broker.port}`,
      clientId: `device-${i}`,
      subscriptions: [],
      outbox: await Outbox.open(path.join(dir, `outbox-${i}`)),
      log,
      reconnectPeriodMs: BASE,
      reconnectSpreadMs: SPREAD,
    });
    sessions.push(s);
    t.after(() => s.close());
    await s.switchCredentials({ secureContext: await secureContextOf(i), serial: '01' });
  }
  await waitFor('20 sessions connected', () => sessions.every((s) => s.state === 'connected'), { timeoutMs: 20_000 });

  await broker.restart();
  await waitFor('20 sessions back', () => sessions.every((s) => s.state === 'connected' && s.info().connects === 2), {
    timeoutMs: SPREAD + 20_000,
  });
  // the first delay of each session after the drop (failures = 1)
  const first = scheduled.filter((x) => x.failures === 1).map((x) => x.inMs);
  assert.ok(first.length >= 20, `${first.length} first reconnects logged`);
  assert.ok(
    first.every((ms) => ms >= 0 && ms <= SPREAD),
    JSON.stringify(first),
  );
  // equal jitter would keep every one within [BASE/2, BASE]; spread over 4 s, 20 draws all ≤ BASE has probability 0.05^20
  assert.ok(
    first.some((ms) => ms > BASE),
    `first delays ${JSON.stringify(first)} stay within the base period`,
  );
});
