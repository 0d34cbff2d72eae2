import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, reconnectDelay } from '../../agent/schedule.js';

const policy = { baseMs: 1000, capMs: 5 * 60_000, factor: 2, spreadMs: 10_000 };

test('the first reconnect after a live connection closed is spread over the whole window [0, spreadMs]', () => {
  assert.equal(
    reconnectDelay(1, true, policy, () => 0),
    0,
  );
  assert.equal(
    reconnectDelay(1, true, policy, () => 0.999999),
    10_000,
  );
  assert.equal(
    reconnectDelay(1, true, policy, () => 0.5),
    5_000,
  );
  // equal jitter would have kept it inside [base/2, base]
  assert.ok(reconnectDelay(1, true, policy, () => 0.9) > policy.baseMs);
});

test('a fleet dropped at the same instant does not come back in the same second', () => {
  const n = 10_000;
  const perSecond = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    const s = Math.floor(reconnectDelay(1, true, policy) / 1000);
    perSecond.set(s, (perSecond.get(s) ?? 0) + 1);
  }
  // uniform over 10 s: ~1,000 per second; equal jitter put all 10,000 into second 0
  const busiest = Math.max(...perSecond.values());
  assert.ok(busiest < 0.15 * n, `busiest second had ${busiest} of ${n} reconnects`);
  assert.ok(perSecond.size >= 10, `reconnects fell into only ${perSecond.size} distinct seconds`);
});

test('the spread never exceeds the cap; later attempts and failed first connects keep the backoff', () => {
  assert.equal(
    reconnectDelay(1, true, { ...policy, capMs: 2_000 }, () => 0.999999),
    2_000,
  );
  for (const r of [0, 0.3, 0.999]) {
    assert.equal(
      reconnectDelay(1, false, policy, () => r),
      backoffDelay(1, policy, () => r),
    );
    assert.equal(
      reconnectDelay(3, true, policy, () => r),
      backoffDelay(3, policy, () => r),
    );
  }
});
