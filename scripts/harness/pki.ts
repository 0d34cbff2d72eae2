import 'reflect-metadata';
/**
 * PKI for the harness. Product certificates come from the edgeid CA and device keys from the TPM;
 * these stand in where neither matters, or give the test's own eyes a certificate:
 * - a throwaway software CA (makeTestCa) for the TPM TLS tests and the TPM bench: the broker's
 *   certificate (software key) and client certificates for TPM-resident keys (only their public
 *   keys pass through here);
 * - an openssl PKI (makeTestPki) for tests of the broker plumbing alone;
 * - software client certificates from a running server's edgeid issuing CA, for subscribers and
 *   injectors that observe the broker (devices' keys are in their TPMs).
 */
import { execFile } from 'node:child_process';
import { webcrypto } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import * as x509 from '@peculiar/x509';
import { parsePublic, publicKeySpkiDer } from '../../protocol/tpm/index.js';
import type { KeyBlob } from '../../agent/tpm/index.js';
import { tmpDir } from './fs.js';

const run = promisify(execFile);

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALG = { name: 'ECDSA', hash: 'SHA-256' } as const;
const KEY_ALG = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const HOUR = 3600_000;

export interface TestCa {
  caPem: string;
  /** The broker's certificate (CN localhost, SAN localhost + 127.0.0.1) and its PKCS#8 key. */
  server: { certPem: string; keyPem: string };
  /** A client certificate with this CN for the TPM key's public key. */
  issueForTpmKey(key: KeyBlob, cn: string): Promise<string>;
  /** A client certificate for a fresh software key (to test mismatches). */
  issueSoftware(cn: string): Promise<string>;
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

export async function makeTestCa(): Promise<TestCa> {
  const subtle = webcrypto.subtle;
  const caKeys = (await subtle.generateKey(KEY_ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const now = Date.now();
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=edgeid tls test CA',
    notBefore: new Date(now - HOUR),
    notAfter: new Date(now + 24 * HOUR),
    keys: caKeys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    ],
  });
  let serial = 1;
  const issue = async (subject: string, publicKey: x509.PublicKey | webcrypto.CryptoKey, extensions: x509.Extension[]) =>
    x509.X509CertificateGenerator.create({
      serialNumber: (++serial).toString(16).padStart(2, '0'),
      subject,
      issuer: ca.subject,
      notBefore: new Date(now - HOUR),
      notAfter: new Date(now + 24 * HOUR),
      publicKey,
      signingKey: caKeys.privateKey,
      signingAlgorithm: ALG,
      extensions: [new x509.BasicConstraintsExtension(false, undefined, true), ...extensions],
    });

  const serverKeys = (await subtle.generateKey(KEY_ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const serverCert = await issue('CN=localhost', serverKeys.publicKey, [
    new x509.SubjectAlternativeNameExtension([
      { type: 'dns', value: 'localhost' },
      { type: 'ip', value: '127.0.0.1' },
    ]),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
  ]);
  const clientExtensions = () => [
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
  ];

  return {
    caPem: ca.toString('pem') + '\n',
    server: {
      certPem: serverCert.toString('pem') + '\n',
      keyPem: pem('PRIVATE KEY', await subtle.exportKey('pkcs8', serverKeys.privateKey)),
    },
    async issueForTpmKey(key, cn) {
      const spki = publicKeySpkiDer(parsePublic(key.public));
      const cert = await issue(`CN=${cn}`, new x509.PublicKey(spki), clientExtensions());
      return cert.toString('pem') + '\n';
    },
    async issueSoftware(cn) {
      const keys = (await subtle.generateKey(KEY_ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
      return (await issue(`CN=${cn}`, keys.publicKey, clientExtensions())).toString('pem') + '\n';
    },
  };
}

// ---- an openssl PKI for the broker plumbing alone ---------------------------------------------

export interface TestPki {
  dir: string;
  caFile: string;
  /** key/cert paths for each issued name */
  files(name: string): { cert: string; key: string };
}

export async function makeTestPki(dir: string, leaves: { name: string; cn: string; days?: number }[], caCn = 'test-ca'): Promise<TestPki> {
  const o = (args: string[]) => run('openssl', args, { cwd: dir });
  await o(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'ca.key']);
  await o(['req', '-x509', '-new', '-key', 'ca.key', '-subj', `/CN=${caCn}`, '-days', '1', '-out', 'ca.pem']);
  for (const { name, cn, days } of leaves) {
    await o(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`]);
    await o(['req', '-new', '-key', `${name}.key`, '-subj', `/CN=${cn}`, '-out', `${name}.csr`]);
    await o([
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-days',
      String(days ?? 1),
      '-out',
      `${name}.pem`,
    ]);
  }
  return {
    dir,
    caFile: path.join(dir, 'ca.pem'),
    files: (name) => ({ cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}.key`) }),
  };
}

// ---- software certificates from a server's edgeid CA ------------------------------------------

/** A software client certificate (PEM leaf + issuing CA) and key with this CN, from the server's edgeid issuing CA (in its data dir). */
export async function softwareClientCert(srv: { dataDir: string }, cn: string): Promise<{ cert: string; key: string }> {
  const dir = await tmpDir('edgeid-sw-cert-');
  const ca = path.join(srv.dataDir, 'ca');
  try {
    await run('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', path.join(dir, 'k.pem')]);
    await run('openssl', ['req', '-new', '-key', path.join(dir, 'k.pem'), '-subj', `/CN=${cn}`, '-out', path.join(dir, 'r.csr')]);
    await writeFile(path.join(dir, 'ext.cnf'), 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n');
    await run('openssl', [
      'x509',
      '-req',
      '-in',
      path.join(dir, 'r.csr'),
      '-CA',
      path.join(ca, 'intermediate.pem'),
      '-CAkey',
      path.join(ca, 'intermediate.key'),
      '-CAcreateserial',
      '-days',
      '1',
      '-extfile',
      path.join(dir, 'ext.cnf'),
      '-out',
      path.join(dir, 'c.pem'),
    ]);
    return {
      cert: (await readFile(path.join(dir, 'c.pem'), 'utf8')) + (await readFile(path.join(ca, 'intermediate.pem'), 'utf8')),
      key: await readFile(path.join(dir, 'k.pem'), 'utf8'),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** PEM bundle of the server's edgeid issuing CA and root (what the broker's cafile holds). */
export async function edgeidCaBundle(srv: { dataDir: string }): Promise<string> {
  const ca = path.join(srv.dataDir, 'ca');
  return (await readFile(path.join(ca, 'intermediate.pem'), 'utf8')) + (await readFile(path.join(ca, 'root.pem'), 'utf8'));
}
