/**
 * Review of the event-log policy (outside reviewer): crafted logs that replay exactly to the quoted
 * sha256 PCRs (replayAgainstQuote accepts them) but whose extra or relabelled events satisfy a
 * zone policy the measured boot does not. Each test asserts the SAFE outcome (a violation), so it
 * FAILS while the defect exists.
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

const secureBootOn = () => variableData(EFI_GLOBAL_VARIABLE, 'SecureBoot', Buffer.from([1]));

test('a SecureBoot=1 event carrying only a SHA-1 digest is not replayed in sha256 yet satisfies secureBoot', () => {
  const boot = syntheticBootEvents({ secureBoot: 0 });
  const quoted = quoteOf(boot);
  const forged = Buffer.concat([buildEventLog(boot, ['sha1', 'sha256']), sha1OnlyRecord(7, EV.EV_EFI_VARIABLE_DRIVER_CONFIG, secureBootOn())]);
  const log = replayAgainstQuote(forged, quoted); // accepted: the sha256 replay skips the event
  assert.notDeepEqual(eventLogViolations(policy({ secureBoot: true }), log, null, undefined), [], 'Secure Boot is off on this device');
});

test('a SecureBoot=1 event in a PCR the zone does not quote satisfies secureBoot', () => {
  const boot = syntheticBootEvents({ secureBoot: 0 });
  const quoted = quoteOf(boot);
  const forged = buildEventLog([...boot, { pcr: 14, type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG, data: secureBootOn() }], ['sha1', 'sha256']);
  const log = replayAgainstQuote(forged, quoted);
  assert.notDeepEqual(eventLogViolations(policy({ secureBoot: true }), log, null, undefined), []);
});

test('a SecureBoot=1 event extended into PCR 7 after its separator (root on the device) satisfies secureBoot', () => {
  // PFP §3.3.4.8: the firmware measures SecureBoot before the PCR 7 separator; one after it is not the firmware's
  const boot = [...syntheticBootEvents({ secureBoot: 0 }), { pcr: 7, type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG, data: secureBootOn() }];
  const log = replayAgainstQuote(buildEventLog(boot, ['sha1', 'sha256']), quoteOf(boot));
  assert.notDeepEqual(eventLogViolations(policy({ secureBoot: true }), log, null, undefined), []);
});

test('relabelling the firmware blob as EV_POST_CODE (types are not measured) satisfies firmwareBlobs', () => {
  const allowed = h('sha256', 'firmware:v1.0').toString('hex');
  const boot = syntheticBootEvents({ firmware: 'v0.9-vulnerable' });
  const quoted = quoteOf(boot);
  const relabelled = boot.map((e) => (e.type === EV.EV_EFI_PLATFORM_FIRMWARE_BLOB2 ? { ...e, type: EV.EV_POST_CODE } : e));
  const log = replayAgainstQuote(buildEventLog(relabelled, ['sha1', 'sha256']), quoted);
  assert.notDeepEqual(eventLogViolations(policy({ firmwareBlobs: [allowed] }), log, null, undefined), []);
});

test('relabelling the boot application as EV_EFI_BOOT_SERVICES_DRIVER satisfies bootApplications', () => {
  const allowed = h('sha256', 'app:shimx64-15.8').toString('hex');
  const boot = syntheticBootEvents({ bootApp: 'bootkit' });
  const quoted = quoteOf(boot);
  const relabelled = boot.map((e) =>
    e.type === EV.EV_EFI_BOOT_SERVICES_APPLICATION ? { ...e, type: EV.EV_EFI_BOOT_SERVICES_DRIVER } : e,
  );
  const log = replayAgainstQuote(buildEventLog(relabelled, ['sha1', 'sha256']), quoted);
  assert.notDeepEqual(eventLogViolations(policy({ bootApplications: [allowed] }), log, null, undefined), []);
});

test('bootSigners with Secure Boot off: SHA-1-only SecureBoot and authority events let any application pass', () => {
  const boot = syntheticBootEvents({ secureBoot: 0, bootApp: 'bootkit' });
  const quoted = quoteOf(boot);
  const authority = variableData(
    EFI_IMAGE_SECURITY_DATABASE,
    'db',
    Buffer.concat([Buffer.alloc(16, 7), signerCertificate('vendor-ca')]),
  );
  const forged = Buffer.concat([
    buildEventLog(boot, ['sha1', 'sha256']),
    sha1OnlyRecord(7, EV.EV_EFI_VARIABLE_DRIVER_CONFIG, secureBootOn()),
    sha1OnlyRecord(7, EV.EV_EFI_VARIABLE_AUTHORITY, authority),
  ]);
  const log = replayAgainstQuote(forged, quoted);
  const signer = h('sha256', signerCertificate('vendor-ca')).toString('hex');
  assert.notDeepEqual(eventLogViolations(policy({ bootSigners: [signer] }), log, null, undefined), []);
});

test('dbxNoRollback: a rolled-back dbx hidden by a later full dbx event in an unquoted PCR', () => {
  const approved = parseEventLog(buildEventLog(syntheticBootEvents({ dbxEntries: 3 } as SyntheticBoot), ['sha1', 'sha256']));
  const boot = syntheticBootEvents({ dbxEntries: 1 });
  const quoted = quoteOf(boot);
  const fullDbx = sha256SignatureList([0, 1, 2].map((i) => h('sha256', `dbx:${i}`)));
  const forged = buildEventLog(
    [...boot, { pcr: 15, type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG, data: variableData(EFI_IMAGE_SECURITY_DATABASE, 'dbx', fullDbx) }],
    ['sha1', 'sha256'],
  );
  const log = replayAgainstQuote(forged, quoted);
  assert.notDeepEqual(eventLogViolations(policy({ dbxNoRollback: true }), log, approved, undefined), []);
});

test('control: the honest rolled-back dbx and Secure Boot off are caught', () => {
  const approved = parseEventLog(buildEventLog(syntheticBootEvents({ dbxEntries: 3 }), ['sha1', 'sha256']));
  const boot = syntheticBootEvents({ dbxEntries: 1, secureBoot: 0 });
  const log = replayAgainstQuote(buildEventLog(boot, ['sha1', 'sha256']), quoteOf(boot));
  const v = eventLogViolations(policy({ dbxNoRollback: true, secureBoot: true }), log, approved, undefined);
  assert.equal(v.length, 2, v.join('\n'));
});

test('real logs: firmware measured as EV_POST_CODE (event-arch-linux.bin, event-postcode.bin) is never checked by firmwareBlobs', async () => {
  const { readFileSync } = await import('node:fs');
  for (const f of ['event-arch-linux.bin', 'event-postcode.bin']) {
    const log = parseEventLog(readFileSync(new URL(`../fixtures/eventlog/${f}`, import.meta.url)));
    // an allow-list naming no real firmware: every firmware must be refused
    const v = eventLogViolations(policy({ firmwareBlobs: ['00'.repeat(32)] }), log, null, undefined);
    assert.notDeepEqual(v, [], `${f}: its PCR 0 firmware code measurement passed an allow-list that names nothing`);
  }
});

test('bootSigners: an application verified by a db/MokList HASH entry (authority event without certificate) passes unexamined', () => {
  const allowed = h('sha256', signerCertificate('vendor-ca')).toString('hex');
  const boot = syntheticBootEvents({ signer: 'vendor-ca', bootApp: 'shim' });
  // shim then verifies the next stage by a hash an owner enrolled in MokList and measures that entry
  // (EFI_SIGNATURE_DATA: owner GUID + SHA-256) as EV_EFI_VARIABLE_AUTHORITY, like any verification
  const mokHash = variableData('605dab50-e046-4300-abb6-3dd810dd8b23', 'MokList', Buffer.concat([Buffer.alloc(16, 1), h('sha256', 'grub-evil')]));
  const app = boot.find((e) => e.type === EV.EV_EFI_BOOT_SERVICES_APPLICATION)!;
  const events = [
    ...boot,
    { pcr: 7, type: EV.EV_EFI_VARIABLE_AUTHORITY, data: mokHash },
    { ...app, digests: { sha256: h('sha256', 'app:grub-evil'), sha1: h('sha1', 'app:grub-evil') } },
  ];
  const log = replayAgainstQuote(buildEventLog(events, ['sha1', 'sha256']), quoteOf(events));
  assert.notDeepEqual(eventLogViolations(policy({ bootSigners: [allowed] }), log, null, undefined), [], 'grub-evil was verified by no allowed signer');
});
