/**
 * Network-side faults with real processes: edgeid-server as a child process, one swtpm per
 * device, Mosquitto, the agent (EdgeAgent) on its TPM-resident keys.
 *
 *   1. The broker stops and starts again a few seconds later: the agents reconnect on their own
 *      (first delay drawn from the spread window), and every message queued while it was down
 *      reaches a subscriber exactly once (counted by the edgeid-msg-id property); nothing is lost.
 *   2. The server is killed (SIGKILL) after it issued a renewal whose answer the proxy held, then
 *      stays down past the certificate's expiry: the agent says why renewals fail
 *      (server_unreachable, reason 'expired' once the certificate ran out) and, once the server is
 *      back, renews alone: the spent nonce is refused (nonce_used), a fresh challenge is quoted;
 *      same device id, no new enrollment, MQTT on the new certificate.
 *   3. The network between the agent and both server and broker is cut longer than the
 *      certificate's lifetime, first by resets (RST), then by a blackhole (nothing answers, nothing
 *      closes): requests end by the agent's own timeouts (server_timeout, MQTT keepalive), and the
 *      agent recovers alone when the path is back; no message is lost.
 *
 * QoS 1 is at least once: a message the broker took in the instant the connection broke, whose
 * PUBACK was lost, is sent again with the same id; the tests allow exactly that second copy and no
 * other (see the outbox, agent/outbox.ts).
 *
 * Certificates live 15 s (allowShortLifetimes). Waits are on conditions (status, proxy counters,
 * events), never fixed sleeps. The three cases run side by side; the outages themselves (≥ 15 s
 * each, three of them) set the pace.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import mqtt, { type IPublishPacket, type MqttClient } from 'mqtt';
import pino from 'pino';
import { EdgeAgent, type AgentStatus } from '../../agent/agent.js';
import { collectStatus } from '../../agent/commands/status.js';
import { applyConfigObject, defaultConfig } from '../../agent/config.js';
import { MSG_ID_PROPERTY } from '../../agent/mqtt-session.js';
import { enrollUri, parseEnrollUri } from '../../protocol/api.js';
import { NO_EVENT_LOG } from '../../scripts/harness/eventlog.js';
import { FaultProxy, type FaultMode } from '../../scripts/harness/fault-proxy.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { startMosquitto, type Mosquitto } from '../../scripts/harness/mosquitto.js';
import { edgeidCaBundle, softwareClientCert } from '../../scripts/harness/pki.js';
import { createToken, startServerProcess, type ServerProcess } from '../../scripts/harness/server.js';
import { extendBootPcrs, startSwtpm, transientHandleCountViaTools, type Swtpm } from '../../scripts/harness/swtpm.js';
import { waitFor, waitForEvent } from '../../scripts/harness/wait.js';
import { agentCli } from '../helpers/agent.js';

type After = { after(fn: () => Promise<void> | void): void };

/**
 * Cleanups run last-registered first, each even when an earlier one failed: agents stop before
 * the server, broker, TPMs and the temporary directory they use go away.
 */
function cleanupStack(tc: After): After {
  const stack: (() => Promise<void> | void)[] = [];
  tc.after(async () => {
    let first: unknown = null;
    for (const fn of stack.reverse()) {
      try {
        await fn();
      } catch (e) {
        first ??= e;
      }
    }
    if (first) throw first;
  });
  return { after: (fn) => void stack.push(fn) };
}

const LIFETIME = 15;
/** Generous bounds for a busy 2-core machine; the waits end as soon as the condition holds. */
const SLOW = 120_000;

interface Rig {
  srv: ServerProcess;
  broker: Mosquitto;
  bundle: string;
  dir: string;
}

async function rig(t: After, opts: { lifetime: number; brokerExtra?: (dir: string) => string[] }): Promise<Rig> {
  const srv = await startServerProcess({
    // debug: the server logs each request's start and end, which the server-kill case times its kill on
    logLevel: 'debug',
    config: {
      allowShortLifetimes: true,
      rateLimit: { renew: { max: 1000, window: 60 } },
      zones: { default: { lifetime: opts.lifetime } },
    },
  });
  t.after(() => srv.close());
  const dir = await tmpDir('edgeid-faults-net-');
  // retried: an outbox file written while an agent shuts down made a single pass fail (ENOTEMPTY)
  t.after(() => rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }));
  const bundle = path.join(dir, 'edgeid-ca.pem');
  await writeFile(bundle, await edgeidCaBundle(srv));
  const broker = await startMosquitto({
    caFile: bundle,
    certFile: path.join(srv.dataDir, 'ca', 'server.pem'),
    keyFile: path.join(srv.dataDir, 'ca', 'server.key'),
    extra: opts.brokerExtra?.(dir) ?? [],
  });
  t.after(() => broker.stop());
  return { srv, broker, bundle, dir };
}

