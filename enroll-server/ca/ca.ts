import 'reflect-metadata';
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, webcrypto, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { AsnConvert } from '@peculiar/asn1-schema';
import { CRLNumber, id_ce_cRLNumber } from '@peculiar/asn1-x509';
import { certFingerprint, type ControlCommand, type RevokeReason, type SignedControl } from '../../protocol/api.js';
import { CONTROL_SIGNER_CN, CONTROL_SIGNER_EKU, signControlCommand } from '../../protocol/control.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import { ensurePrivateDir, writeFileAtomic } from '../files.js';
import { openIssuerSigner, type CaSigner } from './keys.js';

type CryptoKey = webcrypto.CryptoKey;
type X509Crypto = Parameters<typeof x509.cryptoProvider.set>[0];
x509.cryptoProvider.set(webcrypto as unknown as X509Crypto);

const ALG = { name: 'ECDSA', hash: 'SHA-256' } as const;
const EC_IMPORT = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const YEAR = 365 * 86400 * 1000;
/** notBefore is backdated by this much for clock skew (issue: ≤ 60 s). */
export const BACKDATE_MS = 60_000;

const CRL_REASON: Record<RevokeReason, x509.X509CrlReason> = {
  unspecified: x509.X509CrlReason.unspecified,
  'key-compromise': x509.X509CrlReason.keyCompromise,
  'affiliation-changed': x509.X509CrlReason.affiliationChanged,
  superseded: x509.X509CrlReason.superseded,
  'cessation-of-operation': x509.X509CrlReason.cessationOfOperation,
  'privilege-withdrawn': x509.X509CrlReason.privilegeWithdrawn,
};

interface KeyPair {
  key: KeyObject;
  signingKey: CryptoKey;
}

async function loadOrCreateKey(path: string): Promise<{ pair: KeyPair; created: boolean }> {
  let created = false;
  let pem: string;
  if (existsSync(path)) {
    pem = readFileSync(path, 'utf8');
  } else {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    writeFileAtomic(path, pem, 0o600);
    created = true;
  }
  const key = createPrivateKey(pem);
  const der = key.export({ type: 'pkcs8', format: 'der' });
  const signingKey = await webcrypto.subtle.importKey('pkcs8', der, EC_IMPORT, false, ['sign']);
  return { pair: { key, signingKey }, created };
}

function spkiOf(key: KeyObject): Buffer {
  return createPublicKey(key).export({ type: 'spki', format: 'der' });
}

/** 128 random bits, first byte non-zero so the serial really has 16 bytes. */
export function randomSerial(): string {
  const b = randomBytes(16);
  if (b[0] === 0) b[0] = 1;
  return b.toString('hex');
}

export interface IssuedCertificate {
  serial: string;
  der: Buffer;
  pem: string;
  notBefore: Date;
  notAfter: Date;
}

export interface CrlData {
  der: Buffer;
  pem: string;
  number: bigint;
  thisUpdate: Date;
  nextUpdate: Date;
}

/** The issued certificate in the forms callers store and send. */
function issued(cert: x509.X509Certificate): IssuedCertificate {
  return {
    serial: cert.serialNumber,
    der: Buffer.from(cert.rawData),
    pem: cert.toString('pem') + '\n',
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
  };
}

export interface CaOptions {
  /** Directory for keys and certificates (data/ca). */
  dir: string;
  /** DNS names / IPs for the server's TLS certificate (localhost and 127.0.0.1 are always added). */
  hostnames: string[];
  /**
   * The issuing CA's signing key (ca/keys.ts, e.g. in a PKCS#11 token); default: the file key
   * data/ca/intermediate.key. With a signer, intermediate.pem must hold its public key, and a
   * root.pem without root.key is an offline root (the intermediate is then imported, never made here).
   */
  issuer?: CaSigner;
}

/**
 * The edgeid CA: an ECDSA P-256 root and an issuing intermediate, created on first start (keys
 * 0600 in data/ca), the server's TLS certificate and the control-command signing key, both issued
 * by the intermediate. Issues device certificates and CRLs.
 */
