/**
 * When to renew, and how long to wait after a failure: pure functions (`random` injectable so tests
 * are deterministic), and the RenewalScheduler that runs renewals on an injectable Clock.
 *
 * The device clock may be wrong by minutes or hours (gateways without an RTC before NTP answers).
 * Server times (notBefore, notAfter, renewAfter) are therefore turned into agent times with the
 * offset between the server's clock and the agent's, measured at issuance from the HTTP Date of
 * the issuing answer (RFC 9110 §6.6.1): the schedule depends only on elapsed time, not on whether
 * the two clocks agree.
 */

export interface BackoffPolicy {
  /** Delay after the first failure. */
  baseMs: number;
  /** Upper bound of any delay. */
  capMs: number;
  /** Growth per failure (default 2). */
  factor?: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { baseMs: 2_000, capMs: 5 * 60_000, factor: 2 };

/**
 * Delay before retry number `failures` (1 = after the first failure): exponential growth capped
 * at `capMs`, with "equal jitter" — half of the step is fixed, half random — so retries of many
 * devices spread out but none retries immediately.
 */
export function backoffDelay(failures: number, policy: BackoffPolicy = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const n = Math.max(1, Math.floor(failures));
  const step = Math.min(policy.capMs, policy.baseMs * Math.pow(policy.factor ?? 2, n - 1));
  return Math.round(step / 2 + random() * (step / 2));
}

/**
 * Delay before reconnect attempt number `failures` to the MQTT broker. The first attempt after a
 * connection that was up (the broker closed it: restart, kick, network) uses "full jitter" over
 * `spreadMs`: when a broker restarts, all its devices lose their session in the same instant, and
 * an equal-jitter first delay (base/2..base) would bring them back inside one half second, each
 * with a TLS handshake. Spread uniformly over `spreadMs`, N devices arrive at about N/spread per
 * second. Later attempts (the broker still down) back off as backoffDelay does.
 */
export function reconnectDelay(
  failures: number,
  afterConnected: boolean,
  policy: BackoffPolicy & { spreadMs: number },
  random: () => number = Math.random,
): number {
  if (afterConnected && failures <= 1) return Math.round(random() * Math.min(policy.spreadMs, policy.capMs));
  return backoffDelay(failures, policy, random);
}

/**
 * The moment to start renewing a certificate valid from `notBefore` to `notAfter`: the server's
 * `renewAfter` when it gave one inside the validity period, else a random point between 60 % and
 * 75 % of the lifetime.
 */
export function renewalTime(cert: { notBefore: Date; notAfter: Date }, renewAfter?: Date, random: () => number = Math.random): Date {
  const from = cert.notBefore.getTime();
  const to = cert.notAfter.getTime();
  if (renewAfter && Number.isFinite(renewAfter.getTime()) && renewAfter.getTime() > from && renewAfter.getTime() < to) {
    return renewAfter;
  }
  const fraction = 0.6 + 0.15 * random();
  return new Date(from + (to - from) * fraction);
}

/** Wall time and timers of the agent; injectable (tests run days of renewals on a fake clock). */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  // not unref'd: the planned renewal is what keeps an agent without MQTT alive
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** The system clock moved by `offsetMs` (a device whose clock is wrong by that much). */
export function offsetClock(offsetMs: number, base: Clock = systemClock): Clock {
  return { now: () => base.now() + offsetMs, setTimeout: base.setTimeout, clearTimeout: base.clearTimeout };
}

/**
 * The agent's clock: the system clock, or — for integration tests that need a device with a wrong
 * clock — moved by EDGEID_TEST_CLOCK_OFFSET_MS (an integer, may be negative). Affects the agent's
 * own decisions (schedule, expiry, status), not OpenSSL's certificate checks.
 */
export function clockFromEnv(env: NodeJS.ProcessEnv = process.env): Clock {
  const raw = env.EDGEID_TEST_CLOCK_OFFSET_MS;
  if (raw === undefined || raw === '') return systemClock;
  const offset = Number(raw);
  if (!Number.isSafeInteger(offset)) throw new Error(`EDGEID_TEST_CLOCK_OFFSET_MS must be an integer, got "${raw}"`);
  return offsetClock(offset);
}

/** What the agent knows of a certificate to schedule its renewal (times of the server's clock). */
export interface ScheduledCertificate {
  notBefore: Date;
  notAfter: Date;
  /** Server clock minus agent clock at issuance (ms); 0 when unknown. */
  clockOffsetMs?: number;
  /** Agent time the certificate arrived; unknown for certificates stored by older agents. */
  receivedAt?: number;
}

/** Agent time at which to renew: renewalTime() moved from the server's clock to the agent's. */
export function localRenewalTime(cert: ScheduledCertificate, renewAfter?: Date, random: () => number = Math.random): number {
  return renewalTime(cert, renewAfter, random).getTime() - (cert.clockOffsetMs ?? 0);
}

/** Agent time at which the certificate expires. */
export function localExpiry(cert: ScheduledCertificate): number {
  return cert.notAfter.getTime() - (cert.clockOffsetMs ?? 0);
}

export const MIN_RENEWAL_INTERVAL_MS = 1_000;
export const MAX_RENEWAL_FLOOR_MS = 60_000;

/**
 * The least time between the starts of two renewals: a tenth of the time the certificate had when
 * it arrived, at least 1 s and at most 60 s. Whatever the schedule says (a clock jump, a server
 * announcing renewAfter in the past, a flood of renew-now), renewals never run closer than this.
 */
export function renewalFloorMs(cert: ScheduledCertificate | null): number {
  if (!cert) return MIN_RENEWAL_INTERVAL_MS;
  const from = cert.receivedAt !== undefined ? cert.receivedAt + (cert.clockOffsetMs ?? 0) : cert.notBefore.getTime();
  const useful = cert.notAfter.getTime() - from;
  return Math.min(MAX_RENEWAL_FLOOR_MS, Math.max(MIN_RENEWAL_INTERVAL_MS, Math.round(useful / 10)));
}

/** The next renewal a finished one asks for (agent clock, ms). */
export interface RenewalPlan {
  at: number;
  reason: string;
}

export interface RenewalSchedulerOptions {
  clock: Clock;
  /** One renewal; resolves with the next one to plan (null: the agent is ending). */
  run(reason: string): Promise<RenewalPlan | null>;
  /** The current floor (renewalFloorMs of the current certificate). */
  floorMs(): number;
  /** Called when the timer is (re)armed (logs, status). */
  onPlanned?(at: number, reason: string): void;
}

const MAX_TIMER_MS = 2 ** 31 - 1; // setTimeout's limit (~24.8 days); longer waits re-arm

/**
 * Runs renewals one at a time and never loses one that falls due:
 *   - while no renewal runs, exactly one timer is armed (unless stopped);
 *   - the timer is armed only when a renewal has finished, with the plan that renewal returned, so
 *     a plan can never be swallowed by the renewal still finishing;
 *   - `due()` while a renewal runs is remembered and runs once more right after it (several such
 *     calls coalesce into one);
 *   - no renewal starts sooner than floorMs() after the previous one started: an always-due
 *     schedule becomes one renewal per floor, never a tight loop.
 */
export class RenewalScheduler {
  private timer: unknown = null;
  private running: Promise<void> | null = null;
  private again: string | null = null;
  private lastStart = -Infinity;
  private stopped = false;
  private nextAt: number | null = null;
  private waiters: (() => void)[] = [];

