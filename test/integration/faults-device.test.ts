/**
 * Device- and disk-side faults, with real swtpm, SQLite, Mosquitto and edgeid processes:
 *   - the server's data dir full (a small tmpfs): writes answer 503 storage_full, reads go on,
 *     nothing half-written (integrity_check, audit verify, CRL consistent), recovery by itself;
 *   - the agent's state dir full or read-only: renewal fails with state_dir_full /
 *     state_dir_read_only, the certificate and MQTT session stay in use, state.json is never torn,
 *     back to normal by itself;
 *   - a TPM reset (swtpm killed and restarted on its state: PCRs back to zero): the server
 *     quarantines per the zone's baseline policy, the agent keeps its identity, backs off and says
 *     so in `edgeid-agent status`; approve-baseline brings it back; a TPM down meanwhile is retried;
 *   - the device clock ±5 minutes off the server's, at enrollment and renewal.
 *
 * The disk cases mount tmpfs (mount(8)): they need root, as CI runs; run as another user they fail
 * with a message saying so rather than being skipped.
 *
 * Environment: EDGEID_FAULTS_CONCURRENCY (default 2) cases at a time; 1 runs them one by one
 * (about 170 s with EDGEID_TEST_BINS=dist on a loaded 2-core machine).
 */
import 'reflect-metadata';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import * as x509 from '@peculiar/x509';
import { startSwtpm, extendBootPcrs } from '../../scripts/harness/swtpm.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { startInProcessServer } from '../helpers/server.js';
import { agentCli, spawnAgent } from '../helpers/agent.js';
import { startMosquitto } from '../../scripts/harness/mosquitto.js';
import { edgeidCaBundle } from '../../scripts/harness/pki.js';
import { adminCli, createToken, startServerProcess, type ServerProcess } from '../../scripts/harness/server.js';
import { TestDevice, injectTransport } from '../helpers/device.js';

const run = promisify(execFile);

/**
 * The cases run two at a time (EDGEID_FAULTS_CONCURRENCY, default 2): each has its own swtpm,
 * server, broker and tmpfs, and most of their time is spent waiting on a certificate's schedule.
 */
const cases: [string, (t: TestContext) => Promise<void>][] = [];
function fault(name: string, fn: (t: TestContext) => Promise<void>): void {
  cases.push([name, fn]);
}

/** The disk cases mount tmpfs: root only. Failing (not skipping) keeps CI honest: it runs as root. */
function requireRoot(): void {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error('this test mounts a tmpfs (mount -t tmpfs) and needs root; run it as root (CI does)');
  }
}

/**
 * Cleanups run last-registered first (t.after runs hooks in registration order): a server is
 * closed before the disk under it is unmounted.
 */
function cleanupStack(t: TestContext): (fn: () => unknown) => void {
  const fns: (() => unknown)[] = [];
  t.after(async () => {
    for (const fn of fns.reverse()) {
      try {
        await fn();
      } catch (e) {
        console.error(`cleanup failed: ${(e as Error).message}`);
      }
    }
  });
  return (fn) => void fns.push(fn);
}

