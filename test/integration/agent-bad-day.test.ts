/**
 * The agent on a bad day, against real swtpm, edgeid-server and Mosquitto processes: a device
 * clock hours off, a device revoked while it was offline, a server that drips its answer, a broker
 * that refuses the certificate, a server announcing plaintext MQTT.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { EdgeAgent, EXIT_IDENTITY_ENDED } from '../../agent/agent.js';
import { applyConfigObject, defaultConfig } from '../../agent/config.js';
import { StateStore, type AgentState } from '../../agent/state/store.js';
import { Tpm } from '../../agent/tpm/index.js';
import { objectName, parsePublic } from '../../protocol/tpm/public.js';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { drip, startHostileHttps } from '../helpers/hostile-https.js';
import { startMosquitto } from '../../scripts/harness/mosquitto.js';
import { makeTestPki } from '../../scripts/harness/pki.js';
import { SWTPM_LOCALCA_ISSUER, SWTPM_LOCALCA_ROOT, extendBootPcrs, startSwtpm } from '../../scripts/harness/swtpm.js';
import { NO_EVENT_LOG } from '../../scripts/harness/eventlog.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { createToken, startServerProcess as startServer } from '../../scripts/harness/server.js';
import { agentCli, spawnAgent } from '../helpers/agent.js';

const FAST = {
  allowShortLifetimes: true,
  rateLimit: { enroll: { max: 1000, window: 60 }, renew: { max: 1000, window: 60 } },
  ek: { roots: [SWTPM_LOCALCA_ROOT], intermediates: [SWTPM_LOCALCA_ISSUER], requireEkCertificate: true },
};

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = 240_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function readState(dir: string): Promise<any> {
  return JSON.parse(await readFile(path.join(dir, 'state.json'), 'utf8'));
}

function memoryLogger(): { log: pino.Logger; lines: () => Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines: () => lines };
}

const LIFETIME_S = 15;

for (const [name, offsetMs, firstReason] of [
  ['2 hours ahead', 2 * 3_600_000, 'expired'],
  ['1 hour behind', -3_600_000, 'clock-changed'],
] as const) {
  test(`keeps renewing short certificates with the device clock ${name}`, async (t) => {
    const tpm = await startSwtpm();
    t.after(() => tpm.stop());
    await extendBootPcrs(tpm.tcti);
    const srv = await startServer({ config: { ...FAST, zones: { default: { lifetime: LIFETIME_S } } } });
    t.after(() => srv.close());
    const dir = await tmpDir('edgeid-agent-skew-', t);
    const stateDir = path.join(dir, 'state');
    // a renewal that fails on a loaded machine is retried within about a second, not after the
    // default backoff, so a transient failure does not show as a late schedule
    const configFile = path.join(dir, 'agent.json');
    await writeFile(configFile, JSON.stringify({ renewal: { backoffBaseMs: 200, backoffCapMs: 1000 } }));
    const { uri } = await createToken(srv);
    const enrolled = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--config', configFile]);
    assert.equal(enrolled.code, 0, enrolled.stderr);

    const agent = spawnAgent(['run', '--state', stateDir, '--tcti', tpm.tcti, '--config', configFile, '--log-level', 'debug'], {
      EDGEID_TEST_CLOCK_OFFSET_MS: String(offsetMs),
    });
    t.after(() => {
      agent.child.kill('SIGKILL');
    });
    // Each certificate lives LIFETIME_S seconds and the server asks for renewal at two thirds: a
    // schedule that is lost, or that waits on the device's wrong clock, lets it expire; a renewal
    // that starts after expiry is recorded with reason "expired". The last third (5 s) is the
    // margin a loaded CI machine gets for a late timer or a retried renewal.
    const reasons: string[] = [];
    const serials = new Set<string>();
    const renewalLog = () =>
      agent
        .log()
        .split('\n')
        .filter((l) => /renewal (started|failed)/.test(l))
        .join('\n');
    await waitFor('5 renewals', async () => {
      const s = await readState(stateDir).catch(() => null);
      if (s?.lastRenewal?.ok && s.lastRenewal.serial && !serials.has(s.lastRenewal.serial)) {
        serials.add(s.lastRenewal.serial);
        reasons.push(s.lastRenewal.reason);
      }
      return s && s.renewals >= 5;
    });
    const s = await readState(stateDir);
    assert.equal(typeof s.certificate.clockOffsetMs, 'number');
    // the measured offset is the injected skew (server minus agent), to within the Date header's second
    assert.ok(Math.abs(s.certificate.clockOffsetMs + offsetMs) < 5_000, `offset ${s.certificate.clockOffsetMs}`);
    // enrolled with a right clock, then the clock went wrong (a reboot without RTC): the first
    // renewal notices (ahead: the certificate looks expired; behind: it arrived "in the future"),
    // and from then on every renewal runs on schedule, none after its certificate expired
    assert.equal(reasons[0], firstReason, `renewal reasons: ${reasons.join(', ')}\n${renewalLog()}`);
    // (a retry of a renewal that failed on a loaded machine is fine, as long as it beat the expiry)
    assert.deepEqual(
      reasons.slice(1).filter((r) => r !== 'schedule' && r !== 'retry'),
      [],
      `renewal reasons: ${reasons.join(', ')}\n${renewalLog()}`,
    );
    agent.child.kill('SIGTERM');
    assert.equal(await agent.exit, 0);
  });
}

test("a device revoked while offline wipes its identity on the server's answer, never on a network error", async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const srv = await startServer({ config: { ...FAST, zones: { default: { lifetime: 5 } } } });
  t.after(() => srv.close());
  const dir = await tmpDir('edgeid-agent-revoked-', t);
  const stateDir = path.join(dir, 'state');
  const configFile = path.join(dir, 'agent.json');
  await writeFile(configFile, JSON.stringify({ renewal: { backoffBaseMs: 200, backoffCapMs: 1500 } }));
  const { uri } = await createToken(srv);
  const enrolled = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--config', configFile]);
  assert.equal(enrolled.code, 0, enrolled.stderr);
  const deviceId = (await readState(stateDir)).device.id as string;

  // the agent is not running: ops revokes the device, then the server becomes unreachable
  const r = await srv.admin('POST', `/v1/admin/devices/${deviceId}/revoke`, { reason: 'key-compromise' });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  await srv.stop();

  const agent = spawnAgent(['run', '--state', stateDir, '--tcti', tpm.tcti, '--config', configFile]);
  t.after(() => {
    agent.child.kill('SIGKILL');
  });
  await waitFor('failed renewals against the unreachable server', async () => {
    const s = await readState(stateDir).catch(() => null);
    return s?.lastRenewal?.ok === false && s.lastRenewal.code === 'server_unreachable';
  });
  const files = await readdir(stateDir);
  for (const f of ['state.json', 'ak.pub', 'ak.priv', 'cert.pem']) assert.ok(files.includes(f), `${f} kept while only the network failed`);

  await srv.start();
  assert.equal(await agent.exit, EXIT_IDENTITY_ENDED, agent.log().slice(-3000));
  assert.deepEqual(await readdir(stateDir), [], 'keys, state and outbox deleted, lock released');
  assert.match(agent.log(), /"code":"device_revoked"/);
  assert.match(agent.log(), /identity wiped/);
  const dev = await srv.admin('GET', `/v1/admin/devices/${deviceId}`);
  assert.equal(dev.body.status ?? dev.body.device?.status, 'revoked');
});

/** A fabricated enrolled state (AK in this swtpm) pointing at `serverUrl`, for tests of the agent alone. */
async function fabricatedState(
  tcti: string,
  stateDir: string,
  server: { url: string; ca: string; caFingerprint: string },
  extra: Partial<AgentState> = {},
): Promise<void> {
  const tpm = await Tpm.open(tcti);
  const ak = await tpm.createAttestationKey();
  await tpm.close();
  const store = await StateStore.open(stateDir, { lock: true });
  await store.writeKey('ak', ak);
  await store.save({
    version: 1,
    server: { url: server.url, caFingerprint: server.caFingerprint, rootPem: server.ca },
    ak: { name: objectName(parsePublic(ak.public)).toString('hex'), createdAt: new Date().toISOString() },
    device: { id: 'dev-bad-day', zone: 'default', enrolledAt: new Date().toISOString() },
    renewals: 0,
    nextSessionKey: 1,
    ...extra,
  });
  await store.close();
}

