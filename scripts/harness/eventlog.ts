/**
 * Synthetic TCG event logs for tests, benches and the demo: a crypto-agile log (TCG PC Client PFP
 * 1.05 §10.2.2, Spec ID event §10.4.5.1) whose events can be extended into a swtpm's PCRs, so the
 * swtpm's PCRs are exactly what the log replays to (a "synthetic boot").
 */
import { createHash } from 'node:crypto';
import { EV, EFI_GLOBAL_VARIABLE, EFI_IMAGE_SECURITY_DATABASE } from '../../protocol/eventlog/index.js';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * An event-log path that never exists, for agents run against a swtpm: the agent's default is the
 * host's own log (securityfs), which would not replay to a simulated TPM's PCRs. Agents started by
 * tests, benches and the demo read this unless the run names a log (then the synthetic one).
 */
export const NO_EVENT_LOG = '/nonexistent/edgeid-test/binary_bios_measurements';

/** `env` for an agent child process against a swtpm: EDGEID_EVENT_LOG is NO_EVENT_LOG unless `env` sets it (it overrides a config file's eventLog). */
export function agentEventLogEnv<T extends Record<string, string | undefined>>(env: T): T & { EDGEID_EVENT_LOG: string } {
  return { ...env, EDGEID_EVENT_LOG: env.EDGEID_EVENT_LOG ?? NO_EVENT_LOG };
}

export interface SyntheticEvent {
  pcr: number;
  type: number;
  data: Buffer;
  /** Digest per bank name; default: the hash of `data` in every bank of the log. */
  digests?: Record<string, Buffer>;
}

const ALGS: Record<string, { id: number; size: number }> = {
  sha1: { id: 0x0004, size: 20 },
  sha256: { id: 0x000b, size: 32 },
  sha384: { id: 0x000c, size: 48 },
};

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}
function u64(n: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}
function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}
function guid(text: string): Buffer {
  const h = text.replace(/-/g, '');
  const b = Buffer.from(h, 'hex');
  return Buffer.concat([
    Buffer.from(b.subarray(0, 4)).reverse(),
    Buffer.from(b.subarray(4, 6)).reverse(),
    Buffer.from(b.subarray(6, 8)).reverse(),
    b.subarray(8),
  ]);
}

export function eventDigest(e: SyntheticEvent, bank: string): Buffer {
  return e.digests?.[bank] ?? createHash(bank).update(e.data).digest();
}

/** Serialises a crypto-agile log: the Spec ID event (SHA-1 format), then TCG_PCR_EVENT2 records. */
export function buildEventLog(events: SyntheticEvent[], banks: string[] = ['sha256'], opts: { startupLocality?: number } = {}): Buffer {
  const specId = Buffer.concat([
    Buffer.from('Spec ID Event03\0', 'latin1'),
    u32(0), // platformClass: client
    Buffer.from([0, 2, 0, 2]), // specVersionMinor 0, Major 2, errata 0, uintnSize 2 (UINT64)
    u32(banks.length),
    ...banks.map((b) => Buffer.concat([u16(ALGS[b]!.id), u16(ALGS[b]!.size)])),
    Buffer.from([0]), // vendorInfoSize
  ]);
  const parts = [u32(0), u32(EV.EV_NO_ACTION), Buffer.alloc(20), u32(specId.length), specId];
  const record = (e: SyntheticEvent, zero = false) =>
    Buffer.concat([
      u32(e.pcr),
      u32(e.type),
      u32(banks.length),
      ...banks.map((b) => Buffer.concat([u16(ALGS[b]!.id), zero ? Buffer.alloc(ALGS[b]!.size) : eventDigest(e, b)])),
      u32(e.data.length),
      e.data,
    ]);
  if (opts.startupLocality !== undefined) {
    // TCG_EfiStartupLocalityEvent (PFP §10.4.5.3), an EV_NO_ACTION with zero digests.
    parts.push(
      record(
        {
          pcr: 0,
          type: EV.EV_NO_ACTION,
          data: Buffer.concat([Buffer.from('StartupLocality\0', 'latin1'), Buffer.from([opts.startupLocality])]),
        },
        true,
      ),
    );
  }
  for (const e of events) parts.push(record(e, e.type === EV.EV_NO_ACTION));
  return Buffer.concat(parts);
}

/** UEFI_VARIABLE_DATA (PFP §10.2.3). */
export function variableData(guidText: string, name: string, data: Buffer): Buffer {
  const n = Buffer.from(name, 'utf16le');
  return Buffer.concat([guid(guidText), u64(name.length), u64(data.length), n, data]);
}

/** An EFI_SIGNATURE_LIST of EFI_CERT_SHA256 entries (UEFI §32.4.1). */
export function sha256SignatureList(hashes: Buffer[]): Buffer {
  const owner = guid('77fa9abd-0359-4d32-bd60-28f4e78f784b');
  const sigs = hashes.map((h) => Buffer.concat([owner, h]));
  return Buffer.concat([guid('c1c41626-504c-4092-aca9-41f936934328'), u32(28 + sigs.length * 48), u32(0), u32(48), ...sigs]);
}

/** A device path: PciRoot(0x0)/Pci(0x1f,0x2)/Sata(0x0,0xffff,0x0)/HD(1,GPT,…)/\EFI\BOOT\BOOTX64.EFI (UEFI §10.3). */
export function bootDevicePath(file: string): Buffer {
  const nodeOf = (type: number, sub: number, body: Buffer) => Buffer.concat([Buffer.from([type, sub]), u16(body.length + 4), body]);
  return Buffer.concat([
    nodeOf(2, 1, Buffer.concat([u32(0x0a0341d0), u32(0)])),
    nodeOf(1, 1, Buffer.from([2, 0x1f])),
    nodeOf(3, 0x12, Buffer.concat([u16(0), u16(0xffff), u16(0)])),
    nodeOf(4, 1, Buffer.concat([u32(1), u64(2048), u64(1048576), guid('0fc63daf-8483-4772-8e79-3d69d8477de4'), Buffer.from([2, 2])])),
    nodeOf(4, 4, Buffer.from(`${file}\0`, 'utf16le')),
    nodeOf(0x7f, 0xff, Buffer.alloc(0)),
  ]);
}

