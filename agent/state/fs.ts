/**
 * Crash-safe file primitives for the state directory: every write is temp file → fsync → rename →
 * fsync(dir), so a kill -9 or power cut leaves either the old or the new content, never a torn file.
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { chmod, lstat, mkdir, open, readdir, realpath, rename, rm, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { EdgeidError } from '../../protocol/errors/index.js';

export const FILE_MODE = 0o600;
export const DIR_MODE = 0o700;
const TMP_SUFFIX = '.tmp';

/** fsync a directory so that a rename or unlink in it is durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * A failed write of the state directory as the error that says what to do: the filesystem is full
 * (ENOSPC, EDQUOT: state_dir_full) or read-only (EROFS: state_dir_read_only); anything else as is.
 */
export function stateWriteError(e: unknown, file: string): unknown {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new EdgeidError(
      'state_dir_full',
      `cannot write ${file}: no space left on its filesystem; free space there (the agent retries by itself)`,
      {
        path: file,
        cause: code,
      },
    );
  }
  if (code === 'EROFS') {
    return new EdgeidError(
      'state_dir_read_only',
      `cannot write ${file}: its filesystem is read-only; make it writable again (mount -o remount,rw; fsck first after I/O errors) and the agent retries by itself`,
      { path: file, cause: code },
    );
  }
  return e;
}

/** Atomically replaces `file` with `data` (mode 0600 unless given); the old content stays if it fails. */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = FILE_MODE): Promise<void> {
  try {
    await replaceFile(file, data, mode);
  } catch (e) {
    throw stateWriteError(e, file);
  }
}

async function replaceFile(file: string, data: string | Uint8Array, mode: number): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}${TMP_SUFFIX}`);
  const fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode); // the umask may have narrowed it; never widens beyond `mode`
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw e;
  }
  await fh.close();
  try {
    await rename(tmp, file);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
  await fsyncDir(dir);
}

/** Deletes files (missing ones are fine) and makes the deletion durable. */
export async function removeFilesDurably(dir: string, names: string[]): Promise<void> {
  if (names.length === 0) return;
  try {
    for (const n of names) await rm(path.join(dir, n), { force: true });
    await fsyncDir(dir);
  } catch (e) {
    throw stateWriteError(e, dir);
  }
}

/** Removes leftovers of writes interrupted by a crash (files named `.<name>.<pid>.<rand>.tmp`). */
export async function removeStaleTempFiles(dir: string): Promise<number> {
  const names = (await readdir(dir)).filter((n) => n.startsWith('.') && n.endsWith(TMP_SUFFIX));
  await removeFilesDurably(dir, names);
  return names.length;
}

/**
 * Creates the state directory (0700) if needed and checks that it is a directory only its owner
 * can read: it holds the TPM key blobs and, while an enrollment is pending, the one-time token.
 */
export async function ensurePrivateDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode: DIR_MODE });
    const st = await stat(dir);
    if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
    if ((st.mode & 0o077) !== 0) {
      if (typeof process.getuid === 'function' && st.uid !== process.getuid()) {
        throw new Error(`${dir} is accessible to group/others and owned by uid ${st.uid}`);
      }
      await chmod(dir, DIR_MODE);
    }
  } catch (e) {
    throw new EdgeidError('state_dir_unusable', `state directory ${dir}: ${(e as Error).message}`);
  }
}

/**
 * Checks who can change the state directory before the agent trusts anything in it (state.json
 * names the server and the pinned CA; the key blobs are the identity). Refuses, with a code that
 * says what to do:
 *   1. a state directory not owned by the agent's user (uid) — state_owner_mismatch;
 *   2. an entry of the directory (state.json, key blobs, outbox/ …) owned by another uid —
 *      state_owner_mismatch;
 *   3. a parent directory (of the real path) that another user could use to rename or replace the
 *      state directory: writable by group or others WITHOUT the sticky bit, or owned by a uid that
 *      is neither root nor the agent's — state_parent_unsafe.
 * A sticky, world-writable parent such as /tmp (1777) is accepted: the sticky bit lets only an
 * entry's owner (or root) rename or delete it (unlink(2), rename(2) EPERM; inode(7) S_ISVTX), and
 * a directory someone else created there in advance fails check 1. /var/lib (root, 0755) is the
 * normal case. Only the immediate parent is checked; the path above it is the system's.
 * On platforms without uids (process.getuid missing) nothing is checked.
 */
export async function checkStateOwnership(dir: string): Promise<void> {
  const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
  if (uid === undefined) return;
  let real: string;
  try {
    real = await realpath(dir);
  } catch (e) {
    throw new EdgeidError('state_dir_unusable', `state directory ${dir}: ${(e as Error).message}`);
  }
  const st = await stat(real);
  if (st.uid !== uid) {
    throw new EdgeidError(
      'state_owner_mismatch',
      `state directory ${dir} is owned by uid ${st.uid}, not by the agent's user (uid ${uid}): run the agent as the directory's owner, or \`chown -R <agent user> ${dir}\` after checking its contents`,
      { path: dir, owner: st.uid, uid },
    );
  }
  for (const name of await readdir(real)) {
    const e = await lstat(path.join(real, name)).catch(() => null); // gone meanwhile: fine
    if (e && e.uid !== uid) {
      throw new EdgeidError(
        'state_owner_mismatch',
        `${path.join(dir, name)} is owned by uid ${e.uid}, not by the agent's user (uid ${uid}): someone else wrote into the state directory; check it, then remove the file or wipe and enroll again`,
        { path: path.join(dir, name), owner: e.uid, uid },
      );
    }
  }
  const parent = path.dirname(real);
  if (parent === real) return; // the root directory itself
  const p = await stat(parent);
  const sticky = (p.mode & 0o1000) !== 0; // S_ISVTX
  if (((p.mode & 0o022) !== 0 && !sticky) || (p.uid !== 0 && p.uid !== uid)) {
    throw new EdgeidError(
      'state_parent_unsafe',
      `the parent of the state directory, ${parent} (owner uid ${p.uid}, mode ${(p.mode & 0o7777).toString(8)}), lets another user rename or replace ${dir}: ` +
        `make it owned by root or the agent's user and not writable by group/others (chmod go-w ${parent}), or move the state directory (e.g. /var/lib/edgeid)`,
      { path: parent, owner: p.uid, mode: p.mode & 0o7777 },
    );
  }
}

