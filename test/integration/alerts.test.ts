/**
 * Alerts on the in-process server (real SQLite, software TPM devices over the HTTP API, a movable
 * clock): every rule fires — failed renewals of a device and from an address (bad quotes), bad
 * enrollment tokens (unknown ones through the refusal aggregator, used and expired ones), renewal
 * from a new network, quarantine (a PCR change), revocation, stale devices, the issuance rate
 * (audit rows appended with chosen times) and CA expiry — with the thresholds of each zone; ack
 * by role and zone; listing scoped to zones and paged; the edgeid_alerts_open gauge; a signed
 * webhook whose receiver fails twice and sees the retries; RFC 5424 syslog over UDP; a restart
 * that keeps the queue and the rules' cursor (nothing counted twice, rows written while the
 * server was down evaluated once); edgeid-admin alerts list and ack.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import dgram from 'node:dgram';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { loadConfig } from '../../enroll-server/config.js';
import { createServer, type EdgeidServer } from '../../enroll-server/server.js';
import { refusalAggregator } from '../../enroll-server/services/audit.js';
import { SqliteStore } from '../../enroll-server/store/sqlite.js';
import { cleanEnv, runCli } from '../helpers/cli.js';
import {
  challenge,
  createSoftDevice,
  enrollStartBody,
  renew,
  seedSoftDevices,
  type SoftClient,
  type SoftDevice,
} from '../../scripts/harness/softdevice.js';

const big = { max: 1_000_000, window: '1m' };

interface Received {
  at: number;
  delivery: string;
  body: string;
  ok: boolean;
  status: number;
}

/** A webhook receiver on loopback HTTP that checks the signature and the timestamp like a real one would. */
async function receiver(secret: string) {
  const got: Received[] = [];
  const state = { failNext: 2, failAll: false, wake: () => {} };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const ts = String(req.headers['x-edgeid-timestamp'] ?? '');
      const sig = String(req.headers['x-edgeid-signature'] ?? '');
      const want = `sha256=${createHmac('sha256', secret).update(`${ts}.${body}`).digest('hex')}`;
      const signed = sig.length === want.length && timingSafeEqual(Buffer.from(sig), Buffer.from(want));
      // replays: a timestamp more than 5 minutes from the receiver's clock is refused
      const fresh = /^\d+$/.test(ts) && Math.abs(Date.now() / 1000 - Number(ts)) < 300;
      let status = 204;
      if (!signed || !fresh) status = 401;
      else if (state.failAll || state.failNext > 0) {
        state.failNext = Math.max(0, state.failNext - 1);
        status = 500;
      }
      got.push({ at: Date.now(), delivery: String(req.headers['x-edgeid-delivery']), body, ok: signed && fresh, status });
      res.writeHead(status).end();
      state.wake();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const until = async (cond: () => boolean, what: string) => {
    const deadline = Date.now() + 30_000;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`webhook receiver: timed out waiting for ${what}`);
      await new Promise<void>((r) => {
        state.wake = r;
        setTimeout(r, 200).unref();
      });
    }
  };
  return { got, state, until, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, close: () => server.close() };
}

/** A UDP syslog collector. */
async function syslogCollector() {
  const sock = dgram.createSocket('udp4');
  const msgs: string[] = [];
  sock.on('message', (m) => msgs.push(m.toString('utf8')));
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
  return { msgs, port: sock.address().port, close: () => sock.close() };
}

/** The device side over fastify inject, from a chosen source address. */
const client = (srv: () => EdgeidServer, ip: string): SoftClient => ({
  async post(url, body) {
    const r = await srv().app.inject({ method: 'POST', url, remoteAddress: ip, payload: body as object });
    return { status: r.statusCode, body: r.json() };
  },
  close() {},
});

