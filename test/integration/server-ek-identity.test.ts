/**
 * An EK has one identity whatever its encoding, one live device at a time, and its certificate is
 * checked by default; supplier manifests enroll listed TPMs without a token. Real swtpm TPMs
 * through agent/tpm, the server in-process (fastify inject) on a real SQLite data dir.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import type { EnrollStartRequest, EnrollStartResponse } from '../../protocol/api.js';
import { TPMA_OBJECT } from '../../protocol/tpm/constants.js';
import { marshalPublic, parsePublic } from '../../protocol/tpm/public.js';
import type { SqliteStore } from '../../enroll-server/store/sqlite.js';
import { startSwtpm, extendBootPcrs, type Swtpm } from '../../scripts/harness/swtpm.js';
import { TestDevice, injectTransport, b64, type Transport, type HttpResult } from '../helpers/device.js';
import { startInProcessServer, type TestServer } from '../helpers/server.js';

async function tpms(t: import('node:test').TestContext, n: number): Promise<Swtpm[]> {
  const list = await Promise.all(Array.from({ length: n }, () => startSwtpm()));
  t.after(async () => {
    for (const s of list) await s.stop();
  });
  for (const s of list) await extendBootPcrs(s.tcti);
  return list;
}

async function device(t: import('node:test').TestContext, tpm: Swtpm, ekKind: 'rsa' | 'ecc' = 'rsa'): Promise<TestDevice> {
  const d = await TestDevice.create(tpm.tcti, { ekKind });
  t.after(() => d.close());
  return d;
}

/** enroll/start with this request, then ActivateCredential and enroll/finish when it succeeded. */
async function enrollWith(
  http: Transport,
  dev: TestDevice,
  req: Partial<EnrollStartRequest>,
): Promise<{ start: HttpResult; finish?: HttpResult }> {
  const start = await http.post('/v1/enroll/start', req);
  if (start.status !== 200) return { start };
  return { start, finish: await finishWith(http, dev, start.body) };
}

async function finishWith(http: Transport, dev: TestDevice, start: EnrollStartResponse): Promise<HttpResult> {
  dev.pcrs = start.pcrs;
  const secret = await dev.activate(start);
  const { evidence } = await dev.evidence(start.nonce);
  return http.post('/v1/enroll/finish', { session: start.session, secret: b64(secret), ...evidence });
}

function withoutToken(dev: TestDevice, extra: Partial<EnrollStartRequest> = {}): Partial<EnrollStartRequest> {
  const { token: _t, ...rest } = dev.startRequest('unused', extra);
  return rest;
}

/** The same EK public area with the RSA exponent written as 65537 instead of 0 (the same key). */
function exponent65537(dev: TestDevice): string {
  const p = parsePublic(dev.ek.public);
  assert.equal(p.rsa!.exponent, 0, 'swtpm reports the TCG template exponent 0');
  return b64(marshalPublic({ ...p, rsa: { ...p.rsa!, exponent: 65537 } }));
}

function lastAudit(srv: TestServer, event: string): { outcome: string; reason: string | null; details: Record<string, unknown> | null } {
  const db = (srv.server.ctx.store as SqliteStore).db;
  const r = db.prepare('SELECT outcome, reason, details FROM audit WHERE event = ? ORDER BY seq DESC LIMIT 1').get(event) as {
    outcome: string;
    reason: string | null;
    details: string | null;
  };
  return { ...r, details: r.details ? JSON.parse(r.details) : null };
}

