/**
 * A throwaway PostgreSQL 15 for tests (Debian `postgresql-15`): initdb in a temp dir, the server on
 * a free loopback port with its unix socket in the same dir, fsync off (the data is thrown away).
 * initdb and postgres refuse to run as root
 * (https://www.postgresql.org/docs/15/app-initdb.html): as root they run as the Debian `postgres`
 * system user, otherwise as the caller. The server is started through `setpriv --pdeathsig KILL`
 * (util-linux), so it dies with the test process even when that is killed; its backends follow on
 * their own (postmaster death, https://www.postgresql.org/docs/15/server-shutdown.html). One server
 * per test file; each test takes its own database (createDatabase), so tests run in parallel.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './ports.js';
import { stopChild } from './process.js';
import { waitFor } from './wait.js';

const run = promisify(execFile);

export const PG_BIN = process.env.EDGEID_PG_BIN ?? '/usr/lib/postgresql/15/bin';

export interface Postgres {
  /** postgres://USER@127.0.0.1:PORT/postgres (trust authentication on loopback: no password). */
  url: string;
  port: number;
  /** Creates an empty database and returns its URL. */
  createDatabase(name: string): Promise<string>;
  /** Everything the server logged so far. */
  log(): string;
  /** Stops the server and removes its directory. Idempotent. */
  stop(): Promise<void>;
}

/** The user the cluster runs as: ourselves, or `postgres` when we are root. */
function runAs(): { user: string; uid: number; gid: number; prefix: string[] } {
  const uid = process.getuid?.() ?? 0;
  if (uid !== 0) return { user: os.userInfo().username, uid, gid: process.getgid?.() ?? uid, prefix: [] };
  const pw = /^postgres:[^:]*:(\d+):(\d+):/m.exec(readFileSync('/etc/passwd', 'utf8'));
  if (!pw) throw new Error('running as root needs the Debian postgres system user (apt-get install postgresql)');
  return {
    user: 'postgres',
    uid: Number(pw[1]),
    gid: Number(pw[2]),
    prefix: ['--reuid', pw[1]!, '--regid', pw[2]!, '--clear-groups'],
  };
}

/**
 * `durable`: fsync, synchronous_commit and full_page_writes left on (PostgreSQL's defaults), for
 * benchmarks that compare it with SQLite's synchronous = FULL; tests leave them off.
 */
export async function startPostgres(o: { durable?: boolean } = {}): Promise<Postgres> {
  const who = runAs();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-pg-'));
  const data = path.join(dir, 'data');
  const removeDir = () => rmSync(dir, { recursive: true, force: true });
  // removed even when the test process ends without calling stop()
  process.once('exit', removeDir);
  if (who.prefix.length) chownSync(dir, who.uid, who.gid);
  const env = { ...process.env, LC_ALL: 'C', LANG: 'C', PGTZ: 'UTC' };
  const setpriv = (args: string[]) => ['setpriv', [...who.prefix, '--pdeathsig', 'KILL', '--', ...args]] as const;
  try {
    const [cmd, args] = setpriv([
      path.join(PG_BIN, 'initdb'),
      '-D',
      data,
      '-U',
      who.user,
      '--auth=trust',
      '--encoding=UTF8',
      '--no-sync',
      '--no-instructions',
    ]);
    await run(cmd, args, { env, cwd: dir });
  } catch (e) {
    removeDir();
    throw new Error(`initdb failed: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`);
  }

  let log = '';
  let child: ChildProcess | null = null;
  let port = 0;
  for (let attempt = 0; ; attempt++) {
    port = await freePort();
    const [cmd, args] = setpriv([
      path.join(PG_BIN, 'postgres'),
      '-D',
      data,
      '-p',
      String(port),
      '-c',
      'listen_addresses=127.0.0.1',
      '-c',
      `unix_socket_directories=${dir}`,
      ...(o.durable ? [] : ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off']),
      '-c',
      'max_connections=200',
      '-c',
      o.durable ? 'shared_buffers=128MB' : 'shared_buffers=32MB',
      '-c',
      'log_min_messages=warning',
    ]);
    const c = spawn(cmd, args, { env, cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    c.stdout!.on('data', (d: Buffer) => (log += d.toString()));
    c.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    const exited = new Promise<'exited'>((resolve) => c.once('exit', () => resolve('exited')));
    const ready = waitFor(
      `PostgreSQL to accept connections on 127.0.0.1:${port}`,
      async () => {
        if (c.exitCode !== null || c.signalCode !== null) return 'exited';
        const client = new pg.Client({ host: '127.0.0.1', port, user: who.user, database: 'postgres' });
        client.on('error', () => {});
        try {
          await client.connect();
          await client.query('SELECT 1');
          return 'ready';
        } finally {
          await client.end().catch(() => {});
        }
      },
      { timeoutMs: 30_000, intervalMs: 100, retryErrors: true },
    );
    const outcome = await Promise.race([ready, exited]).catch(async (e: unknown) => {
      await stopChild(c, 1000);
      removeDir();
      throw e;
    });
    if (outcome === 'ready') {
      child = c;
      break;
    }
    // a port taken between freePort and bind: try another one
    if (attempt < 3 && /could not bind|Address already in use/.test(log)) continue;
    removeDir();
    throw new Error(`postgres exited: ${log.slice(-2000)}`);
  }

  const url = `postgres://${who.user}@127.0.0.1:${port}/postgres`;
  let stopped = false;
  return {
    url,
    port,
    log: () => log,
    async createDatabase(name: string): Promise<string> {
      if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`database name ${name} is not a plain identifier`);
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE ${name}`);
      } finally {
        await client.end();
      }
      return `postgres://${who.user}@127.0.0.1:${port}/${name}`;
    },
    async stop(): Promise<void> {
      if (stopped) return;
      stopped = true;
      // SIGINT: "fast shutdown" (https://www.postgresql.org/docs/15/server-shutdown.html)
      if (child && child.exitCode === null && child.signalCode === null) {
        const c = child;
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => c.kill('SIGKILL'), 10_000);
          c.once('exit', () => {
            clearTimeout(t);
            resolve();
          });
          c.kill('SIGINT');
        });
      }
      removeDir();
      process.removeListener('exit', removeDir);
    },
  };
}
