/**
 * How tests, benches and harnesses start edgeid's three programs, chosen by EDGEID_TEST_BINS:
 *   (unset) or `source`: the TypeScript sources through tsx — what a developer edits; slow to
 *           start (tsx compiles every module on each start: ~0.5–2.5 s on this project's machine).
 *   `dist`: the esbuild bundles of `scripts/bundle.mjs` with plain node (~0.2–0.5 s), as the
 *           packages ship them. `scripts/test` uses them: it rebuilds them (scripts/setup) first.
 *   `installed`: the commands on the PATH (`scripts/install` links the bundles there).
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { REPO } from './fs.js';

export type Program = 'edgeid-admin' | 'edgeid-agent' | 'edgeid-server';

const SOURCES: Record<Program, string> = {
  'edgeid-admin': 'enroll-server/admin-cli.ts',
  'edgeid-agent': 'agent/cli.ts',
  'edgeid-server': 'enroll-server/main.ts',
};

// tsx by absolute URL: the programs may run in other working directories
const TSX = pathToFileURL(path.join(REPO, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;

export type BinsMode = 'source' | 'dist' | 'installed';

export function binsMode(env: NodeJS.ProcessEnv = process.env): BinsMode {
  const m = env.EDGEID_TEST_BINS ?? 'source';
  if (m === 'source' || m === 'dist' || m === 'installed') return m;
  throw new Error(`EDGEID_TEST_BINS must be source, dist or installed, not "${m}"`);
}

/** The command line (program first) that starts `name`, before its own arguments. */
export function programCommand(name: Program, mode: BinsMode = binsMode()): [string, ...string[]] {
  if (mode === 'installed') return [name];
  if (mode === 'dist') {
    const bundle = path.join(REPO, 'dist', `${name}.js`);
    if (!existsSync(bundle))
      throw new Error(`EDGEID_TEST_BINS=dist but ${bundle} is missing: run scripts/setup (or node scripts/bundle.mjs)`);
    const stale = newerSource(statSync(bundle).mtimeMs);
    if (stale) throw new Error(`EDGEID_TEST_BINS=dist but ${stale} is newer than ${bundle}: run node scripts/bundle.mjs`);
    return [process.execPath, bundle];
  }
  return [process.execPath, '--import', TSX, path.join(REPO, SOURCES[name])];
}

/** A source file of the programs newer than `mtimeMs` (a bundle built before it would be stale), or null. */
function newerSource(mtimeMs: number): string | null {
  const walk = (dir: string): string | null => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.name === 'node_modules' || e.name === 'build') continue;
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        const hit = walk(p);
        if (hit) return hit;
      } else if (/\.(tsx?|sql|css)$/.test(e.name) && statSync(p).mtimeMs > mtimeMs) return path.relative(REPO, p);
    }
    return null;
  };
  for (const d of ['agent', 'enroll-server', 'protocol']) {
    const hit = walk(path.join(REPO, d));
    if (hit) return hit;
  }
  return null;
}