test(
  'a re-encoded EK is the same TPM: refused while its device lives (named in the audit only), never clearing a quarantine; allowed after revoke',
  { timeout: 300_000 },
  async (t) => {
    const [tpm] = await tpms(t, 1);
    const srv = await startInProcessServer({ rateLimit: { enroll: { max: 100000 } } });
    t.after(() => srv.close());
    const http = injectTransport(srv.server.app);
    const dev = await device(t, tpm!);
    const first = await dev.enroll(http, await srv.token());

    // exponent 0 → 65537: the same key, so the same identity
    const again = await enrollWith(http, dev, dev.startRequest(await srv.token(), { ekPub: exponent65537(dev) }));
    assert.equal(again.start.status, 409);
    assert.equal(again.start.body.error.code, 'ek_already_enrolled');
    assert.doesNotMatch(JSON.stringify(again.start.body), new RegExp(first.deviceId), 'the caller does not learn the existing device id');
    const row = lastAudit(srv, 'enroll.start');
    assert.equal(row.reason, 'ek_already_enrolled');
    assert.equal(row.details?.existingDevice, first.deviceId, 'the operator finds the existing device in the audit row');

    // quarantined counts as live: enrolling again does not clear it
    await srv.server.ctx.store.updateDevice(first.deviceId, { status: 'quarantined', statusReason: 'test: posture changed' });
    const q = await enrollWith(http, dev, dev.startRequest(await srv.token()));
    assert.equal(q.start.body.error?.code, 'ek_already_enrolled');
    assert.equal((await srv.server.ctx.store.getDevice(first.deviceId))!.status, 'quarantined');

    // once an operator revoked it, the TPM enrolls again (as a new device)
    const rev = await srv.admin('POST', `/v1/admin/devices/${first.deviceId}/revoke`, { reason: 'key-compromise' });
    assert.equal(rev.status, 200, JSON.stringify(rev.body));
    const ok = await enrollWith(http, dev, dev.startRequest(await srv.token()));
    assert.equal(ok.finish?.status, 200, JSON.stringify(ok.start.body));
    assert.notEqual(ok.finish!.body.deviceId, first.deviceId);
  },
);

test('an EK public area that fits no TCG EK template is refused with ek_template_mismatch', { timeout: 300_000 }, async (t) => {
  const [tpm] = await tpms(t, 1);
  const srv = await startInProcessServer({ zones: { default: {}, open: { requireEkCertificate: false } } });
  t.after(() => srv.close());
  const http = injectTransport(srv.server.app);
  const dev = await device(t, tpm!);
  const p = parsePublic(dev.ek.public);
  const cases: Array<[string, Partial<typeof p>]> = [
    ['userWithAuth set on a low-range EK', { objectAttributes: p.objectAttributes | TPMA_OBJECT.userWithAuth }],
    ['no authPolicy', { authPolicy: Buffer.alloc(0) }],
    ['exponent 3', { rsa: { ...p.rsa!, exponent: 3 } }],
  ];
  for (const [what, change] of cases) {
    const { tpmtPublic: _x, ...rest } = { ...p, ...change };
    const r = await http.post('/v1/enroll/start', withoutToken(dev, { ekPub: b64(marshalPublic(rest)), zone: 'open' }));
    // without a token (zero-touch) the EK's identity is computed first, so the template check comes first
    assert.equal(r.body.error?.code, 'ek_template_mismatch', what);
    const withToken = await http.post(
      '/v1/enroll/start',
      dev.startRequest(await srv.token({ zone: 'open' }), { ekPub: b64(marshalPublic(rest)) }),
    );
    assert.equal(withToken.status, 400, what);
    assert.equal(withToken.body.error.code, 'ek_template_mismatch', what);
  }
  assert.equal((await srv.server.ctx.store.listDevices()).length, 0);
});

test('two tokens with the same EK finishing at once create one device (checked in the transaction)', { timeout: 300_000 }, async (t) => {
  const [tpm] = await tpms(t, 1);
  const srv = await startInProcessServer({ rateLimit: { enroll: { max: 100000 } } });
  t.after(() => srv.close());
  const http = injectTransport(srv.server.app);
  const dev = await device(t, tpm!);
  const N = 6;
  // every session is started (no device exists yet, so each passes the check in enroll/start)
  const starts: EnrollStartResponse[] = [];
  for (let i = 0; i < N; i++) {
    const s = await http.post<EnrollStartResponse>(
      '/v1/enroll/start',
      dev.startRequest(await srv.token(), i % 2 ? { ekPub: exponent65537(dev) } : {}),
    );
    assert.equal(s.status, 200, JSON.stringify(s.body));
    starts.push(s.body);
  }
  const finishes = [];
  for (const s of starts) {
    dev.pcrs = s.pcrs;
    const secret = await dev.activate(s);
    const { evidence } = await dev.evidence(s.nonce);
    finishes.push({ session: s.session, secret: b64(secret), ...evidence });
  }
  // … and all finishes race
  const results = await Promise.all(finishes.map((f) => http.post('/v1/enroll/finish', f)));
  const ok = results.filter((r) => r.status === 200);
  const refused = results.filter((r) => r.status !== 200);
  assert.equal(ok.length, 1, JSON.stringify(results.map((r) => r.body.error?.code ?? 'ok')));
  for (const r of refused) assert.equal(r.body.error.code, 'ek_already_enrolled');
  const live = await srv.server.ctx.store.listDevices({ status: ['active', 'quarantined'] });
  assert.equal(live.length, 1);
  assert.equal(live[0]!.id, ok[0]!.body.deviceId);
});

