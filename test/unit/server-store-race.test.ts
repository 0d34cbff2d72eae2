/**
 * Several server instances on one PostgreSQL database: two PostgresStore instances (two pools,
 * as two edgeid-server processes have) race on the same single-use thing, round after round —
 * the same challenge nonce spent, the same enrollment token finished, the same renewal nonce
 * renewed on, the same manifest entry claimed, a renewal against a revocation. Every round
 * exactly one wins, and the losers change nothing; afterwards the one audit chain verifies and
 * holds exactly the rows of what happened.
 *
 * EDGEID_RACE_ROUNDS sets the rounds per race (default 200).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { PostgresStore } from '../../enroll-server/store/postgres.js';
import type { AuditInput, CertificateRecord, DeviceRecord, TokenRecord } from '../../enroll-server/store/store.js';
import { freshPostgresDatabase, pgClient, postgresServer, usePostgres } from '../helpers/stores.js';

usePostgres();

const ROUNDS = Number(process.env.EDGEID_RACE_ROUNDS ?? 200);
const NOW = 1_770_000_000_000;
const HOUR = 3600_000;

const audit = (event: string, details: Record<string, unknown> = {}): AuditInput => ({
  time: NOW,
  actor: 'race',
  event,
  outcome: 'ok',
  details,
});

/** Two stores on one fresh database, like two server processes. */
async function twoInstances(t: import('node:test').TestContext): Promise<[PostgresStore, PostgresStore]> {
  const url = await freshPostgresDatabase();
  const a = await PostgresStore.open({ url, poolSize: 4 });
  const b = await PostgresStore.open({ url, poolSize: 4 });
  t.after(async () => {
    await a.close();
    await b.close();
  });
  return [a, b];
}

function token(id: string): TokenRecord {
  return {
    id,
    secretHash: createHash('sha256').update(id).digest(),
    zone: 'default',
    owner: 'o',
    name: null,
    purpose: null,
    createdBy: 'admin',
    createdAt: NOW,
    expiresAt: NOW + HOUR,
    ekHash: null,
    boundAt: null,
    usedAt: null,
    deviceId: null,
  };
}

function device(id: string, ekHash: string): DeviceRecord {
  return {
    id,
    zone: 'default',
    owner: 'o',
    name: null,
    purpose: null,
    status: 'active',
    statusReason: null,
    statusChangedAt: NOW,
    ekHash,
    akPub: Buffer.from('ak'),
    akName: null,
    baseline: null,
    claims: null,
    baselineWindowUntil: null,
    enrolledBy: 'admin',
    enrolledAt: NOW,
    retireBy: null,
    lastSeen: NOW,
    lastIp: null,
  };
}

const cert = (serial: string, deviceId: string): CertificateRecord => ({
  serial,
  deviceId,
  notBefore: NOW,
  notAfter: NOW + HOUR,
  spkiHash: 'x',
  issuedAt: NOW,
  revokedAt: null,
  reason: null,
});

const nonce = (value: string, deviceId: string) => ({ value, deviceId, createdAt: NOW, expiresAt: NOW + HOUR, usedAt: null });

/** Enrolls one device through store `s` (token, session, finish); returns its issued nonce. */
async function enroll(s: PostgresStore, id: string, ekHash: string): Promise<string> {
  const tk = `tok-${id}`;
  await s.createToken(token(tk), audit('token.create'));
  const session = {
    id: `ses-${id}`,
    tokenId: tk,
    ekHash,
    akPub: Buffer.from('ak'),
    secretHash: Buffer.alloc(32),
    nonce: Buffer.alloc(32),
    ip: null,
    createdAt: NOW,
    expiresAt: NOW + HOUR,
    usedAt: null,
  };
  assert.equal(await s.startEnrollment({ tokenId: tk, ekHash, now: NOW, session, audit: audit('enroll.start') }), 'ok');
  const n = `n-${id}`;
  const done = await s.finishEnrollment({
    tokenId: tk,
    sessionId: session.id,
    now: NOW,
    device: device(id, ekHash),
    certificate: cert(`c-${id}`, id),
    nonce: nonce(n, id),
    keepNonces: 2,
    audit: audit('enroll.finish'),
  });
  assert.equal(done, true);
  return n;
}

