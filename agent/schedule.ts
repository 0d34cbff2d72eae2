/**
 * When to renew, and how long to wait after a failure (issue 4 §3).
 * Pure functions; `random` is injectable so tests are deterministic.
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
