/**
 * The event-log policy against crafted logs that replay exactly to the quoted sha256 PCRs
 * (replayAgainstQuote accepts them) but whose extra or relabelled events claim a boot that did not
 * happen: only what the quote vouches for counts (events of quoted PCRs with a sha256 digest; data
 * where it hashes to the digest; Secure Boot variables once, before PCR 7's separator; code
 * measurements whatever type the log gives them).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { EV, EFI_GLOBAL_VARIABLE, EFI_IMAGE_SECURITY_DATABASE, parseEventLog, replay } from '../../protocol/eventlog/index.js';
import { eventLogViolations, replayAgainstQuote } from '../../enroll-server/services/eventlog.js';
import type { EventLogPolicy } from '../../enroll-server/config.js';
import {
  buildEventLog,
  sha256SignatureList,
  signerCertificate,
  syntheticBootEvents,
  variableData,
  type SyntheticBoot,
  type SyntheticEvent,
} from '../../scripts/harness/eventlog.js';

const h = (alg: string, b: Buffer | string) => createHash(alg).update(b).digest();
const ZONE_PCRS = [0, 1, 2, 3, 4, 5, 6, 7];

const policy = (p: Partial<EventLogPolicy>): EventLogPolicy => ({
  required: true,
  secureBoot: false,
  firmwareBlobs: null,
  bootApplications: null,
  bootSigners: null,
  dbxNoRollback: false,
  ...p,
});

/** What the TPM quotes after booting `events` (sha256 bank, the zone's PCRs). */
function quoteOf(events: SyntheticEvent[]): Record<string, string> {
  const pcrs = replay(parseEventLog(buildEventLog(events, ['sha1', 'sha256']))).get('sha256')!;
  return Object.fromEntries(ZONE_PCRS.map((p) => [String(p), (pcrs.get(p) ?? Buffer.alloc(32)).toString('hex')]));
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

/** A TCG_PCR_EVENT2 carrying only a SHA-1 digest (digest count 1 of the log's 2 banks). */
function sha1OnlyRecord(pcr: number, type: number, data: Buffer): Buffer {
  const alg = Buffer.alloc(2);
  alg.writeUInt16LE(0x0004);
  return Buffer.concat([u32(pcr), u32(type), u32(1), alg, h('sha1', data), u32(data.length), data]);
}

/** Exactly one violation per pattern, in order. */
function expectViolations(v: string[], patterns: RegExp[]): void {
  assert.equal(v.length, patterns.length, v.join('\n'));
  patterns.forEach((p, i) => assert.match(v[i]!, p));
}

const secureBootOn = () => variableData(EFI_GLOBAL_VARIABLE, 'SecureBoot', Buffer.from([1]));

test('a SecureBoot=1 event carrying only a SHA-1 digest (not in the sha256 replay) does not satisfy secureBoot', () => {
  const boot = syntheticBootEvents({ secureBoot: 0 });
  const quoted = quoteOf(boot);
  const forged = Buffer.concat([
    buildEventLog(boot, ['sha1', 'sha256']),
    sha1OnlyRecord(7, EV.EV_EFI_VARIABLE_DRIVER_CONFIG, secureBootOn()),
  ]);
  const log = replayAgainstQuote(forged, quoted); // accepted: the sha256 replay skips the event
  expectViolations(eventLogViolations(policy({ secureBoot: true }), log, null, undefined, ZONE_PCRS), [/^SecureBoot variable is 0$/]);
});

test('a SecureBoot=1 event in a PCR the zone does not quote does not satisfy secureBoot', () => {
  const boot = syntheticBootEvents({ secureBoot: 0 });
  const quoted = quoteOf(boot);
  const forged = buildEventLog([...boot, { pcr: 14, type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG, data: secureBootOn() }], ['sha1', 'sha256']);
  const log = replayAgainstQuote(forged, quoted);
  expectViolations(eventLogViolations(policy({ secureBoot: true }), log, null, undefined, ZONE_PCRS), [/^SecureBoot variable is 0$/]);
});

test('a SecureBoot=1 event extended into PCR 7 after its separator (root on the device) is a violation, not a value', () => {
  // PFP §3.3.4.8: the firmware measures SecureBoot before the PCR 7 separator; one after it is not the firmware's
  const boot = [...syntheticBootEvents({ secureBoot: 0 }), { pcr: 7, type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG, data: secureBootOn() }];
  const log = replayAgainstQuote(buildEventLog(boot, ['sha1', 'sha256']), quoteOf(boot));
  expectViolations(eventLogViolations(policy({ secureBoot: true }), log, null, undefined, ZONE_PCRS), [
    /^PCR 7: EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot = 1 \(#\d+\) was measured after PCR 7's separator$/,
    /^SecureBoot variable is 0$/,
  ]);
});

test('a firmware blob relabelled EV_POST_CODE (types are not measured) is still judged by firmwareBlobs', () => {
  const allowed = h('sha256', 'firmware:v1.0').toString('hex');
  const boot = syntheticBootEvents({ firmware: 'v0.9-vulnerable' });
  const quoted = quoteOf(boot);
  const relabelled = boot.map((e) => (e.type === EV.EV_EFI_PLATFORM_FIRMWARE_BLOB2 ? { ...e, type: EV.EV_POST_CODE } : e));
  const log = replayAgainstQuote(buildEventLog(relabelled, ['sha1', 'sha256']), quoted);
  expectViolations(eventLogViolations(policy({ firmwareBlobs: [allowed] }), log, null, undefined, ZONE_PCRS), [
    /^PCR 0: EV_POST_CODE '\\x04BIOS' digest [0-9a-f]{8}… is not an allowed firmware measurement$/,
  ]);
});

test('a boot application relabelled EV_EFI_BOOT_SERVICES_DRIVER is still judged by bootApplications', () => {
  const allowed = h('sha256', 'app:shimx64-15.8').toString('hex');
  const boot = syntheticBootEvents({ bootApp: 'bootkit' });
  const quoted = quoteOf(boot);
  const relabelled = boot.map((e) => (e.type === EV.EV_EFI_BOOT_SERVICES_APPLICATION ? { ...e, type: EV.EV_EFI_BOOT_SERVICES_DRIVER } : e));
  const log = replayAgainstQuote(buildEventLog(relabelled, ['sha1', 'sha256']), quoted);
  expectViolations(eventLogViolations(policy({ bootApplications: [allowed] }), log, null, undefined, ZONE_PCRS), [
    /^PCR 4: EV_EFI_BOOT_SERVICES_DRIVER .*BOOTX64\.EFI digest [0-9a-f]{8}… is not an allowed boot application$/,
  ]);
});

test('bootSigners with Secure Boot off: SHA-1-only SecureBoot and authority events vouch for nothing', () => {
  const boot = syntheticBootEvents({ secureBoot: 0, bootApp: 'bootkit' });
  const quoted = quoteOf(boot);
  const authority = variableData(EFI_IMAGE_SECURITY_DATABASE, 'db', Buffer.concat([Buffer.alloc(16, 7), signerCertificate('vendor-ca')]));
  const forged = Buffer.concat([
    buildEventLog(boot, ['sha1', 'sha256']),
    sha1OnlyRecord(7, EV.EV_EFI_VARIABLE_DRIVER_CONFIG, secureBootOn()),
    sha1OnlyRecord(7, EV.EV_EFI_VARIABLE_AUTHORITY, authority),
  ]);
  const log = replayAgainstQuote(forged, quoted);
  const signer = h('sha256', signerCertificate('vendor-ca')).toString('hex');
  expectViolations(eventLogViolations(policy({ bootSigners: [signer] }), log, null, undefined, ZONE_PCRS), [
    /is neither an allowed boot application nor vouched for by an allowed signer: Secure Boot is not on, so no signature was checked$/,
  ]);
});

test('dbxNoRollback: a full dbx event in an unquoted PCR does not hide a rolled-back dbx', () => {
  const approved = parseEventLog(buildEventLog(syntheticBootEvents({ dbxEntries: 3 } as SyntheticBoot), ['sha1', 'sha256']));
  const boot = syntheticBootEvents({ dbxEntries: 1 });
  const quoted = quoteOf(boot);
  const fullDbx = sha256SignatureList([0, 1, 2].map((i) => h('sha256', `dbx:${i}`)));
  const forged = buildEventLog(
    [...boot, { pcr: 15, type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG, data: variableData(EFI_IMAGE_SECURITY_DATABASE, 'dbx', fullDbx) }],
    ['sha1', 'sha256'],
  );
  const log = replayAgainstQuote(forged, quoted);
  expectViolations(eventLogViolations(policy({ dbxNoRollback: true }), log, approved, undefined, ZONE_PCRS), [
    /^dbx rolled back: 2 of the approved log's 3 dbx entries are missing \(now 1\)$/,
  ]);
});

test('control: the honest rolled-back dbx and Secure Boot off are caught', () => {
  const approved = parseEventLog(buildEventLog(syntheticBootEvents({ dbxEntries: 3 }), ['sha1', 'sha256']));
  const boot = syntheticBootEvents({ dbxEntries: 1, secureBoot: 0 });
  const log = replayAgainstQuote(buildEventLog(boot, ['sha1', 'sha256']), quoteOf(boot));
  const v = eventLogViolations(policy({ dbxNoRollback: true, secureBoot: true }), log, approved, undefined, ZONE_PCRS);
  assert.equal(v.length, 2, v.join('\n'));
});

test('real logs: firmware measured as EV_POST_CODE (event-arch-linux.bin, event-postcode.bin) is judged by firmwareBlobs', async () => {
  const { readFileSync } = await import('node:fs');
  for (const f of ['event-arch-linux.bin', 'event-postcode.bin']) {
    const log = parseEventLog(readFileSync(new URL(`../fixtures/eventlog/${f}`, import.meta.url)));
    // an allow-list naming no real firmware: every firmware must be refused
    const v = eventLogViolations(policy({ firmwareBlobs: ['00'.repeat(32)] }), log, null, undefined, ZONE_PCRS);
    assert.ok(v.length > 0 && v.every((x) => / is not an allowed firmware measurement$/.test(x)), `${f}: ${v.join('; ')}`);
  }
});

test('bootSigners: an application verified by a db/MokList hash entry (an authority event without certificate) is not vouched for', () => {
  const allowed = h('sha256', signerCertificate('vendor-ca')).toString('hex');
  const boot = syntheticBootEvents({ signer: 'vendor-ca', bootApp: 'shim' });
  // shim then verifies the next stage by a hash an owner enrolled in MokList and measures that entry
  // (EFI_SIGNATURE_DATA: owner GUID + SHA-256) as EV_EFI_VARIABLE_AUTHORITY, like any verification
  const mokHash = variableData(
    '605dab50-e046-4300-abb6-3dd810dd8b23',
    'MokList',
    Buffer.concat([Buffer.alloc(16, 1), h('sha256', 'grub-evil')]),
  );
  const app = boot.find((e) => e.type === EV.EV_EFI_BOOT_SERVICES_APPLICATION)!;
  const events = [
    ...boot,
    { pcr: 7, type: EV.EV_EFI_VARIABLE_AUTHORITY, data: mokHash },
    { ...app, digests: { sha256: h('sha256', 'app:grub-evil'), sha1: h('sha1', 'app:grub-evil') } },
  ];
  const log = replayAgainstQuote(buildEventLog(events, ['sha1', 'sha256']), quoteOf(events));
  expectViolations(eventLogViolations(policy({ bootSigners: [allowed] }), log, null, undefined, ZONE_PCRS), [
    /names no certificate \(an image was verified by its hash\)$/,
  ]);
});
