/**
 * The TCG event log the agent sends with each quote (protocol/api.ts EventLogEvidence): read from
 * securityfs (or the configured file), checked with the same parser the server uses, and sent
 * zlib-compressed only when it differs from the log the server holds for this device (the server
 * names that one's digest in the challenge and in every issuing response); otherwise only its
 * digest. Without a usable log nothing is sent and the claims say why.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { deflateSync } from 'node:zlib';
import { MAX_EVENT_LOG_DEFLATE, type EventLogEvidence } from '../protocol/api.js';
import { EdgeidError, isEdgeidError } from '../protocol/errors/index.js';
import { DEFAULT_MAX_LOG_BYTES, parseEventLog } from '../protocol/eventlog/index.js';

/** Reads an event log file; a failure is eventlog_unreadable naming the file and the errno. */
export async function readEventLogFile(file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new EdgeidError('eventlog_unreadable', `cannot read the TCG event log ${file}: ${err.code ?? err.message}`, { file });
  }
}

export interface EventLogForQuote {
  /** The evidence member; absent when there is no usable log. */
  field?: EventLogEvidence;
  /** claims.eventLog when there is no log: `absent: <code>`. */
  claim?: string;
  /** Bytes the member adds to the request (base64 of the compressed log, or just the digest). */
  wireBytes: number;
}

/**
 * What to send for the log at `file` given the digest of the log the server holds (`serverSha256`).
 * Never throws for the log's sake: an unreadable, oversized or malformed log becomes a claim.
 */
export async function eventLogForQuote(file: string | null, serverSha256: string | null | undefined): Promise<EventLogForQuote> {
  if (file === null) return { claim: 'absent: disabled in the agent config', wireBytes: 0 };
  try {
    const bytes = await readEventLogFile(file);
    if (bytes.length > DEFAULT_MAX_LOG_BYTES) throw new EdgeidError('eventlog_too_large', `the event log has ${bytes.length} bytes`);
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    if (sha256 === serverSha256) return { field: { sha256 }, wireBytes: 64 };
    parseEventLog(bytes); // a log the server would refuse is not sent (the claim says why)
    const deflate = deflateSync(bytes, { level: 9 });
    if (deflate.length > MAX_EVENT_LOG_DEFLATE)
      throw new EdgeidError(
        'eventlog_too_large',
        `the event log compresses to ${deflate.length} bytes, more than ${MAX_EVENT_LOG_DEFLATE}`,
      );
    const b64 = deflate.toString('base64');
    return { field: { sha256, deflate: b64 }, wireBytes: 64 + b64.length };
  } catch (e) {
    if (!isEdgeidError(e)) throw e;
    return { claim: `absent: ${e.code}`, wireBytes: 0 };
  }
}
