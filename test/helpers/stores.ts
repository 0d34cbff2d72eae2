/**
 * The store tests run against every store: a fresh SqliteStore in a temp dir, and a fresh
 * PostgresStore in its own database of one throwaway PostgreSQL 15 per test file
 * (scripts/harness/postgres.ts, started on first use, stopped after the file's last test).
 * Each fixture also runs raw SQL (`exec`, `?` placeholders on both) for tests that tamper with rows.
 */
import { after, type TestContext } from 'node:test';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startPostgres, type Postgres } from '../../scripts/harness/postgres.js';
import type { Migration } from '../../enroll-server/store/migrate.js';
import { PostgresStore } from '../../enroll-server/store/postgres.js';
import { SqliteStore } from '../../enroll-server/store/sqlite.js';
import type { Store } from '../../enroll-server/store/store.js';

export type StoreName = 'sqlite' | 'postgres';

export interface StoreFixture<S extends Store = Store> {
  name: StoreName;
  store: S;
  /** Runs one SQL statement on the store's database (outside the store); returns the rows. */
  exec(sql: string, ...args: unknown[]): Promise<Record<string, unknown>[]>;
  /** Closes the store and opens it again on the same database (migrations: the ones to apply). */
  reopen(migrations?: Migration[]): Promise<StoreFixture<S>>;
}

export interface StoreKind {
  name: StoreName;
  /** A fresh, empty store for one test (closed and removed after it); `migrations` limits the schema. */
  open(t: TestContext, migrations?: Migration[]): Promise<StoreFixture>;
  /** A fresh empty database for one test, not opened yet: its location (file path or URL). */
  fresh(t: TestContext): Promise<string>;
  /** Opens the store at a location from fresh() (closed after the test). */
  at(t: TestContext, where: string, migrations?: Migration[]): Promise<StoreFixture>;
}

let server: Promise<Postgres> | null = null;
let hooked = false;

/**
 * Registers the stop of the file's PostgreSQL after the file's last test; must be called at the
 * top level of the test file (a hook added inside a test would run after that test only).
 * forEachStore calls it.
 */
export function usePostgres(): void {
  if (hooked) return;
  hooked = true;
  after(async () => {
    if (server) await (await server).stop();
  });
}

/** The file's PostgreSQL (started on first use). */
export function postgresServer(): Promise<Postgres> {
  if (!hooked) throw new Error('call usePostgres() (or forEachStore) at the top level of the test file');
  server ??= startPostgres();
  return server;
}

let dbCounter = 0;

/** A new database on the file's PostgreSQL; returns its URL. */
export async function freshPostgresDatabase(): Promise<string> {
  const srv = await postgresServer();
  return srv.createDatabase(`t_${process.pid}_${++dbCounter}_${randomBytes(3).toString('hex')}`);
}

function toDollar(sql: string): string {
  let i = 0;
  return sql.replace(/\?/g, () => `$${++i}`);
}

function sqliteFixture(t: TestContext, file: string, migrations?: Migration[]): StoreFixture<SqliteStore> {
  if (migrations) throw new Error('the SQLite fixture applies every migration (use migrate() on the file for fewer)');
  const store = new SqliteStore(file);
  t.after(() => store.close());
  return {
    name: 'sqlite',
    store,
    async exec(sql, ...args) {
      const st = store.db.prepare(sql);
      if (st.reader) return st.all(...args) as Record<string, unknown>[];
      st.run(...args);
      return [];
    },
    async reopen() {
      await store.close();
      return sqliteFixture(t, file);
    },
  };
}

async function postgresFixture(t: TestContext, url: string, migrations?: Migration[]): Promise<StoreFixture<PostgresStore>> {
  const store = await PostgresStore.open({ url, poolSize: 4 }, ...(migrations ? [migrations] : []));
  t.after(() => store.close());
  return {
    name: 'postgres',
    store,
    async exec(sql, ...args) {
      return (await store.pool.query(toDollar(sql), args)).rows as Record<string, unknown>[];
    },
    async reopen(m) {
      await store.close();
      return postgresFixture(t, url, m);
    },
  };
}

export const sqliteKind: StoreKind = {
  name: 'sqlite',
  async fresh(t) {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-store-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    return path.join(dir, 'edgeid.db');
  },
  async at(t, where, migrations) {
    return sqliteFixture(t, where, migrations);
  },
  async open(t, migrations) {
    return sqliteFixture(t, await this.fresh(t), migrations);
  },
};

export const postgresKind: StoreKind = {
  name: 'postgres',
  async fresh() {
    return freshPostgresDatabase();
  },
  async at(t, where, migrations) {
    return postgresFixture(t, where, migrations);
  },
  async open(t, migrations) {
    return postgresFixture(t, await freshPostgresDatabase(), migrations);
  },
};

export const STORE_KINDS: StoreKind[] = [sqliteKind, postgresKind];

/** Defines the tests once per store kind (the test names start with the store's name). */
export function forEachStore(define: (kind: StoreKind) => void): void {
  usePostgres();
  for (const k of STORE_KINDS) define(k);
}

/** A client on a PostgreSQL database for raw checks (closed after the test). */
export async function pgClient(t: TestContext, url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  t.after(() => c.end());
  return c;
}
