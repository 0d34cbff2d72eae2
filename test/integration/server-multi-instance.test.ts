/**
 * Two real edgeid-server processes on one PostgreSQL database (scripts/harness/postgres.ts), the
 * second with a copy of the first's CA and admin token, as a deployment of several instances has:
 * - one enrollment token presented to both at the same moment (by two software devices with
 *   their own EKs, or by one EK through both) → exactly one device, the other attempt refused
 *   with a 4xx code, never a 5xx;
 * - a device enrolled through one instance renews through the other; revoked on one, its next
 *   renewal on the other is refused (device_revoked) at once;
 * - the one audit chain verifies from either instance.
 * The service refuses a second attempt at several points (the token's EK binding at start, the
 * superseded session at finish, the token spent at finish), so this proves the outcome end to end;
 * test/unit/server-store-race.test.ts is the one that fails when a single store check is removed.
 *
 * EDGEID_MULTI_ROUNDS sets the token rounds (default 40).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cp } from 'node:fs/promises';
import path from 'node:path';
import { tmpDir } from '../../scripts/harness/fs.js';
import { createToken, startServerProcess, type ServerProcess } from '../../scripts/harness/server.js';
import { createSoftDevice, renew, softClient, type SoftClient } from '../../scripts/harness/softdevice.js';
import { softEk, softEnroll } from '../../scripts/harness/softenroll.js';
import { freshPostgresDatabase, usePostgres } from '../helpers/stores.js';

usePostgres();

const ROUNDS = Number(process.env.EDGEID_MULTI_ROUNDS ?? 40);

async function twoServers(t: import('node:test').TestContext): Promise<[ServerProcess, ServerProcess]> {
  const url = await freshPostgresDatabase();
  const config = {
    store: { url, poolSize: 4 },
    rateLimit: {
      perAddress: { max: 1_000_000, window: 60 },
      enroll: { max: 1_000_000, window: 60 },
      renew: { max: 1_000_000, window: 60 },
      admin: { max: 1_000_000, window: 60 },
    },
    zones: { default: { lifetime: 3600 } },
    // the software EKs of scripts/harness/softenroll.ts have no EK certificate
    ek: { requireEkCertificate: false },
  };
  const a = await startServerProcess({ dataDir: path.join(await tmpDir('edgeid-multi-a-', t), 'data'), config });
  t.after(() => a.close());
  // the second instance: its own data dir with the same CA and bootstrap admin token
  const bDir = path.join(await tmpDir('edgeid-multi-b-', t), 'data');
  await cp(path.join(a.dataDir, 'ca'), path.join(bDir, 'ca'), { recursive: true });
  await cp(path.join(a.dataDir, 'admin-token'), path.join(bDir, 'admin-token'));
  const b = await startServerProcess({ dataDir: bDir, config });
  t.after(() => b.close());
  assert.equal(b.caFingerprint, a.caFingerprint);
  return [a, b];
}

test('two instances on one PostgreSQL database: one token sent to both at once enrolls exactly one device; a revoke on one refuses renewal on the other', async (t) => {
  const [a, b] = await twoServers(t);
  const ca: SoftClient = softClient(a.url, a.caPem);
  const cb: SoftClient = softClient(b.url, b.caPem);
  t.after(() => {
    ca.close();
    cb.close();
  });

  const enrolled = [];
  const losers: Record<string, number> = {};
  for (let i = 0; i < ROUNDS; i++) {
    const { token } = await createToken(i % 2 ? a : b);
    const da = createSoftDevice();
    const db = createSoftDevice();
    // odd rounds: two TPMs with one token; even rounds: one TPM trying through both instances
    const ekA = softEk();
    const ekB = i % 2 ? softEk() : ekA;
    const [ra, rb] = await Promise.all([softEnroll(da, ekA, ca, token), softEnroll(db, ekB, cb, token)]);
    const ok = [ra, rb].filter((r) => r.status === 200);
    assert.equal(
      ok.length,
      1,
      `round ${i}: exactly one enrollment succeeds (${ra.status} ${JSON.stringify(ra.body)} / ${rb.status} ${JSON.stringify(rb.body)})`,
    );
    const lost = ra.status === 200 ? rb : ra;
    assert.ok(lost.status >= 400 && lost.status < 500, `round ${i}: the other is refused with a 4xx, not ${lost.status}`);
    const code = `${lost.step}:${(lost.body as { error: { code: string } }).error.code}`;
    losers[code] = (losers[code] ?? 0) + 1;
    enrolled.push(ra.status === 200 ? da : db);
  }
  t.diagnostic(`refusals of the losing attempt: ${JSON.stringify(losers)}`);
  const devices = await a.admin<{ devices: unknown[] }>('GET', '/v1/admin/devices?limit=1000');
  assert.equal(devices.status, 200);
  assert.equal(devices.body.devices.length, ROUNDS, 'one device per token');

  // enrolled through one instance, it renews through the other, then through the first again
  const dev = enrolled[0]!;
  const r1 = await renew(dev, cb);
  assert.equal(r1.status, 200, JSON.stringify(r1.body));
  const r2 = await renew(dev, ca);
  assert.equal(r2.status, 200, JSON.stringify(r2.body));
  // the nonce it spent on one instance is spent on both
  const replay = await renew(dev, cb, { nonce: r2.nonce });
  assert.equal(replay.status, 409);
  assert.equal(replay.body.error.code, 'nonce_used');

  // revoked on A, refused on B from the revocation's commit on
  const revoked = await a.admin('POST', `/v1/admin/devices/${dev.deviceId}/revoke`, { reason: 'key-compromise' });
  assert.equal(revoked.status, 200, JSON.stringify(revoked.body));
  const refused = await renew(dev, cb);
  // the request is signed by the device's AK, so the answer names the cause
  assert.equal(refused.body.error?.code, 'device_revoked', `renewal after revoke: ${refused.status} ${JSON.stringify(refused.body)}`);
  const view = await b.admin<{ device: { status: string } }>('GET', `/v1/admin/devices/${dev.deviceId}`);
  assert.equal(view.body.device.status, 'revoked');

  // one audit chain, verified from each instance
  for (const s of [a, b]) {
    const v = await s.admin<{ ok: boolean; rows: number }>('GET', '/v1/admin/audit/verify');
    assert.equal(v.status, 200);
    assert.equal(v.body.ok, true, JSON.stringify(v.body));
  }
});
