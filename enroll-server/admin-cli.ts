#!/usr/bin/env node
/**
 * edgeid-admin: operators' and technicians' CLI over the server's admin API.
 * Server URL, token and CA come from --server/--token/--admin-token/--ca, from EDGEID_SERVER /
 * EDGEID_TOKEN / EDGEID_ADMIN_TOKEN / EDGEID_CA, a 0600 credentials file, or — on the server's
 * host — from its data dir (--data, default ./data).
 */
import { accessSync, constants, existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, resolve, sep } from 'node:path';
import { parseArgs } from 'node:util';
import QRCode from 'qrcode';
import type { Static, TSchema } from 'typebox';
import type { AuditRow, AuditVerifyResult, DeviceView } from '../protocol/api.js';
import * as W from '../protocol/api.js';
import { REVOKE_REASONS } from '../protocol/api.js';
import { ERRORS, isEdgeidError } from '../protocol/errors/index.js';
import { colourEnabled, flush, jsonText, printable } from '../protocol/terminal.js';
import { AdminClient, defaultCredentialsFile, resolveTarget } from './admin/client.js';
import { brokerKeySpki, writeBrokerConfig } from './broker/config-files.js';
import { newMonitorKey, prepareMonitorDir, writeMonitorFiles } from './broker/monitor-files.js';
import { formatDuration, parseDuration } from './duration.js';
import { writeFileAtomic } from './files.js';
import { readHeader, readPassphrase } from './backup/format.js';
import { verifyChain } from './store/audit-chain.js';

const USAGE = `usage: edgeid-admin COMMAND [options]

commands:
  token create --zone Z --owner O [--name N] [--purpose P] [--ttl 8h] [--png FILE] [--qr] [--json]
                                       --png writes the QR code (mode 0600); the QR block is shown
                                       on a terminal only, or wherever --qr asks for it
  tokens list [--json]
  tokens expire ID [--json]            an unused token stops working now (technician: its own)
  devices list [--stale] [--status S] [--zone Z] [--json]
                                       states: ${W.DEVICE_STATUSES.join(', ')}
  device show ID [--json]
  revoke ID --reason R [--json]        reasons: ${REVOKE_REASONS.join(', ')}
  approve-baseline ID [--json]
  retire ID [--json]
  audit export [--user NAME] [--out FILE] [--json]
                                       JSON lines, oldest first (--json: one array); --user: one person's rows
  audit verify [--file FILE] [--json]  checks the hash chain (on the server, or an exported FILE)
  ca export [--out FILE] [--json]      the CA chain (PEM) devices and tools trust
  ca status [--json]                   every CA certificate (root, issuing CAs, server TLS, control
                                       signer) and its expiry; WARN lines (stderr) for those expiring
                                       within the warning window; exit 1 if any has expired
  ca rotate-issuing [--json]           a new issuing CA under the same root issues from now on; the
                                       old one's certificates stay valid, its CRL stays published
  ca rotate-root [--json]              a new root R2, its cross certificate by the current root, and
                                       a new issuing CA under R2 that issues from now on; devices
                                       keep their pin and learn R2 at their next renewal
  backup --out FILE [--passphrase-file F] [--force] [--json]
                                       a consistent snapshot taken by the running server (database,
                                       CA certificates and keys, admin token), encrypted with the
                                       passphrase (F: mode 0600, first line; else EDGEID_BACKUP_PASSPHRASE);
                                       FILE is written 0600. Restore: edgeid-server restore FILE --data DIR
  broker config --out DIR [--hostname H]... [--port 8883] [--bind 0.0.0.0] [--run-as-root]
                                       a Mosquitto 2.0 config dir (TLS + client certs, CRL, dynsec)
  renew-now ID [--json]                ask a device (over the broker) to re-attest at once
  broker reconcile [--json]            make the broker's per-device clients match the inventory
  broker crl [--json]                  the broker's CRL: loaded, pending revocations, next reload
  broker crl-reload [--json]           make the broker load the latest CRL now (audited)
  broker monitor add NAME --out DIR [--days 90] [--json]
                                       a monitoring tool's own broker identity (CN edgeid-monitor-NAME,
                                       reads devices/# and edgeid/+/control, publishes nothing): key
                                       made here (0600), certificate and CA written to DIR; at most 365 days
  broker monitor list [--json]
  broker monitor remove NAME [--json]  deletes its broker client and puts its certificate on the CRL
  ek-roots list [--json]               the EK trust store: built-in TPM makers' CAs, configured, added
  ek-roots add FILE [--json]           add a trust anchor for EK certificates (PEM or DER CA certificate)
  ek-roots remove FINGERPRINT [--json] remove an added anchor, or switch off a built-in/configured one
                                       (FINGERPRINT as list shows it: a unique prefix will do)
  ek-allow import FILE --zone Z --owner O [--json]
                                       a supplier manifest (CSV or JSON of EK certificates or EK
                                       public keys): each listed TPM may enroll once without a token
  ek-allow list [--json]
  ek-allow remove ID [--json]
  users add NAME --role R [--zones Z1,Z2] [--expires 90d] [--json]
                                       a person's account; prints its token once (roles: ${W.USER_ROLES.join(' < ')};
                                       no --zones = every zone; an admin always has every zone)
  users list [--json]
  users disable NAME [--json]          its token is refused from now on
  users rotate-token NAME [--json]     a new token, printed once; the old one is refused from now on
  users set-role NAME --role R [--zones Z1,Z2 | --all-zones] [--json]
                                       a new role (and zones) at once, audited; without --zones the
                                       account keeps its zones; the last enabled admin stays an admin
  alerts list [--state open|acknowledged] [--rule R] [--json]
                                       alerts of your zones, newest first
  alerts ack ID [--json]               acknowledge an alert (operator); a new occurrence opens a new alert

connection (first match wins):
  --server URL       / EDGEID_SERVER       / <data>/server.json
  --token T          / EDGEID_TOKEN        your personal token (users add prints it)
  --admin-token T    / EDGEID_ADMIN_TOKEN
  --credentials FILE / EDGEID_CREDENTIALS  / ~/.config/edgeid/credentials  (the token; mode 0600
                                             or it is refused: credentials_file_insecure)
                                         / <data>/admin-token  (the bootstrap admin, on the server host)
  --ca FILE          / EDGEID_CA           / <data>/ca/root.pem   (pins the server's TLS chain)
  --data DIR         the server's data dir (default ./data, env EDGEID_DATA)

output:
  stdout holds the command's result and nothing else: with --json exactly one JSON document,
  else text (audit export: JSON lines); --out FILE writes that result to FILE (0600) instead
  (broker config, broker monitor add: --out is a directory). Messages, hints and errors go to stderr. Colour and
  QR blocks only on a terminal, never with NO_COLOR set. Device-supplied text is shown with its
  control characters escaped (\\x1b).
exit codes: 0 ok, 1 failed (or the result could not be written), 2 usage error`;

