/**
 * Rows written through the server's own store, as enrollment writes them, for tests and benches that
 * need many enrolled devices without a TPM each (the crowd of broker-scale tests, seeded data dirs).
 */
import { randomBytes } from 'node:crypto';
import type { ServerContext } from '../../enroll-server/services/context.js';

/**
 * The store half of `enroll/start` for token `tokenId`: an open enrollment session for a random EK
 * (what `finishEnrollment` then spends). Returns the session, the EK hash and the time used.
 */
export async function openEnrollmentSession(
  ctx: ServerContext,
  tokenId: string,
): Promise<{ sessionId: string; ekHash: string; now: number }> {
  const now = Date.now();
  const ekHash = randomBytes(32).toString('hex');
  const sessionId = randomBytes(16).toString('hex');
  const started = await ctx.store.startEnrollment({
    tokenId,
    ekHash,
    now,
    session: {
      id: sessionId,
      tokenId,
      ekHash,
      akPub: randomBytes(64),
      secretHash: randomBytes(32),
      nonce: randomBytes(32),
      ip: '127.0.0.1',
      createdAt: now,
      expiresAt: now + 60_000,
      usedAt: null,
    },
    audit: { time: now, actor: 'device', event: 'enroll.start', ip: '127.0.0.1', outcome: 'ok', details: { tokenId, ekHash } },
  });
  if (started !== 'ok') throw new Error(`startEnrollment said ${started}`);
  return { sessionId, ekHash, now };
}
