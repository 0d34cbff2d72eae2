/**
 * The edgeid-agent subcommands. Each is imported when it runs, not at start: in the single-file
 * bundle esbuild then leaves every other command (and what only it needs — enrollment, the quote
 * verifier of `tpm quote`, the EK certificate code) uninitialised, so the `run` daemon does not
 * carry them in its heap (the agent's RSS budget is 60 MB). (The dynamic imports live here and not in cli.ts:
 * tsx cannot lex dynamic imports in a file with cli.ts's `#!/usr/bin/env -S node --import tsx`.)
 */
import type { AgentCommand } from './types.js';

export interface CommandEntry {
  name: string;
  summary: string;
  load: () => Promise<AgentCommand>;
}

export const COMMANDS: readonly CommandEntry[] = [
  {
    name: 'enroll',
    summary: 'enroll this device with a one-time token (edgeid://enroll?… URI)',
    load: async () => (await import('./enroll.js')).enrollCommand,
  },
  {
    name: 'run',
    summary: 'run the agent: renew the certificate, keep the MQTT session, obey control commands',
    load: async () => (await import('./run.js')).runCommand,
  },
  {
    name: 'status',
    summary: 'show identity, certificate, renewal, MQTT and outbox state (--json for scripts)',
    load: async () => (await import('./status.js')).statusCommand,
  },
  {
    name: 'wipe',
    summary: "delete this device's identity: key blobs, certificate, state and outbox",
    load: async () => (await import('./wipe.js')).wipeCommand,
  },
  {
    name: 'tpm',
    summary:
      'TPM diagnostics: `tpm info` (TPM, EKs, certificates), `tpm quote` (files for tpm2_checkquote), `tpm eventlog` (TCG event log replayed)',
    load: async () => (await import('./tpm.js')).tpmCommand,
  },
];
