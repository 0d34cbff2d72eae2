/**
 * The issuing CA's key in a PKCS#11 token, on a real SoftHSM2 token (Debian softhsm2) initialised
 * per test in a temp dir (SOFTHSM2_CONF): `ca init --pkcs11`, device certificates and CRLs signed
 * by the token checked with openssl, the key object's attributes as the token reports them, start
 * errors (PIN, token, key label, PIN file mode), and the offline-root ceremony with an openssl root.
 * Each test closes its token session (C_Finalize), so the next one's C_Initialize reads its own
 * SOFTHSM2_CONF.
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { chmod, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { CertificateAuthority } from '../../enroll-server/ca/ca.js';
import { runCaCommand } from '../../enroll-server/ca/cli.js';
import { closeIssuerSigner, openIssuerSigner, tokenKeyFacts, type CaSigner } from '../../enroll-server/ca/keys.js';
import { loadConfig } from '../../enroll-server/config.js';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../scripts/harness/softhsm.js';

const run = promisify(execFile);
const KEY = 'edgeid-issuing';

async function openssl(cwd: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  try {
    const { stdout, stderr } = await run('openssl', args, { cwd });
    return { ok: true, out: stdout + stderr };
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    return { ok: false, out: `${err.stdout ?? ''}${err.stderr ?? ''}` };
  }
}

/** A token, SOFTHSM2_CONF pointing at it, a config file with ca.pkcs11 and a data dir. */
async function setup(t: { after(fn: () => Promise<void>): void }, pkcs11?: Record<string, unknown>) {
  const tok = await createSoftHsmToken({ t });
  process.env.SOFTHSM2_CONF = tok.env.SOFTHSM2_CONF;
  const dataDir = path.join(tok.dir, 'data');
  const configFile = path.join(tok.dir, 'config.json');
  await writeFile(configFile, JSON.stringify({ ca: { key: 'pkcs11', pkcs11: pkcs11 ?? tok.pkcs11(KEY) } }));
  const argv = ['--config', configFile, '--data', dataDir];
  return { tok, dataDir, configFile, argv, caDir: path.join(dataDir, 'ca') };
}

async function open(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<CaSigner> {
  const cfg = loadConfig({ argv, env });
  if (cfg.ca.key !== 'pkcs11') assert.fail('config without ca.pkcs11');
  return openIssuerSigner({ kind: 'pkcs11', config: cfg.ca.pkcs11, env });
}

async function refusal(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    assert.ok(isEdgeidError(e), `expected an EdgeidError, got ${String(e)}`);
    return { code: e.code, message: e.message };
  }
  assert.fail('expected a refusal');
}

const quiet = (): void => {};
const deviceSpki = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });

test('device certificate and CRL signed in the token pass openssl verify and openssl crl; no issuing key file exists', async (t) => {
  const s = await setup(t);
  assert.equal(await runCaCommand(['init', '--pkcs11', ...s.argv], quiet), 0);
  const signer = await open(s.argv);
  t.after(() => closeIssuerSigner(signer));
  const ca = await CertificateAuthority.open({ dir: s.caDir, hostnames: [], issuer: signer });
  assert.ok(Buffer.from(ca.intermediate.publicKey.rawData).equals(signer.spki), 'the issuing certificate certifies the token key');

  // concurrent issuance: one PKCS#11 session runs one C_Sign at a time (keys.ts queues them)
  const certs = await Promise.all(
    Array.from({ length: 12 }, (_, i) =>
      ca.issueDevice({ deviceId: `dev-${i}`, zone: 'default', spki: deviceSpki(), lifetimeSeconds: 3600, crlUrl: 'https://127.0.0.1/crl' }),
    ),
  );
  const sigs = await Promise.all(
    Array.from({ length: 32 }, (_, i) => signer.crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, signer.key, Buffer.from(`m${i}`))),
  );
  assert.equal(sigs.length, 32);
  const dev = certs[0]!;
  const crl = await ca.createCrl({
    number: 7n,
    validitySeconds: 3600,
    entries: [{ serial: dev.serial, revokedAt: new Date(), reason: 'key-compromise' }],
  });
  const w = s.tok.dir;
  await writeFile(path.join(w, 'root.pem'), ca.rootPem);
  await writeFile(path.join(w, 'inter.pem'), ca.chainPem[0]!);
  await writeFile(path.join(w, 'chain.pem'), ca.chainPem.join(''));
  await writeFile(path.join(w, 'crl.pem'), crl.pem);
  for (const [i, c] of certs.entries()) {
    await writeFile(path.join(w, `dev${i}.pem`), c.pem);
    const v = await openssl(w, ['verify', '-purpose', 'sslclient', '-CAfile', 'root.pem', '-untrusted', 'inter.pem', `dev${i}.pem`]);
    assert.ok(v.ok && /dev\d+\.pem: OK/.test(v.out), v.out);
  }
  const c = await openssl(w, ['crl', '-in', 'crl.pem', '-CAfile', 'chain.pem', '-noout']);
  assert.ok(c.ok && /verify OK/.test(c.out), c.out);
  const revoked = await openssl(w, [
    'verify',
    '-crl_check',
    '-CRLfile',
    'crl.pem',
    '-CAfile',
    'root.pem',
    '-untrusted',
    'inter.pem',
    'dev0.pem',
  ]);
  assert.ok(!revoked.ok && /certificate revoked/.test(revoked.out), revoked.out);
  const fine = await openssl(w, [
    'verify',
    '-crl_check',
    '-CRLfile',
    'crl.pem',
    '-CAfile',
    'root.pem',
    '-untrusted',
    'inter.pem',
    'dev1.pem',
  ]);
  assert.ok(fine.ok, fine.out);

  // the issuing key exists only in the token: the data dir's key files are the root, TLS and control keys
  const files = await readdir(s.caDir);
  assert.deepEqual(files.filter((f) => f.endsWith('.key')).sort(), ['control.key', 'root.key', 'server.key']);
  for (const f of files.filter((x) => x.endsWith('.key'))) {
    const pub = createPublicKey(createPrivateKey(await readFile(path.join(s.caDir, f)))).export({ type: 'spki', format: 'der' });
    assert.ok(!pub.equals(signer.spki), `${f} is not the issuing key`);
  }
});

