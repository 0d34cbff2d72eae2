import 'reflect-metadata';
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  KeyObject,
  randomBytes,
  sign,
  webcrypto,
  X509Certificate,
} from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { AsnConvert } from '@peculiar/asn1-schema';
import { CRLNumber, id_ce_cRLNumber } from '@peculiar/asn1-x509';
import { certFingerprint, type ControlCommand, type RevokeReason, type SignedControl } from '../../protocol/api.js';
import { CONTROL_SIGNER_CN, CONTROL_SIGNER_EKU, signControlCommand } from '../../protocol/control.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import { ensurePrivateDir, writeFileAtomic } from '../files.js';
import { p1363ToDer } from './der.js';
import { certificateDer, deviceTbs, deviceTemplate, type DeviceTemplate } from './device-template.js';
import { openIssuerSigner, type CaSigner } from './keys.js';

export type { CaSigner } from './keys.js';

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

/** One issuing CA: `name` is its file stem in data/ca (`<name>.pem`, `<name>.key`). */
export interface IssuingCa {
  name: string;
  cert: x509.X509Certificate;
  signer: CaSigner;
}

/** data/ca/issuing.json: the issuing CAs in the order they were created, and the one that issues now. */
interface IssuingList {
  active: string;
  names: string[];
}
const ISSUING_LIST = 'issuing.json';
/** The first issuing CA (its files predate rotation). */
export const FIRST_ISSUING = 'intermediate';
const ISSUING_LIFETIME_MS = 10 * YEAR;
/** The new root of a root rotation (data/ca/root-2.key, root-2.pem) and its cross certificate by the first root (root-2-cross.pem). */
const ROOT2 = 'root-2';
const ROOT2_CROSS = 'root-2-cross.pem';
const ROOT2_SUBJECT = 'CN=edgeid Root CA 2, O=edgeid';

/**
 * The second root of a root rotation: R2 self-signed, and X(R2), the cross certificate with R2's
 * subject and key issued by the first root R1, through which chains of issuing CAs under R2 still
 * end in R1 (RFC 4158 §2.3 cross-certification).
 */
export interface NextRoot {
  cert: x509.X509Certificate;
  cross: x509.X509Certificate;
  key: KeyPair;
}

/**
 * The CRL distribution point path of an issuing CA's certificates: /v1/crl for the first one (as
 * before rotation existed), /v1/crl/<name> for later ones (RFC 5280 §4.2.1.13: the CRL there is
 * signed by the certificate's own issuer).
 */
export function crlPath(issuer: string): string {
  return issuer === FIRST_ISSUING ? '/v1/crl' : `/v1/crl/${issuer}`;
}

function fileSigner(pair: KeyPair): CaSigner {
  return { crypto: webcrypto as webcrypto.Crypto, key: pair.signingKey, spki: spkiOf(pair.key) };
}

/** One CA certificate and when it expires, for `ca status`. */
export interface CaExpiry {
  /** root, issuing:<name>, server-tls, control */
  ca: string;
  subject: string;
  notBefore: string;
  notAfter: string;
  /** For issuing CAs: whether it issues new certificates now. */
  active?: boolean;
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

/** Device-certificate templates per issuing CA, made on first use. */
const DEVICE_TEMPLATES = new WeakMap<IssuingCa, DeviceTemplate>();
/** node:crypto KeyObjects of file-key signers (a sign call on a KeyObject costs less than a WebCrypto job). */
const NODE_KEYS = new WeakMap<CaSigner, KeyObject>();

/**
 * A DER ECDSA-with-SHA-256 signature over `data` by an issuing CA: a key of Node's own WebCrypto is
 * used through node:crypto directly; any other provider (a PKCS#11 token) through its WebCrypto
 * sign, whose IEEE P1363 r‖s is turned into DER.
 */
async function signDer(signer: CaSigner, data: Buffer): Promise<Buffer> {
  if ((signer.crypto as unknown) === webcrypto) {
    let key = NODE_KEYS.get(signer);
    if (!key) NODE_KEYS.set(signer, (key = KeyObject.from(signer.key)));
    // with a callback, node:crypto signs in libuv's thread pool, off the event loop
    return new Promise((resolve, reject) =>
      sign('sha256', data, { key: key!, dsaEncoding: 'der' }, (err, sig) => (err ? reject(err) : resolve(sig))),
    );
  }
  return p1363ToDer(Buffer.from(await signer.crypto.subtle.sign(ALG, signer.key, data)));
}

/** RFC 7468 textual encoding, as the library writes it, plus a final newline. */
function pemOf(label: string, der: Buffer): string {
  return `-----BEGIN ${label}-----\n${der.toString('base64').replace(/(.{64})(?!$)/g, '$1\n')}\n-----END ${label}-----\n`;
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
   * The first issuing CA's signing key (ca/keys.ts, e.g. in a PKCS#11 token); default: the file key
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
    /** null: the root is offline (only root.pem here). */
    private readonly rootKey: KeyPair | null,
    private issuers: IssuingCa[],
    private activeName: string,
    public tls: { key: string; cert: string },
    private control: { key: KeyObject; certPem: string },
    readonly created: boolean,
    private readonly opts: CaOptions,
    private root2: NextRoot | null,
  ) {}

