import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { writeFileAtomic, lockDir } from '../../agent/state/fs.js';
import { StateStore, type AgentState } from '../../agent/state/store.js';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { REPO, tmpDir } from '../../scripts/harness/fs.js';
import { waitForEvent } from '../../scripts/harness/wait.js';

function baseState(): AgentState {
  return {
    version: 1,
    server: { url: 'https://127.0.0.1:8443', caFingerprint: 'sha256:' + 'ab'.repeat(32) },
    renewals: 0,
    nextSessionKey: 1,
  };
}

test('creates the state dir 0700 and writes every file 0600 atomically', async (t) => {
  const root = await tmpDir('edgeid-agent-state-', t);
  const dir = path.join(root, 'state');
  const store = await StateStore.open(dir, { lock: true });
  t.after(() => store.close());
  assert.equal((await stat(dir)).mode & 0o777, 0o700);
  await store.save(baseState());
  await store.writeKey('ak', { public: Buffer.from([0, 2, 1, 2]), private: Buffer.from([0, 1, 9]) });
  for (const f of ['state.json', 'ak.pub', 'ak.priv']) assert.equal((await stat(path.join(dir, f))).mode & 0o777, 0o600, f);
  assert.deepEqual((await store.load())?.server, baseState().server);
  assert.deepEqual((await store.readKey('ak')).private, Buffer.from([0, 1, 9]));
  // no temp files left behind
  assert.deepEqual(
    (await readdir(dir)).filter((n) => n.endsWith('.tmp')),
    [],
  );
});

test('tightens a state dir that others can read', async (t) => {
  const root = await tmpDir('edgeid-agent-state-', t);
  const dir = path.join(root, 'loose');
  await import('node:fs/promises').then((fs) => fs.mkdir(dir, { mode: 0o755 }));
  await StateStore.open(dir);
  assert.equal((await stat(dir)).mode & 0o777, 0o700);
});

test('a killed writer leaves the old content, and its temp file is removed at the next start', async (t) => {
  const dir = await tmpDir('edgeid-agent-state-', t);
  const file = path.join(dir, 'state.json');
  await writeFileAtomic(file, '{"version":1,"server":{"url":"https://a","caFingerprint":"x"}}');
  // Simulate a crash between the temp write and the rename: a temp file exists, the target is intact.
  await writeFile(path.join(dir, '.state.json.12345.deadbeef.tmp'), '{"torn');
  const store = await StateStore.open(dir, { lock: true });
  t.after(() => store.close());
  assert.equal((await store.load())?.server.url, 'https://a');
  assert.deepEqual(
    (await readdir(dir)).filter((n) => n.endsWith('.tmp')),
    [],
  );
});

test('a kill -9 during writeFileAtomic never leaves a torn state.json', async (t) => {
  const dir = await tmpDir('edgeid-agent-state-', t);
  const file = path.join(dir, 'state.json');
  // version n of the file; the writer below writes exactly these
  const version = (n: number) => JSON.stringify({ n, pad: 'x'.repeat(200_000) });
  await writeFileAtomic(file, version(0));
  let last = 0;
  for (let round = 0; round < 5; round++) {
    // The writer reports each completed write on stdout (a pipe: written synchronously on Linux).
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        '-e',
        `
      import(${JSON.stringify(path.join(REPO, 'agent/state/fs.ts'))}).then(async ({ writeFileAtomic }) => {
        for (let n = ${last + 1}; ; n++) {
          await writeFileAtomic(${JSON.stringify(file)}, JSON.stringify({ n, pad: 'x'.repeat(200000) }));
          process.stdout.write(n + '\\n');
        }
      });`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const lines = () => out.split('\n').length - 1;
    const closed = new Promise<void>((r) => child.stdout.once('close', () => r()));
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    // Kill once it reported some completed writes …
    const wanted = 2 + round;
    await Promise.race([
      waitForEvent(child.stdout, 'data', { filter: () => lines() >= wanted, timeoutMs: 60_000, what: `${wanted} completed writes` }),
      exited.then(() => assert.fail(`the writer exited before ${wanted} writes: ${stderr}`)),
    ]);
    // then at a random point of the writes that follow (a kill point, not a synchronisation)
    await new Promise((r) => setTimeout(r, Math.random() * 20));
    child.kill('SIGKILL');
    await Promise.all([exited, closed]);
    const reported = out.split('\n').filter(Boolean).map(Number);
    assert.ok(reported.length >= wanted, `writes completed before the kill: ${reported.length}`);
    const completed = reported[reported.length - 1]!;
    assert.equal(completed, last + reported.length, 'the writer wrote every version in order');
    const parsed = JSON.parse(await readFile(file, 'utf8')) as { n: number; pad: string };
    // The last completed write, or the one in flight if its rename landed before the kill.
    assert.ok(
      parsed.n === completed || parsed.n === completed + 1,
      `state.json holds version ${parsed.n}, the writer completed ${completed}`,
    );
    assert.equal(await readFile(file, 'utf8'), version(parsed.n), 'exactly what that version wrote');
    last = parsed.n;
  }
});

