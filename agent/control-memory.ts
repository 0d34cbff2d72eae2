/**
 * Durable memory of accepted control-command ids (replay protection across restarts). Ids only
 * need to be remembered for as long as a command could still pass the freshness check; older
 * ones are pruned. The file is rewritten atomically before a command is acted upon.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from './state/fs.js';

const FILE = 'control-seen.json';
const MAX_IDS = 2000;

export class ControlMemory {
  private constructor(
    private readonly file: string,
    private readonly ids: Map<string, number>,
    private readonly keepMs: number,
  ) {}

  static async open(stateDir: string, keepMs: number): Promise<ControlMemory> {
    const file = path.join(stateDir, FILE);
    const ids = new Map<string, number>();
    try {
      const raw = JSON.parse(await readFile(file, 'utf8')) as { ids?: [string, number][] };
      for (const [id, at] of raw.ids ?? []) if (typeof id === 'string' && typeof at === 'number') ids.set(id, at);
    } catch {
      // none yet (or unreadable: commands still need a valid signature and freshness)
    }
    return new ControlMemory(file, ids, keepMs);
  }

  has(id: string): boolean {
    return this.ids.has(id);
  }

  /** Records an id durably (call before acting on the command). */
  async remember(id: string, now = Date.now()): Promise<void> {
    this.ids.set(id, now);
    for (const [k, at] of this.ids) if (at < now - this.keepMs) this.ids.delete(k);
    while (this.ids.size > MAX_IDS) this.ids.delete(this.ids.keys().next().value as string);
    await writeFileAtomic(this.file, JSON.stringify({ ids: [...this.ids] }));
  }
}