/** Runs `race(round)` ROUNDS times; each must return exactly one true. Returns the winners per store. */
async function rounds(what: string, race: (i: number) => Promise<[boolean, boolean]>): Promise<[number, number]> {
  const wins: [number, number] = [0, 0];
  for (let i = 0; i < ROUNDS; i++) {
    const [a, b] = await race(i);
    assert.equal(Number(a) + Number(b), 1, `${what}, round ${i}: exactly one instance must win (a=${a}, b=${b})`);
    wins[a ? 0 : 1]++;
  }
  return wins;
}

test('two instances spend the same challenge nonce: exactly one wins every round, the audit chain stays linear', async (t) => {
  const [a, b] = await twoInstances(t);
  await enroll(a, 'dev-0000000000000001', 'ek-1');
  const before = (await a.verifyAudit()).rows;
  const wins = await rounds('spendNonce', async (i) => {
    const v = `chal-${i}`;
    await a.createNonce(nonce(v, 'dev-0000000000000001'), 8, audit('renew.challenge'), i % 2 ? 'net-a' : 'net-b');
    return Promise.all([
      a.spendNonce(v, NOW + i, audit('renew.spend', { by: 'a' })),
      b.spendNonce(v, NOW + i, audit('renew.spend', { by: 'b' })),
    ]);
  });
  const v = await b.verifyAudit();
  assert.equal(v.ok, true, JSON.stringify(v));
  // every call wrote its row: the challenge, and both spends (won or lost)
  assert.equal(v.rows, before + 3 * ROUNDS);
  assert.ok(wins[0] > 0 || wins[1] > 0);
  t.diagnostic(`spendNonce wins a/b: ${wins.join('/')}`);
});

test('unrelated writes on two instances at once all commit, and the audit chain stays one line', async (t) => {
  const [a, b] = await twoInstances(t);
  for (let i = 0; i < ROUNDS; i++) {
    await Promise.all([
      a.createToken(token(`ua-${i}`), audit('token.create', { i })),
      b.createToken(token(`ub-${i}`), audit('token.create', { i })),
      a.appendAudit(audit('note', { i, by: 'a' })),
      b.appendAudit(audit('note', { i, by: 'b' })),
    ]);
  }
  const v = await a.verifyAudit();
  assert.equal(v.ok, true, JSON.stringify(v));
  assert.equal(v.rows, 4 * ROUNDS);
  const seqs = (await b.listAudit({ limit: 4 * ROUNDS + 10 })).map((r) => r.seq);
  assert.deepEqual(
    seqs,
    seqs.map((_, i) => i + 1),
  );
});

test('verifying the audit chain on one instance while the other appends: every verification sees one consistent chain', async (t) => {
  const [a, b] = await twoInstances(t);
  for (let i = 0; i < 20; i++) await a.appendAudit(audit('seed', { i }));
  let writing = true;
  const writer = (async () => {
    let n = 0;
    while (writing) await b.appendAudit(audit('busy', { n: n++ }));
    return n;
  })();
  let checks = 0;
  try {
    for (; checks < ROUNDS / 4; checks++) {
      const v = await a.verifyAudit();
      assert.equal(v.ok, true, `verification ${checks} during appends: ${JSON.stringify(v)}`);
    }
  } finally {
    writing = false;
  }
  const appended = await writer;
  const v = await a.verifyAudit();
  assert.deepEqual([v.ok, v.rows], [true, 20 + appended]);
  t.diagnostic(`${checks} verifications during ${appended} appends`);
});

