/**
 * The broker's CRL reload schedule (enroll-server/broker/crl-schedule.ts) on its own: when a new
 * CRL is written, when the broker is made to load it, and that the loaded copy is always reloaded
 * before its nextUpdate. The reload here is a recorded function; the real broker (SIGHUP and
 * restart) is in test/integration/revocation-no-drop.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CrlPublisher } from '../../enroll-server/broker/crl-publisher.js';
import { CrlReloadSchedule, type CrlReloadPolicy } from '../../enroll-server/broker/crl-schedule.js';
import { CertificateAuthority } from '../../enroll-server/ca/ca.js';
import type { CrlChange } from '../../enroll-server/hooks.js';
import { loadConfig } from '../../enroll-server/config.js';
import { waitFor } from '../../scripts/harness/wait.js';

const H = 3600_000;

function crl(number: number, serials: string[], nextUpdate: number): CrlChange {
  const data = {
    der: Buffer.alloc(0),
    pem: `CRL ${number}\n`,
    number: BigInt(number),
    thisUpdate: new Date(0),
    nextUpdate: new Date(nextUpdate),
  };
  return { ...data, longLived: { ...data, number: BigInt(number + 1), pem: `LONG CRL ${number + 1}\n` }, serials };
}

function harness(t: import('node:test').TestContext, policy: CrlReloadPolicy, o: { now?: () => number; failFirst?: number } = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'edgeid-crl-sched-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const calls = { written: [] as string[], published: [] as string[], reloads: [] as { why: string; error: string | null }[] };
  let fail = o.failFirst ?? 0;
  const make = () =>
    new CrlReloadSchedule({
      crlFile: path.join(dir, 'crl.pem'),
      stateFile: path.join(dir, 'crl-state.json'),
      policy,
      write: (pem) => calls.written.push(pem),
      publish: async (pem) => {
        calls.published.push(pem);
        const now = new Date(o.now?.() ?? Date.now());
        if (fail > 0) {
          fail--;
          return { writtenAt: now, reloadedAt: null, reloadError: 'reload command failed: exit 1' };
        }
        return { writtenAt: now, reloadedAt: now, reloadError: null };
      },
      onReload: async (r) => {
        calls.reloads.push({ why: r.why, error: r.reloadError });
      },
      ...(o.now ? { now: o.now } : {}),
    });
  return { dir, calls, make };
}

test('revocations are written at once and loaded in one batch no sooner than `every` after the last reload', async (t) => {
  let now = Date.parse('2026-01-01T00:00:00Z');
  const h = harness(t, { everyMs: 24 * H, refreshBeforeMs: 7 * 24 * H }, { now: () => now });
  const s = h.make();
  t.after(() => s.close());
  // nothing known about the broker yet: the first CRL is loaded at once
  await s.changed(crl(1, [], now + 30 * 24 * H));
  assert.deepEqual(h.calls.published, ['LONG CRL 2\n']);
  assert.equal(s.status().pending, 0);

  now += H;
  await s.changed(crl(3, ['aa'], now + 30 * 24 * H));
  now += H;
  await s.changed(crl(5, ['aa', 'bb'], now + 30 * 24 * H));
  // both written for any broker start to pick up, neither loaded by a reload
  assert.deepEqual(h.calls.written.slice(-2), ['LONG CRL 4\n', 'LONG CRL 6\n']);
  assert.equal(h.calls.published.length, 1);
  const st = s.status();
  assert.equal(st.pending, 2);
  assert.equal(st.nextReloadAt, '2026-01-02T00:00:00.000Z', 'the batch is due 24 h after the last reload');
  assert.equal(st.loaded?.revoked, 0);

  // the same serials again (a routine regeneration) do not rewrite the file
  const writes = h.calls.written.length;
  await s.changed(crl(7, ['aa', 'bb'], now + 30 * 24 * H));
  assert.equal(h.calls.written.length, writes);

  // a day after the last reload the next CRL event (or the timer) loads the batch
  now = Date.parse('2026-01-02T00:00:01Z');
  await s.changed(crl(9, ['aa', 'bb'], now + 30 * 24 * H));
  assert.deepEqual(h.calls.published.slice(-1), ['LONG CRL 10\n']);
  assert.equal(s.status().pending, 0);
  assert.equal(s.status().loaded?.revoked, 2);

  // what the broker loaded survives a server restart: no reload for nothing, the pending one remembered
  now += H;
  await s.changed(crl(11, ['aa', 'bb', 'cc'], now + 30 * 24 * H));
  s.close();
  const again = h.make();
  t.after(() => again.close());
  assert.equal(again.status().loaded?.revoked, 2);
  await again.changed(crl(13, ['aa', 'bb', 'cc'], now + 30 * 24 * H));
  assert.equal(h.calls.published.length, 2, 'no reload before the day is over');
  assert.equal(again.status().pending, 1);
  assert.equal(again.status().nextReloadAt, '2026-01-03T00:00:01.000Z');
});

test('the timer loads a pending batch when it is due, without any further CRL event', async (t) => {
  const h = harness(t, { everyMs: 300, refreshBeforeMs: 7 * 24 * H });
  const s = h.make();
  t.after(() => s.close());
  await s.changed(crl(1, [], Date.now() + 30 * 24 * H));
  await s.changed(crl(3, ['aa'], Date.now() + 30 * 24 * H));
  assert.equal(h.calls.published.length, 1);
  await waitFor('the reload', () => h.calls.published.length === 2, { timeoutMs: 5000, intervalMs: 10 });
  assert.equal(h.calls.published[1], 'LONG CRL 4\n');
  assert.equal(s.status().pending, 0);
});

test("with no revocation at all, the broker's copy is reloaded refreshBefore ahead of its nextUpdate (an expired CRL would refuse every client)", async (t) => {
  const h = harness(t, { everyMs: 24 * H, refreshBeforeMs: 24 * H, retryMs: 50 });
  const s = h.make();
  t.after(() => s.close());
  // loaded now, expiring in a day and 400 ms: due in 400 ms
  await s.changed(crl(1, ['aa'], Date.now() + 24 * H + 400));
  assert.equal(h.calls.published.length, 1);
  const due = Date.parse(s.status().nextReloadAt!);
  assert.ok(due - Date.now() <= 400 && due - Date.now() > 0, `due in ${due - Date.now()} ms`);
  // the newer CRL the server generated meanwhile is what gets loaded
  await s.changed(crl(3, ['aa'], Date.now() + 30 * 24 * H));
  await waitFor('the reload', () => h.calls.published.length === 2, { timeoutMs: 5000, intervalMs: 10 });
  assert.equal(h.calls.published[1], 'LONG CRL 4\n');
  assert.ok(Date.parse(s.status().loaded!.nextUpdate) > Date.now() + 29 * 24 * H);
  assert.ok(Date.parse(s.status().nextReloadAt!) > Date.now() + 28 * 24 * H);
});

test('a failed reload is reported, retried after retryMs, and the broker is not assumed to have it', async (t) => {
  const h = harness(t, { everyMs: 0, refreshBeforeMs: 7 * 24 * H, retryMs: 200 }, { failFirst: 1 });
  const s = h.make();
  t.after(() => s.close());
  await s.changed(crl(1, ['aa'], Date.now() + 30 * 24 * H));
  assert.deepEqual(h.calls.reloads, [{ why: 'schedule', error: 'reload command failed: exit 1' }]);
  assert.equal(s.status().loaded, null);
  assert.equal(s.status().lastError, 'reload command failed: exit 1');
  assert.ok(!existsSync(path.join(h.dir, 'crl-state.json')), 'nothing recorded as loaded');
  await waitFor('the reload', () => h.calls.reloads.length === 2, { timeoutMs: 5000, intervalMs: 10 });
  assert.deepEqual(h.calls.reloads[1], { why: 'schedule', error: null });
  assert.equal(s.status().lastError, null);
  assert.equal(
    (JSON.parse(readFileSync(path.join(h.dir, 'crl-state.json'), 'utf8')) as { loaded: { serials: string[] } }).loaded.serials[0],
    'aa',
  );
});

test('every: 0 loads each new CRL at once; an operator may force a reload at any time', async (t) => {
  const h = harness(t, { everyMs: 0, refreshBeforeMs: 7 * 24 * H });
  const s = h.make();
  t.after(() => s.close());
  await s.changed(crl(1, [], Date.now() + 30 * 24 * H));
  await s.changed(crl(3, ['aa'], Date.now() + 30 * 24 * H));
  assert.equal(h.calls.published.length, 2);
  const r = await s.reload('admin');
  assert.equal(r.reloadError, null);
  assert.deepEqual(
    h.calls.reloads.map((x) => x.why),
    ['schedule', 'schedule', 'admin'],
  );
});

test('config: broker.crlReload defaults to a day / a week; refreshBefore below a day or an unknown key is refused', () => {
  const base = { broker: { url: 'mqtts://127.0.0.1:8883', crlFile: '/tmp/crl.pem' } };
  const load = (file: Record<string, unknown>) =>
    loadConfig({ argv: ['--data', '/tmp/edgeid-x', '--listen', '127.0.0.1:0'], env: {}, file });
  assert.deepEqual(load(base).broker?.crlReload, { every: 86400, refreshBefore: 7 * 86400 });
  assert.deepEqual(load({ broker: { ...base.broker, crlReload: { every: 0, refreshBefore: '2d' } } }).broker?.crlReload, {
    every: 0,
    refreshBefore: 2 * 86400,
  });
  assert.throws(
    () => load({ broker: { ...base.broker, crlReload: { refreshBefore: '12h' } } }),
    (e: Error & { code?: string }) => e.code === 'config_invalid' && /broker\.crlReload\.refreshBefore/.test(e.message),
  );
  assert.throws(
    () => load({ broker: { ...base.broker, crlReload: { often: 1 } } }),
    (e: Error & { code?: string }) => e.code === 'config_invalid' && /broker\.crlReload\.often/.test(e.message),
  );
});

test('the reload command never runs on a crlfile that is not a CRL (Mosquitto would stop checking revocation)', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'edgeid-crl-pub-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const marker = path.join(dir, 'reloaded');
  const pub = new CrlPublisher({ crlFile: path.join(dir, 'crl.pem'), reloadCommand: ['sh', '-c', `echo x >> '${marker}'`] });
  const bad = await pub.publish('not a CRL\n');
  assert.match(bad.reloadError ?? '', /^not reloading: .* is not a readable CRL/);
  assert.equal(bad.reloadedAt, null);
  assert.ok(!existsSync(marker), 'the reload command did not run');

  const ca = await CertificateAuthority.open({ dir: path.join(dir, 'ca'), hostnames: ['localhost'] });
  const real = await ca.createCrl({ number: 1n, validitySeconds: 3600, entries: [] });
  const ok = await pub.publish(real.pem);
  assert.equal(ok.reloadError, null);
  assert.ok(ok.reloadedAt);
  assert.equal(readFileSync(marker, 'utf8'), 'x\n');
});
