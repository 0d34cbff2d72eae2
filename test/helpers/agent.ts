/**
 * The agent CLI as a child process, for the agent's integration tests (the server, broker, TPM and
 * PKI come from scripts/harness).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { REPO } from '../../scripts/harness/fs.js';

export const AGENT_CLI = path.join(REPO, 'agent/cli.ts');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `edgeid-agent ARGS` as a child process. */
export function agentCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', AGENT_CLI, ...args], { cwd: REPO, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Starts `edgeid-agent ARGS` and returns the child (logs collected). */
export function spawnAgent(args: string[], env: Record<string, string> = {}): { child: ChildProcess; log(): string; exit: Promise<number | null> } {
  const child = spawn(process.execPath, ['--import', 'tsx', AGENT_CLI, ...args], { cwd: REPO, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout?.on('data', (d: Buffer) => (text += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (text += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, log: () => text, exit };
}
