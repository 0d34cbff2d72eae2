/**
 * Issuing-CA rotation with real processes (edgeid-server, Mosquitto configured by
 * `edgeid-admin broker config`, a swtpm device): `edgeid-admin ca rotate-issuing` makes a new
 * issuing CA under the same root; the device renews onto it without enrolling again; the broker
 * accepts client certificates of both issuing CAs during the overlap and refuses revoked ones of
 * both (its crlfile holds one CRL per issuing CA); each CA's CRL is served at its certificates'
 * distribution point; `edgeid-admin ca status` lists every CA with its expiry and the metric
 * edgeid_ca_expiry_seconds has one series per CA. A second test moves the clock to months before
 * the issuing CA expires: status flags it.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createSecureContext, connect as tlsConnect, type SecureContext } from 'node:tls';
import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as x509 from '@peculiar/x509';
import { certFingerprint } from '../../protocol/api.js';
import { DeviceHttpError, TestDevice, httpsTransport } from '../helpers/device.js';
import { runCli } from '../helpers/cli.js';
import { startInProcessServer } from '../helpers/server.js';
import { startDeployment } from '../../scripts/harness/deployment.js';
import { PROBE_ACCEPTED_CONNACK, tlsHandshake } from '../../scripts/harness/revocation.js';
import { startSwtpm, extendBootPcrs } from '../../scripts/harness/swtpm.js';
import type { ServerProcess } from '../../scripts/harness/server.js';
import { waitFor } from '../../scripts/harness/wait.js';

const cn = (subject: string) => /CN=([^,\n]+)/.exec(subject)?.[1];

/**
 * A monitoring tool's broker identity through the admin API (what `edgeid-admin broker monitor
 * add` does, without a CLI start per call): a software key, the certificate the active issuing CA
 * issues (with its CA), as a secure context for a handshake probe.
 */
async function addMonitor(srv: ServerProcess, name: string): Promise<{ ctx: SecureContext; cert: string }> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
  const r = await srv.admin<{ certificate: string; caBundle: string }>('POST', '/v1/admin/broker/monitors', { name, spki });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return {
    ctx: createSecureContext({ cert: r.body.certificate, key: privateKey.export({ type: 'pkcs8', format: 'pem' }), ca: r.body.caBundle }),
    cert: r.body.certificate,
  };
}

async function removeMonitor(srv: ServerProcess, name: string): Promise<void> {
  const r = await srv.admin('POST', `/v1/admin/broker/monitors/${name}/remove`, {});
  assert.equal(r.status, 200, JSON.stringify(r.body));
}

/** The issuer CN of the certificate the server presents on a new TLS connection. */
function servedIssuer(port: number, ca: string): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
      const c = s.getPeerCertificate();
      s.destroy();
      resolve(c.issuer?.CN as string | undefined);
    });
    s.on('error', reject);
  });
}

