/**
 * Errors and the bounded byte reader of the event log parser. Every read checks its bounds and a
 * failure is an EdgeidError (`eventlog_malformed`) naming the absolute byte offset in the log and
 * the field, so untrusted input never surfaces as a RangeError or a crash.
 */
import { EdgeidError } from '../errors/index.js';

export function malformed(offset: number, what: string): EdgeidError {
  return new EdgeidError('eventlog_malformed', `TCG event log malformed at byte offset ${offset}: ${what}`, { offset });
}

/** A cursor over `buf[start, end)`; `base` is the absolute offset of buf[0] in the whole log. */
export class Reader {
  constructor(
    readonly buf: Buffer,
    public pos = 0,
    readonly end = buf.length,
    readonly base = 0,
  ) {}

  /** Absolute offset of the cursor in the log (for error messages). */
  get offset(): number {
    return this.base + this.pos;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  need(n: number, what: string): void {
    if (n < 0 || n > this.remaining) throw malformed(this.offset, `${what}: needs ${n} bytes, ${this.remaining} left`);
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }

  u16(what: string): number {
    this.need(2, what);
    const v = this.buf.readUInt16LE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  /** A little-endian UINT64 as a bigint (lengths inside event data are UINT64 in the UEFI structures). */
  u64(what: string): bigint {
    this.need(8, what);
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A UINT64 length that must fit in what is left (so it is a safe number). */
  len64(what: string, unit = 1): number {
    const at = this.offset;
    const v = this.u64(what);
    if (v * BigInt(unit) > BigInt(this.remaining)) throw malformed(at, `${what} ${v} exceeds the ${this.remaining} bytes left`);
    return Number(v);
  }

  bytes(n: number, what: string): Buffer {
    this.need(n, what);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  /** A sub-reader over the next n bytes (advancing this one past them). */
  sub(n: number, what: string): Reader {
    const start = this.pos;
    this.need(n, what);
    this.pos += n;
    return new Reader(this.buf, start, start + n, this.base);
  }
}

/** EFI_GUID as text (UEFI spec Appendix A: the first three fields are little-endian). */
export function guidText(b: Buffer): string {
  const h = (x: Buffer) => x.toString('hex');
  const le = (x: Buffer) => h(Buffer.from(x).reverse());
  return `${le(b.subarray(0, 4))}-${le(b.subarray(4, 6))}-${le(b.subarray(6, 8))}-${h(b.subarray(8, 10))}-${h(b.subarray(10, 16))}`;
}

/** UTF-16LE text up to the first NUL. */
export function utf16(b: Buffer): string {
  const even = b.subarray(0, b.length & ~1);
  const s = even.toString('utf16le');
  const nul = s.indexOf('\u0000');
  return nul >= 0 ? s.slice(0, nul) : s;
}

/** Text of an ASCII/UTF-8 event string up to the first NUL (EV_EFI_ACTION, EV_IPL, EV_POST_CODE). */
export function ascii(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul >= 0 ? nul : b.length).toString('latin1');
}
