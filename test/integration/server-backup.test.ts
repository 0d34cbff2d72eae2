/**
 * Backup and restore with real processes: `edgeid-admin backup` asks the running server for a
 * snapshot while devices (real swtpm TPMs) renew in a loop and unknown callers keep writing
 * audit rows; the server is stopped, `edgeid-server restore` writes the backup into a fresh data
 * dir, and the restored server runs on the old address. Then every device renews without
 * re-enrolling (including the ones whose newest certificate was issued after the backup and is
 * unknown to the restored server), the device revoked before the backup stays revoked, a renewal
 * request and an enrollment token spent before the backup are refused with their codes, the
 * tokens the backup held unused are voided, and `edgeid-admin audit verify` passes across the
 * restore, whose own audit row names the backup's time and chain head.
 *
 * Env: BACKUP_DEVICES (live devices, default 3), BACKUP_POST_RENEWALS (renewals that must complete
 * after the backup before the old server stops, default 2).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFile, stat, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { restoreBackup } from '../../enroll-server/backup/backup.js';
import { readPassphrase } from '../../enroll-server/backup/format.js';
import { DeviceHttpError, TestDevice, httpsTransport, type Transport } from '../helpers/device.js';
import { cleanEnv, runCli } from '../helpers/cli.js';
import { startServerProcess, type ServerProcess } from '../../scripts/harness/server.js';
import { startSwtpm, extendBootPcrs, type Swtpm } from '../../scripts/harness/swtpm.js';
import { notPrivate, tmpDir } from '../../scripts/harness/fs.js';
import { recordSecret } from '../../scripts/harness/secrets.js';
import { waitFor } from '../../scripts/harness/wait.js';

const LIVE = Number(process.env.BACKUP_DEVICES ?? 3);
const POST = Number(process.env.BACKUP_POST_RENEWALS ?? 2);
const CONFIG = {
  rateLimit: { renew: { max: 100_000, window: 60 }, perAddress: { max: 100_000, window: 60 }, enroll: { max: 1000, window: 60 } },
};
const PASSPHRASE = 'correct horse battery staple 42';

async function token(srv: ServerProcess, name: string): Promise<{ id: string; token: string }> {
  const r = await srv.admin<{ id: string; token: string }>('POST', '/v1/admin/tokens', {
    zone: 'default',
    owner: 'plant',
    name,
    ttlSeconds: 3600,
  });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  recordSecret(r.body.token, 'enrollment token');
  return r.body;
}

/** challenge + renew until it succeeds once; returns the issuing response. */
async function renewOnce(dev: TestDevice, http: Transport): Promise<{ serial: string }> {
  let r = await dev.renew(http);
  if (r.status !== 200) {
    const ch = await dev.challenge(http);
    assert.equal(ch.status, 200, JSON.stringify(ch.body));
    r = await dev.renew(http);
  }
  if (r.status !== 200) throw new DeviceHttpError('renew', r);
  return { serial: new X509Certificate(r.body.certificate).serialNumber.toLowerCase() };
}

