/**
 * Personal accounts of the admin API (IEC 62443-3-3 SR 1.1 human user identification, SR 2.1
 * authorization enforcement, SR 2.8 auditable events): each person has a name, a role, optionally
 * a set of zones, and a bearer token of 256 random bits of which only the SHA-256 is stored.
 *
 * Roles are ordered, each allowed what the ones before it are:
 *   viewer      reads the inventory and the audit log (in its zones)
 *   technician  also creates enrollment tokens and lists the ones it created (in its zones)
 *   operator    also revokes, retires, approves baselines, sends renew-now (in its zones)
 *   admin       also manages users, the broker, the CA and the EK trust store (every zone)
 *
 * A token is found by its SHA-256 (a unique index) and the stored hash is then compared with
 * the presented one in constant time. Looking a 256-bit random token up by its hash leaks nothing
 * useful through timing: steering the lookup would take SHA-256 preimages.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { join } from 'node:path';
import type { UserCreateRequest, UserSetRoleRequest, UserTokenResponse, UserView } from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import { DATA_FILES } from '../composition.js';
import { writeFileAtomic } from '../files.js';
import type { UserRecord } from '../store/store.js';
import { audited } from './audit.js';
import type { Caller } from './access.js';
import { zoneOf, type ServerContext } from './context.js';

export { checkZone, roleAllows, userActor, zonesOf, type Caller, type Role } from './access.js';

const sha256 = (s: string) => createHash('sha256').update(s, 'utf8').digest();
const newToken = () => `eid_${randomBytes(32).toString('base64url')}`;

/**
 * The user a bearer token belongs to: admin_unauthorized for no token or an unknown one (also the
 * old value of a rotated token), user_disabled / user_expired for an account that is no longer valid.
 */
export async function authenticate(ctx: ServerContext, header: string | undefined): Promise<UserRecord> {
  const r = await identify(ctx, header);
  if (r.error) throw r.error;
  return r.user;
}

/**
 * As authenticate, without throwing: the refusal, and for a token that matched a disabled or
 * expired account also that account (so that the refusal's audit row names the person; the
 * caller holds that person's token, so naming it tells the caller nothing new).
 */
export async function identify(
  ctx: ServerContext,
  header: string | undefined,
): Promise<{ user: UserRecord; error: null } | { user: UserRecord | null; error: EdgeidError }> {
  // the scheme name is case-insensitive (RFC 7235 §2.1); the token is RFC 6750 §2.1's b64token
  const m = /^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9_.~+/-]+=*)$/.exec(header ?? '');
  const presented = sha256(m?.[1] ?? '');
  const u = m ? await ctx.store.getUserByTokenHash(presented) : null;
  if (!m || !u || !timingSafeEqual(u.tokenHash, presented)) {
    const msg = header ? 'the bearer token is not a valid personal or admin token' : 'no bearer token';
    return { user: null, error: new EdgeidError('admin_unauthorized', msg) };
  }
  if (u.disabledAt !== null) return { user: u, error: new EdgeidError('user_disabled', `user ${u.name} is disabled`, { user: u.name }) };
  if (u.expiresAt !== null && u.expiresAt <= ctx.now()) {
    const at = new Date(u.expiresAt).toISOString();
    return { user: u, error: new EdgeidError('user_expired', `user ${u.name} expired at ${at}`, { user: u.name }) };
  }
  return { user: u, error: null };
}

export function userView(u: UserRecord, now: number): UserView {
  const iso = (v: number | null) => (v === null ? null : new Date(v).toISOString());
  return {
    name: u.name,
    role: u.role,
    zones: u.zones,
    createdBy: u.createdBy,
    createdAt: new Date(u.createdAt).toISOString(),
    expiresAt: iso(u.expiresAt),
    disabledAt: iso(u.disabledAt),
    disabledBy: u.disabledBy,
    tokenRotatedAt: iso(u.tokenRotatedAt),
    bootstrap: u.bootstrap,
    state: u.disabledAt !== null ? 'disabled' : u.expiresAt !== null && u.expiresAt <= now ? 'expired' : 'enabled',
  };
}