test(
  'EK certificates are required by default: an unknown CA or no certificate is refused; an opted-out zone enrolls with ekVerified false',
  { timeout: 300_000 },
  async (t) => {
    const [tpmA, tpmB] = await tpms(t, 2);
    // `ek` set without swtpm's local CA: only the built-in TPM makers' store
    const srv = await startInProcessServer({ ek: {}, zones: { default: {}, lab: { requireEkCertificate: false } } });
    t.after(() => srv.close());
    const http = injectTransport(srv.server.app);
    const devA = await device(t, tpmA!);
    const devB = await device(t, tpmB!, 'ecc');
    assert.ok(devA.ek.certificate, 'swtpm has an EK certificate');

    const untrusted = await http.post('/v1/enroll/start', devA.startRequest(await srv.token()));
    assert.equal(untrusted.body.error?.code, 'ek_cert_untrusted');
    const { ekCert: _c, ...noCert } = devA.startRequest(await srv.token());
    const missing = await http.post('/v1/enroll/start', noCert);
    assert.equal(missing.status, 400);
    assert.equal(missing.body.error.code, 'ek_cert_required');

    const lab = await devB.enroll(http, await srv.token({ zone: 'lab' }));
    const shown = await srv.admin('GET', `/v1/admin/devices/${lab.deviceId}`);
    assert.equal(shown.body.device.ekVerified, false);
    assert.equal(shown.body.device.ekIssuer, null);
    const listed = await srv.admin('GET', '/v1/admin/devices');
    assert.equal(listed.body.devices.find((d: { id: string }) => d.id === lab.deviceId).ekVerified, false);

    // the same TPM in a zone with the check, once an operator added swtpm's CA (root, then issuer as an anchor too)
    for (const f of ['/var/lib/swtpm-localca/swtpm-localca-rootca-cert.pem', '/var/lib/swtpm-localca/issuercert.pem']) {
      const { readFileSync } = await import('node:fs');
      const added = await srv.admin('POST', '/v1/admin/ek-roots', { certificate: readFileSync(f, 'utf8') });
      assert.equal(added.status, 200, JSON.stringify(added.body));
      assert.equal(added.body.source, 'operator');
    }
    const verified = await devA.enroll(http, await srv.token());
    const d = (await srv.admin('GET', `/v1/admin/devices/${verified.deviceId}`)).body.device;
    assert.equal(d.ekVerified, true);
    assert.equal(d.ekIssuer, new X509Certificate(devA.ek.certificate!).issuer.replace(/\n/g, ', '));

    const roots = (await srv.admin('GET', '/v1/admin/ek-roots')).body.roots as Array<{
      fingerprint: string;
      source: string;
      role: string;
      origin: string;
      disabled: boolean;
    }>;
    assert.ok(roots.some((r) => r.source === 'builtin' && r.origin === 'GS_TPM_RT.pem' && r.role === 'anchor'));
    assert.ok(roots.some((r) => r.source === 'builtin' && r.origin === 'INF_RSA_011.pem' && r.role === 'intermediate'));
    // removing the operator's anchors brings back ek_cert_untrusted
    for (const r of roots.filter((x) => x.source === 'operator'))
      assert.equal((await srv.admin('POST', `/v1/admin/ek-roots/${r.fingerprint}/remove`, {})).status, 200);
    const again = await http.post('/v1/enroll/start', devB.startRequest(await srv.token()));
    assert.equal(again.body.error?.code, 'ek_cert_untrusted');
    const audit = (await srv.admin('GET', '/v1/admin/audit?limit=10000')).body.rows as Array<{ event: string; outcome: string }>;
    assert.equal(audit.filter((r) => r.event === 'admin.ek-roots.add' && r.outcome === 'ok').length, 2);
    assert.equal(audit.filter((r) => r.event === 'admin.ek-roots.remove' && r.outcome === 'ok').length, 2);
  },
);