test('issuing-CA rotation: devices renew onto the new CA, the broker trusts and revokes both, CRLs per CA, ca status', async (t) => {
  const d = await startDeployment({});
  t.after(() => d.stop());
  const srv = d.server;
  const http = httpsTransport(srv.url, srv.caPem);
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  const dev = await TestDevice.create(tpm.tcti);
  t.after(() => dev.close());
  const tk = await srv.admin<{ token: string }>('POST', '/v1/admin/tokens', { zone: 'default', owner: 'plant' });
  await dev.enroll(http, tk.body.token);
  const oldCert = new x509.X509Certificate(dev.certificate!);
  assert.equal(cn(oldCert.issuer), 'edgeid Issuing CA');
  const before = await addMonitor(srv, 'before');
  assert.deepEqual(await tlsHandshake(d.broker.port, before.ctx), { ok: true, connack: PROBE_ACCEPTED_CONNACK });

  // the rotation
  const rot = JSON.parse(await d.admin(['ca', 'rotate-issuing', '--json'])) as { issuer: string; previous: string; subject: string };
  assert.equal(rot.issuer, 'issuing-2');
  assert.equal(rot.previous, 'intermediate');
  assert.equal(cn(rot.subject), 'edgeid Issuing CA 2');
  // new TLS connections get the server certificate of the new issuing CA at once
  assert.equal(await servedIssuer(srv.port, srv.caPem), 'edgeid Issuing CA 2');
  // the broker's crlfile holds one CRL per issuing CA
  const crlFile = await readFile(path.join(d.brokerDir, 'crl.pem'), 'utf8');
  assert.equal(crlFile.match(/-----BEGIN X509 CRL-----/g)?.length, 2, crlFile);

  const after = await addMonitor(srv, 'after');
  assert.equal(cn(new X509Certificate(after.cert).issuer), 'edgeid Issuing CA 2');
  // both issuing CAs' client certificates are accepted during the overlap
  assert.deepEqual(await tlsHandshake(d.broker.port, before.ctx), { ok: true, connack: PROBE_ACCEPTED_CONNACK });
  assert.deepEqual(await tlsHandshake(d.broker.port, after.ctx), { ok: true, connack: PROBE_ACCEPTED_CONNACK });

  // the device renews onto the new CA: same device, same pinned root, no enrollment
  const deviceId = dev.deviceId;
  let r = await dev.renew(http);
  if (r.status !== 200) {
    assert.equal((await dev.challenge(http)).status, 200);
    r = await dev.renew(http);
  }
  if (r.status !== 200) throw new DeviceHttpError('renew', r);
  assert.equal(dev.deviceId, deviceId);
  const newCert = new x509.X509Certificate(dev.certificate!);
  assert.equal(cn(newCert.issuer), 'edgeid Issuing CA 2');
  const chain = dev.chain.map((p) => new x509.X509Certificate(p));
  assert.equal(cn(chain[0]!.subject), 'edgeid Issuing CA 2');
  assert.equal(certFingerprint(Buffer.from(chain.at(-1)!.rawData)), srv.caFingerprint);
  assert.ok(await newCert.verify({ publicKey: chain[0]!.publicKey, signatureOnly: true }));
  assert.ok(await chain[0]!.verify({ publicKey: chain.at(-1)!.publicKey, signatureOnly: true }));
  const dp = newCert.getExtension(x509.CRLDistributionPointsExtension)!;
  const dpUrl = dp.distributionPoints[0]!.distributionPoint!.fullName![0]!.uniformResourceIdentifier!;
  assert.equal(new URL(dpUrl).pathname, '/v1/crl/issuing-2');
  // the old certificate is still valid and names the old CA's CRL
  const oldDp = oldCert.getExtension(x509.CRLDistributionPointsExtension)!.distributionPoints[0]!.distributionPoint!.fullName![0]!
    .uniformResourceIdentifier!;
  assert.equal(new URL(oldDp).pathname, '/v1/crl');

  // each distribution point serves a CRL signed by that certificate's issuer
  const oldCa = new x509.X509Certificate(await readFile(path.join(d.dataDir, 'ca', 'intermediate.pem'), 'utf8'));
  for (const [p, issuer] of [
    ['/v1/crl', oldCa],
    ['/v1/crl/issuing-2', chain[0]!],
  ] as const) {
    const res = await fetchCrl(srv.url + p, srv.caPem);
    assert.equal(res.status, 200, p);
    const crl = new x509.X509Crl(res.body);
    assert.equal(crl.issuer, issuer.subject, p);
    assert.ok(await crl.verify({ publicKey: issuer.publicKey }), p);
  }
  const unknown = await srv.admin('GET', '/v1/crl/issuing-9');
  assert.equal(unknown.status, 404);
  assert.equal((unknown.body as { error: { code: string } }).error.code, 'crl_issuer_unknown');

  // revoked certificates of both issuing CAs are refused by the broker
  await removeMonitor(srv, 'before');
  await removeMonitor(srv, 'after');
  for (const c of [before, after]) {
    await waitFor(
      'the broker to refuse a removed monitor',
      async () => {
        const h = await tlsHandshake(d.broker.port, c.ctx);
        return h.ok ? null : h;
      },
      { timeoutMs: 60_000, intervalMs: 250 },
    );
  }
  // both CRLs list both serials
  for (const p of ['/v1/crl', '/v1/crl/issuing-2']) {
    const crl = new x509.X509Crl((await fetchCrl(srv.url + p, srv.caPem)).body);
    const serials = crl.entries.map((e) => e.serialNumber.toLowerCase());
    for (const c of [before, after]) assert.ok(serials.includes(new X509Certificate(c.cert).serialNumber.toLowerCase()), p);
  }

  // the measurement behind one CRL per issuing CA: with only the old CA's CRL in its crlfile,
  // Mosquitto (OpenSSL CRL checking) refuses a valid certificate of the new CA; with both, accepts it
  const third = await addMonitor(srv, 'third');
  const full = await readFile(path.join(d.brokerDir, 'crl.pem'), 'utf8');
  const blocks = full.match(/-----BEGIN X509 CRL-----[^-]+-----END X509 CRL-----\n/g)!;
  assert.equal(blocks.length, 2);
  const oldOnly = blocks.find((b) => new x509.X509Crl(b).issuer === oldCa.subject)!;
  await writeFile(path.join(d.brokerDir, 'crl.pem'), oldOnly);
  await d.broker.restart();
  const refused = await tlsHandshake(d.broker.port, third.ctx);
  assert.equal(refused.ok, false, JSON.stringify(refused));
  await writeFile(path.join(d.brokerDir, 'crl.pem'), full);
  await d.broker.restart();
  assert.deepEqual(await tlsHandshake(d.broker.port, third.ctx), { ok: true, connack: PROBE_ACCEPTED_CONNACK });
  t.diagnostic(
    `Mosquitto with the old CA's CRL only: new-CA certificate refused (${refused.ok ? '' : refused.code}); with both CRLs in one crlfile: accepted`,
  );

  // ca status: every CA with its expiry; nothing within the warning window
  const st = await runCli('edgeid-admin', ['ca', 'status', '--json', '--data', d.dataDir]);
  assert.equal(st.code, 0, st.stderr);
  const status = JSON.parse(st.stdout.toString()) as { cas: { ca: string; active?: boolean; warn: boolean; secondsLeft: number }[] };
  assert.deepEqual(
    status.cas.map((c) => c.ca),
    ['root', 'issuing:intermediate', 'issuing:issuing-2', 'server-tls', 'control'],
  );
  assert.deepEqual(
    status.cas.filter((c) => c.active !== undefined).map((c) => [c.ca, c.active]),
    [
      ['issuing:intermediate', false],
      ['issuing:issuing-2', true],
    ],
  );
  assert.ok(
    status.cas.every((c) => !c.warn && c.secondsLeft > 80 * 86400),
    JSON.stringify(status.cas),
  );
  assert.doesNotMatch(st.stderr, /WARN/);
  const metrics = await srv.admin<string>('GET', '/metrics');
  for (const c of status.cas) assert.match(String(metrics.body), new RegExp(`edgeid_ca_expiry_seconds\\{ca="${c.ca}"\\} \\d+`));

  // after a restart the new CA still issues
  await d.restartServer();
  assert.equal((await dev.challenge(http)).status, 200);
  const again = await dev.renew(http);
  assert.equal(again.status, 200, JSON.stringify(again.body));
  assert.equal(cn(new x509.X509Certificate(dev.certificate!).issuer), 'edgeid Issuing CA 2');
});

