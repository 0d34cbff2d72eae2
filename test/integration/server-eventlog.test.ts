/**
 * The TCG event log against the quote, with a real swtpm: a synthetic boot (an event log written
 * by the test and the same digests extended into the swtpm's PCRs) enrolls and renews; the second
 * renewal sends only the log's digest; a changed firmware blob quarantines the device with the
 * event named, `device show` diffs the logs, approve-baseline makes it active with the new log
 * recorded; a log that does not replay to the quote is refused with eventlog_replay_mismatch; Secure
 * Boot off in a zone that requires it quarantines with that reason, also behind a forged event the
 * sha256 replay does not cover; boot applications allowed by signer; a dbx rollback quarantines
 * and approve-baseline accepts it.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test, type TestContext } from 'node:test';
import { deflateSync } from 'node:zlib';
import type { EventLogEvidence } from '../../protocol/api.js';
import { EV, EFI_GLOBAL_VARIABLE } from '../../protocol/eventlog/index.js';
import {
  buildEventLog,
  extendEvents,
  signerCertificate,
  syntheticBootEvents,
  variableData,
  type SyntheticBoot,
} from '../../scripts/harness/eventlog.js';
import { startSwtpm, type Swtpm } from '../../scripts/harness/swtpm.js';
import { TestDevice, injectTransport, type Transport } from '../helpers/device.js';
import { startInProcessServer, type TestServer } from '../helpers/server.js';

function wire(log: Buffer): EventLogEvidence {
  return { sha256: createHash('sha256').update(log).digest('hex'), deflate: deflateSync(log).toString('base64') };
}

/** Boots the swtpm with `boot`: PCRs reset, the synthetic events extended; returns the log. */
async function boot(tpm: Swtpm, spec: SyntheticBoot): Promise<Buffer> {
  await tpm.restart();
  const events = syntheticBootEvents(spec);
  await extendEvents(tpm.tcti, events);
  return buildEventLog(events);
}

async function setup(t: TestContext, zone: Record<string, unknown> = {}): Promise<{ srv: TestServer; tpm: Swtpm; http: Transport }> {
  const srv = await startInProcessServer({ zones: { default: { pcrs: [0, 1, 2, 3, 4, 5, 6, 7], ...zone } } });
  t.after(() => srv.close());
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  return { srv, tpm, http: injectTransport(srv.server.app) };
}

/** A new TPM connection for the same device (after a reboot of the swtpm). */
async function reconnect(t: TestContext, tpm: Swtpm, dev: TestDevice): Promise<TestDevice> {
  const again = await TestDevice.create(tpm.tcti);
  t.after(() => again.close());
  Object.assign(again, { ak: dev.ak, deviceId: dev.deviceId, nonce: dev.nonce, pcrs: dev.pcrs });
  return again;
}

test('synthetic boot: enroll and renew with the log; an unchanged log is sent by digest only', async (t) => {
  const { srv, tpm, http } = await setup(t, { eventLog: { secureBoot: true } });
  const log = await boot(tpm, { firmware: 'v1.0' });
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  dev.eventLog = wire(log);
  const enrolled = await dev.enroll(http, await srv.token());
  assert.equal(enrolled.renew.eventLogSha256, dev.eventLog.sha256, 'the server holds the log');

  const digestOnly = { sha256: dev.eventLog.sha256 };
  const r = await dev.renew(http, { eventLog: digestOnly });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.renew.eventLogSha256, digestOnly.sha256);
  const ch = await dev.challenge(http);
  assert.equal(ch.body.eventLogSha256, digestOnly.sha256, 'the challenge names the log the server holds');

  // a digest the server does not hold: refused, nothing changes
  const unknown = await dev.renew(http, { eventLog: { sha256: 'ab'.repeat(32) } });
  assert.equal(unknown.status, 409, JSON.stringify(unknown.body));
  assert.equal(unknown.body.error.code, 'eventlog_unknown');
  const shown = (await srv.admin('GET', `/v1/admin/devices/${enrolled.deviceId}`)).body.device;
  assert.equal(shown.status, 'active');
  assert.deepEqual(shown.eventLog.diff, []);
  assert.equal(shown.eventLog.baselineSha256, digestOnly.sha256);
});

test('a log that does not replay to the quote is refused with eventlog_replay_mismatch naming PCR and bank', async (t) => {
  const { srv, tpm, http } = await setup(t);
  const log = await boot(tpm, { firmware: 'v1.0' });
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  dev.eventLog = wire(log);
  const enrolled = await dev.enroll(http, await srv.token());
  // the log of another boot application than the one the TPM measured
  const other = buildEventLog(syntheticBootEvents({ firmware: 'v1.0', bootApp: 'grub-evil' }));
  const r = await dev.renew(http, { eventLog: wire(other) });
  assert.equal(r.status, 400, JSON.stringify(r.body));
  assert.equal(r.body.error.code, 'eventlog_replay_mismatch');
  assert.match(r.body.error.message, /sha256 PCR 4 /);
  // a zip bomb stops at the bound
  const bomb = Buffer.alloc(8 * 1024 * 1024);
  const z = await dev.renew(http, {
    eventLog: { sha256: createHash('sha256').update(bomb).digest('hex'), deflate: deflateSync(bomb, { level: 9 }).toString('base64') },
  });
  assert.equal(z.body.error?.code, 'eventlog_too_large', JSON.stringify(z.body));
  // refused, not quarantined
  assert.equal((await srv.admin('GET', `/v1/admin/devices/${enrolled.deviceId}`)).body.device.status, 'active');
});

