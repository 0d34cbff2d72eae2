/**
 * Checks a peer's JSON answer against its protocol/api.ts schema (TypeBox), for both clients of
 * the server's API: the agent and edgeid-admin. One compiled validator per schema.
 */
import type { TSchema } from 'typebox';
import { Compile } from 'typebox/compile';

const validators = new WeakMap<TSchema, ReturnType<typeof Compile>>();

/** Where `json` first departs from `schema` (`response/…` and why), or null when it matches. */
export function responseMismatch(schema: TSchema, json: unknown): { field: string; text: string } | null {
  let v = validators.get(schema);
  if (!v) {
    v = Compile(schema);
    validators.set(schema, v);
  }
  if (v.Check(json)) return null;
  const [first] = v.Errors(json);
  const field = `response${first?.instancePath ?? ''}`;
  return { field, text: `${field} ${first?.message ?? 'does not match the protocol'}` };
}