  /** The second root of a root rotation, when one was made (ca rotate-root). */
  get nextRoot(): NextRoot | null {
    return this.root2;
  }

  /** Whether issuing CA `ca` was signed by the second root (its chain then goes through X(R2) to R1). */
  private underRoot2(ca: IssuingCa): boolean {
    return !!this.root2 && ca.cert.issuer === this.root2.cert.subject;
  }

  /**
   * The CA certificates above issuing CA `ca` up to the first root R1, which every agent pins:
   * [R1], or [X(R2), R1] for an issuing CA under R2.
   */
  private chainAbove(ca: IssuingCa): string[] {
    return this.underRoot2(ca) ? [this.root2!.cross.toString('pem') + '\n', this.rootPem] : [this.rootPem];
  }

  /** The issuing CA that issues new certificates. */
  get active(): IssuingCa {
    return this.issuers.find((i) => i.name === this.activeName)!;
  }
  /** The active issuing CA's certificate. */
  get intermediate(): x509.X509Certificate {
    return this.active.cert;
  }
  /** Every issuing CA, oldest first (older ones still sign their CRLs while their certificates live). */
  get issuing(): readonly IssuingCa[] {
    return this.issuers;
  }
  /** The issuing CA of a certificate (by issuer name and signature), if it is one of ours. */
  async issuerOf(cert: x509.X509Certificate): Promise<IssuingCa | null> {
    for (const i of this.issuers) {
      if (cert.issuer === i.cert.subject && (await cert.verify({ publicKey: i.cert.publicKey, signatureOnly: true }))) return i;
    }
    return null;
  }

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

    const root2 = await CertificateAuthority.loadRoot2(opts.dir, root);

    const interCreated = !opts.issuer && !existsSync(p(`${FIRST_ISSUING}.key`));
    const interKey = opts.issuer ?? (await openIssuerSigner({ kind: 'file', path: p(`${FIRST_ISSUING}.key`) }));
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
    const issuers: IssuingCa[] = [{ name: FIRST_ISSUING, cert: intermediate, signer: interKey }];
    let activeName = FIRST_ISSUING;
    if (!interCreated && existsSync(p(ISSUING_LIST))) {
      const list = JSON.parse(readFileSync(p(ISSUING_LIST), 'utf8')) as IssuingList;
      for (const name of list.names) {
        if (name === FIRST_ISSUING) continue;
        if (!/^issuing-[0-9]+$/.test(name) || !existsSync(p(`${name}.key`)) || !existsSync(p(`${name}.pem`))) {
          throw new Error(`${p(ISSUING_LIST)} names issuing CA ${name}, but ${name}.key / ${name}.pem are missing`);
        }
        const k = await loadOrCreateKey(p(`${name}.key`));
        issuers.push({ name, cert: new x509.X509Certificate(readFileSync(p(`${name}.pem`), 'utf8')), signer: fileSigner(k.pair) });
      }
      if (!issuers.some((i) => i.name === list.active))
        throw new Error(`${p(ISSUING_LIST)}: the active issuing CA ${list.active} is not listed`);
      activeName = list.active;
    }
    const active = issuers.find((i) => i.name === activeName)!;

