/**
 * Posture decisions mean what they say: an approval opens the baseline window for one boot state
 * only (the first successful renewal closes it, and its audit row names the approval), and
 * anonymous callers learn nothing about a device's state (one generic refusal; the cause goes to
 * the audit log and the admin API). Real swtpm TPMs, the server in-process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { startSwtpm, extendBootPcrs, type Swtpm } from '../../scripts/harness/swtpm.js';
import { TestDevice, injectTransport, type Transport } from '../helpers/device.js';
import { startInProcessServer, type TestServer } from '../helpers/server.js';

async function setup(
  t: { after: (fn: () => Promise<void>) => void },
  n: number,
): Promise<{ srv: TestServer; http: Transport; tpms: Swtpm[]; devs: TestDevice[] }> {
  const tpms = await Promise.all(Array.from({ length: n }, () => startSwtpm()));
  t.after(async () => {
    for (const s of tpms) await s.stop();
  });
  for (const s of tpms) await extendBootPcrs(s.tcti);
  const srv = await startInProcessServer({ rateLimit: { enroll: { max: 100000 }, renew: { max: 100000 } } });
  t.after(() => srv.close());
  const http = injectTransport(srv.server.app);
  const devs: TestDevice[] = [];
  t.after(async () => {
    for (const d of devs) await d.close();
  });
  for (const s of tpms) {
    const d = await TestDevice.create(s.tcti);
    devs.push(d);
    await d.enroll(http, await srv.token());
  }
  return { srv, http, tpms, devs };
}

async function rows(srv: TestServer, deviceId: string, event: string) {
  return (await srv.server.ctx.store.listAudit({ deviceId, limit: 100000 })).filter((r) => r.event === event);
}

test(
  'the approval window closes at the first successful renewal after approval whatever the PCRs are, and that renewal names the approval',
  { timeout: 300_000 },
  async (t) => {
    const { srv, http, tpms, devs } = await setup(t, 1);
    const dev = devs[0]!;
    const id = dev.deviceId!;

    // an approval while the boot state is unchanged: the routine renewal that follows closes the window
    const approve1 = await srv.admin('POST', `/v1/admin/devices/${id}/approve-baseline`, {});
    assert.equal(approve1.status, 200);
    assert.equal(approve1.body.device.posture, 'baseline-window');
    const approval1 = (await rows(srv, id, 'device.approve_baseline')).at(-1)!;
    assert.match(String(approval1.details?.approvalId), /^[0-9a-f-]{36}$/);
    const r1 = await dev.renew(http);
    assert.equal(r1.status, 200, JSON.stringify(r1.body));
    let shown = (await srv.admin('GET', `/v1/admin/devices/${id}`)).body.device;
    assert.equal(shown.baselineWindowUntil, null, 'the routine renewal closed the window');
    assert.equal(shown.posture, 'ok');
    const renew1 = (await rows(srv, id, 'renew')).at(-1)!;
    assert.deepEqual(renew1.details?.baselineWindowClosed, { approvalId: approval1.details!.approvalId, newBaseline: false });

    // a boot-chain change later (within the configured 24 h) is a mismatch again, not silently accepted
    await extendBootPcrs(tpms[0]!.tcti, 'changed-boot-chain', [4]);
    const r2 = await dev.renew(http);
    assert.equal(r2.status, 403, JSON.stringify(r2.body));
    assert.equal(r2.body.error.code, 'posture_pcr_mismatch');
    assert.deepEqual(r2.body.error.details.pcrs, [4]);
    shown = (await srv.admin('GET', `/v1/admin/devices/${id}`)).body.device;
    assert.equal(shown.status, 'quarantined');

    // approving the change: the next quote becomes the baseline, and that closes the window too
    await srv.admin('POST', `/v1/admin/devices/${id}/approve-baseline`, {});
    const approval2 = (await rows(srv, id, 'device.approve_baseline')).at(-1)!;
    assert.notEqual(approval2.details?.approvalId, approval1.details?.approvalId);
    const r3 = await dev.renew(http);
    assert.equal(r3.status, 200, JSON.stringify(r3.body));
    const renew3 = (await rows(srv, id, 'renew')).at(-1)!;
    assert.deepEqual(renew3.details?.baselineWindowClosed, { approvalId: approval2.details!.approvalId, newBaseline: true });
    shown = (await srv.admin('GET', `/v1/admin/devices/${id}`)).body.device;
    assert.equal(shown.baselineWindowUntil, null);
    assert.equal(shown.baseline['4'], (await dev.tpm.readPcrBank([4])).get(4)!.toString('hex'));

    await extendBootPcrs(tpms[0]!.tcti, 'changed-again', [5]);
    const r4 = await dev.renew(http);
    assert.equal(r4.body.error?.code, 'posture_pcr_mismatch', 'the window did not stay open after the approved renewal');
  },
);

test(
  'anonymous callers learn nothing about a device state: one generic refusal for unknown, revoked, retired and quarantined; the cause is in the audit log and the admin API',
  { timeout: 300_000 },
  async (t) => {
    const { srv, http, tpms, devs } = await setup(t, 3);
    const [q, r, x] = devs as [TestDevice, TestDevice, TestDevice];

    await extendBootPcrs(tpms[0]!.tcti, 'changed-boot-chain', [2]);
    assert.equal((await q.renew(http)).body.error.code, 'posture_pcr_mismatch');
    assert.equal((await srv.admin('POST', `/v1/admin/devices/${r.deviceId}/revoke`, { reason: 'key-compromise' })).status, 200);
    assert.equal((await srv.admin('POST', `/v1/admin/devices/${x.deviceId}/retire`, {})).status, 200);

    const unknownId = 'dev-0123456789abcdef';
    const unknownAk = '000b' + 'ab'.repeat(32);
    const challenges: [string, unknown, string][] = [
      ['quarantined', { deviceId: q.deviceId }, 'device_quarantined'],
      ['revoked', { deviceId: r.deviceId }, 'device_revoked'],
      ['retired', { deviceId: x.deviceId }, 'device_retired'],
      ['unknown', { deviceId: unknownId }, 'device_not_found'],
      ['unknown AK', { akName: unknownAk }, 'device_not_found'],
    ];
    const answers = new Set<string>();
    for (const [name, body, cause] of challenges) {
      const res = await http.post('/v1/renew/challenge', body);
      assert.equal(res.status, 403, `${name}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.code, 'renewal_refused', name);
      answers.add(JSON.stringify(res.body));
      const row = (await srv.server.ctx.store.listAudit({ limit: 100000 })).at(-1)!;
      assert.equal(row.event, 'renew.challenge');
      assert.equal(row.reason, cause, `${name}: the audit row has the cause`);
    }
    assert.equal(answers.size, 1, `one identical body for all: ${[...answers].join(' | ')}`);

    // /v1/renew without the device's AK: the same generic answer (another device's AK signs here)
    const nonce = randomBytes(32).toString('base64');
    for (const target of [q, r, x]) {
      const { request } = await devs.find((d) => d !== target)!.renewRequest({ nonce, deviceId: target.deviceId! });
      const res = await http.post('/v1/renew', request);
      assert.equal(res.status, 403);
      assert.equal(res.body.error.code, 'renewal_refused', `renew of ${target.deviceId} signed by another AK`);
    }
    // signed by the device's own AK, the caller is the device: it learns its state
    assert.equal((await q.renew(http, { nonce })).body.error.code, 'device_quarantined');
    assert.equal((await r.renew(http, { nonce })).body.error.code, 'device_revoked');
    assert.equal((await x.renew(http, { nonce })).body.error.code, 'device_retired');

    // the operator sees why
    const shown = (await srv.admin('GET', `/v1/admin/devices/${q.deviceId}`)).body.device;
    assert.equal(shown.status, 'quarantined');
    assert.match(shown.statusReason, /PCRs 2 differ/);
  },
);
