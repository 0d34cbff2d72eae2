import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { loadConfig, serverUrl } from '../../enroll-server/config.js';
import { isEdgeidError } from '../../protocol/errors/index.js';

function rejects(file: unknown, field: RegExp, argv: string[] = []) {
  assert.throws(
    () => loadConfig({ argv, env: {}, file, cwd: '/srv' }),
    (e: unknown) => isEdgeidError(e, 'config_invalid') && field.test(e.message),
  );
}

test('runs with no config: ./data, 0.0.0.0:8443, one zone "default" with baseline posture and 1 h certificates', () => {
  const c = loadConfig({ argv: [], env: {}, cwd: '/srv' });
  assert.equal(c.dataDir, '/srv/data');
  assert.deepEqual(c.listen, { host: '0.0.0.0', port: 8443 });
  assert.deepEqual(Object.keys(c.zones), ['default']);
  const z = c.zones.default!;
  assert.equal(z.lifetime, 3600);
  assert.deepEqual(z.posture, { mode: 'baseline' });
  assert.equal(z.maxOffline, 7 * 86400);
  assert.deepEqual(z.pcrs, [0, 1, 2, 3, 4, 5, 6, 7]);
  // not set: required (services/ek.ts; data dirs from before required EK certificates keep them optional)
  assert.equal(c.ek.requireEkCertificate, null);
  assert.equal(c.ek.builtinRoots, true);
  assert.equal(z.requireEkCertificate, null);
  assert.equal(serverUrl(c), 'https://localhost:8443');
  assert.equal(c.keyCacheSize, 16_384);
  assert.equal(loadConfig({ argv: [], env: {}, file: { keyCacheSize: 120_000 } }).keyCacheSize, 120_000);
});

test('flags win over env, env over the config file', () => {
  const env = { EDGEID_DATA: '/env/data', EDGEID_LISTEN: '10.0.0.1:9000' };
  const c = loadConfig({
    argv: ['--data', 'd2', '--listen=127.0.0.1:0'],
    env,
    file: { dataDir: '/file', listen: '1.2.3.4:1' },
    cwd: '/srv',
  });
  assert.equal(c.dataDir, '/srv/d2');
  assert.deepEqual(c.listen, { host: '127.0.0.1', port: 0 });
  const e = loadConfig({ argv: [], env, file: { dataDir: '/file' }, cwd: '/srv' });
  assert.equal(e.dataDir, '/env/data');
  assert.deepEqual(e.listen, { host: '10.0.0.1', port: 9000 });
});

test('certificate lifetime must lie between 5 min and 24 h unless allowShortLifetimes is set', () => {
  rejects({ zones: { a: { lifetime: '4m' } } }, /zones\.a\.lifetime/);
  rejects({ zones: { a: { lifetime: '25h' } } }, /zones\.a\.lifetime/);
  const ok = loadConfig({ argv: [], env: {}, file: { allowShortLifetimes: true, zones: { a: { lifetime: '20s' } } } });
  assert.equal(ok.zones.a!.lifetime, 20);
  rejects({ allowShortLifetimes: true, zones: { a: { lifetime: '2s' } } }, /zones\.a\.lifetime/);
});

test('names the bad field for every kind of mistake', () => {
  rejects({ zones: { a: { cidrs: ['10.0.0.0/33'] } } }, /zones\.a\.cidrs\.0/);
  rejects({ zones: { a: { pcrs: [0, 24] } } }, /zones\.a\.pcrs\.1/);
  rejects({ zones: { a: { posture: { golden: { 0: 'zz' } }, pcrs: [0] } } }, /zones\.a\.posture\.golden\.0/);
  rejects({ zones: { a: { claims: { minAgentVersion: 'latest' } } } }, /zones\.a\.claims\.minAgentVersion/);
  rejects({ zones: { a: { colour: 'red' } } }, /zones\.a\.colour: unknown field/);
  rejects({ zones: { A_B: {} } }, /zones\.A_B/);
  rejects({ listen: 'nohost' }, /listen/);
  rejects({ ek: { requireEkCertificate: 'yes' } }, /ek\.requireEkCertificate/);
  rejects({ zones: { a: { requireEkCertificate: 0 } } }, /zones\.a\.requireEkCertificate/);
  rejects({ rateLimit: { renew: { max: 0 } } }, /rateLimit\.renew\.max/);
  rejects({ typo: 1 }, /typo: unknown field/);
  rejects({ keyCacheSize: 8 }, /keyCacheSize: must be an integer from 16 to 1000000/);
  rejects({ keyCacheSize: '100k' }, /keyCacheSize/);
  rejects({}, /--listen/, ['--listen', 'x']);
  rejects({}, /unknown argument --frobnicate/, ['--frobnicate']);
});

test('golden posture needs a value for every PCR of the selection', () => {
  rejects({ zones: { a: { pcrs: [0, 1], posture: { golden: { 0: 'a'.repeat(64) } } } } }, /no value for PCR 1/);
  const c = loadConfig({
    argv: [],
    env: {},
    file: { zones: { a: { pcrs: [1, 0], posture: { golden: { 0: 'A'.repeat(64), 1: 'b'.repeat(64) } } } } },
  });
  assert.deepEqual(c.zones.a!.pcrs, [0, 1]);
  assert.deepEqual(c.zones.a!.posture, { mode: 'golden', values: { 0: 'a'.repeat(64), 1: 'b'.repeat(64) } });
});

test('CIDR lists become allow lists that check IPv4 and IPv6 sources', () => {
  const c = loadConfig({ argv: [], env: {}, file: { zones: { a: { cidrs: ['10.1.0.0/16', 'fd00::/8'] } } } });
  const allow = c.zones.a!.allow!;
  assert.equal(allow.check('10.1.2.3', 'ipv4'), true);
  assert.equal(allow.check('10.2.0.1', 'ipv4'), false);
  assert.equal(allow.check('fd12::1', 'ipv6'), true);
  assert.equal(c.zones.a!.cidrs.length, 2);
  assert.equal(path.isAbsolute(c.dataDir), true);
});
