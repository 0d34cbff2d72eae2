/**
 * Running the CLIs as an operator or a script does: as child processes whose stdout is a pipe, a
 * file or a pseudo-terminal (util-linux `script`), and a server data dir seeded with many tokens,
 * devices and audit rows through the server's own services and store (the real SQLite database).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import pino from 'pino';
import { loadConfig } from '../../enroll-server/config.js';
import { createServer } from '../../enroll-server/server.js';
import { NONCES_KEPT } from '../../enroll-server/services/issue.js';
import { createToken } from '../../enroll-server/services/tokens.js';
import type { DeviceRecord } from '../../enroll-server/store/store.js';
import { NO_EVENT_LOG } from '../../scripts/harness/eventlog.js';
import { REPO } from '../../scripts/harness/fs.js';
import { programCommand, type Program } from '../../scripts/harness/bins.js';
import { openEnrollmentSession } from '../../scripts/harness/seed.js';

/** How each CLI is started: scripts/harness/bins.ts (EDGEID_TEST_BINS: source, dist or installed). */
export const BINS: Record<Program, string[]> = {
  'edgeid-admin': programCommand('edgeid-admin'),
  'edgeid-agent': programCommand('edgeid-agent'),
  'edgeid-server': programCommand('edgeid-server'),
};
export type Bin = keyof typeof BINS;

/** An environment with none of the CLI's own variables (the test says everything explicitly). */
export function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('EDGEID_') || k === 'NO_COLOR' || k === 'FORCE_COLOR') delete env[k];
  // never the host's TCG event log (agents here run against swtpm); a test may name one
  return { ...env, EDGEID_EVENT_LOG: NO_EVENT_LOG, ...extra };
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

/**
 * Runs a CLI with stdout and stderr as pipes and reads them slowly (a consumer like `jq` or a
 * SIEM forwarder), so that anything the CLI does not flush before exiting is lost.
 */
export function runCli(bin: Bin, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  const [cmd, ...pre] = BINS[bin];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd!, [...pre!, ...args], {
      cwd: opts.cwd ?? REPO,
      env: opts.env ?? cleanEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (c: Buffer) => {
      out.push(c);
      // a slow reader: the pipe fills and the writer has to wait for it
      child.stdout.pause();
      setImmediate(() => child.stdout.resume());
    });
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout: Buffer.concat(out), stderr: err }));
  });
}

/** Shell quoting for a command line given to `script -c`. */
export function shellLine(words: string[]): string {
  return words.map((w) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/**
 * Runs a CLI on a pseudo-terminal: `script -qec CMD /dev/null` (util-linux) gives it a pty as
 * stdin, stdout and stderr; returns everything the terminal showed (CRLF line ends, as a tty writes).
 */
export function runOnPty(
  bin: Bin,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qec', shellLine([...BINS[bin], ...args]), '/dev/null'], {
      cwd: opts.cwd ?? REPO,
      env: opts.env ?? cleanEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output }));
  });
}

/** ESC, CSI or OSC: any ANSI escape sequence at all. */
export const ANSI = /\x1b[[\]]|\x1b\\|[\x9b\x9d]/;

export interface SeedOptions {
  /** tokens left unused (each with a long name and purpose, so each listing row is large) */
  tokens: number;
  /** devices, enrolled through the store like the enroll service does (their tokens are used) */
  devices: number;
  /** claims.agentVersion and name of the first device (e.g. terminal escape sequences) */
  firstDevice?: { agentVersion?: string; name?: string };
}

/**
 * Fills a server data dir (created with embedded defaults if new) with tokens, devices and the
 * audit rows both write, through the server's services and store on its SQLite database. Run it
 * while no server process uses the dir. Returns the device ids.
 */
export async function seedDataDir(dataDir: string, o: SeedOptions): Promise<string[]> {
  const config = loadConfig({ argv: ['--data', dataDir, '--listen', '127.0.0.1:0'], env: {}, file: {} });
  const server = await createServer({ config, tls: false, logger: pino({ level: 'silent' }), housekeeping: false });
  const ctx = server.ctx;
  const meta = { ip: '127.0.0.1', actor: 'admin' };
  const long = (label: string, i: number, n: number) => `${label}-${i}-${'x'.repeat(n)}`.slice(0, n);
  const ids: string[] = [];
  try {
    for (let i = 0; i < o.tokens; i++) {
      await createToken(
        ctx,
        { zone: 'default', owner: long('owner', i, 100), name: long('name', i, 120), purpose: long('purpose', i, 250) },
        meta,
      );
    }
    for (let i = 0; i < o.devices; i++) {
      const t = await createToken(
        ctx,
        { zone: 'default', owner: long('owner', i, 100), name: long('gw', i, 120), purpose: long('purpose', i, 250) },
        meta,
      );
      const { sessionId, ekHash, now } = await openEnrollmentSession(ctx, t.id);
      const id = `dev-${randomBytes(8).toString('hex')}`;
      const first = i === 0 ? o.firstDevice : undefined;
      const device: DeviceRecord = {
        id,
        zone: 'default',
        owner: long('owner', i, 100),
        name: first?.name ?? long('gw', i, 120),
        purpose: long('purpose', i, 250),
        status: 'active',
        statusReason: null,
        ekHash,
        akPub: randomBytes(64),
        akName: randomBytes(34).toString('hex'),
        baseline: Object.fromEntries([0, 1, 2, 3, 4, 5, 6, 7].map((p) => [String(p), randomBytes(32).toString('hex')])),
        claims: {
          agentVersion: first?.agentVersion ?? '0.1.0',
          kernel: '6.1.0-seed',
          os: { PRETTY_NAME: 'Debian GNU/Linux 12 (bookworm)' },
        },
        baselineWindowUntil: null,
        enrolledBy: t.id,
        enrolledAt: now,
        retireBy: null,
        lastSeen: now,
        lastIp: '127.0.0.1',
        statusChangedAt: now,
      };
      const serial = randomBytes(16).toString('hex');
      const ok = await ctx.store.finishEnrollment({
        tokenId: t.id,
        sessionId,
        now,
        device,
        certificate: {
          serial,
          deviceId: id,
          notBefore: now,
          notAfter: now + 3_600_000,
          spkiHash: randomBytes(32).toString('hex'),
          issuedAt: now,
          revokedAt: null,
          reason: null,
        },
        nonce: { value: randomBytes(32).toString('base64'), deviceId: id, createdAt: now, expiresAt: now + 3_600_000, usedAt: null },
        keepNonces: NONCES_KEPT,
        audit: {
          time: now,
          actor: 'device',
          event: 'enroll.finish',
          deviceId: id,
          ip: '127.0.0.1',
          outcome: 'ok',
          details: { tokenId: t.id, serial, zone: 'default' },
        },
      });
      if (!ok) throw new Error('seeding: finishEnrollment refused');
      ids.push(id);
    }
  } finally {
    await server.close();
  }
  return ids;
}