test('two instances finish enrollments on the same token: exactly one device every round', async (t) => {
  const [a, b] = await twoInstances(t);
  const wins = await rounds('finishEnrollment', async (i) => {
    const tk = `tok-${i}`;
    const ek = `ek-${i}`;
    await a.createToken(token(tk), audit('token.create'));
    // a manifest-style token keeps two sessions open, one started through each instance
    const session = (id: string) => ({
      id,
      tokenId: tk,
      ekHash: ek,
      akPub: Buffer.from('ak'),
      secretHash: Buffer.alloc(32),
      nonce: Buffer.alloc(32),
      ip: null,
      createdAt: NOW,
      expiresAt: NOW + HOUR,
      usedAt: null,
    });
    const start = (s: PostgresStore, id: string) =>
      s.startEnrollment({ tokenId: tk, ekHash: ek, now: NOW, session: session(id), audit: audit('enroll.start'), keepOtherSessions: true });
    assert.deepEqual(await Promise.all([start(a, `sa-${i}`), start(b, `sb-${i}`)]), ['ok', 'ok']);
    const finish = (s: PostgresStore, sid: string, dev: string) =>
      s.finishEnrollment({
        tokenId: tk,
        sessionId: sid,
        now: NOW,
        device: device(dev, ek),
        certificate: cert(`c-${dev}`, dev),
        nonce: nonce(`n-${dev}`, dev),
        keepNonces: 2,
        audit: audit('enroll.finish'),
      });
    const da = `dev-a-${String(i).padStart(12, '0')}`;
    const db = `dev-b-${String(i).padStart(12, '0')}`;
    const [ra, rb] = await Promise.all([finish(a, `sa-${i}`, da), finish(b, `sb-${i}`, db)]);
    const tok = (await a.getToken(tk))!;
    assert.equal(tok.deviceId, ra === true ? da : db, 'the token names the device of the winner');
    return [ra === true, rb === true];
  });
  assert.equal((await a.listDevices()).length, ROUNDS, 'one device per token');
  const v = await b.verifyAudit();
  assert.equal(v.ok, true, JSON.stringify(v));
  // token, two starts and the winner's finish per round; the loser wrote nothing
  assert.equal(v.rows, 4 * ROUNDS);
  t.diagnostic(`finishEnrollment wins a/b: ${wins.join('/')}`);
});

test('two instances renew on the same nonce: exactly one certificate every round, the next nonce chains on', async (t) => {
  const [a, b] = await twoInstances(t);
  const id = 'dev-0000000000000002';
  let current = await enroll(a, id, 'ek-2');
  const before = (await a.verifyAudit()).rows;
  const wins = await rounds('renew', async (i) => {
    const renew = (s: PostgresStore, who: string) =>
      s.renew({
        nonce: current,
        now: NOW + i,
        deviceId: id,
        patch: { lastSeen: NOW + i },
        certificate: cert(`r-${i}-${who}`, id),
        nextNonce: nonce(`nx-${i}-${who}`, id),
        keepNonces: 2,
        audit: audit('renew', { by: who }),
      });
    const r = await Promise.all([renew(a, 'a'), renew(b, 'b')]);
    current = `nx-${i}-${r[0] ? 'a' : 'b'}`;
    return r;
  });
  assert.equal((await b.listCertificates(id)).length, ROUNDS + 1, 'the enrollment certificate and one per round');
  const v = await a.verifyAudit();
  assert.equal(v.ok, true, JSON.stringify(v));
  assert.equal(v.rows, before + ROUNDS);
  t.diagnostic(`renew wins a/b: ${wins.join('/')}`);
});

test('two instances claim the same manifest entry: exactly one token is minted every round', async (t) => {
  const [a, b] = await twoInstances(t);
  const entries = Array.from({ length: ROUNDS }, (_, i) => ({
    id: `allow-${i}`,
    ekId: `ek-allow-${i}`,
    zone: 'default',
    owner: 'o',
    name: null,
    source: 'manifest.json',
    importedBy: 'admin',
    importedAt: NOW,
    tokenId: null,
  }));
  assert.equal((await a.importEkAllow(entries, (added) => audit('ek_allow.import', { n: added.length }))).length, ROUNDS);
  await rounds('claimEkAllow', async (i) => {
    const claim = (s: PostgresStore, who: string) =>
      s.claimEkAllow({ entryId: `allow-${i}`, previousTokenId: null, token: { ...token(`mt-${i}-${who}`), ekHash: `ek-allow-${i}` } });
    return Promise.all([claim(a, 'a'), claim(b, 'b')]);
  });
  const listed = await b.listEkAllow();
  assert.equal(listed.filter((e) => e.tokenId !== null).length, ROUNDS);
  assert.equal((await a.listTokens()).length, ROUNDS, 'no token of a lost claim was stored');
});

