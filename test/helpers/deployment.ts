/**
 * A whole edgeid deployment on loopback for end-to-end tests: a real `edgeid-server` process,
 * a real Mosquitto configured by `edgeid-admin broker config` (supervised, so the server's CRL
 * reload command can restart it), and the server restarted with its broker integration on.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startMosquitto, type Mosquitto } from './mosquitto.js';
import { freePort } from './ports.js';
import { REPO, startServerProcess, type ServerProcess } from './server.js';

const run = promisify(execFile);

export interface Deployment {
  server: ServerProcess;
  broker: Mosquitto;
  brokerDir: string;
  dataDir: string;
  /** Runs edgeid-admin against this server (connection read from its data dir); returns stdout. */
  admin(args: string[]): Promise<string>;
  /** Restarts the server process on the same data dir and config. */
  restartServer(): Promise<void>;
  stop(): Promise<void>;
}

export async function adminCli(dataDir: string, args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', path.join(REPO, 'enroll-server/admin-cli.ts'), ...args, '--data', dataDir], {
    cwd: REPO,
    timeout: 60_000,
  });
  return stdout;
}

export async function startDeployment(serverConfig: Record<string, unknown> = {}): Promise<Deployment> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'edgeid-deploy-'));
  const dataDir = path.join(root, 'data');
  const brokerDir = path.join(root, 'broker');
  const port = await freePort();
  let server = await startServerProcess(serverConfig, { dataDir, keepData: true });
  let broker: Mosquitto | null = null;
  try {
    await adminCli(dataDir, ['broker', 'config', '--out', brokerDir, '--port', String(port), '--bind', '127.0.0.1', '--run-as-root', '--hostname', 'localhost', '--hostname', '127.0.0.1']);
    broker = await startMosquitto({ configFile: path.join(brokerDir, 'mosquitto.conf'), port, supervised: true });
    await server.stop();
    const config = {
      ...serverConfig,
      mqtt: { url: `mqtts://127.0.0.1:${port}` },
      broker: { url: `mqtts://127.0.0.1:${port}`, crlFile: path.join(brokerDir, 'crl.pem'), reloadCommand: broker.reloadCommand },
    };
    server = await startServerProcess(config, { dataDir, keepData: true });
    const b = broker;
    const d: Deployment = {
      get server() { return server; },
      broker: b,
      brokerDir,
      dataDir,
      admin: (args) => adminCli(dataDir, args),
      async restartServer() {
        await server.stop();
        server = await startServerProcess(config, { dataDir, keepData: true });
      },
      async stop() {
        await server.stop();
        await b.stop();
        await rm(root, { recursive: true, force: true });
      },
    };
    return d;
  } catch (e) {
    await server.stop();
    await broker?.stop();
    await rm(root, { recursive: true, force: true });
    throw e;
  }
}
