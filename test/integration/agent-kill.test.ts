/**
 * kill -9 of the agent at random points of enroll and renew, 50 times (20 in enrollments, 30 in the
 * renewal loop; EDGEID_KILL_ENROLLS and EDGEID_KILL_RENEWALS for more, EDGEID_KILL_SEED to replay);
 * it always continues without re-enrollment (same device, same token, never a new one) and leaves
 * no TPM transient objects behind. In the renewal loop every kill's phase is recorded (from the
 * agent's log lines and the state it left) and the kills must cover start-up/idle before the first
 * renewal, a renewal before its commit, and after the commit; after each kill a check run renews
 * and is then stopped with kill -9 at its idle point, where the TPM must hold exactly the SRK and
 * the AK.
 *
 * What "behind" means on swtpm (no resource manager): `enroll` keeps nothing loaded between
 * batches, so after it nothing is left. The `run` daemon keeps the SRK and the AK resident between
 * renewals (≤ 6 TPM commands per renewal), so right after a kill -9 those two — plus a new session
 * key if the kill hit the renewal batch — are still loaded; the next agent start flushes them
 * (flushLeftoverObjects), and a clean stop flushes its own. With /dev/tpmrm0 the kernel RM flushes
 * a dead process's objects itself.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { X509Certificate } from 'node:crypto';
import path from 'node:path';
import { extendBootPcrs, startSwtpm, transientHandleCountViaTools } from '../../scripts/harness/swtpm.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { createToken, startServerProcess } from '../../scripts/harness/server.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { spawnAgent } from '../helpers/agent.js';

/** mulberry32: a seeded PRNG so a failing sequence of kill points can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function readState(dir: string): Promise<any | null> {
  try {
    return JSON.parse(await readFile(path.join(dir, 'state.json'), 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e; // a torn state.json is a failure
  }
}

/** The last phase a killed `run` reached, from its complete log (written before the kill) and the state it left. */
type Phase =
  | 'start-up'
  | 'idle before the first renewal'
  | 'renewal, before R1'
  | 'renewal, R1 saved'
  | 'committed (R2)'
  | 'key switched'
  | 'idle after a renewal';
const BEFORE_FIRST: Phase[] = ['start-up', 'idle before the first renewal'];
const BEFORE_COMMIT: Phase[] = ['renewal, before R1', 'renewal, R1 saved'];
const AFTER_COMMIT: Phase[] = ['committed (R2)', 'key switched', 'idle after a renewal'];

const PHASE_LINES: [RegExp, string][] = [
  [/"msg":"renewal started"/, 'started'],
  [/"msg":"certificate renewed"/, 'renewed'],
  [/"msg":"previous session key deleted"/, 'switched'],
  [/"msg":"renewal scheduled"/, 'scheduled'],
];

function phaseOf(log: string, before: any, after: any, stateDir: string): Phase {
  const seen: string[] = [];
  for (const line of log.split('\n')) for (const [re, p] of PHASE_LINES) if (re.test(line)) seen.push(p);
  const last = seen.at(-1);
  const renewedLogged = seen.filter((p) => p === 'renewed').length;
  if (!seen.includes('started')) return last === 'scheduled' ? 'idle before the first renewal' : 'start-up';
  if (last === 'started') {
    // killed between "renewal started" and "certificate renewed": committed if state.json says so
    if ((after.renewals ?? 0) > (before.renewals ?? 0) + renewedLogged) return 'committed (R2)';
    // R1: the new session key's blob is written before the request (cleaned up at the next start)
    return existsSync(path.join(stateDir, `session-${after.nextSessionKey}.priv`)) ? 'renewal, R1 saved' : 'renewal, before R1';
  }
  if (last === 'renewed') return 'committed (R2)';
  if (last === 'switched') return 'key switched';
  return 'idle after a renewal';
}

/**
 * Runs the agent and kills it (SIGKILL) `ms` after its log first matches `after` (or after start).
 * Kill points relative to a log line land inside the work itself, not in Node's start-up.
 */
async function killAfter(args: string[], ms: number, after?: RegExp): Promise<{ code: number | null; killed: boolean; log: string }> {
  const a = spawnAgent(args);
  let killed = false;
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    timer = setTimeout(() => {
      killed = a.child.exitCode === null;
      a.child.kill('SIGKILL');
    }, ms);
  };
  if (!after) arm();
  else {
    // spawnAgent's own listeners run first, so a.log() already holds the chunk
    const onOutput = (): void => {
      if (!after.test(a.log())) return;
      a.child.stdout?.off('data', onOutput);
      a.child.stderr?.off('data', onOutput);
      arm();
    };
    a.child.stdout?.on('data', onOutput);
    a.child.stderr?.on('data', onOutput);
  }
  const code = await a.exit;
  clearTimeout(timer);
  return { code, killed, log: a.log() };
}

