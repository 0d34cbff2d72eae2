import 'reflect-metadata';
/**
 * Crash safety of the enrollment server (a real edgeid-server process on SQLite), driven by
 * software devices (scripts/harness/softdevice.ts: byte-exact TPM structures, real HTTPS API).
 *
 *  1. The server verifies the software devices' evidence for real (a tampered quote is refused with
 *     its code and spends nothing).
 *  2. kill -9 of the server while EDGEID_CRASH_DEVICES (default 1000) renewals are in flight at once,
 *     with revocations running beside them; then a restart: every certificate a client received has
 *     its row (serial, device); every certificate row is accounted for (one spent nonce each); no
 *     nonce or enrollment token is accepted twice (each replayed after the restart, refused with its
 *     code; EDGEID_CRASH_ENROLLS, default 40, real enrollments are in flight at the kill: a token is
 *     used if and only if its device exists, one device per token, and a token whose enrollment did
 *     not commit enrolls exactly once more); every device renews again; `edgeid-admin audit verify` is green; the CRL lists exactly
 *     the revoked devices' live certificates.
 *  3. Power cut between the DB commit and the answer: see the test's comment for how it is timed;
 *     and the store syncs each commit (a power cut cannot roll back an answered renewal).
 *
 * Long mode: EDGEID_CRASH_DEVICES=5000 (and EDGEID_CRASH_ROUNDS, renewals per device before the
 * kill's round, default 1).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import Database from 'better-sqlite3';
import * as x509 from '@peculiar/x509';
import { SqliteStore } from '../../enroll-server/store/sqlite.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { adminCli, createToken, startServerProcess, type ServerProcess } from '../../scripts/harness/server.js';
import {
  challenge,
  createSoftDevice,
  enrollStartBody,
  renew,
  seedSoftDevices,
  softClient,
  type SoftClient,
  type SoftDevice,
} from '../../scripts/harness/softdevice.js';
import { softEk, softEnroll, type SoftEnrollResult } from '../../scripts/harness/softenroll.js';
import { waitFor } from '../../scripts/harness/wait.js';

const CONFIG = {
  rateLimit: {
    perAddress: { max: 1_000_000, window: 60 },
    enroll: { max: 1_000_000, window: 60 },
    renew: { max: 1_000_000, window: 60 },
    connectionsPerAddress: 20_000,
  },
  zones: { default: { lifetime: 3600 } },
  // the software EKs of scripts/harness/softenroll.ts have no EK certificate
  ek: { requireEkCertificate: false },
};

async function seededServer(t: { after(fn: () => Promise<void>): void }, devices: SoftDevice[]): Promise<ServerProcess> {
  const dataDir = path.join(await tmpDir('edgeid-server-crash-', t), 'data');
  // the first start creates the data dir (CA, admin token, schema); the devices are written while it is stopped
  const srv = await startServerProcess({ dataDir, config: CONFIG });
  t.after(() => srv.close());
  await srv.stop();
  await seedSoftDevices(dataDir, devices);
  await srv.start();
  return srv;
}

function openDb(srv: ServerProcess): Database.Database {
  return new Database(path.join(srv.dataDir, 'edgeid.db'), { readonly: true, fileMustExist: true });
}

/** kill -9, and wait until the process is gone. */
async function kill9(srv: ServerProcess): Promise<void> {
  const p = srv.proc!;
  const exited = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  await exited;
}

function isNetworkError(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return ['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ECONNABORTED'].includes(code ?? '') || /socket hang up|timed out/.test(String(e));
}

test('softdevice: the server verifies its quote, certify and CSR (a tampered quote is refused and spends nothing)', async (t) => {
  const devices = [createSoftDevice(), createSoftDevice()];
  const srv = await seededServer(t, devices);
  const client = softClient(srv.url, srv.caPem);
  t.after(() => client.close());
  const [a] = devices as [SoftDevice, SoftDevice];
  const ch = await challenge(a, client);
  assert.equal(ch.status, 200, JSON.stringify(ch.body));
  const bad = await renew(a, client, { tamperQuote: true });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.code, 'quote_bad_signature');
  const ok = await renew(a, client);
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  const again = await renew(a, client);
  assert.equal(again.status, 200, 'the next nonce from the answer renews again');
  const replay = await renew(a, client, { nonce: ok.nonce });
  assert.equal(replay.status, 409);
  assert.equal(replay.body.error.code, 'nonce_used');
  const db = openDb(srv);
  t.after(() => db.close());
  for (const serial of [ok.serial, again.serial]) {
    const row = db.prepare('SELECT device_id FROM certificates WHERE serial = ?').get(serial) as { device_id: string } | undefined;
    assert.equal(row?.device_id, a.deviceId, `certificate ${serial} has its row`);
  }
});

