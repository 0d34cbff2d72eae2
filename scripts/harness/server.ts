/**
 * The enrollment server as a real `edgeid-server` child process on loopback, and `edgeid-admin`
 * run against its data dir. The first start picks a free port (the server binds port 0 and
 * reports it in data/server.json); later starts reuse it, so clients keep their server URL.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { certFingerprint } from '../../protocol/api.js';
import type { ServerInfo } from '../../enroll-server/server.js';
import { programCommand } from './bins.js';
import { REPO, tmpDir } from './fs.js';
import { SWTPM_LOCALCA_ISSUER, SWTPM_LOCALCA_ROOT } from './swtpm.js';
import { httpsJson } from './https.js';
import { stopChild } from './process.js';
import { assertNoSecrets, recordSecret, recordSecretsIn, recordToken } from './secrets.js';
import { waitFor } from './wait.js';

const run = promisify(execFile);

export interface ServerProcessOptions {
  /** The server's config file contents (written next to the data dir, or to `configFile`). */
  config?: Record<string, unknown>;
  configFile?: string;
  /** Use this data dir (kept on close) instead of a fresh one (removed on close). */
  dataDir?: string;
  /** Listen on this port; default: a free one, picked by the first start and kept. */
  port?: number;
  /** Default log level (EDGEID_LOG_LEVEL; the config's logLevel wins); default 'info', as in production. */
  logLevel?: string;
  /** Append the server's output to this file too. */
  logFile?: string;
  /** More environment for the server process. */
  env?: NodeJS.ProcessEnv;
}

export interface ServerProcess {
  /** The running child, null while stopped. */
  readonly proc: ChildProcess | null;
  readonly port: number;
  /** https://127.0.0.1:PORT */
  readonly url: string;
  readonly dataDir: string;
  /** data/server.json as written by the running server. */
  readonly info: ServerInfo;
  /** The edgeid root CA (PEM) the server's TLS certificate chains to, and its fingerprint. */
  readonly caPem: string;
  readonly caFingerprint: string;
  readonly adminToken: string;
  /** Everything the server printed so far (all starts). */
  log(): string;
  /** Admin API call (bearer token, pinned to the server's root). */
  admin<T = any>(method: string, p: string, body?: unknown): Promise<{ status: number; body: T }>;
  /** Stops the process (data dir kept). Idempotent. */
  stop(): Promise<void>;
  /** Starts it again on the same port and data dir, with `config` if given. */
  start(config?: Record<string, unknown>): Promise<void>;
  /** stop(), then removes the data dir if the harness made it. */
  close(): Promise<void>;
}

/** The config with swtpm-localca as EK root and issuer added, unless it sets `ek` itself. */
export function withSwtpmEkRoots(config: Record<string, unknown>): Record<string, unknown> {
  if (config.ek !== undefined) return config;
  return { ...config, ek: { roots: [SWTPM_LOCALCA_ROOT], intermediates: [SWTPM_LOCALCA_ISSUER] } };
}

