/**
 * The store's operations, on every store (test/helpers/stores.ts: SQLite and PostgreSQL): the
 * audit chain and its tamper checks, token binding, all-or-nothing enrollment and renewal, the
 * inventory listing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { SqliteStore } from '../../enroll-server/store/sqlite.js';
import type { EnrollSessionRecord, TokenRecord } from '../../enroll-server/store/store.js';
import { forEachStore, sqliteKind } from '../helpers/stores.js';

const audit = (event: string, n = 0) => ({ time: 1_700_000_000_000 + n, actor: 'test', event, outcome: 'ok' as const, details: { n } });

function token(id: string, expiresAt = Date.now() + 3600_000): TokenRecord {
  return {
    id,
    secretHash: createHash('sha256').update(id).digest(),
    zone: 'default',
    owner: 'o',
    name: null,
    purpose: null,
    createdBy: 'admin',
    createdAt: Date.now(),
    expiresAt,
    ekHash: null,
    boundAt: null,
    usedAt: null,
    deviceId: null,
  };
}

function session(id: string, tokenId: string, ekHash: string): EnrollSessionRecord {
  return {
    id,
    tokenId,
    ekHash,
    akPub: Buffer.from('ak'),
    secretHash: Buffer.alloc(32),
    nonce: Buffer.alloc(32),
    ip: null,
    createdAt: Date.now(),
    expiresAt: Date.now() + 600_000,
    usedAt: null,
  };
}

// SQLite only: the file's mode and journal mode (PostgreSQL keeps its files itself)
test('sqlite: the database file is created 0600 in WAL mode', async (t) => {
  const s = (await sqliteKind.open(t)).store as SqliteStore;
  assert.equal((await stat(s.file)).mode & 0o777, 0o600);
  assert.equal(s.db.pragma('journal_mode', { simple: true }), 'wal');
});

forEachStore((kind) => {
  test(`${kind.name}: an intact audit chain verifies`, async (t) => {
    const { store: s } = await kind.open(t);
    for (let i = 0; i < 5; i++) await s.appendAudit(audit('e', i));
    assert.deepEqual(await s.verifyAudit(), { ok: true, rows: 5 });
  });

  test(`${kind.name}: audit verify detects an edited row`, async (t) => {
    const { store: s, exec } = await kind.open(t);
    for (let i = 0; i < 5; i++) await s.appendAudit(audit('e', i));
    await exec(`UPDATE audit SET outcome = 'fail' WHERE seq = 3`);
    const r = await s.verifyAudit();
    assert.equal(r.ok, false);
    assert.deepEqual([r.problem?.seq, r.problem?.kind], [3, 'hash_mismatch']);
  });

  test(`${kind.name}: audit verify detects a row edited together with its own hash`, async (t) => {
    const { store: s, exec } = await kind.open(t);
    for (let i = 0; i < 5; i++) await s.appendAudit(audit('e', i));
    await exec(`UPDATE audit SET hash = ? WHERE seq = 2`, 'f'.repeat(64));
    const r = await s.verifyAudit();
    assert.equal(r.ok, false);
    assert.equal(r.problem?.seq, 2);
  });

  test(`${kind.name}: audit verify detects a deleted row in the middle`, async (t) => {
    const { store: s, exec } = await kind.open(t);
    for (let i = 0; i < 5; i++) await s.appendAudit(audit('e', i));
    await exec(`DELETE FROM audit WHERE seq = 2`);
    const r = await s.verifyAudit();
    assert.equal(r.ok, false);
    assert.deepEqual([r.problem?.seq, r.problem?.kind], [3, 'gap']);
  });

  test(`${kind.name}: audit verify detects deleted rows at the end`, async (t) => {
    const { store: s, exec } = await kind.open(t);
    for (let i = 0; i < 5; i++) await s.appendAudit(audit('e', i));
    await exec(`DELETE FROM audit WHERE seq >= 4`);
    const r = await s.verifyAudit();
    assert.equal(r.ok, false);
    assert.equal(r.problem?.kind, 'head_mismatch');
  });

  test(`${kind.name}: a token binds to the first EK; the same EK may start again, another EK is refused`, async (t) => {
    const { store: s } = await kind.open(t);
    await s.createToken(token('t1'), audit('token.create'));
    const now = Date.now();
    assert.equal(
      await s.startEnrollment({ tokenId: 't1', ekHash: 'ek-a', now, session: session('s1', 't1', 'ek-a'), audit: audit('start') }),
      'ok',
    );
    assert.equal(
      await s.startEnrollment({ tokenId: 't1', ekHash: 'ek-b', now, session: session('s2', 't1', 'ek-b'), audit: audit('start') }),
      'bound_other',
    );
    assert.equal(
      await s.startEnrollment({ tokenId: 't1', ekHash: 'ek-a', now, session: session('s3', 't1', 'ek-a'), audit: audit('start') }),
      'ok',
    );
    assert.notEqual((await s.getSession('s1'))!.usedAt, null, 'the retry supersedes the earlier session');
    assert.equal(await s.getSession('s2'), null);
    assert.equal((await s.getToken('t1'))!.ekHash, 'ek-a');
  });

  test(`${kind.name}: an expired or spent token cannot start an enrollment`, async (t) => {
    const { store: s } = await kind.open(t);
    await s.createToken(token('t1', Date.now() - 1), audit('token.create'));
    assert.equal(
      await s.startEnrollment({ tokenId: 't1', ekHash: 'ek', now: Date.now(), session: session('s1', 't1', 'ek'), audit: audit('x') }),
      'expired',
    );
    await s.createToken(token('t2'), audit('token.create'));
    await s.failEnrollment({ tokenId: 't2', sessionId: null, now: Date.now(), audit: audit('fail') });
    assert.equal(
      await s.startEnrollment({ tokenId: 't2', ekHash: 'ek', now: Date.now(), session: session('s2', 't2', 'ek'), audit: audit('x') }),
      'used',
    );
    assert.equal(
      await s.startEnrollment({ tokenId: 'nope', ekHash: 'ek', now: Date.now(), session: session('s3', 'nope', 'ek'), audit: audit('x') }),
      'missing',
    );
  });

  test(`${kind.name}: finishEnrollment is all or nothing and works once per token`, async (t) => {
    const { store: s } = await kind.open(t);
    await s.createToken(token('t1'), audit('token.create'));
    const now = Date.now();
    await s.startEnrollment({ tokenId: 't1', ekHash: 'ek', now, session: session('s1', 't1', 'ek'), audit: audit('start') });
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
      baseline: { 0: 'aa' },
      claims: { agentVersion: '1' },
      baselineWindowUntil: null,
      enrolledBy: 'admin',
      enrolledAt: now,
      retireBy: null,
      lastSeen: now,
      lastIp: null,
    };
    const cert = {
      serial: 'aa'.repeat(16),
      deviceId: device.id,
      notBefore: now,
      notAfter: now + 3600_000,
      spkiHash: 'x',
      issuedAt: now,
      revokedAt: null,
      reason: null,
    };
    const nonce = { value: 'n1', deviceId: device.id, createdAt: now, expiresAt: now + 600_000, usedAt: null };
    const p = { tokenId: 't1', sessionId: 's1', now, device, certificate: cert, nonce, keepNonces: 5, audit: audit('finish') };
    assert.equal(await s.finishEnrollment(p), true);
    const rows = (await s.listAudit()).length;
    assert.equal(
      await s.finishEnrollment({
        ...p,
        device: { ...device, id: 'dev-0000000000000002' },
        certificate: { ...cert, serial: 'bb'.repeat(16) },
        nonce: { ...nonce, value: 'n2' },
      }),
      false,
    );
    assert.equal((await s.listDevices()).length, 1);
    assert.equal((await s.listAudit()).length, rows, 'the lost race wrote nothing');
    assert.equal((await s.getToken('t1'))!.deviceId, device.id);

    // renew spends the nonce once; the next nonce and certificate land together
    const r = {
      nonce: 'n1',
      now,
      deviceId: device.id,
      patch: { lastSeen: now + 1 },
      certificate: { ...cert, serial: 'cc'.repeat(16) },
      nextNonce: { ...nonce, value: 'n3' },
      keepNonces: 5,
      audit: audit('renew'),
    };
    assert.equal(await s.renew(r), true);
    assert.equal(await s.renew({ ...r, certificate: { ...cert, serial: 'dd'.repeat(16) }, nextNonce: { ...nonce, value: 'n4' } }), false);
    assert.equal((await s.listCertificates(device.id)).length, 2);

    const serials = await s.endDevice({
      deviceId: device.id,
      status: 'revoked',
      reason: 'key-compromise',
      statusReason: 'x',
      now: now + 2,
      audit: audit('revoke'),
    });
    assert.deepEqual(serials.sort(), ['aa'.repeat(16), 'cc'.repeat(16)]);
    assert.equal((await s.getNonce('n3'))!.usedAt, now + 2, 'open nonces die with the device');
    assert.equal((await s.listRevokedUnexpired(now + 3)).length, 2);
    assert.equal((await s.verifyAudit()).ok, true);
  });

  test(`${kind.name}: the device listing filters in the query and carries each device newest certificate`, async (t) => {
    const { store: s } = await kind.open(t);
    const now = 1_760_000_000_000;
    const hour = 3600_000;
    const base = {
      owner: 'o',
      name: null,
      purpose: null,
      statusReason: null,
      statusChangedAt: now,
      ekHash: 'ek',
      akPub: Buffer.from('ak'),
      akName: null,
      baseline: null,
      claims: null,
      baselineWindowUntil: null,
      enrolledBy: 'admin',
      retireBy: null,
      lastIp: null,
    };
    const devices = [
      { ...base, id: 'dev-0000000000000001', zone: 'a', status: 'active' as const, enrolledAt: now - 10 * hour, lastSeen: now - 5 * hour },
      { ...base, id: 'dev-0000000000000002', zone: 'a', status: 'active' as const, enrolledAt: now - 10 * hour, lastSeen: now - 1 * hour },
      { ...base, id: 'dev-0000000000000003', zone: 'b', status: 'quarantined' as const, enrolledAt: now - 10 * hour, lastSeen: null },
      { ...base, id: 'dev-0000000000000004', zone: 'b', status: 'revoked' as const, enrolledAt: now - 10 * hour, lastSeen: now - 9 * hour },
    ];
    for (const [i, d] of devices.entries()) {
      await s.createToken(token(`t${i}`), audit('token.create'));
      // one live device per EK: each device its own TPM
      await s.startEnrollment({
        tokenId: `t${i}`,
        ekHash: `ek${i}`,
        now,
        session: session(`s${i}`, `t${i}`, `ek${i}`),
        audit: audit('start'),
      });
      const cert = {
        serial: `${i}0`,
        deviceId: d.id,
        notBefore: now,
        notAfter: now + hour,
        spkiHash: 'x',
        issuedAt: now,
        revokedAt: null,
        reason: null,
      };
      await s.finishEnrollment({
        tokenId: `t${i}`,
        sessionId: `s${i}`,
        now,
        device: { ...d, ekHash: `ek${i}` },
        certificate: cert,
        nonce: { value: `n${i}`, deviceId: d.id, createdAt: now, expiresAt: now + hour, usedAt: null },
        keepNonces: 5,
        audit: audit('finish'),
      });
    }
    // a newer certificate for device 1 (renewal)
    await s.renew({
      nonce: 'n0',
      now,
      deviceId: devices[0]!.id,
      patch: {},
      certificate: {
        serial: '0b',
        deviceId: devices[0]!.id,
        notBefore: now,
        notAfter: now + 2 * hour,
        spkiHash: 'x',
        issuedAt: now,
        revokedAt: null,
        reason: null,
      },
      nextNonce: { value: 'n9', deviceId: devices[0]!.id, createdAt: now, expiresAt: now + hour, usedAt: null },
      keepNonces: 5,
      audit: audit('renew'),
    });

    const ids = (l: { device: { id: string } }[]) => l.map((r) => r.device.id.slice(-1));
    const all = await s.listDevicesWithLastCertificate();
    assert.deepEqual(ids(all), ['1', '2', '3', '4']);
    assert.deepEqual(
      all.map((r) => r.lastCertificate?.serial),
      ['0b', '10', '20', '30'],
    );
    assert.deepEqual(ids(await s.listDevicesWithLastCertificate({ zone: 'b' })), ['3', '4']);
    assert.deepEqual(ids(await s.listDevicesWithLastCertificate({ status: ['active'] })), ['1', '2']);
    // stale: live and last contact (or enrollment) before the cut-off, here 2 h ago
    const before = now - 2 * hour;
    assert.deepEqual(ids(await s.listDevicesWithLastCertificate({ stale: { is: true, before } })), ['1', '3']);
    assert.deepEqual(ids(await s.listDevicesWithLastCertificate({ stale: { is: false, before } })), ['2', '4']);
    assert.deepEqual(ids(await s.listDevicesWithLastCertificate({ zone: 'a', stale: { is: true, before } })), ['1']);
    assert.deepEqual(await s.countDevicesByStatus(), { active: 2, quarantined: 1, revoked: 1 });
  });

  test(`${kind.name}: a user's role and zones change with its audit row; the last enabled admin cannot be demoted or disabled`, async (t) => {
    const { store: s } = await kind.open(t);
    const user = (name: string, role: 'admin' | 'operator') => ({
      name,
      role,
      zones: role === 'admin' ? null : ['a'],
      tokenHash: randomBytes(32),
      createdBy: 'test',
      createdAt: 1,
      expiresAt: null,
      disabledAt: null,
      disabledBy: null,
      tokenRotatedAt: null,
      bootstrap: false,
    });
    assert.equal(await s.createUser(user('root', 'admin'), audit('user.add')), true);
    assert.equal(await s.createUser(user('ann', 'operator'), audit('user.add')), true);
    assert.equal(await s.updateUser('ann', { role: 'admin', zones: null }, audit('user.set_role'), { keepAdminAt: 2 }), true);
    assert.deepEqual([(await s.getUser('ann'))!.role, (await s.getUser('ann'))!.zones], ['admin', null]);
    assert.equal(await s.updateUser('root', { role: 'operator', zones: ['a', 'b'] }, audit('user.set_role'), { keepAdminAt: 3 }), true);
    assert.deepEqual((await s.getUser('root'))!.zones, ['a', 'b']);
    const rows = (await s.listAudit()).length;
    // ann is the last admin now: neither demoting nor disabling her goes through, and nothing is written
    assert.equal(await s.updateUser('ann', { role: 'viewer', zones: ['a'] }, audit('user.set_role'), { keepAdminAt: 4 }), 'last_admin');
    assert.equal(
      await s.updateUser('ann', { disabledAt: 4, disabledBy: 'user:root' }, audit('user.disable'), { keepAdminAt: 4 }),
      'last_admin',
    );
    assert.equal((await s.getUser('ann'))!.role, 'admin');
    assert.equal((await s.getUser('ann'))!.disabledAt, null);
    assert.equal((await s.listAudit()).length, rows);
    assert.deepEqual(await s.verifyAudit(), { ok: true, rows });
  });
});
