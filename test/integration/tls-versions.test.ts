/**
 * Every listener speaks TLS 1.2 or newer only (RFC 8996): a client that offers only TLS 1.1 is
 * refused by the enrollment server (even when Node's default would allow it) and by Mosquitto as
 * `edgeid-admin broker config` renders it (`tls_version tlsv1.2`), while the same client
 * completes a TLS 1.1 handshake with a control server that allows it (so the refusal is theirs).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import tls from 'node:tls';
import { tmpDir } from '../../scripts/harness/fs.js';
import { startDeployment } from '../../scripts/harness/deployment.js';
import { startServerProcess } from '../../scripts/harness/server.js';

type Version = 'TLSv1.1' | 'TLSv1.2' | 'TLSv1.3';

/** Handshakes with host:port offering exactly `version`; resolves with the negotiated protocol or the error code. */
function handshake(port: number, version: Version, client: { cert?: string; key?: string } = {}): Promise<string> {
  return new Promise((resolve) => {
    const c = tls.connect(
      {
        host: '127.0.0.1',
        port,
        rejectUnauthorized: false,
        ...client,
        minVersion: version,
        maxVersion: version,
        // TLS 1.1 needs a security level Node's OpenSSL 3 only allows when asked
        ciphers: 'DEFAULT@SECLEVEL=0',
      },
      () => {
        resolve(c.getProtocol() ?? 'unknown');
        c.destroy();
      },
    );
    c.on('error', (e: NodeJS.ErrnoException) => resolve(`error:${e.code ?? e.message}`));
  });
}

test('the enrollment server refuses TLS 1.1 and speaks TLS 1.2 and 1.3', async (t) => {
  const dir = await tmpDir('edgeid-tls-', t);
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      path.join(dir, 'k.pem'),
      '-out',
      path.join(dir, 'c.pem'),
      '-subj',
      '/CN=localhost',
      '-days',
      '1',
    ],
    { stdio: 'ignore' },
  );
  const control = tls.createServer(
    {
      key: readFileSync(path.join(dir, 'k.pem')),
      cert: readFileSync(path.join(dir, 'c.pem')),
      minVersion: 'TLSv1',
      ciphers: 'DEFAULT@SECLEVEL=0',
    },
    (s) => s.end(),
  );
  await new Promise<void>((r) => control.listen(0, '127.0.0.1', r));
  t.after(() => control.close());
  assert.equal(await handshake((control.address() as { port: number }).port, 'TLSv1.1'), 'TLSv1.1');

  // even when the process's default would allow TLS 1.0 (`node --tls-min-v1.0`)
  const srv = await startServerProcess({ env: { NODE_OPTIONS: '--tls-min-v1.0' } });
  t.after(() => srv.close());
  const port = Number(new URL(srv.url).port);
  assert.match(await handshake(port, 'TLSv1.1'), /^error:ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION$/);
  assert.equal(await handshake(port, 'TLSv1.2'), 'TLSv1.2');
  assert.equal(await handshake(port, 'TLSv1.3'), 'TLSv1.3');
});

test('the broker as edgeid configures it refuses TLS 1.1 and speaks TLS 1.2 and 1.3', async (t) => {
  const d = await startDeployment();
  t.after(() => d.stop());
  const port = Number(new URL(d.broker.url).port);
  const id = await d.serviceIdentity('edgeid-test-tls-probe', { acls: [] });
  const client = { cert: String(id.tls.cert), key: String(id.tls.key) };
  assert.match(await handshake(port, 'TLSv1.1', client), /^error:ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION$/);
  assert.equal(await handshake(port, 'TLSv1.2', client), 'TLSv1.2');
  assert.equal(await handshake(port, 'TLSv1.3', client), 'TLSv1.3');
});