test(
  'zero-touch: a TPM on the supplier manifest enrolls once without a token; unlisted and removed ones are refused',
  { timeout: 300_000 },
  async (t) => {
    const [tpmA, tpmB, tpmC] = await tpms(t, 3);
    const srv = await startInProcessServer({ zones: { default: {}, 'line-3': {} }, rateLimit: { enroll: { max: 100000 } } });
    t.after(() => srv.close());
    const http = injectTransport(srv.server.app);
    const [devA, devB, devC] = [await device(t, tpmA!), await device(t, tpmB!), await device(t, tpmC!)];
    const pem = (der: Buffer) => new X509Certificate(der).toString();
    // CSV with a quoted PEM certificate, and an EK public key (TPM2B_PUBLIC, base64) for the other
    const csv = `serial,ek_cert\nGW-0001,"${pem(devA.ek.certificate!)}"\nGW-0002,${b64(devB.ek.public)}\n`;
    const imp = await srv.admin('POST', '/v1/admin/ek-allow', {
      zone: 'line-3',
      owner: 'plant-ops',
      content: csv,
      source: 'pallet-17.csv',
    });
    assert.equal(imp.status, 200, JSON.stringify(imp.body));
    assert.equal(imp.body.added.length, 2);
    const entryA = imp.body.added.find((e: { name: string }) => e.name === 'GW-0001');
    const entryB = imp.body.added.find((e: { name: string }) => e.name === 'GW-0002');

    const a = await enrollWith(http, devA, withoutToken(devA));
    assert.equal(a.finish?.status, 200, JSON.stringify(a.start.body));
    const shown = (await srv.admin('GET', `/v1/admin/devices/${a.finish!.body.deviceId}`)).body.device;
    assert.deepEqual([shown.zone, shown.owner, shown.name, shown.ekVerified], ['line-3', 'plant-ops', 'GW-0001', true]);
    const finishRow = lastAudit(srv, 'enroll.finish');
    assert.equal(finishRow.outcome, 'ok');
    assert.equal(finishRow.details?.manifestEntry, entryA.id, 'the audit row names the manifest entry');

    const second = await http.post('/v1/enroll/start', withoutToken(devA));
    assert.equal(second.status, 401);
    assert.equal(second.body.error.code, 'ek_not_allowed');
    const usedRow = lastAudit(srv, 'enroll.start');
    assert.equal(usedRow.reason, 'ek_not_allowed');
    assert.deepEqual([usedRow.details?.manifestEntry, usedRow.details?.manifestState], [entryA.id, 'used']);
    assert.equal(usedRow.details?.existingDevice, a.finish!.body.deviceId, 'the audit row names the device the entry enrolled');
    assert.match(String(usedRow.details?.message), /was used already/);

    const unlisted = await http.post('/v1/enroll/start', withoutToken(devC));
    assert.equal(unlisted.status, 401);
    assert.equal(unlisted.body.error.code, 'ek_not_allowed');
    assert.match(String(lastAudit(srv, 'enroll.start').details?.message), /no supplier manifest lists this EK/);

    const removed = await srv.admin('POST', `/v1/admin/ek-allow/${entryB.id}/remove`, {});
    assert.equal(removed.status, 200);
    const afterRemoval = await http.post('/v1/enroll/start', withoutToken(devB));
    assert.equal(afterRemoval.body.error?.code, 'ek_not_allowed');
    assert.equal((await srv.server.ctx.store.listDevices()).length, 1);

    // an anonymous caller cannot tell a used entry or a removed one from an EK never listed:
    // the same status and body; only the audit rows (above) and the admin API say which
    assert.deepEqual({ status: second.status, body: second.body }, { status: unlisted.status, body: unlisted.body });
    assert.deepEqual({ status: afterRemoval.status, body: afterRemoval.body }, { status: unlisted.status, body: unlisted.body });
    assert.doesNotMatch(JSON.stringify(second.body), new RegExp(`${entryA.id}|${a.finish!.body.deviceId}`));
    const entries = (await srv.admin('GET', '/v1/admin/ek-allow')).body.entries as Array<{
      id: string;
      state: string;
      deviceId: string | null;
    }>;
    assert.deepEqual(
      entries.map((e) => [e.id, e.state, e.deviceId]),
      [[entryA.id, 'used', a.finish!.body.deviceId]],
    );
  },
);

