/**
 * The server on PostgreSQL: the `store` setting (a URL or an object; no password in it, the
 * password from a 0600 file or the environment), a server that opens its store there and serves
 * the admin API from it, and a database that goes away answered 503 store_unavailable (never a
 * crash) until it is back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { readStorePassword } from '../../enroll-server/composition.js';
import { loadConfig } from '../../enroll-server/config.js';
import { createServer } from '../../enroll-server/server.js';
import { pgFailure, PostgresStore } from '../../enroll-server/store/postgres.js';
import { SqliteStore } from '../../enroll-server/store/sqlite.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { freshPostgresDatabase, pgClient, postgresServer, usePostgres } from '../helpers/stores.js';

usePostgres();

const cfg = (file: unknown, env: NodeJS.ProcessEnv = {}) =>
  loadConfig({ argv: ['--data', '/tmp/x', '--listen', '127.0.0.1:0'], env, file });

test('store: absent or "sqlite" is the data dir SQLite; a postgres URL or object selects PostgreSQL', () => {
  assert.deepEqual(cfg({}).store, { kind: 'sqlite' });
  assert.deepEqual(cfg({ store: 'sqlite' }).store, { kind: 'sqlite' });
  assert.deepEqual(cfg({ store: 'postgres://edgeid@db.example:5432/edgeid' }).store, {
    kind: 'postgres',
    url: 'postgres://edgeid@db.example:5432/edgeid',
    poolSize: 10,
    password: null,
  });
  assert.deepEqual(
    loadConfig({
      argv: ['--data', '/tmp/x'],
      env: {},
      cwd: '/etc/edgeid',
      file: { store: { url: 'postgresql://e@h/d', poolSize: 4, passwordFile: 'pg.pw' } },
    }).store,
    { kind: 'postgres', url: 'postgresql://e@h/d', poolSize: 4, password: { file: '/etc/edgeid/pg.pw' } },
  );
  assert.deepEqual(cfg({ store: { url: 'postgres://e@h/d', passwordEnv: 'EDGEID_PG_PASSWORD' } }).store, {
    kind: 'postgres',
    url: 'postgres://e@h/d',
    poolSize: 10,
    password: { env: 'EDGEID_PG_PASSWORD' },
  });
  // the environment wins over the file, as EDGEID_DATA does
  assert.equal(cfg({}, { EDGEID_STORE: 'postgres://e@h:1/d' }).store.kind, 'postgres');
});

test('store: a password in the URL, another scheme, no database, two password sources or a bad pool size are refused (config_invalid, the password not repeated)', () => {
  const refused = (file: unknown, field: RegExp) =>
    assert.throws(
      () => cfg(file),
      (e: any) => e.code === 'config_invalid' && field.test(e.message) && !e.message.includes('s3cret'),
    );
  refused({ store: 'postgres://edgeid:s3cret@db:5432/edgeid' }, /store: must not contain a password/);
  refused({ store: { url: 'postgres://edgeid:s3cret@db:5432/edgeid' } }, /store\.url: must not contain a password/);
  refused({ store: 'mysql://e@h/d' }, /store: must be "sqlite" or a URL/);
  refused({ store: 'postgres://e@h' }, /store: must name a host and a database/);
  refused({ store: { url: 'postgres://e@h/d', passwordFile: 'a', passwordEnv: 'B' } }, /store: takes one of/);
  refused({ store: { url: 'postgres://e@h/d', poolSize: 0 } }, /store\.poolSize/);
  refused({ store: { url: 'postgres://e@h/d', pool: 3 } }, /store/);
});

test('store password: read from a 0600 file (one trailing newline dropped) or a variable; a file others may read is refused', async (t) => {
  const dir = await tmpDir('edgeid-pgpw-');
  t.after(() => import('node:fs/promises').then((f) => f.rm(dir, { recursive: true, force: true })));
  const file = path.join(dir, 'pw');
  writeFileSync(file, 's3cret\n', { mode: 0o600 });
  assert.equal(readStorePassword({ file }, {}), 's3cret');
  chmodSync(file, 0o640);
  assert.throws(
    () => readStorePassword({ file }, {}),
    (e: any) => e.code === 'config_invalid' && /mode 0640/.test(e.message) && !e.message.includes('s3cret'),
  );
  // a directory, or no file at all: config_invalid naming the field, not a raw EISDIR / ENOENT
  const sub = path.join(dir, 'pwdir');
  mkdirSync(sub, { mode: 0o755 });
  assert.throws(
    () => readStorePassword({ file: sub }, {}),
    (e: any) => e.code === 'config_invalid' && e.details?.field === 'store.passwordFile' && /is not a regular file/.test(e.message),
  );
  assert.throws(
    () => readStorePassword({ file: path.join(dir, 'missing') }, {}),
    (e: any) => e.code === 'config_invalid' && /cannot read .*ENOENT/.test(e.message),
  );
  assert.equal(readStorePassword({ env: 'PW' }, { PW: 'x' }), 'x');
  assert.throws(
    () => readStorePassword({ env: 'PW' }, {}),
    (e: any) => e.code === 'config_invalid',
  );
  assert.equal(readStorePassword(null, {}), undefined);
});

test('a server on PostgreSQL serves from it; a database that goes away is answered 503 store_unavailable, and it serves again once it is back', async (t) => {
  const url = await freshPostgresDatabase();
  const dataDir = await tmpDir('edgeid-server-pg-');
  t.after(() => import('node:fs/promises').then((f) => f.rm(dataDir, { recursive: true, force: true })));
  const config = loadConfig({ argv: ['--data', dataDir, '--listen', '127.0.0.1:0'], env: {}, file: { store: { url, poolSize: 3 } } });
  const server = await createServer({ config, tls: false, logger: pino({ level: 'silent' }), housekeeping: false });
  t.after(() => server.close());
  assert.ok(server.ctx.store instanceof PostgresStore);
  assert.ok(!(server.ctx.store instanceof SqliteStore));
  const admin = (await import('node:fs')).readFileSync(path.join(dataDir, 'admin-token'), 'utf8').trim();
  const call = (method: 'GET' | 'POST', url: string, payload?: unknown) =>
    server.app.inject({ method, url, headers: { authorization: `Bearer ${admin}` }, ...(payload ? { payload } : {}) });

  const created = await call('POST', '/v1/admin/tokens', { zone: 'default', owner: 'ops' });
  assert.equal(created.statusCode, 200, created.body);
  // it is in PostgreSQL: another connection reads the token and the audit row
  const db = await pgClient(t, url);
  assert.equal((await db.query('SELECT COUNT(*)::int AS n FROM tokens')).rows[0].n, 1);
  assert.ok((await db.query(`SELECT COUNT(*)::int AS n FROM audit WHERE event = 'token.create'`)).rows[0].n >= 1);

  // the database goes away (closed to new connections, every session of it ended)
  const root = await pgClient(t, (await postgresServer()).url);
  const name = new URL(url).pathname.slice(1);
  await db.end();
  await root.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
  await root.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [name]);
  const down = await call('GET', '/v1/admin/tokens');
  assert.equal(down.statusCode, 503, down.body);
  assert.equal(down.json().error.code, 'store_unavailable');
  assert.ok(!down.body.includes(url), 'the answer does not carry the database URL');
  const write = await call('POST', '/v1/admin/tokens', { zone: 'default', owner: 'ops' });
  assert.equal(write.statusCode, 503, write.body);
  assert.equal(write.json().error.code, 'store_unavailable');

  await root.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
  const back = await call('GET', '/v1/admin/tokens');
  assert.equal(back.statusCode, 200, back.body);
  assert.equal(back.json().tokens.length, 1, 'the refused write changed nothing');
  assert.equal((await server.ctx.store.verifyAudit()).ok, true);
});

test('a server whose database cannot be reached does not start: store_unavailable, without the URL in the message', async (t) => {
  const srv = await postgresServer();
  const dataDir = await tmpDir('edgeid-server-pg-');
  t.after(() => import('node:fs/promises').then((f) => f.rm(dataDir, { recursive: true, force: true })));
  // a database that does not exist on a server that runs
  const url = srv.url.replace(/\/postgres$/, '/no_such_db');
  const config = loadConfig({ argv: ['--data', dataDir, '--listen', '127.0.0.1:0'], env: {}, file: { store: url } });
  await assert.rejects(
    createServer({ config, tls: false, logger: pino({ level: 'silent' }), housekeeping: false }),
    (e: any) => e.code === 'store_unavailable' && !e.message.includes(url),
  );
});

test('a read-only database is answered storage_read_only and the write changed nothing; a full disk (SQLSTATE 53100) maps to storage_full', async (t) => {
  const url = await freshPostgresDatabase();
  await (await PostgresStore.open({ url })).close();
  const root = await pgClient(t, (await postgresServer()).url);
  const name = new URL(url).pathname.slice(1);
  // as on a hot standby or with default_transaction_read_only (new sessions only)
  await root.query(`ALTER DATABASE ${name} SET default_transaction_read_only = on`);
  const s = await PostgresStore.open({ url, poolSize: 2 });
  t.after(() => s.close());
  const tok = {
    id: 'tok-ro',
    secretHash: Buffer.alloc(32),
    zone: 'default',
    owner: 'o',
    name: null,
    purpose: null,
    createdBy: 'admin',
    createdAt: 1,
    expiresAt: 2,
    ekHash: null,
    boundAt: null,
    usedAt: null,
    deviceId: null,
  };
  await assert.rejects(
    s.createToken(tok, { time: 1, actor: 'admin', event: 'token.create', outcome: 'ok' }),
    (e: any) => e.code === 'storage_read_only' && e.status === 503,
  );
  assert.equal(await s.getToken('tok-ro'), null);
  assert.deepEqual(await s.verifyAudit(), { ok: true, rows: 0 });
  // the mapping of the disk-full SQLSTATE (no disk can be filled here without root on the host)
  assert.equal((pgFailure(Object.assign(new Error('could not extend file'), { code: '53100' })) as any).code, 'storage_full');
  assert.equal((pgFailure(Object.assign(new Error('x'), { code: '57P01' })) as any).code, 'store_unavailable');
  const bug = Object.assign(new Error('syntax error'), { code: '42601' });
  assert.equal(pgFailure(bug), bug, 'a bug stays itself (internal_error)');
});

test('a role with a password: the password from a 0600 file or PGPASSWORD opens the store; a wrong one is store_unavailable without the password in it', async (t) => {
  const srv = await postgresServer();
  const url = await freshPostgresDatabase();
  const name = new URL(url).pathname.slice(1);
  const root = await pgClient(t, srv.url);
  const secret = `pw ${name} %x@:/é`;
  await root.query(`CREATE ROLE edgeid_${name} LOGIN PASSWORD '${secret.replace(/'/g, "''")}'`);
  await root.query(`ALTER DATABASE ${name} OWNER TO edgeid_${name}`);
  // this role must authenticate with its password on loopback (scram-sha-256), ahead of the harness's trust rule
  const hba = (await root.query('SHOW hba_file')).rows[0].hba_file as string;
  const { readFile, writeFile } = await import('node:fs/promises');
  await writeFile(hba, `host all edgeid_${name} 127.0.0.1/32 scram-sha-256\n${await readFile(hba, 'utf8')}`);
  await root.query('SELECT pg_reload_conf()');
  const roleUrl = `postgres://edgeid_${name}@127.0.0.1:${srv.port}/${name}`;
  const { waitFor } = await import('../../scripts/harness/wait.js');
  await waitFor('the password rule to be in force', async () => {
    const tried = await PostgresStore.open({ url: roleUrl, password: 'wrong' }).then(
      (s) => s.close().then(() => null),
      (e: any) => e,
    );
    return tried?.code === 'store_unavailable' ? tried : null;
  });
  const wrong = await PostgresStore.open({ url: roleUrl, password: 'wrong' }).catch((e: unknown) => e as any);
  assert.equal(wrong.code, 'store_unavailable');
  assert.match(String(wrong.details?.cause), /28P01/);
  assert.ok(!JSON.stringify({ m: wrong.message, d: wrong.details }).includes('wrong'));

  // no password at all (none configured, no PGPASSWORD): refused the same way, not a crash
  const saved0 = process.env.PGPASSWORD;
  delete process.env.PGPASSWORD;
  try {
    await assert.rejects(PostgresStore.open({ url: roleUrl }), (e: any) => e.code === 'store_unavailable');
  } finally {
    if (saved0 !== undefined) process.env.PGPASSWORD = saved0;
  }

  // the server with store.passwordFile
  const dataDir = await tmpDir('edgeid-server-pg-');
  t.after(() => import('node:fs/promises').then((f) => f.rm(dataDir, { recursive: true, force: true })));
  const pwFile = path.join(dataDir, '..', `${path.basename(dataDir)}.pgpw`);
  writeFileSync(pwFile, secret + '\n', { mode: 0o600 });
  t.after(() => import('node:fs/promises').then((f) => f.rm(pwFile, { force: true })));
  const config = loadConfig({
    argv: ['--data', dataDir, '--listen', '127.0.0.1:0'],
    env: {},
    file: { store: { url: roleUrl, passwordFile: pwFile } },
  });
  const server = await createServer({ config, tls: false, logger: pino({ level: 'silent' }), housekeeping: false });
  t.after(() => server.close());
  assert.equal((await server.ctx.store.verifyAudit()).ok, true);

  // libpq's PGPASSWORD, which node-postgres reads when no password is configured
  const saved = process.env.PGPASSWORD;
  process.env.PGPASSWORD = secret;
  try {
    const s = await PostgresStore.open({ url: roleUrl });
    await s.close();
  } finally {
    if (saved === undefined) delete process.env.PGPASSWORD;
    else process.env.PGPASSWORD = saved;
  }
});