/** Starts `edgeid-server --data DIR --listen 127.0.0.1:PORT [--config FILE]` (sources or bundle: scripts/harness/bins.ts). */
export async function startServerProcess(opts: ServerProcessOptions = {}): Promise<ServerProcess> {
  const ownData = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? (await tmpDir('edgeid-server-'));
  const configFile = opts.configFile ?? path.join(dataDir, '..', `${path.basename(dataDir)}.config.json`);
  let config = opts.config;
  let port = opts.port ?? 0;
  let proc: ChildProcess | null = null;
  let info: ServerInfo | null = null;
  let output = '';
  const logStream = opts.logFile ? createWriteStream(opts.logFile, { flags: 'a' }) : null;

  const launch = async (): Promise<void> => {
    const [program, ...pre] = programCommand('edgeid-server');
    const args = [...pre, '--data', dataDir, '--listen', `127.0.0.1:${port}`];
    // EK certificates are required by default and swtpm's come from its local CA: the harness adds
    // that CA to every test server (never the product), unless the test configures `ek` itself
    const effective = config ?? (opts.configFile ? undefined : {});
    if (effective) {
      // the web console's listener only where a test asks for it (`console` in its config): its
      // default address (the port + 1) is not a port the harness picked
      const withConsole = 'console' in effective ? effective : { ...effective, console: null };
      await writeFile(configFile, JSON.stringify(withSwtpmEkRoots(withConsole), null, 2));
      args.push('--config', configFile);
    }
    await rm(path.join(dataDir, 'server.json'), { force: true });
    const child = spawn(program, args, {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
      // the production default (info): the secrets check reads what a real server would log
      env: { ...process.env, EDGEID_LOG_LEVEL: opts.logLevel ?? 'info', ...opts.env },
    });
    const collect = (d: Buffer): void => {
      output += d.toString();
      logStream?.write(d);
    };
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    const exited = new Promise<never>((_, reject) =>
      child.once('exit', (code) => reject(new Error(`edgeid-server exited (${code}): ${output.slice(-3000)}`))),
    );
    exited.catch(() => {});
    const started = waitFor(
      'edgeid-server to write data/server.json',
      async () => {
        if (child.exitCode !== null) return null;
        const parsed = JSON.parse(await readFile(path.join(dataDir, 'server.json'), 'utf8')) as ServerInfo;
        return parsed.pid === child.pid ? parsed : null;
      },
      { timeoutMs: 60_000, intervalMs: 100, retryErrors: true },
    );
    try {
      info = await Promise.race([started, exited]);
    } catch (e) {
      await stopChild(child, 1000);
      throw e;
    }
    port = info.port;
    proc = child;
  };

  await launch();
  const caPem = await readFile(path.join(dataDir, 'ca', 'root.pem'), 'utf8');
  const adminToken = (await readFile(path.join(dataDir, 'admin-token'), 'utf8')).trim();
  recordSecret(adminToken, 'admin token');
  const url = `https://127.0.0.1:${port}`;
  const srv: ServerProcess = {
    get proc() {
      return proc;
    },
    get port() {
      return port;
    },
    url,
    dataDir,
    get info() {
      return info!;
    },
    caPem,
    caFingerprint: certFingerprint(new X509Certificate(caPem).raw),
    adminToken,
    log: () => output,
    async admin(method, p, body) {
      const r = await httpsJson(method, new URL(p, url), { ca: caPem, bearer: adminToken, body });
      recordSecretsIn(JSON.stringify(r.body ?? null));
      return r;
    },
    // every stop checks the server's log for every secret the run created (issue: logs never hold a secret)
    async stop() {
      const p = proc;
      proc = null;
      await stopChild(p);
      if (p) assertNoSecrets('the edgeid-server log', output);
    },
    async start(newConfig) {
      if (newConfig) config = newConfig;
      if (proc) await srv.stop();
      await launch();
    },
    async close() {
      await srv.stop();
      logStream?.end();
      if (ownData) {
        await rm(dataDir, { recursive: true, force: true });
        if (!opts.configFile) await rm(configFile, { force: true });
      }
    },
  };
  return srv;
}

/** A one-time enrollment token from the server's admin API. */
export async function createToken(
  srv: ServerProcess,
  p: { zone?: string; owner?: string; ttlSeconds?: number } = {},
): Promise<{ token: string; uri: string }> {
  const r = await srv.admin<{ token: string; uri: string }>('POST', '/v1/admin/tokens', {
    zone: p.zone ?? 'default',
    owner: p.owner ?? 'controls-team',
    ...(p.ttlSeconds ? { ttlSeconds: p.ttlSeconds } : {}),
  });
  if (r.status !== 200) throw new Error(`token create: ${r.status} ${JSON.stringify(r.body)}`);
  recordToken(r.body.token);
  return r.body;
}

/** Runs edgeid-admin against the server of `dataDir` (connection read from the data dir); returns stdout. */
export async function adminCli(dataDir: string, args: string[]): Promise<string> {
  const [program, ...pre] = programCommand('edgeid-admin');
  const { stdout } = await run(program, [...pre, ...args, '--data', dataDir], { cwd: REPO, timeout: 60_000 });
  recordSecretsIn(stdout);
  return stdout;
}
