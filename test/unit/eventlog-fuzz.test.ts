import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { test } from 'node:test';
import fc from 'fast-check';
import { EdgeidError } from '../../protocol/errors/index.js';
import { parseEventLog, replay } from '../../protocol/eventlog/index.js';
import { buildEventLog, syntheticBootEvents } from '../../scripts/harness/eventlog.js';

/**
 * The event log is untrusted input: for any bytes, parsing and replay either succeed or throw an
 * EdgeidError with an eventlog_* code — never a RangeError/TypeError, never a hang. Seeded
 * (FUZZ_SEED), ≥ 10,000 inputs: mutations of the real logs and of a synthetic boot, plus random bytes.
 */
const SEED = Number(process.env.FUZZ_SEED ?? 0x11e7106);
const RUNS = Number(process.env.FUZZ_RUNS ?? process.env.FUZZ_ITERATIONS ?? 10_000);
const CODES = new Set(['eventlog_malformed', 'eventlog_too_large', 'eventlog_too_many_events']);
const DIR = new URL('../fixtures/eventlog/', import.meta.url);
const seeds = [
  ...readdirSync(DIR)
    .filter((f) => f.endsWith('.bin'))
    .map((f) => readFileSync(new URL(f, DIR))),
  buildEventLog(syntheticBootEvents(), ['sha1', 'sha256'], { startupLocality: 3 }),
];

function mustBeTyped(bytes: Uint8Array): void {
  try {
    const log = parseEventLog(bytes, { maxBytes: 64 * 1024, maxEvents: 2000 });
    replay(log);
  } catch (e) {
    if (e instanceof EdgeidError && CODES.has(e.code)) {
      if (e.code === 'eventlog_malformed') assert.equal(typeof e.details?.offset, 'number');
      return;
    }
    throw e;
  }
}

/** A mutation: flip bytes, overwrite a 32-bit field with an edge value, truncate, or splice. */
const mutation = fc.record({
  seed: fc.nat({ max: seeds.length - 1 }),
  flips: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
  field: fc.option(fc.tuple(fc.nat(), fc.constantFrom(0, 1, 0xff, 0xffff, 0x7fffffff, 0xffffffff, 0x10000, 24, 3, 4))),
  cut: fc.option(fc.nat()),
});

test(`event log fuzz: ${RUNS} mutated real logs only give typed errors`, () => {
  fc.assert(
    fc.property(mutation, ({ seed, flips, field, cut }) => {
      const b = Buffer.from(seeds[seed]!);
      for (const [at, v] of flips) b[at % b.length] = v;
      if (field) b.writeUInt32LE(field[1] >>> 0, field[0] % Math.max(1, b.length - 4));
      mustBeTyped(cut === null ? b : b.subarray(0, cut % (b.length + 1)));
    }),
    { seed: SEED, numRuns: RUNS },
  );
});

test(`event log fuzz: ${RUNS / 2} random byte strings (some with a valid Spec ID header) only give typed errors`, () => {
  const header = seeds[seeds.length - 1]!.subarray(0, 32 + seeds[seeds.length - 1]!.readUInt32LE(28));
  fc.assert(
    fc.property(fc.boolean(), fc.uint8Array({ maxLength: 4096 }), (withHeader, tail) => {
      mustBeTyped(withHeader ? Buffer.concat([header, tail]) : tail);
    }),
    { seed: SEED + 1, numRuns: RUNS / 2 },
  );
});
