/**
 * The TCG event log on the server: received with a quote (compressed, or by digest when unchanged),
 * replayed to the quoted PCRs — only then it explains them — and judged in its own terms: Secure
 * Boot on, allowed firmware blobs and boot applications, dbx not rolled back; a PCR change against
 * the approved log is described by the events that changed. Event types and structures: TCG PC
 * Client Platform Firmware Profile Specification (PFP) 1.05 §10.
 */
import { createHash } from 'node:crypto';
import { inflateSync } from 'node:zlib';
import type { EventLogEvidence } from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import {
  DEFAULT_MAX_LOG_BYTES,
  EFI_GLOBAL_VARIABLE,
  EFI_IMAGE_SECURITY_DATABASE,
  EV,
  checkReplay,
  eventSummary,
  parseEventLog,
  replay,
  type EventLog,
  type LogEvent,
} from '../../protocol/eventlog/index.js';
import { printable } from '../../protocol/terminal.js';
import type { EventLogPolicy } from '../config.js';

const SHA256 = 0x000b;

export function sha256Hex(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/**
 * The log bytes the evidence stands for: decompressed with a bounded output (a zip bomb stops at
 * DEFAULT_MAX_LOG_BYTES), or the stored log when only its digest was sent. The digest must match.
 */
export function receiveEventLog(field: EventLogEvidence | undefined, stored: Buffer | null | undefined): Buffer | null {
  if (!field) return null;
  if (field.deflate === undefined) {
    if (!stored || sha256Hex(stored) !== field.sha256) {
      throw new EdgeidError(
        'eventlog_unknown',
        `the server holds no event log with sha256 ${field.sha256} for this device; send the log itself`,
      );
    }
    return stored;
  }
  const compressed = Buffer.from(field.deflate, 'base64');
  let log: Buffer;
  try {
    log = inflateSync(compressed, { maxOutputLength: DEFAULT_MAX_LOG_BYTES });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') {
      throw new EdgeidError('eventlog_too_large', `the event log inflates to more than ${DEFAULT_MAX_LOG_BYTES} bytes`, {
        limit: DEFAULT_MAX_LOG_BYTES,
      });
    }
    throw new EdgeidError('eventlog_malformed', `eventLog.deflate is not zlib data: ${(e as Error).message}`, { offset: 0 });
  }
  if (sha256Hex(log) !== field.sha256)
    throw new EdgeidError('eventlog_malformed', 'eventLog.sha256 is not the digest of the decompressed log', { offset: 0 });
  return log;
}

/** Parses the log and requires its sha256-bank replay to equal the quoted PCRs (hex by index). */
export function replayAgainstQuote(bytes: Buffer, quoted: Record<string, string>): EventLog {
  const log = parseEventLog(bytes);
  checkReplay(replay(log), SHA256, new Map(Object.entries(quoted).map(([k, v]) => [Number(k), Buffer.from(v, 'hex')])));
  return log;
}

/** Parses a log the server stored earlier (it replayed then); null when absent or unreadable now. */
export function storedLog(bytes: Buffer | null | undefined): EventLog | null {
  if (!bytes) return null;
  try {
    return parseEventLog(bytes);
  } catch {
    return null;
  }
}

function short(d: Buffer | undefined): string {
  return d ? `${d.toString('hex').slice(0, 8)}…` : '(none)';
}

function sha256Of(e: LogEvent): string {
  return e.digests.get(SHA256)?.toString('hex') ?? '';
}

/** The event as the log describes it, with control characters escaped: it goes into refusals, quarantine reasons and audit rows. */
function label(e: LogEvent): string {
  const s = eventSummary(e);
  return printable(s ? `${e.typeName} ${s}` : e.typeName);
}

/**
 * What the quote vouches for in a log that replayed to it: an event's sha256 digest, when the event
 * is in a quoted PCR and carries a sha256 digest (an event with only other banks' digests is not in
 * the sha256 replay, so the quote says nothing about it). Its type and data are the log's word,
 * believed only where the data hashes to the digest: the measured bytes are then the data itself.
 */
