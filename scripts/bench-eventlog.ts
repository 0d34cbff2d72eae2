/**
 * Per-renewal cost of the TCG event log, on the real logs of test/fixtures/eventlog:
 *  - agent, log unchanged (the steady state): read + SHA-256, only the digest is sent (64 bytes);
 *  - agent, log changed (enrollment, after a firmware update): read + parse + zlib level 9;
 *  - server, log sent: inflate (bounded) + parse + replay + compare with the quote;
 *  - server, digest only: parse + replay of the stored log.
 * Median of N runs (default 200) per log. Prints a markdown table (for BENCHMARKS.md).
 *   node --import tsx scripts/bench-eventlog.ts [--runs N]
 */
import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { eventLogForQuote } from '../agent/eventlog.js';
import { parseEventLog, replay } from '../protocol/eventlog/index.js';
import { checkEventLog } from '../enroll-server/services/eventlog.js';
import { REPO } from './harness/fs.js';

const argv = process.argv.slice(2);
const RUNS = Number(argv.includes('--runs') ? argv[argv.indexOf('--runs') + 1] : 200) || 200;
const DIR = path.join(REPO, 'test/fixtures/eventlog');

async function median(fn: () => unknown | Promise<unknown>): Promise<number> {
  const t: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const s = performance.now();
    await fn();
    t.push(performance.now() - s);
  }
  t.sort((a, b) => a - b);
  return t[Math.floor(t.length / 2)]!;
}

const rows: string[] = [
  '| log | bytes | events | wire: changed (b64 deflate) | wire: unchanged | agent unchanged ms | agent changed ms | server log sent ms | server digest only ms |',
  '|---|---|---|---|---|---|---|---|---|',
];
for (const name of readdirSync(DIR)
  .filter((f) => f.endsWith('.bin'))
  .sort()) {
  const file = path.join(DIR, name);
  const full = await eventLogForQuote(file, null);
  if (!full.field) continue; // a log our parser refuses is not sent (specid-vendordata.bin)
  const log = parseEventLog(
    Buffer.from(full.field.deflate ? (await import('node:zlib')).inflateSync(Buffer.from(full.field.deflate, 'base64')) : Buffer.alloc(0)),
  );
  const bytes = (await import('node:fs')).readFileSync(file);
  const quoted = Object.fromEntries(
    [...(replay(log).get('sha256') ?? new Map<number, Buffer>())].map(([k, v]) => [String(k), v.toString('hex')]),
  );
  if (Object.keys(quoted).length === 0) continue; // SHA-1-only logs cannot be checked against a sha256 quote
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  const same = await eventLogForQuote(file, sha256);
  const agentUnchanged = await median(() => eventLogForQuote(file, sha256));
  const agentChanged = await median(() => eventLogForQuote(file, null));
  const serverSent = await median(() => checkEventLog(full.field, null, quoted, undefined));
  const serverDigest = await median(() => checkEventLog({ sha256 }, { eventLog: bytes }, quoted, undefined));
  rows.push(
    `| ${name} | ${bytes.length} | ${log.events.length} | ${full.wireBytes} | ${same.wireBytes} | ${agentUnchanged.toFixed(2)} | ${agentChanged.toFixed(2)} | ${serverSent.toFixed(2)} | ${serverDigest.toFixed(2)} |`,
  );
}
console.log(rows.join('\n'));
