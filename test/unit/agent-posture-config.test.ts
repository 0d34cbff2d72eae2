import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { applyConfigObject, defaultConfig } from '../../agent/config.js';
import { PostureCollector, parseOsRelease } from '../../agent/posture.js';
import { canonicalJson } from '../../protocol/api.js';
import { isEdgeidError } from '../../protocol/errors/index.js';

test('parses os-release with quoted and escaped values', () => {
  const r = parseOsRelease('NAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n# comment\nPRETTY_NAME="Say \\"hi\\""\nX=\'single\'\n');
  assert.deepEqual(r, { NAME: 'Debian GNU/Linux', VERSION_ID: '12', ID: 'debian', PRETTY_NAME: 'Say "hi"', X: 'single' });
});

test('claims carry version, bundle hash, config hash, OS fields and kernel, and are canonical-JSON stable', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-posture-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const bundle = path.join(dir, 'edgeid-agent.js');
  await writeFile(bundle, 'console.log(1)\n');
  const cfg = defaultConfig();
  const claims = await new PostureCollector({ config: cfg, agentFile: bundle }).claims();
  assert.match(claims.agentVersion, /^\d+\.\d+\.\d+/);
  assert.equal(claims.agentHash, createHash('sha256').update('console.log(1)\n').digest('hex'));
  assert.match(claims.configHash ?? '', /^[0-9a-f]{64}$/);
  assert.equal(claims.kernel, os.release());
  assert.equal(typeof claims.os?.ID, 'string');
  const again = await new PostureCollector({ config: cfg, agentFile: bundle }).claims();
  assert.equal(canonicalJson(again), canonicalJson(claims));
  // the config hash moves with a behavioural change but not with the state dir or TCTI
  const moved = await new PostureCollector({
    config: { ...cfg, stateDir: '/elsewhere', tcti: 'swtpm:port=1' },
    agentFile: bundle,
  }).claims();
  assert.equal(moved.configHash, claims.configHash);
  const changed = await new PostureCollector({
    config: applyConfigObject(cfg, { mqtt: { heartbeatSeconds: 5 } }),
    agentFile: bundle,
  }).claims();
  assert.notEqual(changed.configHash, claims.configHash);
});

test('config validation names the bad field', () => {
  const cases: [unknown, string][] = [
    [{ mqtt: { heartbeatSeconds: -1 } }, 'mqtt.heartbeatSeconds'],
    [{ mqtt: { url: 'mqtt://plain:1883' } }, 'mqtt.url'],
    [{ nonsense: true }, 'nonsense'],
    [{ renewal: { backoffBaseMs: 5000, backoffCapMs: 1000 } }, 'renewal.backoffCapMs'],
    [{ outbox: { maxMessages: 'many' } }, 'outbox.maxMessages'],
    [[], '(root)'],
  ];
  for (const [raw, field] of cases) {
    assert.throws(
      () => applyConfigObject(defaultConfig(), raw),
      (e) => isEdgeidError(e, 'agent_config_invalid') && e.details?.field === field,
      field,
    );
  }
  const ok = applyConfigObject(defaultConfig(), { mqtt: { url: 'mqtts://broker:8883', heartbeatSeconds: 10 }, outbox: { maxMessages: 5 } });
  assert.equal(ok.mqtt.url, 'mqtts://broker:8883');
  assert.equal(ok.outbox.maxMessages, 5);
});
