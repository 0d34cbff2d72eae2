/**
 * `edgeid-agent tpm info|quote|eventlog`: TPM diagnostics for technicians and tests.
 *  - info: manufacturer, firmware, spec, slots, PCR banks, endorsement keys and their certificates.
 *  - quote: a fresh AK quotes PCRs over a nonce; the files are those tpm2_checkquote reads.
 *  - eventlog: the firmware's TCG event log, its events and the PCR values it replays to.
 */
import { X509Certificate, createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { DEFAULT_EVENT_LOG } from '../config.js';
import { readEventLogFile } from '../eventlog.js';
import {
  DEFAULT_MAX_LOG_BYTES,
  describeEvent,
  parseEventLog,
  pcrsJson,
  replay,
  bankName as logBankName,
} from '../../protocol/eventlog/index.js';
import { jsonText, printable } from '../../protocol/terminal.js';
import { TPM_ALG, parsePublic, verifyQuote, type PcrSelection } from '../../protocol/tpm/index.js';
import { Tpm, type EkKind, type EndorsementKey, type TpmInfo } from '../tpm/index.js';
import { tpm2ToolsPcrsFile } from '../tpm/tpm2-tools.js';
import { UsageError, type AgentCommand, type CommandIo } from './types.js';

const USAGE = `usage:
  edgeid-agent tpm info [--tcti CONF] [--json]
  edgeid-agent tpm quote --nonce HEX --pcrs 0,1,2,3 --out DIR [--tcti CONF] [--json]
  edgeid-agent tpm eventlog [--file F] [--json]

  --tcti CONF   TPM connection (default: $EDGEID_TCTI or device:/dev/tpmrm0),
                e.g. swtpm:host=127.0.0.1,port=2321
  quote writes DIR/ak.pub (TPM2B_PUBLIC), quote.msg (TPMS_ATTEST), quote.sig (TPMT_SIGNATURE) and
  quote.pcrs (tpm2-tools format); check them with
    tpm2_checkquote -u ak.pub -m quote.msg -s quote.sig -f quote.pcrs -g sha256 -q HEX
  --pcrs takes PCR indices of the sha256 bank, or BANK:LIST (e.g. sha384:0,7).
  eventlog reads the TCG event log (default ${DEFAULT_EVENT_LOG}, root only)
  and prints its events and the PCR values it replays to per bank; --json prints
  {"pcrs": {"sha256": {"0": "<hex>", …}, …}, "events": <count>}.`;

const BANKS: Record<string, number> = { sha1: TPM_ALG.SHA1, sha256: TPM_ALG.SHA256, sha384: TPM_ALG.SHA384, sha512: TPM_ALG.SHA512 };

function bankName(alg: number): string {
  return Object.entries(BANKS).find(([, v]) => v === alg)?.[0] ?? `0x${alg.toString(16)}`;
}

function hex(n: number, width = 8): string {
  return `0x${n.toString(16).padStart(width, '0')}`;
}

function ranges(pcrs: number[]): string {
  const out: string[] = [];
  for (let i = 0; i < pcrs.length;) {
    let j = i;
    while (j + 1 < pcrs.length && pcrs[j + 1] === pcrs[j]! + 1) j++;
    out.push(i === j ? `${pcrs[i]}` : `${pcrs[i]}-${pcrs[j]}`);
    i = j + 1;
  }
  return out.join(',');
}

export function parsePcrList(spec: string): PcrSelection {
  const m = /^(?:(sha1|sha256|sha384|sha512):)?(\d+(?:,\d+)*)$/.exec(spec.trim());
  if (!m) throw new UsageError(`--pcrs: expected a list like 0,1,2,3 or sha256:0,7, got "${spec}"`, USAGE);
  const pcrs = [...new Set(m[2]!.split(',').map(Number))].sort((a, b) => a - b);
  if (pcrs.some((p) => p > 23)) throw new UsageError('--pcrs: PCR indices are 0..23', USAGE);
  return { hashAlg: BANKS[m[1] ?? 'sha256']!, pcrs };
}

export function parseNonce(text: string): Buffer {
  const clean = text.startsWith('0x') ? text.slice(2) : text;
  if (!/^(?:[0-9a-fA-F]{2})+$/.test(clean)) throw new UsageError('--nonce: expected an even number of hex digits', USAGE);
  const nonce = Buffer.from(clean, 'hex');
  if (nonce.length > 64) throw new UsageError('--nonce: at most 64 bytes', USAGE);
  return nonce;
}

interface EkSummary {
  kind: EkKind;
  persistentHandle: string | null;
  certificateIndex: string | null;
  publicSha256: string;
  certificate: { subject: string; issuer: string; validFrom: string; validTo: string; sha256: string } | null;
  error?: string;
}

function summariseEk(ek: EndorsementKey): EkSummary {
  let certificate: EkSummary['certificate'] = null;
  if (ek.certificate) {
    const c = new X509Certificate(ek.certificate);
    certificate = {
      subject: c.subject.replace(/\n/g, ', '),
      issuer: c.issuer.replace(/\n/g, ', '),
      validFrom: new Date(c.validFrom).toISOString(),
      validTo: new Date(c.validTo).toISOString(),
      sha256: createHash('sha256').update(ek.certificate).digest('hex'),
    };
  }
  return {
    kind: ek.kind,
    persistentHandle: ek.persistentHandle !== undefined ? hex(ek.persistentHandle) : null,
    certificateIndex: ek.certificateIndex !== undefined ? hex(ek.certificateIndex) : null,
    publicSha256: createHash('sha256').update(ek.public).digest('hex'),
    certificate,
  };
}

async function info(args: string[], io: CommandIo): Promise<number> {
  const { values } = parseOrUsage(args, { tcti: { type: 'string' }, json: { type: 'boolean' } });
  const tpm = await Tpm.open(values.tcti as string | undefined);
  try {
    const tpmInfo: TpmInfo = await tpm.info();
    const endorsementKeys: EkSummary[] = [];
    for (const kind of ['rsa', 'ecc'] as const) {
      try {
        endorsementKeys.push(summariseEk(await tpm.endorsementKey(kind)));
      } catch (e) {
        if (!isEdgeidError(e)) throw e;
        endorsementKeys.push({
          kind,
          persistentHandle: null,
          certificateIndex: null,
          publicSha256: '',
          certificate: null,
          error: `${e.code}: ${e.message}`,
        });
      }
    }
    const transientObjects = await tpm.transientHandleCount();
    if (values.json) {
      io.out.write(`${jsonText({ tcti: tpm.tcti, ...tpmInfo, endorsementKeys, transientObjects }, 2)}\n`);
      return 0;
    }
    const lines = [
      ['TCTI', tpm.tcti],
      ['TPM', `${tpmInfo.manufacturer} ${tpmInfo.vendor}, firmware ${tpmInfo.firmwareVersion}`],
      [
        'Specification',
        `TPM ${tpmInfo.spec.family} level ${tpmInfo.spec.level} revision ${tpmInfo.spec.revision} (${tpmInfo.spec.year}, day ${tpmInfo.spec.dayOfYear})`,
      ],
      [
        'Slots',
        `${tpmInfo.transientObjectSlots} transient objects, ${tpmInfo.loadedSessionSlots} sessions; ${transientObjects} objects loaded now`,
      ],
      ['PCR banks', tpmInfo.pcrBanks.map((b) => `${bankName(b.hashAlg)} (${ranges(b.pcrs)})`).join(', ') || 'none'],
      ...endorsementKeys.map((ek): [string, string] => [
        `EK ${ek.kind}`,
        ek.error
          ? ek.error
          : [
              ek.persistentHandle ? `persistent ${ek.persistentHandle}` : 'from TCG template',
              ek.certificate
                ? `certificate in NV ${ek.certificateIndex} from "${ek.certificate.issuer}", valid to ${ek.certificate.validTo}`
                : 'no certificate',
            ].join(', '),
      ]),
    ];
    // manufacturer strings and EK certificate names come from the TPM: escaped for the terminal
    io.out.write(`${lines.map(([k, v]) => `${k!.padEnd(14)} ${printable(v)}`).join('\n')}\n`);
    return 0;
  } finally {
    await tpm.close();
  }
}

async function quote(args: string[], io: CommandIo): Promise<number> {
  const { values } = parseOrUsage(args, {
    tcti: { type: 'string' },
    nonce: { type: 'string' },
    pcrs: { type: 'string' },
    out: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (typeof values.nonce !== 'string' || typeof values.pcrs !== 'string' || typeof values.out !== 'string') {
    throw new UsageError('tpm quote needs --nonce, --pcrs and --out', USAGE);
  }
  const nonce = parseNonce(values.nonce);
  const selection = parsePcrList(values.pcrs);
  const outDir = path.resolve(values.out);

  const tpm = await Tpm.open(values.tcti as string | undefined);
  let result;
  try {
    result = await tpm.batch(async (s) => {
      const ak = await s.load(await s.createAttestationKey());
      const q = await s.quote(ak, [selection], nonce);
      const pcrValues = await s.readPcrs([selection]);
      return { akPublic: ak.public, ...q, pcrValues };
    });
  } finally {
    await tpm.close();
  }
  const values_ = result.pcrValues.map((v) => v.value);
  // Check before writing, so a technician sees at once whether the TPM's evidence is consistent.
  const verified = verifyQuote({
    akPublic: parsePublic(result.akPublic),
    attest: result.attest,
    signature: result.signature,
    qualifyingData: nonce,
    pcrValues: new Map(result.pcrValues.map((v) => [v.pcr, v.value])),
    hashAlg: selection.hashAlg,
  });

  await mkdir(outDir, { recursive: true });
  const files = {
    'ak.pub': result.akPublic,
    'quote.msg': result.attest,
    'quote.sig': result.signature,
    'quote.pcrs': tpm2ToolsPcrsFile([selection], values_),
  };
  for (const [name, bytes] of Object.entries(files)) await writeFile(path.join(outDir, name), bytes);

  const bank = bankName(selection.hashAlg);
  if (values.json) {
    io.out.write(
      `${JSON.stringify(
        {
          out: outDir,
          files: Object.keys(files),
          nonce: nonce.toString('hex'),
          bank,
          pcrs: Object.fromEntries(result.pcrValues.map((v) => [v.pcr, v.value.toString('hex')])),
          verified: verified.pcrs.length === selection.pcrs.length,
        },
        null,
        2,
      )}\n`,
    );
    return 0;
  }
  io.out.write(
    [
      `quote over ${bank} PCRs ${ranges(selection.pcrs)} with nonce ${nonce.toString('hex')} written to ${outDir}`,
      ...result.pcrValues.map((v) => `  ${bank}:${String(v.pcr).padStart(2)} ${v.value.toString('hex')}`),
      'verified in TS: signature, nonce and PCR digest match',
      `check with: tpm2_checkquote -u ${path.join(outDir, 'ak.pub')} -m ${path.join(outDir, 'quote.msg')} -s ${path.join(outDir, 'quote.sig')} -f ${path.join(outDir, 'quote.pcrs')} -g ${bank} -q ${nonce.toString('hex')}`,
      '',
    ].join('\n'),
  );
  return 0;
}

async function eventlog(args: string[], io: CommandIo): Promise<number> {
  const { values } = parseOrUsage(args, { file: { type: 'string' }, json: { type: 'boolean' } });
  const file = (values.file as string | undefined) ?? DEFAULT_EVENT_LOG;
  const log = parseEventLog(await readEventLogFile(file), { maxBytes: DEFAULT_MAX_LOG_BYTES });
  const pcrs = pcrsJson(replay(log));
  if (values.json) {
    io.out.write(`${JSON.stringify({ pcrs, events: log.events.length })}\n`);
    return 0;
  }
  const lines = [
    `${file}: ${log.format === 'sha1' ? 'legacy SHA-1' : 'crypto-agile'} log, ${log.events.length} events, banks ${log.algorithms.map((a) => logBankName(a.alg)).join(', ')}`,
  ];
  const first = log.algorithms.find((a) => a.alg === 0x000b) ?? log.algorithms[0];
  for (const e of log.events) {
    const digest = first ? (e.digests.get(first.alg)?.toString('hex').slice(0, 16) ?? '') : '';
    // strings from the firmware (device paths, descriptions, variable names) escaped for the terminal
    lines.push(`${String(e.index).padStart(4)}  PCR ${String(e.pcr).padStart(2)}  ${digest.padEnd(16)}  ${printable(describeEvent(e))}`);
  }
  lines.push('replayed PCRs:');
  for (const [bank, values_] of Object.entries(pcrs)) {
    for (const [pcr, value] of Object.entries(values_)) lines.push(`  ${bank}:${pcr.padStart(2)} ${value}`);
  }
  io.out.write(`${lines.join('\n')}\n`);
  return 0;
}

type Options = NonNullable<Parameters<typeof parseArgs>[0]>['options'];

class HelpRequested extends Error {}

function parseOrUsage(args: string[], options: Options): { values: Record<string, string | boolean | undefined> } {
  if (args.includes('--help') || args.includes('-h')) throw new HelpRequested();
  try {
    const { values } = parseArgs({ args, options, strict: true, allowPositionals: false });
    return { values: values as Record<string, string | boolean | undefined> };
  } catch (e) {
    throw new UsageError((e as Error).message, USAGE);
  }
}

export const tpmCommand: AgentCommand = {
  name: 'tpm',
  summary:
    'TPM diagnostics: `tpm info` (TPM, EKs, certificates), `tpm quote` (files for tpm2_checkquote), `tpm eventlog` (TCG event log replayed)',
  async run(args, io) {
    const [sub, ...rest] = args;
    try {
      if (sub === 'info') return await info(rest, io);
      if (sub === 'quote') return await quote(rest, io);
      if (sub === 'eventlog') return await eventlog(rest, io);
    } catch (e) {
      if (!(e instanceof HelpRequested)) throw e;
      io.out.write(`${USAGE}\n`);
      return 0;
    }
    if (sub === '--help' || sub === '-h') {
      io.out.write(`${USAGE}\n`);
      return 0;
    }
    throw new UsageError(sub === undefined ? 'which one: tpm info, tpm quote or tpm eventlog?' : `unknown tpm subcommand "${sub}"`, USAGE);
  },
};
