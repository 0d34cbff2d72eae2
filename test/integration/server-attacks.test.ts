/**
 * Table-driven attacks on the enrollment server: real swtpm TPMs driven
 * through agent/tpm build the evidence, the server runs in-process (fastify inject). Every attack
 * must get a 4xx with its own code and an audit row with that code, and change nothing else in
 * the database — except where the issue demands a change (a failed check spends the token; a
 * posture mismatch quarantines the device), which each case names and asserts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type Database from 'better-sqlite3';
import { ERRORS, type ErrorCode } from '../../protocol/errors/index.js';
import type { EnrollStartResponse } from '../../protocol/api.js';
import type { SqliteStore } from '../../enroll-server/store/sqlite.js';
import { startSwtpm, extendBootPcrs, SWTPM_LOCALCA_ROOT, SWTPM_LOCALCA_ISSUER, type Swtpm } from '../../scripts/harness/swtpm.js';
import {
  TestDevice,
  injectTransport,
  duplicableKeyTemplate,
  b64,
  type Transport,
  type HttpResult,
  type EvidenceOptions,
} from '../helpers/device.js';
import { closeRefusalAggregator } from '../../enroll-server/services/audit.js';
import { startInProcessServer, type TestServer } from '../helpers/server.js';

type Snapshot = Record<string, Record<string, unknown>[]>;
const TABLES = ['meta', 'tokens', 'enroll_sessions', 'devices', 'certificates', 'nonces'];

function snapshot(db: Database.Database): Snapshot {
  const s: Snapshot = {};
  for (const t of TABLES) {
    s[t] = (db.prepare(`SELECT * FROM ${t} ORDER BY rowid`).all() as Record<string, unknown>[]).map((r) =>
      Object.fromEntries(Object.entries(r).map(([k, v]) => [k, Buffer.isBuffer(v) ? v.toString('hex') : v])),
    );
  }
  // the audit head moves with every audit row; that is the audit row, not another change
  s.meta = s.meta!.filter((r) => r.key !== 'audit_head');
  return s;
}

function maxSeq(db: Database.Database): number {
  return Number((db.prepare('SELECT COALESCE(MAX(seq), 0) AS m FROM audit').get() as { m: number }).m);
}

/** What an attack may change besides the audit log. */
type Allowed = 'token_spent' | 'quarantined';

interface Attack {
  name: string;
  code: ErrorCode;
  /** The cause in the audit row when the caller gets a generic code (default: code). */
  audited?: ErrorCode;
  /** What the message must say, where the cause has specifics a technician needs. */
  message?: RegExp;
  allow?: Allowed;
  prepare?: () => Promise<void>;
  run: () => Promise<HttpResult>;
  after?: () => Promise<void> | void;
}

