/**
 * An instance that stalls in the middle of a transaction (its process stopped, its event loop
 * stuck) on a shared PostgreSQL database: the audit chain's advisory lock it holds would keep
 * every other instance's audited writes waiting for as long as it stays stuck. PostgreSQL ends
 * such a session after idle_in_transaction_session_timeout (the pool sets it), its transaction is
 * rolled back, and the others go on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AUDIT_LOCK, PostgresStore } from '../../enroll-server/store/postgres.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { freshPostgresDatabase, pgClient, usePostgres } from '../helpers/stores.js';

usePostgres();

const audit = (event: string) => ({ time: Date.now(), actor: 'test', event, outcome: 'ok' as const });

test(
  'PostgreSQL: a connection left idle inside a transaction holding the audit lock is ended, and the other instances write again',
  { timeout: 60_000 },
  async (t) => {
    const url = await freshPostgresDatabase();
    const stuck = await PostgresStore.open({ url, poolSize: 2, idleInTransactionTimeoutMs: 1500 });
    t.after(() => stuck.close());
    const other = await PostgresStore.open({ url, poolSize: 2 });
    t.after(() => other.close());
    const watch = await pgClient(t, url);

    // the stuck instance: inside a transaction, holding the audit lock, then nothing
    const c = await stuck.pool.connect();
    const ended = new Promise<Error>((resolve) => c.once('error', resolve));
    await c.query('BEGIN');
    await c.query(`INSERT INTO meta (key, value) VALUES ('stalled', 'yes')`);
    await c.query('SELECT pg_advisory_xact_lock($1)', [AUDIT_LOCK]);

    const appended = other.appendAudit(audit('written by the other instance'));
    // the other instance's append waits on the lock (it is not simply fast)
    await waitFor('the append waiting on the advisory lock', async () => {
      const r = await watch.query(
        `SELECT COUNT(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
      );
      return r.rows[0].n === 1;
    });

    const row = await appended;
    assert.equal(row.seq, 1);
    assert.equal(row.event, 'written by the other instance');
    const err = (await ended) as Error & { code?: string };
    assert.equal(err.code, '25P03', `the stuck session was ended by PostgreSQL (idle_in_transaction_session_timeout): ${err.message}`);
    c.release(err);
    // its transaction was rolled back: nothing of it stays
    assert.equal(await other.getMeta('stalled'), null);
    assert.equal((await other.verifyAudit()).ok, true);
    // and the stuck instance's pool serves again with a new connection
    await stuck.setMeta('after', 'ok');
    assert.equal(await other.getMeta('after'), 'ok');
  },
);

test('PostgreSQL: the pool sets idle_in_transaction_session_timeout (10 s by default)', { timeout: 60_000 }, async (t) => {
  const url = await freshPostgresDatabase();
  const s = await PostgresStore.open({ url, poolSize: 1 });
  t.after(() => s.close());
  const r = await s.pool.query('SHOW idle_in_transaction_session_timeout');
  assert.equal(r.rows[0].idle_in_transaction_session_timeout, '10s');
});