/** POST /v1/admin/users: a new person; the answer holds the token, shown once. */
export async function createUser(ctx: ServerContext, req: UserCreateRequest, who: Caller): Promise<UserTokenResponse> {
  return audited(
    ctx,
    { event: 'user.create', actor: who.actor, ip: who.ip, details: { user: req.name, userRole: req.role, zones: req.zones ?? null } },
    async (a) => {
      if (req.role === 'admin' && req.zones)
        throw new EdgeidError('user_invalid', 'an admin acts in every zone: --zones is not for admins');
      const zones = req.zones ? [...new Set(req.zones)] : null;
      for (const z of zones ?? []) zoneOf(ctx, z);
      const token = newToken();
      const u: UserRecord = {
        name: req.name,
        role: req.role,
        zones,
        tokenHash: sha256(token),
        createdBy: who.actor,
        createdAt: a.time,
        expiresAt: req.expiresInSeconds ? a.time + req.expiresInSeconds * 1000 : null,
        disabledAt: null,
        disabledBy: null,
        tokenRotatedAt: null,
        bootstrap: false,
      };
      const details = {
        user: u.name,
        userRole: u.role,
        zones,
        expiresAt: u.expiresAt === null ? null : new Date(u.expiresAt).toISOString(),
      };
      if (!(await ctx.store.createUser(u, a.okRow(details)))) {
        throw new EdgeidError('user_exists', `user ${req.name} exists already`, { user: req.name });
      }
      a.recorded();
      return { name: u.name, role: u.role, zones, token, expiresAt: details.expiresAt };
    },
  );
}

/** GET /v1/admin/users. */
export async function listUsers(ctx: ServerContext, who: Caller): Promise<{ users: UserView[] }> {
  return audited(ctx, { event: 'admin.users.list', actor: who.actor, ip: who.ip }, async (a) => {
    const users = await ctx.store.listUsers();
    a.details = { rows: users.length };
    return { users: users.map((u) => userView(u, a.time)) };
  });
}

async function mustGetUser(ctx: ServerContext, name: string): Promise<UserRecord> {
  const u = await ctx.store.getUser(name);
  if (!u) throw new EdgeidError('user_not_found', `no user ${name}`, { user: name });
  return u;
}

/** POST /v1/admin/users/:name/disable: the user's token is refused from now on (user_disabled). */
export async function disableUser(ctx: ServerContext, name: string, who: Caller): Promise<{ user: UserView }> {
  return audited(ctx, { event: 'user.disable', actor: who.actor, ip: who.ip, details: { user: name } }, async (a) => {
    const u = await mustGetUser(ctx, name);
    if (u.disabledAt !== null) return { user: userView(u, a.time) };
    const done = await ctx.store.updateUser(
      name,
      { disabledAt: a.time, disabledBy: who.actor },
      a.okRow({ user: name, userRole: u.role }),
      // the last enabled admin stays: checked in the store's transaction, so two admins disabling
      // each other at once cannot both succeed
      { keepAdminAt: a.time },
    );
    if (done === 'last_admin') throw new EdgeidError('user_last_admin', `${name} is the last enabled admin`, { user: name });
    a.recorded();
    return { user: userView((await ctx.store.getUser(name))!, a.time) };
  });
}

/**
 * POST /v1/admin/users/:name/set-role: a new role and/or zones for an account. `zones` absent
 * keeps the account's zones (an admin's: every zone), null = every zone; an admin always has every
 * zone. Demoting the last enabled admin is refused (user_last_admin); a disabled account is not
 * changed (user_is_disabled).
 */
