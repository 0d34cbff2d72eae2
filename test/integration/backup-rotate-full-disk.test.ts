/**
 * Review probe: the two new admin actions that write files (backup, issuing-CA rotation) on a full
 * data dir. Expected as for every other write (docs/RELIABILITY.md §2): 503 storage_full, never a
 * 500, and nothing half-written (no new issuing CA files, no backup temp file).
 * Needs root (tmpfs), like test/integration/faults-device.test.ts.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, open, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startInProcessServer } from '../helpers/server.js';

const run = promisify(execFile);

async function fillUp(dir: string): Promise<string> {
  const file = path.join(dir, 'filler');
  const fh = await open(file, 'w');
  try {
    for (const size of [64 * 1024, 4096, 512, 1]) {
      const chunk = Buffer.alloc(size, 0xa5);
      for (;;) {
        try {
          await fh.write(chunk);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw e;
        }
      }
    }
  } finally {
    await fh.close();
  }
  return file;
}

for (const action of ['backup', 'rotate'] as const) {
  test(`full data dir: ${action} answers 503 storage_full and leaves nothing half-written`, async (t) => {
    const base = await mkdtemp(path.join(os.tmpdir(), 'edgeid-review16-'));
    const disk = path.join(base, 'mnt');
    await mkdir(disk);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=16m,mode=0755', 'tmpfs', disk]);
    t.after(async () => {
      await run('umount', ['-l', disk]);
      await rm(base, { recursive: true, force: true });
    });
    const srv = await startInProcessServer({}, [], { tmpRoot: disk });
    t.after(() => srv.close());
    for (let i = 0; i < 200; i++) await srv.admin('POST', '/v1/admin/tokens', { zone: 'default', owner: 'review' });
    const before = (await readdir(path.join(srv.dataDir, 'ca'))).sort();
    await fillUp(disk);
    const r =
      action === 'backup'
        ? await srv.admin('POST', '/v1/admin/backup', { passphrase: 'correct horse battery staple 42' })
        : await srv.admin('POST', '/v1/admin/ca/rotate-issuing', {});
    const code = typeof r.body === 'object' ? r.body?.error?.code : String(r.body).slice(0, 100);
    assert.ok(r.status !== 500, `a full disk gave ${r.status} ${code}`);
    if (r.status !== 200) assert.equal(code, 'storage_full');
    const after = (await readdir(path.join(srv.dataDir, 'ca'))).sort();
    if (r.status !== 200) assert.deepEqual(after, before, 'a refused rotation left files in data/ca');
    const stray = (await readdir(srv.dataDir)).filter((f) => f.startsWith('.'));
    assert.deepEqual(stray, [], 'temporary files left in the data dir');
  });
}