/** The longest account lifetime the server takes (protocol/api.ts UserCreateRequest.expiresInSeconds). */
const USER_MAX_EXPIRES = (W.UserCreateRequest.properties.expiresInSeconds as { maximum?: number }).maximum ?? 10 * 366 * 86400;

type Flags = Record<string, string | boolean | string[] | undefined>;

function table(rows: Record<string, unknown>[], columns: string[]): string {
  // every cell may hold device-supplied text: escaped, so a name cannot move the cursor or erase rows
  const cell = (v: unknown) => (v === null || v === undefined ? '-' : printable(v));
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) =>
    vals
      .map((v, i) => v.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(columns.map((c) => c.toUpperCase())), ...rows.map((r) => line(columns.map((c) => cell(r[c]))))].join('\n');
}

/**
 * Every page of a paged admin listing (the server answers at most 1000 items and a `next`
 * cursor): followed here, so the command's output is still one list (one JSON document).
 */
async function allPages<T>(
  fetchPage: (path: string) => Promise<{ items: T[]; next?: string | undefined }>,
  path: string,
  q: URLSearchParams,
): Promise<T[]> {
  const out: T[] = [];
  let after: string | undefined;
  for (;;) {
    const p = new URLSearchParams(q);
    if (after) p.set('after', after);
    const page = await fetchPage(`${path}${p.size ? `?${p}` : ''}`);
    out.push(...page.items);
    if (!page.next || page.next === after) return out;
    after = page.next;
  }
}

/**
 * `audit verify` as text: the first line as before (OK, or BROKEN at the first bad row), then one
 * line per problem when there is more than one, so a later edit is not hidden by an earlier one.
 */
