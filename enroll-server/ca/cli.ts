/**
 * `edgeid-server ca …`: the issuing CA's key in a PKCS#11 token (enroll-server/README.md, "Issuing
 * CA key in an HSM").
 *   ca init --pkcs11 [--csr-out FILE] [--config FILE] [--data DIR]
 *       creates the issuing key inside the token (ca.pkcs11 of the config) and then either the
 *       issuing CA certificate signed by the local root (data/ca/root.key), or, with --csr-out, a
 *       PKCS#10 request (RFC 2986) for an offline root to sign.
 *   ca import-issuing CERT [--root ROOT] [--config FILE] [--data DIR]
 *       installs the issuing CA certificate the root signed, after checking that it certifies the
 *       token's key, is a CA certificate for certificate and CRL signing, is valid now and is
 *       signed by the root (ROOT, or data/ca/root.pem).
 */
import 'reflect-metadata';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { certFingerprint } from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import { loadConfig, type Pkcs11KeyConfig, type ServerConfig } from '../config.js';
import { ensurePrivateDir, writeFileAtomic } from '../files.js';
import { CertificateAuthority } from './ca.js';
import { closeIssuerSigner, createTokenKey, openIssuerSigner, type CaSigner } from './keys.js';

export const CA_USAGE = `usage: edgeid-server ca init --pkcs11 [--csr-out FILE] [--config FILE] [--data DIR]
       edgeid-server ca import-issuing CERT [--root ROOT.pem] [--config FILE] [--data DIR]
  init --pkcs11          create the issuing CA key inside the token named by ca.pkcs11 in the config,
                         and its certificate signed by the local root (data/ca/root.key)
  --csr-out FILE         instead, write a CSR for the issuing CA for an offline root to sign
  import-issuing CERT    install the issuing CA certificate signed by the (offline) root
  --root ROOT.pem        the root certificate (required when the data dir has no root.pem)`;

const ISSUING_SUBJECT = 'CN=edgeid Issuing CA, O=edgeid';
const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
type X509Crypto = Parameters<typeof x509.cryptoProvider.set>[0];

/** Takes `--name VALUE` / `--name=VALUE` out of argv. */
function take(argv: string[], name: string): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === name || a.startsWith(name + '=')) {
      const v = a === name ? argv[i + 1] : a.slice(name.length + 1);
      argv.splice(i, a === name ? 2 : 1);
      if (!v) throw new EdgeidError('config_invalid', `${name} needs a value`);
      return v;
    }
  }
  return undefined;
}

function pkcs11Of(config: ServerConfig): Pkcs11KeyConfig {
  if (config.ca.key !== 'pkcs11')
    throw new EdgeidError(
      'config_invalid',
      'config: ca: `ca init --pkcs11` needs "ca": {"key": "pkcs11", "pkcs11": {…}} in the --config file',
      {
        field: 'ca',
      },
    );
  return config.ca.pkcs11;
}

/** Runs `ca …`; returns the exit code. */
export async function runCaCommand(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  const args = [...argv];
  const cmd = args.shift();
  if (cmd === 'init') {
    const i = args.indexOf('--pkcs11');
    if (i < 0)
      throw new EdgeidError('config_invalid', 'ca init: only --pkcs11 is supported (a file key is created by the server on first start)');
    args.splice(i, 1);
    const csrOut = take(args, '--csr-out');
    const config = loadConfig({ argv: args });
    const cfg = pkcs11Of(config);
    const caDir = join(config.dataDir, 'ca');
    const { signer, created, attributes } = await createTokenKey(cfg);
    try {
      out(
        `${created ? 'created' : 'found'} the issuing key "${cfg.keyLabel}" in token "${cfg.token}" ` +
          `(CKA_SENSITIVE ${attributes.sensitive}, CKA_EXTRACTABLE ${attributes.extractable}, CKA_LOCAL ${attributes.local})\n`,
      );
      if (csrOut) {
        const csr = await issuingCsr(signer);
        writeFileAtomic(csrOut, csr.toString('pem') + '\n', 0o644);
        out(
          `wrote the issuing CA's certificate request to ${csrOut}: have the root sign it, then run\n  edgeid-server ca import-issuing CERT --root ROOT.pem\n`,
        );
        return 0;
      }
      const ca = await CertificateAuthority.open({ dir: caDir, hostnames: config.hostnames, issuer: signer });
      out(`issuing CA certificate ${join(caDir, 'intermediate.pem')} signed by the root ${join(caDir, 'root.pem')} (${ca.fingerprint})\n`);
      return 0;
    } finally {
      await closeIssuerSigner(signer);
    }
  }
  if (cmd === 'import-issuing') {
    const rootFile = take(args, '--root');
    const certFile = args[0] && !args[0].startsWith('--') ? args.shift()! : undefined;
    if (!certFile)
      throw new EdgeidError('config_invalid', 'ca import-issuing needs the certificate file: ca import-issuing CERT [--root ROOT.pem]');
    const config = loadConfig({ argv: args });
    const cfg = pkcs11Of(config);
    const caDir = join(config.dataDir, 'ca');
    const signer = await openIssuerSigner({ kind: 'pkcs11', config: cfg });
    try {
      const { root, cert } = await checkIssuing(signer, readCert(certFile), rootFile ? readCert(rootFile) : null, caDir);
      ensurePrivateDir(caDir);
      if (!existsSync(join(caDir, 'root.pem'))) writeFileAtomic(join(caDir, 'root.pem'), root.toString('pem') + '\n', 0o644);
      writeFileAtomic(join(caDir, 'intermediate.pem'), cert.toString('pem') + '\n', 0o644);
      const ca = await CertificateAuthority.open({ dir: caDir, hostnames: config.hostnames, issuer: signer });
      out(
        `installed the issuing CA certificate (${cert.subject}, until ${cert.notAfter.toISOString()}) under the root ${ca.fingerprint}\n`,
      );
      return 0;
    } finally {
      await closeIssuerSigner(signer);
    }
  }
  throw new EdgeidError('config_invalid', `unknown ca command ${cmd ?? '(none)'}\n${CA_USAGE}`);
}

