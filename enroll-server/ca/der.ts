/**
 * The little DER (ITU-T X.690 §10) the hot path needs, written by hand so that issuing a
 * certificate and checking a CSR do not go through a general ASN.1 library: a writer for
 * tag-length-value, and a strict reader (single-byte tags, definite minimal lengths).
 */
import { EdgeidError, type ErrorCode } from '../../protocol/errors/index.js';

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

/** The DER length octets for `n` (X.690 §8.1.3.4–5: short form below 128, else minimal long form). */
function lengthOctets(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/** One DER value: `tag`, the length of `parts` together, then `parts`. */
export function tlv(tag: number, ...parts: Buffer[]): Buffer {
  const body = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  return Buffer.concat([Buffer.from([tag]), lengthOctets(body.length), body]);
}

/** A non-negative INTEGER from big-endian magnitude bytes (leading zeros dropped, a 0x00 added before a high bit). */
export function unsignedInteger(magnitude: Buffer): Buffer {
  let i = 0;
  while (i < magnitude.length - 1 && magnitude[i] === 0) i++;
  const m = magnitude.subarray(i);
  return tlv(TAG.INTEGER, m[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), m]) : m);
}

/**
 * A certificate time (RFC 5280 §4.1.2.5): UTCTime through 2049, GeneralizedTime from 2050, in
 * whole seconds of UTC (fractions are dropped, as X.509 times have none).
 */
export function x509Time(d: Date): Buffer {
  const iso = new Date(Math.floor(d.getTime() / 1000) * 1000).toISOString(); // YYYY-MM-DDTHH:MM:SS.000Z
  const digits = iso.slice(0, 19).replace(/[-:T]/g, '');
  const year = d.getUTCFullYear();
  if (year >= 1950 && year < 2050) return tlv(TAG.UTC_TIME, Buffer.from(digits.slice(2) + 'Z', 'ascii'));
  return tlv(TAG.GENERALIZED_TIME, Buffer.from(digits + 'Z', 'ascii'));
}

/** An ECDSA signature as IEEE P1363 r‖s (WebCrypto's form) turned into DER Ecdsa-Sig-Value (RFC 3279 §2.2.3). */
export function p1363ToDer(sig: Buffer): Buffer {
  const half = sig.length / 2;
  return tlv(TAG.SEQUENCE, unsignedInteger(sig.subarray(0, half)), unsignedInteger(sig.subarray(half)));
}

export interface Tlv {
  tag: number;
  /** The whole value: tag, length and contents. */
  raw: Buffer;
  contents: Buffer;
}

/** One DER value at `off` of `buf`; anything that is not strict DER throws an EdgeidError with `code`, naming `what`. */
export function readTlv(buf: Buffer, off: number, code: ErrorCode, what: string): Tlv {
  const bad = (why: string) => new EdgeidError(code, `${what} is not valid DER: ${why}`);
  if (off + 2 > buf.length) throw bad('truncated');
  const tag = buf[off]!;
  if ((tag & 0x1f) === 0x1f) throw bad('multi-byte tag');
  let len = buf[off + 1]!;
  let head = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0) throw bad('indefinite length');
    if (n > 3 || off + 2 + n > buf.length) throw bad('length too large');
    if (buf[off + 2] === 0) throw bad('length not minimal');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[off + 2 + i]!;
    if (len < 0x80) throw bad('length not minimal');
    head = 2 + n;
  }
  const end = off + head + len;
  if (end > buf.length) throw bad('truncated');
  return { tag, raw: buf.subarray(off, end), contents: buf.subarray(off + head, end) };
}

/** The values inside `contents`, which they must fill exactly. */
export function children(contents: Buffer, code: ErrorCode, what: string): Tlv[] {
  const out: Tlv[] = [];
  for (let off = 0; off < contents.length;) {
    const t = readTlv(contents, off, code, what);
    out.push(t);
    off += t.raw.length;
  }
  return out;
}
