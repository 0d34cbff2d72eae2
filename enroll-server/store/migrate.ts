/**
 * Schema migrations: numbered SQL files (`NNN_name.sql` in store/migrations/), applied in order,
 * each in its own transaction together with its row in `schema_version`. A database records every
 * version applied; the current one is the highest. The same scheme serves a PostgreSQL store
 * (its own files, the same table, transactional DDL).
 *
 * Databases created before the version table existed are recognised by their shape and adopted at
 * the version they match; the remaining migrations then run as usual.
 */
import type Database from 'better-sqlite3';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { EdgeidError } from '../../protocol/errors/index.js';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS_DIR = fileURLToPath(new URL('./migrations/', import.meta.url));

/** Reads the migration files; their numbers must run 1, 2, 3 … without a gap or a repeat. */
export function loadMigrations(dir = MIGRATIONS_DIR): Migration[] {
  const out: Migration[] = [];
  for (const f of readdirSync(dir)
    .filter((n) => n.endsWith('.sql'))
    .sort()) {
    const m = /^(\d{3})_([a-z0-9_]+)\.sql$/.exec(f);
    if (!m) throw new Error(`migration file ${f} is not named NNN_name.sql`);
    out.push({ version: Number(m[1]), name: m[2]!, sql: readFileSync(`${dir}/${f}`, 'utf8') });
  }
  out.forEach((m, i) => {
    if (m.version !== i + 1)
      throw new Error(`migrations must be numbered 1, 2, 3 …: found ${String(m.version).padStart(3, '0')} at position ${i + 1}`);
  });
  return out;
}

type Row = Record<string, unknown>;

function tables(db: Database.Database): Set<string> {
  return new Set((db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table'`).all() as Row[]).map((r) => String(r.name)));
}

function columns(db: Database.Database, table: string): Set<string> {
  return new Set((db.prepare(`PRAGMA table_info(${table})`).all() as Row[]).map((c) => String(c.name)));
}

/**
 * The version a database without `schema_version` is at: 0 when it is empty; else the migration
 * whose shape it has (edgeid before numbered migrations added the columns of 002 and 003 in place).
 */
export function legacyVersion(db: Database.Database): number {
  const t = tables(db);
  if (t.size === 0) return 0;
  for (const need of ['meta', 'tokens', 'enroll_sessions', 'devices', 'certificates', 'nonces', 'audit']) {
    if (!t.has(need))
      throw new EdgeidError(
        'data_dir_unusable',
        `the database has no schema_version table and no ${need} table: it is not an edgeid database`,
      );
  }
  const akName = columns(db, 'devices').has('ak_name');
  const kind = columns(db, 'nonces').has('kind');
  if (kind && !akName)
    throw new EdgeidError('data_dir_unusable', 'the database has an unknown schema (nonces.kind without devices.ak_name)');
  return kind ? 3 : akName ? 2 : 1;
}

export function currentVersion(db: Database.Database): number | null {
  if (!tables(db).has('schema_version')) return null;
  const r = db.prepare('SELECT MAX(version) AS v FROM schema_version').get() as Row;
  return r.v === null ? 0 : Number(r.v);
}

/**
 * Brings the database to the newest migration. Returns the version it was at and the one it is
 * at now. A database newer than this server (a later edgeid wrote it) is refused, not touched.
 */
export function migrate(db: Database.Database, migrations: Migration[], now: () => number = Date.now): { from: number; to: number } {
  const tx = <T>(fn: () => T): T => db.transaction(fn).immediate();
  let from = currentVersion(db);
  if (from === null) {
    // adopt a database from before the version table: record the versions its shape has
    from = tx(() => {
      const v = legacyVersion(db);
      db.exec('CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)');
      const ins = db.prepare('INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)');
      for (const m of migrations.slice(0, v)) ins.run(m.version, `${m.name} (adopted)`, now());
      return v;
    });
  }
  const newest = migrations.length;
  if (from > newest) {
    throw new EdgeidError(
      'data_dir_unusable',
      `the database is at schema version ${from}, newer than this server knows (${newest}): it was written by a later edgeid-server`,
    );
  }
  for (const m of migrations.slice(from)) {
    tx(() => {
      db.exec(m.sql);
      db.prepare('INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, now());
    });
  }
  return { from, to: newest };
}
