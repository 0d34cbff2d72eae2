/**
 * Found by an outside review: an issuing-CA rotation on a nearly full data dir answers 503 storage_full (the
 * caller reads "nothing happened") while the rotation did happen: the issuing list is written, the
 * server issues from the new CA, the next attempt is refused with ca_rotation_invalid, and the
 * steps after it (new CRLs, the broker's CRL reload, the audit row) never ran. With CRL checking
 * on, the broker then refuses devices that renewed onto the new CA ("unable to get certificate CRL").
 * Needs root (tmpfs), like test/integration/faults-device.test.ts.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, open, rm, stat, truncate } from 'node:fs/promises';
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

test('a rotation answered 503 storage_full did not take effect', async (t) => {
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
  const first = srv.server.ctx.ca.active.name;
  const filler = await fillUp(disk);
  let size = (await stat(filler)).size;
  // free one 4 KiB page at a time: each attempt gets a little further
  for (let k = 1; k <= 12; k++) {
    size -= 4096;
    await truncate(filler, size);
    const r = await srv.admin('POST', '/v1/admin/ca/rotate-issuing', {});
    if (r.status === 200) return;
    assert.equal(r.status, 503, JSON.stringify(r.body));
    assert.equal(
      srv.server.ctx.ca.active.name,
      first,
      `after ${k} freed pages the rotation answered 503 ${r.body?.error?.code}, yet the server now issues from ${srv.server.ctx.ca.active.name}`,
    );
  }
});
