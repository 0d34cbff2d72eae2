/**
 * A gain() given up on (not finished within GAIN_INTERVALS intervals) that is still running when the
 * next attempt comes: no second gain() may start beside it. server.ts's gain() is not safe to run
 * twice at once (both see no ctx.alerts and each start an AlertEngine; the one assigned first is
 * never closed and runs its rules and webhook deliveries on after lose() and close()).
 * No database needed: the SQLite path (connect = null) has the same give-up and retry.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GAIN_INTERVALS, Leadership } from '../../enroll-server/services/leader.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { leaderContext } from '../helpers/leader.js';

const INTERVAL = 100;

test(
  'a given-up gain() still running: no second gain() starts beside it; once it returns, it is stopped, then leading resumes',
  { timeout: 30_000 },
  async (t) => {
    let calls = 0;
    let inFlight = 0;
    let maxInFlight = 0;
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const events: string[] = [];
    const l = await Leadership.start(
      leaderContext(),
      null,
      {
        async gain() {
          const n = ++calls;
          inFlight++;
          maxInFlight = Math.max(maxInFlight, inFlight);
          try {
            if (n === 1) await gate;
          } finally {
            inFlight--;
          }
          events.push(`gain ${n}`);
        },
        async lose() {
          events.push('lose');
        },
      },
      INTERVAL,
    );
    t.after(() => l.close());
    await waitFor('the first gain() given up', () => events.includes('lose'), { timeoutMs: (GAIN_INTERVALS + 20) * INTERVAL });
    // several attempts' worth of time while gain 1 still hangs
    await new Promise((r) => setTimeout(r, 5 * INTERVAL));
    assert.equal(calls, 1, 'a second gain() started while the given-up one still runs');
    open();
    await waitFor('leading again', () => l.isLeader && events.includes('gain 2'), { timeoutMs: 30 * INTERVAL });
    assert.equal(maxInFlight, 1);
    // gain 1's late start was stopped before gain 2 started
    assert.deepEqual(events.slice(events.indexOf('gain 1')), ['gain 1', 'lose', 'gain 2']);
  },
);

test('a lose() that hangs does not hold close() (nor later attempts) for ever', { timeout: 30_000 }, async () => {
  let stops = 0;
  const l = await Leadership.start(
    leaderContext(),
    null,
    {
      async gain() {},
      lose: () => {
        stops++;
        return new Promise<void>(() => undefined); // a flush to a database that never answers
      },
    },
    INTERVAL,
  );
  assert.equal(l.isLeader, true);
  const closed = await Promise.race([
    l.close().then(() => true),
    new Promise<boolean>((r) => setTimeout(() => r(false), (GAIN_INTERVALS + 10) * INTERVAL)),
  ]);
  assert.equal(closed, true, 'close() waits on a lose() that never returns');
  assert.equal(stops, 1);
  assert.equal(l.isLeader, false);
});
