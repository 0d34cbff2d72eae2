#!/usr/bin/env node
/**
 * edgeid-admin: operators' and technicians' CLI over the server's admin API.
 * Server URL, admin token and CA come from --server/--admin-token/--ca, from EDGEID_SERVER /
 * EDGEID_ADMIN_TOKEN / EDGEID_CA, or — on the server's host — from its data dir (--data, default ./data).
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import QRCode from 'qrcode';
import type { AuditRow, AuditVerifyResult, DeviceView, TokenCreateResponse, TokenView } from '../protocol/api.js';
import { REVOKE_REASONS } from '../protocol/api.js';
import { ERRORS, isEdgeidError } from '../protocol/errors/index.js';
import { colourEnabled, flush, printable } from '../protocol/terminal.js';
import { AdminClient, resolveTarget } from './admin/client.js';
import { brokerKeySpki, writeBrokerConfig } from './broker/config-files.js';
import { parseDuration } from './duration.js';
import { writeFileAtomic } from './files.js';
import { verifyChain } from './store/audit-chain.js';

const USAGE = `usage: edgeid-admin COMMAND [options]

commands:
  token create --zone Z --owner O [--name N] [--purpose P] [--ttl 8h] [--png FILE] [--qr] [--json]
                                       --png writes the QR code (mode 0600); the QR block is shown
                                       on a terminal only, or wherever --qr asks for it
  tokens list [--json]
  devices list [--stale] [--status S] [--zone Z] [--json]
  device show ID [--json]
  revoke ID --reason R [--json]        reasons: ${REVOKE_REASONS.join(', ')}
  approve-baseline ID [--json]
  retire ID [--json]
  audit export [--out FILE] [--json]   JSON lines, oldest first (--json: one array)
  audit verify [--file FILE] [--json]  checks the hash chain (on the server, or an exported FILE)
  ca export [--out FILE] [--json]      the CA chain (PEM) devices and tools trust
  broker config --out DIR [--hostname H]... [--port 8883] [--bind 0.0.0.0] [--run-as-root]
                                       a Mosquitto 2.0 config dir (TLS + client certs, CRL, dynsec)
  renew-now ID [--json]                ask a device (over the broker) to re-attest at once
  broker reconcile [--json]            make the broker's per-device clients match the inventory

connection (first match wins):
  --server URL       / EDGEID_SERVER       / <data>/server.json
  --admin-token T    / EDGEID_ADMIN_TOKEN  / <data>/admin-token
  --ca FILE          / EDGEID_CA           / <data>/ca/root.pem   (pins the server's TLS chain)
  --data DIR         the server's data dir (default ./data, env EDGEID_DATA)

output:
  stdout holds the command's result and nothing else: with --json exactly one JSON document,
  else text (audit export: JSON lines); --out FILE writes that result to FILE (0600) instead
  (broker config: --out is its directory). Messages, hints and errors go to stderr. Colour and
  QR blocks only on a terminal, never with NO_COLOR set. Device-supplied text is shown with its
  control characters escaped (\x1b).
exit codes: 0 ok, 1 failed (or the result could not be written), 2 usage error`;

type Flags = Record<string, string | boolean | string[] | undefined>;

function table(rows: Record<string, unknown>[], columns: string[]): string {
  // every cell may hold device-supplied text: escaped, so a name cannot move the cursor or erase rows
  const cell = (v: unknown) => (v === null || v === undefined ? '-' : printable(v));
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(columns.map((c) => c.toUpperCase())), ...rows.map((r) => line(columns.map((c) => cell(r[c]))))].join('\n');
}

/**
 * What a command prints. `result` is its one document for stdout (JSON with --json, text
 * otherwise; --out FILE puts it in FILE instead); `note` is a human message for stderr.
 */
interface Output {
  result: string | null;
  notes: string[];
  /** --out FILE: where the result goes instead of stdout, and that file's mode. */
  outFile?: { path: string; mode: number };
}

