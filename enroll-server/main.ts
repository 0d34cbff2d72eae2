#!/usr/bin/env node
/**
 * edgeid-server: the enrollment server. Runs with no configuration at all (data dir ./data,
 * SQLite, CA created on first start, HTTPS on 0.0.0.0:8443, zone `default`).
 *   edgeid-server [--data DIR] [--listen HOST:PORT] [--config FILE]
 *   edgeid-server ca init --pkcs11 … | ca import-issuing CERT …   (ca/cli.ts: the issuing key in an HSM)
 * Env: EDGEID_DATA, EDGEID_LISTEN, EDGEID_LOG_LEVEL.
 */
import { join } from 'node:path';
import { isEdgeidError } from '../protocol/errors/index.js';
import { CA_USAGE, runCaCommand } from './ca/cli.js';
import { loadConfig } from './config.js';
import { createServer, DATA_FILES } from './server.js';

const USAGE = `usage: edgeid-server [--data DIR] [--listen HOST:PORT] [--config FILE]
  --data DIR          data directory (default ./data, env EDGEID_DATA)
  --listen HOST:PORT  listen address (default 0.0.0.0:8443, env EDGEID_LISTEN; port 0 = any free port)
  --config FILE       JSON configuration (zones, hostnames, EK roots, rate limits ...)
${CA_USAGE}`;

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  if (argv[0] === 'ca' && !argv.includes('--help') && !argv.includes('-h')) return runCaCommand(argv.slice(1));
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const config = loadConfig({ argv });
  const server = await createServer({ config });
  if (server.createdAdminToken) {
    // A secret never goes to a log stream: under systemd or a pipe stderr is the journal or a log
    // file, so the token is shown only to a person at a terminal. The CLI on this host reads the file.
    const file = join(config.dataDir, DATA_FILES.adminToken);
    process.stderr.write(
      process.stderr.isTTY
        ? `\nedgeid-server: created the admin token (stored 0600 in ${file}; shown once):\n\n  ${server.createdAdminToken}\n\n`
        : `edgeid-server: created the admin token in ${file} (mode 0600; edgeid-admin on this host reads it from there)\n`,
    );
  }
  const info = await server.listen();
  server.ctx.log.info(
    { url: info.url, port: info.port, caFingerprint: info.caFingerprint, dataDir: config.dataDir },
    'edgeid-server listening',
  );
  let closing = false;
  const stop = (sig: string) => {
    if (closing) return;
    closing = true;
    server.ctx.log.info({ signal: sig }, 'shutting down');
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  return -1;
}

main().then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (e) => {
    if (isEdgeidError(e)) {
      process.stderr.write(`edgeid-server: ${e.message}\n`);
      process.exit(e.code === 'config_invalid' ? 2 : 1);
    }
    process.stderr.write(`edgeid-server: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
