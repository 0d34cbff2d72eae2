/**
 * A whole edgeid deployment on loopback: a real `edgeid-server` process, a real Mosquitto
 * configured by `edgeid-admin broker config` (supervised, so the server's CRL reload command can
 * restart it), and the server restarted with its broker integration on.
 *
 * The broker's client id is the certificate's CN (`use_username_as_clientid`): a test that used
 * the server's broker identity would end the server's session. Tests get identities of their own:
 * a bootstrap dynsec client written into the initial dynsec file (CN edgeid-test-dynsec), through
 * which every dynsec() connection and serviceIdentity() gets its own CN, certificate and rights.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { DynsecClient } from '../../enroll-server/broker/dynsec.js';
import { tmpDir } from './fs.js';
import { softwareClientCert } from './pki.js';
import { startMosquitto, type Mosquitto } from './mosquitto.js';
import { freePort } from './ports.js';
import { adminCli, startServerProcess, type ServerProcess } from './server.js';

export interface Acl {
  acltype: string;
  topic: string;
  allow: boolean;
  priority: number;
}

/** A client identity of its own on the broker: TLS options for mqtt.js (certificate CN = client id). */
export interface ServiceIdentity {
  cn: string;
  tls: { ca: string; cert: string; key: string };
}

export const TEST_DYNSEC_CN = 'edgeid-test-dynsec';
const allow = (acltype: string, topic: string): Acl => ({ acltype, topic, allow: true, priority: 0 });
/** The tests' dynsec rights: dynsec commands, and reading device and control topics (the tests' eyes). */
const TEST_DYNSEC_ACLS: Acl[] = [
  allow('publishClientSend', '$CONTROL/dynamic-security/#'),
  allow('publishClientReceive', '$CONTROL/dynamic-security/#'),
  allow('subscribePattern', '$CONTROL/dynamic-security/#'),
  allow('subscribePattern', 'edgeid/+/control'),
  allow('publishClientReceive', 'edgeid/+/control'),
  allow('subscribePattern', 'devices/#'),
  allow('publishClientReceive', 'devices/#'),
];

/** Adds the tests' bootstrap dynsec client and role to a dynsec file written by `edgeid-admin broker config`. */
export async function addTestDynsecClient(dynsecFile: string): Promise<void> {
  const doc = JSON.parse(await readFile(dynsecFile, 'utf8')) as { clients: unknown[]; roles: unknown[] };
  doc.roles.push({ rolename: TEST_DYNSEC_CN, acls: TEST_DYNSEC_ACLS });
  doc.clients.push({ username: TEST_DYNSEC_CN, roles: [{ rolename: TEST_DYNSEC_CN }] });
  await writeFile(dynsecFile, JSON.stringify(doc), { mode: 0o600 });
}

export interface Deployment {
  server: ServerProcess;
  broker: Mosquitto;
  brokerDir: string;
  dataDir: string;
  /** Runs edgeid-admin against this server (connection read from its data dir); returns stdout. */
  admin(args: string[]): Promise<string>;
  /** Restarts the server process on the same data dir, port and config (or this one). */
  restartServer(config?: Record<string, unknown>): Promise<void>;
  /**
   * A dynsec connection with an identity of its own (CN edgeid-test-dynsec-N): dynsec commands,
   * reading device and control topics; never the server's identity.
   */
  dynsec(): Promise<DynsecClient>;
  /**
   * A certificate with this CN from the edgeid CA (software key) and a dynsec client of that name
   * with these roles, or with a role of the same name holding these ACLs.
   */
  serviceIdentity(cn: string, rights: { acls?: Acl[]; roles?: string[] }): Promise<ServiceIdentity>;
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
    await addTestDynsecClient(path.join(brokerDir, 'dynsec.json'));
    broker = await startMosquitto({ configFile: path.join(brokerDir, 'mosquitto.conf'), port, supervised: true });
    const config = {
      ...serverConfig,
      mqtt: { url: `mqtts://127.0.0.1:${port}` },
      broker: brokerServerConfig(broker, brokerDir, o),
    };
    await server.start(config);
    const b = broker;
    const caPem = await readFile(path.join(brokerDir, 'ca.pem'), 'utf8');
    let bootstrap: Promise<DynsecClient> | null = null;
    const connections = new Set<DynsecClient>();
    let dynsecCount = 0;
    const identity = async (cn: string): Promise<ServiceIdentity> => ({
      cn,
      tls: { ca: caPem, ...(await softwareClientCert({ dataDir }, cn)) },
    });
    const d: Deployment = {
      server,
      broker: b,
      brokerDir,
      dataDir,
      admin: (args) => adminCli(dataDir, args),
      restartServer: (c) => server.start(c),
      async serviceIdentity(cn, rights) {
        bootstrap ??= identity(TEST_DYNSEC_CN).then((id) => DynsecClient.connect({ url: b.url, tls: id.tls, clientId: id.cn }));
        const dyn = await bootstrap;
        const roles = [...(rights.roles ?? [])];
        if (rights.acls) {
          await dyn.send([{ command: 'createRole', rolename: cn, acls: rights.acls }]);
          roles.push(cn);
        }
        await dyn.send([{ command: 'createClient', username: cn, roles: roles.map((rolename) => ({ rolename, priority: 0 })) }]);
        return identity(cn);
      },
      async dynsec() {
        const id = await d.serviceIdentity(`${TEST_DYNSEC_CN}-${++dynsecCount}`, { roles: [TEST_DYNSEC_CN] });
        const c = await DynsecClient.connect({ url: b.url, tls: id.tls, clientId: id.cn });
        connections.add(c);
        return c;
      },
      async stop() {
        await server.stop();
        for (const c of connections) await c.close().catch(() => {});
        if (bootstrap) await (await bootstrap.catch(() => null))?.close().catch(() => {});
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
