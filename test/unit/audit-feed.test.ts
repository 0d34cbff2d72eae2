import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { AuditRow } from '../../protocol/api.js';
import { AuditFeed } from '../../enroll-server/services/audit-feed.js';
import { SqliteStore } from '../../enroll-server/store/sqlite.js';

async function withStore(fn: (s: SqliteStore) => Promise<void>) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-feed-'));
  const s = new SqliteStore(path.join(dir, 'edgeid.db'));
  try {
    await fn(s);
  } finally {
    await s.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const row = (event: string) => ({ time: Date.now(), actor: 'server', event, outcome: 'ok' as const });

test('audit feed: delivers rows committed after it started, in seq order, once each, to every subscriber', async () => {
  await withStore(async (s) => {
    await s.appendAudit(row('before.start'));
    const feed = new AuditFeed(s, { pollMs: 10_000, batch: 3 });
    const a: AuditRow[] = [];
    const b: string[] = [];
    await feed.subscribe((r) => void a.push(r));
    const off = await feed.subscribe((r) => void b.push(r.event));
    for (let i = 0; i < 7; i++) await s.appendAudit(row(`e${i}`));
    feed.poke();
    feed.poke();
    await feed.drain();
    assert.deepEqual(
      a.map((r) => r.event),
      ['e0', 'e1', 'e2', 'e3', 'e4', 'e5', 'e6'],
    );
    assert.deepEqual(b, ['e0', 'e1', 'e2', 'e3', 'e4', 'e5', 'e6']);
    assert.ok(a.every((r, i) => i === 0 || r.seq === a[i - 1]!.seq + 1));
    off();
    await s.appendAudit(row('after.off'));
    await feed.drain();
    assert.equal(a.at(-1)!.event, 'after.off');
    assert.equal(b.length, 7, 'an unsubscribed listener gets nothing more');
    feed.close();
  });
});

test('audit feed: polls on its own, and a failing listener does not stop the others', async () => {
  await withStore(async (s) => {
    const feed = new AuditFeed(s, { pollMs: 20 });
    const got: string[] = [];
    await feed.subscribe(() => {
      throw new Error('listener bug');
    });
    const seen = new Promise<void>((resolve) => {
      void feed.subscribe((r) => {
        got.push(r.event);
        if (r.event === 'second') resolve();
      });
    });
    await s.appendAudit(row('first'));
    await s.appendAudit(row('second'));
    // the feed's timer does not keep a process alive (a server's listener does): hold it here
    const hold = setInterval(() => {}, 1000);
    await seen;
    clearInterval(hold);
    assert.deepEqual(got, ['first', 'second']);
    feed.close();
    await assert.rejects(
      feed.subscribe(() => {}),
      /closed/,
    );
  });
});

test('audit feed: a start position replays from there', async () => {
  await withStore(async (s) => {
    const first = await s.appendAudit(row('one'));
    await s.appendAudit(row('two'));
    const feed = new AuditFeed(s, { pollMs: 10_000 });
    const got: string[] = [];
    await feed.subscribe((r) => void got.push(r.event), first.seq - 1);
    await feed.drain();
    assert.deepEqual(got, ['one', 'two']);
    assert.equal(feed.position, first.seq + 1);
    feed.close();
  });
});
