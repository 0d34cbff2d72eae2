/**
 * The enrollment server in-process for tests (app factory, fastify inject, no TLS, a movable
 * clock). The server as a real child process is scripts/harness/server.ts.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { loadConfig } from '../../enroll-server/config.js';
import { createServer, type EdgeidServer } from '../../enroll-server/server.js';
import { createToken } from '../../enroll-server/services/tokens.js';
import type { EdgeidHooks } from '../../enroll-server/hooks.js';
import type { TokenCreateRequest } from '../../protocol/api.js';
import { withSwtpmEkRoots } from '../../scripts/harness/server.js';

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

export async function startInProcessServer(
  configFile: Record<string, unknown> = {},
  hooks: EdgeidHooks[] = [],
  opts: { tmpRoot?: string } = {},
): Promise<TestServer> {
  const dataDir = await mkdtemp(path.join(opts.tmpRoot ?? os.tmpdir(), 'edgeid-server-'));
  // EK certificates are required by default; swtpm's chain to its local CA, which only tests trust
  const config = loadConfig({ argv: ['--data', dataDir, '--listen', '127.0.0.1:0'], env: {}, file: withSwtpmEkRoots(configFile) });
  const clock = { offset: 0 };
  const server = await createServer({
    config,
    tls: false,
    logger: pino({ level: 'silent' }),
    housekeeping: false,
    hooks,
    now: () => Date.now() + clock.offset,
  });
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
