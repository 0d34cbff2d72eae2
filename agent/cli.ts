#!/usr/bin/env -S node --import tsx
/**
 * edgeid-agent: the device-side CLI. Each subcommand is an AgentCommand in agent/commands/,
 * listed (and loaded only when it runs) in agent/commands/registry.ts.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ERRORS, isEdgeidError } from '../protocol/errors/index.js';
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

/** Runs the CLI; returns the process exit code (0 ok, 1 failure, 2 usage). */
export async function main(argv: string[], out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    out.write(`${usage()}\n`);
    return name === undefined ? 2 : 0;
  }
  if (name === '--version' || name === '-V') {
    out.write(`${AGENT_VERSION}\n`);
    return 0;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    err.write(`edgeid-agent: unknown command "${name}"\n\n${usage()}\n`);
    return 2;
  }
  try {
    return await (await command.load()).run(rest, { out, err });
  } catch (e) {
    if (e instanceof UsageError) {
      err.write(`edgeid-agent ${name}: ${e.message}\n\n${e.usage}\n`);
      return 2;
    }
    if (isEdgeidError(e)) {
      err.write(`edgeid-agent ${name}: ${e.message} [${e.code}]\n  fix: ${ERRORS[e.code].fix}\n`);
      return 1;
    }
    err.write(`edgeid-agent ${name}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
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

if (isEntryPoint()) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`${String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
