import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startInProcessServer } from '../helpers/server.js';

const B = Buffer.alloc(32, 1).toString('base64');
const NONCE = Buffer.alloc(32, 2).toString('base64');
const GOOD = {
  agentVersion: '1.2.3+build_7-rc.1',
  agentHash: 'a'.repeat(64),
  configHash: 'b'.repeat(64),
  kernel: '6.1.0-18-amd64',
  os: { PRETTY_NAME: 'Debian GNU/Linux 12 (bookworm)', ID: 'debian' },
};

function renewBody(claims: unknown) {
  return {
    deviceId: 'dev-0000000000000000',
    nonce: NONCE,
    sessionKeyPub: B,
    certify: { attest: B, signature: B },
    quote: { attest: B, signature: B },
    pcrValues: { '0': B },
    claims,
    csr: B,
  };
}

test('claims have strict schemas: terminal controls, odd versions, unknown members and bad os-release keys are refused before any work', async (t) => {
  const s = await startInProcessServer({});
  t.after(() => s.close());
  const app = s.server.app;
  const post = (claims: unknown) => app.inject({ method: 'POST', url: '/v1/renew', payload: renewBody(claims) });

  // a well-formed body passes the schema and reaches the service (an unknown device there)
  const ok = await post(GOOD);
  assert.notEqual(ok.json().error.code, 'bad_request', ok.body);

  const hostile: [string, unknown][] = [
    ['OSC 52 clipboard write in agentVersion', { agentVersion: '1.0\u001b]52;c;aGk=\u0007\u001b[2K' }],
    ['space in agentVersion', { agentVersion: '1.0 beta' }],
    ['empty agentVersion', { agentVersion: '' }],
    ['65-character agentVersion', { agentVersion: '1'.repeat(65) }],
    ['C1 CSI (U+009B) in kernel', { agentVersion: '1.0.0', kernel: '6.1\u009b2K' }],
    ['newline in kernel', { agentVersion: '1.0.0', kernel: '6.1\nfake line' }],
    ['257-character kernel', { agentVersion: '1.0.0', kernel: 'k'.repeat(257) }],
    ['ESC in an os-release value', { agentVersion: '1.0.0', os: { PRETTY_NAME: 'Debian\u001b[31m' } }],
    ['lower-case os-release key', { agentVersion: '1.0.0', os: { pretty_name: 'x' } }],
    ['control character in an os-release key', { agentVersion: '1.0.0', os: { 'ID\u0007': 'x' } }],
    ['space in agentHash', { agentVersion: '1.0.0', agentHash: 'ab cd' }],
    ['an unknown claim member', { agentVersion: '1.0.0', note: '\u001b[2K' }],
  ];
  for (const [name, claims] of hostile) {
    const r = await post(claims);
    assert.equal(r.statusCode, 400, `${name}: ${r.body}`);
    assert.equal(r.json().error.code, 'bad_request', name);
    assert.match(r.json().error.message, /claims/, `${name}: the message names the field`);
  }
});
