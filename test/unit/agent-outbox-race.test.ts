/**
 * Found by an outside review: an acknowledgement that arrives while a full outbox is writing the message that
 * evicts the acknowledged one. The eviction list is computed before the write and applied after
 * it, so the delivered message is ALSO counted as dropped: `status` reports a loss that never
 * happened (delivered 1, dropped 1, for one message).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Outbox } from '../../agent/outbox.js';
import { tmpDir } from '../../scripts/harness/fs.js';

test('a message acknowledged while the add that would evict it is writing is not counted as dropped', async (t) => {
  const dir = path.join(await tmpDir('edgeid-outbox-race-', t), 'outbox');
  const box = await Outbox.open(dir, { maxMessages: 1 });
  const first = await box.add('t', 'first');
  const adding = box.add('t', 'second'); // full: plans to evict `first`, then writes (fsync)
  // addNow runs in a microtask; once it is inside its first fs call, the PUBACK of `first` arrives
  await new Promise((r) => setImmediate(r));
  await box.ack(first.id);
  await adding;
  const s = box.stats();
  assert.equal(s.delivered, 1, 'first was delivered');
  assert.deepEqual(
    box.pending().map((m) => m.payload.toString()),
    ['second'],
  );
  assert.equal(s.dropped, 0, `a delivered message is not also counted as dropped (stats ${JSON.stringify(s)})`);
});
