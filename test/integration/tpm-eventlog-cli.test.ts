/**
 * `edgeid-agent tpm eventlog` as a technician runs it: on a real machine's log (fixture) the --json
 * PCRs equal tpm2_eventlog's, the text lists the typed events with device strings escaped, and a
 * malformed or missing log is a typed error with a non-zero exit.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { EV, EFI_GLOBAL_VARIABLE } from '../../protocol/eventlog/index.js';
import { buildEventLog, syntheticBootEvents, variableData } from '../../scripts/harness/eventlog.js';
import { programCommand } from '../../scripts/harness/bins.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const [AGENT, ...AGENT_ARGS] = programCommand('edgeid-agent');
const FIXTURE = path.join(ROOT, 'test/fixtures/eventlog/event-gce-ubuntu-2104-log.bin');

async function agent(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(AGENT, [...AGENT_ARGS, ...args], { cwd: ROOT, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

function tpm2ToolsPcrs(yaml: string): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  let bank = '';
  for (const line of yaml
    .slice(yaml.search(/^pcrs:/m))
    .split('\n')
    .slice(1)) {
    const b = /^ {2}(\w+):$/.exec(line);
    if (b) out[(bank = b[1]!)] = {};
    const p = /^ {4}(\d+)\s*:\s*0x([0-9a-f]+)$/.exec(line);
    if (p) out[bank]![p[1]!] = p[2]!;
  }
  return out;
}

test('tpm eventlog --json prints one document whose PCRs equal tpm2_eventlog', async () => {
  const r = await agent(['tpm', 'eventlog', '--file', FIXTURE, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as { pcrs: Record<string, Record<string, string>>; events: number };
  assert.deepEqual(Object.keys(doc).sort(), ['events', 'pcrs']);
  assert.equal(doc.events, 112);
  const { stdout } = await run('tpm2_eventlog', [FIXTURE], { maxBuffer: 64 * 1024 * 1024 });
  assert.deepEqual(doc.pcrs, tpm2ToolsPcrs(stdout));
});

test('tpm eventlog lists the typed events and the replayed PCRs; firmware strings are escaped', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-eventlog-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const text = await agent(['tpm', 'eventlog', '--file', FIXTURE]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot = 0/);
  assert.match(text.stdout, /EV_S_CRTM_VERSION 'GCE Virtual Firmware v1'/);
  assert.match(text.stdout, /EV_EFI_BOOT_SERVICES_APPLICATION .*\\EFI\\/);
  assert.match(text.stdout, /^ {2}sha384: 0 [0-9a-f]{96}$/m);

  // A boot variable whose description carries a terminal escape (OSC 52 would write the clipboard).
  const evil = Buffer.concat([
    Buffer.from([1, 0, 0, 0, 4, 0]),
    Buffer.from('Evil\u001b]52;c;AAAA\u0007\0', 'utf16le'),
    Buffer.from([0x7f, 0xff, 4, 0]),
  ]);
  const events = [
    ...syntheticBootEvents(),
    { pcr: 1, type: EV.EV_EFI_VARIABLE_BOOT, data: variableData(EFI_GLOBAL_VARIABLE, 'Boot0001', evil) },
  ];
  const file = path.join(dir, 'evil.bin');
  await writeFile(file, buildEventLog(events));
  const r = await agent(['tpm', 'eventlog', '--file', file]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(!r.stdout.includes('\u001b') && !r.stdout.includes('\u0007'), 'no raw control characters');
  assert.match(r.stdout, /Boot0001 'Evil\\x1b\]52;c;AAAA\\x07'/);
});

test('tpm eventlog: a truncated log and a missing file are typed errors', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-eventlog-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const log = buildEventLog(syntheticBootEvents());
  const file = path.join(dir, 'cut.bin');
  await writeFile(file, log.subarray(0, log.length - 10));
  const cut = await agent(['tpm', 'eventlog', '--file', file, '--json']);
  assert.equal(cut.code, 1);
  assert.equal(cut.stdout, '');
  assert.match(cut.stderr, /byte offset \d+.*\[eventlog_malformed\]/);
  const missing = await agent(['tpm', 'eventlog', '--file', path.join(dir, 'nope.bin')]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /\[eventlog_unreadable\]/);
});
