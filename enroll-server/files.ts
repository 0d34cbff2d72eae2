import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statSync, writeSync, chmodSync } from 'node:fs';
import { dirname, join, basename } from 'node:path';
import { randomBytes } from 'node:crypto';
import { EdgeidError } from '../protocol/errors/index.js';

/**
 * The storage failures of the data directory that are not a fault of the request nor a bug: the
 * filesystem is full (ENOSPC, EDQUOT; SQLite's SQLITE_FULL, https://sqlite.org/rescode.html#full)
 * or read-only (EROFS; SQLITE_READONLY and its extended codes, https://sqlite.org/rescode.html#readonly).
 * Answered 503 with a code saying what to do; SQLite rolls the transaction back on both
 * (https://sqlite.org/lang_transaction.html "Response To Errors Within A Transaction"), so nothing
 * of the request is kept. Anything else: null.
 */
export function storageFailure(e: unknown): EdgeidError | null {
  if (e instanceof EdgeidError) return e.code === 'storage_full' || e.code === 'storage_read_only' ? e : null;
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return null;
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL') {
    return new EdgeidError('storage_full', undefined, { cause: code });
  }
  if (code === 'EROFS' || code === 'SQLITE_READONLY' || code.startsWith('SQLITE_READONLY_')) {
    return new EdgeidError('storage_read_only', undefined, { cause: code });
  }
  return null;
}

/** Writes a file atomically (temp file, fsync, rename, fsync dir) with the given mode. */
export function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): void {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(tmp, 'w', mode);
  try {
    try {
      const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
      // write(2) may write less than asked (e.g. the filesystem filled up meanwhile): loop until all is written
      for (let off = 0; off < buf.byteLength;) off += writeSync(fd, buf, off, buf.byteLength - off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    chmodSync(tmp, mode);
    renameSync(tmp, path);
  } catch (e) {
    // a full or read-only filesystem: the old file stays as it was and no temp file is left behind
    rmSync(tmp, { force: true });
    throw storageFailure(e) ?? e;
  }
  try {
    const dfd = openSync(dir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch {
    // some filesystems refuse fsync on a directory; the rename is still atomic
  }
}

/** Creates the directory (0700) if missing and tightens it to 0700 if it exists with looser bits. */
export function ensurePrivateDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = statSync(dir);
    if (!st.isDirectory()) throw new Error('not a directory');
    if ((st.mode & 0o077) !== 0) chmodSync(dir, 0o700);
  } catch (e) {
    throw new EdgeidError('data_dir_unusable', `data dir ${dir}: ${(e as Error).message}`);
  }
}
