import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { test } from 'node:test';
import { EdgeidError } from '../../protocol/errors/index.js';
import { parseEventLog, pcrsJson, replay } from '../../protocol/eventlog/index.js';

/**
 * The replay agrees with tpm2_eventlog (tpm2-tools, Debian) on real machines' logs
 * (test/fixtures/eventlog, provenance in its README): same banks, same PCRs, same values.
 */
const DIR = new URL('../fixtures/eventlog/', import.meta.url);
const files = readdirSync(DIR)
  .filter((f) => f.endsWith('.bin'))
  .sort();
/** Logs tpm2_eventlog mis-parses; ours must refuse them with a typed error (see the README). */
const MISPARSED_BY_TPM2_TOOLS: Record<string, { code: string; offset: number }> = {
  'specid-vendordata.bin': { code: 'eventlog_malformed', offset: 69 },
};

/** The `pcrs:` section of tpm2_eventlog's YAML: bank → PCR → hex. */
function tpm2ToolsPcrs(file: string): Record<string, Record<string, string>> {
  const yaml = execFileSync('tpm2_eventlog', [file], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  const at = yaml.search(/^pcrs:\s*$/m);
  assert.ok(at >= 0, `${file}: tpm2_eventlog printed no pcrs: section`);
  const out: Record<string, Record<string, string>> = {};
  let bank: string | undefined;
  for (const line of yaml.slice(at).split('\n').slice(1)) {
    const b = /^ {2}(\w+):\s*$/.exec(line);
    if (b) {
      bank = b[1]!;
      out[bank] = {};
      continue;
    }
    const p = /^ {4}(\d+)\s*:\s*0x([0-9a-fA-F]+)\s*$/.exec(line);
    if (p && bank) out[bank]![p[1]!] = p[2]!.toLowerCase();
    else if (line.trim() !== '' && !line.startsWith(' ')) break;
  }
  return out;
}

test('there are real logs to compare with', () => {
  assert.ok(files.length >= 10, `fixtures: ${files.join(', ')}`);
});

for (const name of files) {
  test(`${name}: replayed PCRs equal tpm2_eventlog's`, () => {
    const path = new URL(name, DIR).pathname;
    const bytes = readFileSync(path);
    const misparsed = MISPARSED_BY_TPM2_TOOLS[name];
    if (misparsed) {
      assert.throws(
        () => parseEventLog(bytes),
        (e: unknown) => e instanceof EdgeidError && e.code === misparsed.code && e.details?.offset === misparsed.offset,
      );
      return;
    }
    const ours = pcrsJson(replay(parseEventLog(bytes)));
    const theirs = tpm2ToolsPcrs(path);
    assert.ok(Object.keys(theirs).length > 0, 'tpm2_eventlog replayed something');
    assert.deepEqual(ours, theirs);
  });
}