    const names = [...new Set([...opts.hostnames, 'localhost', '127.0.0.1', '::1'])];
    const serverKey = await loadOrCreateKey(p('server.key'));
    let serverCert: x509.X509Certificate | null = null;
    if (!serverKey.created && existsSync(p('server.pem'))) {
      const c = new x509.X509Certificate(readFileSync(p('server.pem'), 'utf8').split(/(?<=-----END CERTIFICATE-----)/)[0]!);
      const san = c.getExtension(x509.SubjectAlternativeNameExtension);
      const have = new Set(san?.names.items.map((n) => n.value.toLowerCase()) ?? []);
      const fresh = c.notAfter.getTime() - Date.now() > 30 * 86400 * 1000;
      const issuedByUs = c.issuer === active.cert.subject && (await c.verify({ publicKey: active.cert.publicKey, signatureOnly: true }));
      if (fresh && issuedByUs && names.every((n) => have.has(n.toLowerCase()))) serverCert = c;
    }
    if (!serverCert) {
      const cross = root2 && active.cert.issuer === root2.cert.subject ? root2.cross.toString('pem') + '\n' : '';
      await CertificateAuthority.issueServerTls(opts.dir, active, names, spkiOf(serverKey.pair.key), cross);
    }

    const controlKey = await loadOrCreateKey(p('control.key'));
    let controlPem: string;
    const controlFile = existsSync(p('control.pem')) ? new x509.X509Certificate(readFileSync(p('control.pem'), 'utf8')) : null;
    if (!controlKey.created && !interIssued && controlFile && controlFile.issuer === active.cert.subject) {
      controlPem = readFileSync(p('control.pem'), 'utf8');
    } else {
      controlPem = await CertificateAuthority.issueControl(opts.dir, active, spkiOf(controlKey.pair.key));
    }

