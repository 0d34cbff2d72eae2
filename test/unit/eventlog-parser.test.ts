import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { EdgeidError } from '../../protocol/errors/index.js';
import { EV, checkReplay, parseEventLog, pcrsJson, replay } from '../../protocol/eventlog/index.js';
import { buildEventLog, eventDigest, syntheticBootEvents } from '../../scripts/harness/eventlog.js';

const fixture = (name: string): Buffer => readFileSync(new URL(`../fixtures/eventlog/${name}`, import.meta.url));

function code(e: unknown): string | undefined {
  return e instanceof EdgeidError ? e.code : undefined;
}

test('typed events of a real log: firmware blob, Secure Boot variables, boot application with its device path', () => {
  const log = parseEventLog(fixture('event-arch-linux.bin'));
  assert.equal(log.format, 'crypto-agile');
  assert.deepEqual(
    log.algorithms.map((a) => a.alg),
    [0x0004, 0x000b],
  );
  const sb = log.events.find((e) => e.decoded.kind === 'variable' && e.decoded.name === 'SecureBoot');
  assert.ok(sb && sb.decoded.kind === 'variable');
  assert.equal(sb.typeName, 'EV_EFI_VARIABLE_DRIVER_CONFIG');
  assert.equal(sb.decoded.guid, '8be4df61-93ca-11d2-aa0d-00e098032b8c');
  assert.equal(sb.dataMatchesDigest, true);
  const app = log.events.find((e) => e.type === EV.EV_EFI_BOOT_SERVICES_APPLICATION);
  assert.ok(app && app.decoded.kind === 'image');
  assert.match(app.decoded.devicePath, /^PciRoot\(0x0\)\/Pci\(/);
  assert.match(app.decoded.devicePath, /\\EFI\\/i);
  const seps = log.events.filter((e) => e.type === EV.EV_SEPARATOR);
  assert.ok(seps.length >= 8 && seps.every((e) => e.decoded.kind === 'separator' && e.dataMatchesDigest === true));
});

test('legacy SHA-1 log parses as the SHA-1 format', () => {
  const log = parseEventLog(fixture('event-uefi-sha1-log.bin'));
  assert.equal(log.format, 'sha1');
  assert.deepEqual([...replay(log).keys()], ['sha1']);
});

test('a synthetic boot decodes to the events it was built from', () => {
  const log = parseEventLog(buildEventLog(syntheticBootEvents({ secureBoot: 0, dbxEntries: 5 })));
  const vars = log.events.flatMap((e) => (e.decoded.kind === 'variable' ? [e.decoded] : []));
  assert.equal(vars.find((v) => v.name === 'SecureBoot')?.value, 0);
  assert.equal(vars.find((v) => v.name === 'dbx')?.signatures?.length, 5);
  assert.deepEqual(vars.find((v) => v.name === 'BootOrder')?.bootOrder, [1, 0]);
  const blob = log.events.find((e) => e.type === EV.EV_EFI_PLATFORM_FIRMWARE_BLOB2);
  assert.deepEqual(blob?.decoded, { kind: 'firmware-blob', description: 'BIOS', base: '0xff000000', length: '0x1000000' });
  const app = log.events.find((e) => e.type === EV.EV_EFI_BOOT_SERVICES_APPLICATION);
  assert.equal(
    app?.decoded.kind === 'image' && app.decoded.devicePath,
    'PciRoot(0x0)/Pci(0x1f,0x2)/Sata(0x0,0xffff,0x0)/HD(1,GPT,0fc63daf-8483-4772-8e79-3d69d8477de4,0x800,0x100000)/\\EFI\\BOOT\\BOOTX64.EFI',
  );
});

test('StartupLocality sets PCR 0 initial value (PFP §10.4.5.3); tpm2_eventlog 5.4 extends the EV_NO_ACTION instead', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'edgeid-eventlog-'));
  try {
    const events = syntheticBootEvents();
    const bytes = buildEventLog(events, ['sha1', 'sha256'], { startupLocality: 3 });
    const file = path.join(dir, 'log.bin');
    writeFileSync(file, bytes);
    const ours = pcrsJson(replay(parseEventLog(bytes)));
    // Independently: PCR 0 starts as 31 zero bytes and the locality, then each PCR 0 digest is extended.
    const fold = (init: Buffer) =>
      events
        .filter((e) => e.pcr === 0)
        .reduce((pcr, e) => createHash('sha256').update(pcr).update(eventDigest(e, 'sha256')).digest(), init);
    const spec = Buffer.alloc(32);
    spec[31] = 3;
    assert.equal(ours.sha256!['0'], fold(spec).toString('hex'));
    const without = pcrsJson(replay(parseEventLog(buildEventLog(events, ['sha1', 'sha256']))));
    assert.equal(ours.sha256!['7'], without.sha256!['7'], 'the locality changes PCR 0 only');
    // tpm2-tools 5.4 ignores the locality and extends the event's zero digest into PCR 0 (against
    // PFP §10.4.1: EV_NO_ACTION is never extended); a fixed tpm2_eventlog would print our value.
    const yaml = execFileSync('tpm2_eventlog', [file], { encoding: 'utf8' });
    const m = /pcrs:\n {2}sha1:\n(?:.*\n)*? {2}sha256:\n {4}0\s*:\s*0x([0-9a-f]+)/.exec(yaml);
    assert.ok(m, yaml.slice(-600));
    const tpm2ToolsBug = fold(createHash('sha256').update(Buffer.alloc(32)).update(Buffer.alloc(32)).digest()).toString('hex');
    assert.ok(m[1] === ours.sha256!['0'] || m[1] === tpm2ToolsBug, `tpm2_eventlog PCR 0 ${m[1]}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('checkReplay names the PCR and bank that differ', () => {
  const replayed = replay(parseEventLog(buildEventLog(syntheticBootEvents())));
  const quoted = new Map([...replayed.get('sha256')!].filter(([i]) => i <= 7));
  assert.doesNotThrow(() => checkReplay(replayed, 0x000b, quoted));
  quoted.set(4, Buffer.alloc(32, 1));
  assert.throws(
    () => checkReplay(replayed, 0x000b, quoted),
    (e: unknown) =>
      code(e) === 'eventlog_replay_mismatch' && /sha256 PCR 4/.test((e as Error).message) && (e as EdgeidError).details?.pcr === 4,
  );
});

test('bounds: size, event count, truncation, bad bank, bad PCR index are typed errors with the offset', () => {
  const good = buildEventLog(syntheticBootEvents());
  assert.throws(
    () => parseEventLog(good, { maxBytes: 100 }),
    (e) => code(e) === 'eventlog_too_large',
  );
  assert.throws(
    () => parseEventLog(good, { maxEvents: 5 }),
    (e) => code(e) === 'eventlog_too_many_events',
  );
  assert.throws(
    () => parseEventLog(Buffer.alloc(0)),
    (e) => code(e) === 'eventlog_malformed',
  );
  const cut = good.subarray(0, good.length - 3);
  assert.throws(
    () => parseEventLog(cut),
    (e) =>
      code(e) === 'eventlog_malformed' &&
      typeof (e as EdgeidError).details?.offset === 'number' &&
      /byte offset \d+/.test((e as Error).message),
  );
  // PCR index 24 in the second record (right after the Spec ID event: 32 + its size)
  const bad = Buffer.from(good);
  const second = 32 + good.readUInt32LE(28);
  bad.writeUInt32LE(24, second);
  assert.throws(
    () => parseEventLog(bad),
    (e) => code(e) === 'eventlog_malformed' && (e as EdgeidError).details?.offset === second,
  );
  // an algorithm the Spec ID event does not list
  const alg = Buffer.from(good);
  alg.writeUInt16LE(0x0099, second + 12);
  assert.throws(
    () => parseEventLog(alg),
    (e) => code(e) === 'eventlog_malformed' && /hashAlg 0x99/.test((e as Error).message),
  );
});