test('backup during renewals, restore on a fresh data dir, restored server on the old address', async (t) => {
  const work = await tmpDir('edgeid-backup-', t);
  const srv = await startServerProcess({ config: CONFIG });
  t.after(() => srv.close());
  const http = httpsTransport(srv.url, srv.caPem);

  const tpms: Swtpm[] = [];
  const devices: TestDevice[] = [];
  const tokens: string[] = [];
  for (let i = 0; i <= LIVE; i++) {
    const tpm = await startSwtpm();
    t.after(() => tpm.stop());
    await extendBootPcrs(tpm.tcti);
    tpms.push(tpm);
    const dev = await TestDevice.create(tpm.tcti);
    t.after(() => dev.close());
    const tk = await token(srv, `dev-${i}`);
    await dev.enroll(http, tk.token);
    devices.push(dev);
    tokens.push(tk.token);
  }
  const live = devices.slice(0, LIVE);
  const revoked = devices[LIVE]!;
  const rv = await srv.admin('POST', `/v1/admin/devices/${revoked.deviceId}/revoke`, { reason: 'key-compromise' });
  assert.equal(rv.status, 200, JSON.stringify(rv.body));

  // a renewal request spent before the backup, kept to be replayed after the restore
  const spent = await live[0]!.renewRequest();
  const first = await http.post('/v1/renew', spent.request);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  live[0]!.accept(first.body, spent.sessionKey);
  // a token created before the backup and never used: voided by the restore
  const unused = await token(srv, 'never-used');

  // load: every live device renews in a loop; unknown callers ask for challenges (audited refusals)
  let stop = false;
  let backupDoneAt = 0;
  const postBackup = new Map<string, string>(); // deviceId -> serial issued after the backup completed
  let renewals = 0;
  let refusals = 0;
  const loops = live.map(async (dev) => {
    while (!stop) {
      const { serial } = await renewOnce(dev, http);
      renewals++;
      if (backupDoneAt) postBackup.set(dev.deviceId!, serial);
    }
  });
  const noise = (async () => {
    while (!stop) {
      const r = await http.post('/v1/renew/challenge', { deviceId: `dev-${'0'.repeat(15)}${refusals % 10}` });
      assert.equal(r.status, 403, JSON.stringify(r.body));
      refusals++;
    }
  })();
  await waitFor('renewals under way', async () => (renewals >= LIVE ? true : null), { timeoutMs: 120_000, intervalMs: 50 });

  const pass = path.join(work, 'passphrase');
  await writeFile(pass, PASSPHRASE + '\n', { mode: 0o600 });
  recordSecret(PASSPHRASE, 'backup passphrase');
  const backupFile = path.join(work, 'edgeid.backup');
  const renewalsBefore = renewals;
  const t0 = performance.now();
  const b = await runCli('edgeid-admin', ['backup', '--out', backupFile, '--passphrase-file', pass, '--data', srv.dataDir, '--json']);
  const backupMs = performance.now() - t0;
  backupDoneAt = Date.now();
  assert.equal(b.code, 0, b.stderr);
  const summary = JSON.parse(b.stdout.toString()) as { bytes: number; auditHead: { seq: number; hash: string } };
  const renewalsDuring = renewals - renewalsBefore;
  assert.equal((await stat(backupFile)).mode & 0o777, 0o600);
  // the file holds no key or token in the clear
  const raw = await readFile(backupFile);
  assert.ok(!raw.includes('PRIVATE KEY'), 'the backup is encrypted');
  assert.ok(!raw.includes(srv.adminToken), 'the admin token is not in the clear');

  // renewals go on after the backup: some certificates will be unknown to the restored server
  await waitFor('renewals after the backup', async () => (postBackup.size >= Math.min(POST, LIVE) ? true : null), {
    timeoutMs: 120_000,
    intervalMs: 50,
  });
  stop = true;
  await Promise.all([...loops, noise]);
  await srv.stop();
  t.diagnostic(
    `backup ${Math.round(backupMs)} ms, ${summary.bytes} bytes, audit head ${summary.auditHead.seq}; ` +
      `${renewalsDuring} renewals completed while it ran; ${postBackup.size} devices renewed after it; ${refusals} refused challenges`,
  );

  // refusals first: nothing is written
  const target = path.join(work, 'restored');
  const wrong = path.join(work, 'wrong');
  await writeFile(wrong, 'not the passphrase at all\n', { mode: 0o600 });
  const bad = await runCli('edgeid-server', ['restore', backupFile, '--data', target, '--passphrase-file', wrong]);
  assert.equal(bad.code, 1, bad.stderr);
  assert.match(bad.stderr, /backup_passphrase_wrong/);
  await assert.rejects(stat(target), { code: 'ENOENT' });
  // the other refusals through the same function the CLI runs (each CLI start costs seconds)
  const cut = Buffer.from(raw.subarray(0, raw.length - 100));
  await assert.rejects(restoreBackup({ file: cut, passphrase: PASSPHRASE, dataDir: target }), { code: 'backup_corrupt' });
  const flipped = Buffer.from(raw);
  flipped[flipped.length - 200]! ^= 1;
  await assert.rejects(restoreBackup({ file: flipped, passphrase: PASSPHRASE, dataDir: target }), { code: 'backup_corrupt' });
  await assert.rejects(stat(target), { code: 'ENOENT' });
  const busy = path.join(work, 'busy');
  await mkdir(busy);
  await writeFile(path.join(busy, 'x'), 'x');
  await assert.rejects(restoreBackup({ file: raw, passphrase: PASSPHRASE, dataDir: busy }), { code: 'restore_target_not_empty' });
  const loose = path.join(work, 'loose');
  await writeFile(loose, PASSPHRASE + '\n', { mode: 0o644 });
  assert.throws(() => readPassphrase(loose), { code: 'backup_passphrase_missing' });

  // the restore, with the passphrase from the environment this time
  const r = await runCli('edgeid-server', ['restore', backupFile, '--data', target, '--json'], {
    env: cleanEnv({ EDGEID_BACKUP_PASSPHRASE: PASSPHRASE }),
  });
  assert.equal(r.code, 0, r.stderr);
  const restored = JSON.parse(r.stdout.toString()) as {
    backupAuditHead: { seq: number; hash: string };
    tokensVoided: number;
    auditSeq: number;
  };
  assert.deepEqual(restored.backupAuditHead, summary.auditHead);
  assert.ok(restored.tokensVoided >= 1, 'the unused token was voided');
  assert.deepEqual(await notPrivate(target, ['ca/root.pem', 'ca/intermediate.pem', 'ca/server.pem', 'ca/control.pem']), []);

  // the restored server on the old address
  const srv2 = await startServerProcess({ dataDir: target, port: srv.port, config: CONFIG });
  t.after(() => srv2.stop());
  assert.equal(srv2.url, srv.url);
  assert.equal(srv2.caFingerprint, srv.caFingerprint);
  const http2 = httpsTransport(srv2.url, srv2.caPem);

  for (const dev of live) {
    const known = await srv2.admin<{ device: { status: string; certificates?: { serial: string }[] } }>(
      'GET',
      `/v1/admin/devices/${dev.deviceId}`,
    );
    assert.equal(known.status, 200);
    const heldSerial = new X509Certificate(dev.certificate!).serialNumber.toLowerCase();
    const serials = new Set((known.body.device.certificates ?? []).map((c) => c.serial.toLowerCase()));
    if (postBackup.has(dev.deviceId!))
      assert.ok(!serials.has(heldSerial), 'a certificate issued after the backup is unknown to the restored server');
    // the nonce the device holds is void or unknown: it asks for a fresh challenge and renews
    const stale = await dev.renew(http2);
    assert.equal(stale.status, 401, JSON.stringify(stale.body));
    assert.ok(['nonce_unknown', 'nonce_expired'].includes(stale.body.error.code), stale.body.error.code);
    const { serial } = await renewOnce(dev, http2);
    assert.ok(serial);
    assert.equal(dev.deviceId, known.body.device && dev.deviceId);
  }

  // revoked before the backup: still revoked (the device proves its AK, so it learns why)
  const rc = await revoked.challenge(http2);
  assert.equal(rc.status, 403);
  assert.equal(rc.body.error.code, 'renewal_refused');
  const rr = await revoked.renew(http2);
  assert.equal(rr.status, 403, JSON.stringify(rr.body));
  assert.equal(rr.body.error.code, 'device_revoked');

  // a renewal request spent before the backup: its nonce stays spent
  const replay = await http2.post('/v1/renew', spent.request);
  assert.equal(replay.status, 409, JSON.stringify(replay.body));
  assert.equal(replay.body.error.code, 'nonce_used');

  // enrollment tokens: spent before the backup stay spent; unused ones are void (they may have been
  // spent after the backup)
  const used = await http2.post('/v1/enroll/start', revoked.startRequest(tokens[0]!));
  assert.equal(used.body.error?.code, 'token_used', JSON.stringify(used.body));
  const voided = await http2.post('/v1/enroll/start', revoked.startRequest(unused.token));
  assert.equal(voided.body.error?.code, 'token_expired', JSON.stringify(voided.body));

  // the audit chain verifies across the restore, and the restore row names the backup
  const verify = await runCli('edgeid-admin', ['audit', 'verify', '--data', target, '--json']);
  assert.equal(verify.code, 0, verify.stdout.toString() + verify.stderr);
  assert.equal(JSON.parse(verify.stdout.toString()).ok, true);
  const exp = await srv2.admin<{ rows: { seq: number; event: string; hash: string; prevHash: string; details: any }[] }>(
    'GET',
    `/v1/admin/audit?after=${summary.auditHead.seq - 1}&limit=5`,
  );
  const [before, restoreRow] = exp.body.rows;
  assert.equal(before!.seq, summary.auditHead.seq);
  assert.equal(before!.hash, summary.auditHead.hash);
  assert.equal(restoreRow!.event, 'server.restore');
  assert.equal(restoreRow!.prevHash, summary.auditHead.hash);
  assert.deepEqual(restoreRow!.details.backupAuditHead, summary.auditHead);
  assert.equal(typeof restoreRow!.details.backupCreatedAt, 'string');
});