export class CertificateAuthority {
  private constructor(
    readonly root: x509.X509Certificate,
    readonly intermediate: x509.X509Certificate,
    private readonly issuerKey: CaSigner,
    readonly tls: { key: string; cert: string },
    private readonly control: { key: KeyObject; certPem: string },
    readonly created: boolean,
  ) {}

  static async open(opts: CaOptions): Promise<CertificateAuthority> {
    ensurePrivateDir(opts.dir);
    const p = (f: string) => join(opts.dir, f);
    const offlineRoot = opts.issuer !== undefined && existsSync(p('root.pem')) && !existsSync(p('root.key'));
    const rootKey = offlineRoot ? null : await loadOrCreateKey(p('root.key'));
    let root: x509.X509Certificate;
    if (!rootKey || (!rootKey.created && existsSync(p('root.pem')))) {
      root = new x509.X509Certificate(readFileSync(p('root.pem'), 'utf8'));
    } else {
      const now = Date.now();
      const name = 'CN=edgeid Root CA, O=edgeid';
      root = await x509.X509CertificateGenerator.create({
        serialNumber: randomSerial(),
        subject: name,
        issuer: name,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: new Date(now + 20 * YEAR),
        publicKey: spkiOf(rootKey.pair.key),
        signingKey: rootKey.pair.signingKey,
        signingAlgorithm: ALG,
        extensions: [
          new x509.BasicConstraintsExtension(true, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
          await x509.SubjectKeyIdentifierExtension.create(spkiOf(rootKey.pair.key)),
        ],
      });
      writeFileAtomic(p('root.pem'), root.toString('pem') + '\n', 0o644);
    }

    const interCreated = !opts.issuer && !existsSync(p('intermediate.key'));
    const interKey = opts.issuer ?? (await openIssuerSigner({ kind: 'file', path: p('intermediate.key') }));
    let intermediate: x509.X509Certificate;
    const interIssued = interCreated || !!rootKey?.created || !existsSync(p('intermediate.pem'));
    if (!interIssued) {
      intermediate = new x509.X509Certificate(readFileSync(p('intermediate.pem'), 'utf8'));
      if (opts.issuer && !Buffer.from(intermediate.publicKey.rawData).equals(interKey.spki))
        throw new EdgeidError('ca_issuing_mismatch', `${p('intermediate.pem')} was issued for another key than the configured signing key`);
    } else {
      if (!rootKey) throw new EdgeidError('ca_issuing_missing', `${p('intermediate.pem')} is missing and the root key is offline`);
      const now = Date.now();
      intermediate = await x509.X509CertificateGenerator.create({
        serialNumber: randomSerial(),
        subject: 'CN=edgeid Issuing CA, O=edgeid',
        issuer: root.subject,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: new Date(now + 10 * YEAR),
        publicKey: interKey.spki,
        signingKey: rootKey.pair.signingKey,
        signingAlgorithm: ALG,
        extensions: [
          new x509.BasicConstraintsExtension(true, 0, true),
          new x509.KeyUsagesExtension(
            x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
            true,
          ),
          await x509.SubjectKeyIdentifierExtension.create(interKey.spki),
          await x509.AuthorityKeyIdentifierExtension.create(spkiOf(rootKey.pair.key)),
        ],
      });
      writeFileAtomic(p('intermediate.pem'), intermediate.toString('pem') + '\n', 0o644);
    }

    const names = [...new Set([...opts.hostnames, 'localhost', '127.0.0.1', '::1'])];
    const serverKey = await loadOrCreateKey(p('server.key'));
    let serverCert: x509.X509Certificate | null = null;
    if (!serverKey.created && existsSync(p('server.pem'))) {
      const c = new x509.X509Certificate(readFileSync(p('server.pem'), 'utf8').split(/(?<=-----END CERTIFICATE-----)/)[0]!);
      const san = c.getExtension(x509.SubjectAlternativeNameExtension);
      const have = new Set(san?.names.items.map((n) => n.value.toLowerCase()) ?? []);
      const fresh = c.notAfter.getTime() - Date.now() > 30 * 86400 * 1000;
      const issuedByUs = c.issuer === intermediate.subject && (await c.verify({ publicKey: intermediate.publicKey, signatureOnly: true }));
      if (fresh && issuedByUs && names.every((n) => have.has(n.toLowerCase()))) serverCert = c;
    }
    if (!serverCert) {
      serverCert = await CertificateAuthority.issueWith(interKey, intermediate, {
        subject: 'CN=edgeid server, O=edgeid',
        spki: spkiOf(serverKey.pair.key),
        lifetimeMs: 90 * 86400 * 1000,
        extensions: [
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
          new x509.SubjectAlternativeNameExtension(
            names.map((n) => ({ type: isIP(n) ? ('ip' as const) : ('dns' as const), value: n })),
            false,
          ),
        ],
      });
      writeFileAtomic(p('server.pem'), serverCert.toString('pem') + '\n' + intermediate.toString('pem') + '\n', 0o644);
    }

    const controlKey = await loadOrCreateKey(p('control.key'));
    let controlPem: string;
    if (!controlKey.created && !interIssued && existsSync(p('control.pem'))) {
      controlPem = readFileSync(p('control.pem'), 'utf8');
    } else {
      const c = await CertificateAuthority.issueWith(interKey, intermediate, {
        subject: `CN=${CONTROL_SIGNER_CN}, O=edgeid`,
        spki: spkiOf(controlKey.pair.key),
        lifetimeMs: 5 * YEAR,
        extensions: [
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension([CONTROL_SIGNER_EKU], false),
        ],
      });
      controlPem = c.toString('pem') + '\n';
      writeFileAtomic(p('control.pem'), controlPem, 0o644);
    }

    return new CertificateAuthority(
      root,
      intermediate,
      interKey,
      { key: readFileSync(p('server.key'), 'utf8'), cert: readFileSync(p('server.pem'), 'utf8') },
      { key: controlKey.pair.key, certPem: controlPem },
      !!rootKey?.created,
    );
  }

  private static async issueWith(
    issuerKey: CaSigner,
    issuer: x509.X509Certificate,
    p: { subject: string; spki: Buffer; lifetimeMs: number; extensions: x509.Extension[]; serial?: string; now?: number },
  ): Promise<x509.X509Certificate> {
    const now = p.now ?? Date.now();
    return x509.X509CertificateGenerator.create(
      {
      serialNumber: p.serial ?? randomSerial(),
      subject: p.subject,
      issuer: issuer.subject,
      // X.509 times have whole seconds: round up so the backdate never exceeds 60 s
      notBefore: new Date(Math.ceil((now - BACKDATE_MS) / 1000) * 1000),
      notAfter: new Date(now + p.lifetimeMs),
      publicKey: p.spki,
      signingKey: issuerKey.key,
      signingAlgorithm: ALG,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        ...p.extensions,
        await x509.SubjectKeyIdentifierExtension.create(p.spki),
        await x509.AuthorityKeyIdentifierExtension.create(issuer.publicKey),
      ],
      },
      issuerKey.crypto as unknown as X509Crypto,
    );
  }

