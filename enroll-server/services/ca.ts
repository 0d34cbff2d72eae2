import type { ServerContext } from './context.js';
import { audited } from './audit.js';

/** POST /v1/admin/crl/regenerate: a new CRL now (number and nextUpdate of the short-lived one). */
export async function regenerateCrl(
  ctx: ServerContext,
  who: { actor: string; ip: string | null },
): Promise<{ number: string; nextUpdate: string }> {
  return audited(ctx, { event: 'admin.crl.regenerate', actor: who.actor, ip: who.ip }, async (a) => {
    const crl = await ctx.crl.regenerate('admin');
    a.details = { number: crl.number.toString() };
    return { number: crl.number.toString(), nextUpdate: crl.nextUpdate.toISOString() };
  });
}
