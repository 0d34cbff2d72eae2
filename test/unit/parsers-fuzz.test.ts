/**
 * Parsers of what reaches a device or a server from outside, fuzzed with 10,000 seeded inputs each
 * (FUZZ_RUNS for more): enrollment links (`edgeid://` URIs from a QR code), signed control
 * commands (from the broker), the agent's and the server's config files, device CSRs (the server's
 * check) and the agent's hand-written CSR encoder (against the library's). Structure-aware: valid
 * inputs with one part mutated, plus random text. Every input either parses or fails with a typed
 * EdgeidError carrying a registered code; nothing else is ever thrown.
 */
import 'reflect-metadata';
import assert from 'node:assert/strict';
import { generateKeyPairSync, sign as nodeSign } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { applyConfigObject, defaultConfig } from '../../agent/config.js';
import { buildCsr as buildCsrDer } from '../../agent/tpm/csr.js';
import { loadConfig } from '../../enroll-server/config.js';
import { CertificateAuthority } from '../../enroll-server/ca/ca.js';
import { checkCsr } from '../../enroll-server/services/csr.js';
import { parseEnrollUri } from '../../protocol/api.js';
import { verifyControlCommand } from '../../protocol/control.js';
import { ERRORS, isEdgeidError } from '../../protocol/errors/index.js';
import { buildCsr as buildCsrReference } from '../helpers/csr-reference.js';

const RUNS = Number(process.env.FUZZ_RUNS ?? 10_000);
const SEED = Number(process.env.FUZZ_SEED ?? 20261201);

/** Runs `fn`; passes when it returns or throws an EdgeidError with a registered code. */
function typedOnly(fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    assert.ok(isEdgeidError(e), `threw a non-EdgeidError: ${(e as Error)?.stack ?? String(e)}`);
    assert.ok(e.code in ERRORS, `unregistered code ${e.code}`);
  }
}

const hostile = fc.oneof(
  fc.constantFrom('', '\u0000', '\ud800', '%', '%zz', '%ff', '\u202e', '../', 'A'.repeat(10_000), '[::1]', '::', ' ', '#', '?', '&&'),
  fc.string({ maxLength: 60 }),
  fc.string({ unit: 'binary', maxLength: 60 }),
);

/** `s` with a substring replaced, cut, or something inserted at a fuzzed place. */
function mutateText(s: string): fc.Arbitrary<string> {
  return fc.oneof(
    fc.tuple(fc.nat(s.length), fc.nat(s.length), hostile).map(([a, b, x]) => s.slice(0, Math.min(a, b)) + x + s.slice(Math.max(a, b))),
    fc.nat(s.length).map((n) => s.slice(0, n)),
    fc.tuple(fc.nat(s.length), hostile).map(([n, x]) => s.slice(0, n) + x + s.slice(n)),
    fc.string({ unit: 'binary', maxLength: 300 }),
  );
}

test(`edgeid:// enrollment links: ${RUNS} mutated and random links parse or fail with a code`, () => {
  const valid =
    'edgeid://enroll?server=https%3A%2F%2Fedgeid.plant.example%3A8443&token=tok_0123456789abcdef.' +
    'a'.repeat(43) +
    '&ca=sha256%3A' +
    'ab'.repeat(32) +
    '&zone=line-1';
  typedOnly(() => parseEnrollUri(valid));
  fc.assert(
    fc.property(mutateText(valid), (uri) => typedOnly(() => parseEnrollUri(uri))),
    { numRuns: RUNS, seed: SEED },
  );
});

/** JSON values at the edges, for config fields. */
const jsonEdge = fc.oneof(
  fc.constantFrom<unknown>(
    null,
    true,
    false,
    0,
    -1,
    1.5,
    2 ** 53 + 1,
    1e308,
    '',
    '\u0000',
    '\ud800',
    '1h',
    '-5m',
    'x'.repeat(5000),
    [],
    {},
    [[]],
    {
      __proto__: null,
    },
  ),
  fc.jsonValue({ maxDepth: 3 }),
);

function mutateObject(base: Record<string, unknown>): fc.Arbitrary<unknown> {
  const keys = Object.keys(base);
  return fc.oneof(
    fc.tuple(fc.constantFrom(...keys), jsonEdge).map(([k, v]) => ({ ...base, [k]: v })),
    fc.tuple(fc.constantFrom(...keys), fc.constantFrom(...keys), jsonEdge).map(([k, k2, v]) => {
      const inner = base[k];
      return inner && typeof inner === 'object' && !Array.isArray(inner) ? { ...base, [k]: { ...inner, [k2]: v } } : { ...base, [k]: v };
    }),
    fc.tuple(fc.string({ maxLength: 12 }), jsonEdge).map(([k, v]) => ({ ...base, [k]: v })),
    fc.constantFrom(...keys).map((k) => Object.fromEntries(Object.entries(base).filter(([x]) => x !== k))),
    fc.constant(JSON.parse('{"__proto__": {"polluted": true}}') as unknown),
    jsonEdge,
  );
}