interface Vouched {
  /** Events in quoted PCRs that carry a sha256 digest, in log order. */
  events: LogEvent[];
  /** The event's data is exactly what was measured (sha256(data) is its sha256 digest). */
  dataMeasured(e: LogEvent): boolean;
}

function vouched(log: EventLog, quoted: readonly number[]): Vouched {
  const pcrs = new Set(quoted);
  const memo = new Map<LogEvent, boolean>();
  return {
    events: log.events.filter((e) => pcrs.has(e.pcr) && e.type !== EV.EV_NO_ACTION && e.digests.has(SHA256)),
    dataMeasured(e) {
      let v = memo.get(e);
      if (v === undefined) {
        v = createHash('sha256').update(e.data).digest().equals(e.digests.get(SHA256)!);
        memo.set(e, v);
      }
      return v;
    },
  };
}

/**
 * The Secure Boot configuration variables of PCR 7 (PFP §3.3.4.8): the firmware measures SecureBoot,
 * PK, KEK, db and dbx once each, before PCR 7's separator. Only those are believed (data hashing to
 * the digest); one measured twice, or after the separator (by software once the OS runs), is a
 * violation, not a value.
 */
function secureBootVariables(v: Vouched): { vars: Map<string, LogEvent>; problems: string[] } {
  const vars = new Map<string, LogEvent>();
  const problems: string[] = [];
  let separated = false;
  for (const e of v.events) {
    if (e.pcr !== 7) continue;
    if (e.type === EV.EV_SEPARATOR) separated = true;
    if (e.type !== EV.EV_EFI_VARIABLE_DRIVER_CONFIG || e.decoded.kind !== 'variable') continue;
    const key = `${e.decoded.guid}/${e.decoded.name}`;
    if (separated) problems.push(`PCR 7: ${label(e)} (#${e.index}) was measured after PCR 7's separator`);
    else if (!v.dataMeasured(e)) problems.push(`PCR 7: ${label(e)} (#${e.index}) data does not match its digest`);
    else if (vars.has(key)) problems.push(`PCR 7: ${label(e)} (#${e.index}) is measured twice`);
    else vars.set(key, e);
  }
  return { vars, problems };
}

function variable(vars: Map<string, LogEvent>, guid: string, name: string): LogEvent | undefined {
  return vars.get(`${guid}/${name}`);
}

/**
 * Code measurements of `pcrs` whose data the digest does not vouch for: firmware volumes, drivers,
 * applications — whatever type the log gives them (the type is not measured: a firmware blob
 * relabelled EV_POST_CODE is still a firmware measurement). Events whose data is what was measured
 * (separators, EV_EFI_ACTION strings, the S-CRTM version) carry no hidden code.
 */
function codeMeasurements(v: Vouched, pcrs: number[]): LogEvent[] {
  return v.events.filter((e) => pcrs.includes(e.pcr) && !v.dataMeasured(e));
}

/** Shim's authority variables that record a setting, not the entry that verified an image. */
const SHIM_LOCK_GUID = '605dab50-e046-4300-abb6-3dd810dd8b23';
const SETTING_AUTHORITIES = new Set(['SbatLevel', 'MokListTrusted']);

/**
 * Boot applications (PCR 4 code measurements) the policy does not allow. An application passes by
 * its digest (`bootApplications`) or by its signer (`bootSigners`): UEFI Secure Boot verified it,
 * and the firmware measured into PCR 7 the db entry that did, as an EV_EFI_VARIABLE_AUTHORITY event
 * (PFP §3.3.4.8; shim does the same for its vendor certificate and MokList). The log does not tie
 * an authority event to its application (each entry is measured once, at its first use), so
 * signers vouch for the boot as a whole: Secure Boot must be on, every authority event must name
 * an allowed certificate (an entry that is a hash verified an image by its digest: not a signer),
 * and at least one must be there.
 */
