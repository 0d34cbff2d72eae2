/**
 * The last quote the server verified for a device is kept with its PCR values and time, accepted
 * or refused: enrollment and every renewal store the quoted values, a posture quarantine stores
 * the differing ones, and `GET /v1/admin/devices/:id` returns them as lastQuote (the console
 * compares them with the baseline PCR by PCR). Real swtpm TPM, the server in-process, real SQLite.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSwtpm, extendBootPcrs } from '../../scripts/harness/swtpm.js';
import { TestDevice, injectTransport } from '../helpers/device.js';
import { startInProcessServer } from '../helpers/server.js';

test(
  'enrollment, renewal and a posture quarantine store the quote PCRs and time; device show returns them',
  { timeout: 300_000 },
  async (t) => {
    const tpm = await startSwtpm();
    t.after(() => tpm.stop());
    await extendBootPcrs(tpm.tcti);
    const srv = await startInProcessServer({});
    t.after(() => srv.close());
    const http = injectTransport(srv.server.app);
    const dev = await TestDevice.create(tpm.tcti);
    t.after(() => dev.close());
    await dev.enroll(http, await srv.token());
    const id = dev.deviceId!;
    const show = async () => (await srv.admin('GET', `/v1/admin/devices/${id}`)).body.device;
    const lastRow = async (event: string) =>
      (await srv.server.ctx.store.listAudit({ deviceId: id, limit: 100000 })).filter((r) => r.event === event).at(-1)!;
    const tpmValues = async (pcrs: string[]) => {
      const bank = await dev.tpm.readPcrBank(pcrs.map(Number));
      return Object.fromEntries(pcrs.map((p) => [p, bank.get(Number(p))!.toString('hex')]));
    };

    // enrollment: the quote that became the baseline (baseline mode), at the enrollment's time
    let d = await show();
    assert.ok(d.lastQuote, 'lastQuote after enrollment');
    assert.deepEqual(d.lastQuote.pcrs, d.baseline);
    assert.equal(d.lastQuote.at, d.enrolledAt);
    assert.equal(d.lastQuote.golden, null);
    const pcrs = Object.keys(d.baseline);
    assert.ok(pcrs.length > 0);

    // a renewal: the renewal's quote and time (its audit row's)
    assert.equal((await dev.renew(http)).status, 200);
    d = await show();
    assert.equal(d.lastQuote.at, new Date((await lastRow('renew')).time).toISOString());
    assert.deepEqual(d.lastQuote.pcrs, await tpmValues(pcrs));
    const renewedAt = d.lastQuote.at;

    // a boot-chain change: refused and quarantined; the refused quote's values are stored, PCR 4 differs
    await extendBootPcrs(tpm.tcti, 'changed-boot-chain', [4]);
    const r = await dev.renew(http);
    assert.equal(r.body.error?.code, 'posture_pcr_mismatch');
    d = await show();
    assert.equal(d.status, 'quarantined');
    assert.ok(Date.parse(d.lastQuote.at) >= Date.parse(renewedAt));
    assert.equal(d.lastQuote.at, new Date((await lastRow('renew')).time).toISOString());
    const now = await tpmValues(pcrs);
    assert.deepEqual(d.lastQuote.pcrs, now);
    assert.deepEqual(
      pcrs.filter((p) => d.lastQuote.pcrs[p] !== d.baseline[p]),
      ['4'],
    );

    // the listing carries no lastQuote (device show only)
    const list = (await srv.admin('GET', '/v1/admin/devices')).body.devices as { id: string; lastQuote?: unknown }[];
    assert.equal(list.find((x) => x.id === id)!.lastQuote, undefined);
  },
);
