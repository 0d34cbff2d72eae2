/**
 * The console's sessions (OWASP Session Management Cheat Sheet): a 256-bit random id in a
 * `__Host-` cookie (RFC 6265bis §4.1.3.2: Secure, Path=/, no Domain), HttpOnly and
 * SameSite=Strict; the server keeps only the id's SHA-256, with an idle and an absolute timeout.
 * Each session has its own CSRF token (OWASP CSRF Prevention: synchronizer token), which the page
 * reads from GET /console/api/session and sends as X-CSRF-Token; it is compared in constant time.
 *
 * A session made from a personal token remembers that token's hash: a user disabled, expired or
 * with its token rotated since the login loses its sessions on their next request.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Role } from '../services/access.js';
import { userActor } from '../services/access.js';
import type { ServerContext } from '../services/context.js';

export const SESSION_COOKIE = '__Host-edgeid_console';
/** Sessions kept at most; beyond, the least recently used one ends. */
const MAX_SESSIONS = 10_000;
/**
 * Sessions one user keeps at most; a further login ends that user's least recently used one, so
 * that one account's logins never push other people's sessions out of the store.
 */
export const MAX_SESSIONS_PER_USER = 16;

/** Who a console session acts for. */
export interface ConsolePrincipal {
  name: string;
  role: Role;
  zones: string[] | null;
  via: 'token' | 'oidc';
}

export interface ConsoleSession {
  principal: ConsolePrincipal;
  /** SHA-256 of the personal token it logged in with (via 'token'). */
  tokenHash: Buffer | null;
  csrf: string;
  createdAt: number;
  lastSeen: number;
}

const sha256 = (s: string) => createHash('sha256').update(s, 'utf8').digest();

export class SessionStore {
  /** By the hex SHA-256 of the session id; Map order = least recently used first. */
  private readonly byHash = new Map<string, ConsoleSession>();

  constructor(
    readonly ctx: ServerContext,
    readonly idleMs: number,
    readonly absoluteMs: number,
  ) {}

  /** A new session: its id (for the cookie only) and the session. */
  create(principal: ConsolePrincipal, tokenHash: Buffer | null): { id: string; session: ConsoleSession } {
    const id = randomBytes(32).toString('base64url');
    const now = this.ctx.now();
    const session: ConsoleSession = { principal, tokenHash, csrf: randomBytes(32).toString('base64url'), createdAt: now, lastSeen: now };
    let own = 0;
    for (const s of this.byHash.values()) if (s.principal.name === principal.name) own++;
    for (const [k, s] of this.byHash) {
      if (own < MAX_SESSIONS_PER_USER) break;
      if (s.principal.name !== principal.name) continue;
      this.byHash.delete(k);
      own--;
    }
    if (this.byHash.size >= MAX_SESSIONS) {
      const oldest = this.byHash.keys().next().value;
      if (oldest !== undefined) this.byHash.delete(oldest);
    }
    this.byHash.set(sha256(id).toString('hex'), session);
    return { id, session };
  }

  /**
   * The live session of a cookie value, or why there is none. `touch` (every request but the
   * live event stream) moves the idle deadline.
   */
  get(id: string | undefined, touch: boolean): { session: ConsoleSession; key: string } | { ended: 'none' | 'timeout' } {
    if (!id || !/^[A-Za-z0-9_-]{43}$/.test(id)) return { ended: 'none' };
    const key = sha256(id).toString('hex');
    const s = this.byHash.get(key);
    if (!s) return { ended: 'none' };
    const now = this.ctx.now();
    if (now - s.lastSeen >= this.idleMs || now - s.createdAt >= this.absoluteMs) {
      this.byHash.delete(key);
      return { ended: 'timeout' };
    }
    if (touch) {
      s.lastSeen = now;
      this.byHash.delete(key);
      this.byHash.set(key, s);
    }
    return { session: s, key };
  }

  /** Whether the session behind `key` still exists and has not timed out (for long-lived streams). */
  alive(key: string): boolean {
    const s = this.byHash.get(key);
    if (!s) return false;
    const now = this.ctx.now();
    return now - s.lastSeen < this.idleMs && now - s.createdAt < this.absoluteMs;
  }

  delete(key: string): void {
    this.byHash.delete(key);
  }

  /** Ends every session of a user (logout elsewhere is per session; this is for account changes). */
  deleteUser(name: string): void {
    for (const [k, s] of this.byHash) if (s.principal.name === name) this.byHash.delete(k);
  }

  get size(): number {
    return this.byHash.size;
  }
}

/** Constant-time comparison of the presented CSRF token with the session's. */
export function csrfMatches(session: ConsoleSession, presented: string | undefined): boolean {
  if (typeof presented !== 'string') return false;
  const a = sha256(presented);
  const b = sha256(session.csrf);
  return timingSafeEqual(a, b);
}

export function sessionCookie(id: string, maxAgeSeconds: number): string {
  return `${SESSION_COOKIE}=${id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=${maxAgeSeconds}`;
}

export const clearedSessionCookie = () => `${SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0`;

/** The session cookie's value in a Cookie header (RFC 6265 §5.4), or undefined. */
export function sessionIdOf(cookieHeader: string | undefined): string | undefined {
  for (const part of (cookieHeader ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === SESSION_COOKIE) return part.slice(i + 1).trim();
  }
  return undefined;
}

declare module 'fastify' {
  interface FastifyInstance {
    consoleSessions: SessionStore;
  }
}

/**
 * Starts a console session for `principal` on this reply (sets the cookie) and audits the login
 * (`console.login`, actor user:NAME). The login routes call it: the personal-token form here, and
 * a single sign-on module with `via: 'oidc'`. The caller sends the reply (e.g. a redirect to /console/).
 */
export async function startSession(
  reply: FastifyReply,
  principal: ConsolePrincipal,
  tokenHash: Buffer | null = null,
  opts: { audited?: boolean } = {},
): Promise<void> {
  const store = (reply.server as FastifyInstance).consoleSessions;
  const { id } = store.create(principal, tokenHash);
  // a sign-on that wrote its own row (OpenID Connect: with the issuer and subject) is not audited twice
  if (!opts.audited)
    await store.ctx.store.appendAudit({
      time: store.ctx.now(),
      actor: userActor(principal.name),
      event: 'console.login',
      deviceId: null,
      ip: reply.request.ip ?? null,
      outcome: 'ok',
      reason: null,
      details: { via: principal.via, role: principal.role, zones: principal.zones },
    });
  store.ctx.auditFeed.poke();
  reply.header('set-cookie', sessionCookie(id, Math.floor(store.absoluteMs / 1000)));
}