test('the token key is CKA_SENSITIVE, never extractable, generated in the token; export and CKA_VALUE reads are refused', async (t) => {
  const s = await setup(t);
  const out: string[] = [];
  assert.equal(await runCaCommand(['init', '--pkcs11', ...s.argv], (x) => out.push(x)), 0);
  assert.match(out.join(''), /created the issuing key "edgeid-issuing".*CKA_SENSITIVE true, CKA_EXTRACTABLE false, CKA_LOCAL true/);
  const signer = await open(s.argv);
  t.after(() => closeIssuerSigner(signer));
  const facts = tokenKeyFacts(signer, KEY)!;
  assert.deepEqual(facts.attributes, { sensitive: true, extractable: false, alwaysSensitive: true, neverExtractable: true, local: true });
  // C_GetAttributeValue(CKA_VALUE) of a sensitive key: CKR_ATTRIBUTE_SENSITIVE (PKCS#11 v2.40 §5.7)
  assert.equal(facts.readValue, 'CKR_ATTRIBUTE_SENSITIVE');
  assert.equal(signer.key.extractable, false);
  await assert.rejects(signer.crypto.subtle.exportKey('pkcs8', signer.key), /not extractable/i);
  // a second init finds the key and does not make another one
  const again: string[] = [];
  assert.equal(await runCaCommand(['init', '--pkcs11', ...s.argv], (x) => again.push(x)), 0);
  assert.match(again.join(''), /found the issuing key/);
});

