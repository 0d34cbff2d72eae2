/**
 * Paged admin listings: the API answers at most `limit` (default and maximum 1000) tokens or
 * devices with a `next` cursor, pages neither repeat nor skip an item, devices sorted by the server
 * (sort, order) page in that order in both directions, a bad sort or order is refused (bad_request)
 * and a malformed cursor or one of another sort (invalid_cursor) — and `edgeid-admin tokens list` / `devices list` follow the pages transparently:
 * --json is still one document holding every item. Real `edgeid-server` process, real SQLite.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AdminClient, resolveTarget } from '../../enroll-server/admin/client.js';
import { DeviceList, TokenList, type DeviceView } from '../../protocol/api.js';
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
  // sorted by the server: every page in the sort's order across the whole fleet, in both directions
  const all = [...first.devices, ...second.devices];
  const bytes = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));
  for (const [sort, key] of [
    ['name', (d: DeviceView) => d.name ?? ''],
    ['expiry', (d: DeviceView) => d.certificateNotAfter ?? ''],
  ] as const) {
    for (const order of ['asc', 'desc'] as const) {
      const want = [...all].sort((a, b) => (order === 'asc' ? 1 : -1) * (bytes(key(a), key(b)) || bytes(a.id, b.id))).map((d) => d.id);
      const got: string[] = [];
      let cursor: string | undefined;
      let pages = 0;
      do {
        const p = await client.request(
          'GET',
          `/v1/admin/devices?sort=${sort}&order=${order}&limit=400${cursor ? `&after=${encodeURIComponent(cursor)}` : ''}`,
          undefined,
          DeviceList,
        );
        got.push(...p.devices.map((d) => d.id));
        cursor = p.next;
        pages++;
      } while (cursor);
      assert.equal(pages, 3, `${sort} ${order}`);
      assert.deepEqual(got, want, `${sort} ${order}`);
    }
  }
  const byName = await client.request('GET', '/v1/admin/devices?sort=name&order=desc&limit=2', undefined, DeviceList);
  assert.match(byName.next!, /^name~desc~[A-Za-z0-9_-]+~dev-[0-9a-f]{16}$/);
  // bad sort or order: the schema (bad_request); a malformed cursor, or one of another sort or order: invalid_cursor
  for (const [query, code] of [
    ['sort=size', 'bad_request'],
    ['order=up', 'bad_request'],
    ['after=nonsense', 'invalid_cursor'],
    ['after=12:dev-0000000000000001:x', 'invalid_cursor'],
    [`sort=name&order=asc&after=${encodeURIComponent(byName.next!)}`, 'invalid_cursor'],
    [`sort=lastSeen&order=desc&after=${encodeURIComponent(byName.next!)}`, 'invalid_cursor'],
    [`after=${encodeURIComponent(byName.next!)}`, 'invalid_cursor'],
    ['sort=expiry&order=desc&after=expiry~desc~eA~dev-0000000000000001', 'invalid_cursor'],
    [`sort=name&order=desc&after=name~desc~${'='}~dev-1`, 'invalid_cursor'],
  ] as const) {
    await assert.rejects(
      client.request('GET', `/v1/admin/devices?${query}`, undefined, DeviceList),
      (e: { code: string; status?: number }) => e.code === code,
      query,
    );
  }

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
