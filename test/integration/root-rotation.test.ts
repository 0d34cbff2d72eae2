/**
 * Root rotation, first steps (docs/BACKUP-AND-CA-ROTATION.md): an agent enrolled under root R1
 * (real edgeid-server process, real swtpm, the agent CLI) → `edgeid-admin ca rotate-root` → the
 * server restarts (R2 and X(R2) are reloaded from data/ca) → the agent renews without enrolling
 * again; its new certificate is issued by the issuing CA under R2 and chains to R1 through X(R2)
 * (`openssl verify -CAfile R1 -untrusted issuing+X(R2)`); the server's TLS chain verifies with R1
 * alone, and so does a broker certificate issued now; the agent pins R2 as a second root and
 * `status` shows it; a device enrolled after the rotation pins R2 at enrollment. A second test feeds the agent's
 * check forged next roots (no cross certificate for the key, a cross certificate by another root,
 * a non-self-signed R2): none is pinned, each with next_root_invalid.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate, generateKeyPairSync, webcrypto } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { connect as tlsConnect } from 'node:tls';
import path from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import * as x509 from '@peculiar/x509';
import { certFingerprint, type IssueResponse } from '../../protocol/api.js';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { CertificateAuthority } from '../../enroll-server/ca/ca.js';
import { verifyControlCommand } from '../../protocol/control.js';
import { openIssuerSigner } from '../../enroll-server/ca/keys.js';
import { serverPins, verifyNextRoot } from '../../agent/identity.js';
import type { AgentState } from '../../agent/state/store.js';
import { SWTPM_LOCALCA_ISSUER, SWTPM_LOCALCA_ROOT, extendBootPcrs, startSwtpm } from '../../scripts/harness/swtpm.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { adminCli, createToken, startServerProcess } from '../../scripts/harness/server.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { agentCli, spawnAgent } from '../helpers/agent.js';

const exec = promisify(execFile);
const cn = (subject: string) => /CN=([^,\n]+)/.exec(subject)?.[1];

async function readState(dir: string): Promise<AgentState> {
  return JSON.parse(await readFile(path.join(dir, 'state.json'), 'utf8')) as AgentState;
}

/** The certificates the server presents on a TLS connection verified against `ca` alone (rejects if it does not verify). */
function serverChainWith(port: number, ca: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
      const out: string[] = [];
      let c = s.getPeerCertificate(true);
      const seen = new Set<string>();
      while (c?.raw && !seen.has(c.fingerprint256)) {
        seen.add(c.fingerprint256);
        out.push(c.subject.CN as string);
        c = c.issuerCertificate;
      }
      s.destroy();
      resolve(out);
    });
    s.on('error', reject);
  });
}

