/**
 * `edgeid-server` as a child process with its issuing CA key in a SoftHSM2 token (a token of its
 * own in a temp dir, SOFTHSM2_CONF): `edgeid-server ca init --pkcs11` as a process, then a device
 * on swtpm enrolls and renews over HTTPS; the certificates and the served CRL are checked with
 * openssl against the issuing certificate of the token key; no issuing key file in the data dir;
 * a restart with a wrong PIN or a group-readable PIN file stops with its code's message.
 * Runs from the bundles with EDGEID_TEST_BINS=dist (pkcs11.node beside the server bundle).
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmod, readdir, readFile, writeFile } from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { promisify } from 'node:util';
import { startSwtpm, extendBootPcrs, SWTPM_LOCALCA_ROOT, SWTPM_LOCALCA_ISSUER } from '../../scripts/harness/swtpm.js';
import { TestDevice, httpsTransport } from '../helpers/device.js';
import { REPO } from '../../scripts/harness/fs.js';
import { startServerProcess } from '../../scripts/harness/server.js';
import { programCommand } from '../../scripts/harness/bins.js';
import { createSoftHsmToken } from '../../scripts/harness/softhsm.js';

const run = promisify(execFile);

function getBytes(url: string, ca: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { ca }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => (res.statusCode === 200 ? resolve(Buffer.concat(chunks)) : reject(new Error(`GET ${url}: ${res.statusCode}`))));
      })
      .on('error', reject);
  });
}

async function openssl(cwd: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  try {
    const { stdout, stderr } = await run('openssl', args, { cwd });
    return { ok: true, out: stdout + stderr };
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    return { ok: false, out: `${err.stdout ?? ''}${err.stderr ?? ''}` };
  }
}

test(
  'edgeid-server with the issuing key in a PKCS#11 token: ca init, enroll, renew, CRL, start errors',
  { timeout: 600_000 },
  async (t) => {
    const tok = await createSoftHsmToken({ t });
    const env = { ...process.env, ...tok.env };
    const dataDir = path.join(tok.dir, 'data');
    const config = {
      ca: { key: 'pkcs11', pkcs11: tok.pkcs11('edgeid-issuing') },
      ek: { roots: [SWTPM_LOCALCA_ROOT], intermediates: [SWTPM_LOCALCA_ISSUER], requireEkCertificate: true },
    };
    const configFile = path.join(tok.dir, 'server.config.json');
    await writeFile(configFile, JSON.stringify(config));

    const [program, ...pre] = programCommand('edgeid-server');
    const init = spawnSync(program, [...pre, 'ca', 'init', '--pkcs11', '--config', configFile, '--data', dataDir], {
      cwd: REPO,
      env,
      encoding: 'utf8',
    });
    assert.equal(init.status, 0, init.stderr);
    assert.match(
      init.stdout,
      /created the issuing key "edgeid-issuing" in token "edgeid-test" \(CKA_SENSITIVE true, CKA_EXTRACTABLE false, CKA_LOCAL true\)/,
    );
    assert.ok(!init.stdout.includes(tok.pin) && !init.stderr.includes(tok.pin), 'no PIN in the output');

    const srv = await startServerProcess({ config, configFile, dataDir, env: tok.env });
    t.after(() => srv.stop());
    const tpm = await startSwtpm();
    t.after(() => tpm.stop());
    await extendBootPcrs(tpm.tcti);
    const http = httpsTransport(srv.info.url, srv.caPem);
    const dev = await TestDevice.create(tpm.tcti);
    t.after(() => dev.close());

    const created = await srv.admin('POST', '/v1/admin/tokens', { zone: 'default', owner: 'ops' });
    assert.equal(created.status, 200, JSON.stringify(created.body));
    const enrolled = await dev.enroll(http, created.body.token);
    const renewed = await dev.renew(http);
    assert.equal(renewed.status, 200, JSON.stringify(renewed.body));
    const revoke = await srv.admin('POST', `/v1/admin/devices/${enrolled.deviceId}/revoke`, { reason: 'key-compromise' });
    assert.equal(revoke.status, 200, JSON.stringify(revoke.body));
    const crlPem = (await getBytes(`${srv.info.url}/v1/crl?format=pem`, srv.caPem)).toString();

    const caDir = path.join(dataDir, 'ca');
    const inter = await readFile(path.join(caDir, 'intermediate.pem'), 'utf8');
    const w = tok.dir;
    await writeFile(path.join(w, 'root.pem'), srv.caPem);
    await writeFile(path.join(w, 'inter.pem'), inter);
    await writeFile(path.join(w, 'chain.pem'), inter + srv.caPem);
    await writeFile(path.join(w, 'enrolled.pem'), enrolled.certificate);
    await writeFile(path.join(w, 'renewed.pem'), renewed.body.certificate);
    await writeFile(path.join(w, 'crl.pem'), crlPem);
    for (const leaf of ['enrolled.pem', 'renewed.pem']) {
      const v = await openssl(w, ['verify', '-purpose', 'sslclient', '-CAfile', 'root.pem', '-untrusted', 'inter.pem', leaf]);
      assert.ok(v.ok, `${leaf}: ${v.out}`);
      assert.ok(
        new X509Certificate(await readFile(path.join(w, leaf))).verify(new X509Certificate(inter).publicKey),
        `${leaf} signed by the token key`,
      );
    }
    const crlOk = await openssl(w, ['crl', '-in', 'crl.pem', '-CAfile', 'chain.pem', '-noout']);
    assert.ok(crlOk.ok && /verify OK/.test(crlOk.out), crlOk.out);
    const revoked = await openssl(w, [
      'verify',
      '-crl_check',
      '-CRLfile',
      'crl.pem',
      '-CAfile',
      'root.pem',
      '-untrusted',
      'inter.pem',
      'renewed.pem',
    ]);
    assert.ok(!revoked.ok && /certificate revoked/.test(revoked.out), revoked.out);
    assert.deepEqual(
      (await readdir(caDir)).filter((f) => f.endsWith('.key')).sort(),
      ['control.key', 'root.key', 'server.key'],
      'no intermediate.key',
    );

    // restarts that must not come up: wrong PIN, then a PIN file others can read
    await srv.stop();
    const wrong = path.join(tok.dir, 'wrong-pin');
    await writeFile(wrong, '999999\n', { mode: 0o600 });
    await assert.rejects(
      srv.start({ ...config, ca: { key: 'pkcs11', pkcs11: { ...tok.pkcs11('edgeid-issuing'), pinFile: wrong } } }),
      (e: Error) => {
        assert.match(e.message, /exited \(1\).*the token "edgeid-test" refused the PIN \(CKR_PIN_INCORRECT\)/s);
        return true;
      },
    );
    await chmod(tok.pinFile, 0o644);
    await assert.rejects(srv.start(config), (e: Error) => {
      assert.match(e.message, /exited \(1\).*PIN file .* has mode 0644: group and others must have no access/s);
      return true;
    });
    await chmod(tok.pinFile, 0o600);
    await srv.start(config);
    const again = await dev.renew(httpsTransport(srv.info.url, srv.caPem));
    // the device was revoked above: the server refuses its renewal (with the token key loaded again)
    assert.equal(again.status, 403, JSON.stringify(again.body));
  },
);