export async function setUserRole(ctx: ServerContext, name: string, req: UserSetRoleRequest, who: Caller): Promise<{ user: UserView }> {
  return audited(
    ctx,
    { event: 'user.set_role', actor: who.actor, ip: who.ip, details: { user: name, userRole: req.role, zones: req.zones ?? null } },
    async (a) => {
      const u = await mustGetUser(ctx, name);
      if (u.disabledAt !== null) throw new EdgeidError('user_is_disabled', `user ${name} is disabled`, { user: name });
      if (req.role === 'admin' && req.zones)
        throw new EdgeidError('user_invalid', 'an admin acts in every zone: --zones is not for admins');
      const zones = req.role === 'admin' ? null : req.zones === undefined ? u.zones : req.zones === null ? null : [...new Set(req.zones)];
      for (const z of req.zones ?? []) zoneOf(ctx, z);
      const details = { user: name, from: { role: u.role, zones: u.zones }, to: { role: req.role, zones } };
      const done = await ctx.store.updateUser(name, { role: req.role, zones }, a.okRow(details), { keepAdminAt: a.time });
      if (done === 'last_admin') {
        throw new EdgeidError('user_last_admin', `${name} is the last enabled admin: it keeps the role admin`, { user: name });
      }
      a.recorded();
      return { user: userView((await ctx.store.getUser(name))!, a.time) };
    },
  );
}

/**
 * POST /v1/admin/users/:name/rotate-token: a new token, shown once; the old one is refused from
 * the commit on. The bootstrap admin's new token also replaces data/admin-token (written first:
 * should the database update fail, the next start adopts the file's token).
 */
export async function rotateUserToken(ctx: ServerContext, name: string, who: Caller): Promise<UserTokenResponse> {
  return audited(ctx, { event: 'user.rotate_token', actor: who.actor, ip: who.ip, details: { user: name } }, async (a) => {
    const u = await mustGetUser(ctx, name);
    if (u.disabledAt !== null) throw new EdgeidError('user_is_disabled', `user ${name} is disabled`, { user: name });
    const token = u.bootstrap ? `adm_${randomBytes(32).toString('base64url')}` : newToken();
    if (u.bootstrap) writeFileAtomic(join(ctx.config.dataDir, DATA_FILES.adminToken), token + '\n', 0o600);
    await ctx.store.updateUser(name, { tokenHash: sha256(token), tokenRotatedAt: a.time }, a.okRow({ user: name, userRole: u.role }));
    a.recorded();
    return { name, role: u.role, zones: u.zones, token, expiresAt: u.expiresAt === null ? null : new Date(u.expiresAt).toISOString() };
  });
}

/**
 * At start: the admin token of data/admin-token is the bootstrap user (`admin`, role admin, every
 * zone), created the first time (a data dir from before personal accounts keeps its token, now
 * as that user). A changed file (deleted, then recreated at start; or written by rotate-token)
 * re-keys that user and enables it again, as an admin of every zone (also after a set-role demoted
 * it): whoever can write the data dir controls the server
 * anyway, and this is the way back in when every admin is locked out.
 */
export async function adoptBootstrapAdmin(ctx: ServerContext, tokenHash: Buffer): Promise<void> {
  const users = await ctx.store.listUsers();
  const boot = users.find((u) => u.bootstrap);
  const now = ctx.now();
  if (boot) {
    if (timingSafeEqual(boot.tokenHash, tokenHash)) return;
    await ctx.store.updateUser(
      boot.name,
      { tokenHash, tokenRotatedAt: now, disabledAt: null, disabledBy: null, role: 'admin', zones: null },
      {
        time: now,
        actor: 'server',
        event: 'user.bootstrap_rekey',
        outcome: 'ok',
        details: { user: boot.name, userRole: 'admin', ...(boot.role !== 'admin' ? { previousRole: boot.role } : {}) },
      },
    );
    return;
  }
  const name = users.some((u) => u.name === 'admin') ? 'bootstrap-admin' : 'admin';
  await ctx.store.createUser(
    {
      name,
      role: 'admin',
      zones: null,
      tokenHash,
      createdBy: 'server',
      createdAt: now,
      expiresAt: null,
      disabledAt: null,
      disabledBy: null,
      tokenRotatedAt: null,
      bootstrap: true,
    },
    {
      time: now,
      actor: 'server',
      event: 'user.bootstrap',
      outcome: 'ok',
      details: { user: name, userRole: 'admin', file: DATA_FILES.adminToken },
    },
  );
}