function verifyText(res: AuditVerifyResult, withKind: boolean): string {
  const from = res.from ? ` (from row ${res.from}; older rows pruned)` : '';
  if (res.ok) return `audit chain OK: ${res.rows} rows${from}`;
  const p = res.problem!;
  const head = `audit chain BROKEN at row ${p.seq}${withKind ? ` (${printable(p.kind)})` : ''}: ${printable(p.detail)}`;
  const all = res.problems ?? [p];
  if (all.length <= 1) return head;
  return [
    head,
    `${all.length + (res.problemsOmitted ?? 0)} problems:`,
    ...all.map((q) => `  row ${q.seq} (${printable(q.kind)}): ${printable(q.detail)}`),
    ...(res.problemsOmitted ? [`  … and ${res.problemsOmitted} more`] : []),
  ].join('\n');
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

/**
 * Fails unless FILE can be created: checked before the server is asked, so that a mistyped path
 * does not leave a token (or any other result) created on the server and never shown.
 */
function checkWritable(flag: string, file: string): void {
  const dir = dirname(resolve(file));
  try {
    if (!statSync(dir).isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
    accessSync(dir, constants.W_OK);
    // the file is replaced by a rename, which cannot replace a directory
    if (statSync(file, { throwIfNoEntry: false })?.isDirectory()) throw Object.assign(new Error('is a directory'), { code: 'EISDIR' });
  } catch (e) {
    throw new Error(
      `--${flag} ${file}: cannot create that file in ${dir} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); nothing was done`,
    );
  }
}

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
    `EK cert     ${d.ekVerified === true ? `verified, issuer ${p(d.ekIssuer)}` : d.ekVerified === false ? 'NOT verified (zone opted out or certificate optional)' : '-'}`,
    `agent       ${p(d.claims?.agentVersion)}`,
  ];
  if (d.certificates?.length) {
    lines.push(
      '',
      table(
        d.certificates.map((c) => ({ ...c })),
        ['serial', 'notBefore', 'notAfter', 'revokedAt', 'reason'],
      ),
    );
  }
  if (d.eventLog) {
    // baseline (approved) vs current TCG event log; event strings come from the device: escaped
    const e = d.eventLog;
    lines.push('', `event log   approved ${p(e.baselineSha256)}`, `            current  ${p(e.currentSha256)}`);
    if (e.diff.length === 0) lines.push(`            no difference (${e.unchanged} events)`);
    else
      lines.push(`            ${e.diff.length} changed lines, ${e.unchanged} events unchanged:`, ...e.diff.map((l) => `  ${printable(l)}`));
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
      token: { type: 'string' },
      credentials: { type: 'string' },
      role: { type: 'string' },
      zones: { type: 'string' },
      'all-zones': { type: 'boolean' },
      expires: { type: 'string' },
      user: { type: 'string' },
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
      state: { type: 'string' },
      rule: { type: 'string' },
      reason: { type: 'string' },
      out: { type: 'string' },
      file: { type: 'string' },
      hostname: { type: 'string', multiple: true },
      port: { type: 'string' },
      bind: { type: 'string' },
      'run-as-root': { type: 'boolean' },
      days: { type: 'string' },
      'passphrase-file': { type: 'string' },
      force: { type: 'boolean' },
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
  // --out FILE takes the result of every command (broker config's and broker monitor add's --out is a directory); the
  // document may hold a token, so 0600 — only the CA chain, which is public, is 0644
  if (typeof flags.out === 'string' && key !== 'broker config' && key !== 'backup' && !(key === 'broker monitor' && arg === 'add'))
    o.outFile = { path: flags.out, mode: key === 'ca export' ? 0o644 : 0o600 };
  // checks of the files a result goes to, run after the arguments are checked and before the
  // server is asked (a mistyped path must not leave a token created on the server and never shown)
  const beforeServer: (() => void)[] = [];
  const outFile = o.outFile;
  if (outFile) beforeServer.push(() => checkWritable('out', outFile.path));
  /** The command's one stdout document: JSON with --json, else the human text. */
  const emit = (json: unknown, human: () => string) => {
    o.result = flags.json ? jsonText(json, 2) + '\n' : human() + '\n';
  };

  // offline: verify an exported audit file without any server
  if (cmd === 'audit' && sub === 'verify' && typeof flags.file === 'string') {
    const rows = readFileSync(flags.file, 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .map((l, i) => {
        let row: unknown;
        try {
          row = JSON.parse(l);
        } catch {
          throw new Error(`${flags.file}: line ${i + 1} is not JSON`);
        }
        if (typeof row !== 'object' || row === null || Array.isArray(row) || typeof (row as { seq?: unknown }).seq !== 'number') {
          throw new Error(`${flags.file}: line ${i + 1} is not an audit row (an object with a numeric seq, as audit export writes)`);
        }
        return row as AuditRow;
      });
    // an export of a pruned chain (or a retention archive) starts after row 1: it is checked from
    // its first row's prevHash on (the server checks the cut against its stored checkpoint)
    const first = rows[0];
    const anchor = first && first.seq > 1 ? { seq: first.seq - 1, hash: first.prevHash } : null;
    const res = verifyChain(rows, null, anchor);
    emit(res, () => verifyText(res, false));
    return res.ok ? 0 : 1;
  }

  // resolved on first use, after the command and its arguments are checked: a usage mistake is a
  // usage error (exit 2) also where no server is configured
  let target: AdminClient | undefined;
  const connect = (): AdminClient => {
    for (const check of beforeServer.splice(0)) check();
    target ??= new AdminClient(
      resolveTarget({
        ...(typeof flags.server === 'string' ? { server: flags.server } : {}),
        ...(typeof flags['admin-token'] === 'string' ? { adminToken: flags['admin-token'] } : {}),
        ...(typeof flags.token === 'string' ? { token: flags.token } : {}),
        ...(typeof flags.credentials === 'string' ? { credentials: flags.credentials } : {}),
        ...(typeof flags.ca === 'string' ? { ca: flags.ca } : {}),
        ...(typeof flags.data === 'string' ? { data: flags.data } : {}),
      }),
    );
    return target;
  };
  const client = {
    request: <S extends TSchema>(method: 'GET' | 'POST', p: string, body: unknown, response: S): Promise<Static<S>> =>
      connect().request(method, p, body, response),
    raw: (method: 'GET' | 'POST', p: string, opts: { auth?: boolean } = {}): Promise<Buffer> => connect().raw(method, p, opts),
  };
  const userArg = (x: string | undefined) => {
    if (!x) throw new UsageError('a user name is required');
    if (!new RegExp((W.UserName as { pattern?: string }).pattern!).test(x)) {
      throw new UsageError(`"${x}" is not a user name: lower-case letters, digits, . _ - (at most 64)`);
    }
    return x;
  };
  const roleFlag = (): W.UserRole => {
    const role = need(flags, 'role');
    if (!(W.USER_ROLES as readonly string[]).includes(role)) throw new UsageError(`--role must be one of ${W.USER_ROLES.join(', ')}`);
    return role as W.UserRole;
  };
  /** --zones a,b: the names, without blanks and repeats (absent: undefined). */
  const zonesFlag = (): string[] | undefined => {
    if (typeof flags.zones !== 'string') return undefined;
    const zones = [
      ...new Set(
        flags.zones
          .split(',')
          .map((z) => z.trim())
          .filter(Boolean),
      ),
    ];
    if (zones.length === 0) throw new UsageError('--zones needs at least one zone name');
    return zones;
  };
  /** A personal token, shown once: the result (stdout or --out, 0600), never a note on stderr. */
  const emitUserToken = (res: W.UserTokenResponse) => {
    o.notes.push(
      `the token is shown once (only its hash is stored): keep it in a 0600 credentials file (${defaultCredentialsFile()}) or pass it as --token / EDGEID_TOKEN`,
    );
    emit({ name: res.name, role: res.role, zones: res.zones, token: res.token, expiresAt: res.expiresAt }, () =>
      [
        `user        ${printable(res.name)}`,
        `role        ${res.role}`,
        `zones       ${res.zones ? res.zones.map(printable).join(', ') : '(all)'}`,
        `expires     ${res.expiresAt ?? 'never'}`,
        `token       ${res.token}`,
      ].join('\n'),
    );
  };
  const deviceArg = (x: string | undefined) => {
    if (!x) throw new UsageError('a device id is required');
    // the server's own pattern: a placeholder or a device name is a usage mistake, said as one
    if (!new RegExp(W.DEVICE_ID_PATTERN).test(x)) {
      throw new UsageError(`"${x}" is not a device id: ids look like dev-0123456789abcdef (edgeid-admin devices list shows them)`);
    }
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
      const png = flags.png;
      if (typeof png === 'string') beforeServer.push(() => checkWritable('png', png));
      const req: W.TokenCreateRequest = {
        zone: need(flags, 'zone'),
        owner: need(flags, 'owner'),
        ...(typeof flags.name === 'string' ? { name: flags.name } : {}),
        ...(typeof flags.purpose === 'string' ? { purpose: flags.purpose } : {}),
        ...(ttlSeconds !== undefined ? { ttlSeconds } : {}),
      };
      const res = await client.request('POST', '/v1/admin/tokens', req, W.TokenCreateResponse);
      if (typeof flags.png === 'string') {
        // the QR code is the whole token: a secret file, 0600 whatever the umask or an earlier file's mode
        try {
          writeFileAtomic(
            flags.png,
            await QRCode.toBuffer(res.uri, { type: 'png', errorCorrectionLevel: 'M', margin: 2, scale: 6 }),
            0o600,
          );
        } catch (e) {
          throw new Error(
            `token ${res.id} was created, but its QR code could not be written to ${flags.png}: ${(e as Error).message} (the token stays unused until ${res.expiresAt})`,
          );
        }
        o.notes.push(`QR code written to ${flags.png} (mode 0600)`);
      }
      // The URI is the token: it is repeated on stderr only to a person at a terminal. A stderr that
      // is a pipe or a file is usually a log (CI, cron, systemd), and a secret never goes to a log.
      o.notes.push(
        process.stderr.isTTY && !o.outFile
          ? `on the device: edgeid-agent enroll --uri '${printable(res.uri)}'`
          : `on the device: edgeid-agent enroll --uri 'URI', URI being the result's uri (the token is not repeated on a stderr that is not a terminal)`,
      );
      if (flags.json) {
        emit(
          {
            token: res.token,
            uri: res.uri,
            expiresAt: res.expiresAt,
            id: res.id,
            zone: res.zone,
            owner: res.owner,
            caFingerprint: res.caFingerprint,
          },
          () => '',
        );
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
      const tokens = await allPages(
        (p) => client.request('GET', p, undefined, W.TokenList).then((r) => ({ items: r.tokens, next: r.next })),
        '/v1/admin/tokens',
        new URLSearchParams(),
      );
      emit(tokens, () =>
        table(
          tokens.map((t) => ({ ...t })),
          ['id', 'zone', 'owner', 'name', 'expiresAt', 'usedAt', 'deviceId'],
        ),
      );
      return 0;
    }
    case 'tokens expire': {
      if (!arg || !/^[0-9a-f]{16}$/.test(arg)) throw new UsageError('tokens expire ID (the 16 hex digits tokens list shows)');
      const { token } = await client.request('POST', `/v1/admin/tokens/${arg}/expire`, {}, W.TokenExpireResponse);
      emit(token, () => `token ${printable(token.id)} expired at ${token.expiresAt}`);
      return 0;
    }
    case 'devices list': {
      const q = new URLSearchParams();
      if (flags.stale) q.set('stale', 'true');
      if (typeof flags.status === 'string') {
        const states: readonly string[] = W.DEVICE_STATUSES;
        if (!states.includes(flags.status)) throw new UsageError(`--status must be one of ${states.join(', ')}`);
        q.set('status', flags.status);
      }
      if (typeof flags.zone === 'string') q.set('zone', flags.zone);
      const devices = await allPages(
        (p) => client.request('GET', p, undefined, W.DeviceList).then((r) => ({ items: r.devices, next: r.next })),
        '/v1/admin/devices',
        q,
      );
      emit(devices, () =>
        table(
          devices.map((d) => ({
            ...d,
            state: d.status,
            certExpires: d.certificateNotAfter ?? '',
            stale: d.stale ? 'yes' : '',
            agent: d.claims?.agentVersion,
            ek: d.ekVerified === true ? 'verified' : d.ekVerified === false ? 'UNVERIFIED' : '-',
          })),
          ['id', 'name', 'zone', 'owner', 'state', 'posture', 'certExpires', 'lastSeen', 'lastIp', 'stale', 'ek', 'agent'],
        ),
      );
      return 0;
    }
    case 'device': {
      if (sub !== 'show') throw new UsageError('device show ID');
      const { device } = await client.request('GET', `/v1/admin/devices/${encodeURIComponent(deviceArg(arg))}`, undefined, W.DeviceShow);
      emit(device, () => showDevice(device));
      return 0;
    }
    case 'revoke': {
      const reason = need(flags, 'reason');
      if (!(REVOKE_REASONS as readonly string[]).includes(reason))
        throw new UsageError(`--reason must be one of ${REVOKE_REASONS.join(', ')}`);
      const body: W.RevokeRequest = { reason: reason as W.RevokeReason };
      const res = await client.request('POST', `/v1/admin/devices/${encodeURIComponent(deviceArg(sub))}/revoke`, body, W.RevokeResponse);
      emit(res, () =>
        [
          `revoked ${printable(res.device.id)} (${reason}); ${res.serials.length} certificate(s) on CRL #${printable(res.crlNumber)}`,
          ...res.hooks.map((h) => `  ${printable(h.hook)}: ${h.ok ? 'ok' : `FAILED ${printable(h.error)}`} (${h.ms.toFixed(0)} ms)`),
        ].join('\n'),
      );
      return 0;
    }
    case 'retire': {
      const res = await client.request('POST', `/v1/admin/devices/${encodeURIComponent(deviceArg(sub))}/retire`, {}, W.RetireResponse);
      emit(res, () => `retired ${printable(res.device.id)}; ${res.serials.length} certificate(s) revoked`);
      return 0;
    }
    case 'approve-baseline': {
      const res = await client.request(
        'POST',
        `/v1/admin/devices/${encodeURIComponent(deviceArg(sub))}/approve-baseline`,
        {},
        W.DeviceShow,
      );
      emit(
        res,
        () =>
          `${printable(res.device.id)}: status ${printable(res.device.status)}; the next quote until ${printable(res.device.baselineWindowUntil)} becomes the new baseline`,
      );
      return 0;
    }
    case 'audit export': {
      const lines: string[] = [];
      let after = 0;
      const user = typeof flags.user === 'string' ? `&user=${encodeURIComponent(flags.user)}` : '';
      for (;;) {
        const { rows } = await client.request('GET', `/v1/admin/audit?after=${after}&limit=5000${user}`, undefined, W.AuditExport);
        for (const r of rows) lines.push(jsonText(r));
        if (rows.length < 5000) break;
        after = rows[rows.length - 1]!.seq;
      }
      // JSON lines (one document per row, the export format); --json makes it one document, an array
      o.result = flags.json ? `[${lines.join(',\n')}]\n` : lines.join('\n') + (lines.length ? '\n' : '');
      if (typeof flags.out === 'string') o.notes.push(`${lines.length} audit rows`);
      return 0;
    }
    case 'audit verify': {
      const res = await client.request('GET', '/v1/admin/audit/verify', undefined, W.AuditVerifyResult);
      emit(res, () => verifyText(res, true));
      return res.ok ? 0 : 1;
    }
    case 'users add': {
      const name = userArg(arg);
      const role = roleFlag();
      let expiresInSeconds: number | undefined;
      if (typeof flags.expires === 'string') {
        const sec = parseDuration(flags.expires);
        if (sec === null || sec < 60 || sec > USER_MAX_EXPIRES) {
          throw new UsageError(
            `--expires ${flags.expires} is not a duration like 8h, 90d (at least 1m, at most ${USER_MAX_EXPIRES / 86400}d)`,
          );
        }
        expiresInSeconds = Math.round(sec);
      }
      if (flags['all-zones']) throw new UsageError('users add: without --zones the account has every zone (--all-zones is for set-role)');
      const zones = zonesFlag();
      const body: W.UserCreateRequest = {
        name,
        role,
        ...(zones ? { zones } : {}),
        ...(expiresInSeconds !== undefined ? { expiresInSeconds } : {}),
      };
      const res = await client.request('POST', '/v1/admin/users', body, W.UserTokenResponse);
      emitUserToken(res);
      return 0;
    }
    case 'users set-role': {
      const name = userArg(arg);
      const role = roleFlag();
      const zones = zonesFlag();
      if (zones && flags['all-zones']) throw new UsageError('--zones and --all-zones exclude each other');
      const body: W.UserSetRoleRequest = { role, ...(zones ? { zones } : flags['all-zones'] ? { zones: null } : {}) };
      const { user } = await client.request('POST', `/v1/admin/users/${name}/set-role`, body, W.UserDisableResponse);
      emit(
        user,
        () => `user ${printable(user.name)} is ${user.role} in ${user.zones ? user.zones.map(printable).join(', ') : 'every zone'}`,
      );
      return 0;
    }
    case 'users list': {
      const { users } = await client.request('GET', '/v1/admin/users', undefined, W.UserList);
      emit(users, () =>
        table(
          users.map((u) => ({ ...u, zones: u.zones ? u.zones.join(',') : '(all)' })),
          ['name', 'role', 'zones', 'state', 'expiresAt', 'createdBy', 'tokenRotatedAt'],
        ),
      );
      return 0;
    }
    case 'alerts list': {
      const q = new URLSearchParams();
      if (typeof flags.state === 'string') {
        const states: readonly string[] = W.ALERT_STATES;
        if (!states.includes(flags.state)) throw new UsageError(`--state must be one of ${states.join(', ')}`);
        q.set('state', flags.state);
      }
      if (typeof flags.rule === 'string') {
        const rules: readonly string[] = W.ALERT_RULES;
        if (!rules.includes(flags.rule)) throw new UsageError(`--rule must be one of ${rules.join(', ')}`);
        q.set('rule', flags.rule);
      }
      const alerts = await allPages(
        (p) => client.request('GET', p, undefined, W.AlertList).then((r) => ({ items: r.alerts, next: r.next })),
        '/v1/admin/alerts',
        q,
      );
      emit(alerts, () =>
        table(
          alerts.map((a) => ({ ...a, device: a.deviceId, ackBy: a.acknowledgedBy })),
          ['id', 'severity', 'rule', 'state', 'zone', 'device', 'address', 'count', 'firstSeen', 'lastSeen', 'ackBy', 'summary'],
        ),
      );
      return 0;
    }
    case 'alerts ack': {
      if (!arg || !/^alr-[0-9a-f]{16}$/.test(arg)) throw new UsageError('alerts ack ID (an id as alerts list shows it: alr-…)');
      const alert = await client.request('POST', `/v1/admin/alerts/${arg}/ack`, {}, W.Alert);
      emit(
        alert,
        () =>
          `alert ${printable(alert.id)} (${printable(alert.rule)}) acknowledged by ${printable(alert.acknowledgedBy)} at ${printable(alert.acknowledgedAt)}`,
      );
      return 0;
    }
    case 'users disable': {
      const name = userArg(arg);
      const { user } = await client.request('POST', `/v1/admin/users/${name}/disable`, {}, W.UserDisableResponse);
      emit(user, () => `user ${printable(user.name)} disabled at ${user.disabledAt}`);
      return 0;
    }
    case 'users rotate-token': {
      const name = userArg(arg);
      const res = await client.request('POST', `/v1/admin/users/${name}/rotate-token`, {}, W.UserTokenResponse);
      emitUserToken(res);
      return 0;
    }
    case 'ca export': {
      const pem = (await client.raw('GET', '/v1/ca', { auth: false })).toString('utf8');
      o.result = flags.json ? jsonText({ chain: pem }, 2) + '\n' : pem;
      return 0;
    }
    case 'ca status': {
      const st = await client.request('GET', '/v1/admin/ca/status', undefined, W.CaStatus);
      emit(st, () =>
        table(
          st.cas.map((c) => ({
            ...c,
            days: Math.floor(c.secondsLeft / 86400),
            active: c.active === undefined ? '' : c.active ? 'yes' : 'no',
          })),
          ['ca', 'notAfter', 'days', 'active', 'subject'],
        ),
      );
      for (const c of st.cas.filter((x) => x.warn)) {
        o.notes.push(
          c.secondsLeft <= 0
            ? `EXPIRED: ${c.ca} expired ${c.notAfter}`
            : `WARN: ${c.ca} expires ${c.notAfter} (in ${Math.floor(c.secondsLeft / 86400)} days, within ${c.warnDays}): ${c.ca === 'server-tls' ? 'restart the server to re-issue it' : 'rotate it'}`,
        );
      }
      return st.cas.some((c) => c.secondsLeft <= 0) ? 1 : 0;
    }
    case 'ca rotate-issuing': {
      const res = await client.request('POST', '/v1/admin/ca/rotate-issuing', {}, W.CaRotateResponse);
      emit(
        res,
        () =>
          `issuing CA ${res.issuer} (${res.subject}, until ${res.notAfter}) issues from now on; ${res.previous} stays trusted and keeps its CRL`,
      );
      return 0;
    }
    case 'ca rotate-root': {
      const res = await client.request('POST', '/v1/admin/ca/rotate-root', {}, W.CaRotateRootResponse);
      emit(
        res,
        () =>
          `new root ${res.root.subject} (${res.root.fingerprint}, until ${res.root.notAfter}), cross-signed by the current root; issuing CA ${res.issuer} (${res.subject}) under it issues from now on; ${res.previous} stays trusted and keeps its CRL`,
      );
      return 0;
    }
    case 'backup': {
      const out = need(flags, 'out');
      const passphrase = readPassphrase(typeof flags['passphrase-file'] === 'string' ? flags['passphrase-file'] : undefined);
      checkWritable('out', out);
      // a backup never lands in a server's data dir, and replaces a file only when asked to
      const dataDir = resolve(typeof flags.data === 'string' ? flags.data : (process.env.EDGEID_DATA ?? 'data'));
      if ((resolve(out) + sep).startsWith(dataDir + sep))
        throw new Error(`--out ${out} is inside the server's data dir ${dataDir}: write the backup elsewhere; nothing was done`);
      if (existsSync(out) && !flags.force) throw new Error(`--out ${out} exists: pass --force to replace it; nothing was done`);
      const started = Date.now();
      // a large database takes a while to copy: the socket may stay idle that long
      const file = await new AdminClient(connect().target, 600_000).binary('POST', '/v1/admin/backup', { passphrase });
      const { header } = readHeader(file);
      writeFileAtomic(out, file, 0o600);
      const res = { file: out, bytes: file.length, createdAt: header.createdAt, auditHead: header.auditHead, ms: Date.now() - started };
      emit(res, () => `wrote ${out} (${file.length} bytes; backup of ${header.createdAt}, audit head ${header.auditHead?.seq ?? 0})`);
      return 0;
    }
    case 'broker config': {
      const outDir = need(flags, 'out');
      const hostnames = (flags.hostname as string[] | undefined) ?? ['localhost', '127.0.0.1'];
      const port = Number(flags.port ?? 8883);
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError('--port must be a TCP port');
      const spki = brokerKeySpki(outDir);
      const body: W.BrokerCertificateRequest = { spki: spki.toString('base64'), hostnames };
      const res = await client.request('POST', '/v1/admin/broker/certificate', body, W.BrokerCertificateResponse);
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
          '                "reloadCommand": ["systemctl", "reload", "mosquitto"] }',
          `    "mqtt":   { "url": "mqtts://${host}:${port}" }`,
          '  Mosquitto 2.0 re-reads its CRL on SIGHUP (systemctl reload) and keeps every session.',
        ].join('\n'),
      );
      return 0;
    }
    case 'renew-now': {
      const id = deviceArg(sub);
      const res = await client.request(
        'POST',
        `/v1/admin/devices/${encodeURIComponent(id)}/control`,
        { type: 'renew-now' } satisfies W.ControlRequest,
        W.ControlResponse,
      );
      emit(res, () =>
        res.published
          ? `renew-now sent to ${printable(id)}`
          : `renew-now signed for ${printable(id)}, but this server has no broker integration to deliver it`,
      );
      return res.published ? 0 : 1;
    }
    case 'broker monitor': {
      const name = positionals[3];
      const nameRe = new RegExp(W.MONITOR_NAME_PATTERN);
      const needName = () => {
        if (!name || !nameRe.test(name))
          throw new UsageError(`broker monitor ${arg ?? 'add'} NAME: NAME is 1-32 of a-z, 0-9 and -, starting with a letter or digit`);
        return name;
      };
      if (arg === 'add') {
        const n = needName();
        const outDir = need(flags, 'out');
        let days: number | undefined;
        if (typeof flags.days === 'string') {
          days = Number(flags.days);
          if (!Number.isInteger(days) || days < 1 || days > W.MONITOR_DAYS_MAX)
            throw new UsageError(`--days must be 1 to ${W.MONITOR_DAYS_MAX}`);
        }
        try {
          prepareMonitorDir(outDir);
        } catch (e) {
          throw new Error(
            `--out ${outDir}: cannot write there (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); nothing was done`,
          );
        }
        const key = newMonitorKey();
        const body: W.BrokerMonitorAddRequest = { name: n, spki: key.spki.toString('base64'), ...(days ? { days } : {}) };
        const res = await client.request('POST', '/v1/admin/broker/monitors', body, W.BrokerMonitorAddResponse);
        const files = writeMonitorFiles(outDir, res.monitor.commonName, { privateKey: key.privateKey, ...res });
        const url = res.brokerUrl ? new URL(res.brokerUrl) : null;
        const hostPort = url ? `-h ${url.hostname} -p ${url.port || 8883}` : '-h BROKER -p 8883';
        emit({ monitor: res.monitor, files, brokerUrl: res.brokerUrl }, () =>
          [
            `monitor ${res.monitor.name}: broker identity ${res.monitor.commonName} (certificate valid until ${res.monitor.notAfter})`,
            `  key ${files.keyFile} (0600, made here, never sent)`,
            `  certificate ${files.certFile}, CA ${files.caFile}`,
            '  it may read devices/# and edgeid/+/control and publish nothing; one identity per tool',
            '  (a second connection with the same certificate ends the first). Use it, e.g.:',
            `    mosquitto_sub ${hostPort} --cafile ${files.caFile} --cert ${files.certFile} --key ${files.keyFile} -t 'devices/#' -t 'edgeid/+/control' -v`,
          ].join('\n'),
        );
        return 0;
      }
      if (arg === 'list') {
        const { monitors } = await client.request('GET', '/v1/admin/broker/monitors', undefined, W.BrokerMonitorList);
        emit(monitors, () => table(monitors, ['name', 'commonName', 'notAfter', 'createdBy', 'serial']));
        return 0;
      }
      if (arg === 'remove') {
        const n = needName();
        const res = await client.request(
          'POST',
          `/v1/admin/broker/monitors/${encodeURIComponent(n)}/remove`,
          {},
          W.BrokerMonitorRemoveResponse,
        );
        emit(res, () =>
          res.revokedSerial
            ? `removed ${res.removed}: its broker client is gone and its certificate (serial ${res.revokedSerial}) is on the CRL (number ${res.crlNumber})`
            : `removed ${res.removed}: its broker client is gone (the server had no certificate recorded for it)`,
        );
        return 0;
      }
      throw new UsageError('broker monitor add|list|remove');
    }
    case 'broker reconcile': {
      const res = await client.request('POST', '/v1/admin/broker/reconcile', {}, W.BrokerReconcileResponse);
      emit(res, () => `broker reconciled: ${res.added.length} device(s) added, ${res.removed.length} removed`);
      return 0;
    }
    case 'broker crl':
    case 'broker crl-reload': {
      const res =
        key === 'broker crl'
          ? await client.request('GET', '/v1/admin/broker/crl', undefined, W.BrokerCrlStatus)
          : await client.request('POST', '/v1/admin/broker/crl/reload', {}, W.BrokerCrlStatus);
      emit(res, () =>
        [
          key === 'broker crl-reload' ? 'broker reloaded its CRL' : null,
          `loaded:      ${res.loaded ? `CRL ${res.loaded.crlNumber || '?'} (${res.loaded.revoked} revoked) at ${res.loaded.reloadedAt}, valid until ${res.loaded.nextUpdate}` : 'unknown'}`,
          `pending:     ${res.pending} revoked certificate(s) not loaded yet (their devices are cut by dynsec already)`,
          `next reload: ${res.nextReloadAt ?? 'none due'} (every ${formatDuration(res.reloadEverySeconds)} for revocations, ${formatDuration(res.refreshBeforeSeconds)} before expiry)`,
          ...(res.lastError ? [`last error:  ${res.lastError}`] : []),
        ]
          .filter((l) => l !== null)
          .join('\n'),
      );
      return 0;
    }
    case 'ek-roots list': {
      const { roots } = await client.request('GET', '/v1/admin/ek-roots', undefined, W.EkRootList);
      const now = Date.now();
      emit(roots, () =>
        table(
          roots.map((r) => ({
            ...r,
            fingerprint: r.fingerprint.slice(0, 16),
            state: r.disabled ? 'disabled' : Date.parse(r.notAfter) < now ? 'EXPIRED' : 'ok',
            notAfter: r.notAfter.slice(0, 10),
          })),
          ['fingerprint', 'role', 'source', 'state', 'notAfter', 'subject'],
        ),
      );
      return 0;
    }
    case 'ek-roots add': {
      if (!arg) throw new UsageError('ek-roots add FILE');
      const bytes = readFileSync(arg);
      const text = bytes.toString('latin1');
      const certificate = text.includes('-----BEGIN CERTIFICATE-----') ? text : bytes.toString('base64');
      const r = await client.request('POST', '/v1/admin/ek-roots', { certificate }, W.EkRootView);
      emit(r, () => `added EK trust anchor ${r.fingerprint}\n  ${printable(r.subject)} (until ${r.notAfter})`);
      return 0;
    }
    case 'ek-roots remove': {
      if (!arg)
        throw new UsageError('ek-roots remove FINGERPRINT (as ek-roots list shows it, or all 64 hex digits from ek-roots list --json)');
      const r = await client.request('POST', `/v1/admin/ek-roots/${encodeURIComponent(arg)}/remove`, {}, W.EkRootView);
      emit(r, () => `${r.disabled ? 'switched off' : 'removed'} ${r.fingerprint}\n  ${printable(r.subject)}`);
      return 0;
    }
    case 'ek-allow import': {
      if (!arg) throw new UsageError('ek-allow import FILE --zone Z --owner O');
      const content = readFileSync(arg, 'utf8');
      const res = await client.request(
        'POST',
        '/v1/admin/ek-allow',
        { zone: need(flags, 'zone'), owner: need(flags, 'owner'), content, source: arg.split('/').pop()!.slice(0, 200) },
        W.EkAllowImportResponse,
      );
      emit(
        res,
        () =>
          `imported ${res.added.length} EK(s) into zone ${printable(need(flags, 'zone'))}` +
          (res.skipped
            ? `; ${res.skipped} already listed or repeated, skipped\n` +
              '  (a listed EK is not imported again, used or not: to allow a used entry another enrollment, ek-allow remove ID first; ek-allow list shows which are used)'
            : ''),
      );
      o.notes.push('listed devices enroll with: edgeid-agent enroll --server URL --ca-fingerprint FP (no token)');
      return 0;
    }
    case 'ek-allow list': {
      const { entries } = await client.request('GET', '/v1/admin/ek-allow', undefined, W.EkAllowList);
      emit(entries, () =>
        table(
          entries.map((e) => ({ ...e, ekId: e.ekId.slice(0, 16), device: e.deviceId ?? '' })),
          ['id', 'zone', 'owner', 'name', 'ekId', 'state', 'device', 'source'],
        ),
      );
      return 0;
    }
    case 'ek-allow remove': {
      if (!arg) throw new UsageError('ek-allow remove ID');
      const res = await client.request('POST', `/v1/admin/ek-allow/${encodeURIComponent(arg)}/remove`, {}, W.EkAllowRemoveResponse);
      emit(res, () => `removed ${printable(res.removed)}`);
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
