/**
 * edgeid-admin checks every answer of the admin API against the protocol/api.ts schema of that
 * response: a malformed answer is a server_error naming the field, never a half-typed object.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { AdminClient } from '../../enroll-server/admin/client.js';
import { CertificateAuthority } from '../../enroll-server/ca/ca.js';
import { RevokeResponse, type RevokeResponse as RevokeResponseT } from '../../protocol/api.js';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { tmpDir } from '../../scripts/harness/fs.js';

const DEVICE = {
  id: 'dev-0000000000000001',
  zone: 'default',
  owner: 'ops',
  name: null,
  purpose: null,
  status: 'revoked',
  statusReason: 'revoked: superseded',
  posture: 'ok',
  enrolledBy: 'token:t1',
  enrolledAt: '2026-01-01T00:00:00.000Z',
  retireBy: null,
  lastSeen: null,
  lastIp: null,
  stale: false,
  baselineWindowUntil: null,
  ekHash: 'ab',
  claims: null,
  baseline: null,
  certificateNotAfter: null,
};
const GOOD: RevokeResponseT = {
  device: DEVICE as RevokeResponseT['device'],
  serials: ['01'],
  crlNumber: '2',
  hooks: [{ hook: 'broker.onDeviceRevoked', ok: true, ms: 3 }],
};

test('an admin API answer that does not match its schema is a server_error naming the field', async (t) => {
  const ca = await CertificateAuthority.open({ dir: await tmpDir('edgeid-admin-client-', t), hostnames: [] });
  let answer: { status: number; body: unknown } = { status: 200, body: GOOD };
  let authorization: string | undefined;
  const server = https.createServer({ key: ca.tls.key, cert: ca.tls.cert }, (req, res) => {
    authorization = req.headers.authorization;
    res.writeHead(answer.status, { 'content-type': 'application/json' });
    res.end(typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const client = new AdminClient({
    server: url,
    token: 'x',
    ca: ca.chainPem.join(''),
    from: { server: 'test', token: 'test', ca: 'test' },
  });
  const revoke = () => client.request('POST', `/v1/admin/devices/${DEVICE.id}/revoke`, { reason: 'superseded' }, RevokeResponse);

  assert.deepEqual(await revoke(), GOOD);
  assert.equal(authorization, 'Bearer x');

  const cases: [string, unknown, string][] = [
    ['a missing member', { ...GOOD, crlNumber: undefined }, 'response'],
    ['a member of the wrong type', { ...GOOD, serials: '01' }, 'response/serials'],
    ['a nested member out of its enum', { ...GOOD, device: { ...DEVICE, status: 'lost' } }, 'response/device/status'],
    ['an array element of the wrong shape', { ...GOOD, hooks: [{ hook: 'h', ok: 'yes', ms: 1 }] }, 'response/hooks/0/ok'],
    ['not JSON', 'revoked', ''],
  ];
  for (const [what, body, field] of cases) {
    answer = { status: 200, body };
    await assert.rejects(
      revoke(),
      (e) =>
        isEdgeidError(e, 'server_error') &&
        (field === '' ? /not JSON/.test(e.message) : e.details?.field === field && e.message.includes('malformed response')),
      what,
    );
  }

  // the server's own error bodies keep their codes
  answer = { status: 409, body: { error: { code: 'device_state_conflict', message: 'device dev-0000000000000001 is already revoked' } } };
  await assert.rejects(revoke(), (e) => isEdgeidError(e, 'device_state_conflict') && /already revoked/.test(e.message));

  // raw answers (the CA chain) come back as bytes, without the admin token when asked so
  answer = { status: 200, body: '-----BEGIN CERTIFICATE-----\n' };
  assert.equal((await client.raw('GET', '/v1/ca', { auth: false })).toString('utf8'), '-----BEGIN CERTIFICATE-----\n');
  assert.equal(authorization, undefined);
});
