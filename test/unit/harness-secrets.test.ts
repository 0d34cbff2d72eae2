import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { assertNoSecrets, recordSecretsIn, recordToken, secretsIn } from '../../scripts/harness/secrets.js';
import { agentCli } from '../helpers/agent.js';

test('the harness records tokens from tool output and URIs and finds them, or their secret half, in a log', () => {
  const secret = randomBytes(24).toString('base64url');
  recordSecretsIn(JSON.stringify({ token: `tok_abc.${secret}`, uri: 'edgeid://enroll?server=x' }));
  assert.deepEqual(secretsIn(`{"msg":"enrolling","s":"${secret}"}`), ['enrollment token (secret part)']);
  const other = randomBytes(24).toString('base64url');
  recordSecretsIn(`edgeid://enroll?server=https%3A%2F%2Fh&token=tok_xyz.${other}&ca=sha256:00`);
  assert.throws(
    () => assertNoSecrets('a log', `... tok_xyz.${other} ...`),
    (e: Error) => /a log contains a secret/.test(e.message) && !e.message.includes(other),
  );
  assert.doesNotThrow(() => assertNoSecrets('a log', 'nothing to see'));
});

test('an agent run whose output holds a secret of the run fails on its own, without the test asking', async () => {
  const secret = randomBytes(24).toString('base64url');
  recordToken(`tok_leak.${secret}`);
  // the agent names the state dir it cannot use: a path holding the secret leaks it into the output
  await assert.rejects(
    agentCli(['status', '--state', `/nonexistent/${secret}`]),
    /edgeid-agent status output contains a secret of this test run: enrollment token \(secret part\)/,
  );
});
