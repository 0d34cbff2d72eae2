/** Where the repository is, throwaway directories, and whether a directory tree is private. */
import { lstat, mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** A fresh directory under the system temp dir; removed after the test when `t` is given. */
export async function tmpDir(prefix: string, t?: { after(fn: () => Promise<void>): void }): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), prefix));
  t?.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

/**
 * Everything under `dir` that others could read or that is not private: directories other than
 * 0700, files other than 0600 (files named in `publicFiles`, relative paths, may be 0644). Symbolic
 * links and sockets are listed too (a private tree holds neither).
 */
export async function notPrivate(dir: string, publicFiles: string[] = []): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const st = await lstat(path.join(dir, rel));
    const mode = st.mode & 0o777;
    const name = rel || '.';
    if (st.isDirectory()) {
      if (mode !== 0o700) out.push(`${name}/ ${mode.toString(8)}`);
      for (const e of await readdir(path.join(dir, rel))) await walk(path.join(rel, e));
    } else if (st.isFile()) {
      if (mode !== 0o600 && !(publicFiles.includes(rel) && mode === 0o644)) out.push(`${name} ${mode.toString(8)}`);
    } else {
      out.push(`${name} (not a regular file)`);
    }
  };
  await walk('');
  return out;
}
