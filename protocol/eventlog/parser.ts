/**
 * Parser of the TCG PC Client event log (`binary_bios_measurements`), both formats of the TCG PC
 * Client Platform Firmware Profile Specification (PFP) 1.05 §10.2:
 *  - crypto-agile (§10.2.2): a first TCG_PCClientPCREvent (SHA-1 format) carrying the
 *    TCG_EfiSpecIDEvent "Spec ID Event03" (§10.4.5.1) that lists the banks and their digest
 *    sizes, then TCG_PCR_EVENT2 records, each with one digest per bank (TPML_DIGEST_VALUES);
 *  - legacy SHA-1 (§10.2.1, TCG EFI Protocol Specification §5.1 TCG_PCR_EVENT): TCG_PCClientPCREvent
 *    records with a 20-byte SHA-1 digest.
 * All integers are little-endian. The log is untrusted: its size and event count are bounded and
 * anything malformed is an `eventlog_malformed` EdgeidError naming the byte offset.
 */
import { createHash } from 'node:crypto';
import { EdgeidError } from '../errors/index.js';
import { DIGEST_IS_DATA_HASH, decodeEventData, specId, type EventData } from './decode.js';
import { Reader, malformed } from './errors.js';
import { EV, HASH_ALGS, eventTypeName } from './types.js';

export const DEFAULT_MAX_LOG_BYTES = 1024 * 1024;
export const DEFAULT_MAX_EVENTS = 10000;
/** PCRs 0..23 of a PC Client TPM (PC Client Platform TPM Profile §4.6). */
export const PCR_COUNT = 24;

export interface ParseOptions {
  maxBytes?: number;
  maxEvents?: number;
}

export interface LogEvent {
  /** Position in the log, 0-based (the Spec ID header of a crypto-agile log is event 0). */
  index: number;
  /** Byte offset of the record in the log. */
  offset: number;
  pcr: number;
  type: number;
  typeName: string;
  /** Digest per bank, keyed by TPM_ALG_ID. */
  digests: Map<number, Buffer>;
  /** The raw event data (a view into the log buffer). */
  data: Buffer;
  decoded: EventData;
  /**
   * For types whose digest is by the spec the hash of the event data (DIGEST_IS_DATA_HASH): whether
   * every known bank's digest equals the hash of the data. Undefined for the other types. Policy
   * only believes decoded data of such an event when this is true.
   */
  dataMatchesDigest?: boolean;
}

export interface EventLog {
  format: 'crypto-agile' | 'sha1';
  /** The banks of the log (TPM_ALG_ID and digest size), from the Spec ID event or SHA-1 only. */
  algorithms: { alg: number; size: number }[];
  events: LogEvent[];
}

function dataCheck(type: number, digests: Map<number, Buffer>, data: Buffer): boolean | undefined {
  if (!DIGEST_IS_DATA_HASH.has(type)) return undefined;
  let any = false;
  for (const [alg, d] of digests) {
    const h = HASH_ALGS.get(alg);
    if (!h) continue;
    any = true;
    if (!createHash(h.node).update(data).digest().equals(d)) return false;
  }
  return any;
}

function event(index: number, offset: number, pcr: number, type: number, digests: Map<number, Buffer>, data: Reader): LogEvent {
  const raw = data.buf.subarray(data.pos, data.end);
  const decoded = decodeEventData(type, data);
  const e: LogEvent = { index, offset, pcr, type, typeName: eventTypeName(type), digests, data: raw, decoded };
  const check = dataCheck(type, digests, raw);
  if (check !== undefined) e.dataMatchesDigest = check;
  return e;
}

function pcrIndex(r: Reader): number {
  const at = r.offset;
  const pcr = r.u32('PCRIndex');
  if (pcr >= PCR_COUNT) throw malformed(at, `PCRIndex ${pcr} is not 0..${PCR_COUNT - 1}`);
  return pcr;
}