test('kill -9 at random points of enrollment: the agent continues with the same token and leaves no TPM objects', async (t) => {
  const seed = Number(process.env.EDGEID_KILL_SEED ?? Date.now() % 100000);
  t.diagnostic(`seed ${seed} (EDGEID_KILL_SEED to replay)`);
  const rand = prng(seed);
  const srv = await startServerProcess({
    config: {
      allowShortLifetimes: true,
      rateLimit: { enroll: { max: 1000, window: 60 }, renew: { max: 1000, window: 60 } },
      zones: { default: { lifetime: 5 } },
    },
  });
  t.after(() => srv.close());
  // A kill after the server issued but before the agent saved the answer is recovered through
  // POST /v1/renew/challenge {akName} (the server finds the device by its AK).
  let kills = 0;

  // Phase 1: enrollments, each on a fresh TPM, killed at random points up to KILLS_PER_ENROLL times
  // (the first `enroll`, then the continuation: `run` continuing a pending enrollment, or `enroll`
  // again with the SAME token if the kill came before anything was recorded), then continued to the
  // end. A continuation, never a re-enrollment with a new token. Scenarios run until ENROLL_KILLS
  // kills landed inside the work (a kill that comes after the process ended does not count).
  const ENROLL_KILLS = Number(process.env.EDGEID_KILL_ENROLLS ?? 20);
  const KILLS_PER_ENROLL = 2;
  let enrollKills = 0;
  let scenarios = 0;
  for (let i = 0; enrollKills < ENROLL_KILLS; i++) {
    assert.ok(i < ENROLL_KILLS * 2, `${enrollKills} kills landed in ${i} scenarios`);
    scenarios++;
    const etpm = await startSwtpm();
    try {
      const dir = path.join(await tmpDir('edgeid-agent-kill-', t), 'state');
      const { uri } = await createToken(srv, { ttlSeconds: 3600 });
      const args = ['--state', dir, '--tcti', etpm.tcti, '--log-level', 'info'];
      let scenarioKills = 0;
      // the kill lands anywhere from the TLS pinning to the last state write (~100 ms of work)
      const first = await killAfter(['enroll', '--uri', uri, ...args], rand() * 110, /server certificate pinned/);
      if (first.killed) scenarioKills++;
      else assert.equal(first.code, 0, first.log.slice(-2000));
      for (let attempt = 0; attempt < 3 + KILLS_PER_ENROLL && !(await readState(dir))?.device; attempt++) {
        const st = await readState(dir);
        const killAgain = scenarioKills < KILLS_PER_ENROLL;
        if (st?.pendingEnrollment && killAgain) {
          // the continuation (TPM activation, finish, state writes) killed at a random point of its work
          const r = await killAfter(['run', ...args], rand() * 150, /continuing an interrupted enrollment/);
          if (r.killed) scenarioKills++;
        } else if (st?.pendingEnrollment) {
          const a = spawnAgent(['run', ...args]);
          // the assertion below reports a timeout with the agent's log
          await waitFor('run to continue the enrollment', async () => (await readState(dir))?.device || a.child.exitCode !== null, {
            timeoutMs: 60_000,
            intervalMs: 100,
          }).catch(() => {});
          a.child.kill('SIGTERM');
          const code = await a.exit;
          if (!(await readState(dir))?.device) assert.fail(`run did not continue the enrollment (exit ${code}): ${a.log().slice(-2500)}`);
        } else if (killAgain) {
          const r = await killAfter(['enroll', '--uri', uri, ...args], rand() * 110, /server certificate pinned/);
          if (r.killed) scenarioKills++;
          else assert.equal(r.code, 0, `enroll with the same token after a kill: ${r.log.slice(-2500)}`);
        } else {
          const again = await killAfter(['enroll', '--uri', uri, ...args], 600_000);
          assert.equal(again.code, 0, `enroll with the same token after a kill: ${again.log.slice(-2500)}`);
        }
      }
      const st = await readState(dir);
      assert.ok(st?.device?.id, `scenario ${i}: enrolled after the kills`);
      assert.equal(st.pendingEnrollment, undefined);
      // a valid certificate: for this device, issued by the server's issuing CA (which chains to the pinned root)
      const leaf = new X509Certificate(st.certificate.pem);
      const issuer = new X509Certificate(st.certificate.chain[0]);
      assert.ok(leaf.checkIssued(issuer) && leaf.verify(issuer.publicKey), `scenario ${i}: certificate signed by the issuing CA`);
      assert.ok(
        new X509Certificate(st.certificate.chain.at(-1)).fingerprint256 === new X509Certificate(srv.caPem).fingerprint256,
        'chain ends at the server root',
      );
      assert.match(leaf.subject, new RegExp(`CN=${st.device.id}`), `scenario ${i}: certificate of this device`);
      // a kill can land after the enrollment committed, while the continuing run held the SRK and the
      // AK: the next start flushes what a killed process left, and a clean stop leaves nothing
      const next = spawnAgent(['run', ...args.slice(0, -1), 'debug']); // "renewal scheduled" is a debug line
      await waitFor('the next run idle', () => /"msg":"renewal scheduled"/.test(next.log()) || next.child.exitCode !== null, {
        timeoutMs: 60_000,
        intervalMs: 100,
      }).catch(() => {});
      next.child.kill('SIGTERM');
      await next.exit;
      assert.match(next.log(), /"msg":"renewal scheduled"/, `scenario ${i}: the next run starts as the device: ${next.log().slice(-1500)}`);
      assert.equal(await transientHandleCountViaTools(etpm.tcti), 0, `scenario ${i}: no TPM transient objects left`);
      enrollKills += scenarioKills;
      kills += scenarioKills;
    } finally {
      await etpm.stop();
    }
  }
  t.diagnostic(`enrollment: ${scenarios} scenarios, ${enrollKills} kills mid-way, each continued with its token`);

  const devices = await srv.admin<any>('GET', '/v1/admin/devices');
  const list = Array.isArray(devices.body) ? devices.body : devices.body.devices;
  assert.equal(list.length, scenarios, 'one device per TPM on the server: no second enrollment');
});

