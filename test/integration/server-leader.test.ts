/**
 * Three real edgeid-server processes on one PostgreSQL database (each its own data dir with a copy
 * of the first one's CA and admin token, as a deployment of several instances has):
 * - exactly one of them is the leader (`edgeid_leader 1` in /metrics, "this instance is the
 *   leader" in its log), the others report 0;
 * - failing enrollments sent to all three raise ONE enrollment_bad_tokens alert whose count is
 *   the number of refusals (the rules run on the leader only: not one alert per instance, not a
 *   doubled count);
 * - CRLs regenerated on the three at the same moment carry distinct numbers;
 * - `edgeid-admin backup` on a PostgreSQL store is refused with backup_unsupported_store;
 * - kill -9 of the leader: another instance reports itself the leader within the leader interval
 *   (plus the time PostgreSQL takes to end the dead backend), and the alert it then evaluates
 *   continues the same count (the cursor and the windows are in the database).
 * And a server on SQLite (one instance by construction) is always the leader.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { tmpDir } from '../../scripts/harness/fs.js';
import { startServerProcess, type ServerProcess } from '../../scripts/harness/server.js';
import { createSoftDevice, enrollStartBody, softClient } from '../../scripts/harness/softdevice.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { runCli } from '../helpers/cli.js';
import { LEADER_INTERVAL, leaderGauge, metricsText, oneLeader, serversOnOneDatabase } from '../helpers/multi.js';
import { usePostgres } from '../helpers/stores.js';

usePostgres();

test('three instances on one PostgreSQL database: one leader, one alert with the right count, distinct CRL numbers, backup refused; kill -9 of the leader moves the leadership', async (t) => {
  const servers = await serversOnOneDatabase(t, 3, {
    audit: { aggregateRefusals: false },
    alerts: { defaults: { badTokens: { count: 4, window: '10m' } } },
  });
  const leader = await oneLeader(servers);
  await waitFor('the leader line in its log', () => leader.log().includes('this instance is the leader'));
  assert.equal(servers.filter((s) => s.log().includes('this instance is the leader')).length, 1, 'one leader in the logs');

  // failing enrollments through all three instances: one alert, counted once per refusal
  const dev = createSoftDevice();
  const clients = servers.map((s) => softClient(s.url, s.caPem));
  t.after(() => clients.forEach((c) => c.close()));
  const badTokens = async (n: number, on: typeof clients) => {
    for (let i = 0; i < n; i++) {
      const fake = `${randomBytes(8).toString('hex')}.${randomBytes(32).toString('base64url')}`;
      const r = await on[i % on.length]!.post('/v1/enroll/start', enrollStartBody(dev, fake));
      assert.deepEqual([r.status, r.body.error?.code], [401, 'token_invalid']);
    }
  };
  const alerts = async (s: ServerProcess) => {
    const r = await s.admin<{ alerts: { id: string; rule: string; count: number }[] }>(
      'GET',
      '/v1/admin/alerts?rule=enrollment_bad_tokens',
    );
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body.alerts.filter((a) => a.rule === 'enrollment_bad_tokens');
  };
  await badTokens(6, clients);
  const first = await waitFor('the bad-token alert at 6', async () => {
    const a = await alerts(servers[0]!);
    return a.length === 1 && a[0]!.count === 6 ? a[0]! : null;
  });
  // every instance shows the same one alert
  for (const s of servers)
    assert.deepEqual(
      (await alerts(s)).map((a) => [a.id, a.count]),
      [[first.id, 6]],
    );

  // CRLs regenerated on all three at once: distinct numbers
  const numbers = await Promise.all(
    servers.map(async (s) => {
      const r = await s.admin<{ number: string }>('POST', '/v1/admin/crl/regenerate', {});
      assert.equal(r.status, 200, JSON.stringify(r.body));
      return BigInt(r.body.number);
    }),
  );
  assert.equal(new Set(numbers.map(String)).size, 3, `CRL numbers ${numbers.join(', ')}`);

  // edgeid-admin backup: PostgreSQL is backed up with its own tools
  const pass = path.join(await tmpDir('edgeid-lead-pass-', t), 'pass');
  await writeFile(pass, 'correct horse battery staple 42\n', { mode: 0o600 });
  const out = path.join(path.dirname(pass), 'b.edgeid-backup');
  const b = await runCli('edgeid-admin', ['backup', '--out', out, '--passphrase-file', pass, '--data', servers[1]!.dataDir, '--json']);
  assert.notEqual(b.code, 0);
  assert.match(b.stdout.toString() + b.stderr, /backup_unsupported_store/);
  assert.doesNotMatch(b.stdout.toString() + b.stderr, /internal_error/);

  // kill -9 of the leader: another one takes over within the interval
  const rest = servers.filter((s) => s !== leader);
  const killedAt = Date.now();
  leader.proc!.kill('SIGKILL');
  const next = await oneLeader(rest);
  const took = Date.now() - killedAt;
  t.diagnostic(`leadership moved in ${took} ms (leaderInterval ${LEADER_INTERVAL} s)`);
  assert.ok(took <= LEADER_INTERVAL * 1000 + 3000, `took ${took} ms`);
  await waitFor('the leader line in the log of the new leader', () => next.log().includes('this instance is the leader'));

  // the new leader continues the committed count: 6 + 3, not a second alert
  await badTokens(
    3,
    rest.map((s) => clients[servers.indexOf(s)]!),
  );
  await waitFor('the bad-token alert at 9', async () => {
    const a = await alerts(next);
    return a.length === 1 && a[0]!.id === first.id && a[0]!.count === 9 ? true : null;
  });
  for (const s of rest)
    assert.deepEqual(
      (await alerts(s)).map((a) => [a.id, a.count]),
      [[first.id, 9]],
    );
});

test('SQLite: the one instance is the leader', async (t) => {
  const srv = await startServerProcess({});
  t.after(() => srv.close());
  assert.equal(await leaderGauge(srv), 1);
  await waitFor('the leader line in the log', () => srv.log().includes('this instance is the leader'));
});
