/**
 * The agent CLI as a child process, for the agent's integration tests (the server, broker, TPM and
 * PKI come from scripts/harness).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { agentEventLogEnv } from '../../scripts/harness/eventlog.js';
import { REPO } from '../../scripts/harness/fs.js';
import { assertNoSecrets, recordSecretsIn } from '../../scripts/harness/secrets.js';
import { programCommand } from '../../scripts/harness/bins.js';

const [AGENT, ...AGENT_ARGS] = programCommand('edgeid-agent');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Records the tokens passed on the command line (`--uri edgeid://enroll?token=…`, `--token T`). */
function recordArgs(args: string[], env: Record<string, string>): void {
  recordSecretsIn([...args, ...Object.values(env)].join(' '));
  const i = args.indexOf('--token');
  if (i >= 0 && args[i + 1]) recordSecretsIn(JSON.stringify({ token: args[i + 1] }));
}

/** Runs `edgeid-agent ARGS` as a child process; rejects when its output holds a secret of the run. */
export function agentCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  recordArgs(args, env);
  return new Promise((resolve, reject) => {
    const child = spawn(AGENT, [...AGENT_ARGS, ...args], {
      cwd: REPO,
      env: agentEventLogEnv({ ...process.env, ...env }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('exit', (code) => {
      try {
        assertNoSecrets(`edgeid-agent ${args[0] ?? ''} output`, stdout + stderr);
      } catch (e) {
        reject(e);
        return;
      }
      resolve({ code, stdout, stderr });
    });
  });
}

/** Starts `edgeid-agent ARGS` and returns the child (logs collected; `exit` rejects when they hold a secret of the run). */
export function spawnAgent(
  args: string[],
  env: Record<string, string> = {},
): { child: ChildProcess; log(): string; exit: Promise<number | null> } {
  recordArgs(args, env);
  const child = spawn(AGENT, [...AGENT_ARGS, ...args], {
    cwd: REPO,
    env: agentEventLogEnv({ ...process.env, ...env }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let text = '';
  child.stdout?.on('data', (d: Buffer) => (text += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (text += d.toString()));
  const exit = new Promise<number | null>((resolve, reject) =>
    child.once('exit', (code) => {
      try {
        assertNoSecrets(`edgeid-agent ${args[0] ?? ''} log`, text);
      } catch (e) {
        reject(e);
        return;
      }
      resolve(code);
    }),
  );
  return { child, log: () => text, exit };
}