test('start errors: wrong PIN, unknown token, missing key label, open PIN file, unset PIN variable, imported key, bad module', async (t) => {
  const s = await setup(t);
  assert.equal(await runCaCommand(['init', '--pkcs11', ...s.argv], quiet), 0);
  const variant = async (name: string, p: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env) => {
    const file = path.join(s.tok.dir, `${name}.json`);
    await writeFile(file, JSON.stringify({ ca: { key: 'pkcs11', pkcs11: p } }));
    return refusal(open(['--config', file, '--data', s.dataDir], env));
  };
  const wrongPin = path.join(s.tok.dir, 'wrong-pin');
  await writeFile(wrongPin, '000000\n', { mode: 0o600 });
  const r1 = await variant('pin', { ...s.tok.pkcs11(KEY), pinFile: wrongPin });
  assert.equal(r1.code, 'hsm_login_failed');
  assert.match(r1.message, /CKR_PIN_INCORRECT/);
  assert.ok(!r1.message.includes('000000') && !r1.message.includes(s.tok.pin), 'no PIN in the message');

  const r2 = await variant('token', { ...s.tok.pkcs11(KEY), token: 'no-such-token' });
  assert.equal(r2.code, 'hsm_token_not_found');
  assert.match(r2.message, /"no-such-token".*tokens: "edgeid-test"/);

  const r3 = await variant('label', s.tok.pkcs11('no-such-key'));
  assert.equal(r3.code, 'hsm_key_not_found');

  const open640 = path.join(s.tok.dir, 'pin-640');
  await writeFile(open640, s.tok.pin, { mode: 0o600 });
  await chmod(open640, 0o640);
  const r4 = await variant('pin640', { ...s.tok.pkcs11(KEY), pinFile: open640 });
  assert.equal(r4.code, 'hsm_pin_file_insecure');
  assert.match(r4.message, /mode 0640/);

  const r5 = await variant('env', s.tok.pkcs11(KEY, { pinEnv: 'EDGEID_TEST_HSM_PIN' }), { ...process.env, EDGEID_TEST_HSM_PIN: '' });
  assert.equal(r5.code, 'hsm_pin_unavailable');
  // the PIN from the environment works
  const ok = await open(
    [
      '--config',
      await (async () => {
        const f = path.join(s.tok.dir, 'env-ok.json');
        await writeFile(f, JSON.stringify({ ca: { key: 'pkcs11', pkcs11: s.tok.pkcs11(KEY, { pinEnv: 'EDGEID_TEST_HSM_PIN' }) } }));
        return f;
      })(),
      '--data',
      s.dataDir,
    ],
    { ...process.env, EDGEID_TEST_HSM_PIN: s.tok.pin },
  );
  await closeIssuerSigner(ok);

  // a key that was once outside the token (softhsm2-util --import of a PEM file): refused
  const pem = path.join(s.tok.dir, 'outside.pem');
  await run('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', pem]);
  await run('softhsm2-util', ['--import', pem, '--token', s.tok.label, '--label', 'imported', '--id', '0a0b', '--pin', s.tok.pin], {
    env: { ...process.env, ...s.tok.env },
  });
  const r7 = await variant('imported', s.tok.pkcs11('imported'));
  assert.equal(r7.code, 'hsm_key_exportable');
  assert.match(r7.message, /not CKA_ALWAYS_SENSITIVE, not CKA_NEVER_EXTRACTABLE/);
  const cfgImported = path.join(s.tok.dir, 'imported.json');
  assert.equal(
    (await refusal(runCaCommand(['init', '--pkcs11', '--config', cfgImported, '--data', s.dataDir], quiet))).code,
    'hsm_key_exportable',
  );

  const r6 = await variant('module', { ...s.tok.pkcs11(KEY), module: path.join(s.tok.dir, 'nope.so') });
  assert.equal(r6.code, 'hsm_module_unusable');

  // config: exactly one PIN source
  assert.throws(
    () =>
      loadConfig({ argv: ['--data', s.dataDir], env: {}, file: { ca: { key: 'pkcs11', pkcs11: { ...s.tok.pkcs11(KEY), pinEnv: 'X' } } } }),
    (e: unknown) => isEdgeidError(e, 'config_invalid') && /ca\.pkcs11: needs exactly one of pinFile/.test(e.message),
  );
  assert.throws(
    () => loadConfig({ argv: ['--data', s.dataDir], env: {}, file: { ca: { key: 'hsm' } } }),
    (e: unknown) => isEdgeidError(e, 'config_invalid') && /ca\.key: must be "file" or "pkcs11"/.test(e.message),
  );
});

