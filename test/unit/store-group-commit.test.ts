import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { SqliteStore } from '../../enroll-server/store/sqlite.js';

const audit = (event: string) => ({ time: Date.now(), actor: 'test', event, outcome: 'ok' as const });

async function enrolled(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-group-'));
  const s = new SqliteStore(path.join(dir, 'edgeid.db'));
  t.after(async () => {
    await s.close();
    await rm(dir, { recursive: true, force: true });
  });
  const now = Date.now();
  await s.createToken(
    {
      id: 't1',
      secretHash: Buffer.alloc(32),
      zone: 'default',
      owner: 'o',
      name: null,
      purpose: null,
      createdBy: 'admin',
      createdAt: now,
      expiresAt: now + 3600_000,
      ekHash: null,
      boundAt: null,
      usedAt: null,
      deviceId: null,
    },
    audit('token.create'),
  );
  const session = {
    id: 's1',
    tokenId: 't1',
    ekHash: 'ek',
    akPub: Buffer.from('ak'),
    secretHash: Buffer.alloc(32),
    nonce: Buffer.alloc(32),
    ip: null,
    createdAt: now,
    expiresAt: now + 600_000,
    usedAt: null,
  };
  assert.equal(await s.startEnrollment({ tokenId: 't1', ekHash: 'ek', now, session, audit: audit('start') }), 'ok');
  const device = {
    id: 'dev-0000000000000001',
    zone: 'default',
    owner: 'o',
    name: null,
    purpose: null,
    status: 'active' as const,
    statusReason: null,
    statusChangedAt: now,
    ekHash: 'ek',
    akPub: Buffer.from('ak'),
    akName: null,
    baseline: null,
    claims: null,
    baselineWindowUntil: null,
    enrolledBy: 'admin',
    enrolledAt: now,
    retireBy: null,
    lastSeen: now,
    lastIp: null,
  };
  const cert = (serial: string) => ({
    serial,
    deviceId: device.id,
    notBefore: now,
    notAfter: now + 3600_000,
    spkiHash: 'x',
    issuedAt: now,
    revokedAt: null,
    reason: null,
  });
  const nonce = (value: string) => ({ value, deviceId: device.id, createdAt: now, expiresAt: now + 600_000, usedAt: null });
  assert.equal(
    await s.finishEnrollment({
      tokenId: 't1',
      sessionId: 's1',
      now,
      device,
      certificate: cert('00'.repeat(16)),
      nonce: nonce('first'),
      keepNonces: 5,
      audit: audit('finish'),
    }),
    true,
  );
  return { s, now, device, cert, nonce };
}

test('group commit: writes asked for together commit together, each with its own outcome, in the order asked', async (t) => {
  const { s, now, device, cert, nonce } = await enrolled(t);
  const n = 40;
  await Promise.all(Array.from({ length: n }, (_, i) => s.createNonce(nonce(`c${i}`), 100, audit(`challenge ${i}`), 'net')));
  const before = (await s.listAudit()).at(-1)!.seq;
  const renew = (i: number, spend: string, serial: string) =>
    s.renew({
      nonce: spend,
      now,
      deviceId: device.id,
      patch: { lastSeen: now + i },
      certificate: cert(serial),
      nextNonce: nonce(`next${i}`),
      keepNonces: 200,
      audit: audit(`renew ${i}`),
    });
  const serial = (i: number) => i.toString(16).padStart(32, '0');
  const results = await Promise.allSettled([
    ...Array.from({ length: n }, (_, i) => renew(i, `c${i}`, serial(i + 1))),
    // the same nonce again, in the same group: loses, and writes nothing
    renew(n, 'c0', serial(n + 1)),
    // a certificate serial that is taken: this write fails alone (UNIQUE), the others stand
    renew(n + 1, 'first', serial(1)),
  ]);
  assert.deepEqual(
    results.slice(0, n).map((r) => r.status === 'fulfilled' && r.value),
    Array(n).fill(true),
  );
  assert.deepEqual(results[n], { status: 'fulfilled', value: false });
  assert.equal(results[n + 1]!.status, 'rejected');
  assert.match(String((results[n + 1] as PromiseRejectedResult).reason), /UNIQUE/);
  assert.equal((await s.getNonce('first'))!.usedAt, null, 'the failed write was rolled back: its nonce is still live');
  assert.equal(await s.getNonce(`next${n}`), null);
  assert.equal((await s.listCertificates(device.id)).length, n + 1);
  const rows = (await s.listAudit({ afterSeq: before })).map((r) => r.event);
  assert.deepEqual(
    rows,
    Array.from({ length: n }, (_, i) => `renew ${i}`),
  );
  assert.equal((await s.verifyAudit()).ok, true);
});

