/**
 * Leadership under failures, on a real PostgreSQL (the leader's connection through a TCP proxy that
 * can drop everything silently):
 * - a leader whose connection stops answering (packets dropped, nothing closed) steps down at its
 *   next check, within one interval of it, even in the worst case where the database has already
 *   ended its session and another instance leads: without that check it would lead on for as long
 *   as its side of the TCP connection stays open;
 * - an instance whose leader work fails to start gives the lock back, another instance can lead,
 *   and it tries again itself on its next attempt;
 * - on SQLite (no lock), work that failed to start is tried again too.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { Leadership, type LeaderWork } from '../../enroll-server/services/leader.js';
import { FaultProxy } from '../../scripts/harness/fault-proxy.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { freshPostgresDatabase, pgClient, postgresServer, usePostgres } from '../helpers/stores.js';
import { leaderContext, lockHolders } from '../helpers/leader.js';

usePostgres();

const INTERVAL = 500;

/** Work that records what happened, across instances, in one list; `failGains` first starts fail. */
function work(name: string, events: string[], failGains = 0): LeaderWork {
  let fails = failGains;
  return {
    async gain() {
      if (fails > 0) {
        fails--;
        events.push(`${name} gain failed`);
        throw new Error('the CA key is not reachable');
      }
      events.push(`${name} gain`);
    },
    async lose() {
      events.push(`${name} lose`);
    },
  };
}

async function leadership(t: TestContext, url: string, w: LeaderWork, interval = INTERVAL): Promise<Leadership> {
  const l = await Leadership.start(
    leaderContext(),
    () => new pg.Client({ connectionString: url, application_name: 'leader-test' }),
    w,
    interval,
  );
  t.after(() => l.close());
  return l;
}

test('a leader whose connection goes silent steps down at its next check instead of leading on forever', { timeout: 60_000 }, async (t) => {
  const url = await freshPostgresDatabase();
  const srv = await postgresServer();
  const proxy = await FaultProxy.start(srv.port);
  t.after(() => proxy.close());
  const viaProxy = new URL(url);
  viaProxy.port = String(proxy.port);
  const watch = await pgClient(t, url);
  const events: string[] = [];

  const a = await leadership(t, viaProxy.toString(), work('a', events));
  assert.equal(a.isLeader, true);
  const b = await leadership(t, url, work('b', events));
  assert.equal(b.isLeader, false, 'the lock is held');
  const [holder] = await lockHolders(watch);
  assert.ok(holder, 'a holds the lock');

  // the network drops everything: a's connection stays open on its side, nothing answers; and
  // PostgreSQL ends a's session (in production after tcp_keepalives_*, by default hours later;
  // here at once, the worst case), so the lock is free for b
  proxy.setMode('blackhole');
  await watch.query('SELECT pg_terminate_backend($1)', [holder]);
  await waitFor('the lock released', async () => (await lockHolders(watch)).length === 0);
  await b.attempt();
  assert.equal(b.isLeader, true);
  // a cannot hear it; its next check gets no answer and it steps down within one interval
  await a.attempt();
  assert.equal(a.isLeader, false, 'a stepped down: its check got no answer within one interval');
  // a's own timer may have run that check before b.attempt() returned (a loaded machine): the order
  // of 'b gain' and 'a lose' is not what is tested, that a stepped down is
  assert.deepEqual([events[0], ...events.slice(1).sort()], ['a gain', 'a lose', 'b gain']);
});

test('an instance whose leader work fails to start gives the lock back and tries again', { timeout: 60_000 }, async (t) => {
  const url = await freshPostgresDatabase();
  const watch = await pgClient(t, url);
  const events: string[] = [];

  // a's attempts are made by hand (an interval no test step reaches): on a loaded machine its own
  // timer could otherwise take the lock back before b is started, and b would not lead
  const a = await leadership(t, url, work('a', events, 1), 60_000);
  assert.equal(a.isLeader, false, 'the work did not start: not the leader');
  assert.deepEqual(events, ['a gain failed', 'a lose']);
  // the lock was given back with the session (ended without waiting: poll the catalogue)
  await waitFor('the lock released', async () => (await lockHolders(watch)).length === 0);
  const b = await leadership(t, url, work('b', events));
  assert.equal(b.isLeader, true, 'another instance can lead');
  await b.close();
  await a.attempt();
  assert.equal(a.isLeader, true, 'a leads on its next attempt, its work started this time');
  assert.deepEqual(events, ['a gain failed', 'a lose', 'b gain', 'b lose', 'a gain']);
  assert.equal((await lockHolders(watch)).length, 1);
});

test('SQLite (one instance): leader work that failed to start is tried again', { timeout: 60_000 }, async (t) => {
  const events: string[] = [];
  const l = await Leadership.start(leaderContext(), null, work('s', events, 1), INTERVAL);
  t.after(() => l.close());
  assert.equal(l.isLeader, false);
  // on its own timer (no attempt() by hand): the retry is the server's, not the test's
  await waitFor('the retried start', () => l.isLeader, { timeoutMs: 10 * INTERVAL });
  assert.deepEqual(events, ['s gain failed', 's lose', 's gain']);
});