function bootApplicationViolations(policy: EventLogPolicy, v: Vouched, sb: LogEvent | undefined): string[] {
  const byDigest = (e: LogEvent) => policy.bootApplications?.includes(sha256Of(e)) === true;
  const unlisted = codeMeasurements(v, [4]).filter((e) => !byDigest(e));
  if (unlisted.length === 0) return [];
  const app = (e: LogEvent) => `PCR ${e.pcr}: ${label(e)} digest ${short(e.digests.get(SHA256))}`;
  if (!policy.bootSigners) return unlisted.map((e) => `${app(e)} is not an allowed boot application`);
  const why: string[] = [];
  if (!sb || sb.decoded.kind !== 'variable' || sb.decoded.value !== 1) why.push('Secure Boot is not on, so no signature was checked');
  let signers = 0;
  for (const e of v.events) {
    if (e.pcr !== 7 || e.type !== EV.EV_EFI_VARIABLE_AUTHORITY || e.decoded.kind !== 'variable') continue;
    if (e.decoded.guid === SHIM_LOCK_GUID && SETTING_AUTHORITIES.has(e.decoded.name)) continue;
    if (!v.dataMeasured(e)) {
      why.push(`PCR 7: ${label(e)} (#${e.index}) data does not match its digest`);
      continue;
    }
    if (!e.decoded.signerSha256) {
      why.push(`PCR 7: ${label(e)} (#${e.index}) names no certificate (an image was verified by its hash)`);
      continue;
    }
    signers++;
    if (!policy.bootSigners.includes(e.decoded.signerSha256))
      why.push(`PCR 7: ${label(e)} certificate ${e.decoded.signerSha256.slice(0, 8)}… is not an allowed boot signer`);
  }
  if (signers === 0 && why.length === 0) why.push('no EV_EFI_VARIABLE_AUTHORITY event names the signer');
  if (why.length === 0) return [];
  const more = unlisted.length > 1 ? ` (and ${unlisted.length - 1} more)` : '';
  return [`${app(unlisted[0]!)}${more} is neither an allowed boot application nor vouched for by an allowed signer: ${why.join('; ')}`];
}

/**
 * Violations of the zone's event-log policy, each naming its event. Only what the quote vouches for
 * counts (events of the `quoted` PCRs with a sha256 digest; data believed where it hashes to the
 * digest); `baseline` is the approved log (for dbx rollback; null when an approval is open: the
 * operator accepted the change). Event types and descriptions in the messages are as the log states
 * them: only digests are measured.
 */
export function eventLogViolations(
  policy: EventLogPolicy,
  log: EventLog | null,
  baseline: EventLog | null,
  claim: string | undefined,
  quoted: readonly number[],
): string[] {
  if (!log) return policy.required ? [`no TCG event log was sent (${claim ?? 'claims name no reason'})`] : [];
  const out: string[] = [];
  const v = vouched(log, quoted);
  const needsPcr7 = policy.secureBoot || policy.bootSigners !== null || (policy.dbxNoRollback && baseline !== null);
  const { vars, problems } = needsPcr7 ? secureBootVariables(v) : { vars: new Map<string, LogEvent>(), problems: [] };
  out.push(...problems);
  const sb = variable(vars, EFI_GLOBAL_VARIABLE, 'SecureBoot');
  if (policy.secureBoot) {
    if (!sb || sb.decoded.kind !== 'variable') out.push('SecureBoot variable is not in the event log');
    else if (sb.decoded.value !== 1) out.push(`SecureBoot variable is ${sb.decoded.value ?? 'empty'}`);
  }
  if (policy.firmwareBlobs) {
    for (const e of codeMeasurements(v, [0, 2])) {
      if (!policy.firmwareBlobs.includes(sha256Of(e)))
        out.push(`PCR ${e.pcr}: ${label(e)} digest ${short(e.digests.get(SHA256))} is not an allowed firmware measurement`);
    }
  }
  if (policy.bootApplications || policy.bootSigners) out.push(...bootApplicationViolations(policy, v, sb));
  if (policy.dbxNoRollback && baseline) {
    const before = variable(secureBootVariables(vouched(baseline, quoted)).vars, EFI_IMAGE_SECURITY_DATABASE, 'dbx');
    const now = variable(vars, EFI_IMAGE_SECURITY_DATABASE, 'dbx');
    if (before?.decoded.kind === 'variable' && before.decoded.signatures) {
      const current = new Set(now?.decoded.kind === 'variable' ? (now.decoded.signatures ?? []) : []);
      const missing = before.decoded.signatures.filter((s) => !current.has(s)).length;
      if (missing > 0)
        out.push(
          `dbx rolled back: ${missing} of the approved log's ${before.decoded.signatures.length} dbx entries are missing (now ${current.size})`,
        );
    }
  }
  return out;
}

