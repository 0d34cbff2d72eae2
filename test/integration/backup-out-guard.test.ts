/**
 * Found by an outside review: `edgeid-admin backup --out FILE` replaces FILE whatever it is. Pointed by mistake
 * at the live database (or any other file of the data dir) it renames the encrypted backup over
 * it: the running server keeps the unlinked inode, and at its next start the database is gone.
 * Expected: refuse an existing FILE (or one inside the server's data dir) unless told to overwrite.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runCli } from '../helpers/cli.js';
import { startServerProcess } from '../../scripts/harness/server.js';
import { recordSecret } from '../../scripts/harness/secrets.js';

test('backup --out never replaces the live database', async (t) => {
  const srv = await startServerProcess({});
  t.after(() => srv.close());
  const pass = path.join(srv.dataDir, '..', `${path.basename(srv.dataDir)}.pass`);
  recordSecret('correct horse battery staple 42', 'backup passphrase');
  await writeFile(pass, 'correct horse battery staple 42\n', { mode: 0o600 });
  const db = path.join(srv.dataDir, 'edgeid.db');
  const r = await runCli('edgeid-admin', ['backup', '--out', db, '--passphrase-file', pass, '--data', srv.dataDir, '--json']);
  const head = (await readFile(db)).subarray(0, 16).toString('latin1');
  assert.equal(head, 'SQLite format 3\0', `exit ${r.code}: the live database was replaced by the backup file (${JSON.stringify(head)})`);
});