test('a changed firmware blob quarantines naming the event; device show diffs the logs; approve → active with the new log', async (t) => {
  const { srv, tpm, http } = await setup(t);
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  const v1 = await boot(tpm, { firmware: 'v1.0' });
  dev.eventLog = wire(v1);
  const { deviceId } = await dev.enroll(http, await srv.token());

  const v2 = await boot(tpm, { firmware: 'v2.0' });
  const after = await reconnect(t, tpm, dev);
  after.eventLog = wire(v2);
  const r = await after.renew(http);
  assert.equal(r.status, 403, JSON.stringify(r.body));
  assert.equal(r.body.error.code, 'posture_pcr_mismatch');
  const old = createHash('sha256').update('firmware:v1.0').digest('hex').slice(0, 8);
  const now = createHash('sha256').update('firmware:v2.0').digest('hex').slice(0, 8);
  const named = `PCR 0: EV_EFI_PLATFORM_FIRMWARE_BLOB2 'BIOS' base 0xff000000 length 0x1000000 digest ${old}… → ${now}…`;
  assert.ok(r.body.error.message.includes(named), r.body.error.message);
  const shown = (await srv.admin('GET', `/v1/admin/devices/${deviceId}`)).body.device;
  assert.equal(shown.status, 'quarantined');
  assert.ok(shown.statusReason.includes(named));
  assert.deepEqual(shown.eventLog.diff, [
    `- PCR 0 EV_EFI_PLATFORM_FIRMWARE_BLOB2 'BIOS' base 0xff000000 length 0x1000000 ${old}…`,
    `+ PCR 0 EV_EFI_PLATFORM_FIRMWARE_BLOB2 'BIOS' base 0xff000000 length 0x1000000 ${now}…`,
  ]);

  const ok = await srv.admin('POST', `/v1/admin/devices/${deviceId}/approve-baseline`, {});
  assert.equal(ok.status, 200);
  const renewed = await after.renew(http);
  assert.equal(renewed.status, 200, JSON.stringify(renewed.body));
  const approved = (await srv.admin('GET', `/v1/admin/devices/${deviceId}`)).body.device;
  assert.equal(approved.status, 'active');
  assert.equal(approved.eventLog.baselineSha256, after.eventLog.sha256, 'the approved log is recorded with the PCRs');
  assert.deepEqual(approved.eventLog.diff, []);
  assert.equal((await after.renew(http, { eventLog: { sha256: after.eventLog.sha256 } })).status, 200);
});

test('Secure Boot off in a zone that requires it: quarantined with "SecureBoot variable is 0"', async (t) => {
  const { srv, tpm, http } = await setup(t, { eventLog: { secureBoot: true } });
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  dev.eventLog = wire(await boot(tpm, { secureBoot: 1 }));
  const { deviceId } = await dev.enroll(http, await srv.token());

  const off = await boot(tpm, { secureBoot: 0 });
  const after = await reconnect(t, tpm, dev);
  after.eventLog = wire(off);
  const r = await after.renew(http);
  assert.equal(r.status, 403, JSON.stringify(r.body));
  assert.equal(r.body.error.code, 'posture_eventlog_rejected');
  assert.match(r.body.error.message, /SecureBoot variable is 0/);
  assert.equal((await srv.admin('GET', `/v1/admin/devices/${deviceId}`)).body.device.status, 'quarantined');

  // no log at all in a zone whose policy needs it
  const none = await reconnect(t, tpm, dev);
  await srv.admin('POST', `/v1/admin/devices/${deviceId}/approve-baseline`, {});
  const r2 = await none.renew(http, { claims: { ...none.claims, eventLog: 'absent: eventlog_unreadable' } });
  assert.equal(r2.body.error?.code, 'posture_eventlog_rejected', JSON.stringify(r2.body));
  assert.match(r2.body.error.message, /no TCG event log was sent \(absent: eventlog_unreadable\)/);

  // the same zone refuses to enroll another TPM booted with Secure Boot off
  const tpm2 = await startSwtpm();
  t.after(() => tpm2.stop());
  const other = await TestDevice.create(tpm2.tcti);
  t.after(() => other.close());
  other.eventLog = wire(await boot(tpm2, { secureBoot: 0 }));
  await assert.rejects(other.enroll(http, await srv.token()), (e: any) => {
    assert.equal(e.result?.body?.error?.code, 'posture_eventlog_rejected', JSON.stringify(e.result?.body ?? e.message));
    assert.match(e.result.body.error.message, /SecureBoot variable is 0/);
    return true;
  });
});