test('root rotation: an agent pinned to R1 renews onto an issuing CA under R2 through X(R2) and pins R2', async (t) => {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const srv = await startServerProcess({
    config: {
      allowShortLifetimes: true,
      rateLimit: { enroll: { max: 1000, window: 60 }, renew: { max: 1000, window: 60 } },
      ek: { roots: [SWTPM_LOCALCA_ROOT], intermediates: [SWTPM_LOCALCA_ISSUER], requireEkCertificate: true },
      zones: { default: { lifetime: 6 } },
    },
  });
  t.after(() => srv.close());
  const dir = await tmpDir('edgeid-rootrot-', t);
  const stateDir = path.join(dir, 'state');
  const { uri } = await createToken(srv);
  const r1Pem = srv.caPem;

  const enrolled = await agentCli(['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--json']);
  assert.equal(enrolled.code, 0, enrolled.stderr);
  const { deviceId } = JSON.parse(enrolled.stdout) as { deviceId: string };
  const s0 = await readState(stateDir);
  assert.equal(s0.server.nextRootFingerprint, undefined);
  assert.equal(cn(new X509Certificate(s0.certificate!.pem).issuer), 'edgeid Issuing CA');

  const rotated = JSON.parse(await adminCli(srv.dataDir, ['ca', 'rotate-root', '--json'])) as {
    issuer: string;
    previous: string;
    root: { subject: string; fingerprint: string; pem: string; crossPem: string };
    status: { cas: { ca: string }[] };
  };
  assert.equal(rotated.previous, 'intermediate');
  assert.equal(rotated.issuer, 'issuing-2');
  assert.equal(rotated.root.subject, 'CN=edgeid Root CA 2, O=edgeid');
  assert.equal(certFingerprint(new X509Certificate(rotated.root.pem).raw), rotated.root.fingerprint);
  assert.notEqual(rotated.root.fingerprint, srv.caFingerprint);
  assert.ok(rotated.status.cas.some((c) => c.ca === 'root-2') && rotated.status.cas.some((c) => c.ca === 'root-2-cross'));
  const cross = new X509Certificate(rotated.root.crossPem);
  const r1 = new X509Certificate(r1Pem);
  assert.ok(cross.ca && cross.checkIssued(r1) && cross.verify(r1.publicKey), 'X(R2) is a CA certificate issued by R1');
  assert.equal(cross.subject, new X509Certificate(rotated.root.pem).subject);
  // a second root rotation is refused and changes nothing
  await assert.rejects(adminCli(srv.dataDir, ['ca', 'rotate-root']), /ca_rotation_invalid/);

  // R2 and X(R2) come back from data/ca at start
  await srv.stop();
  await srv.start();
  // the server's TLS chain (leaf, issuing under R2, X(R2)) verifies with R1 alone
  assert.deepEqual(await serverChainWith(srv.port, r1Pem), ['edgeid server', 'edgeid Issuing CA 2', 'edgeid Root CA 2', 'edgeid Root CA']);

  const agent = spawnAgent(['run', '--state', stateDir, '--tcti', tpm.tcti, '--log-level', 'info']);
  t.after(() => {
    agent.child.kill('SIGKILL');
  });
  await waitFor(
    'a renewal under R2 with R2 pinned',
    async () => {
      const s = await readState(stateDir).catch(() => null);
      return (
        !!s?.certificate && cn(new X509Certificate(s.certificate.pem).issuer) === 'edgeid Issuing CA 2' && !!s.server.nextRootFingerprint
      );
    },
    { timeoutMs: 60_000, intervalMs: 200 },
  );
  const st = await agentCli(['status', '--state', stateDir, '--json']);
  assert.equal(st.code, 0, st.stderr);
  const status = JSON.parse(st.stdout) as { device: { id: string }; pins: { root: string; nextRoot: string } };
  assert.deepEqual(status.pins, { root: srv.caFingerprint, nextRoot: rotated.root.fingerprint });
  const text = await agentCli(['status', '--state', stateDir]);
  assert.match(text.stdout, new RegExp(`next root ${rotated.root.fingerprint}`));
  agent.child.kill('SIGTERM');
  assert.equal(await agent.exit, 0);

  const s1 = await readState(stateDir);
  assert.equal(s1.device!.id, deviceId, 'renewed, not enrolled again');
  assert.equal(s1.server.caFingerprint, srv.caFingerprint, 'the first pin is kept');
  assert.equal(certFingerprint(new X509Certificate(s1.server.nextRootPem!).raw), rotated.root.fingerprint);
  // the chain the device got: [issuing (R2), X(R2), R1]
  const chain = s1.certificate!.chain.map((p) => new X509Certificate(p));
  assert.deepEqual(
    chain.map((c) => [cn(c.subject), cn(c.issuer)]),
    [
      ['edgeid Issuing CA 2', 'edgeid Root CA 2'],
      ['edgeid Root CA 2', 'edgeid Root CA'],
      ['edgeid Root CA', 'edgeid Root CA'],
    ],
  );
  const f = (n: string) => path.join(dir, n);
  await writeFile(f('r1.pem'), r1Pem);
  await writeFile(f('r2.pem'), rotated.root.pem);
  await writeFile(f('untrusted.pem'), s1.certificate!.chain.slice(0, 2).join(''));
  await writeFile(f('issuing.pem'), s1.certificate!.chain[0]!);
  await writeFile(f('leaf.pem'), s1.certificate!.pem);
  const viaR1 = await exec('openssl', ['verify', '-CAfile', f('r1.pem'), '-untrusted', f('untrusted.pem'), f('leaf.pem')]);
  assert.match(viaR1.stdout, /leaf\.pem: OK/);
  const viaR2 = await exec('openssl', ['verify', '-CAfile', f('r2.pem'), '-untrusted', f('issuing.pem'), f('leaf.pem')]);
  assert.match(viaR2.stdout, /leaf\.pem: OK/);
  // without X(R2), R1 alone does not reach the new certificate
  await assert.rejects(exec('openssl', ['verify', '-CAfile', f('r1.pem'), '-untrusted', f('issuing.pem'), f('leaf.pem')]));
  assert.match(agent.log(), /"msg":"pinned the next root of the server/);

  // a broker TLS certificate issued now comes with its chain through X(R2): R1 alone verifies it
  const brokerKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  const bc = await srv.admin<{ certificate: string; caBundle: string }>('POST', '/v1/admin/broker/certificate', {
    spki: brokerKey.toString('base64'),
    hostnames: ['localhost'],
  });
  assert.equal(bc.status, 200, JSON.stringify(bc.body));
  await writeFile(f('broker.pem'), bc.body.certificate);
  const broker = await exec('openssl', ['verify', '-CAfile', f('r1.pem'), '-untrusted', f('broker.pem'), f('broker.pem')]);
  assert.match(broker.stdout, /broker\.pem: OK/);
  // the broker's cafile holds X(R2) and R2 besides R1 and the issuing CAs
  const bundle = bc.body.caBundle
    .split(/(?<=-----END CERTIFICATE-----)\s*/)
    .filter((p) => p.trim())
    .map((p) => cn(new X509Certificate(p).subject));
  assert.deepEqual(bundle, ['edgeid Issuing CA 2', 'edgeid Issuing CA', 'edgeid Root CA 2', 'edgeid Root CA 2', 'edgeid Root CA']);

  // a device enrolled after the rotation (the link still pins R1) pins R2 at enrollment
  const tpm2 = await startSwtpm();
  t.after(() => tpm2.stop());
  await extendBootPcrs(tpm2.tcti);
  const stateDir2 = path.join(dir, 'state2');
  const second = await agentCli(['enroll', '--uri', (await createToken(srv)).uri, '--state', stateDir2, '--tcti', tpm2.tcti, '--json']);
  assert.equal(second.code, 0, second.stderr);
  const s2 = await readState(stateDir2);
  assert.equal(s2.server.caFingerprint, srv.caFingerprint);
  assert.equal(s2.server.nextRootFingerprint, rotated.root.fingerprint);
  assert.equal(cn(new X509Certificate(s2.certificate!.pem).issuer), 'edgeid Issuing CA 2');
});

/** A self-signed CA certificate with `subject` for `keys` (or signed by `by`). */
async function caCert(subject: string, keys: webcrypto.CryptoKeyPair, by?: { subject: string; key: webcrypto.CryptoKey }): Promise<string> {
  const c = await x509.X509CertificateGenerator.create({
    serialNumber: '01',
    subject,
    issuer: by?.subject ?? subject,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86400_000),
    publicKey: keys.publicKey,
    signingKey: by?.key ?? keys.privateKey,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
  });
  return c.toString('pem') + '\n';
}

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const newKeys = () => webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']) as Promise<webcrypto.CryptoKeyPair>;

