import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from '../../enroll-server/config.js';
import { judgePosture } from '../../enroll-server/services/posture.js';

const h = (c: string) => c.repeat(64);
const zones = loadConfig({
  argv: [],
  env: {},
  file: {
    zones: {
      base: { pcrs: [0, 7], claims: { minAgentVersion: '1.2.0' } },
      gold: { pcrs: [0, 7], posture: { golden: { 0: h('a'), 7: h('b') } } },
    },
  },
}).zones;
const claims = { agentVersion: '1.2.0' };

test('baseline mode records the first quote and then accepts only the same PCRs', () => {
  const z = zones.base!;
  const first = judgePosture({ zone: z, pcrs: { 0: h('1'), 7: h('2') }, claims, baseline: null, windowOpen: false });
  assert.deepEqual(first, { ok: true, newBaseline: { 0: h('1'), 7: h('2') } });
  const same = judgePosture({ zone: z, pcrs: { 0: h('1'), 7: h('2') }, claims, baseline: { 0: h('1'), 7: h('2') }, windowOpen: false });
  assert.deepEqual(same, { ok: true, newBaseline: null });
  const off = judgePosture({ zone: z, pcrs: { 0: h('1'), 7: h('3') }, claims, baseline: { 0: h('1'), 7: h('2') }, windowOpen: false });
  assert.equal(off.ok, false);
  assert.equal(!off.ok && off.code, 'posture_pcr_mismatch');
  assert.deepEqual(!off.ok && off.pcrs, [7]);
});

test('an approval window turns a PCR change into the new baseline', () => {
  const r = judgePosture({
    zone: zones.base!,
    pcrs: { 0: h('1'), 7: h('3') },
    claims,
    baseline: { 0: h('1'), 7: h('2') },
    windowOpen: true,
  });
  assert.deepEqual(r, { ok: true, newBaseline: { 0: h('1'), 7: h('3') } });
});

test('claim rules reject an agent older than the zone minimum, naming the claim', () => {
  const r = judgePosture({
    zone: zones.base!,
    pcrs: { 0: h('1'), 7: h('2') },
    claims: { agentVersion: '1.1.9' },
    baseline: null,
    windowOpen: true,
  });
  assert.equal(r.ok, false);
  assert.equal(!r.ok && r.code, 'posture_claims_rejected');
  assert.match(!r.ok ? r.reason : '', /agentVersion 1\.1\.9 < 1\.2\.0/);
  assert.equal(
    judgePosture({
      zone: zones.base!,
      pcrs: { 0: h('1'), 7: h('2') },
      claims: { agentVersion: '1.10.0' },
      baseline: null,
      windowOpen: false,
    }).ok,
    true,
  );
});

test('golden mode compares with the configured values', () => {
  const z = zones.gold!;
  assert.deepEqual(judgePosture({ zone: z, pcrs: { 0: h('a'), 7: h('b') }, claims, baseline: null, windowOpen: false }), {
    ok: true,
    newBaseline: null,
  });
  const r = judgePosture({ zone: z, pcrs: { 0: h('a'), 7: h('c') }, claims, baseline: null, windowOpen: false });
  assert.equal(!r.ok && r.code, 'posture_pcr_mismatch');
  assert.match(!r.ok ? r.reason : '', /golden/);
});
