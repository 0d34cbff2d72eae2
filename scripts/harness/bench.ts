/** Small pieces the load benchmarks share: their command-line options, percentiles and number formats. */

/** The value after `name` on the command line, or `def`. */
export function arg(name: string, def: string): string {
  const a = process.argv.slice(2);
  const i = a.indexOf(name);
  return i >= 0 ? a[i + 1]! : def;
}
export const flag = (name: string) => process.argv.slice(2).includes(name);

/**
 * Refuses the command line unless every option is one of `flags` (no value) or `values` (followed
 * by a value): a misspelt option would otherwise run the default silently and print results that
 * look like the ones asked for.
 */
export function checkArgs(flags: string[], values: string[]): void {
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i++) {
    const o = a[i]!;
    if (flags.includes(o)) continue;
    if (values.includes(o)) {
      const v = a[i + 1];
      if (v === undefined || v.startsWith('--')) throw new Error(`${o} needs a value`);
      i++;
      continue;
    }
    throw new Error(`unknown option ${JSON.stringify(o)}; known: ${[...flags, ...values.map((v) => `${v} N`)].join(', ')}`);
  }
}

/** The p-th percentile of an ascending list (NaN when empty). */
export const pctl = (sorted: number[], p: number) =>
  sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]! : NaN;
export const f0 = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : '–');
export const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '–');