/** A tmpfs of `size` mounted on a new directory, unmounted (and removed) on cleanup. */
async function smallDisk(defer: (fn: () => unknown) => void, prefix: string, size: string): Promise<string> {
  requireRoot();
  const base = await mkdtemp(path.join(os.tmpdir(), prefix));
  const dir = path.join(base, 'mnt');
  await mkdir(dir);
  await run('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir]);
  defer(async () => {
    await run('umount', ['-l', dir]);
    await rm(base, { recursive: true, force: true });
  });
  return dir;
}

/** Fills the filesystem of `dir` with one file until write(2) answers ENOSPC; returns it. */
async function fillUp(dir: string): Promise<string> {
  const file = path.join(dir, 'filler');
  const fh = await open(file, 'w');
  const chunk = Buffer.alloc(64 * 1024, 0xa5);
  try {
    for (;;) {
      try {
        await fh.write(chunk);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw e;
      }
    }
    // the last partial chunk: byte by byte is too slow; 4 KiB pages are what tmpfs allocates
    for (;;) {
      try {
        await fh.write(chunk.subarray(0, 4096));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw e;
      }
    }
  } finally {
    await fh.close();
  }
  return file;
}

function serialOf(pem: string): string {
  return new x509.X509Certificate(pem).serialNumber.toLowerCase();
}

fault('server data dir full: writes answer 503 storage_full, reads go on, nothing half-written, recovery without restart', async (t) => {
  const defer = cleanupStack(t);
  const disk = await smallDisk(defer, 'edgeid-faults-srvdisk-', '24m');
  const tpm = await startSwtpm();
  defer(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const srv = await startInProcessServer({}, [], { tmpRoot: disk });
  defer(() => srv.close());
  const http = injectTransport(srv.server.app);
  const dev = await TestDevice.create(tpm.tcti);
  defer(() => dev.close());
  await dev.enroll(http, await srv.token());
  const firstSerial = serialOf(dev.certificate!);

  const filler = await fillUp(disk);
  defer(() => rm(filler, { force: true }));
  // Requests that write: each either still fits (SQLite reuses its WAL's pages) or is refused
  // with 503 storage_full; never a 500. Token creation runs until the disk refuses one.
  const codes = new Map<string, number>();
  const note = (status: number, body: any) => {
    const k = `${status} ${body?.error?.code ?? ''}`.trim();
    codes.set(k, (codes.get(k) ?? 0) + 1);
    assert.ok(
      status === 200 || (status === 503 && body.error.code === 'storage_full'),
      `unexpected answer ${status} ${JSON.stringify(body)}`,
    );
  };
  let refused: any = null;
  for (let i = 0; i < 2000 && !refused; i++) {
    const r = await srv.admin('POST', '/v1/admin/tokens', { zone: 'default', owner: 'faults' });
    note(r.status, r.body);
    if (r.status === 503) refused = r.body;
  }
  assert.ok(refused, `no token creation was refused on a full disk: ${JSON.stringify([...codes])}`);
  assert.match(refused.error.message, /out of space/);
  // the device's renewal: refused the same way (or it still fit); the server keeps answering
  const ch = await dev.challenge(http);
  note(ch.status, ch.body);
  let renewedWhileFull = false;
  if (ch.status === 200) {
    const r = await dev.renew(http);
    note(r.status, r.body);
    renewedWhileFull = r.status === 200;
  }
  // what needs no write goes on (admin reads are audited: they write)
  const ca = await srv.server.app.inject({ method: 'GET', url: '/v1/ca' });
  assert.equal(ca.statusCode, 200);
  // no temporary file left by a refused write
  const leftovers = (await readdir(srv.dataDir)).filter((n) => n.endsWith('.tmp'));
  assert.deepEqual(leftovers, []);

  // ---- space is back: the same requests succeed, no restart ----
  await rm(filler);
  const tok = await srv.admin('POST', '/v1/admin/tokens', { zone: 'default', owner: 'faults' });
  assert.equal(tok.status, 200, JSON.stringify(tok.body));
  const ch2 = await dev.challenge(http);
  assert.equal(ch2.status, 200, JSON.stringify(ch2.body));
  const r2 = await dev.renew(http);
  assert.equal(r2.status, 200, JSON.stringify(r2.body));
  assert.notEqual(serialOf(dev.certificate!), firstSerial);

  // ---- a revocation on a full disk: refused with nothing changed, or committed with the CRL
  // published once there is room again (never a revoked device missing from the CRL) ----
  // A checkpoint that restarts the WAL (https://sqlite.org/pragma.html#pragma_wal_checkpoint)
  // lets the next transactions reuse the WAL file's pages: the revocation then commits on the full
  // disk and only the CRL files cannot be written — the case where an old CRL must not be served.
  const side = new Database(path.join(srv.dataDir, 'edgeid.db'));
  side.pragma('wal_checkpoint(RESTART)');
  side.close();
  const crlBefore = await readFile(path.join(srv.dataDir, 'crl.pem'), 'utf8').catch(() => null);
  const filler2 = await fillUp(disk);
  defer(() => rm(filler2, { force: true }));
  const revoke = await srv.admin('POST', `/v1/admin/devices/${dev.deviceId}/revoke`, { reason: 'superseded' });
  note(revoke.status, revoke.body);
  assert.equal((await readdir(srv.dataDir)).filter((n) => n.endsWith('.tmp')).length, 0);
  if (revoke.status !== 200) assert.equal(await readFile(path.join(srv.dataDir, 'crl.pem'), 'utf8').catch(() => null), crlBefore);
  // the CRL served while the disk is still full
  const crlWhileFull = await srv.server.app.inject({ method: 'GET', url: '/v1/crl?format=pem' });
  assert.equal(crlWhileFull.statusCode, 200, `GET /v1/crl on a full disk: ${crlWhileFull.body.slice(0, 300)}`);
  const servedWhileFull = new x509.X509Crl(crlWhileFull.body).entries.map((e) => e.serialNumber.toLowerCase());
  await rm(filler2);
  const dv = await srv.admin('GET', `/v1/admin/devices/${dev.deviceId}`);
  assert.equal(dv.status, 200);
  const revokedWhileFull = dv.body.device.status === 'revoked';
  if (revoke.status === 200) assert.equal(revokedWhileFull, true);
  if (revokedWhileFull && revoke.status !== 200) {
    // the answer says what did happen
    assert.match(revoke.body.error.message, /is revoked \(committed\), but the CRL files could not be written/);
  }
  if (revokedWhileFull) {
    // committed: the CRL served from then on names the device's certificates, even before the files could be written
    for (const c of dv.body.device.certificates)
      assert.ok(servedWhileFull.includes(String(c.serial).toLowerCase()), `CRL served while full lacks ${c.serial}`);
  } else {
    const rv = await srv.admin('POST', `/v1/admin/devices/${dev.deviceId}/revoke`, { reason: 'superseded' });
    assert.equal(rv.status, 200, JSON.stringify(rv.body));
  }
  // the CRL served and the one on disk both name the device's certificates
  const crlRes = await srv.server.app.inject({ method: 'GET', url: '/v1/crl?format=pem' });
  assert.equal(crlRes.statusCode, 200);
  const served = new x509.X509Crl(crlRes.body).entries.map((e) => e.serialNumber.toLowerCase());
  const onDisk = new x509.X509Crl(await readFile(path.join(srv.dataDir, 'crl.pem'), 'utf8')).entries.map((e) =>
    e.serialNumber.toLowerCase(),
  );
  const serials = (await srv.admin('GET', `/v1/admin/devices/${dev.deviceId}`)).body.device.certificates.map((c: any) =>
    String(c.serial).toLowerCase(),
  );
  for (const s of serials) {
    assert.ok(served.includes(s), `served CRL lacks ${s}`);
    assert.ok(onDisk.includes(s), `crl.pem lacks ${s}`);
  }
  // nothing half-written: the audit chain verifies and SQLite finds its file intact
  const verify = await srv.admin('GET', '/v1/admin/audit/verify');
  assert.equal(verify.status, 200);
  assert.equal(verify.body.ok, true, JSON.stringify(verify.body));
  const db = new Database(path.join(srv.dataDir, 'edgeid.db'), { readonly: true });
  try {
    assert.equal(db.pragma('integrity_check', { simple: true }), 'ok');
  } finally {
    db.close();
  }
  t.diagnostic(
    `answers while full: ${JSON.stringify([...codes])}; renewed while full: ${renewedWhileFull}; revoked while full: ${revokedWhileFull}`,
  );
});

// ---- the agent: a real server process, swtpm, Mosquitto, and `edgeid-agent run` ----

const FAST_SERVER = {
  allowShortLifetimes: true,
  rateLimit: { enroll: { max: 1000, window: 60 }, renew: { max: 1000, window: 60 } },
};

async function readState(stateDir: string): Promise<any> {
  return JSON.parse(await readFile(path.join(stateDir, 'state.json'), 'utf8'));
}

/** Log lines of the agent (JSON) that match `msg` and, if given, `code`. */
function logLines(log: string, msg: string, code?: string): Record<string, any>[] {
  return log
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, any>;
      } catch {
        return {};
      }
    })
    .filter((l) => l.msg === msg && (code === undefined || l.code === code));
}

