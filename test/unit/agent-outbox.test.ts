import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { Outbox } from '../../agent/outbox.js';
import { tmpDir } from '../../scripts/harness/fs.js';

test('keeps unacknowledged messages across a restart, in order, with their ids', async (t) => {
  const dir = path.join(await tmpDir('edgeid-outbox-', t), 'outbox');
  const box = await Outbox.open(dir);
  const a = await box.add('devices/d1/telemetry', 'one');
  const b = await box.add('devices/d1/telemetry', Buffer.from('two'));
  const c = await box.add('devices/d1/telemetry', 'three');
  await box.ack(b.id);
  assert.equal((await stat(dir)).mode & 0o777, 0o700);

  const reopened = await Outbox.open(dir);
  const pending = reopened.pending();
  assert.deepEqual(
    pending.map((m) => m.id),
    [a.id, c.id],
  );
  assert.deepEqual(
    pending.map((m) => m.payload.toString()),
    ['one', 'three'],
  );
  assert.equal(pending[0]!.topic, 'devices/d1/telemetry');
  const d = await reopened.add('devices/d1/telemetry', 'four');
  assert.ok(d.seq > c.seq, 'sequence continues after a restart');
  for (const f of await readdir(dir)) assert.equal((await stat(path.join(dir, f))).mode & 0o777, 0o600);
});

test('when full drops the oldest messages and counts them durably', async (t) => {
  const dir = await tmpDir('edgeid-outbox-', t);
  const box = await Outbox.open(dir, { maxMessages: 3 });
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) ids.push((await box.add('t', `m${i}`)).id);
  assert.deepEqual(
    box.pending().map((m) => m.payload.toString()),
    ['m2', 'm3', 'm4'],
  );
  assert.equal(box.stats().dropped, 2);
  const reopened = await Outbox.open(dir, { maxMessages: 3 });
  assert.equal(reopened.stats().dropped, 2);
  assert.equal(reopened.stats().pending, 3);
});

test('bounds the outbox by bytes too', async (t) => {
  const dir = await tmpDir('edgeid-outbox-', t);
  const box = await Outbox.open(dir, { maxBytes: 2048 });
  for (let i = 0; i < 4; i++) await box.add('t', Buffer.alloc(1000, i));
  assert.equal(box.stats().pending, 2);
  assert.equal(box.stats().dropped, 2);
  assert.ok(box.stats().pendingBytes <= 2048);
});

test('concurrent adds keep their order and never over-count drops', async (t) => {
  const dir = await tmpDir('edgeid-outbox-', t);
  const box = await Outbox.open(dir, { maxMessages: 10 });
  await Promise.all(Array.from({ length: 30 }, (_, i) => box.add('t', String(i))));
  assert.deepEqual(
    box.pending().map((m) => m.payload.toString()),
    Array.from({ length: 10 }, (_, i) => String(i + 20)),
  );
  assert.equal(box.stats().dropped, 20);
  assert.equal((await readdir(dir)).filter((n) => n.endsWith('.json') && n !== 'stats.json').length, 10);
});

test('acknowledging an unknown or already acknowledged id is harmless', async (t) => {
  const dir = await tmpDir('edgeid-outbox-', t);
  const box = await Outbox.open(dir);
  const m = await box.add('t', 'x');
  await box.ack(m.id);
  await box.ack(m.id);
  await box.ack('00000000-0000-0000-0000-000000000000');
  assert.equal(box.stats().pending, 0);
  assert.equal(box.stats().delivered, 1);
});

test('refuses a message larger than maxBytes with its own code and touches nothing else', async (t) => {
  const dir = await tmpDir('edgeid-agent-test-', t);
  const box = await Outbox.open(dir, { maxBytes: 64 * 1024 });
  for (let i = 0; i < 500; i++) await box.add('t', `m${i}`);
  const before = box.stats();
  await assert.rejects(box.add('t', Buffer.alloc(64 * 1024 + 1)), (e: any) => e.code === 'outbox_message_too_large');
  assert.equal(box.stats().pending, 500);
  assert.equal(box.stats().dropped, 0);
  assert.equal(box.stats().pendingBytes, before.pendingBytes);
  assert.equal(box.pending()[0]!.payload.toString(), 'm0');
  // nothing on disk changed either: 500 message files, no stats.json (nothing was ever dropped)
  const files = await readdir(dir);
  assert.equal(files.filter((n) => /^\d{16}-.*\.json$/.test(n)).length, 500);
  assert.ok(!files.includes('stats.json'));
  // the outbox still works, and the sequence has no gap
  const next = await box.add('t', 'after');
  assert.equal(next.seq, 501);
  const reopened = await Outbox.open(dir, { maxBytes: 64 * 1024 });
  assert.equal(reopened.stats().pending, 501);
});
