/**
 * The console's browser code (ui/*.tsx, Preact) and style sheet, served from the server itself:
 * no CDN, the plant network may have no route out.
 *
 * - Bundled server (dist/edgeid-server.js): scripts/bundle.mjs builds them with esbuild into
 *   `console/app.js` and `console/app.css` beside the server bundle; they are read from there.
 * - Sources (tsx): there is no such directory beside this file, so the first request builds them
 *   in memory with esbuild (a development dependency), once per process.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface ConsoleAssets {
  js: string;
  css: string;
}

/** esbuild options of the console bundle (shared with scripts/bundle.mjs through uiBuildOptions). */
export function uiBuildOptions(entry: string) {
  return {
    entryPoints: { app: entry },
    bundle: true,
    platform: 'browser' as const,
    format: 'esm' as const,
    target: 'es2020',
    jsx: 'automatic' as const,
    jsxImportSource: 'preact',
    minify: true,
    legalComments: 'none' as const,
    logLevel: 'warning' as const,
  };
}

let built: Promise<ConsoleAssets> | null = null;

/** The bundle: from beside the server bundle when it is there, else built from ui/ (once). */
export function consoleAssets(): Promise<ConsoleAssets> {
  built ??= load().catch((e: unknown) => {
    built = null;
    throw e;
  });
  return built;
}

async function load(): Promise<ConsoleAssets> {
  const dir = new URL('./console/', import.meta.url);
  const js = new URL('app.js', dir);
  if (existsSync(fileURLToPath(js))) {
    return { js: readFileSync(js, 'utf8'), css: readFileSync(new URL('app.css', dir), 'utf8') };
  }
  const entry = fileURLToPath(new URL('./ui/main.tsx', import.meta.url));
  if (!existsSync(entry)) throw new Error(`the console bundle is missing: neither ${fileURLToPath(js)} nor ${entry} exists`);
  // a variable specifier: a server bundle never includes esbuild (it has the built files instead)
  const esbuildName = 'esbuild';
  const esbuild = (await import(esbuildName)) as typeof import('esbuild');
  const out = await esbuild.build({ ...uiBuildOptions(entry), write: false, outdir: '/console-out' });
  const text = (ext: string) => out.outputFiles.find((f) => f.path.endsWith(ext))?.text ?? '';
  return { js: text('.js'), css: text('.css') };
}
