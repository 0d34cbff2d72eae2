/** What the leadership tests share: the two things Leadership reads of a server's context, and who holds the leader lock. */
import type pg from 'pg';
import pino from 'pino';
import { Registry } from 'prom-client';
import type { ServerContext } from '../../enroll-server/services/context.js';
import { LEADER_LOCK } from '../../enroll-server/services/leader.js';

/** A context with only what Leadership uses: a metrics registry of its own and a silent log. */
export function leaderContext(): ServerContext {
  return { metrics: { registry: new Registry() }, log: pino({ level: 'silent' }) } as unknown as ServerContext;
}

/** The backends holding the leader lock on the client's database. */
export async function lockHolders(c: pg.Client): Promise<number[]> {
  const r = await c.query(
    `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND ((classid::bigint << 32) | objid::bigint) = $1::bigint`,
    [LEADER_LOCK],
  );
  return r.rows.map((x) => Number(x.pid));
}