test('a revocation on one instance and a renewal on the other: the renewal either lands before (and its certificate is revoked) or is refused', async (t) => {
  const [a, b] = await twoInstances(t);
  let before = 0;
  let after = 0;
  for (let i = 0; i < ROUNDS; i++) {
    const id = `dev-r-${String(i).padStart(12, '0')}`;
    const n = await enroll(a, id, `ek-r-${i}`);
    const [renewed, serials] = await Promise.all([
      b.renew({
        nonce: n,
        now: NOW,
        deviceId: id,
        patch: {},
        certificate: cert(`rr-${i}`, id),
        nextNonce: nonce(`rn-${i}`, id),
        keepNonces: 2,
        audit: audit('renew'),
      }),
      a.endDevice({ deviceId: id, status: 'revoked', reason: 'key-compromise', statusReason: 'race', now: NOW, audit: audit('revoke') }),
    ]);
    if (renewed) {
      before++;
      assert.deepEqual(serials.sort(), [`c-${id}`, `rr-${i}`].sort(), `round ${i}: a renewal that won is revoked with the device`);
    } else {
      after++;
      assert.deepEqual(serials, [`c-${id}`], `round ${i}`);
      assert.equal((await a.listCertificates(id)).length, 1, `round ${i}: the refused renewal left no certificate`);
    }
    assert.equal((await b.getDevice(id))!.status, 'revoked');
    assert.equal((await b.listCertificates(id)).filter((c) => c.revokedAt === null).length, 0, `round ${i}: no live certificate`);
  }
  const v = await a.verifyAudit();
  assert.equal(v.ok, true, JSON.stringify(v));
  t.diagnostic(`renewal first: ${before}, revocation first: ${after}`);
});

test('an instance whose database is unreachable answers store_unavailable, and does not crash', async (t) => {
  const url = await freshPostgresDatabase();
  const s = await PostgresStore.open({ url, poolSize: 2, connectTimeoutMs: 2000 });
  t.after(() => s.close());
  // another instance's view of a database that went away: every connection of its pool is cut
  const admin = await pgClient(t, (await postgresServer()).url);
  await s.appendAudit(audit('before'));
  const dbName = new URL(url).pathname.slice(1);
  await admin.query(`ALTER DATABASE ${dbName} ALLOW_CONNECTIONS false`);
  await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [dbName]);
  await assert.rejects(s.getToken('x'), (e: any) => e.code === 'store_unavailable' && !/postgres:\/\//.test(e.message));
  await assert.rejects(s.appendAudit(audit('during')), (e: any) => e.code === 'store_unavailable');
  await admin.query(`ALTER DATABASE ${dbName} ALLOW_CONNECTIONS true`);
  // back as soon as the database is: no restart
  await s.appendAudit(audit('after'));
  const v = await s.verifyAudit();
  assert.deepEqual([v.ok, v.rows], [true, 2]);
});

test('three instances starting together on an empty database: the schema is migrated once, every instance opens', async (t) => {
  const url = await freshPostgresDatabase();
  const stores = await Promise.all([0, 1, 2].map(() => PostgresStore.open({ url, poolSize: 2 })));
  t.after(() => Promise.all(stores.map((s) => s.close())));
  const froms = stores.map((s) => s.schema.from).sort();
  const newest = stores[0]!.schema.to;
  assert.deepEqual(froms, [0, newest, newest], 'one migrated from 0, the others found it done');
  const versions = (await stores[1]!.pool.query('SELECT version FROM schema_version ORDER BY version')).rows.map((r) => r.version);
  assert.deepEqual(
    versions,
    Array.from({ length: newest }, (_, i) => i + 1),
  );
});

test('a connection cut while checked out (the database restarted mid-transaction) is reported, not a crash, and the pool goes on', async (t) => {
  const url = await freshPostgresDatabase();
  const errors: Error[] = [];
  const s = await PostgresStore.open({ url, poolSize: 2, onError: (e) => errors.push(e) });
  t.after(() => s.close());
  const root = await pgClient(t, (await postgresServer()).url);
  const c = await s.pool.connect();
  const pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
  await c.query('BEGIN');
  await root.query('SELECT pg_terminate_backend($1)', [pid]);
  const { waitFor } = await import('../../scripts/harness/wait.js');
  await waitFor('the cut connection to be reported', () => errors.length > 0);
  c.release(true);
  await s.appendAudit(audit('after the cut'));
  assert.equal((await s.verifyAudit()).ok, true);
});