test('offline-root ceremony: CSR from the token, root signs it with openssl, import-issuing checks and installs it', async (t) => {
  const s = await setup(t);
  const w = s.tok.dir;
  const csr = path.join(w, 'issuing.csr');
  assert.equal(await runCaCommand(['init', '--pkcs11', '--csr-out', csr, ...s.argv], quiet), 0);
  const rv = await openssl(w, ['req', '-in', csr, '-verify', '-noout', '-subject']);
  assert.ok(rv.ok && /verify OK/i.test(rv.out) && /edgeid Issuing CA/.test(rv.out), rv.out);

  // the offline root (another machine in real life): openssl only
  const rootDir = await tmpDir('edgeid-offline-root-', t);
  const sh = async (args: string[]) => {
    const r = await openssl(rootDir, args);
    assert.ok(r.ok, `openssl ${args.join(' ')}: ${r.out}`);
  };
  await sh(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'root.key']);
  await sh([
    'req',
    '-x509',
    '-new',
    '-key',
    'root.key',
    '-subj',
    '/CN=Plant Offline Root/O=edgeid',
    '-days',
    '7300',
    '-sha256',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
    '-out',
    'root.pem',
  ]);
  await writeFile(
    path.join(rootDir, 'issuing.ext'),
    'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n',
  );
  await sh([
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    'root.pem',
    '-CAkey',
    'root.key',
    '-CAcreateserial',
    '-days',
    '1825',
    '-sha256',
    '-extfile',
    'issuing.ext',
    '-out',
    'issuing.pem',
  ]);
  // refusals first: a leaf (not a CA), a certificate for another key, a root that did not sign it
  await writeFile(path.join(rootDir, 'leaf.ext'), 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n');
  await sh([
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    'root.pem',
    '-CAkey',
    'root.key',
    '-CAcreateserial',
    '-days',
    '30',
    '-sha256',
    '-extfile',
    'leaf.ext',
    '-out',
    'leaf.pem',
  ]);
  await sh(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'other.key']);
  await sh(['req', '-new', '-key', 'other.key', '-subj', '/CN=other', '-out', 'other.csr']);
  await sh([
    'x509',
    '-req',
    '-in',
    'other.csr',
    '-CA',
    'root.pem',
    '-CAkey',
    'root.key',
    '-CAcreateserial',
    '-days',
    '30',
    '-extfile',
    'issuing.ext',
    '-out',
    'other.pem',
  ]);
  await sh([
    'req',
    '-x509',
    '-new',
    '-key',
    'other.key',
    '-subj',
    '/CN=Plant Offline Root/O=edgeid',
    '-days',
    '30',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
    '-out',
    'wrong-root.pem',
  ]);
  const imp = (cert: string, root: string) =>
    runCaCommand(['import-issuing', path.join(rootDir, cert), '--root', path.join(rootDir, root), ...s.argv], quiet);
  assert.equal((await refusal(imp('leaf.pem', 'root.pem'))).code, 'ca_issuing_invalid');
  assert.equal((await refusal(imp('other.pem', 'root.pem'))).code, 'ca_issuing_mismatch');
  const wrongRoot = await refusal(imp('issuing.pem', 'wrong-root.pem'));
  assert.equal(wrongRoot.code, 'ca_issuing_invalid');
  assert.match(wrongRoot.message, /not signed by the root/);
  assert.equal(await imp('issuing.pem', 'root.pem'), 0);
  const signer = await open(s.argv);
  t.after(() => closeIssuerSigner(signer));
  const ca = await CertificateAuthority.open({ dir: s.caDir, hostnames: [], issuer: signer });
  assert.equal(ca.root.subject, 'CN=Plant Offline Root, O=edgeid');
  // no private key of the root or of the issuing CA on this host
  assert.deepEqual((await readdir(s.caDir)).filter((f) => f.endsWith('.key')).sort(), ['control.key', 'server.key']);
  const dev = await ca.issueDevice({
    deviceId: 'dev-offline',
    zone: 'default',
    spki: deviceSpki(),
    lifetimeSeconds: 3600,
    crlUrl: 'https://127.0.0.1/crl',
  });
  const crl = await ca.createCrl({ number: 1n, validitySeconds: 600, entries: [] });
  await writeFile(path.join(w, 'dev.pem'), dev.pem);
  await writeFile(path.join(w, 'crl.pem'), crl.pem);
  await writeFile(path.join(w, 'inter.pem'), ca.chainPem[0]!);
  const v = await openssl(w, [
    'verify',
    '-crl_check',
    '-CRLfile',
    'crl.pem',
    '-CAfile',
    path.join(rootDir, 'root.pem'),
    '-untrusted',
    'inter.pem',
    'dev.pem',
  ]);
  assert.ok(v.ok && /dev\.pem: OK/.test(v.out), v.out);
  const tls = await openssl(s.caDir, ['verify', '-CAfile', path.join(rootDir, 'root.pem'), '-untrusted', 'intermediate.pem', 'server.pem']);
  assert.ok(tls.ok, tls.out);
});

test('an offline root without the issuing certificate refuses to start (ca_issuing_missing); a foreign intermediate.pem is ca_issuing_mismatch', async (t) => {
  const s = await setup(t);
  assert.equal(await runCaCommand(['init', '--pkcs11', '--csr-out', path.join(s.tok.dir, 'x.csr'), ...s.argv], quiet), 0);
  const signer = await open(s.argv);
  t.after(() => closeIssuerSigner(signer));
  // root.pem of an offline root only
  const other = await CertificateAuthority.open({ dir: path.join(s.tok.dir, 'other-ca'), hostnames: [] });
  const { mkdir } = await import('node:fs/promises');
  await mkdir(s.caDir, { recursive: true, mode: 0o700 });
  await writeFile(path.join(s.caDir, 'root.pem'), other.rootPem);
  assert.equal((await refusal(CertificateAuthority.open({ dir: s.caDir, hostnames: [], issuer: signer }))).code, 'ca_issuing_missing');
  // an issuing certificate of another key (the other CA's file key)
  await writeFile(path.join(s.caDir, 'intermediate.pem'), other.chainPem[0]!);
  assert.equal((await refusal(CertificateAuthority.open({ dir: s.caDir, hostnames: [], issuer: signer }))).code, 'ca_issuing_mismatch');
});
