#!/usr/bin/env node
/**
 * edgeid-admin: operators' and technicians' CLI over the server's admin API.
 * Server URL, admin token and CA come from --server/--admin-token/--ca, from EDGEID_SERVER /
 * EDGEID_ADMIN_TOKEN / EDGEID_CA, or — on the server's host — from its data dir (--data, default ./data).
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import QRCode from 'qrcode';
import type { AuditRow, AuditVerifyResult, DeviceView, TokenCreateResponse, TokenView } from '../protocol/api.js';
import { REVOKE_REASONS } from '../protocol/api.js';
import { ERRORS, isEdgeidError } from '../protocol/errors/index.js';
import { AdminClient, resolveTarget } from './admin/client.js';
import { brokerKeySpki, writeBrokerConfig } from './broker/config-files.js';
import { parseDuration } from './duration.js';
import { verifyChain } from './store/audit-chain.js';

const USAGE = `usage: edgeid-admin COMMAND [options]

commands:
  token create --zone Z --owner O [--name N] [--purpose P] [--ttl 8h] [--png FILE] [--json]
  tokens list [--json]
  devices list [--stale] [--status S] [--zone Z] [--json]
  device show ID [--json]
  revoke ID --reason R [--json]        reasons: ${REVOKE_REASONS.join(', ')}
  approve-baseline ID [--json]
  retire ID [--json]
  audit export [--out FILE]            JSON lines, oldest first
  audit verify [--file FILE] [--json]  checks the hash chain (on the server, or an exported FILE)
  ca export [--out FILE]               the CA chain (PEM) devices and tools trust
  broker config --out DIR [--hostname H]... [--port 8883] [--bind 0.0.0.0] [--run-as-root]
                                       a Mosquitto 2.0 config dir (TLS + client certs, CRL, dynsec)
  renew-now ID [--json]                ask a device (over the broker) to re-attest at once
  broker reconcile [--json]            make the broker's per-device clients match the inventory

connection (first match wins):
  --server URL       / EDGEID_SERVER       / <data>/server.json
  --admin-token T    / EDGEID_ADMIN_TOKEN  / <data>/admin-token
  --ca FILE          / EDGEID_CA           / <data>/ca/root.pem   (pins the server's TLS chain)
  --data DIR         the server's data dir (default ./data, env EDGEID_DATA)`;

type Flags = Record<string, string | boolean | string[] | undefined>;

function table(rows: Record<string, unknown>[], columns: string[]): string {
  const cell = (v: unknown) => (v === null || v === undefined ? '-' : String(v));
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(columns.map((c) => c.toUpperCase())), ...rows.map((r) => line(columns.map((c) => cell(r[c]))))].join('\n');
}

function out(flags: Flags, json: unknown, human: () => string): void {
  process.stdout.write((flags.json ? JSON.stringify(json, null, 2) : human()) + '\n');
}

function need(flags: Flags, name: string): string {
  const v = flags[name];
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

class UsageError extends Error {}

function showDevice(d: DeviceView): string {
  const lines = [
    `device      ${d.id}`,
    `status      ${d.status}${d.statusReason ? ` (${d.statusReason})` : ''}`,
    `posture     ${d.posture}${d.baselineWindowUntil ? ` (baseline window until ${d.baselineWindowUntil})` : ''}`,
    `zone        ${d.zone}`,
    `owner       ${d.owner}`,
    `name        ${d.name ?? '-'}`,
    `purpose     ${d.purpose ?? '-'}`,
    `enrolled    ${d.enrolledAt} by ${d.enrolledBy}`,
    `retire by   ${d.retireBy ?? '-'}`,
    `last seen   ${d.lastSeen ?? '-'} from ${d.lastIp ?? '-'}${d.stale ? '  [STALE]' : ''}`,
    `EK hash     ${d.ekHash}`,
    `agent       ${d.claims?.agentVersion ?? '-'}`,
  ];
  if (d.certificates?.length) {
    lines.push('', table(d.certificates.map((c) => ({ ...c })), ['serial', 'notBefore', 'notAfter', 'revokedAt', 'reason']));
  }
  return lines.join('\n');
}

async function run(argv: string[]): Promise<number> {
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
  if (flags.help || !cmd) {
    process.stdout.write(USAGE + '\n');
    return flags.help ? 0 : 2;
  }

  // offline: verify an exported audit file without any server
  if (cmd === 'audit' && sub === 'verify' && typeof flags.file === 'string') {
    const { readFileSync } = await import('node:fs');
    const rows = readFileSync(flags.file, 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as AuditRow);
    const res = verifyChain(rows, null);
    out(flags, res, () => (res.ok ? `audit chain OK: ${res.rows} rows` : `audit chain BROKEN at row ${res.problem!.seq}: ${res.problem!.detail}`));
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
  const key = [cmd, sub].filter(Boolean).join(' ');
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
      if (typeof flags.png === 'string') await QRCode.toFile(flags.png, res.uri, { type: 'png', errorCorrectionLevel: 'M', margin: 2, scale: 6 });
      if (flags.json) {
        out(flags, { token: res.token, uri: res.uri, expiresAt: res.expiresAt, id: res.id, zone: res.zone, owner: res.owner, caFingerprint: res.caFingerprint }, () => '');
        return 0;
      }
      const qr = await QRCode.toString(res.uri, { type: 'terminal', small: true, errorCorrectionLevel: 'M' });
      process.stdout.write(
        [
          `token       ${res.token}`,
          `zone        ${res.zone}`,
          `owner       ${res.owner}`,
          ...(res.name ? [`name        ${res.name}`] : []),
          `expires     ${res.expiresAt}`,
          `server      ${res.server}`,
          `CA          ${res.caFingerprint}`,
          `uri         ${res.uri}`,
          '',
          qr,
          ...(typeof flags.png === 'string' ? [`QR code written to ${flags.png}`] : []),
          `on the device: edgeid-agent enroll --uri '${res.uri}'`,
          '',
        ].join('\n'),
      );
      return 0;
    }
    case 'tokens list': {
      const { tokens } = await client.request<{ tokens: TokenView[] }>('GET', '/v1/admin/tokens');
      out(flags, tokens, () => table(tokens.map((t) => ({ ...t })), ['id', 'zone', 'owner', 'name', 'expiresAt', 'usedAt', 'deviceId']));
      return 0;
    }
    case 'devices list': {
      const q = new URLSearchParams();
      if (flags.stale) q.set('stale', 'true');
      if (typeof flags.status === 'string') q.set('status', flags.status);
      if (typeof flags.zone === 'string') q.set('zone', flags.zone);
      const { devices } = await client.request<{ devices: DeviceView[] }>('GET', `/v1/admin/devices${q.size ? `?${q}` : ''}`);
      out(flags, devices, () =>
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
      out(flags, device, () => showDevice(device));
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
      out(flags, res, () =>
        [
          `revoked ${res.device.id} (${reason}); ${res.serials.length} certificate(s) on CRL #${res.crlNumber}`,
          ...res.hooks.map((h) => `  ${h.hook}: ${h.ok ? 'ok' : `FAILED ${h.error}`} (${h.ms.toFixed(0)} ms)`),
        ].join('\n'),
      );
      return 0;
    }
    case 'retire': {
      const res = await client.request<{ device: DeviceView; serials: string[] }>('POST', `/v1/admin/devices/${encodeURIComponent(deviceArg(sub))}/retire`, {});
      out(flags, res, () => `retired ${res.device.id}; ${res.serials.length} certificate(s) revoked`);
      return 0;
    }
    case 'approve-baseline': {
      const res = await client.request<{ device: DeviceView }>('POST', `/v1/admin/devices/${encodeURIComponent(deviceArg(sub))}/approve-baseline`, {});
      out(flags, res, () => `${res.device.id}: status ${res.device.status}; the next quote until ${res.device.baselineWindowUntil} becomes the new baseline`);
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
      const text = lines.join('\n') + (lines.length ? '\n' : '');
      if (typeof flags.out === 'string') writeFileSync(flags.out, text, { mode: 0o600 });
      else process.stdout.write(text);
      return 0;
    }
    case 'audit verify': {
      const res = await client.request<AuditVerifyResult>('GET', '/v1/admin/audit/verify');
      out(flags, res, () => (res.ok ? `audit chain OK: ${res.rows} rows` : `audit chain BROKEN at row ${res.problem!.seq} (${res.problem!.kind}): ${res.problem!.detail}`));
      return res.ok ? 0 : 1;
    }
    case 'ca export': {
      const pem = (await client.request<Buffer>('GET', '/v1/ca', undefined, { auth: false, raw: true })).toString('utf8');
      if (typeof flags.out === 'string') writeFileSync(flags.out, pem);
      else process.stdout.write(pem);
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
      out(flags, { files, notAfter: res.notAfter }, () =>
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
      out(flags, res, () => (res.published ? `renew-now sent to ${id}` : `renew-now signed for ${id}, but this server has no broker integration to deliver it`));
      return res.published ? 0 : 1;
    }
    case 'broker reconcile': {
      const res = await client.request<{ added: string[]; removed: string[] }>('POST', '/v1/admin/broker/reconcile', {});
      out(flags, res, () => `broker reconciled: ${res.added.length} device(s) added, ${res.removed.length} removed`);
      return 0;
    }
    default:
      throw new UsageError(`unknown command: ${positionals.join(' ')}`);
  }
}

run(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`edgeid-admin: ${(e as Error).message}\n\n${USAGE}\n`);
      process.exit(2);
    }
    if (isEdgeidError(e)) {
      process.stderr.write(`edgeid-admin: ${e.code}: ${e.message}\n  fix: ${ERRORS[e.code].fix}\n`);
      process.exit(1);
    }
    process.stderr.write(`edgeid-admin: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  },
);
