/**
 * The two cookie chores of the OIDC login, by hand because @fastify/cookie is not a dependency:
 * reading one cookie from a Cookie header (RFC 6265 §5.4: `name=value` pairs separated by "; ")
 * and writing a Set-Cookie header (RFC 6265 §4.1) — and the sealed value the login cookie carries.
 *
 * Sealing is AES-256-GCM (NIST SP 800-38D) under a key that never leaves the server process: the
 * browser holds the login's state, nonce and PKCE code_verifier but can neither read nor change
 * them, and a value sealed under another key or for another purpose (the AAD) does not open.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

/** The value of cookie `name` in a Cookie request header, or null. */
export function readCookie(header: string | undefined, name: string): string | null {
  if (!header) return null;
  for (const pair of header.split(';')) {
    const eq = pair.indexOf('=');
    if (eq < 0) continue;
    if (pair.slice(0, eq).trim() !== name) continue;
    let value = pair.slice(eq + 1).trim();
    if (value.startsWith('"') && value.endsWith('"') && value.length >= 2) value = value.slice(1, -1);
    return value;
  }
  return null;
}

export interface CookieOptions {
  path: string;
  /** Seconds; 0 deletes the cookie (RFC 6265 §5.2.2). */
  maxAge: number;
  sameSite: 'Strict' | 'Lax';
}

/** A Set-Cookie header value: always HttpOnly and Secure; `value` must be cookie-octets (base64url is). */
export function serializeCookie(name: string, value: string, o: CookieOptions): string {
  if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(name)) throw new TypeError(`cookie name ${name} is not an RFC 6265 token`);
  if (!/^[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*$/.test(value)) throw new TypeError('cookie value has characters outside cookie-octet');
  return `${name}=${value}; Path=${o.path}; Max-Age=${Math.max(0, Math.floor(o.maxAge))}; HttpOnly; Secure; SameSite=${o.sameSite}`;
}

const IV_BYTES = 12;
const TAG_BYTES = 16;

/** Seals `payload` (JSON) for `purpose`: base64url(iv ‖ ciphertext ‖ tag). */
export function seal(key: Uint8Array, purpose: string, payload: unknown): string {
  const iv = randomBytes(IV_BYTES);
  const c = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
  c.setAAD(Buffer.from(purpose, 'utf8'));
  const body = Buffer.concat([c.update(JSON.stringify(payload), 'utf8'), c.final()]);
  return Buffer.concat([iv, body, c.getAuthTag()]).toString('base64url');
}

/** The payload sealed by `seal` with the same key and purpose, or null for anything else. */
export function unseal(key: Uint8Array, purpose: string, sealed: string): unknown {
  if (!/^[A-Za-z0-9_-]+$/.test(sealed)) return null;
  const raw = Buffer.from(sealed, 'base64url');
  if (raw.length < IV_BYTES + TAG_BYTES + 2) return null;
  try {
    const d = createDecipheriv('aes-256-gcm', key, raw.subarray(0, IV_BYTES), { authTagLength: TAG_BYTES });
    d.setAAD(Buffer.from(purpose, 'utf8'));
    d.setAuthTag(raw.subarray(raw.length - TAG_BYTES));
    const text = Buffer.concat([d.update(raw.subarray(IV_BYTES, raw.length - TAG_BYTES)), d.final()]).toString('utf8');
    return JSON.parse(text) as unknown;
  } catch {
    return null;
  }
}
