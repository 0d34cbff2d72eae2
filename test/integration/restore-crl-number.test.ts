/**
 * Review findings on backup/restore (outside review of the reliability work).
 * 1. RFC 5280 §5.2.3: CRL numbers are monotonically increasing for a given CA. A restored server
 *    continues from the crl_number the backup holds, so CRLs published between the backup and
 *    the restore have their numbers issued a second time (with different contents).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { restoreBackup } from '../../enroll-server/backup/backup.js';
import { startServerProcess } from '../../scripts/harness/server.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { recordSecret } from '../../scripts/harness/secrets.js';

const PASSPHRASE = 'correct horse battery staple 42';

async function crlNumber(srv: { admin: (m: string, p: string, b?: unknown) => Promise<{ status: number; body: any }> }): Promise<bigint> {
  const r = await srv.admin('POST', '/v1/admin/crl/regenerate', {});
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return BigInt(r.body.crlNumber ?? r.body.number);
}

test('a restored server never reuses a CRL number it published after the backup (RFC 5280 §5.2.3)', async (t) => {
  const work = await tmpDir('edgeid-review16-', t);
  const srv = await startServerProcess({});
  t.after(() => srv.close());
  recordSecret(PASSPHRASE, 'backup passphrase');
  const before = await crlNumber(srv);
  const b = await fetchBackup(srv);
  let last = before;
  for (let i = 0; i < 3; i++) last = await crlNumber(srv);
  assert.ok(last > before);
  await srv.stop();
  const target = path.join(work, 'restored');
  await restoreBackup({ file: b, passphrase: PASSPHRASE, dataDir: target });
  const srv2 = await startServerProcess({ dataDir: target, port: srv.port });
  t.after(() => srv2.close());
  const after = await crlNumber(srv2);
  assert.ok(after > last, `CRL number after restore ${after} must exceed the last one published before it (${last})`);
});

async function fetchBackup(srv: { url: string; caPem: string; adminToken: string }): Promise<Buffer> {
  const u = new URL('/v1/admin/backup', srv.url);
  const { request } = await import('node:https');
  return new Promise((resolve, reject) => {
    const req = request(
      u,
      { method: 'POST', ca: srv.caPem, headers: { authorization: `Bearer ${srv.adminToken}`, 'content-type': 'application/json' } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () =>
          res.statusCode === 200 ? resolve(Buffer.concat(chunks)) : reject(new Error(`${res.statusCode} ${Buffer.concat(chunks)}`)),
        );
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify({ passphrase: PASSPHRASE }));
  });
}