interface Device {
  tpm: Swtpm;
  stateDir: string;
  deviceId: string;
}

/** A swtpm device enrolled by the agent CLI; `serverUrl` replaces the server address of the link (a proxy). */
async function enrolledDevice(t: After, r: Rig, name: string, serverUrl?: string): Promise<Device> {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const stateDir = path.join(r.dir, `state-${name}`);
  const link = parseEnrollUri((await createToken(r.srv)).uri);
  const uri = enrollUri({ ...link, server: serverUrl ?? link.server });
  const res = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--json']);
  assert.equal(res.code, 0, res.stderr);
  return { tpm, stateDir, deviceId: (JSON.parse(res.stdout) as { deviceId: string }).deviceId };
}

function memoryLogger(): { log: pino.Logger; lines: () => Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines: () => lines };
}

function agentConfig(d: Device, mqttUrl: string, extra: Record<string, unknown> = {}) {
  return applyConfigObject(defaultConfig(), {
    stateDir: d.stateDir,
    tcti: d.tpm.tcti,
    eventLog: NO_EVENT_LOG,
    httpTimeoutMs: 2_000,
    mqtt: { url: mqttUrl, heartbeatSeconds: 2, keepaliveSeconds: 5, reconnectPeriodMs: 300 },
    renewal: { backoffBaseMs: 200, backoffCapMs: 2_000 },
    ...extra,
  });
}

/** A subscriber with a persistent session (it keeps its subscriptions and queued messages across a broker restart). */
async function observer(r: Rig, topics: string[]): Promise<{ client: MqttClient; received: Map<string, number[]> }> {
  const { cert, key } = await softwareClientCert(r.srv, 'edgeid-test-observer');
  const client = mqtt.connect(r.broker.url, {
    cert,
    key,
    ca: await readFile(r.bundle, 'utf8'),
    protocolVersion: 5,
    clientId: 'edgeid-test-observer', // the broker uses the certificate's CN anyway
    clean: false,
    properties: { sessionExpiryInterval: 3600 },
    reconnectPeriod: 200,
  });
  // message id -> arrival times
  const received = new Map<string, number[]>();
  client.on('message', (_topic, _payload, packet: IPublishPacket) => {
    const id = (packet.properties?.userProperties as Record<string, string> | undefined)?.[MSG_ID_PROPERTY];
    if (id) received.set(id, [...(received.get(id) ?? []), Date.now()]);
  });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => client.subscribe(topics, { qos: 1 }, (err) => (err ? reject(err) : resolve())));
    client.once('error', reject);
  });
  return { client, received };
}