test('stop() during a renewal stuck on a dripping server returns without waiting on it', async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const hostile = await startHostileHttps(drip);
  t.after(() => hostile.close());
  const stateDir = path.join(await tmpDir('edgeid-agent-drip-', t), 'state');
  await fabricatedState(tpm.tcti, stateDir, hostile);
  // a total deadline far beyond the test's: only the abort can end the request
  const config = applyConfigObject(defaultConfig(), {
    stateDir,
    tcti: tpm.tcti,
    eventLog: NO_EVENT_LOG,
    httpTimeoutMs: 600_000,
    mqtt: { heartbeatSeconds: 0 },
  });
  const { log, lines } = memoryLogger();
  const agent = await EdgeAgent.start({ config, log });
  await hostile.gotRequest; // the startup renewal asked for a challenge and is now being dripped on
  let dripping = true;
  void hostile.connectionClosed.then(() => (dripping = false));
  await agent.stop();
  assert.equal(await agent.exited, 0);
  assert.ok(
    lines().some((l) => l.msg === 'renewal abandoned: the agent is stopping' && l.code === 'request_aborted'),
    'the renewal ended by the abort',
  );
  await hostile.connectionClosed;
  assert.equal(dripping, false);
  assert.ok(!(await readdir(stateDir)).includes('lock'), 'state dir released');
});

