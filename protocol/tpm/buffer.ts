import { EdgeidError } from '../errors/index.js';

/**
 * Bounded big-endian reader over untrusted TPM bytes. Every read past the end, and every
 * TPM2B longer than its type allows, throws EdgeidError('tpm_malformed') — never a RangeError.
 */
export class TpmReader {
  private readonly buf: Buffer;
  private pos = 0;

  constructor(bytes: Uint8Array) {
    this.buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get offset(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number, what: string): void {
    if (n > this.remaining) {
      throw new EdgeidError('tpm_malformed', `truncated ${what}: need ${n} bytes at offset ${this.pos}, have ${this.remaining}`);
    }
  }

  u8(what = 'u8'): number {
    this.need(1, what);
    const v = this.buf.readUInt8(this.pos);
    this.pos += 1;
    return v;
  }

  u16(what = 'u16'): number {
    this.need(2, what);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(what = 'u32'): number {
    this.need(4, what);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  u64(what = 'u64'): bigint {
    this.need(8, what);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** n raw bytes, copied (callers may keep them after the input buffer is reused). */
  bytes(n: number, what = 'bytes'): Buffer {
    this.need(n, what);
    const v = Buffer.from(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return v;
  }

  /** A TPM2B: 2-byte size then that many bytes; size above `max` is malformed. */
  tpm2b(max: number, what = 'TPM2B'): Buffer {
    const size = this.u16(`${what} size`);
    if (size > max) throw new EdgeidError('tpm_malformed', `${what} of ${size} bytes exceeds its maximum of ${max}`);
    return this.bytes(size, what);
  }

  /** The whole input must have been consumed. */
  end(what = 'structure'): void {
    if (this.remaining !== 0) {
      throw new EdgeidError('tpm_malformed', `${this.remaining} trailing bytes after ${what}`);
    }
  }
}

/** Big-endian writer producing TPM wire bytes. */
export class TpmWriter {
  private readonly parts: Buffer[] = [];
  private length = 0;

  private push(b: Buffer): this {
    this.parts.push(b);
    this.length += b.length;
    return this;
  }

  u8(v: number): this {
    const b = Buffer.alloc(1);
    b.writeUInt8(v);
    return this.push(b);
  }

  u16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(v);
    return this.push(b);
  }

  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v >>> 0);
    return this.push(b);
  }

  u64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    return this.push(b);
  }

  bytes(v: Uint8Array): this {
    return this.push(Buffer.from(v));
  }

  /** A TPM2B: 2-byte size prefix then the bytes. */
  tpm2b(v: Uint8Array): this {
    if (v.length > 0xffff) throw new RangeError(`TPM2B too long: ${v.length}`);
    return this.u16(v.length).bytes(v);
  }

  get size(): number {
    return this.length;
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.parts, this.length);
  }
}
