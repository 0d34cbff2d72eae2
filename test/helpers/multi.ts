/**
 * Several real edgeid-server processes on one PostgreSQL database, as a deployment of several
 * instances has them: each its own data dir with a copy of the first one's CA and admin token.
 */
import { cp } from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { tmpDir } from '../../scripts/harness/fs.js';
import { startServerProcess, type ServerProcess } from '../../scripts/harness/server.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { freshPostgresDatabase } from './stores.js';

/** Seconds between leadership attempts in this test (the default is 10). */
export const LEADER_INTERVAL = 1;

/** `n` instances on a fresh database of the file's PostgreSQL (call usePostgres() in the test file). */
export async function serversOnOneDatabase(t: TestContext, n: number, extra: Record<string, unknown> = {}): Promise<ServerProcess[]> {
  const url = await freshPostgresDatabase();
  const config = {
    store: { url, poolSize: 4 },
    leaderInterval: LEADER_INTERVAL,
    rateLimit: {
      perAddress: { max: 1_000_000, window: 60 },
      enroll: { max: 1_000_000, window: 60 },
      renew: { max: 1_000_000, window: 60 },
      admin: { max: 1_000_000, window: 60 },
    },
    zones: { default: { lifetime: 3600 } },
    ek: { requireEkCertificate: false },
    ...extra,
  };
  const first = await startServerProcess({ dataDir: path.join(await tmpDir('edgeid-multi-0-', t), 'data'), config });
  t.after(() => first.close());
  const all = [first];
  for (let i = 1; i < n; i++) {
    const dir = path.join(await tmpDir(`edgeid-multi-${i}-`, t), 'data');
    await cp(path.join(first.dataDir, 'ca'), path.join(dir, 'ca'), { recursive: true });
    await cp(path.join(first.dataDir, 'admin-token'), path.join(dir, 'admin-token'));
    const s = await startServerProcess({ dataDir: dir, config });
    t.after(() => s.close());
    all.push(s);
  }
  return all;
}

/** GET /metrics of one instance (null: not answering). */
export function metricsText(s: ServerProcess): Promise<string | null> {
  return new Promise((resolve) => {
    const req = https.get(new URL('/metrics', s.url), { ca: s.caPem, timeout: 5000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve(res.statusCode === 200 ? text : null));
      res.on('error', () => resolve(null));
    });
    req.on('error', () => resolve(null));
    req.on('timeout', () => req.destroy());
  });
}

/** The edgeid_leader gauge of one instance (null: not answering). */
export async function leaderGauge(s: ServerProcess): Promise<number | null> {
  const m = /^edgeid_leader (\d+)$/m.exec((await metricsText(s)) ?? '');
  return m ? Number(m[1]) : null;
}

/** Waits until exactly one of `servers` reports itself the leader and the rest report 0; returns it. */
export async function oneLeader(servers: ServerProcess[], timeoutMs = 30_000): Promise<ServerProcess> {
  return waitFor(
    'exactly one leader',
    async () => {
      const g = await Promise.all(servers.map(leaderGauge));
      if (g.some((v) => v === null)) return null;
      const leaders = servers.filter((_, i) => g[i] === 1);
      return leaders.length === 1 ? leaders[0]! : null;
    },
    { timeoutMs },
  );
}
