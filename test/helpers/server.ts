/**
 * The enrollment server for tests: in-process (app factory, fastify inject, no TLS, a movable
 * clock) or as a real `edgeid-server` child process on a free loopback port.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { loadConfig } from '../../enroll-server/config.js';
import { createServer, type EdgeidServer, type ServerInfo } from '../../enroll-server/server.js';
import { createToken } from '../../enroll-server/services/tokens.js';
import type { EdgeidHooks } from '../../enroll-server/hooks.js';
import type { TokenCreateRequest } from '../../protocol/api.js';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface TestServer {
  server: EdgeidServer;
  dataDir: string;
  /** Moves the server's clock (ms); 0 = real time. */
  clock: { offset: number };
  token(req?: Partial<TokenCreateRequest>): Promise<string>;
  /** Inject an admin API call with the admin token. */
  admin(method: 'GET' | 'POST', url: string, body?: unknown): Promise<{ status: number; body: any }>;
  adminToken: string;
  close(): Promise<void>;
}

export async function startInProcessServer(configFile: Record<string, unknown> = {}, hooks: EdgeidHooks[] = []): Promise<TestServer> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-server-'));
  const config = loadConfig({ argv: ['--data', dataDir, '--listen', '127.0.0.1:0'], env: {}, file: configFile });
  const clock = { offset: 0 };
  const server = await createServer({ config, tls: false, logger: pino({ level: 'silent' }), housekeeping: false, hooks, now: () => Date.now() + clock.offset });
  const adminToken = (await readFile(path.join(dataDir, 'admin-token'), 'utf8')).trim();
  return {
    server,
    dataDir,
    clock,
    adminToken,
    async token(req = {}) {
      const t = await createToken(server.ctx, { zone: 'default', owner: 'test-ops', ...req }, { ip: null, actor: 'admin' });
      return t.token;
    },
    async admin(method, url, body) {
      const res = await server.app.inject({
        method,
        url,
        headers: { authorization: `Bearer ${adminToken}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { payload: body as object } : {}),
      });
      let parsed: unknown = res.body;
      try {
        parsed = res.json();
      } catch {
        /* not JSON */
      }
      return { status: res.statusCode, body: parsed as any };
    },
    async close() {
      await server.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export interface ServerProcess {
  proc: ChildProcess;
  dataDir: string;
  info: ServerInfo;
  caPem: string;
  adminToken: string;
  output: () => string;
  stop(): Promise<void>;
}

/** Starts `node --import tsx enroll-server/main.ts --data DIR --listen 127.0.0.1:0` and waits for data/server.json. */
export async function startServerProcess(configFile?: Record<string, unknown>, opts: { dataDir?: string; keepData?: boolean } = {}): Promise<ServerProcess> {
  const dataDir = opts.dataDir ?? (await mkdtemp(path.join(os.tmpdir(), 'edgeid-server-proc-')));
  const args = ['--import', 'tsx', path.join(REPO, 'enroll-server/main.ts'), '--data', dataDir, '--listen', '127.0.0.1:0'];
  if (configFile) {
    const cfg = path.join(dataDir, '..', `${path.basename(dataDir)}.config.json`);
    await writeFile(cfg, JSON.stringify(configFile));
    args.push('--config', cfg);
  }
  await rm(path.join(dataDir, 'server.json'), { force: true });
  const proc = spawn(process.execPath, args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, EDGEID_LOG_LEVEL: 'warn' } });
  let output = '';
  proc.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<never>((_, reject) => proc.once('exit', (code) => reject(new Error(`edgeid-server exited (${code}): ${output}`))));
  exited.catch(() => {});
  const deadline = Date.now() + 30_000;
  let info: ServerInfo | null = null;
  while (!info) {
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`edgeid-server did not start: ${output}`);
    }
    await Promise.race([new Promise((r) => setTimeout(r, 100)), exited]);
    try {
      const parsed = JSON.parse(await readFile(path.join(dataDir, 'server.json'), 'utf8')) as ServerInfo;
      if (parsed.pid === proc.pid) info = parsed;
    } catch {
      /* not yet */
    }
  }
  return {
    proc,
    dataDir,
    info,
    caPem: await readFile(path.join(dataDir, 'ca', 'root.pem'), 'utf8'),
    adminToken: (await readFile(path.join(dataDir, 'admin-token'), 'utf8')).trim(),
    output: () => output,
    async stop() {
      if (proc.exitCode === null) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
          proc.once('exit', () => {
            clearTimeout(t);
            resolve();
          });
          proc.kill('SIGTERM');
        });
      }
      if (!opts.keepData) await rm(dataDir, { recursive: true, force: true });
    },
  };
}