test('a forged next root is not pinned (next_root_invalid); a rotation is refused with the issuing key in a token', async (t) => {
  const dir = await tmpDir('edgeid-rootrot-ca-', t);
  const ca = await CertificateAuthority.open({ dir, hostnames: [] });
  const chainBefore = ca.chainPem;
  await ca.prepareRoot();
  await ca.activateIssuing(await ca.prepareIssuing(Date.now(), 'root-2'));
  const chain = ca.chainPem;
  const r2Pem = ca.nextRootPem!;
  assert.equal(chain.length, 3);
  const state: AgentState = {
    version: 1,
    server: { url: 'https://127.0.0.1:1', caFingerprint: ca.fingerprint, rootPem: ca.rootPem },
    renewals: 0,
    nextSessionKey: 1,
  } as AgentState;
  const log = pino({ level: 'silent' });
  const resp = (nextRoot: string, c = chain) => ({ chain: c, nextRoot }) as IssueResponse;
  const refusal = (nextRoot: string, c = chain): string => {
    try {
      verifyNextRoot(c, nextRoot, ca.rootPem);
    } catch (e) {
      assert.ok(isEdgeidError(e));
      assert.equal(e.code, 'next_root_invalid');
      // and the state's pins are unchanged
      assert.equal(serverPins(state, resp(nextRoot, c), log, Date.now()), state.server);
      return e.message;
    }
    assert.fail('a forged next root was accepted');
  };

  // the real one is pinned
  const pinned = serverPins(state, resp(r2Pem), log, Date.now());
  assert.equal(pinned.nextRootFingerprint, certFingerprint(new X509Certificate(r2Pem).raw));

  // a control command signed under R2 reaches R1 for an agent that has not renewed since (its trust: R1 and the old chain)
  const deviceId = 'dev-0123456789abcdef';
  const cmd = verifyControlCommand(JSON.stringify(ca.signControl({ type: 'renew-now', deviceId })), {
    deviceId,
    trust: [ca.rootPem, ...chainBefore],
  });
  assert.equal(cmd.type, 'renew-now');

  // same subject as R2, another key: the chain's X(R2) does not name its key
  const other = await caCert('CN=edgeid Root CA 2, O=edgeid', await newKeys());
  assert.match(refusal(other), /no cross certificate/);
  // the real R2, but the chain holds no cross certificate
  assert.match(refusal(r2Pem, [chain[0]!, chain[2]!]), /no cross certificate/);
  // R2' with a cross certificate X' by an attacker's root that uses R1's subject
  const evilRoot = await newKeys();
  const r2Keys = await newKeys();
  const forgedR2 = await caCert('CN=edgeid Root CA 2, O=edgeid', r2Keys);
  const forgedX = await caCert('CN=edgeid Root CA 2, O=edgeid', r2Keys, {
    subject: new x509.X509Certificate(ca.rootPem).subject,
    key: evilRoot.privateKey,
  });
  // (it names R1 as its issuer: only the signature tells it apart)
  assert.ok(new X509Certificate(forgedX).checkIssued(new X509Certificate(ca.rootPem)));
  assert.match(refusal(forgedR2, [chain[0]!, forgedX, chain[2]!]), /does not verify under the pinned root/);
  // a "next root" that is not self-signed (the cross certificate itself)
  assert.match(refusal(chain[1]!), /not a self-signed CA/);

  // the issuing key in a PKCS#11 token (here: any configured signer): refused, no root-2 files
  const hsmDir = await tmpDir('edgeid-rootrot-hsm-', t);
  await CertificateAuthority.open({ dir: hsmDir, hostnames: [] });
  const signer = await openIssuerSigner({ kind: 'file', path: path.join(hsmDir, 'intermediate.key') });
  const withToken = await CertificateAuthority.open({ dir: hsmDir, hostnames: [], issuer: signer });
  await assert.rejects(withToken.prepareRoot(), (e: unknown) => isEdgeidError(e) && e.code === 'ca_rotation_invalid');
  assert.equal(withToken.nextRoot, null);
});