test('kill -9 at random points of the renewal loop (30 by default): the agent always continues without re-enrollment and leaves no TPM objects', async (t) => {
  const seed = Number(process.env.EDGEID_KILL_SEED ?? Date.now() % 100000);
  t.diagnostic(`seed ${seed} (EDGEID_KILL_SEED to replay)`);
  const rand = prng(seed);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const srv = await startServerProcess({
    config: {
      allowShortLifetimes: true,
      rateLimit: { enroll: { max: 1000, window: 60 }, renew: { max: 1000, window: 60 } },
      zones: { default: { lifetime: 5 } },
    },
  });
  t.after(() => srv.close());
  let kills = 0;
  // The long-lived device for the renewal kills.
  const stateDir = path.join(await tmpDir('edgeid-agent-kill-', t), 'state');
  const { uri } = await createToken(srv, { ttlSeconds: 3600 });
  const base = ['--state', stateDir, '--tcti', tpm.tcti, '--log-level', 'info'];
  const enrolled = await killAfter(['enroll', '--uri', uri, ...base], 600_000);
  assert.equal(enrolled.code, 0, enrolled.log.slice(-2000));
  const state = await readState(stateDir);
  const deviceId: string = state.device.id;

  // Phase 2: the daemon, renewing every few seconds, killed at random points. Each kill is followed
  // by a check run: it must start, flush what the killed process left, complete a renewal, and
  // then hold exactly the residents the daemon keeps between renewals (agent/tpm/residents.ts:
  // the SRK and the AK) — counted after a kill -9 at that idle point, since swtpm serves one
  // connection at a time. A leftover the start did not flush, or a key the renewal or the TLS
  // path left loaded, changes that count.
  let renewalsSeen = state.renewals ?? 0;
  let renewalsDuringKills = 0;
  const RENEWAL_KILLS = Number(process.env.EDGEID_KILL_RENEWALS ?? 30);
  const phases = new Map<Phase, number>();
  // the renewal duration as seen from the log ("renewal started" → "certificate renewed"), measured by the check runs
  let renewalMs = 150;
  let checkRuns = 0;
  const debug = ['run', ...base.slice(0, -1), 'debug']; // "renewal scheduled" is a debug line
  while (kills < RENEWAL_KILLS) {
    const before = await readState(stateDir);
    // where the kill lands: before the first renewal (start-up or idle), anywhere over the
    // renewal's measured duration (before and after its commit), or right after the commit
    const mode = rand();
    const r =
      mode < 0.25
        ? await killAfter(debug, rand() * 1500)
        : mode < 0.8
          ? await killAfter(debug, rand() * renewalMs * 1.2, /"msg":"renewal started"/)
          : await killAfter(debug, rand() * 40, /"msg":"certificate renewed"/);
    if (r.killed) kills++;
    else assert.fail(`run ended by itself (code ${r.code}): ${r.log.slice(-2000)}`);
    const s = await readState(stateDir);
    assert.ok(s, 'state.json still exists');
    assert.equal(s.device?.id, deviceId, 'same device: never re-enrolled');
    assert.equal(s.pendingEnrollment, undefined);
    const phase = phaseOf(r.log, before, s, stateDir);
    phases.set(phase, (phases.get(phase) ?? 0) + 1);

    // The check run: a successful renewal after the kill, then exactly the SRK and the AK.
    const renewalsBefore = s.renewals ?? 0;
    const c = spawnAgent(debug);
    checkRuns++;
    let startedAt = 0;
    let renewedAt = 0;
    const idle = await waitFor(
      'a renewal after the kill, then the next one planned',
      async () => {
        const log = c.log();
        if (!startedAt && /"msg":"renewal started"/.test(log)) startedAt = performance.now();
        const i = log.indexOf('"msg":"certificate renewed"');
        if (i >= 0 && !renewedAt) renewedAt = performance.now();
        return (i >= 0 && /"msg":"renewal scheduled"/.test(log.slice(i))) || c.child.exitCode !== null;
      },
      { timeoutMs: 60_000, intervalMs: 5 },
    ).catch(() => false);
    c.child.kill('SIGKILL');
    await c.exit;
    assert.ok(idle && c.child.signalCode === 'SIGKILL', `check run after kill ${kills} (${phase}): no renewal: ${c.log().slice(-2500)}`);
    const checked = await readState(stateDir);
    assert.ok(
      checked.renewals > renewalsBefore && checked.lastRenewal?.ok,
      `check run after kill ${kills}: a successful renewal in state.json`,
    );
    assert.equal(checked.device.id, deviceId);
    assert.equal(
      await transientHandleCountViaTools(tpm.tcti),
      2,
      `after kill ${kills} (${phase}) and a renewal: exactly the SRK and the AK loaded`,
    );
    if (startedAt && renewedAt > startedAt) renewalMs = Math.max(20, renewalMs * 0.5 + (renewedAt - startedAt) * 0.5);
    renewalsDuringKills += checked.renewals - renewalsSeen;
    renewalsSeen = checked.renewals;
  }
  const summary = [...phases].map(([p, n]) => `${p}: ${n}`).join(', ');
  t.diagnostic(
    `${kills} random kills (${summary}), each followed by a renewal and an exact TPM count; renewal ≈ ${Math.round(renewalMs)} ms`,
  );
  const count = (ps: Phase[]) => ps.reduce((n, p) => n + (phases.get(p) ?? 0), 0);
  assert.ok(count(BEFORE_FIRST) > 0, `kills before the first renewal of a run: ${summary}`);
  assert.ok(count(BEFORE_COMMIT) > 0, `kills inside a renewal before its commit: ${summary}`);
  assert.ok(count(AFTER_COMMIT) > 0, `kills after a renewal's commit: ${summary}`);
  assert.ok(phases.size >= 4, `kills spread over at least 4 distinct phases: ${summary}`);

  // Finally: a clean run renews, stops on SIGTERM, and nothing is left in the TPM.
  const a = spawnAgent(['run', ...base]);
  const renewed = async () => {
    const s = await readState(stateDir);
    return (s?.renewals ?? 0) > renewalsSeen && s.lastRenewal?.ok ? s : null;
  };
  // the assertion below reports a timeout with the agent's log
  const final = await waitFor('a renewal after the kills', renewed, { timeoutMs: 120_000, intervalMs: 100 }).catch(() =>
    readState(stateDir),
  );
  a.child.kill('SIGTERM');
  assert.equal(await a.exit, 0, a.log().slice(-2000));
  assert.ok(final.renewals > renewalsSeen && final.lastRenewal.ok, `renews after the kills: ${a.log().slice(-2000)}`);
  assert.equal(final.device.id, deviceId);
  assert.equal(await transientHandleCountViaTools(tpm.tcti), 0, 'no TPM transient objects left');
  // The blobs on disk must match the state on disk once the agent stopped (it may have dropped the
  // previous key — R3 — after `final` was read, when MQTT connected with the new certificate).
  const stopped = await readState(stateDir);
  const keep = new Set(
    [stopped.certificate.sessionKey, stopped.previousSessionKey].filter((x) => x !== undefined).map((g: number) => `session-${g}`),
  );
  const blobs = (await readdir(stateDir)).filter((n) => n.startsWith('session-')).map((n) => n.replace(/\.(pub|priv)$/, ''));
  assert.deepEqual([...new Set(blobs)].sort(), [...keep].sort(), 'no orphaned key blobs');
  assert.deepEqual(
    (await readdir(stateDir)).filter((n) => n.endsWith('.tmp')),
    [],
    'no temp files',
  );
  const devices = await srv.admin<any>('GET', '/v1/admin/devices');
  const list = Array.isArray(devices.body) ? devices.body : devices.body.devices;
  assert.equal(list.length, 1, 'exactly one device on the server: never re-enrolled');
});
