/**
 * Renewal races across three real edgeid-server processes on one PostgreSQL database: every round
 * one device presents the same renewal nonce to two instances at the same moment (the pair
 * rotates over the three, and several devices race at once, so the load is spread over all
 * three). Every round exactly one renewal succeeds and the other is refused with a 4xx and its
 * code, never a 5xx; afterwards the device renews on with the winner's nonce. Then a device
 * revoked on one instance is refused renewal on the other two at once (device_revoked) and is in
 * the CRL each of them serves within PEER_CHECK_MS (services/crl.ts), and
 * `edgeid-admin audit verify` accepts the one audit chain on every instance, whose renew rows
 * are exactly the successful renewals.
 *
 * EDGEID_RACE_ROUNDS sets the rounds (default 200); EDGEID_RACE_DEVICES the devices racing at
 * once (default 5). The enrollment-token race is in server-multi-instance.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { PEER_CHECK_MS } from '../../enroll-server/services/crl.js';
import { createToken, type ServerProcess } from '../../scripts/harness/server.js';
import { certificateSerial, createSoftDevice, renew, softClient, type SoftDevice } from '../../scripts/harness/softdevice.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { softEk, softEnroll } from '../../scripts/harness/softenroll.js';
import { runCli } from '../helpers/cli.js';
import { serversOnOneDatabase } from '../helpers/multi.js';
import { usePostgres } from '../helpers/stores.js';

usePostgres();

/** The serials GET /v1/crl of one instance lists (lower-case hex). */
function crlSerials(s: ServerProcess): Promise<string[]> {
  return new Promise((resolve, reject) => {
    https
      .get(new URL('/v1/crl?format=pem', s.url), { ca: s.caPem }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          if (res.statusCode !== 200) return reject(new Error(`GET /v1/crl: ${res.statusCode} ${text}`));
          resolve(new x509.X509Crl(text).entries.map((e) => e.serialNumber.toLowerCase().replace(/^(00)+(?=[0-9a-f]{32}$)/, '')));
        });
      })
      .on('error', reject);
  });
}

const ROUNDS = Number(process.env.EDGEID_RACE_ROUNDS ?? 200);
const PARALLEL = Number(process.env.EDGEID_RACE_DEVICES ?? 5);

test(`three instances: the same renewal nonce sent to two of them at once renews exactly once (${ROUNDS} rounds); a revoke on one is refused on all; one audit chain`, async (t) => {
  const servers = await serversOnOneDatabase(t, 3);
  const clients = servers.map((s) => softClient(s.url, s.caPem));
  t.after(() => clients.forEach((c) => c.close()));

  const devices: SoftDevice[] = [];
  for (let i = 0; i < PARALLEL + 1; i++) {
    const { token } = await createToken(servers[i % 3]!);
    const dev = createSoftDevice();
    const r = await softEnroll(dev, softEk(), clients[i % 3]!, token);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    devices.push(dev);
  }
  const racers = devices.slice(0, PARALLEL);

  const refusals: Record<string, number> = {};
  const wins = [0, 0, 0];
  let renewed = 0;
  for (let round = 0; round < ROUNDS; round += PARALLEL) {
    await Promise.all(
      racers.slice(0, Math.min(PARALLEL, ROUNDS - round)).map(async (dev, k) => {
        const n = round + k;
        const a = n % 3;
        const b = (n + 1) % 3;
        const nonce = dev.nonce!;
        const [ra, rb] = await Promise.all([renew(dev, clients[a]!, { nonce }), renew(dev, clients[b]!, { nonce })]);
        const ok = [ra, rb].filter((r) => r.status === 200);
        assert.equal(
          ok.length,
          1,
          `round ${n}: exactly one renewal (${ra.status} ${JSON.stringify(ra.body)} / ${rb.status} ${JSON.stringify(rb.body)})`,
        );
        const lost = ra.status === 200 ? rb : ra;
        assert.ok(lost.status >= 400 && lost.status < 500, `round ${n}: the other is refused with a 4xx, not ${lost.status}`);
        const code = (lost.body as { error?: { code?: string } }).error?.code;
        assert.ok(code, `round ${n}: the refusal has a code`);
        refusals[code] = (refusals[code] ?? 0) + 1;
        wins[ra.status === 200 ? a : b]!++;
        renewed++;
      }),
    );
  }
  t.diagnostic(`refusals of the losing renewal: ${JSON.stringify(refusals)}; wins per instance: ${wins.join('/')}`);
  assert.equal(renewed, ROUNDS);
  // the nonce a race spent is spent on every instance; the winner's new nonce works anywhere
  for (const [i, dev] of racers.entries()) {
    const r = await renew(dev, clients[i % 3]!);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    renewed++;
  }

  // revoked on one instance, refused on the other two at once
  const victim = devices[PARALLEL]!;
  const revoked = await servers[0]!.admin('POST', `/v1/admin/devices/${victim.deviceId}/revoke`, { reason: 'key-compromise' });
  assert.equal(revoked.status, 200, JSON.stringify(revoked.body));
  const after = await Promise.all([renew(victim, clients[1]!), renew(victim, clients[2]!)]);
  for (const r of after) assert.deepEqual([r.status, r.body.error?.code], [403, 'device_revoked'], JSON.stringify(r.body));
  // and its certificate is in the CRL every instance serves, within PEER_CHECK_MS of the revoke
  const serial = certificateSerial(victim.certificate!);
  for (const s of servers) {
    const t0 = Date.now();
    await waitFor(`the revoked serial in the CRL of ${s.url}`, async () => (await crlSerials(s)).includes(serial), 10_000);
    const took = Date.now() - t0;
    assert.ok(took <= PEER_CHECK_MS + 1000, `${s.url} served the CRL with the revocation after ${took} ms`);
  }

  // one chain, verified from every instance by edgeid-admin
  for (const s of servers) {
    const v = await runCli('edgeid-admin', ['audit', 'verify', '--data', s.dataDir, '--json']);
    assert.equal(v.code, 0, v.stderr);
    assert.equal(JSON.parse(v.stdout.toString()).ok, true, v.stdout.toString());
  }
  // exactly one ok renew row per successful renewal (a lost race wrote none)
  let okRows = 0;
  for (const dev of racers) {
    const r = await servers[2]!.admin<{ rows: { event: string; outcome: string }[] }>(
      'GET',
      `/v1/admin/audit?deviceId=${dev.deviceId}&limit=10000`,
    );
    assert.equal(r.status, 200, JSON.stringify(r.body));
    okRows += r.body.rows.filter((x) => x.event === 'renew' && x.outcome === 'ok').length;
  }
  assert.equal(okRows, renewed);
});
