#!/usr/bin/env node
/**
 * edgeid-server: the enrollment server. Runs with no configuration at all (data dir ./data,
 * SQLite, CA created on first start, HTTPS on 0.0.0.0:8443, zone `default`).
 *   edgeid-server [--data DIR] [--listen HOST:PORT] [--config FILE]
 *   edgeid-server ca init --pkcs11 … | ca import-issuing CERT …   (ca/cli.ts: the issuing key in an HSM)
 *   edgeid-server restore FILE --data DIR [--passphrase-file F]
 * Env: EDGEID_DATA, EDGEID_LISTEN, EDGEID_LOG_LEVEL, EDGEID_STORE.
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { restoreBackup } from './backup/backup.js';
import { readPassphrase } from './backup/format.js';
import { CA_USAGE, runCaCommand } from './ca/cli.js';
import { EdgeidError, ERRORS, isEdgeidError } from '../protocol/errors/index.js';
import { loadConfig } from './config.js';
import { createServer, DATA_FILES } from './server.js';

const USAGE = `usage: edgeid-server [--data DIR] [--listen HOST:PORT] [--config FILE]
  --data DIR          data directory (default ./data, env EDGEID_DATA)
  --listen HOST:PORT  listen address (default 0.0.0.0:8443, env EDGEID_LISTEN; port 0 = any free port)
  --config FILE       JSON configuration (zones, hostnames, EK roots, rate limits ...)
  env EDGEID_STORE    the store: "sqlite" (default, data/edgeid.db) or postgres://USER@HOST:PORT/DB
                      (the config's "store"; password from store.passwordFile or PGPASSWORD)
${CA_USAGE}

       edgeid-server restore FILE --data DIR [--passphrase-file F] [--json]
  restores a backup (edgeid-admin backup) into DIR, which must be new or empty; the passphrase
  from F (mode 0600, first line) or EDGEID_BACKUP_PASSPHRASE. Then start the server on DIR.`;

/** `edgeid-server restore FILE --data DIR`: exit 0 restored, 1 refused (nothing written), 2 usage. */
async function restore(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: { data: { type: 'string' }, 'passphrase-file': { type: 'string' }, json: { type: 'boolean' } },
  });
  const [file, extra] = positionals;
  if (!file || extra !== undefined || !values.data) {
    process.stderr.write(`edgeid-server: restore needs a backup FILE and --data DIR\n\n${USAGE}\n`);
    return 2;
  }
  const passphrase = readPassphrase(values['passphrase-file']);
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    throw new EdgeidError('backup_corrupt', `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const res = await restoreBackup({ file: bytes, passphrase, dataDir: resolve(values.data) });
  const summary = {
    dataDir: resolve(values.data),
    backupCreatedAt: res.header.createdAt,
    backupAuditHead: res.header.auditHead,
    files: res.files,
    tokensVoided: res.tokensVoided,
    noncesVoided: res.noncesVoided,
    sessionsVoided: res.sessionsVoided,
    auditSeq: res.auditSeq,
  };
  process.stdout.write(
    values.json
      ? JSON.stringify(summary, null, 2) + '\n'
      : `restored the backup of ${res.header.createdAt} into ${summary.dataDir} (audit row ${res.auditSeq}; ` +
          `${res.tokensVoided} unused enrollment tokens, ${res.noncesVoided} renewal nonces and ${res.sessionsVoided} enrollment sessions voided: ` +
          `they may have been spent after the backup)\n`,
  );
  return 0;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  if (argv[0] === 'ca' && !argv.includes('--help') && !argv.includes('-h')) return runCaCommand(argv.slice(1));
  if (argv[0] === 'restore') {
    try {
      return await restore(argv.slice(1));
    } catch (e) {
      if ((e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
        process.stderr.write(`edgeid-server: ${(e as Error).message}\n\n${USAGE}\n`);
        return 2;
      }
      if (!isEdgeidError(e)) throw e;
      process.stderr.write(`edgeid-server: restore refused: ${e.code}: ${e.message}\n  fix: ${ERRORS[e.code].fix}\n`);
      return 1;
    }
  }
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
