/**
 * Posture claims: what the agent says about itself and the OS, bound into every quote
 * through quoteQualifyingData(nonce, claims) so the server can hold the device to a policy.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import type { Claims } from '../protocol/api.js';
import { configCanonicalJson, type AgentConfig } from './config.js';
import { AGENT_VERSION, IS_BUNDLED } from './version.js';

/** /etc/os-release fields reported in the claims (the ones that identify a distribution release). */
const OS_RELEASE_FIELDS = ['ID', 'ID_LIKE', 'NAME', 'VERSION_ID', 'VERSION_CODENAME', 'PRETTY_NAME', 'BUILD_ID', 'VARIANT_ID'];

/** Parses os-release(5): KEY=value lines, values optionally quoted with shell-style escapes. */
export function parseOsRelease(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (!m) continue;
    let v = m[2]!;
    const q = v[0];
    if ((q === '"' || q === "'") && v.endsWith(q) && v.length >= 2) {
      v = v.slice(1, -1);
      if (q === '"') v = v.replace(/\\([\\$"`])/g, '$1');
    }
    out[m[1]!] = v;
  }
  return out;
}

export async function readOsRelease(files = ['/etc/os-release', '/usr/lib/os-release']): Promise<Record<string, string>> {
  for (const f of files) {
    try {
      const all = parseOsRelease(await readFile(f, 'utf8'));
      return Object.fromEntries(OS_RELEASE_FIELDS.filter((k) => all[k] !== undefined).map((k) => [k, all[k]!]));
    } catch {
      // try the next location
    }
  }
  return {};
}

/** The file whose hash is reported as agentHash: the bundle when bundled, else the entry script. */
export function agentCodeFile(): string | undefined {
  if (IS_BUNDLED) return fileURLToPath(import.meta.url);
  return process.argv[1];
}

export async function sha256File(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}

export interface PostureSources {
  config: AgentConfig;
  /** Defaults to agentCodeFile(). */
  agentFile?: string;
}

/** Collects claims; the bundle hash is computed once per process (it is what was loaded at start). */
export class PostureCollector {
  private agentHash: Promise<string | undefined> | null = null;

  constructor(private readonly src: PostureSources) {}

  async claims(): Promise<Claims> {
    this.agentHash ??= (async () => {
      const f = this.src.agentFile ?? agentCodeFile();
      return f ? sha256File(f).catch(() => undefined) : undefined;
    })();
    const agentHash = await this.agentHash;
    const claims: Claims = {
      agentVersion: AGENT_VERSION,
      configHash: createHash('sha256').update(configCanonicalJson(this.src.config), 'utf8').digest('hex'),
      os: await readOsRelease(),
      kernel: os.release(),
    };
    if (agentHash) claims.agentHash = agentHash;
    return claims;
  }
}
