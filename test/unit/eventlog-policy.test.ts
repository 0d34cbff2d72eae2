/**
 * The zone's event-log policy for boot applications: allowed by digest, or by signer (the
 * EV_EFI_VARIABLE_AUTHORITY events UEFI Secure Boot measures into PCR 7), on synthetic and real logs.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { EV, parseEventLog, type LogEvent } from '../../protocol/eventlog/index.js';
import { eventLogViolations } from '../../enroll-server/services/eventlog.js';
import { loadConfig } from '../../enroll-server/config.js';
import type { EventLogPolicy } from '../../enroll-server/config.js';
import { buildEventLog, eventDigest, signerCertificate, syntheticBootEvents, type SyntheticBoot } from '../../scripts/harness/eventlog.js';

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const APP = (label: string) => sha256(`app:${label}`);
const SIGNER = (label: string) => sha256(signerCertificate(label));

const policy = (p: Partial<EventLogPolicy>): EventLogPolicy => ({
  required: true,
  secureBoot: false,
  firmwareBlobs: null,
  bootApplications: null,
  bootSigners: null,
  dbxNoRollback: false,
  ...p,
});

const QUOTED = [0, 1, 2, 3, 4, 5, 6, 7];
const logOf = (boot: SyntheticBoot) => parseEventLog(buildEventLog(syntheticBootEvents(boot)));
const check = (p: Partial<EventLogPolicy>, boot: SyntheticBoot) => eventLogViolations(policy(p), logOf(boot), null, undefined, QUOTED);

function authorityEvents(file: string): LogEvent[] {
  return parseEventLog(readFileSync(new URL(`../fixtures/eventlog/${file}`, import.meta.url))).events.filter(
    (e) => e.type === EV.EV_EFI_VARIABLE_AUTHORITY,
  );
}

test('real logs: the db entry and shim vendor certificate name their signer; SbatLevel and MokListTrusted name none', () => {
  const events = authorityEvents('event-moklisttrusted.bin');
  const byName = new Map(events.map((e) => [e.decoded.kind === 'variable' ? e.decoded.name : '', e]));
  const db = byName.get('db')!;
  assert.equal(db.decoded.kind, 'variable');
  // EDK2 logs the whole EFI_SIGNATURE_DATA: 16 bytes of owner GUID, then the certificate
  const vd = db.data.subarray(db.data.length - (db.decoded.kind === 'variable' ? db.decoded.dataLength : 0));
  const cert = new x509.X509Certificate(vd.subarray(16));
  assert.match(cert.subject, /Microsoft Corporation UEFI CA 2011/);
  assert.equal(db.decoded.kind === 'variable' && db.decoded.signerSha256, sha256(Buffer.from(cert.rawData)));
  assert.equal(db.dataMatchesDigest, true);
  // shim logs its vendor certificate alone
  const shim = byName.get('Shim')!;
  assert.ok(shim.decoded.kind === 'variable' && shim.decoded.signerSha256);
  assert.equal(shim.dataMatchesDigest, true);
  for (const name of ['SbatLevel', 'MokListTrusted']) {
    const e = byName.get(name)!;
    assert.ok(e.decoded.kind === 'variable' && e.decoded.signerSha256 === undefined, name);
  }
  // an early shim measured something other than its event data: the signer is not believed
  const early = authorityEvents('event-postcode.bin').filter((e) => e.decoded.kind === 'variable' && e.decoded.name === 'Shim');
  assert.ok(early.length > 0 && early.every((e) => e.dataMatchesDigest === false));
});

test('bootApplications alone: an unlisted application is named; a listed one passes', () => {
  assert.deepEqual(check({ bootApplications: [APP('shim-1')] }, { bootApp: 'shim-1' }), []);
  const v = check({ bootApplications: [APP('shim-1')] }, { bootApp: 'grub-evil' });
  assert.equal(v.length, 1);
  assert.match(v[0]!, /^PCR 4: EV_EFI_BOOT_SERVICES_APPLICATION .*BOOTX64\.EFI digest [0-9a-f]{8}… is not an allowed boot application$/);
});

test('bootSigners: an unlisted application passes when Secure Boot is on and an allowed signer verified it', () => {
  assert.deepEqual(check({ bootSigners: [SIGNER('vendor-ca')] }, { bootApp: 'grub-2.12', signer: 'vendor-ca' }), []);
  // either rule suffices
  assert.deepEqual(
    check({ bootApplications: [APP('grub-2.12')], bootSigners: [SIGNER('vendor-ca')] }, { bootApp: 'grub-2.12', signer: 'other' }),
    [],
  );
});

test('bootSigners: a foreign signer, Secure Boot off, or no authority event are violations naming why', () => {
  const foreign = check({ bootSigners: [SIGNER('vendor-ca')] }, { signer: 'attacker-ca' });
  assert.equal(foreign.length, 1);
  assert.match(foreign[0]!, /is neither an allowed boot application nor vouched for by an allowed signer/);
  assert.match(
    foreign[0]!,
    new RegExp(
      `EV_EFI_VARIABLE_AUTHORITY db signer ${SIGNER('attacker-ca').slice(0, 16)}… certificate ${SIGNER('attacker-ca').slice(0, 8)}… is not an allowed boot signer`,
    ),
  );

  const off = check({ bootSigners: [SIGNER('vendor-ca')] }, { signer: 'vendor-ca', secureBoot: 0 });
  assert.equal(off.length, 1);
  assert.match(off[0]!, /Secure Boot is not on, so no signature was checked/);

  const none = check({ bootSigners: [SIGNER('vendor-ca')] }, {});
  assert.equal(none.length, 1);
  assert.match(none[0]!, /no EV_EFI_VARIABLE_AUTHORITY event names the signer/);
});

test('bootSigners: an authority event whose data does not hash to its digest vouches for nothing', () => {
  const events = syntheticBootEvents({ signer: 'vendor-ca' });
  const authority = events.find((e) => e.type === EV.EV_EFI_VARIABLE_AUTHORITY)!;
  // the digest says one certificate (what was extended), the data claims the allowed one
  authority.digests = {
    sha256: createHash('sha256')
      .update(Buffer.concat([authority.data, Buffer.from([0])]))
      .digest(),
  };
  const log = parseEventLog(buildEventLog(events));
  assert.notEqual(eventDigest(authority, 'sha256').toString('hex'), sha256(authority.data));
  const v = eventLogViolations(policy({ bootSigners: [SIGNER('vendor-ca')] }), log, null, undefined, QUOTED);
  assert.equal(v.length, 1);
  assert.match(v[0]!, /data does not match its digest/);
});

test('config: bootSigners takes sha256 digests and implies a required log', () => {
  const zone = (eventLog: unknown) =>
    loadConfig({ argv: [], env: {}, cwd: '/srv', file: { zones: { z: { eventLog } } } }).zones.z!.eventLog;
  const p = zone({ bootSigners: [SIGNER('vendor-ca').toUpperCase()] });
  assert.deepEqual(p.bootSigners, [SIGNER('vendor-ca')]);
  assert.equal(p.required, true);
  assert.throws(
    () => zone({ bootSigners: ['not-a-digest'] }),
    (e: Error & { code?: string }) => e.code === 'config_invalid' && /bootSigners/.test(e.message),
  );
});

test('real logs pass a policy that lists their own code measurements and signers (no false violations)', () => {
  const s256 = (e: LogEvent) => e.digests.get(0x000b);
  for (const file of [
    'event-moklisttrusted.bin',
    'event-postcode.bin',
    'event-uefivar.bin',
    'event-bootorder.bin',
    'event-arch-linux.bin',
  ]) {
    const log = parseEventLog(readFileSync(new URL(`../fixtures/eventlog/${file}`, import.meta.url)));
    const code = (pcrs: number[]) =>
      log.events
        .filter(
          (e) =>
            pcrs.includes(e.pcr) && e.type !== EV.EV_NO_ACTION && s256(e) && !s256(e)!.equals(createHash('sha256').update(e.data).digest()),
        )
        .map((e) => s256(e)!.toString('hex'));
    const p = policy({ firmwareBlobs: code([0, 2]), bootApplications: code([4]), dbxNoRollback: true });
    assert.deepEqual(eventLogViolations(p, log, log, undefined, QUOTED), [], file);
  }
  // the real signers of a shim + grub boot with Secure Boot on: Microsoft's UEFI CA (db) and shim's vendor certificate
  const log = parseEventLog(readFileSync(new URL('../fixtures/eventlog/event-moklisttrusted.bin', import.meta.url)));
  const signers = authorityEvents('event-moklisttrusted.bin').flatMap((e) =>
    e.decoded.kind === 'variable' && e.decoded.signerSha256 ? [e.decoded.signerSha256] : [],
  );
  assert.equal(signers.length, 2);
  assert.deepEqual(eventLogViolations(policy({ secureBoot: true, bootSigners: signers }), log, null, undefined, QUOTED), []);
  const onlyDb = eventLogViolations(policy({ bootSigners: [signers[0]!] }), log, null, undefined, QUOTED);
  assert.equal(onlyDb.length, 1);
  assert.match(onlyDb[0]!, /EV_EFI_VARIABLE_AUTHORITY Shim signer [0-9a-f]{16}… certificate [0-9a-f]{8}… is not an allowed boot signer$/);
});

test("config: an event-log rule needs the PCRs it reads in the zone's pcrs; dbxNoRollback is on by default only where PCR 7 is quoted", () => {
  const zone = (z: Record<string, unknown>) => loadConfig({ argv: [], env: {}, cwd: '/srv', file: { zones: { z } } }).zones.z!;
  for (const [rule, value, pcrs, missing] of [
    ['secureBoot', true, [0, 4], '7'],
    ['firmwareBlobs', [], [0, 4, 7], '2'],
    ['bootApplications', [], [0, 7], '4'],
    ['bootSigners', [], [4], '7'],
    ['dbxNoRollback', true, [0], '7'],
  ] as const) {
    assert.throws(
      () => zone({ pcrs, eventLog: { [rule]: value } }),
      (e: Error & { code?: string }) =>
        e.code === 'config_invalid' && e.message.includes(`eventLog.${rule}`) && e.message.includes(`do not include ${missing}`),
      rule,
    );
  }
  assert.equal(zone({ pcrs: [0, 4] }).eventLog.dbxNoRollback, false);
  assert.equal(zone({ pcrs: [0, 4, 7] }).eventLog.dbxNoRollback, true);
});