// The three cases share nothing (each its own server, broker, TPMs, ports) and mostly wait out
// outages: they run side by side.
describe('network faults', { concurrency: true }, () => {
  test('broker stopped and started again: 3 agents reconnect on their own with jitter; every message, also those queued while it was down, reaches the subscriber exactly once', async (tc) => {
    const t = cleanupStack(tc);
    // persistence: the subscriber's session (its subscription, messages queued for it) survives the restart
    const r = await rig(t, { lifetime: 3600, brokerExtra: (dir) => ['persistence true', `persistence_location ${dir}/`] });
    const devices: Device[] = [];
    for (let i = 0; i < 3; i++) devices.push(await enrolledDevice(t, r, `d${i}`));
    const obs = await observer(r, ['devices/+/telemetry']);
    t.after(() => void obs.client.end(true));
    const logs = devices.map(() => memoryLogger());
    const agents: EdgeAgent[] = [];
    for (const [i, d] of devices.entries()) {
      const a = await EdgeAgent.start({ config: agentConfig(d, r.broker.url), log: logs[i]!.log });
      t.after(() => a.stop());
      agents.push(a);
    }
    await waitFor('3 agents connected', () => agents.every((a) => a.status().mqtt.state === 'connected'), SLOW);

    // every agent publishes every 50 ms, before, during and after the outage
    const published = new Map<string, { agent: number; whileDown: boolean; at: number }>();
    const failures: unknown[] = [];
    let brokerDown = false;
    const tick = setInterval(() => {
      for (const [i, a] of agents.entries()) {
        const whileDown = brokerDown;
        a.publish(`devices/${a.deviceId}/telemetry`, JSON.stringify({ at: Date.now() })).then(
          (m) => published.set(m.id, { agent: i, whileDown, at: Date.now() }),
          (e: unknown) => failures.push(e),
        );
      }
    }, 50);
    t.after(() => clearInterval(tick));
    await waitFor('messages flowing', () => obs.received.size >= 30, SLOW);

    const stoppedAt = Date.now();
    let exitedAt = 0;
    await r.broker.restart(async () => {
      exitedAt = Date.now();
      brokerDown = true;
      // the broker is down: every agent notices (connection closed), then keeps publishing into its outbox
      await waitFor('every agent sees the broker gone', () => agents.every((a) => a.status().mqtt.state !== 'connected'), SLOW);
      await waitFor(
        'at least 20 messages per agent queued in the outboxes',
        () => agents.every((a, i) => [...published.values()].filter((p) => p.agent === i && p.whileDown).length >= 20),
        SLOW,
      );
      brokerDown = false;
      // still down: all of them wait in the outboxes
      for (const a of agents)
        assert.ok(a.status().outbox.pending >= 20, `outbox holds the queued messages: ${JSON.stringify(a.status().outbox)}`);
    });
    const upAt = Date.now();
    await waitFor(
      'every agent back, by itself',
      () => agents.every((a) => a.status().mqtt.state === 'connected' && a.status().mqtt.connects === 2),
      SLOW,
    );
    const backMs = agents.map((a) => Date.parse(a.status().mqtt.connectedAt!) - upAt);
    const after = published.size;
    await waitFor('50 more messages after the restart', () => published.size >= after + 50, SLOW);
    clearInterval(tick);
    await waitFor('outboxes drained', () => agents.every((a) => a.status().outbox.pending === 0), SLOW);
    await waitFor('every message at the subscriber', () => [...published.keys()].every((id) => obs.received.has(id)), 30_000).catch(() => {
      const missing = [...published.keys()].filter((id) => !obs.received.has(id));
      assert.fail(`lost ${missing.length} of ${published.size} messages`);
    });

    assert.deepEqual(failures, []);
    const queued = [...published.values()].filter((p) => p.whileDown).length;
    assert.ok(queued >= 60, `${queued} messages published while the broker was down`);
    // Every message queued while the broker was down arrives exactly once. QoS 1 is at least once:
    // a message the broker took in the instant it stopped, whose PUBACK never reached the agent, is
    // sent again after the reconnect with the same id (the receiver drops it by id). Only a message
    // published before the broker exited can be such a one, and only once.
    const dups = [...obs.received.entries()].filter(([, at]) => at.length > 1);
    for (const [id, at] of dups) {
      const p = published.get(id)!;
      assert.ok(!p.whileDown, `${id}, queued while the broker was down, arrived ${at.length} times`);
      assert.ok(
        at.length === 2 && p.at <= exitedAt,
        `${id}: a second copy not explained by the restart (${JSON.stringify({ published: p.at, exitedAt, at })})`,
      );
    }
    assert.equal(obs.received.size, published.size, 'nothing arrived that the agents did not publish');
    for (const a of agents) {
      assert.equal(a.status().outbox.dropped, 0);
      assert.equal(a.status().mqtt.connects, 2, 'one reconnect each, made by the agent itself');
    }
    // jitter: each agent's first reconnect after the drop was drawn from [0, spread] (spread = 10 × 300 ms)
    const firstDelays = logs.map(
      (l) => l.lines().find((x) => x.msg === 'mqtt reconnect scheduled' && x.failures === 1)?.inMs as number | undefined,
    );
    for (const ms of firstDelays)
      assert.ok(ms !== undefined && ms >= 0 && ms <= 3000, `first reconnect delays ${JSON.stringify(firstDelays)}`);
    assert.ok(new Set(firstDelays).size > 1, `the agents did not draw the same first delay: ${JSON.stringify(firstDelays)}`);
    assert.equal(r.broker.starts(), 2);
    tc.diagnostic(
      `broker down ${upAt - stoppedAt} ms; ${queued} of ${published.size} messages queued while down, each received once; ` +
        `${dups.length} taken by the broker as it stopped sent again; ` +
        `agents back ${JSON.stringify(backMs)} ms after the broker; first reconnect delays ${JSON.stringify(firstDelays)} ms`,
    );
  });

  /** The agent's status and what `edgeid-agent status` reads (status.json) agree on a failed renewal's cause. */
  async function failedRenewal(a: EdgeAgent, stateDir: string, code: string, reason?: string): Promise<AgentStatus['renewal']> {
    return waitFor(
      `a failed renewal with ${code}${reason ? ` (reason ${reason})` : ''} in status and status.json`,
      async () => {
        const s = a.status().renewal;
        const last = s.last;
        if (!last || last.ok || last.code !== code || (reason && last.reason !== reason)) return null;
        const onDisk = (await collectStatus(stateDir)).renewal.last;
        if (onDisk?.code !== code || onDisk.ok) return null;
        return s;
      },
      { timeoutMs: SLOW, retryErrors: true },
    );
  }

  test('server killed (SIGKILL) while a renewal answer is on its way, then down past the certificate lifetime: the agent names the cause, then re-attests alone as the same device', async (tc) => {
    const t = cleanupStack(tc);
    const r = await rig(t, { lifetime: LIFETIME });
    const sp = await FaultProxy.start(r.srv.port);
    t.after(() => sp.close());
    const d = await enrolledDevice(t, r, 'kill', `https://127.0.0.1:${sp.port}`);
    const { log, lines } = memoryLogger();
    const agent = await EdgeAgent.start({ config: agentConfig(d, r.broker.url), log });
    t.after(() => agent.stop());
    await waitFor('MQTT connected', () => agent.status().mqtt.state === 'connected', SLOW);
    const enrolledAt = agent.status().device!.enrolledAt;
    const first = agent.status().certificate!.serial;

    // The next renewal's request reaches the server; as soon as the server logs it, the proxy holds
    // what the server sends back; once the answer is held (the certificate issued, the nonce spent),
    // the server is killed: the agent never receives what the server committed.
    await waitFor('no renewal running', () => agent.status().renewal.next !== null, SLOW);
    const proc = r.srv.proc!;
    let reqId: string | null = null;
    const answered = new Promise<void>((resolve) => {
      let buf = '';
      const on = (chunk: Buffer) => {
        buf += chunk.toString();
        const lines = buf.split('\n');
        buf = lines.pop()!;
        for (const l of lines) {
          // the server logs each request's start and end at debug (route pattern, status)
          const rec = JSON.parse(l.startsWith('{') ? l : '{}') as { reqId?: string; msg?: string; route?: string; status?: number };
          if (reqId === null && rec.msg === 'request received' && rec.route === '/v1/renew') {
            reqId = rec.reqId!;
            sp.setMode('hold');
          } else if (reqId !== null && rec.reqId === reqId && rec.msg === 'request completed' && rec.status === 200) {
            proc.stdout!.off('data', on);
            resolve();
          }
        }
      };
      proc.stdout!.on('data', on);
    });
    const renewing = agent.renewNow('fault-test');
    await Promise.race([
      answered,
      new Promise((_, reject) =>
        setTimeout(() => reject(new Error('the server never logged the renewal (debug request lines)')), SLOW).unref(),
      ),
    ]);
    // the answer (certificate and chain, some KiB) is in the proxy, not at the agent
    await waitFor('the answer held by the proxy', () => sp.stats().heldBytes > 2000, SLOW);
    const exited = once(proc, 'exit');
    proc.kill('SIGKILL');
    const killedAt = Date.now();
    await exited;
    sp.setMode('pass');
    await renewing;
    const killed = agent.status().renewal.last!;
    assert.equal(killed.ok, false);
    assert.equal(killed.code, 'server_unreachable', JSON.stringify(killed));
    assert.equal(killed.reason, 'fault-test');
    assert.match(String(killed.message), new RegExp(`127\\.0\\.0\\.1:${sp.port}`), 'the message names the server');
    assert.equal(agent.status().certificate!.serial, first, 'the current certificate stays in use');

    // down past expiry: renewals keep failing and say so
    await waitFor('the certificate expired while the server is down', () => agent.status().certificate?.expired, SLOW);
    const down = await failedRenewal(agent, d.stateDir, 'server_unreachable', 'expired');
    assert.ok(down.consecutiveFailures >= 2, `consecutive failures ${down.consecutiveFailures}`);
    await waitFor('a retry planned', () => agent.status().renewal.next !== null, SLOW);

    const failuresAtRestart = agent.status().renewal.consecutiveFailures;
    await r.srv.start();
    const restartedAt = Date.now();
    const back = await waitFor(
      'a renewal after the restart, MQTT on the new certificate',
      () => {
        const s = agent.status();
        return s.renewal.last?.ok && !s.certificate!.expired && s.mqtt.state === 'connected' && s.mqtt.serial === s.certificate!.serial
          ? s
          : null;
      },
      SLOW,
    );
    assert.notEqual(back.certificate!.serial, first);
    assert.equal(back.device!.id, d.deviceId, 'same device');
    assert.equal(back.device!.enrolledAt, enrolledAt, 'not enrolled again');
    assert.equal(back.renewal.consecutiveFailures, 0);
    // re-attestation: the nonce kept from the last answer was spent by the answer that never
    // arrived; the server refused it and the agent quoted a fresh challenge
    const refused = lines().find((l) => l.msg === 'renewal nonce not accepted; asking for a fresh challenge');
    assert.equal(refused?.code, 'nonce_used', 'the spent nonce was refused as used');
    assert.ok((back.renewal.last?.tpmCommandStats?.Quote ?? 0) >= 1, `a new quote: ${JSON.stringify(back.renewal.last)}`);
    const afterRestart = r.srv
      .log()
      .split('\n')
      .filter((l) => l.includes('"route":"/v1/renew'));
    assert.ok(
      afterRestart.some((l) => l.includes('/v1/renew/challenge')),
      'a fresh challenge was asked for',
    );
    const listed = await r.srv.admin<{ devices: { id: string }[] }>('GET', '/v1/admin/devices');
    assert.deepEqual(
      listed.body.devices.map((x) => x.id),
      [d.deviceId],
      'one device on the server',
    );
    tc.diagnostic(
      `server down ${restartedAt - killedAt} ms (certificate ${LIFETIME} s), ${failuresAtRestart} failed renewals meanwhile; ` +
        `renewed and MQTT back ${Date.parse(back.mqtt.connectedAt!) - restartedAt} ms after the restart`,
    );
    await agent.stop();
    assert.equal(await transientHandleCountViaTools(d.tpm.tcti), 0, 'no TPM object left behind');
  });

  test('network to server and broker cut longer than the certificate lifetime, by resets then by a blackhole: requests end by timeouts and the agent recovers alone', async (tc) => {
    const t = cleanupStack(tc);
    const r = await rig(t, { lifetime: LIFETIME });
    const sp = await FaultProxy.start(r.srv.port);
    const bp = await FaultProxy.start(r.broker.port);
    t.after(() => sp.close());
    t.after(() => bp.close());
    const d = await enrolledDevice(t, r, 'cut', `https://127.0.0.1:${sp.port}`);
    const { log } = memoryLogger();
    const agent = await EdgeAgent.start({ config: agentConfig(d, `mqtts://127.0.0.1:${bp.port}`), log });
    t.after(() => agent.stop());
    // the subscriber talks to the broker directly: only the device's path is cut
    const obs = await observer(r, [`devices/${d.deviceId}/telemetry`]);
    t.after(() => void obs.client.end(true));
    await waitFor('MQTT connected through the proxy', () => agent.status().mqtt.state === 'connected', SLOW);
    const published: string[] = [];
    const failures: unknown[] = [];
    const tick = setInterval(() => {
      agent.publish(`devices/${d.deviceId}/telemetry`, JSON.stringify({ at: Date.now() })).then(
        (m) => published.push(m.id),
        (e: unknown) => failures.push(e),
      );
    }, 200);
    t.after(() => clearInterval(tick));

    const cuts: { from: number; to: number }[] = [];
    const cut = async (mode: FaultMode, code: string, message: RegExp, mqttError: RegExp) => {
      const before = agent.status().certificate!.serial;
      sp.setMode(mode);
      bp.setMode(mode);
      const cutAt = Date.now();
      await waitFor(`MQTT down (${mode})`, () => agent.status().mqtt.state !== 'connected', SLOW);
      const noticedMs = Date.now() - cutAt;
      await waitFor(`the certificate expired during the cut (${mode})`, () => agent.status().certificate?.expired, SLOW);
      const s = await failedRenewal(agent, d.stateDir, code, 'expired');
      assert.match(String(s.last!.message), message, `${mode}: the renewal error names the cause`);
      assert.ok(s.consecutiveFailures >= 2, `${mode}: each attempt ended (${s.consecutiveFailures} failures)`);
      assert.match(String(agent.status().mqtt.lastError), mqttError, `${mode}: MQTT says why`);
      assert.equal(agent.status().device!.id, d.deviceId);
      assert.ok(agent.status().outbox.pending > 0, `${mode}: messages wait in the outbox`);
      const outageMs = Date.now() - cutAt;
      sp.setMode('pass');
      bp.setMode('pass');
      const backAt = Date.now();
      cuts.push({ from: cutAt, to: backAt });
      const back = await waitFor(
        `recovered after the ${mode} cut`,
        () => {
          const x = agent.status();
          return x.renewal.last?.ok && !x.certificate!.expired && x.mqtt.state === 'connected' && x.mqtt.serial === x.certificate!.serial
            ? x
            : null;
        },
        SLOW,
      );
      const recoveredMs = Date.now() - backAt;
      assert.notEqual(back.certificate!.serial, before);
      assert.equal(back.device!.id, d.deviceId, 'same identity');
      assert.equal(back.renewal.consecutiveFailures, 0);
      // the session on the new certificate starts right after the renewal: ending the dead client
      // does not wait for a DISCONNECT that cannot be sent
      const switchMs = Date.parse(back.mqtt.connectedAt!) - Date.parse(back.renewal.last!.at);
      assert.ok(switchMs < 2000, `${mode}: MQTT back ${switchMs} ms after the renewal`);
      tc.diagnostic(
        `${mode}: MQTT down noticed after ${noticedMs} ms; outage ${outageMs} ms; renewed and MQTT back ${recoveredMs} ms after the path returned (MQTT ${switchMs} ms after the renewal)`,
      );
    };

    await cut('reset', 'server_unreachable', /cannot reach .*ECONNRESET/, /ECONNRESET|socket hang up|expired|closed/i);
    assert.ok(sp.stats().resets > 0 && bp.stats().resets > 0, JSON.stringify({ server: sp.stats(), broker: bp.stats() }));
    await cut('blackhole', 'server_timeout', /no complete answer within 2000 ms/, /timeout|expired/i);
    assert.ok(sp.stats().blackholed > 0 && bp.stats().blackholed > 0, JSON.stringify({ server: sp.stats(), broker: bp.stats() }));
    clearInterval(tick);
    await waitFor('outbox drained', () => agent.status().outbox.pending === 0, SLOW);
    await waitFor('every message at the subscriber', () => published.every((id) => obs.received.has(id)), 30_000).catch(() => {
      assert.fail(`lost ${published.filter((id) => !obs.received.has(id)).length} of ${published.length} messages`);
    });
    assert.deepEqual(failures, []);
    // QoS 1 is at least once: a message the broker took just before a cut, whose PUBACK the cut
    // swallowed, is sent again afterwards with the same id (the receiver drops it by id). Any other
    // second copy — in particular of a message queued during a cut — is a fault.
    const dups = [...obs.received.entries()].filter(([, at]) => at.length > 1);
    for (const [id, at] of dups) {
      assert.equal(at.length, 2, `${id} arrived ${at.length} times`);
      assert.ok(
        // the first copy got through before the path returned, the second after: never a message queued during the cut
        cuts.some((c) => at[0]! < c.to && at[1]! >= c.to),
        `${id}: a second copy without a cut between the two (${JSON.stringify({ at, cuts })})`,
      );
    }
    tc.diagnostic(`${published.length} messages across both cuts, none lost; ${dups.length} sent again after a cut swallowed their PUBACK`);
    await agent.stop();
    assert.equal(await transientHandleCountViaTools(d.tpm.tcti), 0, 'no TPM object left behind');
  });
});
