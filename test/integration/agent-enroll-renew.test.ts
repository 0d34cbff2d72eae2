/**
 * The agent against a real edgeid-server process and a real swtpm: enrollment with a pinned
 * server, the renewal loop, recovery after a server outage longer than the certificate lifetime,
 * and the state dir's contents.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createPrivateKey, createHash } from 'node:crypto';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  SWTPM_LOCALCA_ISSUER,
  SWTPM_LOCALCA_ROOT,
  extendBootPcrs,
  startSwtpm,
  transientHandleCountViaTools,
} from '../../scripts/harness/swtpm.js';
import { notPrivate, tmpDir } from '../../scripts/harness/fs.js';
import { createToken, startServerProcess } from '../../scripts/harness/server.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { agentCli, spawnAgent } from '../helpers/agent.js';

const FAST = {
  allowShortLifetimes: true,
  rateLimit: { enroll: { max: 1000, window: 60 }, renew: { max: 1000, window: 60 } },
  ek: { roots: [SWTPM_LOCALCA_ROOT], intermediates: [SWTPM_LOCALCA_ISSUER], requireEkCertificate: true },
};

/** Renewals of short certificates on a busy machine. */
const SLOW = { timeoutMs: 120_000, intervalMs: 200 };

async function readState(dir: string): Promise<any> {
  return JSON.parse(await readFile(path.join(dir, 'state.json'), 'utf8'));
}

/** Fails if any file in the state dir holds a private key in PEM or (PKCS#8/SEC1/PKCS#1) DER form. */
async function assertNoPrivateKey(dir: string): Promise<number> {
  let scanned = 0;
  const walk = async (d: string): Promise<void> => {
    for (const name of await readdir(d)) {
      const p = path.join(d, name);
      if ((await stat(p)).isDirectory()) {
        await walk(p);
        continue;
      }
      scanned++;
      const bytes = await readFile(p);
      assert.doesNotMatch(bytes.toString('latin1'), /PRIVATE KEY/, `${p} holds a PEM private key`);
      for (const type of ['pkcs8', 'sec1', 'pkcs1'] as const) {
        let parsed = false;
        try {
          createPrivateKey({ key: bytes, format: 'der', type });
          parsed = true;
        } catch {
          // expected: not a private key
        }
        assert.equal(parsed, false, `${p} parses as a ${type} DER private key`);
      }
    }
  };
  await walk(dir);
  return scanned;
}

test('enrolls through a pinned server, renews with a new serial and key each time, and keeps no private key on disk', async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const srv = await startServerProcess({ config: { ...FAST, zones: { default: { lifetime: 6 } } } });
  t.after(() => srv.close());
  const stateDir = path.join(await tmpDir('edgeid-agent-', t), 'state');
  const { uri } = await createToken(srv);

  const enrolled = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--json']);
  assert.equal(enrolled.code, 0, enrolled.stderr);
  const result = JSON.parse(enrolled.stdout) as { deviceId: string; serial: string };
  assert.match(result.deviceId, /^dev-/);
  assert.equal((await stat(stateDir)).mode & 0o777, 0o700);
  for (const f of ['state.json', 'cert.pem', 'ca.pem', 'ak.pub', 'ak.priv'])
    assert.equal((await stat(path.join(stateDir, f))).mode & 0o777, 0o600, f);
  const cert = new X509Certificate(await readFile(path.join(stateDir, 'cert.pem')));
  assert.match(cert.subject, new RegExp(`CN=${result.deviceId}`));
  const state0 = await readState(stateDir);
  assert.equal(state0.pendingEnrollment, undefined, 'the token is gone from the state once enrolled');
  assert.doesNotMatch(JSON.stringify(state0), new RegExp(uri.split('token=')[1]!.split('&')[0]!), 'no token left on disk');

  const again = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti]);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /\[already_enrolled\]/);

  const agent = spawnAgent(['run', '--state', stateDir, '--tcti', tpm.tcti, '--log-level', 'info']);
  t.after(() => {
    agent.child.kill('SIGKILL');
  });
  const serials = new Set<string>([result.serial]);
  const keys = new Set<string>([
    createHash('sha256')
      .update(cert.publicKey.export({ type: 'spki', format: 'der' }))
      .digest('hex'),
  ]);
  await waitFor(
    '3 renewals',
    async () => {
      const s = await readState(stateDir).catch(() => null);
      if (s?.certificate && !serials.has(s.certificate.serial)) {
        serials.add(s.certificate.serial);
        const c = new X509Certificate(s.certificate.pem);
        keys.add(
          createHash('sha256')
            .update(c.publicKey.export({ type: 'spki', format: 'der' }))
            .digest('hex'),
        );
      }
      return serials.size >= 4;
    },
    SLOW,
  );
  assert.equal(keys.size, serials.size, 'every renewal certifies a new TPM session key');

  const status = await agentCli(['status', '--state', stateDir, '--json']);
  assert.equal(status.code, 0, status.stderr);
  const st = JSON.parse(status.stdout);
  assert.equal(st.running, true);
  assert.equal(st.device.id, result.deviceId);
  assert.ok(st.renewal.total >= 3);
  assert.ok(st.renewal.tpmCommandsPerRenewal > 0);
  assert.equal(st.renewal.last.ok, true);

  agent.child.kill('SIGTERM');
  assert.equal(await agent.exit, 0);
  // after enrollment, renewals and a stop, everything the agent wrote is private (0700 / 0600)
  assert.deepEqual(await notPrivate(stateDir), []);
  assert.ok((await assertNoPrivateKey(stateDir)) >= 6);
  // only the current session key (and at most the previous one) remain
  const sessions = (await readdir(stateDir)).filter((n) => n.startsWith('session-'));
  assert.ok(sessions.length === 2 || sessions.length === 4, sessions.join(','));
  assert.equal(await transientHandleCountViaTools(tpm.tcti), 0);
  assert.match(agent.log(), /"msg":"certificate renewed"/);
});

