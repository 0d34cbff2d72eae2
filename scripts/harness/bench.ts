/** Small pieces the load benchmarks share: their command-line options, percentiles and number formats. */

/** The value after `name` on the command line, or `def`. */
export function arg(name: string, def: string): string {
  const a = process.argv.slice(2);
  const i = a.indexOf(name);
  return i >= 0 ? a[i + 1]! : def;
}
export const flag = (name: string) => process.argv.slice(2).includes(name);

/** The p-th percentile of an ascending list (NaN when empty). */
export const pctl = (sorted: number[], p: number) =>
  sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]! : NaN;
export const f0 = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : '–');
export const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '–');
