/** `edgeid-agent status [--json]`: what the device is, its certificate, renewal, MQTT and outbox. */
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { AgentStatus } from '../agent.js';
import { StateStore } from '../state/store.js';
import { ERRORS, type ErrorCode } from '../../protocol/errors/index.js';
import { jsonText, printable } from '../../protocol/terminal.js';
import { AGENT_VERSION } from '../version.js';
import { COMMON_OPTIONS, COMMON_USAGE, resolveConfig } from './common.js';
import { UsageError, type AgentCommand } from './types.js';

const USAGE = `usage:
  edgeid-agent status [--json] [options]
${COMMON_USAGE}
  --json             machine-readable output`;

async function readJson<T>(file: string): Promise<T | null> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as T;
  } catch {
    return null;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${(s / 3600).toFixed(1)}h`;
  return `${(s / 86400).toFixed(1)}d`;
}

export interface StatusReport extends Omit<AgentStatus, 'pid'> {
  enrolled: boolean;
  stateDir: string;
  pid: number | null;
  /** Why the last renewal failed and what to do (null while renewals succeed). */
  attention?: Attention | null;
  /** The pinned roots: the one from the enrollment link and, after a root rotation, the next one. */
  pins?: { root: string | null; nextRoot: string | null };
}

/** The last renewal's failure explained: the code, the server's or agent's message, the registry's fix. */
export interface Attention {
  code: string;
  /** The server quarantined the device (posture changed): only an operator's approve-baseline ends it. */
  quarantined: boolean;
  message: string;
  fix: string;
}

/** Refusals of a device whose posture no longer matches its zone's policy (the server quarantined it). */
const QUARANTINE_CODES = new Set(['posture_pcr_mismatch', 'posture_claims_rejected', 'posture_eventlog_rejected', 'device_quarantined']);

function attentionFor(last: AgentStatus['renewal']['last'], deviceId: string | undefined): Attention | null {
  if (!last || last.ok || !last.code) return null;
  const info = last.code in ERRORS ? ERRORS[last.code as ErrorCode] : null;
  const quarantined = QUARANTINE_CODES.has(last.code);
  const message = last.message ?? info?.message ?? '';
  const fix = quarantined
    ? `the agent keeps its identity and retries with backoff; an operator checks the device (firmware, boot chain, a TPM reset) and, if the change is expected, runs: edgeid-admin approve-baseline ${deviceId ?? 'ID'}`
    : (info?.fix ?? 'see the agent log for this code');
  return { code: last.code, quarantined, message, fix };
}

export async function collectStatus(stateDir: string): Promise<StatusReport> {
  const store = await StateStore.open(stateDir, { create: false }).catch(() => null);
  const state = store ? await store.load().catch(() => null) : null;
  const lockPid = Number.parseInt((await readFile(path.join(stateDir, 'lock'), 'utf8').catch(() => '')).trim(), 10);
  const running = Number.isSafeInteger(lockPid) && lockPid > 0 && alive(lockPid);
  const live = running ? await readJson<AgentStatus>(path.join(stateDir, 'status.json')) : null;
  const outboxDir = path.join(stateDir, 'outbox');
  const files = await readdir(outboxDir).catch(() => [] as string[]);
  const outboxStats = await readJson<{ dropped?: number; tooLarge?: number }>(path.join(outboxDir, 'stats.json'));
  const dropped = outboxStats?.dropped ?? 0;
  const cert = state?.certificate;
  const left = cert ? (Date.parse(cert.notAfter) - Date.now()) / 1000 : 0;
  return {
    enrolled: !!state?.device,
    stateDir,
    running,
    pid: running ? lockPid : null,
    agentVersion: live?.agentVersion ?? AGENT_VERSION,
    device: state?.device ?? null,
    server: state?.server.url ?? '',
    pins: { root: state?.server.caFingerprint ?? null, nextRoot: state?.server.nextRootFingerprint ?? null },
    certificate: cert
      ? {
          serial: cert.serial,
          notBefore: cert.notBefore,
          notAfter: cert.notAfter,
          secondsLeft: Math.max(0, Math.round(left)),
          expired: left <= 0,
        }
      : null,
    renewal: {
      next: live?.renewal.next ?? state?.renew?.renewAfter ?? null,
      consecutiveFailures: live?.renewal.consecutiveFailures ?? 0,
      last: state?.lastRenewal ?? null,
      total: state?.renewals ?? 0,
      tpmCommandsPerRenewal: state?.tpmCommandsPerRenewal ?? null,
    },
    mqtt: live?.mqtt ?? {
      state: running ? 'disabled' : 'closed',
      url: state?.mqtt?.url ?? null,
      serial: null,
      connectedAt: null,
      connects: 0,
      lastError: null,
    },
    outbox: {
      pending: files.filter((f) => /^\d{16}-.*\.json$/.test(f)).length,
      pendingBytes: live?.outbox.pendingBytes ?? 0,
      dropped,
      tooLarge: outboxStats?.tooLarge ?? 0,
      delivered: live?.outbox.delivered ?? 0,
      maxMessages: live?.outbox.maxMessages ?? 0,
    },
    control: live?.control ?? { accepted: 0, ignored: 0, lastIgnored: null },
    posture: live?.posture ?? null,
    updatedAt: live?.updatedAt ?? new Date().toISOString(),
    attention: attentionFor(state?.lastRenewal ?? null, state?.device?.id),
  };
}

export function renderStatus(s: StatusReport): string {
  // every value may come from the device's files, the server or the broker: escaped for the terminal
  const p = printable;
  if (!s.enrolled) return `not enrolled (state ${p(s.stateDir)})\nenroll with: edgeid-agent enroll --uri 'edgeid://enroll?…'\n`;
  const lines = [
    `device      ${p(s.device!.id)}  zone ${p(s.device!.zone)}  (enrolled ${p(s.device!.enrolledAt)})`,
    `server      ${p(s.server)}`,
    ...(s.pins ? [`pinned      ${p(s.pins.root ?? '—')}${s.pins.nextRoot ? `  next root ${p(s.pins.nextRoot)}` : ''}`] : []),
    `agent       ${s.running ? `running, pid ${s.pid}` : 'not running'}  version ${p(s.agentVersion)}`,
  ];
  if (s.certificate) {
    lines.push(
      `certificate ${p(s.certificate.serial)}  ${s.certificate.expired ? 'EXPIRED' : `${duration(s.certificate.secondsLeft)} left`} (until ${s.certificate.notAfter})`,
    );
  }
  const last = s.renewal.last;
  lines.push(
    `renewal     next ${s.renewal.next ?? '—'}; ${s.renewal.total} done; last ${last ? `${last.ok ? 'ok' : `FAILED [${p(last.code)}]`} at ${p(last.at)} (${p(last.reason)})` : '—'}` +
      (s.renewal.consecutiveFailures ? `; ${s.renewal.consecutiveFailures} failures in a row` : ''),
  );
  if (s.attention) {
    lines.push(
      s.attention.quarantined
        ? `QUARANTINED by the server [${p(s.attention.code)}]: ${p(s.attention.message)}`
        : `            why: ${p(s.attention.message)}`,
      `            what to do: ${p(s.attention.fix)}`,
    );
  }
  lines.push(
    `tpm         ${s.renewal.tpmCommandsPerRenewal ?? '—'} commands per renewal (steady state, flushes included)` +
      (last?.tpmCommands !== undefined
        ? `; last renewal ${last.tpmCommands}${
            last.tpmCommandStats
              ? `: ${Object.entries(last.tpmCommandStats)
                  .map(([k, v]) => (v > 1 ? `${k}×${v}` : k))
                  .join(', ')}`
              : ''
          }`
        : ''),
    `mqtt        ${p(s.mqtt.state)}${s.mqtt.url ? ` ${p(s.mqtt.url)}` : ''}${s.mqtt.lastError ? ` (last error: ${p(s.mqtt.lastError)})` : ''}`,
    `outbox      ${s.outbox.pending} pending, ${s.outbox.dropped} dropped (full), ${s.outbox.tooLarge} dropped (larger than the broker accepts)`,
    `control     ${s.control.accepted} accepted, ${s.control.ignored} ignored${s.control.lastIgnored ? ` (last: ${p(s.control.lastIgnored.code)})` : ''}`,
  );
  if (s.posture) {
    const pos = s.posture as { os?: { PRETTY_NAME?: string }; kernel?: string; agentHash?: string; configHash?: string };
    lines.push(
      `posture     ${printable(pos.os?.PRETTY_NAME ?? '?')}, kernel ${printable(pos.kernel ?? '?')}, agent ${printable(String(pos.agentHash ?? '?').slice(0, 12))}…, config ${printable(String(pos.configHash ?? '?').slice(0, 12))}…`,
    );
  }
  return lines.join('\n') + '\n';
}

export const statusCommand: AgentCommand = {
  name: 'status',
  summary: 'show identity, certificate, renewal, MQTT and outbox state (--json for scripts)',
  async run(args, io) {
    let values;
    try {
      ({ values } = parseArgs({ args, options: { ...COMMON_OPTIONS, json: { type: 'boolean' } }, strict: true }));
    } catch (e) {
      throw new UsageError((e as Error).message, USAGE);
    }
    if (values.help) {
      io.out.write(`${USAGE}\n`);
      return 0;
    }
    const config = resolveConfig(values);
    const s = await collectStatus(config.stateDir);
    io.out.write(values.json ? `${jsonText(s, 2)}\n` : renderStatus(s));
    // the report is printed either way; "not enrolled" is a failed check for a script
    return s.enrolled ? 0 : 1;
  },
};