  get rootPem(): string {
    return this.root.toString('pem') + '\n';
  }
  get rootDer(): Buffer {
    return Buffer.from(this.root.rawData);
  }
  /** PEM chain a device gets with its certificate: issuing intermediate, then root. */
  get chainPem(): string[] {
    return [this.intermediate.toString('pem') + '\n', this.rootPem];
  }
  /** `sha256:<hex>` of the root certificate: what enrollment URIs pin. */
  get fingerprint(): string {
    return certFingerprint(this.rootDer);
  }
  get controlCertPem(): string {
    return this.control.certPem;
  }

  /** A device certificate for a TPM session key (SPKI DER; RFC 5280 §4.1, §4.2; test/unit/server-ca.test.ts checks every field). */
  async issueDevice(p: {
    deviceId: string;
    zone: string;
    spki: Buffer;
    lifetimeSeconds: number;
    crlUrl: string;
  }): Promise<IssuedCertificate> {
    const serial = randomSerial();
    const cert = await CertificateAuthority.issueWith(this.issuerKey, this.intermediate, {
      serial,
      subject: `CN=${p.deviceId}`,
      spki: p.spki,
      lifetimeMs: p.lifetimeSeconds * 1000,
      extensions: [
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `urn:edgeid:${p.zone}:${p.deviceId}` }], false),
        new x509.CRLDistributionPointsExtension([p.crlUrl], false),
      ],
    });
    return issued(cert);
  }

  /** A client certificate for a service identity (e.g. the broker's dynsec admin). */
  async issueClient(p: { commonName: string; spki: Buffer; lifetimeSeconds: number }): Promise<IssuedCertificate> {
    const cert = await CertificateAuthority.issueWith(this.issuerKey, this.intermediate, {
      subject: `CN=${p.commonName}`,
      spki: p.spki,
      lifetimeMs: p.lifetimeSeconds * 1000,
      extensions: [
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth], false),
      ],
    });
    return issued(cert);
  }

  /** A TLS server certificate for another service of the deployment (the MQTT broker). */
  async issueServer(p: { commonName: string; hostnames: string[]; spki: Buffer; lifetimeSeconds: number }): Promise<IssuedCertificate> {
    const cert = await CertificateAuthority.issueWith(this.issuerKey, this.intermediate, {
      subject: `CN=${p.commonName}`,
      spki: p.spki,
      lifetimeMs: p.lifetimeSeconds * 1000,
      extensions: [
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
        new x509.SubjectAlternativeNameExtension(
          p.hostnames.map((n) => ({ type: isIP(n) ? ('ip' as const) : ('dns' as const), value: n })),
          false,
        ),
      ],
    });
    return issued(cert);
  }

  async createCrl(p: {
    number: bigint;
    validitySeconds: number;
    entries: { serial: string; revokedAt: Date; reason: RevokeReason }[];
  }): Promise<CrlData> {
    const thisUpdate = new Date(Date.now() - BACKDATE_MS);
    const nextUpdate = new Date(Date.now() + p.validitySeconds * 1000);
    const crl = await x509.X509CrlGenerator.create(
      {
      issuer: this.intermediate.subject,
      thisUpdate,
      nextUpdate,
      signingKey: this.issuerKey.key,
      signingAlgorithm: ALG,
      entries: p.entries.map((e) => ({ serialNumber: e.serial, revocationDate: e.revokedAt, reason: CRL_REASON[e.reason] })),
      extensions: [
        await x509.AuthorityKeyIdentifierExtension.create(this.intermediate.publicKey),
        new x509.Extension(id_ce_cRLNumber, false, AsnConvert.serialize(new CRLNumber(Number(p.number)))),
      ],
      },
      this.issuerKey.crypto as unknown as X509Crypto,
    );
    const der = Buffer.from(crl.rawData);
    // OpenSSL and Mosquitto read the RFC 7468 label "X509 CRL" (@peculiar writes "CRL")
    const pem = `-----BEGIN X509 CRL-----\n${der
      .toString('base64')
      .replace(/(.{64})/g, '$1\n')
      .replace(/\n$/, '')}\n-----END X509 CRL-----\n`;
    return { der, pem, number: p.number, thisUpdate, nextUpdate };
  }

  /**
   * Signs a control command for a device with the control key; protocol/control.ts
   * defines the envelope and how the agent verifies it. `id` and `issuedAt` default to fresh values.
   */
  signControl(command: Omit<ControlCommand, 'id' | 'issuedAt'> & { id?: string; issuedAt?: string }): SignedControl {
    return signControlCommand(command, { key: this.control.key, certPem: this.control.certPem + this.intermediate.toString('pem') + '\n' });
  }
}