test('refuses a plaintext MQTT URL announced by the server (mqtt_url_insecure)', async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const hostile = await startHostileHttps(drip);
  t.after(() => hostile.close());
  const stateDir = path.join(await tmpDir('edgeid-agent-plain-', t), 'state');
  await fabricatedState(tpm.tcti, stateDir, hostile, { mqtt: { url: 'mqtt://127.0.0.1:1883' } });
  const config = applyConfigObject(defaultConfig(), { stateDir, tcti: tpm.tcti, eventLog: NO_EVENT_LOG });
  const { log } = memoryLogger();
  await assert.rejects(
    EdgeAgent.start({ config, log }),
    (e: unknown) => isEdgeidError(e, 'mqtt_url_insecure') && e.message.includes('mqtt://127.0.0.1:1883'),
  );
  assert.ok(!(await readdir(stateDir)).includes('lock'), 'nothing left running');
});

test('a broker that refuses the certificate gets one TLS attempt per renewal, with growing delays', async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  // 60 s certificates: the renewal floor (a tenth of that) spaces the early renewals 6 s apart
  const srv = await startServer({ config: { ...FAST, zones: { default: { lifetime: 60 } } } });
  t.after(() => srv.close());
  const dir = await tmpDir('edgeid-agent-refused-', t);
  // the broker trusts another CA for client certificates: every edgeid certificate is refused
  const pki = await makeTestPki(dir, [], 'some-other-ca');
  const broker = await startMosquitto({
    caFile: pki.caFile,
    certFile: path.join(srv.dataDir, 'ca', 'server.pem'),
    keyFile: path.join(srv.dataDir, 'ca', 'server.key'),
  });
  t.after(() => broker.stop());
  // a TCP relay in front of the broker counts connection attempts (each one a TPM-signed handshake)
  const attempts: number[] = [];
  const relay = net.createServer((sock) => {
    attempts.push(Date.now());
    const up = net.connect(broker.port, '127.0.0.1');
    sock.pipe(up).pipe(sock);
    sock.on('error', () => up.destroy());
    up.on('error', () => sock.destroy());
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => relay.close(() => r())));
  const relayPort = (relay.address() as net.AddressInfo).port;

  const stateDir = path.join(dir, 'state');
  const configFile = path.join(dir, 'agent.json');
  await writeFile(
    configFile,
    JSON.stringify({ mqtt: { url: `mqtts://127.0.0.1:${relayPort}`, reconnectPeriodMs: 1000, heartbeatSeconds: 0 } }),
  );
  const { uri } = await createToken(srv);
  const enrolled = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--config', configFile]);
  assert.equal(enrolled.code, 0, enrolled.stderr);
  const agent = spawnAgent(['run', '--state', stateDir, '--tcti', tpm.tcti, '--config', configFile, '--log-level', 'debug']);
  t.after(() => {
    agent.child.kill('SIGKILL');
  });
  await waitFor('5 refused attempts', async () => attempts.length >= 5);
  const renewals = (await readState(stateDir)).renewals as number;
  // every attempt after the first one came with a new certificate (a renewal brought forward)
  assert.ok(renewals >= attempts.length - 2, `${attempts.length} attempts, ${renewals} renewals`);
  // the log shows refusal, suspension, and an early renewal, with growing backoff
  const log = agent.log();
  assert.match(log, /"msg":"mqtt suspended until the next renewal"/);
  assert.match(log, /"reason":"mqtt-refused"/);
  // equal-jitter backoff from 1 s: at least 0.5 + 1 + 2 + 4 s between the 1st and the 5th attempt
  // (a fixed 1-second reconnect, as before, makes 5 attempts in about 4 s)
  assert.ok(attempts[4]! - attempts[0]! >= 7_500, `5 attempts within ${attempts[4]! - attempts[0]!} ms`);
  agent.child.kill('SIGTERM');
  assert.equal(await agent.exit, 0);
});