test('kill -9 of the server during 1000 concurrent renewals, then restart: nothing lost, nothing accepted twice', async (t) => {
  const N = Number(process.env.EDGEID_CRASH_DEVICES ?? 1000);
  const ENROLLS = Number(process.env.EDGEID_CRASH_ENROLLS ?? 40);
  const ROUNDS = Number(process.env.EDGEID_CRASH_ROUNDS ?? 1);
  const t0 = Date.now();
  const devices = Array.from({ length: N }, () => createSoftDevice());
  const srv = await seededServer(t, devices);
  t.diagnostic(`${N} devices seeded and server up in ${Date.now() - t0} ms`);
  const client = softClient(srv.url, srv.caPem, { maxSockets: N, timeoutMs: 300_000 });
  t.after(() => client.close());

  const received: { deviceId: string; serial: string; nonce: string }[] = [];
  /** Renewals whose answer never came (the kill): their outcome is the store's to tell. */
  const lost: { deviceId: string; nonce: string }[] = [];
  const fiveXx: string[] = [];
  const note = (what: string, r: { status: number; body: any }) => {
    if (r.status >= 500) fiveXx.push(`${what}: ${r.status} ${JSON.stringify(r.body)}`);
  };

  // The revocations beside the renewals: the first half during the warm-up, the second half with
  // the round the kill hits (answered before it, cut by it, or never received: whatever the timing).
  const REVOKED = Math.max(4, Math.floor(N / 50));
  const revokeAsked = devices.slice(0, REVOKED);
  const revokeAnswered = new Set<string>();
  const revokeOne = (d: SoftDevice) => {
    const call = adminPost(srv, `/v1/admin/devices/${d.deviceId}/revoke`, { reason: 'key-compromise' });
    const done = call.answer.then(
      (r) => {
        note('revoke', r);
        assert.equal(r.status, 200, JSON.stringify(r.body));
        revokeAnswered.add(d.deviceId!);
      },
      (e: unknown) => {
        if (!isNetworkError(e)) throw e;
      },
    );
    return { done };
  };
  const firstHalf = revokeAsked.slice(0, REVOKED / 2).map(revokeOne);

  // warm-up: every device gets a challenge (and the pool its connections), then ROUNDS-1 renewals each
  await Promise.all(
    devices.map(async (d) => {
      const r = await challenge(d, client);
      if (revokeAsked.includes(d)) return; // refused or not, depending on the revocation's timing
      assert.equal(r.status, 200, JSON.stringify(r.body));
      for (let i = 0; i < ROUNDS - 1; i++) {
        const x = await renew(d, client);
        assert.equal(x.status, 200, JSON.stringify(x.body));
        received.push({ deviceId: d.deviceId!, serial: x.serial!, nonce: x.nonce });
      }
    }),
  );

  t.diagnostic(`warm-up done in ${Date.now() - t0} ms`);
  await Promise.all(firstHalf.map((x) => x.done));
  // Real enrollments (software EK, TPM2_ActivateCredential: scripts/harness/softenroll.ts), each with
  // its own token, streamed by 16 workers from just before the round until the kill: a quarter are
  // answered before the renewals are sent, the rest queue with them: answered, cut by the kill at
  // start or at finish, or never sent (the tokens left when the kill came).
  const enrollments = await Promise.all(
    Array.from({ length: ENROLLS }, async () => ({
      token: (await createToken(srv, { ttlSeconds: 3600 })).token,
      ek: softEk(),
      dev: createSoftDevice(),
      outcome: null as SoftEnrollResult | 'lost' | 'unsent' | null,
      /** The last request sent for it. */
      step: null as string | null,
    })),
  );
  let killed: Promise<void> | null = null;
  const queue = [...enrollments];
  let enrollsAnswered = 0;
  let quarterAnswered: () => void = () => {};
  const enrollWarm = new Promise<void>((r) => (quarterAnswered = r));
  const enrollRound = Array.from({ length: 16 }, async () => {
    for (let e = queue.shift(); e; e = queue.shift()) {
      if (killed) {
        e.outcome = 'unsent';
        continue;
      }
      const tracked: SoftClient = { post: (p, b) => ((e!.step = p), client.post(p, b)), close: () => {} };
      try {
        e.outcome = await softEnroll(e.dev, e.ek, tracked, e.token);
        note('enroll', e.outcome);
        if (++enrollsAnswered >= ENROLLS / 4) quarterAnswered();
      } catch (err) {
        if (!isNetworkError(err)) throw err;
        e.outcome = 'lost';
      }
    }
  });
  await Promise.race([enrollWarm, Promise.all(enrollRound)]);
  // The round the kill hits: all N renewals sent at once; kill -9 once a quarter of them were
  // answered (the rest are in flight).
  let answered = 0;
  const killAt = Math.floor(N / 4);
  const tKill0 = Date.now();
  const second = revokeAsked.slice(REVOKED / 2).map(revokeOne);
  const round = devices.map(async (d) => {
    try {
      if (!d.nonce) return; // a device whose revocation refused its challenge
      const r = await renew(d, client);
      note('renew', r);
      if (r.status === 200) received.push({ deviceId: d.deviceId!, serial: r.serial!, nonce: r.nonce });
      else if (!['device_revoked', 'renewal_refused', 'nonce_used'].includes(r.body?.error?.code)) {
        assert.fail(`renewal refused: ${r.status} ${JSON.stringify(r.body)}`);
      }
    } catch (e) {
      if (!isNetworkError(e)) throw e;
      lost.push({ deviceId: d.deviceId!, nonce: d.nonce! });
    } finally {
      if (++answered === killAt) killed = kill9(srv);
    }
  });
  await Promise.all([...round, ...enrollRound]);
  assert.ok(killed, 'the server was killed during the round');
  await killed;
  await Promise.all([...firstHalf, ...second].map((x) => x.done));
  const inFlight = lost.length;
  t.diagnostic(
    `kill -9 after ${killAt} of ${N} renewals were answered (${Date.now() - tKill0} ms into the round): ` +
      `${inFlight} renewals and ${REVOKED - revokeAnswered.size} of ${REVOKED} revocations lost their answer`,
  );
  assert.ok(inFlight >= N / 2, `most renewals were in flight at the kill (${inFlight})`);
  assert.ok(revokeAnswered.size >= REVOKED / 2, 'the first half of the revocations was answered before the kill');

  await srv.start();
  const db = openDb(srv);
  t.after(() => db.close());
  const statusOf = (id: string) => (db.prepare('SELECT status FROM devices WHERE id = ?').get(id) as { status: string }).status;

  // every certificate a client received has its row, for that device
  const certRow = db.prepare('SELECT device_id FROM certificates WHERE serial = ?');
  for (const r of received) {
    assert.equal((certRow.get(r.serial) as { device_id: string } | undefined)?.device_id, r.deviceId, `row of ${r.serial}`);
  }
  // every revocation that was answered holds; every device is either revoked or active
  for (const id of revokeAnswered) assert.equal(statusOf(id), 'revoked');
  const revokedIds = new Set(devices.map((d) => d.deviceId!).filter((id) => statusOf(id) === 'revoked'));
  for (const id of revokedIds)
    assert.ok(
      revokeAsked.some((d) => d.deviceId === id),
      `only asked-for revocations: ${id}`,
    );

  // Accounting: a certificate row is only written with the nonce it spends, in one transaction, so
  // per active device rows = 1 (seeded enrollment) + spent nonces; the rows no client received are
  // exactly the lost renewals whose transaction committed before the kill (orphans, visible in the
  // store). A revocation spends all of a device's open nonces (store endDevice), so for a revoked
  // device: received ≤ rows - 1 ≤ received + lost.
  const rowsOf = db.prepare('SELECT COUNT(*) AS n FROM certificates WHERE device_id = ?');
  const spentOf = db.prepare('SELECT COUNT(*) AS n FROM nonces WHERE device_id = ? AND used_at IS NOT NULL');
  const nonceUsed = db.prepare('SELECT used_at FROM nonces WHERE value = ?');
  const isSpent = (nonce: string) => (nonceUsed.get(nonce) as { used_at: number | null }).used_at !== null;
  let orphans = 0;
  for (const d of devices) {
    const rows = (rowsOf.get(d.deviceId) as { n: number }).n;
    const got = received.filter((r) => r.deviceId === d.deviceId).length;
    const lostHere = lost.filter((l) => l.deviceId === d.deviceId);
    if (revokedIds.has(d.deviceId!)) {
      assert.ok(
        rows - 1 >= got && rows - 1 <= got + lostHere.length,
        `${d.deviceId} (revoked): ${rows} rows, ${got} received, ${lostHere.length} lost`,
      );
      orphans += rows - 1 - got;
      continue;
    }
    const spent = (spentOf.get(d.deviceId) as { n: number }).n;
    assert.equal(rows, 1 + spent, `${d.deviceId}: one certificate row per spent nonce`);
    const committedLost = lostHere.filter((l) => isSpent(l.nonce));
    assert.equal(spent, got + committedLost.length, `${d.deviceId}: spent nonces = certificates received + lost answers that committed`);
    orphans += committedLost.length;
  }
  t.diagnostic(`${orphans} of ${inFlight} lost renewals had committed (orphan certificate rows, visible in the store)`);

  // no nonce is accepted twice: every spent nonce replayed with valid evidence is refused
  // (the AK-signed request learns the real state: a revoked device gets device_revoked)
  const replays = await pool(received, async (r) => {
    const d = devices.find((x) => x.deviceId === r.deviceId)!;
    const x = await renew(d, client, { nonce: r.nonce });
    note('replay', x);
    return { r, code: x.status === 200 ? 'ACCEPTED' : x.body?.error?.code };
  });
  for (const { r, code } of replays)
    assert.equal(code, revokedIds.has(r.deviceId) ? 'device_revoked' : 'nonce_used', `replay of ${r.nonce}`);
  // lost renewals that committed: their nonce is spent too
  for (const l of lost.filter((x) => isSpent(x.nonce))) {
    const d = devices.find((x) => x.deviceId === l.deviceId)!;
    const x = await renew(d, client, { nonce: l.nonce });
    assert.equal(x.body?.error?.code, revokedIds.has(l.deviceId) ? 'device_revoked' : 'nonce_used', `replay of a committed lost renewal`);
  }
  // The enrollments of the kill's round. Every answered one is a device in the store; none was
  // refused (a refusal spends the token without a device, and nothing here should be refused).
  const tokenRow = db.prepare('SELECT used_at, device_id FROM tokens WHERE id = ?');
  const devicesOfToken = db.prepare("SELECT id FROM devices WHERE enrolled_by LIKE '%(token ' || ? || ')'");
  const tokenId = (token: string) => token.split('.')[0]!;
  /** Token used ⇔ its device exists; never two devices for one token. Returns whether it is used. */
  const accountToken = (token: string): boolean => {
    const row = tokenRow.get(tokenId(token)) as { used_at: number | null; device_id: string | null };
    const devs = (devicesOfToken.all(tokenId(token)) as { id: string }[]).map((d) => d.id);
    assert.ok(devs.length <= 1, `token ${tokenId(token)}: ${devs.length} devices`);
    assert.equal(row.used_at !== null, devs.length === 1, `token ${tokenId(token)}: used ⇔ its device exists`);
    if (devs.length) assert.equal(row.device_id, devs[0], `token ${tokenId(token)} names its device`);
    return row.used_at !== null;
  };
  const enrollLost = enrollments.filter((e) => e.outcome === 'lost');
  const enrollAnswered = enrollments.filter((e) => typeof e.outcome === 'object' && e.outcome !== null);
  let enrollCommittedLost = 0;
  for (const e of enrollments) {
    assert.ok(e.outcome, 'every enrollment ended');
    if (e.outcome === 'unsent') assert.equal(accountToken(e.token), false, 'a token never presented is unused');
    else if (e.outcome !== 'lost') {
      assert.equal(e.outcome.status, 200, `enrollment refused: ${e.outcome.step} ${JSON.stringify(e.outcome.body)}`);
      const row = tokenRow.get(tokenId(e.token)) as { device_id: string | null };
      assert.equal(row.device_id, e.dev.deviceId, 'an answered enrollment is its token’s device');
    }
    if (accountToken(e.token) && e.outcome === 'lost') enrollCommittedLost++;
  }
  t.diagnostic(
    `enrollments: ${enrollAnswered.length} of ${ENROLLS} answered before the kill; lost their answer: ` +
      `${enrollLost.filter((e) => e.step === '/v1/enroll/start').length} at start, ${enrollLost.filter((e) => e.step === '/v1/enroll/finish').length} at finish ` +
      `(${enrollCommittedLost} of these had committed); ${enrollments.filter((e) => e.outcome === 'unsent').length} not sent`,
  );
  assert.ok(enrollAnswered.length > 0, 'enrollments were answered during the round');
  assert.ok(enrollLost.length > 0, 'enrollments were in flight at the kill');
  // Replays: a used token is refused (token_used, checked before the EK binding), whoever presents
  // it; a token whose enrollment did not commit enrolls once more — exactly once — with its EK.
  const enrollReplays = await pool(enrollments, async (e) => {
    const used = (tokenRow.get(tokenId(e.token)) as { used_at: number | null }).used_at !== null;
    const again = used ? null : await softEnroll(createSoftDevice(), e.ek, client, e.token);
    if (again) note('enroll again', again);
    const replay = await client.post('/v1/enroll/start', enrollStartBody(createSoftDevice(), e.token));
    note('enroll replay', replay);
    const replayOwnEk = await softEnroll(createSoftDevice(), e.ek, client, e.token);
    note('enroll replay with its EK', replayOwnEk);
    return { e, again: again?.status ?? null, codes: [replay.body?.error?.code, (replayOwnEk.body as any)?.error?.code] };
  });
  for (const { e, again, codes } of enrollReplays) {
    if (again !== null) assert.equal(again, 200, `token ${tokenId(e.token)} not spent by the kill: enrolls once more`);
    assert.deepEqual(codes, ['token_used', 'token_used'], `replay of token ${tokenId(e.token)}`);
    assert.ok(accountToken(e.token), `token ${tokenId(e.token)} used once, by one device`);
  }

  // no enrollment token is accepted twice
  const tokenReplays = await pool(devices, async (d) => {
    const x = await client.post('/v1/enroll/start', enrollStartBody(d, d.enrollmentToken!));
    note('token replay', x);
    return x.body?.error?.code;
  });
  assert.deepEqual([...new Set(tokenReplays)], ['token_used']);

  // every device still renews (after the kill the agent's way: a fresh challenge), the revoked ones are refused
  const after = await pool(devices, async (d) => {
    const c = await challenge(d, client);
    note('challenge', c);
    if (c.status !== 200) return c.body?.error?.code;
    const x = await renew(d, client);
    note('renew after restart', x);
    if (x.status === 200) received.push({ deviceId: d.deviceId!, serial: x.serial!, nonce: x.nonce });
    return x.status === 200 ? 'ok' : x.body?.error?.code;
  });
  devices.forEach((d, i) => assert.equal(after[i], revokedIds.has(d.deviceId!) ? 'renewal_refused' : 'ok', d.deviceId!));
  assert.deepEqual(fiveXx, [], 'no 5xx');

  // the CRL lists exactly the revoked devices' live certificates: the one served and the one in the
  // data dir (what the broker integration reads), both regenerated at start from the store
  const crlSerialsOf = (crl: x509.X509Crl) => new Set(crl.entries.map((e) => e.serialNumber.toLowerCase().replace(/^(00)+(?=.{32}$)/, '')));
  const crlSerials = crlSerialsOf(await fetchCrl(srv));
  assert.deepEqual(
    [...crlSerialsOf(new x509.X509Crl(await readFile(path.join(srv.dataDir, 'crl.der'))))].sort(),
    [...crlSerials].sort(),
    'data/crl.der = the served CRL',
  );
  const now = Date.now();
  const shouldBe = new Set(
    (db.prepare('SELECT serial, device_id, not_after, revoked_at FROM certificates').all() as any[])
      .filter((c) => revokedIds.has(c.device_id) && c.not_after > now)
      .map((c) => {
        assert.notEqual(c.revoked_at, null, `certificate ${c.serial} of revoked ${c.device_id} is marked revoked`);
        return c.serial as string;
      }),
  );
  assert.deepEqual([...crlSerials].sort(), [...shouldBe].sort(), 'CRL = the revoked devices’ unexpired certificates');
  assert.ok(shouldBe.size >= revokedIds.size);

  const verify = await adminCli(srv.dataDir, ['audit', 'verify']);
  assert.match(verify, /^audit chain OK/, verify);
  t.diagnostic(
    `${received.length} certificates received in all; ${revokedIds.size} devices revoked; audit: ${verify.trim().split('\n')[0]}`,
  );
});

