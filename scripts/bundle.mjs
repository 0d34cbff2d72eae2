#!/usr/bin/env node
// Bundles the edge agent into ONE file that runs with plain `node` (issue 4 §8):
//   dist/edgeid-agent.js      esbuild bundle of agent/cli.ts (ESM, Node 20)
//   dist/edgeid_tpm.node      the TPM addon, copied beside it (the bundle loads it from there
//                             unless EDGEID_TPM_ADDON names another path)
// Usage: node scripts/bundle.mjs [--outdir DIR] [--metafile]
import { build } from 'esbuild';
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const outdir = path.resolve(args.includes('--outdir') ? args[args.indexOf('--outdir') + 1] : path.join(root, 'dist'));
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
const addon = path.join(root, 'agent/tpm/build/Release/edgeid_tpm.node');
const outfile = path.join(outdir, 'edgeid-agent.js');
mkdirSync(outdir, { recursive: true });

// ESM output: CommonJS dependencies still call require(), and the addon is found beside the bundle.
const banner = [
  "import { createRequire as __edgeidCreateRequire } from 'node:module';",
  'const require = __edgeidCreateRequire(import.meta.url);',
  "if (!process.env.EDGEID_TPM_ADDON) process.env.EDGEID_TPM_ADDON = new URL('./edgeid_tpm.node', import.meta.url).pathname;",
].join('\n');

// The agent speaks mqtts:// only. mqtt.js loads its WebSocket (ws) and SOCKS-proxy (socks,
// ip-address, smart-buffer) transports at the first connect whatever the URL; they cost the
// running agent ~0.8 MB of RSS (issue 4: RSS ≤ 60 MB). In the bundle they are stand-ins that fail
// clearly if ever reached (a ws:// URL, or MQTTJS_SOCKS_PROXY set).
const LEFT_OUT = {
  ws: "function WebSocket() { throw new Error('edgeid-agent: MQTT over WebSockets is not in the agent bundle; use an mqtts:// broker URL'); } module.exports = WebSocket; module.exports.default = WebSocket;",
  socks: "class SocksClient { constructor() { throw new Error('edgeid-agent: SOCKS proxies (MQTTJS_SOCKS_PROXY) are not in the agent bundle'); } } module.exports = { SocksClient };",
};
const leaveOut = {
  name: 'edgeid-leave-out',
  setup(b) {
    b.onResolve({ filter: /^(ws|socks)$/ }, (a) => ({ path: a.path, namespace: 'edgeid-left-out' }));
    b.onLoad({ filter: /.*/, namespace: 'edgeid-left-out' }, (a) => ({ contents: LEFT_OUT[a.path], loader: 'js' }));
  },
};

const result = await build({
  entryPoints: [path.join(root, 'agent/cli.ts')],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  minify: true,
  sourcemap: false,
  legalComments: 'none',
  metafile: true,
  banner: { js: banner },
  define: {
    EDGEID_AGENT_VERSION: JSON.stringify(pkg.version),
    EDGEID_BUNDLED: 'true',
  },
  // optional transports/features of dependencies the agent does not use
  external: ['bufferutil', 'utf-8-validate', 'pino-pretty'],
  plugins: [leaveOut],
  logLevel: 'warning',
});

// esbuild keeps the entry's own hashbang (`node --import tsx`, for the sources): plain node here.
const text = readFileSync(outfile, 'utf8').split('\n');
writeFileSync(outfile, ['#!/usr/bin/env node', ...text.filter((l, i) => !(i < 6 && l.startsWith('#!')))].join('\n'));
chmodSync(outfile, 0o755);

if (existsSync(addon)) copyFileSync(addon, path.join(outdir, 'edgeid_tpm.node'));
else console.warn(`[bundle] ${path.relative(root, addon)} not built (npm run build:addon); the bundle needs it beside itself or EDGEID_TPM_ADDON`);
if (args.includes('--metafile')) writeFileSync(path.join(outdir, 'edgeid-agent.meta.json'), JSON.stringify(result.metafile));

const kb = (f) => (statSync(f).size / 1024).toFixed(0);
console.log(`[bundle] ${path.relative(root, outfile)} ${kb(outfile)} KiB` + (existsSync(addon) ? `, edgeid_tpm.node ${kb(addon)} KiB` : ''));
