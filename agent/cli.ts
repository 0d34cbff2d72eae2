#!/usr/bin/env -S node --import tsx
/**
 * edgeid-agent: the device-side CLI. Each subcommand is an AgentCommand in agent/commands/,
 * listed (and loaded only when it runs) in agent/commands/registry.ts.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ERRORS, isEdgeidError } from '../protocol/errors/index.js';
import { flush, printable } from '../protocol/terminal.js';
import { COMMANDS } from './commands/registry.js';
import { UsageError } from './commands/types.js';
import { AGENT_VERSION } from './version.js';

function usage(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    'usage: edgeid-agent <command> [options]',
    '',
    'commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Run `edgeid-agent <command> --help` for its options. TPM: --tcti CONF or EDGEID_TCTI (default device:/dev/tpmrm0).',
  ].join('\n');
}

/**
 * Runs the CLI; returns the process exit code (0 ok, 1 failure, 2 usage). The result goes to `out`
 * (one JSON document with --json), every message, log line and error to `err`.
 */
export async function main(
  argv: string[],
  out: NodeJS.WritableStream = process.stdout,
  err: NodeJS.WritableStream = process.stderr,
): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    err.write(`edgeid-agent: no command given\n\n${usage()}\n`);
    return 2;
  }
  if (name === '--help' || name === '-h' || name === 'help') {
    out.write(`${usage()}\n`);
    return 0;
  }
  if (name === '--version' || name === '-V') {
    out.write(`${AGENT_VERSION}\n`);
    return 0;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    err.write(`edgeid-agent: unknown command "${printable(name)}"\n\n${usage()}\n`);
    return 2;
  }
  try {
    return await (await command.load()).run(rest, { out, err });
  } catch (e) {
    if (e instanceof UsageError) {
      err.write(`edgeid-agent ${name}: ${printable(e.message)}\n\n${e.usage}\n`);
      return 2;
    }
    if (isEdgeidError(e)) {
      // messages can carry the server's or the TPM's words: escaped for the terminal
      err.write(`edgeid-agent ${name}: ${printable(e.message)} [${e.code}]\n  fix: ${ERRORS[e.code].fix}\n`);
      return 1;
    }
    err.write(`edgeid-agent ${name}: ${printable(e instanceof Error ? (e.stack ?? e.message) : String(e)).replace(/\\x0a/g, '\n')}\n`);
    return 1;
  }
}

function isEntryPoint(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

/**
 * Ends by returning, never by process.exit(): Node exits once stdout and stderr have drained, so
 * a pipe gets every byte. A stdout that cannot be written (a closed pipe) makes the exit code 1.
 */
async function entry(): Promise<number> {
  process.stdout.on('error', () => {});
  process.stderr.on('error', () => {});
  let code: number;
  try {
    code = await main(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`${String(e)}\n`);
    code = 1;
  }
  try {
    await flush(process.stdout);
  } catch (e) {
    process.stderr.write(`edgeid-agent: stdout: ${(e as Error).message}\n`);
    code = 1;
  }
  await flush(process.stderr).catch(() => {});
  return code;
}

if (isEntryPoint()) {
  void entry().then((code) => {
    process.exitCode = code;
  });
}