async function fetchCrl(url: string, ca: string): Promise<{ status: number; body: ArrayBuffer }> {
  const { request } = await import('node:https');
  return new Promise((resolve, reject) => {
    const req = request(url, { ca, headers: { accept: 'application/pkix-crl' } }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => {
        const b = Buffer.concat(parts);
        resolve({ status: res.statusCode ?? 0, body: b.buffer.slice(b.byteOffset, b.byteOffset + b.length) as ArrayBuffer });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

test('ca status flags an issuing CA months before it expires', async (t) => {
  const srv = await startInProcessServer();
  t.after(() => srv.close());
  const inter = new X509Certificate(await readFile(path.join(srv.dataDir, 'ca', 'intermediate.pem'), 'utf8'));
  // 100 days before the issuing CA expires
  srv.clock.offset = Date.parse(inter.validTo) - 100 * 86400_000 - Date.now();
  const res = await srv.admin('GET', '/v1/admin/ca/status');
  assert.equal(res.status, 200);
  const by = Object.fromEntries((res.body as { cas: { ca: string; warn: boolean; secondsLeft: number }[] }).cas.map((c) => [c.ca, c]));
  assert.equal(by['issuing:intermediate']!.warn, true);
  assert.ok(Math.abs(by['issuing:intermediate']!.secondsLeft - 100 * 86400) < 120);
  assert.equal(by.root!.warn, false);
});
