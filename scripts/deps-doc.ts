/**
 * Generates docs/DEPENDENCIES.md: every package the programs ship with (the production tree of
 * package-lock.json, `npm ls --omit=dev --all`), with its version and license.
 *   node --import tsx scripts/deps-doc.ts          writes docs/DEPENDENCIES.md
 *   node --import tsx scripts/deps-doc.ts --check  exits 1 if docs/DEPENDENCIES.md is out of date
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
export const DEPENDENCIES_MD = path.join(root, 'docs', 'DEPENDENCIES.md');

/** Licenses a plant can ship without obligations beyond attribution (SPDX identifiers). */
export const PERMISSIVE = new Set(['MIT', 'ISC', 'BSD-2-Clause', 'BSD-3-Clause', 'Apache-2.0', '0BSD']);

export interface ProductionPackage {
  name: string;
  version: string;
  license: string;
  direct: boolean;
}

/** The production packages of package-lock.json (lockfile v3: `packages`, dev-only ones flagged `dev`). */
export function productionPackages(lockText = readFileSync(path.join(root, 'package-lock.json'), 'utf8')): ProductionPackage[] {
  const lock = JSON.parse(lockText) as {
    packages: Record<string, { version?: string; license?: string; dev?: boolean; dependencies?: Record<string, string> }>;
  };
  const direct = new Set(Object.keys(lock.packages['']?.dependencies ?? {}));
  const out: ProductionPackage[] = [];
  for (const [key, p] of Object.entries(lock.packages)) {
    if (key === '' || p.dev) continue;
    const name = key.slice(key.lastIndexOf('node_modules/') + 'node_modules/'.length);
    out.push({
      name,
      version: p.version ?? '?',
      license: p.license ?? 'UNKNOWN',
      direct: direct.has(name) && key === `node_modules/${name}`,
    });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name) || a.version.localeCompare(b.version));
}

/** Every alternative of an SPDX expression like `(MIT OR Apache-2.0)` is permissive, or one of an OR is. */
export function permissive(license: string): boolean {
  const expr = license.replace(/^\((.*)\)$/, '$1');
  if (/ AND /.test(expr)) return expr.split(' AND ').every((x) => permissive(x.trim()));
  return expr.split(' OR ').some((x) => PERMISSIVE.has(x.trim()));
}

export function renderDependenciesMarkdown(pkgs = productionPackages()): string {
  const byLicense = new Map<string, number>();
  for (const p of pkgs) byLicense.set(p.license, (byLicense.get(p.license) ?? 0) + 1);
  return [
    '# Production dependencies',
    '',
    'Generated from `package-lock.json` by `node --import tsx scripts/deps-doc.ts`; a test fails when this file',
    'and the lockfile disagree, or when a package has a license outside MIT, ISC, BSD-2/3-Clause, Apache-2.0 and',
    '0BSD. These are the packages the three programs are bundled from (`npm ls --omit=dev --all`); the agent',
    "bundle holds only the agent's share (see `dist/*.meta.json` after `node scripts/bundle.mjs --metafile`).",
    'Debian packages (tpm2-tss, OpenSSL, Mosquitto) come with their own notices; better-sqlite3 compiles SQLite',
    '(public domain) into its addon.',
    '',
    "Vulnerability audit: `npm audit --omit=dev` needs the registry's audit endpoint, which the development",
    'and CI machines of this project cannot reach; run it where the release is built with network access (and',
    'on every lockfile change), beside `debsecan` for the Debian packages.',
    '',
    `${pkgs.length} packages, ${pkgs.filter((p) => p.direct).length} of them direct dependencies (**bold**). Licenses: ${[...byLicense]
      .sort((a, b) => b[1] - a[1])
      .map(([l, n]) => `${l} ${n}`)
      .join(', ')}.`,
    '',
    '| package | version | license |',
    '|---|---|---|',
    ...pkgs.map((p) => `| ${p.direct ? `**${p.name}**` : p.name} | ${p.version} | ${p.license} |`),
    '',
  ].join('\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const text = renderDependenciesMarkdown();
  if (process.argv.includes('--check')) {
    if (readFileSync(DEPENDENCIES_MD, 'utf8') !== text) {
      console.error('docs/DEPENDENCIES.md is out of date: node --import tsx scripts/deps-doc.ts');
      process.exit(1);
    }
  } else {
    writeFileSync(DEPENDENCIES_MD, text);
  }
}