  constructor(private readonly opts: RenewalSchedulerOptions) {}

  /** Agent time of the armed renewal (null while one runs or after stop). */
  get next(): number | null {
    return this.nextAt;
  }

  get busy(): boolean {
    return this.running !== null;
  }

  /** Plans a renewal at `at` (replacing the armed one); ignored while one runs — its own plan follows. */
  plan(p: RenewalPlan): void {
    if (this.stopped || this.running) return;
    this.arm(p);
  }

  /** A renewal is due now; resolves when a renewal that started after this call has finished. */
  due(reason: string): Promise<void> {
    if (this.stopped) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.waiters.push(resolve));
    if (this.running) this.again ??= reason;
    else this.arm({ at: this.opts.clock.now(), reason });
    return done;
  }

  /** Resolves once no renewal runs. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /** Disarms; a running renewal finishes (its plan is dropped). Pending `due()` promises resolve. */
  stop(): void {
    this.stopped = true;
    this.disarm();
    for (const w of this.waiters.splice(0)) w();
  }

  private disarm(): void {
    if (this.timer !== null) this.opts.clock.clearTimeout(this.timer);
    this.timer = null;
    this.nextAt = null;
  }

  private arm(p: RenewalPlan): void {
    this.disarm();
    const at = Math.max(p.at, this.lastStart + this.opts.floorMs());
    this.nextAt = at;
    const wait = () => {
      const delay = Math.max(0, at - this.opts.clock.now());
      this.timer = this.opts.clock.setTimeout(
        () => {
          this.timer = null;
          if (delay > MAX_TIMER_MS) return wait();
          this.start(p.reason);
        },
        Math.min(delay, MAX_TIMER_MS),
      );
    };
    wait();
    this.opts.onPlanned?.(at, p.reason);
  }

  private start(reason: string): void {
    if (this.stopped || this.running) return;
    this.nextAt = null;
    this.lastStart = this.opts.clock.now();
    const waiters = this.waiters.splice(0);
    let plan: RenewalPlan | null = null;
    this.running = (async () => {
      try {
        plan = await this.opts.run(reason);
      } catch {
        // run() reports its own failures; a throw must not end the schedule
        plan = { at: this.opts.clock.now(), reason: 'retry' };
      }
    })().finally(() => {
      this.running = null;
      for (const w of waiters) w();
      if (this.stopped) return;
      const again = this.again;
      this.again = null;
      if (again !== null) this.arm({ at: this.opts.clock.now(), reason: again });
      else if (plan) this.arm(plan);
    });
  }
}
