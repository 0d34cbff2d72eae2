/**
 * Paged admin listings: the API answers at most `limit` (default and maximum 1000) tokens or
 * devices with a `next` cursor, pages neither repeat nor skip an item, a bad cursor is refused
 * (bad_request) — and `edgeid-admin tokens list` / `devices list` follow the pages transparently:
 * --json is still one document holding every item. Real `edgeid-server` process, real SQLite.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AdminClient, resolveTarget } from '../../enroll-server/admin/client.js';
import { DeviceList, TokenList } from '../../protocol/api.js';
import { startServerProcess } from '../../scripts/harness/server.js';
import { runCli, seedDataDir } from '../helpers/cli.js';

test('admin listings are paged by the server and followed by edgeid-admin', { timeout: 600_000 }, async (t) => {
  const work = await mkdtemp(path.join(os.tmpdir(), 'edgeid-paging-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const dataDir = path.join(work, 'data');
  const ids = await seedDataDir(dataDir, { tokens: 150, devices: 1_150 });
  const srv = await startServerProcess({ dataDir });
  t.after(() => srv.stop());
  const client = new AdminClient(resolveTarget({ data: dataDir }, {}));

  // the server: default page 1000 with a cursor; small pages walk everything exactly once
  const first = await client.request('GET', '/v1/admin/devices', undefined, DeviceList);
  assert.equal(first.devices.length, 1000);
  assert.ok(first.next);
  const second = await client.request('GET', `/v1/admin/devices?after=${encodeURIComponent(first.next!)}`, undefined, DeviceList);
  assert.equal(second.devices.length, 150);
  assert.equal(second.next, undefined);
  assert.deepEqual([...first.devices, ...second.devices].map((d) => d.id).sort(), [...ids].sort());
  const seen: string[] = [];
  let after: string | undefined;
  do {
    const p = await client.request('GET', `/v1/admin/tokens?limit=400${after ? `&after=${after}` : ''}`, undefined, TokenList);
    assert.ok(p.tokens.length <= 400);
    seen.push(...p.tokens.map((x) => x.id));
    after = p.next;
  } while (after);
  assert.equal(seen.length, 150 + 1_150);
  assert.equal(new Set(seen).size, seen.length);
  await assert.rejects(
    client.request('GET', '/v1/admin/devices?limit=5000', undefined, DeviceList),
    (e: { code: string }) => e.code === 'bad_request',
  );
  await assert.rejects(
    client.request('GET', '/v1/admin/devices?after=nonsense', undefined, DeviceList),
    (e: { code: string }) => e.code === 'bad_request',
  );

  // the CLI: one JSON document with every item, whatever the page size
  const devices = await runCli('edgeid-admin', ['devices', 'list', '--json', '--data', dataDir], { cwd: work });
  assert.equal(devices.code, 0, devices.stderr.toString());
  const list = JSON.parse(devices.stdout.toString('utf8')) as { id: string }[];
  assert.equal(list.length, 1_150);
  assert.deepEqual(list.map((d) => d.id).sort(), [...ids].sort());
  const tokens = await runCli('edgeid-admin', ['tokens', 'list', '--json', '--data', dataDir], { cwd: work });
  assert.equal(tokens.code, 0, tokens.stderr.toString());
  assert.equal((JSON.parse(tokens.stdout.toString('utf8')) as unknown[]).length, 1_300);
  const text = await runCli('edgeid-admin', ['devices', 'list', '--data', dataDir], { cwd: work });
  assert.equal(text.code, 0);
  for (const id of [ids[0]!, ids[999]!, ids[1000]!, ids.at(-1)!]) assert.ok(text.stdout.toString('utf8').includes(id), id);
});
