/**
 * The backup file format (enroll-server/backup/format.ts): what it seals opens again byte for
 * byte; a wrong passphrase, a changed header, a changed or cut body, and a file name outside the
 * data dir are each refused with their code; passphrase files readable by others are refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { openBackup, readHeader, readPassphrase, sealBackup, type BackupFile } from '../../enroll-server/backup/format.js';

const PASS = 'a long enough passphrase';
const files: BackupFile[] = [
  { name: 'edgeid.db', mode: 0o600, data: randomBytes(5000) },
  {
    name: 'ca/root.key',
    mode: 0o600,
    data: Buffer.from(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string),
  },
  { name: 'ca/root.pem', mode: 0o644, data: Buffer.from('cert') },
];

async function sealed(): Promise<Buffer> {
  return sealBackup({
    passphrase: PASS,
    createdAt: new Date('2026-12-01T00:00:00Z'),
    auditHead: { seq: 7, hash: 'ab'.repeat(32) },
    schemaVersion: 9,
    files,
    keys: [
      { name: 'root', kind: 'file', file: 'ca/root.key' },
      { name: 'intermediate', kind: 'pkcs11', ref: { token: 't', label: 'k' } },
    ],
  });
}

test('a sealed backup opens to the same files, manifest and header; no key bytes in the clear', async () => {
  const b = await sealed();
  assert.ok(!b.includes('PRIVATE KEY'));
  const { header, manifest, files: out } = await openBackup(b, PASS);
  assert.equal(header.createdAt, '2026-12-01T00:00:00.000Z');
  assert.deepEqual(header.auditHead, { seq: 7, hash: 'ab'.repeat(32) });
  assert.deepEqual(
    out.map((f) => [f.name, f.mode, f.data.toString('hex')]),
    files.map((f) => [f.name, f.mode, f.data.toString('hex')]),
  );
  assert.deepEqual(manifest.keys[1], { name: 'intermediate', kind: 'pkcs11', ref: { token: 't', label: 'k' } });
  assert.equal(readHeader(b).header.schemaVersion, 9);
});

test('wrong passphrase, changed header, changed or cut body: each refused with its code', async () => {
  const b = await sealed();
  await assert.rejects(openBackup(b, 'another long passphrase'), { code: 'backup_passphrase_wrong' });
  const { headerBytes } = readHeader(b);
  // the header is the GCM additional data: a changed time is caught
  const changedHeader = Buffer.from(b.toString('latin1').replace('2026-12-01T00:00:00.000Z', '2027-12-01T00:00:00.000Z'), 'latin1');
  await assert.rejects(openBackup(changedHeader, PASS), { code: 'backup_corrupt' });
  const flipped = Buffer.from(b);
  flipped[headerBytes.length + 10]! ^= 0x01;
  await assert.rejects(openBackup(flipped, PASS), { code: 'backup_corrupt' });
  await assert.rejects(openBackup(b.subarray(0, b.length - 1), PASS), { code: 'backup_corrupt' });
  await assert.rejects(openBackup(Buffer.from('not a backup'), PASS), { code: 'backup_corrupt' });
  assert.throws(
    () =>
      readHeader(
        Buffer.from('EDGEID-BACKUP-1\n{"format":1,"kdf":{"name":"scrypt","salt":"","N":1e9,"r":8,"p":1},"iv":"","keyCheck":""}\n'),
      ),
    {
      code: 'backup_corrupt',
    },
  );
});

test('a backup naming a file outside the data dir is refused', async () => {
  // sealed with the right key, so only the name check can catch it
  for (const name of ['../evil', '/etc/passwd', 'ca/../../x', 'a//b']) {
    const b = await sealBackup({
      passphrase: PASS,
      createdAt: new Date(),
      auditHead: null,
      schemaVersion: 1,
      files: [{ name, mode: 0o600, data: Buffer.from('x') }],
      keys: [],
    });
    await assert.rejects(openBackup(b, PASS), { code: 'backup_corrupt' }, name);
  }
});

test('passphrase: from a private file or the environment, at least 12 characters', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-pass-'));
  const good = path.join(dir, 'good');
  await writeFile(good, `${PASS}\nsecond line ignored\n`, { mode: 0o600 });
  assert.equal(readPassphrase(good, {}), PASS);
  const open = path.join(dir, 'open');
  await writeFile(open, `${PASS}\n`, { mode: 0o640 });
  assert.throws(() => readPassphrase(open, {}), { code: 'backup_passphrase_missing' });
  assert.throws(() => readPassphrase(path.join(dir, 'missing'), {}), { code: 'backup_passphrase_missing' });
  assert.equal(readPassphrase(undefined, { EDGEID_BACKUP_PASSPHRASE: PASS }), PASS);
  assert.throws(() => readPassphrase(undefined, { EDGEID_BACKUP_PASSPHRASE: 'short' }), { code: 'backup_passphrase_missing' });
  assert.throws(() => readPassphrase(undefined, {}), { code: 'backup_passphrase_missing' });
});