function need(flags: Flags, name: string): string {
  const v = flags[name];
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

class UsageError extends Error {}

function showDevice(d: DeviceView): string {
  const p = (v: unknown) => (v === null || v === undefined ? '-' : printable(v));
  const lines = [
    `device      ${p(d.id)}`,
    `status      ${p(d.status)}${d.statusReason ? ` (${p(d.statusReason)})` : ''}`,
    `posture     ${p(d.posture)}${d.baselineWindowUntil ? ` (baseline window until ${p(d.baselineWindowUntil)})` : ''}`,
    `zone        ${p(d.zone)}`,
    `owner       ${p(d.owner)}`,
    `name        ${p(d.name)}`,
    `purpose     ${p(d.purpose)}`,
    `enrolled    ${p(d.enrolledAt)} by ${p(d.enrolledBy)}`,
    `retire by   ${p(d.retireBy)}`,
    `last seen   ${p(d.lastSeen)} from ${p(d.lastIp)}${d.stale ? '  [STALE]' : ''}`,
    `EK hash     ${p(d.ekHash)}`,
    `agent       ${p(d.claims?.agentVersion)}`,
  ];
  if (d.certificates?.length) {
    lines.push('', table(d.certificates.map((c) => ({ ...c })), ['serial', 'notBefore', 'notAfter', 'revokedAt', 'reason']));
  }
  if (d.eventLog) {
    // baseline (approved) vs current TCG event log; event strings come from the device: escaped
    const e = d.eventLog;
    lines.push('', `event log   approved ${p(e.baselineSha256)}`, `            current  ${p(e.currentSha256)}`);
    if (e.diff.length === 0) lines.push(`            no difference (${e.unchanged} events)`);
    else lines.push(`            ${e.diff.length} changed lines, ${e.unchanged} events unchanged:`, ...e.diff.map((l) => `  ${printable(l)}`));
  }
  return lines.join('\n');
}

/**
 * The QR code of an enrollment URI as terminal text: ANSI-coloured blocks when colour is allowed,
 * else plain Unicode half blocks (light modules drawn, as `qrencode -t UTF8` does) with no escape codes.
 */
async function terminalQr(uri: string, colour: boolean): Promise<string> {
  if (colour) return QRCode.toString(uri, { type: 'terminal', small: true, errorCorrectionLevel: 'M' });
  const { modules } = QRCode.create(uri, { errorCorrectionLevel: 'M' });
  const quiet = 2;
  const size = modules.size;
  const light = (r: number, c: number) => r < 0 || c < 0 || r >= size || c >= size || !modules.get(r, c);
  const rows: string[] = [];
  for (let r = -quiet; r < size + quiet; r += 2) {
    let row = '';
    for (let c = -quiet; c < size + quiet; c++) {
      const top = light(r, c);
      const bottom = r + 1 < size + quiet ? light(r + 1, c) : false;
      row += top && bottom ? '\u2588' : top ? '\u2580' : bottom ? '\u2584' : ' ';
    }
    rows.push(row);
  }
  return rows.join('\n') + '\n';
}

async function run(argv: string[], o: Output): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      server: { type: 'string' },
      'admin-token': { type: 'string' },
      ca: { type: 'string' },
      data: { type: 'string' },
      json: { type: 'boolean' },
      zone: { type: 'string' },
      owner: { type: 'string' },
      name: { type: 'string' },
      purpose: { type: 'string' },
      ttl: { type: 'string' },
      png: { type: 'string' },
      qr: { type: 'boolean' },
      stale: { type: 'boolean' },
      status: { type: 'string' },
      reason: { type: 'string' },
      out: { type: 'string' },
      file: { type: 'string' },
      hostname: { type: 'string', multiple: true },
      port: { type: 'string' },
      bind: { type: 'string' },
      'run-as-root': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const flags = values as Flags;
  const [cmd, sub, arg] = positionals;
  if (flags.help) {
    o.result = USAGE + '\n';
    return 0;
  }
  if (!cmd) throw new UsageError('no command given');
  const key = [cmd, sub].filter(Boolean).join(' ');
  // --out FILE takes the result of every command (broker config's --out is its directory); the
  // document may hold a token, so 0600 — only the CA chain, which is public, is 0644
  if (typeof flags.out === 'string' && key !== 'broker config') o.outFile = { path: flags.out, mode: key === 'ca export' ? 0o644 : 0o600 };
  /** The command's one stdout document: JSON with --json, else the human text. */
  const emit = (json: unknown, human: () => string) => {
    o.result = flags.json ? JSON.stringify(json, null, 2) + '\n' : human() + '\n';
  };

  // offline: verify an exported audit file without any server
  if (cmd === 'audit' && sub === 'verify' && typeof flags.file === 'string') {
    const rows = readFileSync(flags.file, 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .map((l, i) => {
        try {
          return JSON.parse(l) as AuditRow;
        } catch {
          throw new Error(`${flags.file}: line ${i + 1} is not JSON`);
        }
      });
    const res = verifyChain(rows, null);
    emit(res, () => (res.ok ? `audit chain OK: ${res.rows} rows` : `audit chain BROKEN at row ${res.problem!.seq}: ${printable(res.problem!.detail)}`));
    return res.ok ? 0 : 1;
  }

  const client = new AdminClient(
    resolveTarget({
      ...(typeof flags.server === 'string' ? { server: flags.server } : {}),
      ...(typeof flags['admin-token'] === 'string' ? { adminToken: flags['admin-token'] } : {}),
      ...(typeof flags.ca === 'string' ? { ca: flags.ca } : {}),
      ...(typeof flags.data === 'string' ? { data: flags.data } : {}),
    }),
  );
  const deviceArg = (x: string | undefined) => {
    if (!x) throw new UsageError('a device id is required');
    return x;
  };

  switch (cmd === 'device' || cmd === 'revoke' || cmd === 'approve-baseline' || cmd === 'retire' || cmd === 'renew-now' ? cmd : key) {
    case 'token create': {
      let ttlSeconds: number | undefined;
      if (typeof flags.ttl === 'string') {
        const s = parseDuration(flags.ttl);
        if (s === null) throw new UsageError(`--ttl ${flags.ttl} is not a duration like 30m, 8h, 7d`);
        ttlSeconds = Math.round(s);
      }
      const res = await client.request<TokenCreateResponse>('POST', '/v1/admin/tokens', {
        zone: need(flags, 'zone'),
        owner: need(flags, 'owner'),
        ...(typeof flags.name === 'string' ? { name: flags.name } : {}),
        ...(typeof flags.purpose === 'string' ? { purpose: flags.purpose } : {}),
        ...(ttlSeconds !== undefined ? { ttlSeconds } : {}),
      });
      if (typeof flags.png === 'string') {
        // the QR code is the whole token: a secret file, 0600 whatever the umask or an earlier file's mode
        writeFileAtomic(flags.png, await QRCode.toBuffer(res.uri, { type: 'png', errorCorrectionLevel: 'M', margin: 2, scale: 6 }), 0o600);
        o.notes.push(`QR code written to ${flags.png} (mode 0600)`);
      }
      o.notes.push(`on the device: edgeid-agent enroll --uri '${res.uri}'`);
      if (flags.json) {
        emit({ token: res.token, uri: res.uri, expiresAt: res.expiresAt, id: res.id, zone: res.zone, owner: res.owner, caFingerprint: res.caFingerprint }, () => '');
        return 0;
      }
      // the QR block belongs on a terminal (or where --qr asks for it), never in a pipe or a file by default
      const toTerminal = !o.outFile && process.stdout.isTTY === true;
      const qr = flags.qr === true || toTerminal ? await terminalQr(res.uri, toTerminal && colourEnabled(process.stdout)) : null;
      o.result = [
        `token       ${res.token}`,
        `zone        ${printable(res.zone)}`,
        `owner       ${printable(res.owner)}`,
        ...(res.name ? [`name        ${printable(res.name)}`] : []),
        `expires     ${res.expiresAt}`,
        `server      ${printable(res.server)}`,
        `CA          ${res.caFingerprint}`,
        `uri         ${printable(res.uri)}`,
        ...(qr ? ['', qr.trimEnd()] : []),
        '',
      ].join('\n');
      return 0;
    }
    case 'tokens list': {
      const { tokens } = await client.request<{ tokens: TokenView[] }>('GET', '/v1/admin/tokens');
      emit(tokens, () => table(tokens.map((t) => ({ ...t })), ['id', 'zone', 'owner', 'name', 'expiresAt', 'usedAt', 'deviceId']));
      return 0;
    }
    case 'devices list': {
      const q = new URLSearchParams();
      if (flags.stale) q.set('stale', 'true');
      if (typeof flags.status === 'string') q.set('status', flags.status);
      if (typeof flags.zone === 'string') q.set('zone', flags.zone);
      const { devices } = await client.request<{ devices: DeviceView[] }>('GET', `/v1/admin/devices${q.size ? `?${q}` : ''}`);
      emit(devices, () =>
        table(
          devices.map((d) => ({ ...d, state: d.status, certExpires: d.certificateNotAfter ?? '', stale: d.stale ? 'yes' : '', agent: d.claims?.agentVersion })),
          ['id', 'name', 'zone', 'owner', 'state', 'posture', 'certExpires', 'lastSeen', 'lastIp', 'stale', 'agent'],
        ),
      );
      return 0;
    }
    case 'device': {
      if (sub !== 'show') throw new UsageError('device show ID');
      const { device } = await client.request<{ device: DeviceView }>('GET', `/v1/admin/devices/${encodeURIComponent(deviceArg(arg))}`);
      emit(device, () => showDevice(device));
      return 0;
    }
    case 'revoke': {
      const reason = need(flags, 'reason');
      if (!(REVOKE_REASONS as readonly string[]).includes(reason)) throw new UsageError(`--reason must be one of ${REVOKE_REASONS.join(', ')}`);
      const res = await client.request<{ device: DeviceView; serials: string[]; crlNumber: string; hooks: { hook: string; ok: boolean; ms: number; error?: string }[] }>(
        'POST',
        `/v1/admin/devices/${encodeURIComponent(deviceArg(sub))}/revoke`,
        { reason },
      );
      emit(res, () =>
        [
          `revoked ${printable(res.device.id)} (${reason}); ${res.serials.length} certificate(s) on CRL #${printable(res.crlNumber)}`,
          ...res.hooks.map((h) => `  ${printable(h.hook)}: ${h.ok ? 'ok' : `FAILED ${printable(h.error)}`} (${h.ms.toFixed(0)} ms)`),
        ].join('\n'),
      );
      return 0;
    }
    case 'retire': {
      const res = await client.request<{ device: DeviceView; serials: string[] }>('POST', `/v1/admin/devices/${encodeURIComponent(deviceArg(sub))}/retire`, {});
      emit(res, () => `retired ${printable(res.device.id)}; ${res.serials.length} certificate(s) revoked`);
      return 0;
    }
    case 'approve-baseline': {
      const res = await client.request<{ device: DeviceView }>('POST', `/v1/admin/devices/${encodeURIComponent(deviceArg(sub))}/approve-baseline`, {});
      emit(res, () => `${printable(res.device.id)}: status ${printable(res.device.status)}; the next quote until ${printable(res.device.baselineWindowUntil)} becomes the new baseline`);
      return 0;
    }
    case 'audit export': {
      const lines: string[] = [];
      let after = 0;
      for (;;) {
        const { rows } = await client.request<{ rows: AuditRow[] }>('GET', `/v1/admin/audit?after=${after}&limit=5000`);
        for (const r of rows) lines.push(JSON.stringify(r));
        if (rows.length < 5000) break;
        after = rows[rows.length - 1]!.seq;
      }
      // JSON lines (one document per row, the export format); --json makes it one document, an array
      o.result = flags.json ? `[${lines.join(',\n')}]\n` : lines.join('\n') + (lines.length ? '\n' : '');
      if (typeof flags.out === 'string') o.notes.push(`${lines.length} audit rows`);
      return 0;
    }
    case 'audit verify': {
      const res = await client.request<AuditVerifyResult>('GET', '/v1/admin/audit/verify');
      emit(res, () => (res.ok ? `audit chain OK: ${res.rows} rows` : `audit chain BROKEN at row ${res.problem!.seq} (${printable(res.problem!.kind)}): ${printable(res.problem!.detail)}`));
      return res.ok ? 0 : 1;
    }
    case 'ca export': {
      const pem = (await client.request<Buffer>('GET', '/v1/ca', undefined, { auth: false, raw: true })).toString('utf8');
      o.result = flags.json ? JSON.stringify({ chain: pem }, null, 2) + '\n' : pem;
      return 0;
    }
    case 'broker config': {
      const outDir = need(flags, 'out');
      const hostnames = (flags.hostname as string[] | undefined) ?? ['localhost', '127.0.0.1'];
      const port = Number(flags.port ?? 8883);
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError('--port must be a TCP port');
      const spki = brokerKeySpki(outDir);
      const res = await client.request<{ certificate: string; caBundle: string; crl: string | null; notAfter: string }>('POST', '/v1/admin/broker/certificate', {
        spki: spki.toString('base64'),
        hostnames,
      });
      const files = writeBrokerConfig({
        out: outDir,
        port,
        bindAddress: typeof flags.bind === 'string' ? flags.bind : '0.0.0.0',
        certificate: res.certificate,
        caBundle: res.caBundle,
        crl: res.crl ?? '',
        runAsRoot: flags['run-as-root'] === true,
      });
      const host = hostnames[0]!;
      emit({ files, notAfter: res.notAfter }, () =>
        [
          `wrote a Mosquitto 2.0 config for edgeid to ${files.dir} (broker certificate valid until ${res.notAfter})`,
          '',
          `  run it:   mosquitto -c ${files.config}`,
          `            (as root Mosquitto drops to user "mosquitto": chown mosquitto ${files.keyFile} ${files.dynsecFile})`,
          '',
          '  then tell the server, in its config file:',
          `    "broker": { "url": "mqtts://${host}:${port}", "crlFile": "${files.crlFile}",`,
          '                "reloadCommand": ["systemctl", "restart", "mosquitto"] }',
          `    "mqtt":   { "url": "mqtts://${host}:${port}" }`,
          '  Mosquitto reads its CRL only at start: the reload command must restart it.',
        ].join('\n'),
      );
      return 0;
    }
    case 'renew-now': {
      const id = deviceArg(sub);
      const res = await client.request<{ published: boolean; payload: string }>('POST', `/v1/admin/devices/${encodeURIComponent(id)}/control`, { type: 'renew-now' });
      emit(res, () => (res.published ? `renew-now sent to ${printable(id)}` : `renew-now signed for ${printable(id)}, but this server has no broker integration to deliver it`));
      return res.published ? 0 : 1;
    }
    case 'broker reconcile': {
      const res = await client.request<{ added: string[]; removed: string[] }>('POST', '/v1/admin/broker/reconcile', {});
      emit(res, () => `broker reconciled: ${res.added.length} device(s) added, ${res.removed.length} removed`);
      return 0;
    }
    default:
      throw new UsageError(`unknown command: ${positionals.join(' ')}`);
  }
}

/** The exit code and what goes where, for whatever run() ended with. */
function failure(e: unknown, o: Output): number {
  if (e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
    o.notes.push(`edgeid-admin: ${printable((e as Error).message)}\n\n${USAGE}`);
    return 2;
  }
  if (isEdgeidError(e)) {
    o.notes.push(`edgeid-admin: ${e.code}: ${printable(e.message)}\n  fix: ${ERRORS[e.code].fix}`);
    return 1;
  }
  o.notes.push(`edgeid-admin: ${printable(e instanceof Error ? e.message : String(e))}`);
  return 1;
}

/**
 * Runs the CLI and ends by returning, never by process.exit(): Node exits once stdout and stderr
 * have drained, so a pipe gets every byte. Exit code 0 ok, 1 failed (including a stdout that could
 * not be written, e.g. a closed pipe), 2 usage.
 */
async function main(argv: string[]): Promise<number> {
  const o: Output = { result: null, notes: [] };
  let code: number;
  try {
    code = await run(argv, o);
  } catch (e) {
    o.result = null;
    code = failure(e, o);
  }
  // write errors (EPIPE from `| head`) arrive through flush(); without a listener they would throw
  process.stdout.on('error', () => {});
  process.stderr.on('error', () => {});
  if (o.result !== null && o.outFile) {
    try {
      writeFileAtomic(o.outFile.path, o.result, o.outFile.mode);
      o.notes.push(`wrote ${o.outFile.path}`);
    } catch (e) {
      o.notes.push(`edgeid-admin: cannot write ${o.outFile.path}: ${(e as Error).message}`);
      code = 1;
    }
  } else if (o.result !== null) {
    process.stdout.write(o.result);
  }
  if (o.notes.length) process.stderr.write(o.notes.join('\n') + '\n');
  try {
    await flush(process.stdout);
  } catch (e) {
    process.stderr.write(`edgeid-admin: stdout: ${(e as Error).message}\n`);
    code = 1;
  }
  await flush(process.stderr).catch(() => {});
  return code;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`edgeid-admin: ${String(e)}\n`);
    process.exitCode = 1;
  },
);
