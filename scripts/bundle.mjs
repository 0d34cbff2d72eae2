#!/usr/bin/env node
// Bundles the three programs into files that run with plain `node` (no tsx, no node_modules):
//   dist/edgeid-agent.js      esbuild bundle of agent/cli.ts (ESM, Node 20)
//   dist/edgeid_tpm.node      the TPM addon, copied beside it (the bundle loads it from there
//                             unless EDGEID_TPM_ADDON names another path)
//   dist/edgeid-server.js     esbuild bundle of enroll-server/main.ts
//   dist/edgeid-admin.js      esbuild bundle of enroll-server/admin-cli.ts
//   dist/better_sqlite3.node  better-sqlite3's native addon, copied beside the server bundle
//   dist/pkcs11.node          pkcs11js's native addon (issuing CA key in a PKCS#11 token), beside
//                             the server bundle; loaded only when ca.key is "pkcs11"
//   dist/migrations/*.sql     the store's schema migrations, read at start from ./migrations/
//                             beside the server bundle (enroll-server/store/migrate.ts)
//   dist/migrations-pg/*.sql  the PostgreSQL store's migrations (enroll-server/store/postgres.ts)
//   dist/console/app.js, .css the web console's browser code (enroll-server/console/ui, Preact),
//                             served by the server bundle from ./console/ (console/assets.ts)
// Usage: node scripts/bundle.mjs [--outdir DIR] [--metafile] [--only agent|server|admin]
import { build } from 'esbuild';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const outdir = path.resolve(args.includes('--outdir') ? args[args.indexOf('--outdir') + 1] : path.join(root, 'dist'));
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
const addon = path.join(root, 'agent/tpm/build/Release/edgeid_tpm.node');
mkdirSync(outdir, { recursive: true });

// ESM output: CommonJS dependencies still call require(), and the addon is found beside the bundle.
const common = [
  "import { createRequire as __edgeidCreateRequire } from 'node:module';",
  'const require = __edgeidCreateRequire(import.meta.url);',
];

// The agent speaks mqtts:// only. mqtt.js loads its WebSocket (ws) and SOCKS-proxy (socks,
// ip-address, smart-buffer) transports at the first connect whatever the URL; they cost the
// running agent ~0.8 MB of RSS (budget: RSS ≤ 60 MB). In the bundle they are stand-ins that fail
// clearly if ever reached (a ws:// URL, or MQTTJS_SOCKS_PROXY set).
const LEFT_OUT = {
  ws: "function WebSocket() { throw new Error('edgeid-agent: MQTT over WebSockets is not in the agent bundle; use an mqtts:// broker URL'); } module.exports = WebSocket; module.exports.default = WebSocket;",
  socks:
    "class SocksClient { constructor() { throw new Error('edgeid-agent: SOCKS proxies (MQTTJS_SOCKS_PROXY) are not in the agent bundle'); } } module.exports = { SocksClient };",
};
const leaveOut = {
  name: 'edgeid-leave-out',
  setup(b) {
    b.onResolve({ filter: /^(ws|socks)$/ }, (a) => ({ path: a.path, namespace: 'edgeid-left-out' }));
    b.onLoad({ filter: /.*/, namespace: 'edgeid-left-out' }, (a) => ({ contents: LEFT_OUT[a.path], loader: 'js' }));
  },
};

// better-sqlite3 finds its addon with the `bindings` package, which searches node_modules trees
// relative to the calling file: nothing to find in a bundle. In the server bundle `bindings` is a
// stand-in that loads the addon named beside the bundle (the `require` of the banner resolves
// relative to the bundle file), or the file EDGEID_SQLITE_ADDON names. The addon is built by
// better-sqlite3's install script against the Node that ran `npm ci` (V8 API, not N-API: it loads
// only in that Node major).
const sqliteAddon = path.join(root, 'node_modules/better-sqlite3/build/Release/better_sqlite3.node');
const bindingsBesideBundle = {
  name: 'edgeid-bindings-beside-bundle',
  setup(b) {
    b.onResolve({ filter: /^bindings$/ }, (a) => ({ path: a.path, namespace: 'edgeid-bindings' }));
    b.onLoad({ filter: /.*/, namespace: 'edgeid-bindings' }, () => ({
      contents: "module.exports = (name) => require(process.env.EDGEID_SQLITE_ADDON || ('./' + name));",
      loader: 'js',
    }));
  },
};

// pkcs11js loads its addon as require('./build/Release/pkcs11.node'): in the server bundle it is
// the file beside the bundle (or the one EDGEID_PKCS11_ADDON names). enroll-server/ca/keys.ts
// imports the PKCS#11 packages with import(), so the addon is loaded only when a token is configured.
const pkcs11Addon = path.join(root, 'node_modules/pkcs11js/build/Release/pkcs11.node');
const pkcs11BesideBundle = {
  name: 'edgeid-pkcs11-beside-bundle',
  setup(b) {
    b.onResolve({ filter: /pkcs11\.node$/ }, (a) => ({ path: a.path, namespace: 'edgeid-pkcs11' }));
    b.onLoad({ filter: /.*/, namespace: 'edgeid-pkcs11' }, () => ({
      contents: "module.exports = require(process.env.EDGEID_PKCS11_ADDON || './pkcs11.node');",
      loader: 'js',
    }));
  },
};

