import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, renewalTime } from '../../agent/schedule.js';

test('backoff grows exponentially, stays within [step/2, step] and never exceeds the cap', () => {
  const policy = { baseMs: 1000, capMs: 60_000, factor: 2 };
  assert.equal(backoffDelay(1, policy, () => 0), 500);
  assert.equal(backoffDelay(1, policy, () => 1), 1000);
  assert.equal(backoffDelay(3, policy, () => 1), 4000);
  assert.equal(backoffDelay(3, policy, () => 0), 2000);
  for (let n = 1; n < 60; n++) assert.ok(backoffDelay(n, policy) <= 60_000);
  assert.equal(backoffDelay(50, policy, () => 1), 60_000);
  assert.equal(backoffDelay(50, policy, () => 0), 30_000);
});

test('renews at the server\'s renewAfter when it lies inside the validity period', () => {
  const notBefore = new Date('2030-01-01T00:00:00Z');
  const notAfter = new Date('2030-01-01T01:00:00Z');
  const renewAfter = new Date('2030-01-01T00:40:00Z');
  assert.equal(renewalTime({ notBefore, notAfter }, renewAfter).toISOString(), renewAfter.toISOString());
});

test('without a usable renewAfter renews between 60 % and 75 % of the lifetime', () => {
  const notBefore = new Date('2030-01-01T00:00:00Z');
  const notAfter = new Date('2030-01-01T01:40:00Z'); // 100 minutes
  assert.equal(renewalTime({ notBefore, notAfter }, undefined, () => 0).toISOString(), '2030-01-01T01:00:00.000Z');
  assert.equal(renewalTime({ notBefore, notAfter }, undefined, () => 1).toISOString(), '2030-01-01T01:15:00.000Z');
  // a renewAfter past notAfter is ignored
  assert.equal(renewalTime({ notBefore, notAfter }, new Date('2030-01-02T00:00:00Z'), () => 0).toISOString(), '2030-01-01T01:00:00.000Z');
});