/**
 * An exclusive lock on the state directory (a `lock` file holding our pid). A lock left by a
 * process that no longer exists (kill -9) is taken over.
 */
const heldLocks = new Set<string>();

export async function lockDir(dir: string): Promise<{ release(): Promise<void> }> {
  const file = path.join(dir, 'lock');
  if (heldLocks.has(path.resolve(file))) throw new EdgeidError('state_locked', `this process already uses ${dir}`, { pid: process.pid });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(file, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, FILE_MODE);
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      heldLocks.add(path.resolve(file));
      let released = false;
      return {
        async release() {
          if (released) return;
          released = true;
          heldLocks.delete(path.resolve(file));
          await rm(file, { force: true });
        },
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new EdgeidError('state_dir_unusable', `cannot create ${file}: ${(e as Error).message}`);
      }
    }
    const holder = await readPid(file);
    // Our own pid in a lock we do not hold: a previous life of this pid (e.g. pid 1 in a container).
    if (holder !== null && holder !== process.pid && processAlive(holder)) {
      throw new EdgeidError('state_locked', `another edgeid-agent (pid ${holder}) is using ${dir}`, { pid: holder });
    }
    await rm(file, { force: true }); // stale: its process is gone
  }
  throw new EdgeidError('state_locked', `cannot lock ${dir}`);
}

async function readPid(file: string): Promise<number | null> {
  try {
    const fh = await open(file, fsc.O_RDONLY);
    try {
      const pid = Number.parseInt((await fh.readFile('utf8')).trim(), 10);
      return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
    } finally {
      await fh.close();
    }
  } catch {
    return null;
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
