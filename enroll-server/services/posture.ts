import type { Claims } from '../../protocol/api.js';
import type { EventLog } from '../../protocol/eventlog/index.js';
import type { EventLogPolicy, ZonePolicy } from '../config.js';
import { eventLogViolations, explainPcrChanges } from './eventlog.js';

export type PostureVerdict =
  | { ok: true; newBaseline: Record<string, string> | null }
  | {
      ok: false;
      code: 'posture_pcr_mismatch' | 'posture_claims_rejected' | 'posture_eventlog_rejected';
      reason: string;
      pcrs?: number[];
      claims?: string[];
    };

/** The replayed event log of this quote and the approved one; `claim` is claims.eventLog (why there is none). */
export interface PostureEventLogs {
  current: EventLog | null;
  baseline: EventLog | null;
  claim?: string;
}

const NO_EVENT_LOG_POLICY: EventLogPolicy = {
  required: false,
  secureBoot: false,
  firmwareBlobs: null,
  bootApplications: null,
  bootSigners: null,
  dbxNoRollback: true,
};

/** `: PCR 0: EV_… digest a1b2… → c3d4…` when both logs are known, else nothing. */
function explained(logs: PostureEventLogs | undefined, pcrs: number[]): string {
  if (!logs?.current || !logs.baseline) return '';
  const lines = explainPcrChanges(logs.baseline, logs.current, pcrs);
  return lines.length > 0 ? `: ${lines.join('; ')}` : '';
}

function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.+-]/).map((x) => Number.parseInt(x, 10));
  const pb = b.split(/[.+-]/).map((x) => Number.parseInt(x, 10));
  for (let i = 0; i < 3; i++) {
    const x = Number.isFinite(pa[i]) ? pa[i]! : 0;
    const y = Number.isFinite(pb[i]) ? pb[i]! : 0;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

/** Claim rules of the zone; returns the names of violated claims with why. */
export function claimViolations(zone: ZonePolicy, claims: Claims): string[] {
  const out: string[] = [];
  const min = zone.claims.minAgentVersion;
  if (min && (!/^\d+(\.\d+){0,2}([.+-].*)?$/.test(claims.agentVersion) || compareVersions(claims.agentVersion, min) < 0)) {
    out.push(`agentVersion ${claims.agentVersion} < ${min}`);
  }
  return out;
}

function differing(a: Record<string, string>, b: Record<string | number, string>, pcrs: number[]): number[] {
  return pcrs.filter((p) => a[String(p)] !== b[p]);
}

/**
 * Judges posture: claim rules first, then PCRs against the zone's golden values or the device's
 * recorded baseline. `baseline` is null at enrollment (baseline mode then records the quote).
 * With an open approval window a PCR change becomes the new baseline instead of a mismatch.
 */
export function judgePosture(p: {
  zone: ZonePolicy;
  pcrs: Record<string, string>;
  claims: Claims;
  baseline: Record<string, string> | null;
  windowOpen: boolean;
  /** Present when the evidence was checked for an event log (it replayed to the quote, or there is none). */
  eventLog?: PostureEventLogs;
}): PostureVerdict {
  const bad = claimViolations(p.zone, p.claims);
  if (bad.length > 0) return { ok: false, code: 'posture_claims_rejected', reason: `claims rejected: ${bad.join('; ')}`, claims: bad };
  if (p.eventLog) {
    // an open approval window accepts a change against the approved log (e.g. dbx reset to the
    // firmware's defaults); the zone's absolute rules (Secure Boot, allowed code) still hold
    const against = p.windowOpen ? null : p.eventLog.baseline;
    const off = eventLogViolations(p.zone.eventLog ?? NO_EVENT_LOG_POLICY, p.eventLog.current, against, p.eventLog.claim, p.zone.pcrs);
    if (off.length > 0) return { ok: false, code: 'posture_eventlog_rejected', reason: off.join('; ') };
  }

  if (p.zone.posture.mode === 'golden') {
    const off = differing(p.pcrs, p.zone.posture.values, p.zone.pcrs);
    if (off.length === 0) return { ok: true, newBaseline: null };
    // an approved device-specific baseline also passes (firmware rolled out before the zone config)
    if (p.baseline && differing(p.pcrs, p.baseline, p.zone.pcrs).length === 0) return { ok: true, newBaseline: null };
    if (p.windowOpen) return { ok: true, newBaseline: p.pcrs };
    return {
      ok: false,
      code: 'posture_pcr_mismatch',
      reason: `PCRs ${off.join(',')} differ from the zone's golden values${explained(p.eventLog, off)}`,
      pcrs: off,
    };
  }

  if (!p.baseline) return { ok: true, newBaseline: p.pcrs };
  const off = differing(p.pcrs, p.baseline, p.zone.pcrs);
  if (off.length === 0) return { ok: true, newBaseline: null };
  if (p.windowOpen) return { ok: true, newBaseline: p.pcrs };
  return {
    ok: false,
    code: 'posture_pcr_mismatch',
    reason: `PCRs ${off.join(',')} differ from the recorded baseline${explained(p.eventLog, off)}`,
    pcrs: off,
  };
}
