/**
 * Fixtures for the agent's integration tests (not a test file itself): a real edgeid-server child
 * process on a free loopback port, tokens from its admin API, the agent CLI as a child process, and
 * a Mosquitto configured for edgeid certificates.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, writeFile, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';
import { certFingerprint } from '../../protocol/api.js';
import { freePort, waitForPort } from '../helpers/ports.js';
import { httpsJson } from '../helpers/https.js';

export const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
export const AGENT_CLI = path.join(REPO, 'agent/cli.ts');

export interface ServerProc {
  url: string;
  port: number;
  dataDir: string;
  caFingerprint: string;
  rootPem: string;
  adminToken: string;
  log(): string;
  stop(): Promise<void>;
  /** Starts it again on the same port and data dir (after stop). */
  start(): Promise<void>;
  /** Admin API call (bearer token, pinned to the server's root). */
  admin<T = any>(method: string, p: string, body?: unknown): Promise<{ status: number; body: T }>;
}

export async function tmpDir(prefix: string, t?: { after(fn: () => Promise<void>): void }): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), prefix));
  t?.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

function stopChild(p: ChildProcess | null): Promise<void> {
  if (!p || p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => p.kill('SIGKILL'), 5000);
    p.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    p.kill('SIGTERM');
  });
}

export async function startServer(opts: { config?: Record<string, unknown>; dataDir?: string } = {}): Promise<ServerProc> {
  const dataDir = opts.dataDir ?? (await tmpDir('edgeid-agent-srv-'));
  const configFile = path.join(dataDir, '..', `${path.basename(dataDir)}.config.json`);
  await writeFile(configFile, JSON.stringify({ logLevel: 'warn', ...(opts.config ?? {}) }));
  const port = await freePort();
  let proc: ChildProcess | null = null;
  let logText = '';
  const launch = async (): Promise<void> => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO, 'enroll-server/main.ts'), '--data', dataDir, '--listen', `127.0.0.1:${port}`, '--config', configFile], {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout?.on('data', (d: Buffer) => (logText += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (logText += d.toString()));
    const exited = new Promise<never>((_, reject) => child.once('exit', (c) => reject(new Error(`edgeid-server exited (${c}): ${logText.slice(-3000)}`))));
    exited.catch(() => {});
    await Promise.race([waitForPort(port, 60_000), exited]);
    proc = child;
  };
  await launch();
  const rootPem = await readFile(path.join(dataDir, 'ca', 'root.pem'), 'utf8');
  const adminToken = (await readFile(path.join(dataDir, 'admin-token'), 'utf8')).trim();
  const url = `https://127.0.0.1:${port}`;
  const srv: ServerProc = {
    url,
    port,
    dataDir,
    caFingerprint: certFingerprint(new X509Certificate(rootPem).raw),
    rootPem,
    adminToken,
    log: () => logText,
    async stop() {
      const p = proc;
      proc = null;
      await stopChild(p);
    },
    async start() {
      if (!proc) await launch();
    },
    admin(method, p, body) {
      return httpsJson(method, new URL(p, url), { ca: rootPem, bearer: adminToken, body });
    },
  };
  return srv;
}

export async function createToken(srv: ServerProc, p: { zone?: string; owner?: string; ttlSeconds?: number } = {}): Promise<{ token: string; uri: string }> {
  const r = await srv.admin<{ token: string; uri: string }>('POST', '/v1/admin/tokens', { zone: p.zone ?? 'default', owner: p.owner ?? 'controls-team', ...(p.ttlSeconds ? { ttlSeconds: p.ttlSeconds } : {}) });
  if (r.status !== 200) throw new Error(`token create: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

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

/**
 * A software client certificate from the edgeid issuing CA — TEST ONLY, for the subscriber/injector
 * clients that observe the broker (devices' keys are in their TPMs).
 */
export async function softwareClientCert(srv: ServerProc, cn: string): Promise<{ cert: string; key: string }> {
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const run = promisify(execFile);
  const dir = await tmpDir('edgeid-agent-sw-');
  const ca = path.join(srv.dataDir, 'ca');
  await run('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', path.join(dir, 'k.pem')]);
  await run('openssl', ['req', '-new', '-key', path.join(dir, 'k.pem'), '-subj', `/CN=${cn}`, '-out', path.join(dir, 'r.csr')]);
  await writeFile(path.join(dir, 'ext.cnf'), 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n');
  await run('openssl', ['x509', '-req', '-in', path.join(dir, 'r.csr'), '-CA', path.join(ca, 'intermediate.pem'), '-CAkey', path.join(ca, 'intermediate.key'),
    '-CAcreateserial', '-days', '1', '-extfile', path.join(dir, 'ext.cnf'), '-out', path.join(dir, 'c.pem')]);
  const out = { cert: (await readFile(path.join(dir, 'c.pem'), 'utf8')) + (await readFile(path.join(ca, 'intermediate.pem'), 'utf8')), key: await readFile(path.join(dir, 'k.pem'), 'utf8') };
  await rm(dir, { recursive: true, force: true });
  return out;
}

/** PEM bundle of the edgeid root and issuing CA (what the broker's cafile holds). */
export async function edgeidCaBundle(srv: ServerProc): Promise<string> {
  const ca = path.join(srv.dataDir, 'ca');
  return (await readFile(path.join(ca, 'intermediate.pem'), 'utf8')) + (await readFile(path.join(ca, 'root.pem'), 'utf8'));
}