test('refuses an enrollment server whose CA does not match the pinned fingerprint, naming both', async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const srv = await startServerProcess();
  t.after(() => srv.close());
  const stateDir = await tmpDir('edgeid-agent-', t);
  const { token } = await createToken(srv);
  const wrong = `sha256:${'ab'.repeat(32)}`;
  const r = await agentCli([
    'enroll',
    '--server',
    srv.url,
    '--token',
    token,
    '--ca-fingerprint',
    wrong,
    '--state',
    stateDir,
    '--tcti',
    tpm.tcti,
  ]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /\[server_fingerprint_mismatch\]/);
  assert.ok(r.stderr.includes(wrong), 'names the expected fingerprint');
  assert.ok(r.stderr.includes(srv.caFingerprint), 'names the presented CA fingerprint');
  assert.deepEqual(
    (await readdir(stateDir)).filter((n) => n !== 'lock'),
    [],
    'nothing was created before the server was trusted',
  );
});

test('recovers by itself after the server was down longer than the certificate lifetime', async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const srv = await startServerProcess({ config: { ...FAST, zones: { default: { lifetime: 5 } } } });
  t.after(() => srv.close());
  const dir = await tmpDir('edgeid-agent-', t);
  const stateDir = path.join(dir, 'state');
  const configFile = path.join(dir, 'agent.json');
  await writeFile(configFile, JSON.stringify({ renewal: { backoffBaseMs: 200, backoffCapMs: 1500 } }));
  const { uri } = await createToken(srv);
  const enrolled = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--config', configFile]);
  assert.equal(enrolled.code, 0, enrolled.stderr);
  const deviceId = (await readState(stateDir)).device.id;

  const agent = spawnAgent(['run', '--state', stateDir, '--tcti', tpm.tcti, '--config', configFile]);
  t.after(() => {
    agent.child.kill('SIGKILL');
  });
  await waitFor('a first renewal', async () => ((await readState(stateDir)).renewals ?? 0) >= 1, SLOW);
  await srv.stop();
  const expiredAt = Date.parse((await readState(stateDir)).certificate.notAfter);
  // wait until the certificate has expired and the agent has failed at least once against the dead server
  await waitFor(
    'expiry and failed renewals',
    async () => {
      const s = await readState(stateDir);
      return Date.now() > expiredAt + 2000 && s.lastRenewal?.ok === false && s.lastRenewal.code === 'server_unreachable';
    },
    SLOW,
  );
  const before = (await readState(stateDir)).renewals;
  await srv.start();
  const after = await waitFor(
    'a renewal after the outage',
    async () => {
      const s = await readState(stateDir);
      return s.renewals > before && s.lastRenewal?.ok ? s : null;
    },
    SLOW,
  );
  assert.equal(after.device.id, deviceId, 'same identity, no re-enrollment');
  assert.equal(after.lastRenewal.reason, 'expired', 'renewed by attestation alone although the certificate had expired');
  assert.ok(Date.parse(after.certificate.notAfter) > Date.now() - 1000);
  assert.match(agent.log(), /"code":"server_unreachable"/, 'failed attempts are logged with their reason code');
  agent.child.kill('SIGTERM');
  assert.equal(await agent.exit, 0);
});