test(
  "zero-touch: an outsider who knows only the public EK neither spends the entry nor ends the TPM's session; only a successful finish spends it",
  { timeout: 300_000 },
  async (t) => {
    const [victim, attacker] = await tpms(t, 2);
    const srv = await startInProcessServer({ rateLimit: { enroll: { max: 100000 } } });
    t.after(() => srv.close());
    const http = injectTransport(srv.server.app);
    const [dev, other] = [await device(t, victim!), await device(t, attacker!)];
    const imp = await srv.admin('POST', '/v1/admin/ek-allow', {
      zone: 'default',
      owner: 'o',
      content: JSON.stringify([{ ekPub: b64(dev.ek.public), name: 'gw-1' }]),
    });
    assert.equal(imp.status, 200, JSON.stringify(imp.body));
    const entry = imp.body.added[0] as { id: string };
    const state = async () => ((await srv.admin('GET', '/v1/admin/ek-allow')).body.entries as Array<{ state: string }>)[0]!.state;

    // the outsider has the TPM's public EK and EK certificate, its own TPM (AK), no token
    const noCert = await http.post('/v1/enroll/start', { ekPub: b64(dev.ek.public), akPub: b64(other.ak.public) });
    assert.equal(noCert.status, 400);
    assert.equal(noCert.body.error?.code, 'ek_cert_required');
    assert.equal(lastAudit(srv, 'enroll.start').details?.manifestEntry, entry.id, 'the refusal is audited with the entry');
    const outsider = await http.post<EnrollStartResponse>('/v1/enroll/start', withoutToken(dev, { akPub: b64(other.ak.public) }));
    assert.equal(outsider.status, 200, JSON.stringify(outsider.body));

    // the genuine TPM starts while the outsider's session is open
    const genuine = await http.post<EnrollStartResponse>('/v1/enroll/start', withoutToken(dev));
    assert.equal(genuine.status, 200, `the listed TPM is refused: ${JSON.stringify(genuine.body)}`);

    // the outsider cannot ActivateCredential with the EK: a wrong secret ends its own session only
    const { evidence } = await other.evidence(outsider.body.nonce);
    const wrong = await http.post('/v1/enroll/finish', { session: outsider.body.session, secret: b64(Buffer.alloc(32)), ...evidence });
    assert.equal(wrong.status, 403);
    assert.equal(wrong.body.error?.code, 'activation_secret_mismatch');
    assert.equal(lastAudit(srv, 'enroll.finish').details?.manifestEntry, entry.id);
    const reused = await http.post('/v1/enroll/finish', { session: outsider.body.session, secret: b64(Buffer.alloc(32)), ...evidence });
    assert.equal(reused.body.error?.code, 'session_used');
    // a start after the TPM's does not supersede the TPM's session
    const later = await http.post<EnrollStartResponse>('/v1/enroll/start', withoutToken(dev, { akPub: b64(other.ak.public) }));
    assert.equal(later.status, 200, JSON.stringify(later.body));
    assert.equal(await state(), 'attempted', 'no failure spent the entry');

    const fin = await finishWith(http, dev, genuine.body);
    assert.equal(fin.status, 200, JSON.stringify(fin.body));
    assert.equal(await state(), 'used');
    // the success spent the entry and ended every other session of it
    const { evidence: ev2 } = await other.evidence(later.body.nonce);
    const late = await http.post('/v1/enroll/finish', { session: later.body.session, secret: b64(Buffer.alloc(32)), ...ev2 });
    assert.equal(late.body.error?.code, 'session_used');
    const again = await http.post('/v1/enroll/start', withoutToken(dev));
    assert.equal(again.body.error?.code, 'ek_not_allowed');
    assert.deepEqual(
      (await srv.server.ctx.store.listDevices()).map((d) => d.id),
      [fin.body.deviceId],
    );
  },
);

test(
  'zero-touch: sessions of a listed TPM finishing at once create one device and spend the entry once',
  { timeout: 300_000 },
  async (t) => {
    const [tpm] = await tpms(t, 1);
    const srv = await startInProcessServer({ rateLimit: { enroll: { max: 100000 } } });
    t.after(() => srv.close());
    const http = injectTransport(srv.server.app);
    const dev = await device(t, tpm!);
    const imp = await srv.admin('POST', '/v1/admin/ek-allow', {
      zone: 'default',
      owner: 'o',
      content: JSON.stringify([b64(dev.ek.public)]),
    });
    assert.equal(imp.status, 200, JSON.stringify(imp.body));
    const N = 4;
    const starts: EnrollStartResponse[] = [];
    for (let i = 0; i < N; i++) {
      const s = await http.post<EnrollStartResponse>('/v1/enroll/start', withoutToken(dev));
      assert.equal(s.status, 200, JSON.stringify(s.body));
      starts.push(s.body);
    }
    const finishes = [];
    for (const s of starts) {
      dev.pcrs = s.pcrs;
      const secret = await dev.activate(s);
      const { evidence } = await dev.evidence(s.nonce);
      finishes.push({ session: s.session, secret: b64(secret), ...evidence });
    }
    const results = await Promise.all(finishes.map((f) => http.post('/v1/enroll/finish', f)));
    const ok = results.filter((r) => r.status === 200);
    assert.equal(ok.length, 1, JSON.stringify(results.map((r) => r.body.error?.code ?? 'ok')));
    for (const r of results.filter((x) => x.status !== 200)) assert.match(r.body.error.code, /^(session_used|token_used)$/);
    assert.deepEqual(
      (await srv.server.ctx.store.listDevices()).map((d) => d.id),
      [ok[0]!.body.deviceId],
    );
  },
);