const PROGRAMS = {
  agent: {
    entry: 'agent/cli.ts',
    out: 'edgeid-agent.js',
    banner: [
      ...common,
      "if (!process.env.EDGEID_TPM_ADDON) process.env.EDGEID_TPM_ADDON = new URL('./edgeid_tpm.node', import.meta.url).pathname;",
    ],
    define: { EDGEID_AGENT_VERSION: JSON.stringify(pkg.version), EDGEID_BUNDLED: 'true' },
    // optional transports/features of dependencies the agent does not use
    external: ['bufferutil', 'utf-8-validate', 'pino-pretty'],
    plugins: [leaveOut],
    natives: [[addon, 'edgeid_tpm.node', 'npm run build:addon']],
  },
  server: {
    entry: 'enroll-server/main.ts',
    out: 'edgeid-server.js',
    banner: common,
    define: {},
    // mqtt.js's optional native WebSocket speed-ups (ws tries them and falls back to JS)
    external: ['bufferutil', 'utf-8-validate'],
    plugins: [bindingsBesideBundle, pkcs11BesideBundle],
    natives: [
      [sqliteAddon, 'better_sqlite3.node', 'npm ci (better-sqlite3 builds it)'],
      [pkcs11Addon, 'pkcs11.node', 'npm ci (pkcs11js builds it)'],
    ],
    // migrate.ts reads new URL('./migrations/', import.meta.url): beside the bundle once bundled
    dataDirs: [
      [path.join(root, 'enroll-server/store/migrations'), 'migrations'],
      [path.join(root, 'enroll-server/store/migrations-pg'), 'migrations-pg'],
    ],
  },
  admin: {
    entry: 'enroll-server/admin-cli.ts',
    out: 'edgeid-admin.js',
    banner: common,
    define: {},
    external: ['bufferutil', 'utf-8-validate'],
    // the admin CLI reaches the server's modules (DATA_FILES) but never opens a token: no pkcs11.node
    plugins: [bindingsBesideBundle, pkcs11BesideBundle],
    natives: [],
  },
};

const only = args.includes('--only') ? args[args.indexOf('--only') + 1].split(',') : Object.keys(PROGRAMS);
const kb = (f) => (statSync(f).size / 1024).toFixed(0);
for (const name of only) {
  const p = PROGRAMS[name];
  if (!p) throw new Error(`--only: unknown program ${name} (agent, server, admin)`);
  const outfile = path.join(outdir, p.out);
  const result = await build({
    entryPoints: [path.join(root, p.entry)],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    minify: true,
    sourcemap: false,
    legalComments: 'none',
    metafile: true,
    banner: { js: p.banner.join('\n') },
    define: p.define,
    external: p.external,
    plugins: p.plugins,
    logLevel: 'warning',
  });

  // esbuild keeps the entry's own hashbang (`node --import tsx`, for the sources): plain node here.
  const text = readFileSync(outfile, 'utf8').split('\n');
  writeFileSync(outfile, ['#!/usr/bin/env node', ...text.filter((l, i) => !(i < 6 && l.startsWith('#!')))].join('\n'));
  chmodSync(outfile, 0o755);
  const notes = [];
  for (const [src, base, how] of p.natives) {
    if (existsSync(src)) {
      copyFileSync(src, path.join(outdir, base));
      notes.push(`${base} ${kb(src)} KiB`);
    } else console.warn(`[bundle] ${path.relative(root, src)} not built (${how}); ${p.out} needs it beside itself`);
  }
  for (const [src, base] of p.dataDirs ?? []) {
    const dst = path.join(outdir, base);
    rmSync(dst, { recursive: true, force: true });
    mkdirSync(dst, { recursive: true });
    const files = readdirSync(src).filter((f) => f.endsWith('.sql'));
    for (const f of files) copyFileSync(path.join(src, f), path.join(dst, f));
    notes.push(`${base}/ ${files.length} files`);
  }
  if (name === 'server') {
    // the console's browser bundle, with the options of enroll-server/console/assets.ts uiBuildOptions
    const dst = path.join(outdir, 'console');
    rmSync(dst, { recursive: true, force: true });
    const ui = await build({
      entryPoints: { app: path.join(root, 'enroll-server/console/ui/main.tsx') },
      outdir: dst,
      bundle: true,
      platform: 'browser',
      format: 'esm',
      target: 'es2020',
      jsx: 'automatic',
      jsxImportSource: 'preact',
      minify: true,
      legalComments: 'none',
      logLevel: 'warning',
      metafile: true,
    });
    // the server package ships the console's dependencies (Preact, qrcode) too: in its metafile's inputs
    Object.assign(result.metafile.inputs, ui.metafile.inputs);
    notes.push(`console/ ${kb(path.join(dst, 'app.js'))} KiB`);
  }
  if (args.includes('--metafile')) writeFileSync(path.join(outdir, p.out.replace(/\.js$/, '.meta.json')), JSON.stringify(result.metafile));
  console.log(`[bundle] ${path.relative(root, outfile)} ${kb(outfile)} KiB` + (notes.length ? `, ${notes.join(', ')}` : ''));
}
