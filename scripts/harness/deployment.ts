/**
 * A whole edgeid deployment on loopback: a real `edgeid-server` process, a real Mosquitto
 * configured by `edgeid-admin broker config` (supervised, so the server's CRL reload command can
 * restart it), and the server restarted with its broker integration on.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { tmpDir } from './fs.js';
import { startMosquitto, type Mosquitto } from './mosquitto.js';
import { freePort } from './ports.js';
import { adminCli, startServerProcess, type ServerProcess } from './server.js';

export interface Deployment {
  server: ServerProcess;
  broker: Mosquitto;
  brokerDir: string;
  dataDir: string;
  /** Runs edgeid-admin against this server (connection read from its data dir); returns stdout. */
  admin(args: string[]): Promise<string>;
  /** Restarts the server process on the same data dir, port and config (or this one). */
  restartServer(config?: Record<string, unknown>): Promise<void>;
  stop(): Promise<void>;
}

export interface DeploymentOptions {
  /**
   * The server's broker.crlReload (default `{ every: 0 }`: the broker loads each new CRL at once,
   * with a restart unless `reload` is 'hup').
   */
  crlReload?: Record<string, unknown>;
  /** How the server makes the broker load its CRL: restart it (default) or SIGHUP (sessions stay). */
  reload?: 'restart' | 'hup';
}

/** The server's broker config for a harness broker. */
export function brokerServerConfig(broker: Mosquitto, brokerDir: string, o: DeploymentOptions = {}): Record<string, unknown> {
  return {
    url: broker.url,
    crlFile: path.join(brokerDir, 'crl.pem'),
    reloadCommand: o.reload === 'hup' ? broker.hupCommand : broker.reloadCommand,
    crlReload: o.crlReload ?? { every: 0 },
  };
}

export async function startDeployment(serverConfig: Record<string, unknown> = {}, o: DeploymentOptions = {}): Promise<Deployment> {
  const root = await tmpDir('edgeid-deploy-');
  const dataDir = path.join(root, 'data');
  const brokerDir = path.join(root, 'broker');
  const port = await freePort();
  const server = await startServerProcess({ config: serverConfig, dataDir });
  let broker: Mosquitto | null = null;
  try {
    await adminCli(dataDir, [
      'broker',
      'config',
      '--out',
      brokerDir,
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--run-as-root',
      '--hostname',
      'localhost',
      '--hostname',
      '127.0.0.1',
    ]);
    broker = await startMosquitto({ configFile: path.join(brokerDir, 'mosquitto.conf'), port, supervised: true });
    const config = {
      ...serverConfig,
      mqtt: { url: `mqtts://127.0.0.1:${port}` },
      broker: brokerServerConfig(broker, brokerDir, o),
    };
    await server.start(config);
    const b = broker;
    return {
      server,
      broker: b,
      brokerDir,
      dataDir,
      admin: (args) => adminCli(dataDir, args),
      restartServer: (c) => server.start(c),
      async stop() {
        await server.stop();
        await b.stop();
        await rm(root, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await server.stop();
    await broker?.stop();
    await rm(root, { recursive: true, force: true });
    throw e;
  }
}