test(
  'alerts: every rule fires, per-zone thresholds, ack by role and zone, gauge, webhook, syslog, restart',
  { timeout: 300_000 },
  async (t) => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-alerts-'));
    t.after(() => rm(dataDir, { recursive: true, force: true }));
    const secretFile = path.join(dataDir, '..', `${path.basename(dataDir)}.hook-secret`);
    const secret = randomBytes(24).toString('base64url');
    await writeFile(secretFile, secret + '\n', { mode: 0o600 });
    t.after(() => rm(secretFile, { force: true }));
    const hook = await receiver(secret);
    t.after(() => hook.close());
    const syslog = await syslogCollector();
    t.after(() => syslog.close());

    const configFile = {
      zones: { a: {}, b: {} },
      rateLimit: { perAddress: big, enroll: big, renew: big, admin: big },
      alerts: {
        defaults: {
          failures: { count: 3, window: '10m' },
          addressFailures: { count: 8, window: '10m' },
          badTokens: { count: 4, window: '10m' },
          issuance: { factor: 3, floor: 20 },
          caExpiryDays: 7400,
        },
        zones: {
          a: { addressFailures: { count: 3, window: '10m' } },
          b: { failures: { count: 6, window: '10m' }, staleAfter: '2h' },
        },
        webhook: { url: hook.url, secretFile, backoff: '0.05', maxBackoff: '0.2', maxAttempts: 50 },
        syslog: { host: '127.0.0.1', port: syslog.port, protocol: 'udp' },
      },
    };
    const [a1, a2, a3, b1, b2] = [0, 1, 2, 3, 4].map(() => createSoftDevice()) as [
      SoftDevice,
      SoftDevice,
      SoftDevice,
      SoftDevice,
      SoftDevice,
    ];
    await seedSoftDevices(dataDir, [a1, a2, a3], { zone: 'a', configFile });
    await seedSoftDevices(dataDir, [b1, b2], { zone: 'b', configFile });

    const clock = { offset: 0 };
    let srv!: EdgeidServer;
    const start = async () => {
      const config = loadConfig({ argv: ['--data', dataDir, '--listen', '127.0.0.1:0'], env: {}, file: configFile });
      srv = await createServer({ config, logger: pino({ level: 'silent' }), housekeeping: false, now: () => Date.now() + clock.offset });
      // listening (HTTPS) for edgeid-admin; the rest of the test uses inject
      await srv.listen();
    };
    await start();
    t.after(() => srv.close());
    const adminToken = (await import('node:fs')).readFileSync(path.join(dataDir, 'admin-token'), 'utf8').trim();
    const api = async (token: string, method: 'GET' | 'POST', url: string, body?: unknown) => {
      const r = await srv.app.inject({
        method,
        url,
        remoteAddress: '127.0.0.1',
        headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { payload: body as object } : {}),
      });
      return { status: r.statusCode, body: r.json() as any };
    };
    const settle = () => srv.ctx.alerts!.settle();
    const alerts = async (q = '') => {
      await settle();
      const r = await api(adminToken, 'GET', `/v1/admin/alerts${q}`);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      return r.body.alerts as any[];
    };
    const find = async (rule: string, pred: (a: any) => boolean = () => true) => (await alerts(`?rule=${rule}`)).filter(pred);
    const user = async (name: string, role: string, zones?: string[]) => {
      const r = await api(adminToken, 'POST', '/v1/admin/users', { name, role, ...(zones ? { zones } : {}) });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      return r.body.token as string;
    };
    const local = client(() => srv, '127.0.0.1');
    /** n renewals with a tampered quote (quote_bad_signature), each after a fresh challenge. */
    const badRenewals = async (dev: SoftDevice, n: number, c = local) => {
      for (let i = 0; i < n; i++) {
        assert.equal((await challenge(dev, c)).status, 200);
        const r = await renew(dev, c, { tamperQuote: true });
        assert.equal(r.status, 400, JSON.stringify(r.body));
        assert.equal(r.body.error.code, 'quote_bad_signature');
      }
    };
    const goodRenewal = async (dev: SoftDevice, c: SoftClient) => {
      assert.equal((await challenge(dev, c)).status, 200);
      const r = await renew(dev, c);
      assert.equal(r.status, 200, JSON.stringify(r.body));
    };

    await t.test('failed renewals: per device (zone a: 3, zone b: 6) and per address (zone a: 3, default 8)', async () => {
      await badRenewals(a1, 2);
      assert.equal((await find('attestation_failures_device')).length, 0, 'two failures are below zone a threshold');
      await badRenewals(a1, 1);
      const [dev] = await find('attestation_failures_device');
      assert.ok(dev, 'the third failure of a1 opens the alert');
      assert.deepEqual([dev.deviceId, dev.zone, dev.count, dev.severity, dev.state], [a1.deviceId, 'a', 3, 'warning', 'open']);
      assert.match(dev.summary, /3 failed renewals or attestations of device dev-[0-9a-f]{16} within 10m \(last: quote_bad_signature\)/);
      const [addr] = await find('attestation_failures_address');
      assert.deepEqual([addr?.zone, addr?.address, addr?.count], ['a', '127.0.0.1', 3], 'zone a: 3 from one address');
      // zone b needs 6 for a device and the default 8 for an address
      await badRenewals(b1, 5);
      assert.equal((await find('attestation_failures_device', (x) => x.deviceId === b1.deviceId)).length, 0, 'zone b: 5 < 6');
      await badRenewals(b1, 1);
      const [devB] = await find('attestation_failures_device', (x) => x.deviceId === b1.deviceId);
      assert.deepEqual([devB?.zone, devB?.count], ['b', 6]);
      assert.equal((await find('attestation_failures_address', (x) => x.zone === 'b')).length, 0, 'zone b: 6 < 8 from the address');
      // while open, each further failure counts into the alert
      await badRenewals(a1, 1);
      const [again] = await find('attestation_failures_device', (x) => x.deviceId === a1.deviceId);
      assert.deepEqual([again.id, again.count], [dev.id, 4]);
    });

    await t.test('enrollment with unknown tokens (aggregated refusals), used and expired tokens', async () => {
      const unknown = client(() => srv, '10.0.0.9');
      for (let i = 0; i < 4; i++) {
        const fake = `${randomBytes(8).toString('hex')}.${randomBytes(32).toString('base64url')}`;
        const r = await unknown.post('/v1/enroll/start', enrollStartBody(a1, fake));
        assert.deepEqual([r.status, r.body.error.code], [401, 'token_invalid']);
      }
      // the refusal aggregator wrote the first row; the other three are counted in memory until the minute ends
      assert.equal((await find('enrollment_bad_tokens')).length, 0, 'one row so far: below 4');
      clock.offset += 61_000;
      await refusalAggregator(srv.ctx)!.flush(false);
      const [bad] = await find('enrollment_bad_tokens');
      assert.deepEqual([bad?.address, bad?.zone, bad?.count], ['10.0.0.9', null, 4], 'the summary row counts as 3');

      // a spent token (a1's) twice and an expired one twice, from another address: zone a
      const other = client(() => srv, '10.0.0.10');
      for (let i = 0; i < 2; i++) {
        const r = await other.post('/v1/enroll/start', enrollStartBody(a1, a1.enrollmentToken!));
        assert.equal(r.body.error.code, 'token_used');
      }
      const made = await api(adminToken, 'POST', '/v1/admin/tokens', { zone: 'a', owner: 'ops', ttlSeconds: 60 });
      assert.equal(made.status, 200, JSON.stringify(made.body));
      clock.offset += 120_000;
      for (let i = 0; i < 2; i++) {
        const r = await other.post('/v1/enroll/start', enrollStartBody(a1, made.body.token));
        assert.equal(r.body.error.code, 'token_expired');
      }
      const [used] = await find('enrollment_bad_tokens', (x) => x.address === '10.0.0.10');
      assert.deepEqual([used?.zone, used?.count], ['a', 4]);
    });

    await t.test('renewal from a network the device never used (IPv4 /24)', async () => {
      await goodRenewal(a2, local);
      assert.equal((await find('renewal_new_network')).length, 0, 'its enrollment network');
      await goodRenewal(
        a2,
        client(() => srv, '10.1.2.3'),
      );
      const [n] = await find('renewal_new_network');
      assert.deepEqual([n?.deviceId, n?.zone, n?.address, n?.count], [a2.deviceId, 'a', '10.1.2.0/24', 1]);
      await goodRenewal(
        a2,
        client(() => srv, '10.1.2.99'),
      );
      await goodRenewal(a2, local);
      assert.equal((await find('renewal_new_network'))[0].count, 1, 'the same /24 and the old network are known');
    });

    await t.test('quarantine and revocation', async () => {
      a2.pcrValues.set(0, randomBytes(32));
      assert.equal((await challenge(a2, local)).status, 200);
      const r = await renew(a2, local);
      assert.equal(r.body.error.code, 'posture_pcr_mismatch');
      const [q] = await find('device_quarantined');
      assert.deepEqual([q?.deviceId, q?.zone, q?.severity], [a2.deviceId, 'a', 'warning']);
      assert.match(q.summary, /quarantined \(posture_pcr_mismatch\)/);
      // a refused renewal of the quarantined device is neither a new quarantine nor a failure of its own
      assert.equal((await challenge(a2, local)).body.error.code, 'renewal_refused');
      assert.equal((await find('device_quarantined'))[0].count, 1);
      assert.equal((await find('attestation_failures_device', (x) => x.deviceId === a2.deviceId)).length, 0);

      const rv = await api(adminToken, 'POST', `/v1/admin/devices/${a3.deviceId}/revoke`, { reason: 'key-compromise' });
      assert.equal(rv.status, 200, JSON.stringify(rv.body));
      const [v] = await find('device_revoked');
      assert.deepEqual([v?.deviceId, v?.zone, v?.severity], [a3.deviceId, 'a', 'critical']);
      assert.match(v.summary, /revoked by user:admin \(reason key-compromise\)/);
    });

    let opA = '';
    await t.test(
      'ack: operator yes, viewer 403 forbidden_role, other zone 403 forbidden_zone; listings scoped by zone and paged',
      async () => {
        const viewer = await user('viewer-all', 'viewer');
        const viewerA = await user('viewer-a', 'viewer', ['a']);
        opA = await user('op-a', 'operator', ['a']);
        const opB = await user('op-b', 'operator', ['b']);
        const [dev] = await find('attestation_failures_device', (x) => x.deviceId === a1.deviceId);
        let r = await api(viewer, 'POST', `/v1/admin/alerts/${dev.id}/ack`, {});
        assert.deepEqual([r.status, r.body.error.code], [403, 'forbidden_role']);
        r = await api(opB, 'POST', `/v1/admin/alerts/${dev.id}/ack`, {});
        assert.deepEqual([r.status, r.body.error.code], [403, 'forbidden_zone']);
        const [bad] = await find('enrollment_bad_tokens', (x) => x.zone === null);
        r = await api(opA, 'POST', `/v1/admin/alerts/${bad.id}/ack`, {});
        assert.deepEqual([r.status, r.body.error.code], [403, 'forbidden_zone'], 'an alert of no zone: only users with every zone');
        r = await api(opA, 'POST', `/v1/admin/alerts/alr-0000000000000000/ack`, {});
        assert.deepEqual([r.status, r.body.error.code], [404, 'alert_not_found']);
        r = await api(opA, 'POST', `/v1/admin/alerts/${dev.id}/ack`, {});
        assert.equal(r.status, 200, JSON.stringify(r.body));
        assert.deepEqual([r.body.state, r.body.acknowledgedBy, r.body.count], ['acknowledged', 'user:op-a', 4]);
        assert.ok(Date.parse(r.body.acknowledgedAt) > 0);
        r = await api(opA, 'POST', `/v1/admin/alerts/${dev.id}/ack`, {});
        assert.deepEqual([r.status, r.body.error.code], [409, 'alert_not_open']);
        const audit = await api(adminToken, 'GET', '/v1/admin/audit?user=op-a');
        const acks = audit.body.rows.filter((x: any) => x.event === 'alert.ack');
        assert.deepEqual(
          acks.map((x: any) => [x.outcome, x.reason, x.deviceId]),
          [
            ['fail', 'forbidden_zone', null],
            ['fail', 'alert_not_found', null],
            ['ok', null, a1.deviceId],
            ['fail', 'alert_not_open', a1.deviceId],
          ],
        );
        assert.equal(acks[2].details.role, 'operator');

        // after the ack: the window (3 in 10 minutes) still holds, so the next failure opens a new alert
        await badRenewals(a1, 1);
        const [next] = await find('attestation_failures_device', (x) => x.deviceId === a1.deviceId && x.state === 'open');
        assert.ok(next && next.id !== dev.id, 'a new alert, not the acknowledged one');
        assert.equal(next.count, 5, 'the failures in the window');
        assert.equal((await api(opA, 'POST', `/v1/admin/alerts/${next.id}/ack`, {})).status, 200);
        // once the window has passed, it takes 3 failures again
        clock.offset += 11 * 60_000;
        await badRenewals(a1, 2);
        assert.equal((await find('attestation_failures_device', (x) => x.deviceId === a1.deviceId && x.state === 'open')).length, 0);
        await badRenewals(a1, 1);
        const open = await find('attestation_failures_device', (x) => x.deviceId === a1.deviceId && x.state === 'open');
        assert.equal(open.length, 1);
        assert.equal(open[0].count, 3);

        // zone-scoped listing: only zone a, nothing without a zone
        const all = await alerts();
        const seenA = (await api(viewerA, 'GET', '/v1/admin/alerts')).body.alerts as any[];
        assert.ok(seenA.length > 0);
        assert.deepEqual(
          seenA.map((x) => x.id),
          all.filter((x) => x.zone === 'a').map((x) => x.id),
        );
        assert.ok(all.some((x) => x.zone === null) && all.some((x) => x.zone === 'b'));
        // filters and pages
        const acked = (await api(viewer, 'GET', '/v1/admin/alerts?state=acknowledged')).body.alerts as any[];
        assert.deepEqual(
          acked.map((x) => x.id),
          [next.id, dev.id],
        );
        const ofA1 = (await api(viewer, 'GET', `/v1/admin/alerts?deviceId=${a1.deviceId}`)).body.alerts as any[];
        assert.deepEqual(new Set(ofA1.map((x) => x.deviceId)), new Set([a1.deviceId]));
        const pages: string[] = [];
        let after = '';
        for (;;) {
          const p = await api(viewer, 'GET', `/v1/admin/alerts?limit=2${after ? `&after=${after}` : ''}`);
          assert.ok(p.body.alerts.length <= 2);
          pages.push(...p.body.alerts.map((x: any) => x.id));
          if (!p.body.next) break;
          after = p.body.next;
        }
        assert.deepEqual(
          pages,
          all.map((x) => x.id),
          'pages of 2 are the whole listing, newest first',
        );
        assert.deepEqual((await api(viewer, 'GET', '/v1/admin/alerts?state=closed')).body.error.code, 'bad_request');
      },
    );

    await t.test('stale devices (zone b after 2h, zone a after the server default 24h) and CA expiry', async () => {
      clock.offset += 3 * 3600_000;
      await srv.ctx.alerts!.checkNow();
      const stale = await find('device_stale');
      assert.deepEqual(new Set(stale.map((x) => x.deviceId)), new Set([b1.deviceId, b2.deviceId]), 'only zone b is stale after 3h');
      assert.ok(stale.every((x) => x.zone === 'b' && x.severity === 'info'));
      const ca = await find('ca_expiry');
      assert.deepEqual(ca.map((x) => x.summary.split(' ')[1]).sort(), ['issuing:intermediate', 'root']);
      assert.ok(ca.every((x) => x.severity === 'critical' && x.zone === null));
      // a second check changes nothing: one alert per stale episode and per certificate
      await srv.ctx.alerts!.checkNow();
      assert.equal((await find('device_stale')).length, 2);
      assert.equal((await find('ca_expiry')).length, 2);
      assert.ok((await find('device_stale')).every((x) => x.count === 1));
      // the failure windows are hours old: longer than any configured window, so dropped from the stored state
      assert.deepEqual(
        Object.keys(await srv.ctx.store.getAlertState()).filter((k) => k.startsWith('w:')),
        [],
      );
    });

    await t.test('issuance far above the trailing hour (audit rows appended with their times)', async () => {
      const now = srv.ctx.now();
      const issued = (time: number) =>
        srv.ctx.store.appendAudit({
          time,
          actor: `device:${b2.deviceId}`,
          event: 'renew',
          deviceId: b2.deviceId,
          ip: '127.0.0.1',
          outcome: 'ok',
        });
      // the normal: 12 in the hour before the last 5 minutes (1 per 5 minutes)
      for (let i = 0; i < 12; i++) await issued(now - 40 * 60_000 + i * 1000);
      for (let i = 0; i < 19; i++) await issued(now - 1000 + i);
      assert.equal((await find('issuance_rate')).length, 0, '19 < the floor of 20');
      await issued(now);
      const [rate] = await find('issuance_rate');
      assert.deepEqual([rate?.count, rate?.zone, rate?.deviceId], [20, null, null]);
      assert.match(rate.summary, /^20 certificates issued in 5 minutes; the trailing hour averaged 1\.0 per 5 minutes$/);
    });

    await t.test('the edgeid_alerts_open gauge', async () => {
      await settle();
      const open = await alerts('?state=open');
      const res = await srv.app.inject({ method: 'GET', url: '/metrics', remoteAddress: '127.0.0.1' });
      assert.equal(res.statusCode, 200);
      const gauge = new Map<string, number>();
      for (const m of res.body.matchAll(/^edgeid_alerts_open\{rule="([a-z_]+)",severity="([a-z]+)"\} (\d+)$/gm))
        gauge.set(`${m[1]}|${m[2]}`, Number(m[3]));
      const want = new Map<string, number>();
      for (const a of open) want.set(`${a.rule}|${a.severity}`, (want.get(`${a.rule}|${a.severity}`) ?? 0) + 1);
      for (const [k, n] of want) assert.equal(gauge.get(k), n, k);
      assert.equal(gauge.get('attestation_failures_device|warning'), 2, 'a1 (the new one) and b1');
      assert.equal(gauge.get('device_revoked|critical'), 1);
      for (const [k, n] of gauge) if (!want.has(k)) assert.equal(n, 0, `${k} has no open alert`);
    });

    await t.test('webhook: signed, failed twice with 500, retried with backoff, then delivered; state visible', async () => {
      const all = await alerts();
      await hook.until(
        () => new Set(hook.got.filter((g) => g.status === 204).map((g) => g.delivery)).size >= all.length,
        'every alert delivered',
      );
      // the receiver has answered; the server records the outcome right after
      await srv.ctx.alerts!.delivery.idle();
      assert.ok(
        hook.got.every((g) => g.ok),
        'every request carried a valid signature and a fresh timestamp',
      );
      // the receiver answered 500 to its first two requests: each of those deliveries was retried, after a backoff, until 204
      const failed = hook.got.filter((g) => g.status === 500);
      assert.equal(failed.length, 2);
      const first = hook.got[0]!;
      for (const f of failed) {
        const tries = hook.got.filter((g) => g.delivery === f.delivery);
        assert.equal(tries.at(-1)!.status, 204, 'retried until delivered');
        assert.ok(
          tries.every((g) => g.body === tries[0]!.body),
          'every retry sends the same bytes',
        );
        for (let i = 1; i < tries.length; i++) assert.ok(tries[i]!.at - tries[i - 1]!.at >= 20, 'a backoff between attempts');
      }
      const body = JSON.parse(first.body);
      assert.equal(body.type, 'alert.opened');
      assert.deepEqual(Object.keys(body.alert).sort(), Object.keys(all[0]).sort());
      const ds = await api(adminToken, 'GET', '/v1/admin/alerts/deliveries');
      assert.equal(ds.status, 200, JSON.stringify(ds.body));
      for (const d of ds.body.deliveries) {
        assert.equal(
          d.attempts,
          hook.got.filter((g) => g.delivery === d.id).length,
          `attempts as the receiver counted them: ${JSON.stringify(d)} ${JSON.stringify(hook.got.map((g) => [g.delivery, g.status]))}`,
        );
        assert.deepEqual([d.state, d.lastStatus, d.lastError, d.nextAttemptAt], ['delivered', 204, null, null]);
      }
      assert.equal(ds.body.deliveries.find((x: any) => x.id === first.delivery).alertId, body.alert.id);
      assert.ok(ds.body.deliveries.some((x: any) => x.attempts === 3) || failed[0]!.delivery !== failed[1]!.delivery);
      assert.ok(ds.body.deliveries.every((x: any) => x.state === 'delivered'));
      assert.equal(ds.body.deliveries.length, all.length, 'one delivery per alert opened');
      assert.equal((await api(opA, 'GET', '/v1/admin/alerts/deliveries')).body.error.code, 'forbidden_role');
      // a forged signature is what the receiver refuses (its check is real)
      const forged = await fetch(hook.url, {
        method: 'POST',
        headers: { 'x-edgeid-timestamp': String(Math.floor(Date.now() / 1000)), 'x-edgeid-signature': `sha256=${'0'.repeat(64)}` },
        body: first.body,
      });
      assert.equal(forged.status, 401);
    });

    await t.test('syslog: one RFC 5424 message per alert over UDP', async () => {
      const all = await alerts();
      const deadline = Date.now() + 10_000;
      while (syslog.msgs.length < all.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.equal(syslog.msgs.length, all.length);
      // RFC 5424 §6: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP STRUCTURED-DATA SP MSG
      const re =
        /^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) ([!-~]{1,255}) ([!-~]{1,48}) ([!-~]{1,128}) ([!-~]{1,32}) (\[edgeid@32473(?: [a-z]+="(?:[^"\\\]]|\\["\\\]])*")+\]) (.*)$/;
      const parsed = syslog.msgs.map((m) => {
        const x = re.exec(m);
        assert.ok(x, `not RFC 5424: ${m}`);
        const sd = Object.fromEntries([...x[7]!.matchAll(/ ([a-z]+)="((?:[^"\\\]]|\\.)*)"/g)].map((p) => [p[1], p[2]]));
        return { pri: Number(x[1]), app: x[4], msgid: x[6], sd, msg: x[8] };
      });
      const dev = all.find((a) => a.rule === 'device_revoked')!;
      const p = parsed.find((x) => x.sd.alert === dev.id)!;
      assert.equal(p.pri, 16 * 8 + 2, 'local0.crit');
      assert.deepEqual(
        [p.app, p.msgid, p.sd.rule, p.sd.severity, p.sd.device, p.sd.zone],
        ['edgeid', 'alert', 'device_revoked', 'critical', a3.deviceId, 'a'],
      );
      assert.equal(p.msg, dev.summary);
      const bad = all.find((a) => a.rule === 'enrollment_bad_tokens' && a.zone === null)!;
      assert.deepEqual(
        [parsed.find((x) => x.sd.alert === bad.id)!.pri, parsed.find((x) => x.sd.alert === bad.id)!.sd.device],
        [16 * 8 + 4, '-'],
      );
    });

    await t.test('restart: the cursor and the webhook queue survive; rows written while down are evaluated once', async () => {
      const before = await alerts();
      // the receiver fails everything: a new alert's delivery stays pending over the restart
      hook.state.failAll = true;
      const sent = hook.got.length;
      const rv = await api(adminToken, 'POST', `/v1/admin/devices/${a1.deviceId}/retire`, {});
      assert.equal(rv.status, 200);
      await api(adminToken, 'POST', `/v1/admin/devices/${b1.deviceId}/revoke`, { reason: 'superseded' });
      const [newOne] = await find('device_revoked', (x) => x.deviceId === b1.deviceId);
      assert.ok(newOne);
      await hook.until(() => hook.got.length > sent, 'a failed attempt');
      await srv.close();
      // while the server is down another instance (here: the store itself) writes two failures of b2
      const store = new SqliteStore(path.join(dataDir, 'edgeid.db'));
      for (let i = 0; i < 2; i++)
        await store.appendAudit({
          time: Date.now() + clock.offset,
          actor: `device:${b2.deviceId}`,
          event: 'renew',
          deviceId: b2.deviceId,
          ip: '127.0.0.1',
          outcome: 'fail',
          reason: 'quote_bad_signature',
        });
      const pending = (await store.listAlertDeliveries({ limit: 1000 })).filter((d) => d.state === 'pending');
      assert.deepEqual(
        pending.map((d) => d.alertId),
        [newOne.id],
        'the undelivered alert is queued in the database',
      );
      await store.close();
      hook.state.failAll = false;
      await start();
      await settle();
      const after = await alerts();
      // nothing evaluated twice: every alert from before is unchanged (counts too), plus the new revocation
      const byId = new Map(after.map((a) => [a.id, a]));
      for (const a of before) assert.deepEqual(byId.get(a.id), a, `alert ${a.rule} unchanged after the restart`);
      assert.equal(after.length, before.length + 1);
      // the rows written while down were evaluated (zone b needs 6: none yet), and once
      const cursor = srv.ctx.alerts!.position;
      await badRenewals(b2, 3);
      const [b2f] = await find('attestation_failures_device', (x) => x.deviceId === b2.deviceId);
      assert.equal(b2f, undefined, '2 (while down) + 3 = 5 < 6');
      await badRenewals(b2, 1);
      const [b2g] = await find('attestation_failures_device', (x) => x.deviceId === b2.deviceId);
      assert.equal(b2g?.count, 6, '2 rows from while the server was down + 4');
      assert.ok(srv.ctx.alerts!.position > cursor);
      await hook.until(
        () => hook.got.some((g) => g.status === 204 && JSON.parse(g.body).alert.id === newOne.id),
        'the queued delivery after the restart',
      );
      await srv.ctx.alerts!.delivery.idle();
      const ds = (await api(adminToken, 'GET', `/v1/admin/alerts/deliveries?alertId=${newOne.id}`)).body.deliveries;
      assert.equal(ds.length, 1);
      assert.equal(ds[0].state, 'delivered');
      assert.ok(ds[0].attempts >= 2);
    });

    await t.test('edgeid-admin alerts list / ack; stored text is escaped on the terminal', async () => {
      const home = await mkdtemp(path.join(os.tmpdir(), 'edgeid-alerts-home-'));
      t.after(() => rm(home, { recursive: true, force: true }));
      const admin = async (args: string[]) => {
        const r = await runCli('edgeid-admin', [...args, '--data', dataDir], { env: cleanEnv({ XDG_CONFIG_HOME: home }) });
        return { ...r, out: r.stdout.toString('utf8') };
      };
      const listed = await admin(['alerts', 'list', '--state', 'open', '--json']);
      assert.equal(listed.code, 0, listed.stderr);
      assert.deepEqual(JSON.parse(listed.out), await alerts('?state=open'));
      // a row holding a terminal escape (written to the store directly: the rules never build one)
      await srv.ctx.store.commitAlerts({
        occurrences: [
          {
            id: 'alr-00000000000000aa',
            rule: 'device_stale',
            key: 'hostile',
            severity: 'info',
            deviceId: null,
            zone: 'a',
            address: null,
            summary: 'evil \x1b[2J summary',
            at: Date.now(),
            fire: true,
            openCount: 1,
            bumpBy: 1,
          },
        ],
        state: {},
      });
      const text = await admin(['alerts', 'list']);
      assert.equal(text.code, 0, text.stderr);
      assert.ok(!text.out.includes('\x1b'), 'no raw escape reaches the terminal');
      assert.match(text.out, /evil \\x1b\[2J summary/);
      assert.match(text.out, /^ID +SEVERITY +RULE +STATE/);
      const ack = await runCli('edgeid-admin', ['alerts', 'ack', 'alr-00000000000000aa', '--data', dataDir, '--token', opA], {
        env: cleanEnv({ XDG_CONFIG_HOME: home }),
      });
      assert.equal(ack.code, 0, ack.stderr);
      assert.match(ack.stdout.toString('utf8'), /^alert alr-00000000000000aa \(device_stale\) acknowledged by user:op-a at \d{4}-/);
      const usage = await admin(['alerts', 'list', '--state', 'closed']);
      assert.equal(usage.code, 2);
      assert.match(usage.stderr, /--state must be one of open, acknowledged/);
    });
  },
);
