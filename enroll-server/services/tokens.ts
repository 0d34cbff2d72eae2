import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { enrollUri, LIST_PAGE_MAX, type TokenCreateRequest, type TokenCreateResponse, type TokenView } from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import type { TokenRecord } from '../store/store.js';
import { checkZone, roleAllows, type Role } from './access.js';
import { audited } from './audit.js';
import { zoneOf, type RequestMeta, type ServerContext } from './context.js';
import { parseCursor } from './devices.js';

/**
 * Enrollment tokens are `<id>.<secret>`: the id (16 hex digits) finds the row, the secret (32
 * random bytes, base64url) is checked against its stored SHA-256 in constant time.
 */
const TOKEN_RE = /^([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$/;

export function splitToken(token: string): { id: string; secretHash: Buffer } | null {
  const m = TOKEN_RE.exec(token);
  if (!m) return null;
  return { id: m[1]!, secretHash: createHash('sha256').update(m[2]!, 'utf8').digest() };
}

/** Finds the token a device presented; token_invalid for an unknown id or a wrong secret (same answer). */
export async function lookupToken(ctx: ServerContext, token: string): Promise<TokenRecord> {
  const parts = splitToken(token);
  const row = parts ? await ctx.store.getToken(parts.id) : null;
  if (!parts || !row || !timingSafeEqual(row.secretHash, parts.secretHash)) throw new EdgeidError('token_invalid');
  return row;
}

export async function createToken(
  ctx: ServerContext,
  req: TokenCreateRequest,
  meta: RequestMeta & { actor: string; zones?: readonly string[] | null },
): Promise<TokenCreateResponse> {
  return audited(
    ctx,
    { event: 'token.create', actor: meta.actor, ip: meta.ip, details: { zone: req.zone, owner: req.owner } },
    async (a) => {
      zoneOf(ctx, req.zone);
      checkZone(meta, req.zone);
      const ttl = req.ttlSeconds ?? ctx.config.tokenDefaultTtl;
      if (!Number.isInteger(ttl) || ttl < 60 || ttl > 30 * 86400) throw new EdgeidError('token_ttl_invalid');
      const id = randomBytes(8).toString('hex');
      const secret = randomBytes(32).toString('base64url');
      const now = a.time;
      const rec: TokenRecord = {
        id,
        secretHash: createHash('sha256').update(secret, 'utf8').digest(),
        zone: req.zone,
        owner: req.owner,
        name: req.name ?? null,
        purpose: req.purpose ?? null,
        createdBy: meta.actor,
        createdAt: now,
        expiresAt: now + ttl * 1000,
        ekHash: null,
        boundAt: null,
        usedAt: null,
        deviceId: null,
      };
      await ctx.store.createToken(
        rec,
        a.okRow({
          tokenId: id,
          zone: req.zone,
          owner: req.owner,
          name: req.name ?? null,
          expiresAt: new Date(rec.expiresAt).toISOString(),
        }),
      );
      a.recorded();
      const token = `${id}.${secret}`;
      const server = ctx.publicUrl();
      return {
        id,
        token,
        uri: enrollUri({ server, token, caFingerprint: ctx.ca.fingerprint, zone: req.zone }),
        server,
        caFingerprint: ctx.ca.fingerprint,
        zone: rec.zone,
        owner: rec.owner,
        name: rec.name,
        expiresAt: new Date(rec.expiresAt).toISOString(),
      };
    },
  );
}

/**
 * GET /v1/admin/tokens: one page of tokens (keyset on createdAt, id; `limit` 1 … 1000, default
 * 1000; `next` when there are more), without their secrets (only a hash of each is stored). A
 * technician sees the tokens it created; a zone-scoped user only those of its zones.
 */
export async function listTokens(
  ctx: ServerContext,
  meta: RequestMeta & { actor: string; role?: Role; zones?: readonly string[] | null },
  q: { limit?: number; after?: string } = {},
): Promise<{ tokens: TokenView[]; next?: string }> {
  return audited(ctx, { event: 'admin.tokens.list', actor: meta.actor, ip: meta.ip }, async (a) => {
    const limit = Math.min(LIST_PAGE_MAX, Math.max(1, q.limit ?? LIST_PAGE_MAX));
    const after = parseCursor(q.after);
    const rows = await ctx.store.pageTokens(
      { limit: limit + 1, ...(after ? { after } : {}) },
      {
        ...(meta.zones ? { zones: [...meta.zones] } : {}),
        ...(meta.role && !roleAllows(meta.role, 'operator') ? { createdBy: meta.actor } : {}),
      },
    );
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    a.details = { rows: page.length };
    return { tokens: page.map(tokenView), ...(rows.length > limit && last ? { next: `${last.createdAt}:${last.id}` } : {}) };
  });
}

/**
 * POST /v1/admin/tokens/:id/expire: an unused token stops working now. A technician expires the
 * tokens it created; an operator any token in its zones (forbidden_role / forbidden_zone else).
 */
export async function expireToken(
  ctx: ServerContext,
  id: string,
  meta: RequestMeta & { actor: string; role?: Role; zones?: readonly string[] | null },
): Promise<{ token: TokenView }> {
  return audited(ctx, { event: 'token.expire', actor: meta.actor, ip: meta.ip, details: { tokenId: id } }, async (a) => {
    const t = await ctx.store.getToken(id);
    if (!t || (meta.zones && !meta.zones.includes(t.zone))) {
      // a token outside the caller's zones is not shown to exist (like a listing leaves it out)
      if (t && meta.zones) checkZone(meta, t.zone);
      throw new EdgeidError('token_not_found', `no token ${id}`, { tokenId: id });
    }
    if (meta.role && !roleAllows(meta.role, 'operator') && t.createdBy !== meta.actor) {
      throw new EdgeidError('forbidden_role', `a ${meta.role} expires only the tokens it created; this one was made by ${t.createdBy}`, {
        role: meta.role,
        needs: 'operator',
      });
    }
    if (!(await ctx.store.expireToken(id, a.time, a.okRow({ tokenId: id, zone: t.zone, owner: t.owner })))) {
      throw new EdgeidError('token_not_expirable', `token ${id} was used or has expired already`, { tokenId: id });
    }
    a.recorded();
    return { token: tokenView((await ctx.store.getToken(id))!) };
  });
}

export function tokenView(t: TokenRecord): TokenView {
  const iso = (v: number | null) => (v === null ? null : new Date(v).toISOString());
  return {
    id: t.id,
    zone: t.zone,
    owner: t.owner,
    name: t.name,
    createdBy: t.createdBy,
    createdAt: new Date(t.createdAt).toISOString(),
    expiresAt: new Date(t.expiresAt).toISOString(),
    boundAt: iso(t.boundAt),
    usedAt: iso(t.usedAt),
    deviceId: t.deviceId,
  };
}
