/**
 * A real Mosquitto 2.0 per test on a free loopback port: TLS listener with client certificates
 * (`require_certificate`, `use_identity_as_username`, `use_username_as_clientid` as in the config
 * the server renders: the client id is the certificate's CN), optional CRL and dynamic-security plugin.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { brokerLimitLines } from '../../enroll-server/broker/mosquitto-config.js';
import { stopChild } from './process.js';
import { freePort, waitForPort } from './ports.js';

export const DYNSEC_PLUGIN = '/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so';

export interface MosquittoOptions {
  /** PEM bundle of the CA(s) whose client certificates the listener accepts (unless configFile). */
  caFile?: string;
  /** The broker's own TLS certificate and key (PEM) (unless configFile). */
  certFile?: string;
  keyFile?: string;
  crlFile?: string;
  /** Path of a dynsec JSON file (created with `mosquitto_ctrl dynsec init` or by the server). */
  dynsecFile?: string;
  /** Extra lines appended to the generated config. */
  extra?: string[];
  /** Use this ready-made config file instead of generating one; `port` must then be given. */
  configFile?: string;
  port?: number;
  /**
   * Start the broker again whenever it exits (until stop()), like a service manager would. With
   * it, `reloadCommand` restarts the broker, the way Mosquitto needs for a new CRL.
   */
  supervised?: boolean;
  /** Append the broker's output to this file too. */
  logFile?: string;
}

export interface Mosquitto {
  port: number;
  url: string;
  /** Everything the broker logged so far (stdout + stderr). */
  log(): string;
  stop(): Promise<void>;
  /**
   * Stops and starts on the same port and config (Mosquitto re-reads CRLs only at start); with
   * `whileDown`, starts again only once it resolved (a broker down for a while).
   */
  restart(whileDown?: () => Promise<void>): Promise<void>;
  /** argv that makes a supervised broker restart (for the server's CRL reload hook). */
  reloadCommand: string[];
  /** argv that sends the broker SIGHUP (Mosquitto 2.0.11 re-reads its crlfile and keeps sessions). */
  hupCommand: string[];
  /** How many times the broker (re)started. */
  starts(): number;
}

export async function startMosquitto(opts: MosquittoOptions): Promise<Mosquitto> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-mosq-'));
  let port = opts.port ?? (await freePort());
  let logText = '';
  let proc: ChildProcess | null = null;
  let stopped = false;
  const confPath = opts.configFile ?? path.join(dir, 'mosquitto.conf');
  const pidFile = path.join(dir, 'mosquitto.pid');
  let startCount = 0;
  let restarting: Promise<void> | null = null;
  const logStream = opts.logFile ? createWriteStream(opts.logFile, { flags: 'a' }) : null;
  const collect = (d: Buffer): void => {
    logText += d.toString();
    logStream?.write(d);
  };

  const writeConfig = async (): Promise<void> => {
    if (opts.configFile) return;
    if (!opts.caFile || !opts.certFile || !opts.keyFile)
      throw new Error('startMosquitto needs caFile, certFile and keyFile (or configFile)');
    const lines = [
      'per_listener_settings false',
      'persistence false',
      'log_dest stderr',
      'log_type all',
      'connection_messages true',
      'log_timestamp true',
      'user root',
      `listener ${port} 127.0.0.1`,
      `cafile ${opts.caFile}`,
      `certfile ${opts.certFile}`,
      `keyfile ${opts.keyFile}`,
      'require_certificate true',
      'use_identity_as_username true',
      // mosquitto.conf(5): the client id is replaced by the username (= the certificate's CN)
      'use_username_as_clientid true',
      'tls_version tlsv1.2',
      // the same resource limits as the rendered config (max_packet_size, max_queued_bytes)
      ...brokerLimitLines(),
      ...(opts.crlFile ? [`crlfile ${opts.crlFile}`] : []),
      ...(opts.dynsecFile ? [`plugin ${DYNSEC_PLUGIN}`, `plugin_opt_config_file ${opts.dynsecFile}`] : ['allow_anonymous false']),
      ...(opts.extra ?? []),
    ];
    await writeFile(confPath, lines.join('\n') + '\n', { mode: 0o600 });
  };

  const launch = async (): Promise<void> => {
    let lastErr: unknown;
    for (let attempt = 0; attempt < 5; attempt++) {
      if (attempt > 0 && opts.port === undefined && !opts.configFile) port = await freePort();
      await writeConfig();
      const child = spawn('mosquitto', ['-c', confPath], { stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout?.on('data', collect);
      child.stderr?.on('data', collect);
      const exited = new Promise<never>((_, reject) =>
        child.once('exit', (code) => reject(new Error(`mosquitto exited (${code}): ${logText.slice(-2000)}`))),
      );
      exited.catch(() => {});
      try {
        await Promise.race([waitForPort(port, 10_000), exited]);
        proc = child;
        startCount++;
        // The harness keeps the pid file itself, so it works with any config (edgeid-admin's too).
        await writeFile(pidFile, `${child.pid}\n`);
        if (opts.supervised) {
          child.once('exit', () => {
            if (stopped || proc !== child) return;
            proc = null;
            restarting = launch()
              .catch((e) => {
                logText += `\n[harness] restart failed: ${String(e)}\n`;
              })
              .finally(() => {
                restarting = null;
              });
          });
        }
        return;
      } catch (e) {
        lastErr = e;
        child.kill('SIGKILL');
      }
    }
    throw lastErr;
  };

  const halt = async (): Promise<void> => {
    if (restarting) await restarting;
    const p = proc;
    proc = null;
    await stopChild(p, 3000);
  };

  await launch();
  return {
    get port() {
      return port;
    },
    get url() {
      return `mqtts://127.0.0.1:${port}`;
    },
    log: () => logText,
    async stop() {
      if (stopped) return;
      stopped = true;
      await halt();
      logStream?.end();
      await rm(dir, { recursive: true, force: true });
    },
    async restart(whileDown) {
      if (restarting) await restarting;
      await halt();
      if (whileDown) await whileDown();
      await launch();
    },
    reloadCommand: ['sh', '-c', `kill -TERM "$(cat '${pidFile}')"`],
    hupCommand: ['sh', '-c', `kill -HUP "$(cat '${pidFile}')"`],
    starts: () => startCount,
  };
}
