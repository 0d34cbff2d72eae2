/**
 * The agent checks every answer of the enrollment server against the protocol/api.ts schema of
 * that response: a malformed answer is a server_error naming the field, never a half-typed object.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ServerClient } from '../../agent/server-client.js';
import { CertificateAuthority } from '../../enroll-server/ca/ca.js';
import { RenewChallengeResponse } from '../../protocol/api.js';
import { isEdgeidError } from '../../protocol/errors/index.js';

const GOOD = {
  nonce: 'A'.repeat(43) + '=',
  expiresAt: '2026-01-01T00:00:00.000Z',
  pcrs: [0, 1, 2],
  deviceId: 'dev-0000000000000001',
  zone: 'default',
};

test('a response that does not match its schema is a server_error naming the field', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-client-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const ca = await CertificateAuthority.open({ dir, hostnames: [] });
  let answer: { status: number; body: unknown } = { status: 200, body: GOOD };
  const server = https.createServer({ key: ca.tls.key, cert: ca.tls.cert }, (_req, res) => {
    res.writeHead(answer.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(answer.body));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const client = new ServerClient(`https://127.0.0.1:${(server.address() as AddressInfo).port}`, { caPem: ca.chainPem.join('') });
  t.after(() => client.close());
  const ask = () => client.post('/v1/renew/challenge', { deviceId: GOOD.deviceId }, RenewChallengeResponse);

  assert.deepEqual(await ask(), GOOD);

  const cases: [string, unknown, RegExp][] = [
    ['a missing member', { ...GOOD, nonce: undefined }, /nonce/],
    ['a member of the wrong type', { ...GOOD, pcrs: '0-7' }, /response\/pcrs/],
    ['an array element of the wrong type', { ...GOOD, pcrs: [0, 'x'] }, /response\/pcrs\/1/],
    ['not an object', [GOOD], /response/],
    ['null', null, /response/],
  ];
  for (const [what, body, field] of cases) {
    answer = { status: 200, body };
    await assert.rejects(
      ask(),
      (e) => isEdgeidError(e, 'server_error') && /malformed response/.test(e.message) && field.test(String(e.details?.field) + e.message),
      what,
    );
  }

  // the server's own error bodies keep their codes
  answer = { status: 404, body: { error: { code: 'device_not_found', message: 'no such device' } } };
  await assert.rejects(ask(), (e) => isEdgeidError(e, 'device_not_found'));
});