/** One TCG_PCClientPCREvent (PFP §10.2.1): PCRIndex, EventType, SHA-1 digest, EventDataSize, Event. */
function legacyEvent(r: Reader, index: number): LogEvent {
  const offset = r.offset;
  const pcr = pcrIndex(r);
  const type = r.u32('EventType');
  const digest = r.bytes(20, 'SHA-1 digest');
  const size = r.u32('EventDataSize');
  const data = r.sub(size, 'Event data');
  return event(index, offset, pcr, type, new Map([[0x0004, Buffer.from(digest)]]), data);
}

/** One TCG_PCR_EVENT2 (PFP §10.2.2): PCRIndex, EventType, TPML_DIGEST_VALUES, EventSize, Event. */
function agileEvent(r: Reader, index: number, sizes: Map<number, number>): LogEvent {
  const offset = r.offset;
  const pcr = pcrIndex(r);
  const type = r.u32('EventType');
  const countAt = r.offset;
  const count = r.u32('digest count');
  if (count === 0 || count > sizes.size)
    throw malformed(countAt, `digest count ${count} is not 1..${sizes.size} (banks in the Spec ID event)`);
  const digests = new Map<number, Buffer>();
  for (let i = 0; i < count; i++) {
    const at = r.offset;
    const alg = r.u16('hashAlg');
    const size = sizes.get(alg);
    if (size === undefined) throw malformed(at, `hashAlg 0x${alg.toString(16)} is not a bank of the Spec ID event`);
    if (digests.has(alg)) throw malformed(at, `hashAlg 0x${alg.toString(16)} appears twice`);
    digests.set(alg, Buffer.from(r.bytes(size, 'digest')));
  }
  const size = r.u32('EventSize');
  const data = r.sub(size, 'Event data');
  return event(index, offset, pcr, type, digests, data);
}

/** Parses a whole event log; throws EdgeidError (eventlog_*) for anything it cannot read. */
export function parseEventLog(log: Uint8Array, options: ParseOptions = {}): EventLog {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_LOG_BYTES;
  const maxEvents = options.maxEvents ?? DEFAULT_MAX_EVENTS;
  if (log.length > maxBytes) {
    throw new EdgeidError('eventlog_too_large', `TCG event log of ${log.length} bytes exceeds the limit of ${maxBytes}`, {
      size: log.length,
      limit: maxBytes,
    });
  }
  const buf = Buffer.from(log.buffer, log.byteOffset, log.length);
  const r = new Reader(buf);
  if (r.remaining === 0) throw malformed(0, 'the log is empty');
  try {
    const first = legacyEvent(r, 0);
    const events = [first];
    const more = (): boolean => {
      if (r.remaining === 0) return false;
      if (events.length >= maxEvents) {
        throw new EdgeidError('eventlog_too_many_events', `TCG event log has more than ${maxEvents} events (at byte offset ${r.offset})`, {
          offset: r.offset,
          limit: maxEvents,
        });
      }
      return true;
    };
    // A crypto-agile log starts with EV_NO_ACTION on PCR 0 carrying "Spec ID Event03" (PFP §10.4.5.1).
    if (
      first.type === EV.EV_NO_ACTION &&
      first.pcr === 0 &&
      first.decoded.kind === 'spec-id' &&
      first.decoded.signature === 'Spec ID Event03'
    ) {
      const algorithms = first.decoded.algorithms;
      const sizes = new Map(algorithms.map((a) => [a.alg, a.size]));
      for (const { alg, size } of algorithms) {
        const known = HASH_ALGS.get(alg);
        if (known && known.size !== size) throw malformed(first.offset + 32, `digestSize ${size} of ${known.name} should be ${known.size}`);
      }
      while (more()) events.push(agileEvent(r, events.length, sizes));
      return { format: 'crypto-agile', algorithms, events };
    }
    while (more()) events.push(legacyEvent(r, events.length));
    return { format: 'sha1', algorithms: [{ alg: 0x0004, size: 20 }], events };
  } catch (e) {
    if (e instanceof EdgeidError) throw e;
    // Readers only throw EdgeidErrors; anything else is a parser bug, still reported as malformed input.
    throw malformed(r.offset, `unexpected parser failure: ${(e as Error).message}`);
  }
}