    return new CertificateAuthority(
      root,
      rootKey?.pair ?? null,
      issuers,
      activeName,
      { key: readFileSync(p('server.key'), 'utf8'), cert: readFileSync(p('server.pem'), 'utf8') },
      { key: controlKey.pair.key, certPem: controlPem },
      !!rootKey?.created,
      opts,
      root2,
    );
  }

  /**
   * R2 and X(R2) from data/ca when all three files are there and belong together (X names R2's
   * subject and key and verifies under R1); a rotation interrupted before it wrote all three has
   * made nothing that issues, and `prepareRoot` completes it.
   */
  private static async loadRoot2(dir: string, r1: x509.X509Certificate): Promise<NextRoot | null> {
    const p = (f: string) => join(dir, f);
    if (!existsSync(p(`${ROOT2}.key`)) || !existsSync(p(`${ROOT2}.pem`)) || !existsSync(p(ROOT2_CROSS))) return null;
    const { pair } = await loadOrCreateKey(p(`${ROOT2}.key`));
    const cert = new x509.X509Certificate(readFileSync(p(`${ROOT2}.pem`), 'utf8'));
    const cross = new x509.X509Certificate(readFileSync(p(ROOT2_CROSS), 'utf8'));
    const spki = spkiOf(pair.key);
    if (
      !Buffer.from(cert.publicKey.rawData).equals(spki) ||
      !Buffer.from(cross.publicKey.rawData).equals(spki) ||
      cross.subject !== cert.subject ||
      cross.issuer !== r1.subject ||
      !(await cross.verify({ publicKey: r1.publicKey, signatureOnly: true }))
    )
      throw new EdgeidError(
        'ca_issuing_mismatch',
        `${p(`${ROOT2}.pem`)}, ${p(`${ROOT2}.key`)} and ${p(ROOT2_CROSS)} do not belong together or to ${p('root.pem')}`,
      );
    return { cert, cross, key: pair };
  }

  /**
   * First step of a root rotation: the new root R2 (file key root-2.key 0600, self-signed
   * root-2.pem, 20 years) and X(R2) (root-2-cross.pem): R2's subject and key, issued by R1, a CA
   * for certificates and CRLs (RFC 5280 §4.2.1.3, §4.2.1.9), valid no longer than R1. Files that
   * an interrupted run left are reused when they match. Nothing issues under R2 before
   * `prepareIssuing(now, 'root-2')` and `activateIssuing`.
   */
  async prepareRoot(now = Date.now()): Promise<NextRoot> {
    if (this.opts.issuer)
      throw new EdgeidError(
        'ca_rotation_invalid',
        'the issuing key is in a PKCS#11 token: a root rotation here would put the new issuing key in a file',
      );
    const r1Key = this.rootKey;
    if (!r1Key)
      throw new EdgeidError('ca_rotation_invalid', 'the root key is offline: the cross certificate X(R2) is signed by the current root');
    if (this.root2 && this.underRoot2(this.active))
      throw new EdgeidError(
        'ca_rotation_invalid',
        'the root was rotated already (root-2): the next steps (chains ending in R2, dropping R1) are a procedure in docs/BACKUP-AND-CA-ROTATION.md',
      );
    if (this.root2) return this.root2;
    const dir = this.opts.dir;
    const { pair } = await loadOrCreateKey(join(dir, `${ROOT2}.key`));
    const spki = spkiOf(pair.key);
    const exts = async () => [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(spki),
    ];
    const r2File = join(dir, `${ROOT2}.pem`);
    let cert = existsSync(r2File) ? new x509.X509Certificate(readFileSync(r2File, 'utf8')) : null;
    if (!cert || !Buffer.from(cert.publicKey.rawData).equals(spki)) {
      cert = await x509.X509CertificateGenerator.create({
        serialNumber: randomSerial(),
        subject: ROOT2_SUBJECT,
        issuer: ROOT2_SUBJECT,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: new Date(now + 20 * YEAR),
        publicKey: spki,
        signingKey: pair.signingKey,
        signingAlgorithm: ALG,
        extensions: await exts(),
      });
      writeFileAtomic(r2File, cert.toString('pem') + '\n', 0o644);
    }
    const cross = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: cert.subject,
      issuer: this.root.subject,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(Math.min(cert.notAfter.getTime(), this.root.notAfter.getTime())),
      publicKey: spki,
      signingKey: r1Key.signingKey,
      signingAlgorithm: ALG,
      extensions: [...(await exts()), await x509.AuthorityKeyIdentifierExtension.create(spkiOf(r1Key.key))],
    });
    writeFileAtomic(join(dir, ROOT2_CROSS), cross.toString('pem') + '\n', 0o644);
    this.root2 = { cert, cross, key: pair };
    return this.root2;
  }

  /** The server's TLS certificate from `issuer` (data/ca/server.pem: certificate, then the issuing CA). */
  private static async issueServerTls(dir: string, issuer: IssuingCa, names: string[], spki: Buffer, above = ''): Promise<void> {
    const cert = await CertificateAuthority.issueWith(issuer, {
      subject: 'CN=edgeid server, O=edgeid',
      spki,
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
    // `above`: X(R2) for an issuing CA under R2, so a client that trusts only R1 builds the path
    writeFileAtomic(join(dir, 'server.pem'), cert.toString('pem') + '\n' + issuer.cert.toString('pem') + '\n' + above, 0o644);
  }

  /** The control-command signer's certificate from `issuer` (data/ca/control.pem). */
  private static async issueControl(dir: string, issuer: IssuingCa, spki: Buffer): Promise<string> {
    const c = await CertificateAuthority.issueWith(issuer, {
      subject: `CN=${CONTROL_SIGNER_CN}, O=edgeid`,
      spki,
      lifetimeMs: 5 * YEAR,
      extensions: [
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([CONTROL_SIGNER_EKU], false),
      ],
    });
    const pem = c.toString('pem') + '\n';
    writeFileAtomic(join(dir, 'control.pem'), pem, 0o644);
    return pem;
  }

  /**
   * Issuing-CA rotation: a new issuing CA (new key, `CN=edgeid Issuing CA N`) signed by the root,
   * made the active one; the older ones stay listed (their CRLs are still signed and published,
   * relying parties keep trusting them until their certificates expire). The server's TLS
   * certificate and the control signer are re-issued by the new CA (the TLS certificate takes
   * effect for new connections at once: see `tls`). Files: `issuing-N.key` (0600), `issuing-N.pem`,
   * then issuing.json written atomically last, so a crash in between leaves the old state.
   */
  async rotateIssuing(now = Date.now()): Promise<IssuingCa> {
    const next = await this.prepareIssuing(now);
    await this.activateIssuing(next);
    return next;
  }

  /**
   * First half of a rotation: the new issuing CA's key and certificate, listed (so that CRLs are
   * made for it and relying parties can load them) but not yet issuing; activateIssuing switches,
   * discardIssuing forgets it. Nothing is switched on disk (issuing.json) before activateIssuing.
   * A key in a PKCS#11 token is not rotated here: the new key would be a file. `under`: the root
   * that signs it (by default the one above the active issuing CA).
   */
  async prepareIssuing(now = Date.now(), under: 'root' | 'root-2' = this.underRoot2(this.active) ? 'root-2' : 'root'): Promise<IssuingCa> {
    const dir = this.opts.dir;
    if (this.opts.issuer)
      throw new EdgeidError(
        'ca_rotation_invalid',
        'the issuing key is in a PKCS#11 token: a rotation here would put the new issuing key in a file. Create the new key in the token and import its certificate (docs/BACKUP-AND-CA-ROTATION.md)',
      );
    const signer = under === 'root-2' ? this.root2 : null;
    if (under === 'root-2' && !signer) throw new EdgeidError('ca_rotation_invalid', 'there is no second root (ca rotate-root makes it)');
    const rootKey = signer ? signer.key : this.rootKey;
    const rootCert = signer ? signer.cert : this.root;
    if (!rootKey)
      throw new EdgeidError(
        'ca_rotation_invalid',
        'the root key is offline: a new issuing CA is signed at the root (edgeid-server ca init --pkcs11 --csr-out, then ca import-issuing)',
      );
    const n = Math.max(1, ...this.issuers.map((i) => (i.name === FIRST_ISSUING ? 1 : Number(i.name.slice('issuing-'.length))))) + 1;
    const name = `issuing-${n}`;
    const key = await loadOrCreateKey(join(dir, `${name}.key`));
    const spki = spkiOf(key.pair.key);
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: `CN=edgeid Issuing CA ${n}, O=edgeid`,
      issuer: rootCert.subject,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(Math.min(now + ISSUING_LIFETIME_MS, rootCert.notAfter.getTime())),
      publicKey: spki,
      signingKey: rootKey.signingKey,
      signingAlgorithm: ALG,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(spki),
        await x509.AuthorityKeyIdentifierExtension.create(spkiOf(rootKey.key)),
      ],
    });
    writeFileAtomic(join(dir, `${name}.pem`), cert.toString('pem') + '\n', 0o644);
    const next: IssuingCa = { name, cert, signer: fileSigner(key.pair) };
    this.issuers = [...this.issuers, next];
    return next;
  }

  /** A prepared issuing CA that will not be activated (a later step of the rotation failed). */
  discardIssuing(next: IssuingCa): void {
    if (next.name !== this.activeName) this.issuers = this.issuers.filter((i) => i !== next);
  }

  /**
   * Second half of a rotation: the server's TLS certificate and the control signer re-issued by
   * `next`, then issuing.json written atomically (the switch), then memory. A crash before the
   * switch leaves the old CA issuing (a TLS or control certificate of the new CA found at start is
   * re-issued by the active one).
   */
  async activateIssuing(next: IssuingCa): Promise<void> {
    const dir = this.opts.dir;
    const name = next.name;
    const serverKey = createPrivateKey(readFileSync(join(dir, 'server.key'), 'utf8'));
    const names = [...new Set([...this.opts.hostnames, 'localhost', '127.0.0.1', '::1'])];
    await CertificateAuthority.issueServerTls(dir, next, names, spkiOf(serverKey), this.chainAbove(next).slice(0, -1).join(''));
    const controlPem = await CertificateAuthority.issueControl(dir, next, spkiOf(this.control.key));
    const list: IssuingList = { active: name, names: this.issuers.map((i) => i.name) };
    writeFileAtomic(join(dir, ISSUING_LIST), JSON.stringify(list, null, 2) + '\n', 0o644);
    this.activeName = name;
    this.tls = { key: readFileSync(join(dir, 'server.key'), 'utf8'), cert: readFileSync(join(dir, 'server.pem'), 'utf8') };
    this.control = { key: this.control.key, certPem: controlPem };
  }

  /** Every CA certificate the server uses, with its expiry: root, each issuing CA, the TLS certificate, the control signer. */
  expiries(): CaExpiry[] {
    const e = (ca: string, c: x509.X509Certificate, extra: Partial<CaExpiry> = {}): CaExpiry => ({
      ca,
      subject: c.subject,
      notBefore: c.notBefore.toISOString(),
      notAfter: c.notAfter.toISOString(),
      ...extra,
    });
    const first = (pem: string) => new x509.X509Certificate(pem.split(/(?<=-----END CERTIFICATE-----)/)[0]!);
    return [
      e('root', this.root),
      ...(this.root2 ? [e('root-2', this.root2.cert), e('root-2-cross', this.root2.cross)] : []),
      ...this.issuers.map((i) => e(`issuing:${i.name}`, i.cert, { active: i.name === this.activeName })),
      e('server-tls', first(this.tls.cert)),
      e('control', first(this.control.certPem)),
    ];
  }

  /**
   * Each `<name>.key` in `dir` against the first certificate of `<name>.pem` (when both exist):
   * the problems found (empty when every key belongs to its certificate).
   */
  static checkKeyFiles(dir: string): string[] {
    const problems: string[] = [];
    if (!existsSync(dir)) return ['no CA directory'];
    for (const f of readdirSync(dir)) {
      if (!f.endsWith('.key')) continue;
      const pemFile = join(dir, f.replace(/\.key$/, '.pem'));
      if (!existsSync(pemFile)) continue;
      try {
        const cert = new X509Certificate(readFileSync(pemFile, 'utf8').split(/(?<=-----END CERTIFICATE-----)/)[0]!);
        const pub = createPublicKey(createPrivateKey(readFileSync(join(dir, f), 'utf8'))).export({ type: 'spki', format: 'der' });
        if (!pub.equals(cert.publicKey.export({ type: 'spki', format: 'der' })))
          problems.push(`${f} is not the key of ${f.replace(/\.key$/, '.pem')}`);
      } catch (e) {
        problems.push(`${f}: ${(e as Error).message}`);
      }
    }
    return problems;
  }

  private static async issueWith(
    ca: IssuingCa,
    p: { subject: string; spki: Buffer; lifetimeMs: number; extensions: x509.Extension[]; serial?: string; now?: number },
  ): Promise<x509.X509Certificate> {
    const now = p.now ?? Date.now();
    const issuer = ca.cert;
    return x509.X509CertificateGenerator.create(
      {
        serialNumber: p.serial ?? randomSerial(),
        subject: p.subject,
        issuer: issuer.subject,
        // X.509 times have whole seconds: round up so the backdate never exceeds 60 s
        notBefore: new Date(Math.ceil((now - BACKDATE_MS) / 1000) * 1000),
        notAfter: new Date(now + p.lifetimeMs),
        publicKey: p.spki,
        signingKey: ca.signer.key,
        signingAlgorithm: ALG,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          ...p.extensions,
          await x509.SubjectKeyIdentifierExtension.create(p.spki),
          await x509.AuthorityKeyIdentifierExtension.create(issuer.publicKey),
        ],
      },
      ca.signer.crypto as unknown as X509Crypto,
    );
  }

  get rootPem(): string {
    return this.root.toString('pem') + '\n';
  }
  get rootDer(): Buffer {
    return Buffer.from(this.root.rawData);
  }
  /**
   * PEM chain a device gets with its certificate: the issuing CA, then up to the root R1 that
   * agents pin (through X(R2) for an issuing CA under the second root).
   */
  get chainPem(): string[] {
    return [this.intermediate.toString('pem') + '\n', ...this.chainAbove(this.active)];
  }
  /**
   * R2 self-signed, sent with issuing responses while the active issuing CA is under R2 (its
   * chain carries X(R2), against which an agent checks R2 before it pins it as well).
   */
  get nextRootPem(): string | undefined {
    return this.root2 && this.underRoot2(this.active) ? this.root2.cert.toString('pem') + '\n' : undefined;
  }
  /** `sha256:<hex>` of the root certificate: what enrollment URIs pin. */
  get fingerprint(): string {
    return certFingerprint(this.rootDer);
  }
  get controlCertPem(): string {
    return this.control.certPem;
  }
  /**
   * What a relying party that checks client certificates trusts (the broker's cafile): every
   * issuing CA still listed, newest first, then the root, so certificates of the old and the new
   * issuing CA both verify during the overlap.
   */
  get trustBundlePem(): string {
    return (
      [...this.issuers]
        .reverse()
        .map((i) => i.cert.toString('pem') + '\n')
        .join('') +
      (this.root2 ? this.root2.cross.toString('pem') + '\n' + this.root2.cert.toString('pem') + '\n' : '') +
      this.rootPem
    );
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
    const ca = this.active;
    const now = Date.now();
    // the pre-encoded template (device-template.ts): byte for byte what the library below builds
    const notBefore = new Date(Math.ceil((now - BACKDATE_MS) / 1000) * 1000);
    const notAfter = new Date(Math.floor((now + p.lifetimeSeconds * 1000) / 1000) * 1000);
    let template = DEVICE_TEMPLATES.get(ca);
    if (!template) DEVICE_TEMPLATES.set(ca, (template = deviceTemplate(Buffer.from(ca.cert.rawData))));
    const tbs = deviceTbs(template, { serial, notBefore, notAfter, deviceId: p.deviceId, zone: p.zone, spki: p.spki, crlUrl: p.crlUrl });
    if (tbs) {
      const der = certificateDer(tbs, await signDer(ca.signer, tbs));
      return { serial, der, pem: pemOf('CERTIFICATE', der), notBefore, notAfter };
    }
    const cert = await CertificateAuthority.issueWith(ca, {
      serial,
      now,
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
    const cert = await CertificateAuthority.issueWith(this.active, {
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
    const cert = await CertificateAuthority.issueWith(this.active, {
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

  /** A CRL signed by issuing CA `issuer` (default: the active one). */
  async createCrl(p: {
    number: bigint;
    validitySeconds: number;
    entries: { serial: string; revokedAt: Date; reason: RevokeReason }[];
    issuer?: IssuingCa;
  }): Promise<CrlData> {
    const ca = p.issuer ?? this.active;
    const thisUpdate = new Date(Date.now() - BACKDATE_MS);
    const nextUpdate = new Date(Date.now() + p.validitySeconds * 1000);
    const crl = await x509.X509CrlGenerator.create(
      {
        issuer: ca.cert.subject,
        thisUpdate,
        nextUpdate,
        signingKey: ca.signer.key,
        signingAlgorithm: ALG,
        entries: p.entries.map((e) => ({ serialNumber: e.serial, revocationDate: e.revokedAt, reason: CRL_REASON[e.reason] })),
        extensions: [
          await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
          new x509.Extension(id_ce_cRLNumber, false, AsnConvert.serialize(new CRLNumber(Number(p.number)))),
        ],
      },
      ca.signer.crypto as unknown as X509Crypto,
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
    // the signer's chain up to (without) R1: through X(R2) for an issuing CA under the second root,
    // so that an agent whose own chain predates the root rotation still reaches its pinned root
    return signControlCommand(command, { key: this.control.key, certPem: this.control.certPem + this.chainPem.slice(0, -1).join('') });
  }
}