test('boot applications allowed by signer: a new application signed by the allowed CA renews; one vouched for by another CA quarantines naming it', async (t) => {
  const allowed = createHash('sha256').update(signerCertificate('plant-vendor-ca')).digest('hex');
  const { srv, tpm, http } = await setup(t, { eventLog: { bootSigners: [allowed] } });
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  dev.eventLog = wire(await boot(tpm, { bootApp: 'grub-2.06', signer: 'plant-vendor-ca' }));
  const { deviceId } = await dev.enroll(http, await srv.token());

  // an update of the boot application, signed by the same CA: no baseline approval needed for the
  // policy (the PCR baseline is another rule: this zone's baseline follows the approved quote)
  await srv.admin('POST', `/v1/admin/devices/${deviceId}/approve-baseline`, {});
  const updated = await reconnect(t, tpm, dev);
  updated.eventLog = wire(await boot(tpm, { bootApp: 'grub-2.12', signer: 'plant-vendor-ca' }));
  const ok = await updated.renew(http);
  assert.equal(ok.status, 200, JSON.stringify(ok.body));

  await srv.admin('POST', `/v1/admin/devices/${deviceId}/approve-baseline`, {});
  const evil = await reconnect(t, tpm, updated);
  evil.eventLog = wire(await boot(tpm, { bootApp: 'grub-evil', signer: 'attacker-ca' }));
  const r = await evil.renew(http);
  assert.equal(r.status, 403, JSON.stringify(r.body));
  assert.equal(r.body.error.code, 'posture_eventlog_rejected');
  assert.match(r.body.error.message, /is neither an allowed boot application nor vouched for by an allowed signer/);
  assert.match(
    r.body.error.message,
    /EV_EFI_VARIABLE_AUTHORITY db signer [0-9a-f]{16}… certificate [0-9a-f]{8}… is not an allowed boot signer/,
  );
  assert.equal((await srv.admin('GET', `/v1/admin/devices/${deviceId}`)).body.device.status, 'quarantined');
});

test('Secure Boot off plus a forged SecureBoot=1 event with only a SHA-1 digest (outside the sha256 replay): enrollment refused', async (t) => {
  const { srv, tpm, http } = await setup(t, { eventLog: { secureBoot: true } });
  await tpm.restart();
  const events = syntheticBootEvents({ secureBoot: 0 });
  await extendEvents(tpm.tcti, events);
  const data = variableData(EFI_GLOBAL_VARIABLE, 'SecureBoot', Buffer.from([1]));
  const u32 = (n: number) => Buffer.from(Uint32Array.of(n).buffer);
  const sha1Only = Buffer.concat([
    u32(7),
    u32(EV.EV_EFI_VARIABLE_DRIVER_CONFIG),
    u32(1),
    Buffer.from([0x04, 0x00]),
    createHash('sha1').update(data).digest(),
    u32(data.length),
    data,
  ]);
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  dev.eventLog = wire(Buffer.concat([buildEventLog(events, ['sha1', 'sha256']), sha1Only]));
  await assert.rejects(dev.enroll(http, await srv.token()), (e: any) => {
    assert.equal(e.result?.body?.error?.code, 'posture_eventlog_rejected', JSON.stringify(e.result?.body ?? e.message));
    assert.match(e.result.body.error.message, /SecureBoot variable is 0/);
    return true;
  });
});

test('dbx rolled back (firmware reset to defaults): quarantined naming it; approve-baseline accepts the new dbx', async (t) => {
  const { srv, tpm, http } = await setup(t);
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  dev.eventLog = wire(await boot(tpm, { dbxEntries: 3 }));
  const { deviceId } = await dev.enroll(http, await srv.token());

  const after = await reconnect(t, tpm, dev);
  after.eventLog = wire(await boot(tpm, { dbxEntries: 1 }));
  const r = await after.renew(http);
  assert.equal(r.body.error?.code, 'posture_eventlog_rejected', JSON.stringify(r.body));
  assert.match(r.body.error.message, /dbx rolled back: 2 of the approved log's 3 dbx entries are missing \(now 1\)/);
  assert.equal((await srv.admin('GET', `/v1/admin/devices/${deviceId}`)).body.device.status, 'quarantined');

  assert.equal((await srv.admin('POST', `/v1/admin/devices/${deviceId}/approve-baseline`, {})).status, 200);
  const renewed = await after.renew(http);
  assert.equal(renewed.status, 200, JSON.stringify(renewed.body));
  assert.equal((await srv.admin('GET', `/v1/admin/devices/${deviceId}`)).body.device.status, 'active');
  // the approved log is the new reference: the same boot renews again after the window closed
  const again = await after.renew(http);
  assert.equal(again.status, 200, JSON.stringify(again.body));
});
