/**
 * The agent sends the TCG event log from its configured path (EDGEID_EVENT_LOG): a synthetic boot
 * (log written by the test, the same digests extended into the swtpm) enrolls in a zone that
 * requires Secure Boot; renewals then send only the log's digest. Without a readable log the claims
 * say why and that zone refuses the device.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { buildEventLog, extendEvents, syntheticBootEvents } from '../../scripts/harness/eventlog.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { createToken, startServerProcess } from '../../scripts/harness/server.js';
import { SWTPM_LOCALCA_ISSUER, SWTPM_LOCALCA_ROOT, startSwtpm } from '../../scripts/harness/swtpm.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { agentCli, spawnAgent } from '../helpers/agent.js';

const CONFIG = {
  allowShortLifetimes: true,
  rateLimit: { enroll: { max: 1000, window: 60 }, renew: { max: 1000, window: 60 } },
  ek: { roots: [SWTPM_LOCALCA_ROOT], intermediates: [SWTPM_LOCALCA_ISSUER], requireEkCertificate: true },
  zones: { default: { lifetime: 6, eventLog: { secureBoot: true } } },
};

test('the agent sends its event log at enrollment and only the digest on renewals', async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const events = syntheticBootEvents({ secureBoot: 1 });
  await extendEvents(tpm.tcti, events);
  const dir = await tmpDir('edgeid-agent-eventlog-', t);
  const logFile = path.join(dir, 'binary_bios_measurements');
  const log = buildEventLog(events);
  await writeFile(logFile, log);
  const sha256 = createHash('sha256').update(log).digest('hex');
  const srv = await startServerProcess({ config: CONFIG });
  t.after(() => srv.close());
  const stateDir = path.join(dir, 'state');

  // without a readable log the claims say so, and this zone refuses
  const missing = await agentCli(
    ['enroll', '--uri', (await createToken(srv)).uri, '--state', path.join(dir, 'other'), '--tcti', tpm.tcti],
    { EDGEID_EVENT_LOG: path.join(dir, 'nope') },
  );
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no TCG event log was sent \(absent: eventlog_unreadable\).*\[posture_eventlog_rejected\]/);

  const enrolled = await agentCli(['enroll', '--uri', (await createToken(srv)).uri, '--state', stateDir, '--tcti', tpm.tcti, '--json'], {
    EDGEID_EVENT_LOG: logFile,
  });
  assert.equal(enrolled.code, 0, enrolled.stderr);
  const state = JSON.parse(await readFile(path.join(stateDir, 'state.json'), 'utf8'));
  assert.equal(state.renew.eventLogSha256, sha256, 'the server holds our log');

  const agent = spawnAgent(['run', '--state', stateDir, '--tcti', tpm.tcti, '--log-level', 'info'], { EDGEID_EVENT_LOG: logFile });
  t.after(() => {
    agent.child.kill('SIGKILL');
  });
  await waitFor('2 renewals', () => (agent.log().match(/"msg":"certificate renewed"/g) ?? []).length >= 2, {
    timeoutMs: 120_000,
    intervalMs: 200,
  });
  const renewed = agent
    .log()
    .split('\n')
    .filter((l) => l.includes('"msg":"certificate renewed"'))
    .map((l) => JSON.parse(l));
  for (const r of renewed) assert.equal(r.eventLogWireBytes, 64, 'only the digest is sent while the log is unchanged');
  agent.child.kill('SIGTERM');
  assert.equal(await agent.exit, 0);
});
