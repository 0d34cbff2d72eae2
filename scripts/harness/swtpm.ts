/**
 * A fresh simulated TPM 2.0 per test: manufactured by swtpm_setup with EK certificates signed by
 * swtpm-localca (the tests' "manufacturer root"), served by `swtpm socket` on free loopback ports.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { stopChild } from './process.js';
import { freePortPair, waitForPort } from './ports.js';

const run = promisify(execFile);

export const SWTPM_LOCALCA_ROOT = '/var/lib/swtpm-localca/swtpm-localca-rootca-cert.pem';
export const SWTPM_LOCALCA_ISSUER = '/var/lib/swtpm-localca/issuercert.pem';

export interface Swtpm {
  /** TCTI configuration string for tpm2-tss / tpm2-tools. */
  tcti: string;
  port: number;
  ctrlPort: number;
  stateDir: string;
  /** Stops the simulator (and, unless it was started with keepState, removes its state). Idempotent. */
  stop(): Promise<void>;
  /**
   * Stops and starts the simulator on the same state and ports (a "reboot": PCRs reset);
   * `whileDown` runs between the two (the TPM unreachable meanwhile).
   */
  restart(whileDown?: () => Promise<void>): Promise<void>;
}

export interface SwtpmOptions {
  /** Use this (manufactured) state dir instead of a new one; it is kept on stop. */
  stateDir?: string;
  /** Skip manufacturing (a TPM without EKs or certificates). */
  bare?: boolean;
  /** Append the simulator's output to this file. */
  logFile?: string;
}

/** Creates a manufactured TPM state in `dir` (RSA-2048 + ECC P-384 EKs with certificates, platform cert). */
export async function manufactureTpm(dir: string): Promise<void> {
  await run(
    'swtpm_setup',
    ['--tpm2', '--tpmstate', dir, '--create-ek-cert', '--create-platform-cert', '--overwrite', '--pcr-banks', 'sha256'],
    { timeout: 60_000 },
  );
}

export async function startSwtpm(opts: SwtpmOptions = {}): Promise<Swtpm> {
  const own = opts.stateDir === undefined;
  const stateDir = opts.stateDir ?? (await mkdtemp(path.join(os.tmpdir(), 'edgeid-swtpm-')));
  if (own && !opts.bare) await manufactureTpm(stateDir);
  let proc: ChildProcess | null = null;
  let port = 0;
  let stopped = false;
  const logStream = opts.logFile ? createWriteStream(opts.logFile, { flags: 'a' }) : null;

  const launch = async (): Promise<void> => {
    let lastErr: unknown;
    for (let attempt = 0; attempt < 5; attempt++) {
      if (port === 0 || attempt > 0) port = await freePortPair();
      const flags = opts.bare ? 'startup-clear,not-need-init' : 'startup-clear';
      const child = spawn(
        'swtpm',
        [
          'socket',
          '--tpm2',
          '--tpmstate',
          `dir=${stateDir}`,
          '--server',
          `type=tcp,port=${port},bindaddr=127.0.0.1`,
          '--ctrl',
          `type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
          '--flags',
          flags,
        ],
        { stdio: ['ignore', logStream ? 'pipe' : 'ignore', 'pipe'] },
      );
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => {
        stderr += d.toString();
        logStream?.write(d);
      });
      child.stdout?.on('data', (d: Buffer) => logStream?.write(d));
      const exited = new Promise<never>((_, reject) =>
        child.once('exit', (code) => reject(new Error(`swtpm exited (${code}): ${stderr.trim()}`))),
      );
      exited.catch(() => {});
      try {
        await Promise.race([waitForPort(port, 10_000), exited]);
        proc = child;
        return;
      } catch (e) {
        lastErr = e;
        child.kill('SIGKILL');
      }
    }
    throw lastErr;
  };

  const halt = async (): Promise<void> => {
    const p = proc;
    proc = null;
    await stopChild(p, 3000);
  };

  await launch();
  const tpm: Swtpm = {
    get tcti() {
      return `swtpm:host=127.0.0.1,port=${port}`;
    },
    get port() {
      return port;
    },
    get ctrlPort() {
      return port + 1;
    },
    stateDir,
    async stop() {
      if (stopped) return;
      stopped = true;
      await halt();
      logStream?.end();
      if (own) await rm(stateDir, { recursive: true, force: true });
    },
    async restart(whileDown?: () => Promise<void>) {
      await halt();
      if (whileDown) await whileDown();
      await launch();
    },
  };
  return tpm;
}

/** The fake measured-boot events written into PCRs 0–7 by extendBootPcrs (deterministic per label). */
export function bootMeasurement(pcr: number, label = 'edgeid-test-boot'): Buffer {
  return createHash('sha256').update(`${label}:pcr${pcr}`).digest();
}

/** Emulates measured boot: extends PCRs 0–7 of the sha256 bank with fake firmware/bootloader measurements. */
export async function extendBootPcrs(tcti: string, label = 'edgeid-test-boot', pcrs: number[] = [0, 1, 2, 3, 4, 5, 6, 7]): Promise<void> {
  for (const pcr of pcrs) {
    await run('tpm2_pcrextend', ['-T', tcti, `${pcr}:sha256=${bootMeasurement(pcr, label).toString('hex')}`], { timeout: 15_000 });
  }
}

/** Number of transient objects loaded in the TPM, read with tpm2-tools (independent of our addon). */
export async function transientHandleCountViaTools(tcti: string): Promise<number> {
  const { stdout } = await run('tpm2_getcap', ['-T', tcti, 'handles-transient'], { timeout: 15_000 });
  return stdout.split('\n').filter((l) => /0x80/.test(l)).length;
}
