/**
 * Leadership races (review rev43): the connection breaking while the leader work is starting, and
 * leader work whose start hangs.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { GAIN_INTERVALS, Leadership, type LeaderWork } from '../../enroll-server/services/leader.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { freshPostgresDatabase, pgClient, usePostgres } from '../helpers/stores.js';
import { leaderContext, lockHolders } from '../helpers/leader.js';

usePostgres();

const INTERVAL = 500;

/** Work shaped like server.ts's: gain() awaits something (AlertEngine.start), then starts timers; lose() stops what is running. */
function gatedWork(): { work: LeaderWork; running: () => boolean; open: () => void } {
  let running = false;
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  return {
    work: {
      async gain() {
        await gate;
        running = true;
      },
      async lose() {
        running = false;
      },
    },
    running: () => running,
    open: () => open(),
  };
}

const start = (t: TestContext, url: string, w: LeaderWork) => {
  const p = Leadership.start(leaderContext(), () => new pg.Client({ connectionString: url, application_name: 'leader-race' }), w, INTERVAL);
  t.after(async () => (await p).close());
  return p;
};

test('the connection breaks while the leader work is starting: the work does not run on a non-leader', async (t) => {
  const url = await freshPostgresDatabase();
  const watch = await pgClient(t, url);
  const a = gatedWork();
  const la = start(t, url, a.work);
  const [holder] = await waitFor('a holds the lock', async () => {
    const h = await lockHolders(watch);
    return h.length ? h : null;
  });
  // a's session ends while its gain() is still running
  await watch.query('SELECT pg_terminate_backend($1)', [holder]);
  await waitFor('the lock released', async () => (await lockHolders(watch)).length === 0);
  await new Promise((r) => setTimeout(r, 100)); // the client's 'error'/'end' reach Leadership
  a.open();
  const l = await la;
  // another instance takes the lock
  const b = gatedWork();
  b.open();
  const lb = await start(t, url, b.work);
  assert.equal(lb.isLeader, true);
  assert.equal(l.isLeader, false);
  assert.equal(a.running(), false, 'a is not the leader, yet its periodic work runs: two leaders');
});

test('leader work whose start hangs: close() still returns', { timeout: 20_000 }, async (t) => {
  const url = await freshPostgresDatabase();
  const a = gatedWork(); // never opened: gain() hangs
  const p = Leadership.start(
    leaderContext(),
    () => new pg.Client({ connectionString: url, application_name: 'leader-race' }),
    a.work,
    INTERVAL,
  );
  const watch = await pgClient(t, url);
  await waitFor('a holds the lock', async () => (await lockHolders(watch)).length === 1);
  // Leadership.start itself never resolves (server.listen() hangs); close it once it does
  const l = await Promise.race([p, new Promise<null>((r) => setTimeout(() => r(null), 10 * INTERVAL))]);
  assert.ok(l, 'Leadership.start() did not return within 10 intervals: gain() hangs and nothing bounds it');
  const closed = await Promise.race([l.close().then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 10 * INTERVAL))]);
  assert.equal(closed, true, 'close() hangs behind a gain() that never returns');
});

test(
  'leader work whose start hangs: the instance gives the lock up, another leads, and the late start is stopped',
  { timeout: 30_000 },
  async (t) => {
    const url = await freshPostgresDatabase();
    const watch = await pgClient(t, url);
    const a = gatedWork();
    const events: string[] = [];
    const la = await start(t, url, {
      gain: async () => {
        await a.work.gain();
        events.push('gain');
      },
      lose: async () => {
        await a.work.lose();
        events.push('lose');
      },
    });
    // gain() has not returned within GAIN_INTERVALS intervals: a gives up and ends its session
    await waitFor('a giving the lock up', async () => !la.isLeader && (await lockHolders(watch)).length === 0, {
      timeoutMs: (GAIN_INTERVALS + 4) * INTERVAL,
    });
    const b = gatedWork();
    b.open();
    const lb = await start(t, url, b.work);
    await waitFor('b leading', () => lb.isLeader && b.running(), { timeoutMs: 4 * INTERVAL });
    // a's gain() finally returns: what it started is stopped at once, a is not the leader
    a.open();
    // (a may have given up more than once before b took the lock: each late start is stopped)
    const stopped = () => {
      const late = events.slice(events.indexOf('gain'));
      const n = (e: string) => late.filter((x) => x === e).length;
      return events.includes('gain') && n('lose') >= n('gain') && !a.running();
    };
    await waitFor('the late start stopped', stopped, { timeoutMs: 4 * INTERVAL }).catch((e: Error) =>
      assert.fail(`${e.message}: ${events.join()}`),
    );
    assert.equal(la.isLeader, false);
    assert.equal(lb.isLeader, true);
  },
);
