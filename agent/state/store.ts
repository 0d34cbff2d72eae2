/**
 * The agent's state directory (default /var/lib/edgeid, 0700, files 0600):
 *
 *   state.json            the durable state machine (below); renaming it is the commit point
 *   ak.pub / ak.priv      attestation key blobs (TPM2B_PUBLIC / TPM2B_PRIVATE, wrapped by the SRK)
 *   session-N.pub/.priv   session key blobs; N = generation. The current key and, until the new
 *                         certificate is in use, the previous one; an uncommitted (pending) one
 *                         may exist while a renewal is in flight
 *   cert.pem / ca.pem     copies of the leaf and the CA chain for operators and tools
 *   control-seen.json     ids of recently accepted control commands (replay protection)
 *   outbox/               the durable MQTT outbox
 *
 * Crash safety: key blobs are written (atomically) before state.json references them, and
 * state.json is replaced atomically, so after a kill at any point state.json references only
 * complete files. Files it does not reference are leftovers of an interrupted step and are removed
 * by `cleanupOrphans` at start.
 */
import { X509Certificate, createHash } from 'node:crypto';
import { readFile, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { EdgeidError } from '../../protocol/errors/index.js';
import {
  checkStateOwnership,
  ensurePrivateDir,
  fsyncDir,
  lockDir,
  removeFilesDurably,
  removeStaleTempFiles,
  writeFileAtomic,
} from './fs.js';

/** A TPM key as stored on disk: marshaled TPM2B_PUBLIC and TPM2B_PRIVATE (useless off this TPM). */
export interface KeyBlobs {
  public: Buffer;
  private: Buffer;
}

export interface CertificateRecord {
  /** PEM leaf certificate. */
  pem: string;
  /** PEM certificates from the issuing CA up to the root, as the server sent them. */
  chain: string[];
  serial: string;
  notBefore: string;
  notAfter: string;
  /** Generation of the session key (files session-N.*) whose public key the certificate carries. */
  sessionKey: number;
  /** Server clock minus agent clock when it was issued (ms, from the answer's Date header). */
  clockOffsetMs?: number;
  /** Agent-clock time it arrived. */
  receivedAt?: string;
}

export interface RenewalRecord {
  at: string;
  ok: boolean;
  /** Why the renewal ran: schedule | expired | renew-now | startup | recovery. */
  reason: string;
  /** Error code when it failed. */
  code?: string;
  message?: string;
  durationMs?: number;
  /** Every TPM command of this renewal's batches, flushes included (the TLS handshake after it is not). */
  tpmCommands?: number;
  /** The same by command name, e.g. { CreateLoaded: 1, Certify: 1, Quote: 1, Sign: 1, ContextSave: 1, FlushContext: 1 }. */
  tpmCommandStats?: Record<string, number>;
  serial?: string;
}

export interface AgentState {
  version: 1;
  /**
   * The enrollment server and its pinned root CA (PEM of the certificate whose SHA-256 is
   * caFingerprint); during a root rotation also the new root R2 the agent pinned as a second
   * trust anchor once its cross certificate verified under the first (identity.ts verifyNextRoot).
   */
  server: { url: string; caFingerprint: string; rootPem?: string; nextRootPem?: string; nextRootFingerprint?: string };
  /** Set once the AK blobs are on disk; hex of the AK's TPM name. */
  ak?: { name: string; createdAt: string };
  /** An enrollment that was started but not finished; holds the one-time token until then. */
  pendingEnrollment?: { token?: string; zone?: string; startedAt: string };
  device?: { id: string; zone: string; enrolledAt: string };
  certificate?: CertificateRecord;
  /** The session key of the certificate before the current one; deleted once the new one is in use. */
  previousSessionKey?: number;
  /** Next single-use renewal nonce and the server's schedule. */
  /** eventLogSha256: digest of the event log the server holds for this device (send only the digest while ours equals it). */
  renew?: {
    nonce?: string;
    nonceExpiresAt?: string;
    renewAfter?: string;
    notAfter?: string;
    pcrs?: number[];
    eventLogSha256?: string | null;
  };
  mqtt?: { url: string | null; topics?: { publish: string; control: string } };
  lastRenewal?: RenewalRecord;
  /**
   * TPM commands of a steady-state renewal (budget ≤ 6, BENCHMARKS.md): every command, flushes included, of
   * the last successful renewal that found the SRK and AK already loaded. The first renewal of a
   * process also loads them (+ CreatePrimary, Load; lastRenewal.tpmCommands has its own count).
   */
  tpmCommandsPerRenewal?: number;
  renewals: number;
  nextSessionKey: number;
}

const STATE_FILE = 'state.json';
const SESSION_RE = /^session-(\d+)\.(pub|priv)$/;

export function sessionKeyName(gen: number): string {
  return `session-${gen}`;
}

/** Hex of the SHA-256 of the DER of the first certificate in a PEM string. */
export function certificateSha256(pem: string): string {
  return createHash('sha256').update(new X509Certificate(pem).raw).digest('hex');
}

export class StateStore {
  private lock: { release(): Promise<void> } | null = null;

  private constructor(readonly dir: string) {}

  /**
   * Opens (creating it 0700 if needed) the state directory; with `lock`, takes the exclusive lock.
   * A store opened to write (create or lock) first checks who owns the directory, its entries and
   * its parent (`checkStateOwnership`); a read-only look (`status`) does not.
   */
  static async open(dir: string, opts: { lock?: boolean; create?: boolean } = {}): Promise<StateStore> {
    if (opts.create !== false) await ensurePrivateDir(dir);
    if (opts.create !== false || opts.lock) await checkStateOwnership(dir);
    const store = new StateStore(dir);
    if (opts.lock) {
      store.lock = await lockDir(dir);
      await removeStaleTempFiles(dir);
    }
    return store;
  }

  async close(): Promise<void> {
    await this.lock?.release();
    this.lock = null;
  }

  path(name: string): string {
    return path.join(this.dir, name);
  }

  async load(): Promise<AgentState | null> {
    let text: string;
    try {
      text = await readFile(this.path(STATE_FILE), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new EdgeidError('state_dir_unusable', `cannot read ${this.path(STATE_FILE)}: ${(e as Error).message}`);
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      throw new EdgeidError('state_corrupt', `${this.path(STATE_FILE)} is not valid JSON`);
    }
    const s = raw as Partial<AgentState>;
    if (s.version !== 1 || typeof s.server?.url !== 'string' || typeof s.server.caFingerprint !== 'string') {
      throw new EdgeidError('state_corrupt', `${this.path(STATE_FILE)} is not an edgeid agent state (version 1)`);
    }
    return { renewals: 0, nextSessionKey: 1, ...s } as AgentState;
  }

  /** Commits a new state (atomic replace of state.json). */
  async save(state: AgentState): Promise<void> {
    await writeFileAtomic(this.path(STATE_FILE), JSON.stringify(state, null, 2) + '\n');
  }

  async writeKey(name: string, blobs: KeyBlobs): Promise<void> {
    await writeFileAtomic(this.path(`${name}.pub`), blobs.public);
    await writeFileAtomic(this.path(`${name}.priv`), blobs.private);
  }

  async readKey(name: string): Promise<KeyBlobs> {
    try {
      return { public: await readFile(this.path(`${name}.pub`)), private: await readFile(this.path(`${name}.priv`)) };
    } catch (e) {
      throw new EdgeidError('state_corrupt', `key blob ${name} is missing from ${this.dir}: ${(e as Error).message}`);
    }
  }

  async removeKey(name: string): Promise<void> {
    await removeFilesDurably(this.dir, [`${name}.pub`, `${name}.priv`]);
  }

  /** Writes cert.pem and ca.pem (derived copies for operators) from the committed state. */
  async writeOperatorFiles(state: AgentState): Promise<void> {
    if (!state.certificate) return;
    await writeFileAtomic(this.path('cert.pem'), state.certificate.pem.trimEnd() + '\n');
    await writeFileAtomic(this.path('ca.pem'), state.certificate.chain.map((c) => c.trimEnd() + '\n').join(''));
  }

  /**
   * Removes what an interrupted step left behind: session key blobs the state does not reference,
   * AK blobs written before the state recorded them. Returns the names removed.
   */
  async cleanupOrphans(state: AgentState | null): Promise<string[]> {
    const keep = new Set<number>();
    if (state?.certificate) keep.add(state.certificate.sessionKey);
    if (state?.previousSessionKey !== undefined) keep.add(state.previousSessionKey);
    const names = await readdir(this.dir);
    const orphans = names.filter((n) => {
      const m = SESSION_RE.exec(n);
      if (m) return !keep.has(Number(m[1]));
      return (n === 'ak.pub' || n === 'ak.priv') && !state?.ak;
    });
    await removeFilesDurably(this.dir, orphans);
    return orphans;
  }

  /** Deletes every file of the identity (keys, state, certificates, outbox); keeps the directory and the lock. */
  async wipe(): Promise<string[]> {
    const names = (await readdir(this.dir)).filter((n) => n !== 'lock');
    for (const n of names) await rm(this.path(n), { recursive: true, force: true });
    await fsyncDir(this.dir);
    return names;
  }
}
