/**
 * Waiting, for tests, the demo and the benches: on a condition (`waitFor`, polled) or on an event
 * (`waitForEvent`). Nothing here sleeps for a fixed time in place of synchronisation.
 */
import type { EventEmitter } from 'node:events';

export interface WaitOptions {
  /** Give up after this long (default 30 s); the error names `what`. */
  timeoutMs?: number;
  /** How often to ask again (default 50 ms). */
  intervalMs?: number;
  /** Treat a throw from the condition as "not yet" (for conditions read from other processes). */
  retryErrors?: boolean;
}

/** Asks `fn` until it returns something truthy, and returns that. A number is the timeout (ms). */
export async function waitFor<T>(what: string, fn: () => T | Promise<T>, options: WaitOptions | number = {}): Promise<NonNullable<T>> {
  const opts = typeof options === 'number' ? { timeoutMs: options } : options;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    let v: T | undefined;
    try {
      v = await fn();
    } catch (e) {
      if (!opts.retryErrors) throw e;
      lastError = e;
    }
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) {
      const why = lastError === undefined ? '' : ` (last error: ${lastError instanceof Error ? lastError.message : String(lastError)})`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 50));
  }
}

/**
 * Resolves with the arguments of the first `event` on `emitter` that `filter` accepts (default:
 * the first), or rejects after `timeoutMs`. Listen before doing what emits the event.
 */
export function waitForEvent<A extends unknown[] = unknown[]>(
  emitter: EventEmitter,
  event: string,
  opts: { filter?: (...args: A) => boolean; timeoutMs?: number; what?: string } = {},
): Promise<A> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const on = (...args: unknown[]): void => {
      if (opts.filter && !opts.filter(...(args as A))) return;
      clearTimeout(timer);
      emitter.off(event, on);
      resolve(args as A);
    };
    const timer = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${opts.what ?? `event '${event}'`}`));
    }, timeoutMs);
    emitter.on(event, on);
  });
}