export interface SyntheticBoot {
  /** Firmware version label: the EV_EFI_PLATFORM_FIRMWARE_BLOB2 'BIOS' digest is sha256("firmware:" + it). */
  firmware?: string;
  /** The SecureBoot variable's value (1 = on). */
  secureBoot?: number;
  /** Boot application label: its digest is sha256("app:" + it). */
  bootApp?: string;
  /** Number of dbx entries (revocations); dbx entry i is sha256("dbx:" + i). */
  dbxEntries?: number;
  /**
   * The db entry that verified the boot application, measured as EV_EFI_VARIABLE_AUTHORITY (an
   * EFI_SIGNATURE_DATA whose data is signerCertificate(it)); none when absent.
   */
  signer?: string;
}

/** A DER SEQUENCE standing for the certificate `label` (shaped like one; its SHA-256 names the signer). */
export function signerCertificate(label: string): Buffer {
  const body = Buffer.concat([Buffer.from([0x0c, Buffer.byteLength(label)]), Buffer.from(label, 'utf8')]);
  return Buffer.concat([Buffer.from([0x30, 0x82, body.length >> 8, body.length & 0xff]), body]);
}

/** The events of a plausible UEFI boot (PCRs 0–7) described by `boot`. */
export function syntheticBootEvents(boot: SyntheticBoot = {}): SyntheticEvent[] {
  const { firmware = 'v1.0', secureBoot = 1, bootApp = 'shimx64-15.8', dbxEntries = 3, signer } = boot;
  const h = (s: string) => createHash('sha256').update(s).digest();
  const blob = Buffer.concat([Buffer.from([4]), Buffer.from('BIOS', 'latin1'), u64(0xff000000), u64(0x1000000)]);
  const dbx = sha256SignatureList(Array.from({ length: dbxEntries }, (_, i) => h(`dbx:${i}`)));
  const image = Buffer.concat([
    u64(0x7e000000),
    u64(0x100000),
    u64(0),
    u64(bootDevicePath('\\EFI\\BOOT\\BOOTX64.EFI').length),
    bootDevicePath('\\EFI\\BOOT\\BOOTX64.EFI'),
  ]);
  const separator = (pcr: number): SyntheticEvent => ({ pcr, type: EV.EV_SEPARATOR, data: Buffer.alloc(4) });
  return [
    { pcr: 0, type: EV.EV_S_CRTM_VERSION, data: Buffer.from('1.0\0', 'utf16le') },
    {
      pcr: 0,
      type: EV.EV_EFI_PLATFORM_FIRMWARE_BLOB2,
      data: blob,
      digests: { sha256: h(`firmware:${firmware}`), sha1: createHash('sha1').update(`firmware:${firmware}`).digest() },
    },
    { pcr: 7, type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG, data: variableData(EFI_GLOBAL_VARIABLE, 'SecureBoot', Buffer.from([secureBoot])) },
    { pcr: 7, type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG, data: variableData(EFI_GLOBAL_VARIABLE, 'PK', sha256SignatureList([h('pk')])) },
    { pcr: 7, type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG, data: variableData(EFI_GLOBAL_VARIABLE, 'KEK', sha256SignatureList([h('kek')])) },
    {
      pcr: 7,
      type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG,
      data: variableData(EFI_IMAGE_SECURITY_DATABASE, 'db', sha256SignatureList([h('db')])),
    },
    { pcr: 7, type: EV.EV_EFI_VARIABLE_DRIVER_CONFIG, data: variableData(EFI_IMAGE_SECURITY_DATABASE, 'dbx', dbx) },
    ...[0, 1, 2, 3, 4, 5, 6, 7].map(separator),
    { pcr: 1, type: EV.EV_EFI_VARIABLE_BOOT, data: variableData(EFI_GLOBAL_VARIABLE, 'BootOrder', Buffer.concat([u16(1), u16(0)])) },
    { pcr: 4, type: EV.EV_EFI_ACTION, data: Buffer.from('Calling EFI Application from Boot Option', 'latin1') },
    ...(signer === undefined
      ? []
      : [
          {
            pcr: 7,
            type: EV.EV_EFI_VARIABLE_AUTHORITY,
            data: variableData(
              EFI_IMAGE_SECURITY_DATABASE,
              'db',
              Buffer.concat([guid('77fa9abd-0359-4d32-bd60-28f4e78f784b'), signerCertificate(signer)]),
            ),
          },
        ]),
    {
      pcr: 4,
      type: EV.EV_EFI_BOOT_SERVICES_APPLICATION,
      data: image,
      digests: { sha256: h(`app:${bootApp}`), sha1: createHash('sha1').update(`app:${bootApp}`).digest() },
    },
  ];
}

/** Extends each event's sha256 digest into the swtpm's PCRs, in log order (EV_NO_ACTION is not extended). */
export async function extendEvents(tcti: string, events: SyntheticEvent[]): Promise<void> {
  for (const e of events) {
    if (e.type === EV.EV_NO_ACTION) continue;
    await run('tpm2_pcrextend', ['-T', tcti, `${e.pcr}:sha256=${eventDigest(e, 'sha256').toString('hex')}`], { timeout: 15_000 });
  }
}