interface AgentRig {
  tpm: Awaited<ReturnType<typeof startSwtpm>>;
  srv: ServerProcess;
  stateDir: string;
  configFile: string;
  deviceId: string;
}

/** swtpm (boot PCRs extended), an edgeid-server process, an agent enrolled into `stateDir`. */
async function enrolledAgent(
  defer: (fn: () => unknown) => void,
  o: { stateDir: string; lifetime: number; agentConfig?: Record<string, unknown>; server?: Record<string, unknown> },
): Promise<AgentRig> {
  const tpm = await startSwtpm();
  defer(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const srv = await startServerProcess({ config: { ...FAST_SERVER, zones: { default: { lifetime: o.lifetime } }, ...o.server } });
  defer(() => srv.close());
  const configFile = path.join(path.dirname(o.stateDir), `${path.basename(o.stateDir)}.agent.json`);
  // failed renewals are retried within about a second (the default backoff starts at 2 s, up to 5 min)
  await writeFile(configFile, JSON.stringify({ renewal: { backoffBaseMs: 200, backoffCapMs: 1000 }, ...o.agentConfig }));
  const { uri } = await createToken(srv);
  const r = await agentCli(['enroll', '--uri', uri, '--state', o.stateDir, '--tcti', tpm.tcti, '--config', configFile, '--json']);
  assert.equal(r.code, 0, r.stderr);
  return { tpm, srv, stateDir: o.stateDir, configFile, deviceId: (JSON.parse(r.stdout) as { deviceId: string }).deviceId };
}

function runAgent(defer: (fn: () => unknown) => void, rig: AgentRig, extra: string[] = [], env: Record<string, string> = {}) {
  const agent = spawnAgent(
    ['run', '--state', rig.stateDir, '--tcti', rig.tpm.tcti, '--config', rig.configFile, '--log-level', 'debug', ...extra],
    env,
  );
  defer(async () => {
    if (agent.child.exitCode === null && agent.child.signalCode === null) agent.child.kill('SIGKILL');
    await agent.exit.catch(() => {});
  });
  return agent;
}

for (const mode of ['full', 'read-only'] as const) {
  const code = mode === 'full' ? 'state_dir_full' : 'state_dir_read_only';
  fault(
    `agent state dir ${mode}: renewal fails with ${code}, the certificate and MQTT session stay in use, state intact, back by itself`,
    async (t) => {
      const defer = cleanupStack(t);
      const disk = await smallDisk(defer, 'edgeid-faults-agentdisk-', '4m');
      const stateDir = path.join(disk, 'state');
      // 18 s certificates: renewal at two thirds (12 s), 6 s of margin for the fault and a loaded machine
      const rig = await enrolledAgent(defer, { stateDir, lifetime: 18 });
      const dir = await tmpDir('edgeid-faults-agentdisk-', t);
      const bundle = path.join(dir, 'edgeid-ca.pem');
      await writeFile(bundle, await edgeidCaBundle(rig.srv));
      const broker = await startMosquitto({
        caFile: bundle,
        certFile: path.join(rig.srv.dataDir, 'ca', 'server.pem'),
        keyFile: path.join(rig.srv.dataDir, 'ca', 'server.key'),
      });
      defer(() => broker.stop());
      const connects = () =>
        broker
          .log()
          .split('\n')
          .filter((l) => l.includes('New client connected') && l.includes(` as ${rig.deviceId} `)).length;
      const publishes = () =>
        broker
          .log()
          .split('\n')
          .filter((l) => l.includes(`Received PUBLISH from ${rig.deviceId} `)).length;
      const agent = runAgent(defer, rig, ['--mqtt-url', broker.url, '--heartbeat', '0.5']);
      await waitFor('the agent on the broker', () => publishes() >= 2, 60_000);
      const before = await readState(stateDir);
      const serial0 = before.certificate.serial as string;

      // ---- the fault ----
      let filler: string | null = null;
      if (mode === 'full') {
        filler = await fillUp(disk);
        defer(() => rm(filler!, { force: true }));
      } else {
        await run('mount', ['-o', 'remount,ro', disk]);
      }
      // the scheduled renewal fails and is retried, each time with the code and what to do
      await waitFor(`two renewals failed with ${code}`, () => logLines(agent.log(), 'renewal failed', code).length >= 2, 60_000);
      const failed = logLines(agent.log(), 'renewal failed', code)[0]!;
      assert.match(failed.err, mode === 'full' ? /no space left.*free space/ : /read-only.*make it writable/);
      assert.ok(agent.child.exitCode === null, 'the agent still runs');
      // state.json was never torn and still names the current certificate; no temp file is left
      const during = await readState(stateDir);
      assert.equal(during.certificate.serial, serial0);
      // a write in flight has its temporary file for a moment: a left-over one never goes away
      await waitFor(
        'no temporary file left in the state dir',
        async () => (await readdir(stateDir)).every((n) => !n.endsWith('.tmp')),
        15_000,
      );
      // the MQTT session goes on with the current certificate: more heartbeats, no reconnect
      const connectsAtFault = connects();
      const beats = publishes();
      await waitFor('heartbeats while the state dir cannot be written', () => publishes() >= beats + 3, 30_000);
      assert.equal(connects(), connectsAtFault, 'no new MQTT connection');

      // ---- the space is back / the filesystem writable: the next retry renews ----
      if (filler) await rm(filler);
      else await run('mount', ['-o', 'remount,rw', disk]);
      const renewed = await waitFor(
        'a renewal after the fault',
        async () => {
          const s = await readState(stateDir).catch(() => null);
          return s?.lastRenewal?.ok && s.certificate.serial !== serial0 ? s : null;
        },
        60_000,
      );
      assert.equal(renewed.device.id, rig.deviceId);
      assert.equal(renewed.renewals, before.renewals + 1);
      // the MQTT session moved to the new certificate
      await waitFor('the session on the new certificate', () => connects() > connectsAtFault, 30_000);
      const status = await agentCli(['status', '--state', stateDir, '--json']);
      const report = JSON.parse(status.stdout);
      assert.equal(report.renewal.last.ok, true);
      assert.equal(report.attention, null);
      // the agent also stops cleanly on a read-only state dir (its lock file stays, taken over as stale next time)
      if (mode === 'read-only') await run('mount', ['-o', 'remount,ro', disk]);
      agent.child.kill('SIGTERM');
      assert.equal(await agent.exit, 0);
    },
  );
}

const QUARANTINE_CODES = ['posture_pcr_mismatch', 'device_quarantined'];

fault(
  'TPM reset: TPM errors retried while swtpm is down, then quarantine per the baseline policy; the agent keeps its identity, backs off, explains it in status; approve-baseline brings it back',
  async (t) => {
    const defer = cleanupStack(t);
    const stateDir = path.join(await tmpDir('edgeid-faults-tpmreset-', t), 'state');
    // 15 s certificates: the first renewal 10 s after enrollment
    const rig = await enrolledAgent(defer, { stateDir, lifetime: 15 });
    // a TPM command that gets no answer is given up after 5 s (default 30 s: connection.ts)
    const agent = runAgent(defer, rig, [], { EDGEID_TPM_DEADLINE_MS: '5000' });
    await waitFor('the agent running', () => logLines(agent.log(), 'renewal scheduled').length >= 1, 60_000);
    const before = await readState(stateDir);

    // ---- power cycle: swtpm killed; the renewal meets a TPM that does not answer ----
    await rig.tpm.restart(async () => {
      await waitFor(
        'two renewals failed on the unreachable TPM',
        () => logLines(agent.log(), 'renewal failed').filter((l) => /^tpm_/.test(l.code)).length >= 2,
        60_000,
      );
    });
    const tpmFailures = logLines(agent.log(), 'renewal failed').filter((l) => /^tpm_/.test(l.code));
    assert.ok(agent.child.exitCode === null, 'the agent did not exit while the TPM was down');
    // ---- the TPM is back with its PCRs at zero: the quote no longer matches the recorded baseline ----
    const quarantined = await waitFor(
      'the renewal refused for the posture',
      async () => {
        const s = await readState(stateDir).catch(() => null);
        return s?.lastRenewal?.ok === false && QUARANTINE_CODES.includes(s.lastRenewal.code) ? s : null;
      },
      60_000,
    );
    const dev = await rig.srv.admin('GET', `/v1/admin/devices/${rig.deviceId}`);
    assert.equal(dev.body.device.status, 'quarantined');
    assert.match(dev.body.device.statusReason, /PCRs [0-7,]+ differ from the recorded baseline/);
    assert.ok(logLines(agent.log(), 'renewal failed', 'posture_pcr_mismatch').length >= 1, 'the first refusal names the PCR mismatch');
    // the agent keeps its identity (same device, AK and certificate) and keeps running
    assert.equal(quarantined.device.id, rig.deviceId);
    assert.equal(quarantined.ak.name, before.ak.name);
    assert.equal(quarantined.certificate.serial, before.certificate.serial);
    // it backs off: with the cap at 1 s, equal jitter waits at least half of it once the cap is reached
    await waitFor(
      '4 refusals',
      () => logLines(agent.log(), 'renewal failed').filter((l) => QUARANTINE_CODES.includes(l.code)).length >= 4,
      60_000,
    );
    const refusals = logLines(agent.log(), 'renewal failed').filter((l) => QUARANTINE_CODES.includes(l.code));
    const attempts = (refusals.at(-1)!.attempt as number) - tpmFailures.length;
    assert.ok(refusals.at(-1)!.retryInMs >= 500, `retry in ${refusals.at(-1)!.retryInMs} ms after ${attempts} refusals`);
    assert.ok(agent.child.exitCode === null, 'no crash loop: the same process runs');

    // `edgeid-agent status` says quarantined, why, and what an operator does
    const json = JSON.parse((await agentCli(['status', '--state', stateDir, '--json'])).stdout);
    assert.equal(json.attention.quarantined, true);
    assert.ok(QUARANTINE_CODES.includes(json.attention.code), json.attention.code);
    assert.match(json.attention.fix, new RegExp(`edgeid-admin approve-baseline ${rig.deviceId}`));
    const text = (await agentCli(['status', '--state', stateDir])).stdout;
    assert.match(text, /QUARANTINED by the server/);
    assert.match(text, /what to do: .*approve-baseline/);

    // ---- the operator approves the new baseline: the agent's next retry renews ----
    await adminCli(rig.srv.dataDir, ['approve-baseline', rig.deviceId]);
    const back = await waitFor(
      'a renewal after approve-baseline',
      async () => {
        const s = await readState(stateDir).catch(() => null);
        return s?.lastRenewal?.ok && s.certificate.serial !== before.certificate.serial ? s : null;
      },
      60_000,
    );
    assert.equal(back.device.id, rig.deviceId);
    assert.equal((await rig.srv.admin('GET', `/v1/admin/devices/${rig.deviceId}`)).body.device.status, 'active');
    assert.equal(JSON.parse((await agentCli(['status', '--state', stateDir, '--json'])).stdout).attention, null);
    agent.child.kill('SIGTERM');
    assert.equal(await agent.exit, 0);
    t.diagnostic(
      `TPM down: ${tpmFailures.length} failed renewals (${[...new Set(tpmFailures.map((l) => l.code))].join(', ')}); quarantine refusals before approval: ${refusals.length}`,
    );
  },
);

// The device clock ±5 minutes off the server's, from enrollment on (EDGEID_TEST_CLOCK_OFFSET_MS
// moves the agent's clock: schedule.ts clockFromEnv). Everything the server checks is on its own
// clock (nonce expiry, certificate validity, backdated 60 s: ca.ts); the agent measures the
// server's offset from each answer's Date header (RFC 9110 §6.6.1) and schedules on it. So ±5 min
// must not fail anything: enrollment and every renewal succeed on schedule, none as "expired",
// and no clock_skew (which the agent reports only when TLS finds the server's certificate not
// valid at the device's time: server-client.ts).
for (const [name, offsetMs] of [
  ['5 minutes ahead of', 5 * 60_000],
  ['5 minutes behind', -5 * 60_000],
] as const) {
  fault(`device clock ${name} the server's: enrollment and renewals succeed on schedule, no clock_skew`, async (t) => {
    const defer = cleanupStack(t);
    const stateDir = path.join(await tmpDir('edgeid-faults-skew-', t), 'state');
    const env = { EDGEID_TEST_CLOCK_OFFSET_MS: String(offsetMs) };
    const tpm = await startSwtpm();
    defer(() => tpm.stop());
    await extendBootPcrs(tpm.tcti);
    const srv = await startServerProcess({ config: { ...FAST_SERVER, zones: { default: { lifetime: 15 } } } });
    defer(() => srv.close());
    const configFile = path.join(path.dirname(stateDir), 'agent.json');
    await writeFile(configFile, JSON.stringify({ renewal: { backoffBaseMs: 200, backoffCapMs: 1000 } }));
    const { uri } = await createToken(srv);
    const enrolled = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--config', configFile], env);
    assert.equal(enrolled.code, 0, enrolled.stderr);
    const first = await readState(stateDir);
    // the offset measured at enrollment is the skew (server minus agent), to the Date header's second
    assert.ok(Math.abs(first.certificate.clockOffsetMs + offsetMs) < 3_000, `offset ${first.certificate.clockOffsetMs}`);

    const agent = spawnAgent(['run', '--state', stateDir, '--tcti', tpm.tcti, '--config', configFile, '--log-level', 'debug'], env);
    defer(async () => {
      if (agent.child.exitCode === null) agent.child.kill('SIGKILL');
      await agent.exit.catch(() => {});
    });
    // two renewals, each before its 15 s certificate expired (renewal at two thirds; a late or lost
    // schedule shows as reason "expired", a schedule on the wrong clock as one 5 minutes off)
    const reasons: string[] = [];
    const seen = new Set<string>();
    await waitFor(
      '2 renewals',
      async () => {
        const s = await readState(stateDir).catch(() => null);
        if (s?.lastRenewal?.ok && s.lastRenewal.serial && !seen.has(s.lastRenewal.serial)) {
          seen.add(s.lastRenewal.serial);
          reasons.push(s.lastRenewal.reason);
        }
        return s && s.renewals >= 2;
      },
      90_000,
    );
    assert.deepEqual(
      reasons.filter((r) => r !== 'schedule' && r !== 'retry'),
      [],
      `renewal reasons: ${reasons.join(', ')}`,
    );
    assert.equal(logLines(agent.log(), 'renewal failed', 'clock_skew').length, 0);
    const s = await readState(stateDir);
    assert.ok(Math.abs(s.certificate.clockOffsetMs + offsetMs) < 3_000, `offset ${s.certificate.clockOffsetMs}`);
    // the certificate in use is valid on the server's clock
    assert.ok(Date.parse(s.certificate.notAfter) > Date.now());
    agent.child.kill('SIGTERM');
    assert.equal(await agent.exit, 0);
  });
}

describe('device- and disk-side faults', { concurrency: Number(process.env.EDGEID_FAULTS_CONCURRENCY ?? 2) }, () => {
  for (const [name, fn] of cases) test(name, fn);
});
