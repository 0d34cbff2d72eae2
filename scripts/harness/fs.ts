/** Where the repository is, and throwaway directories. */
import { mkdtemp, rm } from 'node:fs/promises';
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
