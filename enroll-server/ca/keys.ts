/**
 * The issuing CA's signing key: a `CaSigner` (a WebCrypto provider, the private CryptoKey it signs
 * with, the public key as SPKI DER) from either
 *   - a file: PKCS#8 PEM, 0600, in data/ca (created on first use), signed with Node's WebCrypto; or
 *   - a PKCS#11 token: an EC P-256 key pair generated inside the token (C_GenerateKeyPair,
 *     PKCS#11 v2.40 §5.13) with CKA_SENSITIVE true and CKA_EXTRACTABLE false (§4.9), found by
 *     CKA_LABEL and signed with through node-webcrypto-p11 (WebCrypto over graphene-pk11/pkcs11js).
 *     The private value never enters this process or the disk.
 * The PKCS#11 packages are loaded only when a token is configured (their native addon ships beside
 * the server bundle as pkcs11.node, scripts/bundle.mjs).
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, webcrypto } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { EdgeidError } from '../../protocol/errors/index.js';
import type { Pkcs11KeyConfig } from '../config.js';
import { writeFileAtomic } from '../files.js';

type CryptoKey = webcrypto.CryptoKey;
type WebCrypto = webcrypto.Crypto;

/** What an issuing CA signs with (certificates, CRLs). `crypto` is the provider that holds `key`. */
export interface CaSigner {
  crypto: WebCrypto;
  key: CryptoKey;
  /** SubjectPublicKeyInfo DER of the key pair (RFC 5280 §4.1.2.7). */
  spki: Buffer;
}

export type IssuerKeySource = { kind: 'file'; path: string } | { kind: 'pkcs11'; config: Pkcs11KeyConfig; env?: NodeJS.ProcessEnv };

const EC_IMPORT = { name: 'ECDSA', namedCurve: 'P-256' } as const;

/** Token sessions to close (logout, C_Finalize) by closeIssuerSigner. */
const OPEN = new WeakMap<CaSigner, Pkcs11Handle>();

/**
 * The signer of an issuing CA. A file key is created (0600) when missing; a token key must exist
 * (`edgeid-server ca init --pkcs11` creates it). Token failures throw EdgeidError hsm_* codes.
 */
export async function openIssuerSigner(src: IssuerKeySource): Promise<CaSigner> {
  if (src.kind === 'file') return openFileSigner(src.path);
  const h = await openToken(src.config, src.env ?? process.env);
  try {
    const signer = await h.signerFor(src.config.keyLabel);
    OPEN.set(signer, h);
    return signer;
  } catch (e) {
    h.close();
    throw e;
  }
}

/** Logs out of the token and finalizes the module (no-op for a file key). */
export async function closeIssuerSigner(signer: CaSigner): Promise<void> {
  const h = OPEN.get(signer);
  if (!h) return;
  OPEN.delete(signer);
  await h.idle();
  h.close();
}

async function openFileSigner(path: string): Promise<CaSigner> {
  let pem: string;
  if (existsSync(path)) pem = readFileSync(path, 'utf8');
  else {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    writeFileAtomic(path, pem, 0o600);
  }
  const key = createPrivateKey(pem);
  const der = key.export({ type: 'pkcs8', format: 'der' });
  return {
    crypto: webcrypto as WebCrypto,
    key: await webcrypto.subtle.importKey('pkcs8', der, EC_IMPORT, false, ['sign']),
    spki: createPublicKey(key).export({ type: 'spki', format: 'der' }),
  };
}

/**
 * The PIN: from a file that only its owner may read or write (st_mode & 077 == 0, checked before
 * reading it), or from an environment variable. Never logged; errors name the file or variable only.
 */