test('group commit: a store closed with writes pending commits them first', async (t) => {
  const { s, nonce } = await enrolled(t);
  const pending = s.createNonce(nonce('late'), 10, audit('challenge late'), 'net');
  await s.close();
  await pending;
  const again = new SqliteStore(s.file);
  t.after(() => again.close());
  assert.equal((await again.getNonce('late'))!.value, 'late');
  assert.equal((await again.verifyAudit()).ok, true);
});

test('group commit: no answer before the WAL is synced; a failed fsync refuses the group and every later write', async (t) => {
  const { s, nonce } = await enrolled(t);
  const synced: number[] = [];
  let fail = false;
  s.walFsync = (fd, cb) => {
    synced.push(fd);
    setTimeout(() => cb(fail ? Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' }) : null), 20);
  };
  let settled = false;
  const ok = s.createNonce(nonce('a'), 10, audit('challenge a'), 'net').then(() => (settled = true));
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(settled, false, 'the write is committed but not answered while its fsync runs');
  await ok;
  assert.equal(synced.length, 1);
  // writes asked for while an fsync runs share the next one
  await Promise.all([
    s.createNonce(nonce('b'), 10, audit('challenge b'), 'net'),
    new Promise((r) => setImmediate(r)).then(() => s.createNonce(nonce('c'), 10, audit('challenge c'), 'net')),
    new Promise((r) => setTimeout(r, 5)).then(() => s.createNonce(nonce('d'), 10, audit('challenge d'), 'net')),
  ]);
  assert.equal(synced.length, 3, 'b in one sync; c and d, asked for while it ran, in the next');
  // one descriptor of the WAL for the store's life, opened before its first write: a writeback
  // error is reported to it even when SQLite's own fsync (an automatic checkpoint) saw it first
  assert.equal(new Set(synced).size, 1);
  fail = true;
  await assert.rejects(
    s.createNonce(nonce('e'), 10, audit('challenge e'), 'net'),
    /could not be synced to disk \(EIO\); restart the server/,
  );
  fail = false;
  await assert.rejects(s.createNonce(nonce('f'), 10, audit('challenge f'), 'net'), /could not be synced to disk/);
  assert.equal(await s.getNonce('f'), null, 'nothing written after the failure');
  // every other write too, not only the hot path's
  const refused = /could not be synced to disk/;
  await assert.rejects(s.appendAudit(audit('after the failure')), refused);
  await assert.rejects(s.setMeta('k', 'v'), refused);
  await assert.rejects(s.nextCrlNumbers(1), refused);
  await assert.rejects(s.setAkName('d1', 'aa'), refused);
  assert.equal(await s.getMeta('k'), null);
});

test('group commit: a member whose error rolled the whole transaction back fails the group, and nothing of it stays', async (t) => {
  const { s, nonce } = await enrolled(t);
  // what SQLite does on SQLITE_FULL or SQLITE_IOERR inside a transaction: it may roll all of it
  // back (https://www.sqlite.org/lang_transaction.html); the ROLLBACK here stands for that
  const db = (s as unknown as { db: { exec(sql: string): void } }).db;
  const groupTx = (s as unknown as { groupTx<T>(fn: () => T): Promise<T> }).groupTx.bind(s);
  const full = Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
  const results = await Promise.allSettled([
    s.createNonce(nonce('before'), 10, audit('challenge before'), 'net'),
    groupTx(() => {
      db.exec('ROLLBACK');
      throw full;
    }),
    s.createNonce(nonce('after'), 10, audit('challenge after'), 'net'),
  ]);
  assert.deepEqual(
    results.map((r) => r.status === 'rejected' && r.reason),
    [full, full, full],
    'every member is refused with the error that rolled the transaction back',
  );
  assert.equal(await s.getNonce('before'), null, 'rolled back with the transaction');
  assert.equal(await s.getNonce('after'), null, 'not committed on its own after the rollback');
  assert.equal((await s.verifyAudit()).ok, true);
  // the store goes on
  await s.createNonce(nonce('later'), 10, audit('challenge later'), 'net');
  assert.equal((await s.getNonce('later'))!.value, 'later');
});

test('an I/O error SQLite reports (SQLITE_IOERR_*) refuses every later write, as a failed fsync of ours does', async (t) => {
  const { s, nonce } = await enrolled(t);
  const groupTx = (s as unknown as { groupTx<T>(fn: () => T): Promise<T> }).groupTx.bind(s);
  // what better-sqlite3 throws when SQLite's own fsync of a FULL commit or a checkpoint fails
  const ioerr = Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_FSYNC' });
  await assert.rejects(
    groupTx(() => {
      throw ioerr;
    }),
    (e) => e === ioerr,
  );
  const refused = /the database reported an I\/O error \(SQLITE_IOERR_FSYNC\); restart the server/;
  await assert.rejects(s.createNonce(nonce('after'), 10, audit('challenge after'), 'net'), refused);
  await assert.rejects(s.appendAudit(audit('after')), refused);
  await assert.rejects(s.setMeta('k', 'v'), refused);
  assert.equal(await s.getNonce('after'), null);
});

test('group commit: an I/O error in one member (the transaction still open) commits none of the group', async (t) => {
  const { s, nonce } = await enrolled(t);
  const groupTx = (s as unknown as { groupTx<T>(fn: () => T): Promise<T> }).groupTx.bind(s);
  // SQLite "might or might not" roll back on SQLITE_IOERR (https://www.sqlite.org/lang_transaction.html):
  // here it did not, so the members after this one would run, and the group commit, after the error
  const ioerr = Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_WRITE' });
  const results = await Promise.allSettled([
    s.createNonce(nonce('before'), 10, audit('challenge before'), 'net'),
    groupTx(() => {
      throw ioerr;
    }),
    s.createNonce(nonce('after'), 10, audit('challenge after'), 'net'),
  ]);
  assert.deepEqual(
    results.map((r) => r.status),
    ['rejected', 'rejected', 'rejected'],
  );
  assert.equal(await s.getNonce('after'), null, 'a write run after the I/O error was committed');
  assert.equal(await s.getNonce('before'), null, 'a write refused to its caller was committed');
  assert.equal((await s.verifyAudit()).ok, true);
});

test('an I/O error from a write outside a transaction (setMeta, nextCrlNumbers, setAkName) refuses every later write too', async (t) => {
  const { s } = await enrolled(t);
  const ioerr = Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_FSYNC' });
  const inner = s as unknown as { q(sql: string): { run(...a: unknown[]): unknown } };
  const q = inner.q.bind(s);
  inner.q = (sql: string) =>
    sql.startsWith('INSERT INTO meta')
      ? {
          run: () => {
            throw ioerr;
          },
        }
      : q(sql);
  await assert.rejects(s.setMeta('k', 'v'), (e) => e === ioerr);
  inner.q = q;
  const refused = /the database reported an I\/O error \(SQLITE_IOERR_FSYNC\); restart the server/;
  await assert.rejects(s.appendAudit(audit('after')), refused);
  await assert.rejects(s.setMeta('k', 'v'), refused);
});