function readCert(file: string): x509.X509Certificate {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new EdgeidError('config_invalid', `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    const first = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(text);
    return new x509.X509Certificate(first ? first[0] : readFileSync(file));
  } catch (e) {
    throw new EdgeidError('ca_issuing_invalid', `${file} is not an X.509 certificate: ${(e as Error).message}`);
  }
}

/**
 * A PKCS#10 request for the issuing CA, signed by the token key (proof of possession, RFC 2986 §3),
 * asking for basicConstraints CA:TRUE pathlen 0 and keyUsage keyCertSign, cRLSign, digitalSignature.
 */
export async function issuingCsr(signer: CaSigner): Promise<x509.Pkcs10CertificateRequest> {
  const publicKey = await webcrypto.subtle.importKey('spki', signer.spki, EC, true, ['verify']);
  // the public key is exported by Node's WebCrypto, the request signed by the token
  const both = {
    subtle: {
      exportKey: (f: 'spki', k: webcrypto.CryptoKey) => webcrypto.subtle.exportKey(f, k),
      sign: (a: webcrypto.EcdsaParams, k: webcrypto.CryptoKey, d: Uint8Array) => signer.crypto.subtle.sign(a, k, d),
      digest: (a: string, d: Uint8Array) => webcrypto.subtle.digest(a, d),
    },
    getRandomValues: <T extends ArrayBufferView>(a: T) => webcrypto.getRandomValues(a as never) as T,
  };
  return x509.Pkcs10CertificateRequestGenerator.create(
    {
      name: ISSUING_SUBJECT,
      keys: { publicKey, privateKey: signer.key } as unknown as webcrypto.CryptoKeyPair,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
          true,
        ),
      ],
    },
    both as unknown as X509Crypto,
  );
}

/** The checks of `ca import-issuing` (RFC 5280 §4.2.1.3, §4.2.1.9, §6.1.3). */
export async function checkIssuing(
  signer: CaSigner,
  cert: x509.X509Certificate,
  rootArg: x509.X509Certificate | null,
  caDir: string,
): Promise<{ root: x509.X509Certificate; cert: x509.X509Certificate }> {
  const rootPem = join(caDir, 'root.pem');
  const local = existsSync(rootPem) ? new x509.X509Certificate(readFileSync(rootPem, 'utf8')) : null;
  if (!rootArg && !local)
    throw new EdgeidError('ca_issuing_invalid', `${rootPem} does not exist: pass the root certificate with --root ROOT.pem`);
  if (rootArg && local && !Buffer.from(rootArg.rawData).equals(Buffer.from(local.rawData)))
    throw new EdgeidError(
      'ca_issuing_invalid',
      `--root is not the root this data dir already trusts (${rootPem}, ${certFingerprint(Buffer.from(local.rawData))})`,
    );
  const root = (rootArg ?? local)!;
  const bad = (why: string): never => {
    throw new EdgeidError('ca_issuing_invalid', `the issuing CA certificate ${why}`);
  };
  if (!Buffer.from(cert.publicKey.rawData).equals(signer.spki))
    throw new EdgeidError('ca_issuing_mismatch', "the issuing CA certificate's public key is not the key in the token");
  const rootBc = root.getExtension(x509.BasicConstraintsExtension);
  if (!rootBc?.ca || !(await root.verify({ publicKey: root.publicKey, signatureOnly: true })))
    bad('names a root that is not a self-signed CA certificate');
  if (cert.issuer !== root.subject || !(await cert.verify({ publicKey: root.publicKey, signatureOnly: true })))
    bad('is not signed by the root');
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  if (!bc?.ca) bad('is not a CA certificate (basicConstraints CA:TRUE)');
  const ku = cert.getExtension(x509.KeyUsagesExtension);
  const need = x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign;
  if (!ku || (ku.usages & need) !== need) bad('lacks keyUsage keyCertSign and cRLSign');
  const now = Date.now();
  if (cert.notBefore.getTime() > now + 60_000 || cert.notAfter.getTime() <= now)
    bad(`is not valid now (${cert.notBefore.toISOString()} to ${cert.notAfter.toISOString()})`);
  const current = join(caDir, 'intermediate.pem');
  if (existsSync(current)) {
    const old = new x509.X509Certificate(readFileSync(current, 'utf8'));
    if (!Buffer.from(old.publicKey.rawData).equals(signer.spki))
      throw new EdgeidError('ca_issuing_mismatch', `${current} certifies another key: a new issuing key is a CA rotation, not an import`);
  }
  return { root, cert };
}
