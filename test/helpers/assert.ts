/** Assertions on edgeid's coded errors (protocol/errors). */
import assert from 'node:assert/strict';
import { isEdgeidError, type ErrorCode } from '../../protocol/errors/index.js';

/** `fn` throws an EdgeidError with exactly this code (the failure names what was thrown instead). */
export function assertCode(fn: () => unknown, code: ErrorCode): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isEdgeidError(e), `expected an EdgeidError ${code}, got ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  });
}