/**
 * What changed in each PCR between the approved log and this one, event by event (paired by
 * position within the PCR): `PCR 0: EV_EFI_PLATFORM_FIRMWARE_BLOB2 'BIOS' … digest a1b2… → c3d4…`.
 * At most three changes per PCR are named.
 */
export function explainPcrChanges(baseline: EventLog, log: EventLog, pcrs: number[]): string[] {
  const out: string[] = [];
  const of = (l: EventLog, pcr: number) => l.events.filter((e) => e.pcr === pcr && e.type !== EV.EV_NO_ACTION);
  for (const pcr of pcrs) {
    const a = of(baseline, pcr);
    const b = of(log, pcr);
    const changes: string[] = [];
    for (let i = 0; i < Math.max(a.length, b.length); i++) {
      const x = a[i];
      const y = b[i];
      if (x && y && x.type === y.type && sha256Of(x) === sha256Of(y)) continue;
      if (x && y && x.type === y.type) changes.push(`${label(y)} digest ${short(x.digests.get(SHA256))} → ${short(y.digests.get(SHA256))}`);
      else if (x && y) changes.push(`${label(x)} replaced by ${label(y)} digest ${short(y.digests.get(SHA256))}`);
      else if (y) changes.push(`added ${label(y)} digest ${short(y.digests.get(SHA256))}`);
      else if (x) changes.push(`removed ${label(x)}`);
    }
    if (changes.length > 0)
      out.push(`PCR ${pcr}: ${changes.slice(0, 3).join('; ')}${changes.length > 3 ? `; and ${changes.length - 3} more` : ''}`);
  }
  return out;
}

/** Line diff of two logs (LCS over `PCR n TYPE summary digest` lines): only the changed lines, `- ` / `+ `. */
export function eventLogDiff(baseline: EventLog | null, current: EventLog | null): { diff: string[]; unchanged: number } {
  const lines = (l: EventLog | null) =>
    l
      ? l.events
          .filter((e) => e.type !== EV.EV_NO_ACTION)
          .map((e) => `PCR ${e.pcr} ${label(e)} ${short(e.digests.get(SHA256) ?? [...e.digests.values()][0])}`)
      : [];
  const a = lines(baseline).slice(0, 2000);
  const b = lines(current).slice(0, 2000);
  // LCS table, O(n·m) on logs of a few hundred events
  const n = a.length;
  const m = b.length;
  const t = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--) t[i]![j] = a[i] === b[j] ? t[i + 1]![j + 1]! + 1 : Math.max(t[i + 1]![j]!, t[i]![j + 1]!);
  const diff: string[] = [];
  let unchanged = 0;
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      unchanged++;
      i++;
      j++;
    } else if (i < n && (j === m || t[i + 1]![j]! >= t[i]![j + 1]!)) diff.push(`- ${a[i++]}`);
    else diff.push(`+ ${b[j++]}`);
  }
  return { diff, unchanged };
}

/**
 * The evidence's event log, checked: received (receiveEventLog), replayed to the quoted PCRs
 * (replayAgainstQuote: eventlog_replay_mismatch naming PCR and bank), and the approved log for
 * posture. `bytes` is what to store as the device's current log (null: none sent).
 */
export function checkEventLog(
  field: EventLogEvidence | undefined,
  device: { eventLog?: Buffer | null; baselineEventLog?: Buffer | null } | null,
  quoted: Record<string, string>,
  claim: string | undefined,
): { bytes: Buffer | null; logs: { current: EventLog | null; baseline: EventLog | null; claim?: string } } {
  const bytes = receiveEventLog(field, device?.eventLog);
  const current = bytes ? replayAgainstQuote(bytes, quoted) : null;
  return { bytes, logs: { current, baseline: storedLog(device?.baselineEventLog), ...(claim !== undefined ? { claim } : {}) } };
}
