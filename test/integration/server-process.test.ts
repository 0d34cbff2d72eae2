/**
 * The real thing: `edgeid-server` as a child process over HTTPS, `edgeid-admin` as a child
 * process, devices on swtpm driven through agent/tpm. Enrollment, several renewals, the issued
 * certificate checked by `openssl verify` against the served chain, revocation and
 * `openssl verify -crl_check` with the served CRL, renewal of an expired certificate.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as x509 from '@peculiar/x509';
import { startSwtpm, extendBootPcrs, SWTPM_LOCALCA_ROOT, SWTPM_LOCALCA_ISSUER } from '../../scripts/harness/swtpm.js';
import { TestDevice, httpsTransport } from '../helpers/device.js';
import { notPrivate, REPO } from '../../scripts/harness/fs.js';
import { startServerProcess } from '../../scripts/harness/server.js';
import { programCommand } from '../../scripts/harness/bins.js';

const run = promisify(execFile);

function admin(dataDir: string, args: string[]): { status: number; stdout: string; stderr: string } {
  const [program, ...pre] = programCommand('edgeid-admin');
  const r = spawnSync(program, [...pre, ...args, '--data', dataDir], {
    cwd: REPO,
    encoding: 'utf8',
    env: { ...process.env, EDGEID_SERVER: '', EDGEID_ADMIN_TOKEN: '', EDGEID_CA: '' },
  });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function get(url: string, ca: string, headers: Record<string, string> = {}): Promise<{ status: number; body: Buffer; type: string }> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { ca, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), type: String(res.headers['content-type']) }),
        );
      })
      .on('error', reject);
  });
}

async function opensslVerify(dir: string, leafPem: string, chain: string, crlPem?: string): Promise<{ ok: boolean; out: string }> {
  const [inter, root] = chain.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g)!;
  await writeFile(path.join(dir, 'leaf.pem'), leafPem);
  await writeFile(path.join(dir, 'inter.pem'), inter!);
  await writeFile(path.join(dir, 'root.pem'), root!);
  const args = ['verify', '-purpose', 'sslclient', '-CAfile', 'root.pem', '-untrusted', 'inter.pem'];
  if (crlPem) {
    await writeFile(path.join(dir, 'crl.pem'), crlPem);
    args.push('-crl_check', '-CRLfile', 'crl.pem');
  }
  args.push('leaf.pem');
  try {
    const { stdout, stderr } = await run('openssl', args, { cwd: dir });
    return { ok: true, out: stdout + stderr };
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    return { ok: false, out: `${err.stdout ?? ''}${err.stderr ?? ''}` };
  }
}

test('edgeid-server process: enroll, renew, openssl verify, revoke, CRL, admin CLI', { timeout: 600_000 }, async (t) => {
  const work = await mkdtemp(path.join(os.tmpdir(), 'edgeid-proc-test-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const serverConfig = {
    allowShortLifetimes: true,
    zones: { default: {}, short: { lifetime: '5s', maxOffline: '1h' } },
    ek: { roots: [SWTPM_LOCALCA_ROOT], intermediates: [SWTPM_LOCALCA_ISSUER], requireEkCertificate: true },
  };
  const dataDir = path.join(work, 'data');
  const srv = await startServerProcess({ config: serverConfig, dataDir });
  t.after(() => srv.stop());
  const [tpm, tpm2] = await Promise.all([startSwtpm(), startSwtpm()]);
  t.after(() => tpm.stop());
  t.after(() => tpm2.stop());
  await extendBootPcrs(tpm.tcti);
  await extendBootPcrs(tpm2.tcti);
  const http = httpsTransport(srv.info.url, srv.caPem);

  await t.test('creates the data dir 0700 with private files 0600', async () => {
    assert.equal((await stat(srv.dataDir)).mode & 0o777, 0o700);
    for (const f of ['admin-token', 'edgeid.db', 'ca/root.key', 'ca/intermediate.key', 'ca/server.key', 'ca/control.key']) {
      assert.equal((await stat(path.join(srv.dataDir, f))).mode & 0o777, 0o600, f);
    }
  });

  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  let leafs: string[] = [];

  await t.test('enrolls with a token from edgeid-admin and renews three times, each with a new serial and key', async () => {
    const tok = admin(srv.dataDir, [
      'token',
      'create',
      '--zone',
      'default',
      '--owner',
      'controls-team',
      '--name',
      'plc-gw-17',
      '--ttl',
      '8h',
      '--json',
    ]);
    assert.equal(tok.status, 0, tok.stderr);
    const created = JSON.parse(tok.stdout) as { token: string; uri: string; expiresAt: string };
    assert.match(created.uri, /^edgeid:\/\/enroll\?server=https/);
    assert.ok(
      created.uri.includes(encodeURIComponent(`sha256:${new X509Certificate(srv.caPem).fingerprint256.replace(/:/g, '').toLowerCase()}`)),
    );
    const res = await dev.enroll(http, created.token);
    assert.match(res.deviceId, /^dev-[0-9a-f]{16}$/);
    assert.deepEqual(res.mqtt.topics, { publish: `devices/${res.deviceId}/#`, control: `edgeid/${res.deviceId}/control` });
    leafs.push(res.certificate);
    for (let i = 0; i < 3; i++) {
      const r = await dev.renew(http);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.ok(Date.parse(r.body.renew.renewAfter) < Date.parse(r.body.renew.notAfter));
      leafs.push(r.body.certificate);
    }
    const certs = leafs.map((p) => new X509Certificate(p));
    assert.equal(new Set(certs.map((c) => c.serialNumber)).size, 4, 'new serial each time');
    assert.equal(
      new Set(certs.map((c) => c.publicKey.export({ type: 'spki', format: 'der' }).toString('hex'))).size,
      4,
      'new key each time',
    );
  });

  await t.test('the certificate verifies with openssl against the served chain and carries the required fields', async () => {
    const chain = (await get(`${srv.info.url}/v1/ca`, srv.caPem)).body.toString('utf8');
    const leaf = leafs[leafs.length - 1]!;
    const v = await opensslVerify(work, leaf, chain);
    assert.ok(v.ok, v.out);
    assert.match(v.out, /leaf\.pem: OK/);

    const c = new x509.X509Certificate(leaf);
    assert.equal(c.subject, `CN=${dev.deviceId}`);
    const san = c.getExtension(x509.SubjectAlternativeNameExtension)!;
    assert.deepEqual(san.names.toJSON(), [{ type: 'url', value: `urn:edgeid:default:${dev.deviceId}` }]);
    const eku = c.getExtension(x509.ExtendedKeyUsageExtension)!;
    assert.deepEqual([...eku.usages], [x509.ExtendedKeyUsage.clientAuth]);
    const ku = c.getExtension(x509.KeyUsagesExtension)!;
    assert.equal(ku.usages, x509.KeyUsageFlags.digitalSignature);
    assert.equal(ku.critical, true);
    assert.ok(c.getExtension(x509.SubjectKeyIdentifierExtension));
    const aki = c.getExtension(x509.AuthorityKeyIdentifierExtension)!;
    const inter = new x509.X509Certificate(chain.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/)![0]);
    assert.equal(aki.keyId, inter.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId);
    const dp = c.getExtension(x509.CRLDistributionPointsExtension)!;
    assert.equal(dp.distributionPoints[0]!.distributionPoint!.fullName![0]!.uniformResourceIdentifier, `${srv.info.url}/v1/crl`);
    const issuedAt = Date.now();
    assert.ok(issuedAt - c.notBefore.getTime() <= 60_000 + 30_000, 'notBefore backdated at most 60 s (30 s slack for the test)');
    assert.ok(c.notBefore.getTime() <= issuedAt);
    const span = (c.notAfter.getTime() - c.notBefore.getTime()) / 1000;
    assert.ok(span >= 3600 + 58 && span <= 3600 + 60, `lifetime 1 h plus the backdate, got ${span} s`);
    assert.equal(Buffer.from(c.serialNumber, 'hex').length, 16, '128-bit serial');
  });

  await t.test('revocation through edgeid-admin puts the certificate on the served CRL and refuses renewal', async () => {
    const r = admin(srv.dataDir, ['revoke', dev.deviceId!, '--reason', 'key-compromise', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const body = JSON.parse(r.stdout) as { serials: string[]; device: { status: string } };
    assert.equal(body.device.status, 'revoked');
    assert.equal(body.serials.length, 4, 'all unexpired certificates');

    const der = await get(`${srv.info.url}/v1/crl`, srv.caPem);
    assert.equal(der.status, 200);
    assert.equal(der.type, 'application/pkix-crl');
    const pem = await get(`${srv.info.url}/v1/crl?format=pem`, srv.caPem);
    assert.match(pem.body.toString('utf8'), /BEGIN X509 CRL/);
    const viaAccept = await get(`${srv.info.url}/v1/crl`, srv.caPem, { accept: 'application/x-pem-file' });
    assert.match(viaAccept.body.toString('utf8'), /BEGIN X509 CRL/);
    const crl = new x509.X509Crl(der.body);
    const leaf = new x509.X509Certificate(leafs[leafs.length - 1]!);
    assert.ok(crl.findRevoked(leaf), 'serial on the CRL');
    assert.ok(crl.nextUpdate!.getTime() - Date.now() <= 3600_000 + 1000, 'short nextUpdate');

    const chain = (await get(`${srv.info.url}/v1/ca`, srv.caPem)).body.toString('utf8');
    const v = await opensslVerify(work, leafs[leafs.length - 1]!, chain, pem.body.toString('utf8'));
    assert.equal(v.ok, false);
    assert.match(v.out, /certificate revoked/);

    const renew = await dev.renew(http);
    assert.equal(renew.status, 403);
    assert.equal(renew.body.error.code, 'device_revoked');
  });

  await t.test('edgeid-admin lists, shows and audits from the data dir alone', async () => {
    const list = admin(srv.dataDir, ['devices', 'list', '--json']);
    assert.equal(list.status, 0, list.stderr);
    const devices = JSON.parse(list.stdout) as { id: string; status: string; owner: string; name: string }[];
    assert.deepEqual(
      devices.map((d) => [d.id, d.status, d.owner, d.name]),
      [[dev.deviceId, 'revoked', 'controls-team', 'plc-gw-17']],
    );
    const human = admin(srv.dataDir, ['devices', 'list']);
    assert.match(human.stdout, /ID\s+NAME\s+ZONE\s+OWNER\s+STATE\s+POSTURE\s+CERTEXPIRES/);
    const show = admin(srv.dataDir, ['device', 'show', dev.deviceId!]);
    assert.match(show.stdout, /status\s+revoked/);
    assert.match(show.stdout, /key-compromise/);

    const verify = admin(srv.dataDir, ['audit', 'verify']);
    assert.equal(verify.status, 0, verify.stdout + verify.stderr);
    assert.match(verify.stdout, /audit chain OK/);

    const exported = path.join(work, 'audit.jsonl');
    assert.equal(admin(srv.dataDir, ['audit', 'export', '--out', exported]).status, 0);
    const lines = (await readFile(exported, 'utf8')).trim().split('\n');
    const events = lines.map((l) => JSON.parse(l).event as string);
    for (const e of ['token.create', 'enroll.start', 'enroll.finish', 'renew', 'device.revoke']) assert.ok(events.includes(e), e);
    assert.equal(admin(srv.dataDir, ['audit', 'verify', '--file', exported]).status, 0);

    const edited = lines.map((l, i) => (i === 2 ? l.replace('"outcome":"ok"', '"outcome":"fail"') : l)).join('\n');
    await writeFile(exported, edited + '\n');
    const bad = admin(srv.dataDir, ['audit', 'verify', '--file', exported]);
    assert.equal(bad.status, 1);
    assert.match(bad.stdout, /BROKEN at row 3/);
    const deleted = lines.filter((_, i) => i !== 4).join('\n');
    await writeFile(exported, deleted + '\n');
    const gap = admin(srv.dataDir, ['audit', 'verify', '--file', exported]);
    assert.equal(gap.status, 1);
    assert.match(gap.stdout, /rows were deleted/);
  });

  await t.test('a device whose certificate expired renews by attestation alone within maxOffline', async () => {
    const dev2 = await TestDevice.create(tpm2.tcti, { ekKind: 'ecc' });
    try {
      const tok = JSON.parse(admin(srv.dataDir, ['token', 'create', '--zone', 'short', '--owner', 'ops', '--json']).stdout) as {
        token: string;
      };
      const res = await dev2.enroll(http, tok.token);
      const notAfter = Date.parse(res.renew.notAfter);
      await new Promise((r) => setTimeout(r, Math.max(0, notAfter - Date.now()) + 1500));
      assert.ok(new X509Certificate(res.certificate).validTo && Date.now() > notAfter, 'certificate has expired');
      const r = await dev2.renew(http);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.ok(Date.parse(r.body.renew.notAfter) > Date.now());
    } finally {
      await dev2.close();
    }
  });

  await t.test('serves metrics and refuses the admin API without the token', async () => {
    const m = await get(`${srv.info.url}/metrics`, srv.caPem);
    const text = m.body.toString('utf8');
    assert.match(text, /edgeid_enrollments_total\{outcome="ok"\} 2/);
    assert.match(text, /edgeid_renewals_total\{outcome="ok"\} 4/);
    assert.match(text, /edgeid_failures_total\{[^}]*code="device_revoked"/);
    const a = await get(`${srv.info.url}/v1/admin/devices`, srv.caPem);
    assert.equal(a.status, 401);
    assert.equal(JSON.parse(a.body.toString('utf8')).error.code, 'admin_unauthorized');
  });

  await t.test('shows the admin token only on the first start; a restart keeps the CA, the devices and the CRL', async () => {
    assert.match(srv.log(), /created the admin token/);
    // stderr is a pipe here, as under systemd: the token stays in its 0600 file, out of any log
    assert.equal(srv.log().includes(srv.adminToken), false, 'the admin token is not printed to a log stream');
    const crlBefore = await get(`${srv.info.url}/v1/crl`, srv.caPem);
    await srv.stop();
    const again = await startServerProcess({ config: serverConfig, dataDir });
    try {
      assert.doesNotMatch(again.log(), /created the admin token/);
      assert.equal(again.log().includes(again.adminToken), false);
      assert.equal(again.adminToken, srv.adminToken);
      assert.equal(again.info.caFingerprint, srv.info.caFingerprint);
      const list = admin(dataDir, ['devices', 'list', '--json']);
      assert.equal(list.status, 0, list.stderr);
      assert.equal((JSON.parse(list.stdout) as { status: string }[])[0]!.status, 'revoked');
      const crl = new x509.X509Crl((await get(`${again.info.url}/v1/crl`, again.caPem)).body);
      const old = new x509.X509Crl(crlBefore.body);
      assert.deepEqual(crl.entries.map((e) => e.serialNumber).sort(), old.entries.map((e) => e.serialNumber).sort());
      assert.ok(crl.entries.length >= 4);
    } finally {
      await again.stop();
    }
  });

  await t.test('after enrollments, renewals, a revocation and a restart, nothing in the data dir is readable by others', async () => {
    // certificates and CRLs are public (0644 inside the 0700 dir); keys, the database, tokens are 0600
    const PUBLIC = ['ca/root.pem', 'ca/intermediate.pem', 'ca/server.pem', 'ca/control.pem', 'crl.pem', 'crl.der'];
    assert.deepEqual(await notPrivate(dataDir, PUBLIC), []);
  });
});

test('edgeid-server refuses to start with a bad config and names the field', { timeout: 60_000 }, async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-badcfg-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const cfg = path.join(dir, 'config.json');
  await writeFile(cfg, JSON.stringify({ zones: { 'line-3': { lifetime: '30s' } } }));
  const r = spawnSync(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(REPO, 'enroll-server/main.ts'),
      '--data',
      path.join(dir, 'data'),
      '--listen',
      '127.0.0.1:0',
      '--config',
      cfg,
    ],
    {
      cwd: REPO,
      encoding: 'utf8',
      timeout: 30_000,
    },
  );
  assert.equal(r.status, 2);
  assert.match(r.stderr, /zones\.line-3\.lifetime/);
});