test('every attack is refused with its own 4xx code, an audit row and no other change', { timeout: 300_000 }, async (t) => {
  const tpms: Swtpm[] = [];
  t.after(async () => {
    for (const s of tpms) await s.stop();
  });
  const [tpmA, tpmB, tpmC] = await Promise.all([startSwtpm(), startSwtpm(), startSwtpm()]);
  tpms.push(tpmA!, tpmB!, tpmC!);
  for (const s of tpms) await extendBootPcrs(s.tcti);

  const srv: TestServer = await startInProcessServer({
    zones: { default: { cidrs: ['127.0.0.0/8', '::1/128'] }, 'line-3': {} },
    ek: { roots: [SWTPM_LOCALCA_ROOT], intermediates: [SWTPM_LOCALCA_ISSUER], requireEkCertificate: true },
    rateLimit: { enroll: { max: 100000 }, renew: { max: 100000 } },
  });
  t.after(() => srv.close());
  const db = (srv.server.ctx.store as SqliteStore).db;
  const http: Transport = injectTransport(srv.server.app);
  const outside: Transport = injectTransport(srv.server.app, { remoteAddress: '192.0.2.7' });

  const devA = await TestDevice.create(tpmA!.tcti, { ekKind: 'rsa' });
  const devB = await TestDevice.create(tpmB!.tcti, { ekKind: 'rsa' });
  const devC = await TestDevice.create(tpmC!.tcti, { ekKind: 'ecc' });
  t.after(async () => {
    for (const d of [devA, devB, devC]) await d.close();
  });
  const tokenA = await srv.token();
  await devA.enroll(http, tokenA);
  await devB.enroll(http, await srv.token());
  const otherAk = await devC.tpm.createAttestationKey();
  const otherAkOnA = await devA.tpm.createAttestationKey();

  /** A started enrollment of TPM C, ready to finish. */
  let pending: { start: EnrollStartResponse; secret: Buffer } | null = null;
  const startC = async () => {
    const r = await http.post<EnrollStartResponse>('/v1/enroll/start', devC.startRequest(await srv.token()));
    assert.equal(r.status, 200, JSON.stringify(r.body));
    pending = { start: r.body, secret: await devC.activate(r.body) };
  };
  const finishC = async (o: EvidenceOptions & { secret?: Buffer; mutate?: (body: Record<string, any>) => void } = {}) => {
    const { start, secret } = pending!;
    const { evidence } = await devC.evidence(start.nonce, o);
    const body: Record<string, any> = { session: start.session, secret: b64(o.secret ?? secret), ...evidence };
    o.mutate?.(body);
    return http.post('/v1/enroll/finish', body);
  };
  let freshToken = '';
  let usedNonce = '';
  let boundToken = '';

  const attacks: Attack[] = [
    // --- tokens --------------------------------------------------------------------------------
    { name: 'reused token', code: 'token_used', run: () => http.post('/v1/enroll/start', devC.startRequest(tokenA)) },
    {
      name: 'expired token',
      code: 'token_expired',
      message: /^This enrollment token expired at \d\d:\d\d UTC \(\d{4}-\d\d-\d\d\)\.$/,
      prepare: async () => {
        freshToken = await srv.token({ ttlSeconds: 60 });
        srv.clock.offset = 120_000;
      },
      run: () => http.post('/v1/enroll/start', devC.startRequest(freshToken)),
      after: () => {
        srv.clock.offset = 0;
      },
    },
    {
      name: 'token of another zone',
      code: 'token_zone_mismatch',
      allow: 'token_spent',
      prepare: async () => {
        freshToken = await srv.token({ zone: 'line-3' });
      },
      run: () => http.post('/v1/enroll/start', devC.startRequest(freshToken, { zone: 'default' })),
    },
    {
      name: 'unknown token',
      code: 'token_invalid',
      run: () => http.post('/v1/enroll/start', devC.startRequest(`${'0'.repeat(16)}.${'A'.repeat(43)}`)),
    },
    {
      name: 'token already bound to another TPM',
      code: 'token_bound_to_other_ek',
      prepare: async () => {
        boundToken = await srv.token();
        const r = await http.post('/v1/enroll/start', devC.startRequest(boundToken));
        assert.equal(r.status, 200);
      },
      run: () =>
        http.post('/v1/enroll/start', {
          ...devC.startRequest(boundToken),
          ekPub: devA.startRequest('x').ekPub,
          ekCert: devA.startRequest('x').ekCert,
        }),
    },
    {
      name: 'EK certificate not chaining to the manufacturer roots',
      code: 'ek_cert_untrusted',
      allow: 'token_spent',
      prepare: async () => {
        freshToken = await srv.token();
      },
      run: () => http.post('/v1/enroll/start', devC.startRequest(freshToken, { ekCert: b64(srv.server.ctx.ca.rootDer) })),
    },
    {
      name: 'EK of a TPM that is already enrolled',
      code: 'ek_already_enrolled',
      prepare: async () => {
        freshToken = await srv.token();
      },
      run: () => http.post('/v1/enroll/start', devA.startRequest(freshToken)),
    },
    {
      name: 'truncated AK public area',
      code: 'tpm_malformed',
      allow: 'token_spent',
      prepare: async () => {
        freshToken = await srv.token();
      },
      run: () => http.post('/v1/enroll/start', devC.startRequest(freshToken, { akPub: b64(devC.ak.public.subarray(0, 40)) })),
    },
    {
      name: 'truncated EK public area',
      code: 'tpm_malformed',
      allow: 'token_spent',
      prepare: async () => {
        freshToken = await srv.token();
      },
      run: () =>
        http.post('/v1/enroll/start', devC.startRequest(freshToken, { ekPub: b64(devC.ek.public.subarray(0, devC.ek.public.length - 7)) })),
    },
    {
      name: 'an AK that is not restricted (the EK public area as AK)',
      code: 'ak_attributes_invalid',
      allow: 'token_spent',
      prepare: async () => {
        freshToken = await srv.token();
      },
      run: () =>
        http.post('/v1/enroll/start', devC.startRequest(freshToken, { akPub: b64(devC.sessionKey?.public ?? devA.sessionKey!.public) })),
    },
    // --- enrollment finish -------------------------------------------------------------------------
    {
      name: 'wrong activation secret',
      code: 'activation_secret_mismatch',
      allow: 'token_spent',
      prepare: startC,
      run: () => finishC({ secret: randomBytes(32) }),
    },
    {
      name: 'quote by a different AK',
      code: 'quote_bad_signature',
      allow: 'token_spent',
      prepare: startC,
      run: () => finishC({ quoteAk: otherAk }),
    },
    {
      name: 'wrong qualifyingData',
      code: 'quote_nonce_mismatch',
      allow: 'token_spent',
      prepare: startC,
      run: () => finishC({ quoteQualifyingData: randomBytes(32) }),
    },
    {
      name: 'PCR values not matching pcrDigest',
      code: 'quote_pcr_digest_mismatch',
      allow: 'token_spent',
      prepare: startC,
      run: () => finishC({ tamperPcr: 3 }),
    },
    {
      name: 'certify of a key without fixedTPM',
      code: 'certify_not_fixed_tpm',
      allow: 'token_spent',
      prepare: startC,
      run: () => finishC({ sessionTemplate: duplicableKeyTemplate() }),
    },
    {
      name: 'certify naming another key',
      code: 'certify_name_mismatch',
      allow: 'token_spent',
      prepare: startC,
      run: () => finishC({ certifyOtherKey: true }),
    },
    {
      name: 'CSR key is not the certified key',
      code: 'csr_key_mismatch',
      allow: 'token_spent',
      prepare: startC,
      run: () => finishC({ softwareCsrKey: true }),
    },
    {
      name: 'truncated quote attest',
      code: 'tpm_malformed',
      allow: 'token_spent',
      prepare: startC,
      run: () =>
        finishC({
          mutate: (b) => {
            b.quote.attest = b64(Buffer.from(b.quote.attest, 'base64').subarray(0, 30));
          },
        }),
    },
    {
      name: 'certify signature truncated',
      code: 'tpm_malformed',
      allow: 'token_spent',
      prepare: startC,
      run: () =>
        finishC({
          mutate: (b) => {
            b.certify.signature = b64(Buffer.from(b.certify.signature, 'base64').subarray(0, 9));
          },
        }),
    },
    {
      name: 'PCR selection other than the zone policy',
      code: 'pcr_values_invalid',
      allow: 'token_spent',
      prepare: startC,
      run: () => finishC({ pcrs: [0, 1, 2] }),
    },
    // --- renewal -----------------------------------------------------------------------------------
    {
      name: 'replayed nonce',
      code: 'nonce_used',
      prepare: async () => {
        usedNonce = devA.nonce!;
        const r = await devA.renew(http);
        assert.equal(r.status, 200);
      },
      run: () => devA.renew(http, { nonce: usedNonce }),
    },
    { name: "another device's nonce", code: 'nonce_wrong_device', run: () => devA.renew(http, { nonce: devB.nonce! }) },
    { name: 'unknown nonce', code: 'nonce_unknown', run: () => devA.renew(http, { nonce: randomBytes(32).toString('base64') }) },
    {
      name: 'expired nonce',
      code: 'nonce_expired',
      prepare: async () => {
        srv.clock.offset = 3 * 3600_000;
      },
      run: () => devA.renew(http),
      after: () => {
        srv.clock.offset = 0;
      },
    },
    { name: 'renewal quote by a different AK', code: 'quote_bad_signature', run: () => devA.renew(http, { quoteAk: otherAkOnA }) },
    {
      name: 'renewal with wrong qualifyingData',
      code: 'quote_nonce_mismatch',
      run: () => devA.renew(http, { quoteQualifyingData: randomBytes(32) }),
    },
    { name: 'renewal with tampered PCR value', code: 'quote_pcr_digest_mismatch', run: () => devA.renew(http, { tamperPcr: 0 }) },
    { name: 'renewal CSR by a software key', code: 'csr_key_mismatch', run: () => devA.renew(http, { softwareCsrKey: true }) },
    { name: 'renewal from outside the zone CIDRs', code: 'source_ip_not_allowed', run: () => devA.renew(outside, {}) },
    {
      name: 'renewal of an unknown device',
      code: 'renewal_refused',
      audited: 'device_not_found',
      run: () => devA.renew(http, { deviceId: 'dev-0000000000000000' } as EvidenceOptions),
    },
    {
      name: 'renewal by a revoked device',
      code: 'device_revoked',
      prepare: async () => {
        const r = await srv.admin('POST', `/v1/admin/devices/${devB.deviceId}/revoke`, { reason: 'key-compromise' });
        assert.equal(r.status, 200, JSON.stringify(r.body));
      },
      run: () => devB.renew(http),
    },
    {
      name: 'renewal by a retired device',
      code: 'device_retired',
      prepare: async () => {
        await devB.enroll(http, await srv.token()); // the revoked TPM may enroll again as a new device
        const r = await srv.admin('POST', `/v1/admin/devices/${devB.deviceId}/retire`, {});
        assert.equal(r.status, 200, JSON.stringify(r.body));
      },
      run: () => devB.renew(http),
    },
    {
      name: 'PCRs off the baseline',
      code: 'posture_pcr_mismatch',
      allow: 'quarantined',
      prepare: async () => {
        await devA.tpm.extendPcr(7, randomBytes(32));
      },
      run: () => devA.renew(http),
    },
    { name: 'renewal by a quarantined device', code: 'device_quarantined', run: () => devA.renew(http) },
    // --- admin API and HTTP layer -----------------------------------------------------------------
    {
      name: 'admin API without a token',
      code: 'admin_unauthorized',
      run: async () => {
        const r = await srv.server.app.inject({ method: 'GET', url: '/v1/admin/devices' });
        return { status: r.statusCode, body: r.json() };
      },
    },
    {
      name: 'admin API with a wrong token',
      code: 'admin_unauthorized',
      run: async () => {
        const r = await srv.server.app.inject({
          method: 'POST',
          url: `/v1/admin/devices/${devA.deviceId}/revoke`,
          headers: { authorization: `Bearer ${srv.adminToken}x` },
          payload: { reason: 'unspecified' },
        });
        return { status: r.statusCode, body: r.json() };
      },
    },
    {
      name: 'body over the limit',
      code: 'body_too_large',
      run: async () => {
        const r = await srv.server.app.inject({
          method: 'POST',
          url: '/v1/enroll/start',
          headers: { 'content-type': 'application/json' },
          payload: JSON.stringify({ token: 'x'.repeat(70 * 1024) }),
        });
        return { status: r.statusCode, body: r.json() };
      },
    },
    {
      name: 'malformed JSON',
      code: 'malformed_json',
      run: async () => {
        const r = await srv.server.app.inject({
          method: 'POST',
          url: '/v1/renew',
          headers: { 'content-type': 'application/json' },
          payload: '{"deviceId": "dev-',
        });
        return { status: r.statusCode, body: r.json() };
      },
    },
  ];

  for (const a of attacks) {
    await t.test(`refuses: ${a.name} (${a.code})`, async () => {
      await a.prepare?.();
      try {
        const before = snapshot(db);
        const seq = maxSeq(db);
        const res = await a.run();
        assert.equal(res.status, ERRORS[a.code].status, `status for ${a.name}: ${JSON.stringify(res.body)}`);
        assert.ok(res.status >= 400 && res.status < 500);
        assert.equal(res.body?.error?.code, a.code, JSON.stringify(res.body));
        if (a.message) assert.match(res.body.error.message, a.message);
        const rows = db.prepare('SELECT * FROM audit WHERE seq > ? ORDER BY seq').all(seq) as { outcome: string; reason: string }[];
        assert.ok(
          rows.some((r) => r.outcome === 'fail' && r.reason === (a.audited ?? a.code)),
          `audit row with reason ${a.audited ?? a.code}: ${JSON.stringify(rows)}`,
        );
        const after = snapshot(db);
        if (a.allow === 'token_spent') {
          // exactly: one token got used_at, its open sessions closed; nothing else
          const changed = after.tokens!.filter((r, i) => JSON.stringify(r) !== JSON.stringify(before.tokens![i]));
          assert.equal(changed.length, 1, 'one token spent');
          assert.notEqual(changed[0]!.used_at, null);
          assert.equal(changed[0]!.device_id, null);
          for (const s of after.enroll_sessions!) if (s.token_id === changed[0]!.id) assert.notEqual(s.used_at, null);
          after.tokens = before.tokens!;
          after.enroll_sessions = before.enroll_sessions!;
        }
        if (a.allow === 'quarantined') {
          const changed = after.devices!.filter((r, i) => JSON.stringify(r) !== JSON.stringify(before.devices![i]));
          assert.equal(changed.length, 1);
          assert.equal(changed[0]!.status, 'quarantined');
          assert.match(String(changed[0]!.status_reason), /PCRs 7 differ/);
          after.devices = before.devices!;
          // quarantine cuts access: the device's live certificates are revoked for good
          // (RFC 5280 §5.3.1 privilegeWithdrawn) and the CRL moves on
          const revoked = after.certificates!.filter((r, i) => JSON.stringify(r) !== JSON.stringify(before.certificates![i]));
          assert.ok(revoked.length >= 1, 'the live certificate is revoked');
          for (const r of revoked) {
            assert.equal(r.device_id, changed[0]!.id);
            assert.notEqual(r.revoked_at, null);
          }
          after.certificates = before.certificates!;
          const crlKeys = (m: Record<string, unknown>[]) => m.filter((r) => !String(r.key).startsWith('crl'));
          after.meta = crlKeys(after.meta!);
          before.meta = crlKeys(before.meta!);
        }
        assert.deepEqual(after, before, 'no other change in the database');
      } finally {
        await a.after?.();
      }
    });
  }

  await t.test('refuses a field of the wrong type in every request field with bad_request, auditing each', async () => {
    await startC();
    const start = devC.startRequest(await srv.token());
    const { evidence } = await devC.evidence(pending!.start.nonce);
    const finish = { session: pending!.start.session, secret: b64(pending!.secret), ...evidence };
    const renewBody = (await devA.renewRequest()).request;
    const bodies: [string, Record<string, any>][] = [
      ['/v1/enroll/start', start],
      ['/v1/enroll/finish', finish],
      ['/v1/renew', renewBody],
      ['/v1/renew/challenge', { deviceId: devA.deviceId }],
    ];
    const before = snapshot(db);
    const firstSeq = maxSeq(db);
    let n = 0;
    for (const [url, body] of bodies) {
      const paths: string[][] = [];
      const walk = (o: Record<string, any>, p: string[]) => {
        for (const [k, v] of Object.entries(o)) {
          paths.push([...p, k]);
          if (v && typeof v === 'object' && !Array.isArray(v) && k !== 'os') walk(v, [...p, k]);
        }
      };
      walk(body, []);
      for (const p of paths) {
        for (const wrong of [12345, true, null, ['x'], 'not base64 !']) {
          const copy = structuredClone(body);
          let o: any = copy;
          for (const k of p.slice(0, -1)) o = o[k];
          const old = o[p[p.length - 1]!];
          if (typeof wrong === 'string' && (typeof old !== 'string' || p[p.length - 1] === 'token' || p.includes('claims'))) continue;
          o[p[p.length - 1]!] = wrong;
          const seq = maxSeq(db);
          const r = await http.post(url, copy);
          n++;
          assert.ok(
            r.status >= 400 && r.status < 500,
            `${url} ${p.join('.')}=${JSON.stringify(wrong)} → ${r.status} ${JSON.stringify(r.body)}`,
          );
          assert.equal(r.body.error.code, 'bad_request', `${url} ${p.join('.')}=${JSON.stringify(wrong)}: ${JSON.stringify(r.body)}`);
          // anonymous refusals are aggregated: at most one row now, every one counted below
          assert.ok(maxSeq(db) <= seq + 1, 'at most one audit row');
        }
      }
    }
    assert.ok(n > 100, `${n} malformed requests`);
    // every refusal is in the audit log: a row of its own, or counted in its minute's summary row
    await closeRefusalAggregator(srv.server.ctx);
    const rows = db.prepare("SELECT details FROM audit WHERE seq > ? AND outcome = 'fail' AND reason = 'bad_request'").all(firstSeq) as {
      details: string | null;
    }[];
    const counted = rows.reduce((sum, r) => sum + ((JSON.parse(r.details ?? '{}') as { repeated?: number }).repeated ?? 1), 0);
    assert.equal(counted, n, 'each refusal counted once in the audit log');
    assert.deepEqual(snapshot(db), before, 'no change in the database');
  });

  await t.test('a quarantined device renews again after approve-baseline, and its new PCRs become the baseline', async () => {
    const r1 = await srv.admin('POST', `/v1/admin/devices/${devA.deviceId}/approve-baseline`, {});
    assert.equal(r1.status, 200);
    assert.equal(r1.body.device.status, 'active');
    await devA.challenge(http);
    const r2 = await devA.renew(http);
    assert.equal(r2.status, 200, JSON.stringify(r2.body));
    const d = (await srv.admin('GET', `/v1/admin/devices/${devA.deviceId}`)).body.device;
    assert.equal(d.baselineWindowUntil, null, 'window closed by the accepted quote');
    const pcr7 = (await devA.tpm.readPcrBank([7])).get(7)!.toString('hex');
    assert.equal(d.baseline['7'], pcr7);
    const r3 = await devA.renew(http);
    assert.equal(r3.status, 200);
  });

  await t.test('never answers 5xx to mutated evidence (bit flips and truncations of every binary field)', async () => {
    const { request } = await devA.renewRequest();
    const fields: [string, (b: Record<string, any>, v: string) => void, string][] = [
      ['sessionKeyPub', (b, v) => (b.sessionKeyPub = v), request.sessionKeyPub],
      ['certify.attest', (b, v) => (b.certify.attest = v), request.certify.attest],
      ['certify.signature', (b, v) => (b.certify.signature = v), request.certify.signature],
      ['quote.attest', (b, v) => (b.quote.attest = v), request.quote.attest],
      ['quote.signature', (b, v) => (b.quote.signature = v), request.quote.signature],
      ['csr', (b, v) => (b.csr = v), request.csr],
    ];
    let seed = 12345; // mulberry32: reproducible
    const rnd = (n: number) => {
      seed = (seed + 0x6d2b79f5) | 0;
      let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
      return ((x ^ (x >>> 14)) >>> 0) % n;
    };
    const before = snapshot(db);
    const seen = new Set<string>();
    for (let i = 0; i < 300; i++) {
      const [name, set, value] = fields[i % fields.length]!;
      const bytes = Buffer.from(value, 'base64');
      const m = Buffer.from(bytes);
      const at = rnd(m.length);
      m[at] = m[at]! ^ (1 << rnd(8));
      const cut = rnd(4) === 0 ? m.subarray(0, rnd(m.length) + 1) : m;
      const body = structuredClone(request) as unknown as Record<string, any>;
      set(body, b64(cut.length ? cut : Buffer.from([0])));
      const r = await http.post('/v1/renew', body);
      assert.ok(r.status >= 200 && r.status < 500, `${name} mutation ${i}: ${r.status} ${JSON.stringify(r.body)}`);
      if (r.status !== 200) seen.add(r.body.error.code);
      else devA.nonce = r.body.renew.nonce; // an unmutated flip (bit flipped twice) may pass
    }
    assert.ok(seen.size >= 5, `distinct codes: ${[...seen].join(', ')}`);
    const after = snapshot(db);
    if (JSON.stringify(after) !== JSON.stringify(before)) {
      // only a successful renewal may have changed anything
      assert.ok(after.certificates!.length > before.certificates!.length);
    }
  });

  await t.test('the server still answers and the audit chain verifies after all attacks', async () => {
    const h = await srv.server.app.inject({ method: 'GET', url: '/healthz' });
    assert.equal(h.statusCode, 200);
    const v = await srv.admin('GET', '/v1/admin/audit/verify');
    assert.equal(v.status, 200);
    assert.equal(v.body.ok, true, JSON.stringify(v.body));
  });
});
