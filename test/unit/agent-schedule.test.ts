import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  RenewalScheduler,
  backoffDelay,
  localExpiry,
  localRenewalTime,
  renewalFloorMs,
  renewalTime,
  type Clock,
  type RenewalPlan,
  type ScheduledCertificate,
} from '../../agent/schedule.js';

test('backoff grows exponentially, stays within [step/2, step] and never exceeds the cap', () => {
  const policy = { baseMs: 1000, capMs: 60_000, factor: 2 };
  assert.equal(
    backoffDelay(1, policy, () => 0),
    500,
  );
  assert.equal(
    backoffDelay(1, policy, () => 1),
    1000,
  );
  assert.equal(
    backoffDelay(3, policy, () => 1),
    4000,
  );
  assert.equal(
    backoffDelay(3, policy, () => 0),
    2000,
  );
  for (let n = 1; n < 60; n++) assert.ok(backoffDelay(n, policy) <= 60_000);
  assert.equal(
    backoffDelay(50, policy, () => 1),
    60_000,
  );
  assert.equal(
    backoffDelay(50, policy, () => 0),
    30_000,
  );
});

test("renews at the server's renewAfter when it lies inside the validity period", () => {
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

// ---- the scheduler on a fake clock --------------------------------------------------------------

/** A fake clock: timers run in time order when `step()` is called; nothing waits for real time. */
class FakeClock implements Clock {
  t = Date.parse('2030-01-01T00:00:00Z');
  private seq = 0;
  private timers = new Map<number, { at: number; fn: () => void }>();
  constructor(private readonly skewMs = 0) {}
  /** The true time (the server's clock). */
  get real(): number {
    return this.t;
  }
  now(): number {
    return this.t + this.skewMs;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers.delete(h as number);
  }
  armed(): number {
    return this.timers.size;
  }
  /** Runs the earliest timer (advancing time to it), then lets promise callbacks settle. */
  async step(): Promise<boolean> {
    let first: [number, { at: number; fn: () => void }] | undefined;
    for (const e of this.timers) if (!first || e[1].at < first[1].at) first = e;
    if (!first) return false;
    this.timers.delete(first[0]);
    this.t = Math.max(this.t, first[1].at);
    first[1].fn();
    for (let i = 0; i < 20; i++) await new Promise<void>((r) => setImmediate(r));
    return true;
  }
  sleep(ms: number): Promise<void> {
    return new Promise((r) => this.setTimeout(r, ms));
  }
}

/**
 * A simulated agent + server: the server issues certificates of `lifetimeMs` (notBefore backdated
 * 60 s, renewAfter at 2/3 ± 5 % as edgeid-server does) after a renewal that takes `renewMs`; the
 * agent turns them into a plan exactly as agent.ts does, from the Date of the answer.
 */
function simulation(skewMs: number, lifetimeMs: number, renewMs = 700) {
  const clock = new FakeClock(skewMs);
  let cert: ScheduledCertificate | null = null;
  const starts: number[] = [];
  let expiredAtStart = 0;
  let random = 0.37;
  const rnd = () => (random = ((random * 9301 + 49297) % 233280) / 233280);
  const run = async (): Promise<RenewalPlan> => {
    starts.push(clock.real);
    if (cert && cert.notAfter.getTime() <= clock.real) expiredAtStart++;
    await clock.sleep(renewMs);
    const serverNow = clock.real;
    const dateHeader = Math.floor(serverNow / 1000) * 1000; // HTTP Date has whole seconds
    cert = {
      notBefore: new Date(serverNow - 60_000),
      notAfter: new Date(serverNow + lifetimeMs),
      clockOffsetMs: dateHeader - clock.now(),
      receivedAt: clock.now(),
    };
    const renewAfter = new Date(serverNow + Math.round(lifetimeMs * (2 / 3 + (rnd() - 0.5) * 0.1)));
    return { at: localRenewalTime(cert, renewAfter, rnd), reason: 'schedule' };
  };
  const scheduler = new RenewalScheduler({ clock, run, floorMs: () => renewalFloorMs(cert) });
  return { clock, scheduler, starts, expiredAtStart: () => expiredAtStart, cert: () => cert };
}

const SKEWS: [string, number][] = [
  ['no skew', 0],
  ['60 s ahead', 60_000],
  ['40 min ahead', 40 * 60_000],
  ['3 h ahead', 3 * 3_600_000],
  ['10 min behind', -10 * 60_000],
  ['5 h behind', -5 * 3_600_000],
];

for (const [name, skew] of SKEWS) {
  for (const lifetimeMs of [20_000, 3_600_000]) {
    test(`renews 500 times without a certificate ever expiring, clock ${name}, ${lifetimeMs / 1000} s certificates`, async () => {
      const sim = simulation(skew, lifetimeMs);
      sim.scheduler.due('startup');
      while (sim.starts.length < 500) {
        assert.ok(await sim.clock.step(), `the schedule died after ${sim.starts.length} renewals (no timer armed)`);
        if (!sim.scheduler.busy) assert.equal(sim.clock.armed() >= 1, true, 'idle with no renewal planned');
      }
      assert.equal(sim.expiredAtStart(), 0, 'a renewal started after the certificate had expired');
      // never a tight loop: successive starts at least the floor apart (1 s for 20 s certificates)
      const floor = renewalFloorMs(sim.cert());
      for (let i = 1; i < sim.starts.length; i++)
        assert.ok(sim.starts[i]! - sim.starts[i - 1]! >= floor, `renewals ${i - 1} and ${i} closer than the floor`);
      // and not renewing needlessly often: about every 2/3 of the lifetime
      const mean = (sim.starts.at(-1)! - sim.starts[0]!) / (sim.starts.length - 1);
      assert.ok(mean > lifetimeMs * 0.55 && mean < lifetimeMs * 0.8, `mean interval ${mean} ms for a ${lifetimeMs} ms lifetime`);
      assert.ok(localExpiry(sim.cert()!) > sim.clock.now());
      sim.scheduler.stop();
    });
  }
}

test('a renewal that falls due while one is finishing runs right after it, never lost', async () => {
  const clock = new FakeClock();
  let runs = 0;
  let releaseRun!: () => void;
  const scheduler = new RenewalScheduler({
    clock,
    floorMs: () => 1000,
    run: async () => {
      runs++;
      await new Promise<void>((r) => (releaseRun = r));
      return { at: clock.now() + 3_600_000, reason: 'schedule' };
    },
  });
  const first = scheduler.due('startup');
  await clock.step();
  assert.equal(runs, 1);
  // due twice while the first runs: coalesced into one more renewal, after the first finished
  const second = scheduler.due('renew-now');
  const third = scheduler.due('expired');
  releaseRun();
  await first;
  assert.equal(runs, 1, 'the second waits for the floor');
  assert.ok(scheduler.next !== null && scheduler.next >= clock.now(), 'the due renewal is armed');
  await clock.step();
  assert.equal(runs, 2);
  releaseRun();
  await Promise.all([second, third]);
  assert.equal(runs, 2, 'two due calls during one renewal make one renewal');
  assert.ok(scheduler.next !== null && scheduler.next > clock.now() + 3_000_000, 'back on the plan of the last renewal');
  scheduler.stop();
});

test('an always-due schedule runs once per floor, not in a tight loop', async () => {
  const clock = new FakeClock();
  const starts: number[] = [];
  const scheduler = new RenewalScheduler({
    clock,
    floorMs: () => 5000,
    run: async () => {
      starts.push(clock.now());
      return { at: clock.now() - 60_000, reason: 'schedule' }; // always in the past
    },
  });
  scheduler.due('startup');
  const begin = clock.now();
  while (clock.now() - begin < 600_000) assert.ok(await clock.step());
  assert.ok(starts.length <= 600_000 / 5000 + 1, `${starts.length} renewals in 10 minutes`);
  assert.ok(starts.length >= 600_000 / 5000 - 1);
  scheduler.stop();
});

test('a failing run (it throws) keeps the schedule alive', async () => {
  const clock = new FakeClock();
  let runs = 0;
  const scheduler = new RenewalScheduler({
    clock,
    floorMs: () => 2000,
    run: async () => {
      runs++;
      throw new Error('boom');
    },
  });
  scheduler.due('startup');
  for (let i = 0; i < 10; i++) assert.ok(await clock.step());
  assert.equal(runs, 10);
  scheduler.stop();
  assert.equal(await clock.step(), false, 'stop disarms');
});