export function readPin(pin: Pkcs11KeyConfig['pin'], env: NodeJS.ProcessEnv): string {
  if ('env' in pin) {
    const v = env[pin.env];
    if (!v) throw new EdgeidError('hsm_pin_unavailable', `the PIN variable ${pin.env} is not set`, { variable: pin.env });
    return v;
  }
  let mode: number;
  try {
    mode = statSync(pin.file).mode;
  } catch (e) {
    throw new EdgeidError('hsm_pin_unavailable', `cannot read the PIN file ${pin.file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, {
      file: pin.file,
    });
  }
  if ((mode & 0o077) !== 0)
    throw new EdgeidError(
      'hsm_pin_file_insecure',
      `the PIN file ${pin.file} has mode ${(mode & 0o777).toString(8).padStart(4, '0')}: group and others must have no access (chmod 0600)`,
      { file: pin.file },
    );
  const text = readFileSync(pin.file, 'utf8').replace(/\r?\n$/, '');
  if (!text) throw new EdgeidError('hsm_pin_unavailable', `the PIN file ${pin.file} is empty`, { file: pin.file });
  return text;
}

/** PKCS#11 return value name (CKR_…) of a pkcs11js / graphene error, or null. */
function ckr(e: unknown): string | null {
  const m = /\b(CKR_[A-Z_]+)\b/.exec(e instanceof Error ? `${e.name} ${e.message}` : String(e));
  return m ? m[1]! : null;
}

/** The security attributes of a private key object (PKCS#11 v2.40 §4.9 Table 36). */
export interface KeyAttributes {
  sensitive: boolean;
  extractable: boolean;
  alwaysSensitive: boolean;
  neverExtractable: boolean;
  /** CKA_LOCAL: generated inside the token. */
  local: boolean;
}

interface Pkcs11Handle {
  signerFor(label: string): Promise<CaSigner>;
  generate(label: string): Promise<CaSigner>;
  hasKey(label: string): boolean;
  attributes(label: string): KeyAttributes;
  /** Tries to read CKA_VALUE of the private key; returns the CKR_ code the token answered. */
  tryReadValue(label: string): string;
  idle(): Promise<void>;
  close(): void;
}

async function openToken(cfg: Pkcs11KeyConfig, env: NodeJS.ProcessEnv): Promise<Pkcs11Handle> {
  const pin = readPin(cfg.pin, env);
  const graphene = await import('graphene-pk11');
  const p11 = await import('node-webcrypto-p11');
  let mod: InstanceType<typeof graphene.Module>;
  try {
    mod = graphene.Module.load(cfg.module, 'edgeid');
  } catch (e) {
    throw new EdgeidError('hsm_module_unusable', `cannot load the PKCS#11 module ${cfg.module}: ${(e as Error).message}`, {
      module: cfg.module,
    });
  }
  try {
    mod.initialize();
  } catch (e) {
    if (ckr(e) !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED') {
      try {
        mod.close();
      } catch {
        /* closing after a failed C_Initialize */
      }
      throw new EdgeidError('hsm_module_unusable', `C_Initialize of ${cfg.module} failed: ${ckr(e) ?? (e as Error).message}`, {
        module: cfg.module,
      });
    }
  }
  const finalize = (): void => {
    try {
      mod.finalize();
    } catch {
      /* already finalized */
    }
    try {
      mod.close();
    } catch {
      /* already closed */
    }
  };
  let session: InstanceType<typeof graphene.Session>;
  try {
    const slots = mod.getSlots(true);
    let slot: InstanceType<typeof graphene.Slot> | null = null;
    const labels: string[] = [];
    for (let i = 0; i < slots.length; i++) {
      const s = slots.items(i);
      const label = s.getToken().label.trim();
      labels.push(label);
      if (label === cfg.token) slot = s;
    }
    if (!slot)
      throw new EdgeidError(
        'hsm_token_not_found',
        `no token labelled "${cfg.token}" in ${cfg.module} (tokens: ${labels.map((l) => `"${l}"`).join(', ') || 'none'})`,
        {
          token: cfg.token,
        },
      );
    session = slot.open(graphene.SessionFlag.SERIAL_SESSION | graphene.SessionFlag.RW_SESSION);
    try {
      session.login(pin, graphene.UserType.USER);
    } catch (e) {
      const code = ckr(e);
      if (code === 'CKR_USER_ALREADY_LOGGED_IN') {
        /* another session of this process logged in: the login is per token */
      } else if (code === 'CKR_PIN_INCORRECT' || code === 'CKR_PIN_LOCKED' || code === 'CKR_PIN_LEN_RANGE' || code === 'CKR_PIN_EXPIRED')
        throw new EdgeidError('hsm_login_failed', `the token "${cfg.token}" refused the PIN (${code})`, { token: cfg.token, ckr: code });
      else throw e;
    }
  } catch (e) {
    finalize();
    if (e instanceof EdgeidError) throw e;
    throw new EdgeidError('hsm_module_unusable', `PKCS#11 error opening the token "${cfg.token}": ${ckr(e) ?? (e as Error).message}`, {
      token: cfg.token,
    });
  }

  const crypto = new p11.Crypto({ session } as unknown as ConstructorParameters<typeof p11.Crypto>[0]);
  // One PKCS#11 session runs one operation at a time (C_SignInit answers CKR_OPERATION_ACTIVE
  // while another C_Sign is in flight): every call into the token goes through this queue.
  let tail: Promise<unknown> = Promise.resolve();
  const serial = <T>(f: () => Promise<T> | T): Promise<T> => {
    const run = tail.then(f);
    tail = run.catch(() => undefined);
    return run;
  };
  const subtle = new Proxy(crypto.subtle, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (...a: unknown[]) => serial(() => (v as (...x: unknown[]) => Promise<unknown>).apply(target, a)) : v;
    },
  });
  // randomness for serial numbers and the like stays with the OS generator (outside the queue)
  const queued = {
    subtle,
    getRandomValues: <T extends ArrayBufferView | null>(a: T) => webcrypto.getRandomValues(a as never) as T,
  } as unknown as WebCrypto;

  const privateObjects = (label: string) => session.find({ class: graphene.ObjectClass.PRIVATE_KEY, label, token: true });
  const publicObjects = (label: string) => session.find({ class: graphene.ObjectClass.PUBLIC_KEY, label, token: true });
  const onePrivate = (label: string) => {
    const found = privateObjects(label);
    if (found.length === 0)
      throw new EdgeidError('hsm_key_not_found', `the token "${cfg.token}" has no private key labelled "${label}"`, {
        token: cfg.token,
        keyLabel: label,
      });
    if (found.length > 1)
      throw new EdgeidError('hsm_key_ambiguous', `the token "${cfg.token}" has ${found.length} private keys labelled "${label}"`, {
        token: cfg.token,
        keyLabel: label,
      });
    return found.items(0).toType<InstanceType<typeof graphene.PrivateKey>>();
  };
  const attributes = (label: string): KeyAttributes => {
    const a = onePrivate(label).getAttribute({
      sensitive: null,
      extractable: null,
      alwaysSensitive: null,
      neverExtractable: null,
      local: null,
    });
    return {
      sensitive: !!a.sensitive,
      extractable: !!a.extractable,
      alwaysSensitive: !!a.alwaysSensitive,
      neverExtractable: !!a.neverExtractable,
      local: !!a.local,
    };
  };
  const signerFromObjects = async (label: string): Promise<CaSigner> => {
    const priv = onePrivate(label);
    const a = attributes(label);
    // PKCS#11 v2.40 §4.9: CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE say the value was never
    // outside the token in plaintext (a key imported from a file has both false)
    const weak = [
      !a.sensitive && 'not CKA_SENSITIVE',
      a.extractable && 'CKA_EXTRACTABLE',
      !a.alwaysSensitive && 'not CKA_ALWAYS_SENSITIVE',
      !a.neverExtractable && 'not CKA_NEVER_EXTRACTABLE',
    ].filter(Boolean);
    if (weak.length > 0)
      throw new EdgeidError('hsm_key_exportable', `the key "${label}" in token "${cfg.token}" is ${weak.join(', ')}`, {
        token: cfg.token,
        keyLabel: label,
      });
    const id = priv.id;
    const pubs = publicObjects(label);
    let pubObj = null;
    for (let i = 0; i < pubs.length; i++) if (pubs.items(i).getAttribute({ id: null }).id?.equals(id)) pubObj = pubs.items(i);
    if (!pubObj)
      throw new EdgeidError(
        'hsm_key_not_found',
        `the token "${cfg.token}" has no public key labelled "${label}" with the private key's CKA_ID`,
        {
          token: cfg.token,
          keyLabel: label,
        },
      );
    const key = (await crypto.keyStorage.getItem(p11.CryptoKey.getID(priv), EC_IMPORT, ['sign'])) as unknown as CryptoKey;
    const pub = await crypto.keyStorage.getItem(p11.CryptoKey.getID(pubObj.toType()), EC_IMPORT, ['verify']);
    const spki = Buffer.from(await crypto.subtle.exportKey('spki', pub));
    if (key.algorithm.name !== 'ECDSA' || (key.algorithm as { namedCurve?: string }).namedCurve !== 'P-256')
      throw new EdgeidError('hsm_key_not_found', `the key "${label}" in token "${cfg.token}" is not an EC P-256 key`, {
        token: cfg.token,
        keyLabel: label,
      });
    return { crypto: queued, key, spki };
  };

  return {
    async signerFor(label) {
      try {
        return await signerFromObjects(label);
      } catch (e) {
        if (e instanceof EdgeidError) throw e;
        throw new EdgeidError('hsm_module_unusable', `PKCS#11 error reading the key "${label}": ${ckr(e) ?? (e as Error).message}`, {
          keyLabel: label,
        });
      }
    },
    async generate(label) {
      // PKCS#11 v2.40 §4.9: CKA_SENSITIVE true, CKA_EXTRACTABLE false on the private key, CKA_TOKEN true
      await crypto.subtle.generateKey({ ...EC_IMPORT, token: true, sensitive: true, label } as EcKeyGenParams, false, ['sign', 'verify']);
      return signerFromObjects(label);
    },
    hasKey: (label) => privateObjects(label).length > 0,
    attributes,
    tryReadValue(label) {
      try {
        onePrivate(label).getAttribute({ value: null });
        return 'CKR_OK';
      } catch (e) {
        return ckr(e) ?? String(e);
      }
    },
    idle: () => tail.then(() => undefined),
    close() {
      try {
        session.logout();
      } catch {
        /* not logged in */
      }
      try {
        session.close();
      } catch {
        /* already closed */
      }
      finalize();
    },
  };
}

