/** Roles and zones of the admin API's callers (see services/users.ts for the accounts themselves). */
import { USER_ROLES, type UserRole } from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import type { RequestMeta } from './context.js';

export type Role = UserRole;
export const ROLES = USER_ROLES;

/** Whether a user of role `have` may do what needs `need`. */
export function roleAllows(have: Role, need: Role): boolean {
  return ROLES.indexOf(have) >= ROLES.indexOf(need);
}

/**
 * The caller of a service: who (the audit actor, `user:NAME` for a person), from where, and for a
 * person its role and zones. `zones` null or absent = every zone (admins, the server itself).
 */
export interface Caller extends RequestMeta {
  actor: string;
  role?: Role;
  zones?: readonly string[] | null;
}

export const userActor = (name: string) => `user:${name}`;

/** Refuses (403 forbidden_zone) an action on something in a zone outside the caller's zones. */
export function checkZone(who: { zones?: readonly string[] | null }, zone: string): void {
  if (who.zones && !who.zones.includes(zone)) {
    throw new EdgeidError('forbidden_zone', `zone "${zone}" is not one of this user's zones (${who.zones.join(', ')})`, { zone });
  }
}

/** The zones a listing is narrowed to: undefined = every zone. */
export function zonesOf(who: { zones?: readonly string[] | null }): string[] | undefined {
  return who.zones ? [...who.zones] : undefined;
}
