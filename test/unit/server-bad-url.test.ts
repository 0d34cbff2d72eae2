/**
 * A request whose path holds an invalid percent-encoding (`%zz`, or the UTF-8 bytes of a lone
 * surrogate `%ED%A0%80`) fails in Fastify's router before any route or hook; it still gets the API's
 * error form with a registered code, and counts against the per-address limit.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ERRORS } from '../../protocol/errors/index.js';
import { startInProcessServer } from '../helpers/server.js';

test('an invalid percent-encoding in the path gets an edgeid error code and counts against the per-address limit', async (t) => {
  const srv = await startInProcessServer({ rateLimit: { perAddress: { max: 3, window: 60 } } });
  t.after(() => srv.close());
  const statuses: number[] = [];
  for (let i = 0; i < 5; i++) {
    const res = await srv.server.app.inject({ method: 'GET', url: '/v1/admin/devices/%ED%A0%80', remoteAddress: '192.0.2.7' });
    statuses.push(res.statusCode);
    const body = res.json() as { error?: { code?: string } };
    assert.equal(typeof body.error, 'object', `edgeid error body, got ${res.body}`);
    assert.ok(body.error?.code && body.error.code in ERRORS, `a registered code, got ${res.body}`);
  }
  assert.deepEqual(statuses.slice(3), [429, 429], `per-address limit applies: ${statuses.join(',')}`);
});