test(`agent config files: ${RUNS} mutated configs apply or fail with a code`, () => {
  const base = {
    server: 'https://edgeid.plant.example:8443',
    mqtt: { heartbeatSeconds: 30, keepaliveSeconds: 30, reconnectPeriodMs: 1000, minTlsVersion: 'TLSv1.2' },
    renewal: { backoffBaseMs: 2000, backoffCapMs: 300000 },
    outbox: { maxMessages: 1000, maxBytes: 1048576 },
    httpTimeoutMs: 30000,
    eventLog: null,
    logLevel: 'info',
  };
  fc.assert(
    fc.property(mutateObject(base), (raw) => typedOnly(() => applyConfigObject(defaultConfig(), raw))),
    { numRuns: RUNS, seed: SEED },
  );
  assert.equal(({} as Record<string, unknown>).polluted, undefined, 'no prototype pollution');
});

test(`server config files: ${RUNS} mutated configs load or fail with a code`, () => {
  const base = {
    listen: '127.0.0.1:8443',
    hostnames: ['edgeid.plant.example'],
    tokenTtl: '8h',
    rateLimit: { perAddress: { max: 1200, window: '1m' }, connectionsPerAddress: 256 },
    zones: { default: { lifetime: '1h', pcrs: [0, 1, 2, 3, 4, 5, 6, 7], eventLog: { secureBoot: true } } },
    metrics: { allow: ['127.0.0.1/8'] },
    audit: { aggregateRefusals: true },
    retention: { auditDays: 400 },
  };
  fc.assert(
    fc.property(mutateObject(base), (file) => typedOnly(() => loadConfig({ argv: ['--data', '/srv/edgeid'], env: {}, cwd: '/srv', file }))),
    { numRuns: RUNS, seed: SEED },
  );
  assert.equal(({} as Record<string, unknown>).polluted, undefined, 'no prototype pollution');
});

test(`signed control commands: ${RUNS} mutated messages verify or fail with a code`, async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-fuzz-ca-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const ca = await CertificateAuthority.open({ dir, hostnames: [] });
  const deviceId = 'dev-0123456789abcdef';
  const message = JSON.stringify(ca.signControl({ type: 'renew-now', deviceId }));
  const opts = { deviceId, trust: ca.rootPem };
  assert.equal(verifyControlCommand(message, opts).type, 'renew-now');
  const fields = JSON.parse(message) as Record<string, string>;
  const b64Mutations = fc.tuple(fc.constantFrom(...Object.keys(fields)), fc.nat(), fc.nat(255)).map(([k, at, bit]) => {
    const v = fields[k]!;
    const chars = [...v];
    const i = at % Math.max(1, chars.length);
    chars[i] = String.fromCharCode(chars[i]!.charCodeAt(0) ^ (1 << (bit % 7)) || 65);
    return JSON.stringify({ ...fields, [k]: chars.join('') });
  });
  fc.assert(
    fc.property(fc.oneof(mutateText(message), b64Mutations), (m) => typedOnly(() => verifyControlCommand(m, opts))),
    { numRuns: RUNS, seed: SEED },
  );
});

test(`device CSRs: ${RUNS} mutated requests pass the server's check only unchanged, or fail with a csr_ code`, async () => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const csr = await buildCsrDer({ spki, commonName: 'dev-0123456789abcdef', sign: async (tbs) => nodeSign('sha256', tbs, privateKey) });
  await checkCsr(csr, spki);
  const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  const mutated = fc.oneof(
    // one byte changed anywhere (DER lengths, tags, OIDs, key, signature)
    fc.tuple(fc.nat(csr.length - 1), fc.integer({ min: 1, max: 255 })).map(([i, x]) => {
      const b = Buffer.from(csr);
      b[i]! ^= x;
      return b;
    }),
    fc.nat(csr.length - 1).map((n) => csr.subarray(0, n)),
    fc.uint8Array({ maxLength: 64 }).map((tail) => Buffer.concat([csr, tail])),
    fc
      .tuple(fc.nat(csr.length), fc.uint8Array({ minLength: 1, maxLength: 8 }))
      .map(([n, x]) => Buffer.concat([csr.subarray(0, n), x, csr.subarray(n)])),
    fc.uint8Array({ maxLength: 600 }).map((b) => Buffer.from(b)),
  );
  await fc.assert(
    fc.asyncProperty(mutated, fc.boolean(), async (bytes, swapKey) => {
      const key = swapKey ? other : spki;
      try {
        await checkCsr(bytes, key);
      } catch (e) {
        assert.ok(isEdgeidError(e) && e.code.startsWith('csr_') && e.code in ERRORS, `unexpected ${String(e)}`);
        return;
      }
      assert.ok(!swapKey && bytes.equals(csr), `a changed CSR was accepted: ${bytes.toString('hex')}`);
    }),
    { numRuns: RUNS, seed: SEED },
  );
});

test(`the agent's CSR encoder: ${RUNS} generated names and keys give the library's bytes`, async () => {
  const keys = (['P-256', 'P-256', 'P-384'] as const).map((curve) => generateKeyPairSync('ec', { namedCurve: curve }));
  const signature = nodeSign('sha256', Buffer.from('any'), keys[0]!.privateKey);
  await fc.assert(
    fc.asyncProperty(fc.nat(keys.length - 1), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 300 }), async (k, commonName) => {
      const spki = keys[k]!.publicKey.export({ type: 'spki', format: 'der' });
      const sign = async (): Promise<Buffer> => signature;
      const ours = await buildCsrDer({ spki, commonName, sign });
      assert.deepEqual(ours, await buildCsrReference({ spki, commonName, sign }));
    }),
    { numRuns: RUNS, seed: SEED },
  );
});