/**
 * After the restart the checks run as a fleet comes back: at most 64 devices at once (the kill's
 * round is the one with every renewal in flight).
 */
async function pool<T, R>(items: T[], fn: (item: T) => Promise<R>, width = 64): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      for (let i = next++; i < items.length; i = next++) out[i] = await fn(items[i]!);
    }),
  );
  return out;
}

/** An admin POST with a deadline (srv.admin has none). */
function adminPost(srv: ServerProcess, p: string, body: unknown): { answer: Promise<{ status: number; body: any }> } {
  const answer = new Promise<{ status: number; body: any }>((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = https.request(
      new URL(p, srv.url),
      {
        method: 'POST',
        ca: srv.caPem,
        agent: false,
        timeout: 60_000,
        headers: { authorization: `Bearer ${srv.adminToken}`, 'content-type': 'application/json', 'content-length': data.length },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString() || 'null') }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('admin request timed out')));
    req.on('error', reject);
    req.end(data);
  });
  return { answer };
}

async function fetchCrl(srv: ServerProcess): Promise<x509.X509Crl> {
  const der = await new Promise<Buffer>((resolve, reject) => {
    https
      .get(new URL('/v1/crl', srv.url), { ca: srv.caPem }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          res.statusCode === 200 ? resolve(Buffer.concat(chunks)) : reject(new Error(`GET /v1/crl: ${res.statusCode}`)),
        );
      })
      .on('error', reject);
  });
  return new x509.X509Crl(der);
}