test('removes key blobs the state does not reference and keeps current and previous session keys', async (t) => {
  const dir = await tmpDir('edgeid-agent-state-', t);
  const store = await StateStore.open(dir);
  const blob = { public: Buffer.from([0, 1, 1]), private: Buffer.from([0, 1, 2]) };
  for (const n of ['ak', 'session-1', 'session-2', 'session-3']) await store.writeKey(n, blob);
  const state: AgentState = {
    ...baseState(),
    ak: { name: '000b' + '00'.repeat(32), createdAt: new Date().toISOString() },
    certificate: { pem: '', chain: [], serial: '01', notBefore: '', notAfter: '', sessionKey: 2 },
    previousSessionKey: 1,
    nextSessionKey: 3,
  };
  const removed = await store.cleanupOrphans(state);
  assert.deepEqual(removed.sort(), ['session-3.priv', 'session-3.pub']);
  const left = (await readdir(dir)).sort();
  assert.deepEqual(left, ['ak.priv', 'ak.pub', 'session-1.priv', 'session-1.pub', 'session-2.priv', 'session-2.pub']);
  // With no state at all, AK blobs are leftovers of an enrollment that never recorded them.
  assert.deepEqual((await store.cleanupOrphans(null)).length, 6);
});

test("refuses a second agent on the same state dir and takes over a dead holder's lock", async (t) => {
  const dir = await tmpDir('edgeid-agent-state-', t);
  const first = await lockDir(dir);
  await assert.rejects(lockDir(dir), (e) => isEdgeidError(e, 'state_locked'));
  await first.release();
  await writeFile(path.join(dir, 'lock'), '999999999\n'); // no such process
  const again = await lockDir(dir);
  await again.release();
});

test('refuses a state file that is not an agent state with state_corrupt', async (t) => {
  const dir = await tmpDir('edgeid-agent-state-', t);
  await writeFile(path.join(dir, 'state.json'), '{"hello":1}');
  const store = await StateStore.open(dir);
  await assert.rejects(store.load(), (e) => isEdgeidError(e, 'state_corrupt'));
  await writeFile(path.join(dir, 'state.json'), '{"torn');
  await assert.rejects(store.load(), (e) => isEdgeidError(e, 'state_corrupt'));
});

test('wipe deletes everything of the identity but the lock', async (t) => {
  const dir = await tmpDir('edgeid-agent-state-', t);
  const store = await StateStore.open(dir, { lock: true });
  t.after(() => store.close());
  await store.save(baseState());
  await store.writeKey('ak', { public: Buffer.from([0]), private: Buffer.from([0]) });
  await import('node:fs/promises').then((fs) => fs.mkdir(path.join(dir, 'outbox')));
  await store.wipe();
  assert.deepEqual(await readdir(dir), ['lock']);
});

// Ownership checks need a second uid: these tests chown to one, so they run as root (like scripts/test).
const OTHER_UID = 4242;

test('refuses a 0700 state dir owned by another user, and a state file another user wrote', async (t) => {
  const { chown, mkdir } = await import('node:fs/promises');
  const root = await tmpDir('edgeid-agent-test-', t);
  const foreign = path.join(root, 'foreign');
  await mkdir(foreign, { mode: 0o700 });
  await writeFile(path.join(foreign, 'state.json'), JSON.stringify(baseState()), { mode: 0o600 });
  await chown(path.join(foreign, 'state.json'), OTHER_UID, OTHER_UID);
  await chown(foreign, OTHER_UID, OTHER_UID);
  await assert.rejects(
    StateStore.open(foreign, { lock: true }),
    (e: unknown) => isEdgeidError(e, 'state_owner_mismatch') && /owned by uid 4242/.test(e.message),
  );
  assert.deepEqual(await readdir(foreign), ['state.json'], 'no lock taken, nothing written');

  const mine = path.join(root, 'mine');
  const store = await StateStore.open(mine, { lock: true });
  await store.save(baseState());
  await store.close();
  await chown(path.join(mine, 'state.json'), OTHER_UID, OTHER_UID);
  await assert.rejects(
    StateStore.open(mine, { lock: true }),
    (e: unknown) => isEdgeidError(e, 'state_owner_mismatch') && e.message.includes('state.json'),
  );
});

test('refuses a state dir whose parent others can write without the sticky bit, or another user owns', async (t) => {
  const { chmod, chown, mkdir } = await import('node:fs/promises');
  const root = await tmpDir('edgeid-agent-test-', t);
  const shared = path.join(root, 'shared');
  await mkdir(shared);
  await chmod(shared, 0o777);
  await assert.rejects(StateStore.open(path.join(shared, 'state'), { lock: true }), (e: unknown) =>
    isEdgeidError(e, 'state_parent_unsafe'),
  );
  const groupWritable = path.join(root, 'group');
  await mkdir(groupWritable);
  await chmod(groupWritable, 0o770);
  await assert.rejects(StateStore.open(path.join(groupWritable, 'state'), { lock: true }), (e: unknown) =>
    isEdgeidError(e, 'state_parent_unsafe'),
  );
  const othersHome = path.join(root, 'home');
  await mkdir(othersHome, { mode: 0o755 });
  await chown(othersHome, OTHER_UID, OTHER_UID);
  await assert.rejects(StateStore.open(path.join(othersHome, 'state'), { lock: true }), (e: unknown) =>
    isEdgeidError(e, 'state_parent_unsafe'),
  );

  // sticky and world-writable (like /tmp, 1777): only an entry's owner may rename or delete it
  const sticky = path.join(root, 'sticky');
  await mkdir(sticky);
  await chmod(sticky, 0o1777);
  const store = await StateStore.open(path.join(sticky, 'state'), { lock: true });
  await store.close();
  // root-owned 0755 (like /var/lib)
  const varlib = path.join(root, 'varlib');
  await mkdir(varlib, { mode: 0o755 });
  const ok = await StateStore.open(path.join(varlib, 'edgeid'), { lock: true });
  await ok.close();
});