test(
  'zero-touch: a used entry is allowed again by ek-allow remove, then import; an import alone skips it',
  { timeout: 300_000 },
  async (t) => {
    const [tpm] = await tpms(t, 1);
    const srv = await startInProcessServer({ rateLimit: { enroll: { max: 100000 } } });
    t.after(() => srv.close());
    const http = injectTransport(srv.server.app);
    const dev = await device(t, tpm!);
    const manifest = { zone: 'default', owner: 'o', content: JSON.stringify([{ ekPub: b64(dev.ek.public), name: 'gw-1' }]) };
    const imp = await srv.admin('POST', '/v1/admin/ek-allow', manifest);
    assert.equal(imp.status, 200, JSON.stringify(imp.body));
    const first = await enrollWith(http, dev, withoutToken(dev));
    assert.equal(first.finish?.status, 200, JSON.stringify(first.start.body));
    // the device is retired (no live device holds the EK any more); the entry is still used
    assert.equal((await srv.admin('POST', `/v1/admin/devices/${first.finish!.body.deviceId}/retire`, {})).status, 200);
    const refused = await http.post('/v1/enroll/start', withoutToken(dev));
    assert.equal(refused.status, 401);
    assert.equal(refused.body.error?.code, 'ek_not_allowed');
    assert.match(refused.body.error.message, /removed or used/);
    assert.match(refused.body.error.message, /not listed/);

    // importing the same manifest again skips the listed EK, so the TPM stays refused
    const again = await srv.admin('POST', '/v1/admin/ek-allow', manifest);
    assert.deepEqual([again.status, again.body.added.length, again.body.skipped], [200, 0, 1]);
    assert.equal((await http.post('/v1/enroll/start', withoutToken(dev))).body.error?.code, 'ek_not_allowed');
    const [entry] = (await srv.admin('GET', '/v1/admin/ek-allow')).body.entries as Array<{ id: string; state: string }>;
    assert.deepEqual([entry!.id, entry!.state], [imp.body.added[0].id, 'used']);

    // the documented way: remove the entry, then import it
    assert.equal((await srv.admin('POST', `/v1/admin/ek-allow/${entry!.id}/remove`, {})).status, 200);
    const reimported = await srv.admin('POST', '/v1/admin/ek-allow', manifest);
    assert.deepEqual([reimported.body.added.length, reimported.body.skipped], [1, 0]);
    const second = await enrollWith(http, dev, withoutToken(dev));
    assert.equal(second.finish?.status, 200, JSON.stringify(second.start.body));
    assert.notEqual(second.finish!.body.deviceId, first.finish!.body.deviceId);
    assert.equal(lastAudit(srv, 'enroll.finish').details?.manifestEntry, reimported.body.added[0].id);
  },
);

test('removing a manifest entry while its enrollment is under way refuses the finish', { timeout: 300_000 }, async (t) => {
  const [tpm] = await tpms(t, 1);
  const srv = await startInProcessServer({});
  t.after(() => srv.close());
  const http = injectTransport(srv.server.app);
  const dev = await device(t, tpm!);
  const imp = await srv.admin('POST', '/v1/admin/ek-allow', {
    zone: 'default',
    owner: 'o',
    content: JSON.stringify([{ ekPub: b64(dev.ek.public), name: 'gw' }]),
  });
  assert.equal(imp.status, 200, JSON.stringify(imp.body));
  const start = await http.post('/v1/enroll/start', withoutToken(dev));
  assert.equal(start.status, 200, JSON.stringify(start.body));
  assert.equal((await srv.admin('POST', `/v1/admin/ek-allow/${imp.body.added[0].id}/remove`, {})).status, 200);
  const fin = await finishWith(http, dev, start.body);
  assert.notEqual(fin.status, 200);
  assert.match(fin.body.error.code, /^(session_used|token_expired)$/);
  assert.equal((await srv.server.ctx.store.listDevices()).length, 0);
});