/**
 * A loopback TCP relay between the device and the server. hold(): from then on the server's bytes
 * are kept back instead of forwarded (the device's still go through); drop() discards them and
 * closes the device's side, as a dead host would.
 */
async function relay(target: number): Promise<{ port: number; hold(): void; held(): number; drop(): void; close(): Promise<void> }> {
  let holding = false;
  let heldBytes = 0;
  const pairs = new Set<{ c: net.Socket; s: net.Socket }>();
  const server = net.createServer((c) => {
    const s = net.connect(target, '127.0.0.1');
    const pair = { c, s };
    pairs.add(pair);
    c.on('data', (b) => s.write(b));
    s.on('data', (b) => {
      if (holding) heldBytes += b.length;
      else c.write(b);
    });
    const end = () => {
      pairs.delete(pair);
      c.destroy();
      s.destroy();
    };
    c.on('error', end).on('close', end);
    s.on('error', () => undefined).on('close', () => {
      if (!holding) end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    hold: () => (holding = true),
    held: () => heldBytes,
    drop() {
      for (const p of pairs) {
        p.c.destroy();
        p.s.destroy();
      }
      pairs.clear();
      holding = false;
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/**
 * Power cut between the commit and the answer. Timed from outside the server, no test hook in it:
 * the device talks through a relay that, once the renewal request is on its way, keeps the server's
 * bytes back; the test watches the store (a reader of the SQLite WAL) until the renewal's
 * transaction committed (its nonce spent), then kills the server with SIGKILL and drops what it
 * held. Whether the server had already written its answer into the socket or not, the device never
 * receives it — for the device and the store that is a power cut after the commit. (kill -9 loses
 * nothing the kernel has; a real power cut also loses what the OS had not yet flushed: that is the
 * `synchronous` setting of the store, see enroll-server/store/sqlite.ts.)
 */
test('power cut between the commit and the answer: the orphan certificate is in the store, the next renewal succeeds', async (t) => {
  const dev = createSoftDevice();
  const srv = await seededServer(t, [dev]);
  const r = await relay(srv.port);
  t.after(() => r.close());
  const client: SoftClient = softClient(`https://127.0.0.1:${r.port}`, srv.caPem, { maxSockets: 1 });
  t.after(() => client.close());

  const seeded = dev.serial;
  // a first renewal through the relay: the connection is up (keep-alive), the device holds a live nonce
  assert.equal((await challenge(dev, client)).status, 200);
  const first = await renew(dev, client);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  const before = { serial: dev.serial, nonce: dev.nonce! };

  const db = openDb(srv);
  t.after(() => db.close());
  const used = db.prepare('SELECT used_at FROM nonces WHERE value = ?');
  r.hold();
  const pending = renew(dev, client).then(
    (x) => ({ answer: x }),
    (e: unknown) => ({ error: e }),
  );
  await waitFor(
    'the renewal to commit (its nonce spent in the store)',
    () => (used.get(before.nonce) as { used_at: number | null }).used_at !== null,
    {
      timeoutMs: 30_000,
      intervalMs: 2,
    },
  );
  await kill9(srv);
  t.diagnostic(`killed after the commit; ${r.held()} bytes of the server's answer were held back`);
  r.drop();
  const outcome = await pending;
  assert.ok('error' in outcome && isNetworkError(outcome.error), `the device got no answer: ${JSON.stringify(outcome)}`);
  assert.equal(dev.serial, before.serial, 'the device still holds its previous certificate');

  await srv.start();
  const r2 = await relay(srv.port);
  t.after(() => r2.close());
  const c2 = softClient(`https://127.0.0.1:${r2.port}`, srv.caPem);
  t.after(() => c2.close());
  const db2 = openDb(srv);
  t.after(() => db2.close());
  // the orphan: issued in the committed transaction, never received
  const rows = db2.prepare('SELECT serial, revoked_at FROM certificates WHERE device_id = ? ORDER BY issued_at').all(dev.deviceId) as any[];
  const orphan = rows.filter((x) => x.serial !== seeded && x.serial !== first.serial);
  assert.equal(rows.length, 3, 'seeded + first renewal + the orphan');
  assert.equal(orphan.length, 1);
  assert.equal(orphan[0].revoked_at, null);
  assert.equal(statusOf(db2, dev.deviceId!), 'active');

  // the device's next renewal: its nonce was spent by the lost one (nonce_used), so it asks for a
  // fresh challenge (agent/identity.ts does the same) and renews
  const stale = await renew(dev, c2);
  assert.equal(stale.status, 409);
  assert.equal(stale.body.error.code, 'nonce_used');
  assert.equal((await challenge(dev, c2)).status, 200);
  const next = await renew(dev, c2);
  assert.equal(next.status, 200, `renews after the power cut: ${JSON.stringify(next.body)}`);
  assert.notEqual(next.serial, orphan[0].serial);
  const after = db2.prepare('SELECT COUNT(*) AS n FROM certificates WHERE device_id = ?').get(dev.deviceId) as { n: number };
  assert.equal(after.n, 4);
  const verify = await adminCli(srv.dataDir, ['audit', 'verify']);
  assert.match(verify, /^audit chain OK/, verify);
});

test('power cut: every commit is synced before it is answered (SQLite synchronous = FULL)', async (t) => {
  // kill -9 cannot lose what the kernel holds; a power cut can lose a WAL commit that was not synced
  // (synchronous = NORMAL), after its answer went out. What makes that impossible is the setting.
  const store = new SqliteStore(path.join(await tmpDir('edgeid-store-', t), 'edgeid.db'));
  t.after(() => store.close());
  assert.equal(store.db.pragma('journal_mode', { simple: true }), 'wal');
  assert.equal(store.db.pragma('synchronous', { simple: true }), 2, 'FULL (2): the WAL is synced at every commit');
});

function statusOf(db: Database.Database, id: string): string {
  return (db.prepare('SELECT status FROM devices WHERE id = ?').get(id) as { status: string }).status;
}