type EcKeyGenParams = webcrypto.EcKeyGenParams;

/**
 * `ca init --pkcs11`: the issuing key pair, generated inside the token under `keyLabel` unless a
 * key with that label exists (then that key is used if it is sensitive and never was extractable).
 */
export async function createTokenKey(
  cfg: Pkcs11KeyConfig,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ signer: CaSigner; created: boolean; attributes: KeyAttributes }> {
  const h = await openToken(cfg, env);
  try {
    const created = !h.hasKey(cfg.keyLabel);
    const signer = created ? await h.generate(cfg.keyLabel) : await h.signerFor(cfg.keyLabel);
    OPEN.set(signer, h);
    return { signer, created, attributes: h.attributes(cfg.keyLabel) };
  } catch (e) {
    h.close();
    if (e instanceof EdgeidError) throw e;
    throw new EdgeidError('hsm_module_unusable', `PKCS#11 error creating the key "${cfg.keyLabel}": ${ckr(e) ?? (e as Error).message}`, {
      keyLabel: cfg.keyLabel,
    });
  }
}

/**
 * The token's own answers about a signer's key: its security attributes and what C_GetAttributeValue
 * of CKA_VALUE returns (CKR_ATTRIBUTE_SENSITIVE for a sensitive key). For tests and `ca status`.
 */
export function tokenKeyFacts(signer: CaSigner, label: string): { attributes: KeyAttributes; readValue: string } | null {
  const h = OPEN.get(signer);
  return h ? { attributes: h.attributes(label), readValue: h.tryReadValue(label) } : null;
}
