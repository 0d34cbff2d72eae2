/**
 * Typed decoders for the event data of the events posture reads. Structures from the TCG PC Client
 * Platform Firmware Profile Specification (PFP) 1.05 §10.2.3–§10.2.7 and §10.4 and the TCG EFI
 * Protocol Specification; UEFI structures from the UEFI Specification 2.10. Every decoder reads
 * through a bounded Reader, so malformed data is an `eventlog_malformed` error naming the offset.
 */
import { createHash } from 'node:crypto';
import { Reader, ascii, guidText, malformed, utf16 } from './errors.js';
import { devicePathText } from './devicepath.js';
import { EFI_GLOBAL_VARIABLE, EFI_IMAGE_SECURITY_DATABASE, EV } from './types.js';

export type EventData =
  /** EV_NO_ACTION TCG_EfiSpecIDEvent (PFP §10.4.5.1): the first event of a crypto-agile log. */
  | {
      kind: 'spec-id';
      signature: string;
      platformClass: number;
      version: string;
      uintnSize: number;
      algorithms: { alg: number; size: number }[];
    }
  /** EV_NO_ACTION TCG_EfiStartupLocalityEvent (PFP §10.4.5.3). */
  | { kind: 'startup-locality'; locality: number }
  /** Any other EV_NO_ACTION (SP800-155 Event, NvIndexInstance …): named by its signature. */
  | { kind: 'no-action'; signature: string }
  /** EV_SEPARATOR (PFP §10.4.1): 0x00000000, or 0xFFFFFFFF when an error occurred. */
  | { kind: 'separator'; value: number }
  /** EV_S_CRTM_VERSION, EV_EFI_ACTION, EV_ACTION, EV_IPL, EV_POST_CODE (string form). */
  | { kind: 'text'; text: string }
  /** UEFI_PLATFORM_FIRMWARE_BLOB / UEFI_PLATFORM_FIRMWARE_BLOB2 (PFP §10.2.5, §10.2.6); EV_POST_CODE may carry the first form. */
  | { kind: 'firmware-blob'; description?: string; base: string; length: string }
  /** UEFI_VARIABLE_DATA (PFP §10.2.3) of EV_EFI_VARIABLE_DRIVER_CONFIG / _BOOT / _BOOT2 / _AUTHORITY. */
  | {
      kind: 'variable';
      guid: string;
      name: string;
      dataSha256: string;
      dataLength: number;
      /** SecureBoot, SetupMode, AuditMode, DeployedMode: the one-byte value. */
      value?: number;
      /** PK, KEK, db, dbx: SHA-256 of each EFI_SIGNATURE_DATA's data (UEFI §32.4.1). */
      signatures?: string[];
      /** Boot####: EFI_LOAD_OPTION description and device path (UEFI §3.1.3). */
      description?: string;
      devicePath?: string;
      /** BootOrder: the Boot#### numbers. */
      bootOrder?: number[];
      /**
       * EV_EFI_VARIABLE_AUTHORITY whose data is an X.509 certificate (the db entry that verified an
       * image, or shim's vendor certificate): SHA-256 of the certificate's DER.
       */
      signerSha256?: string;
    }
  /** UEFI_IMAGE_LOAD_EVENT (PFP §10.2.4) of EV_EFI_BOOT_SERVICES_APPLICATION / _DRIVER, EV_EFI_RUNTIME_SERVICES_DRIVER. */
  | { kind: 'image'; location: string; length: string; linkTimeAddress: string; devicePath: string }
  /** UEFI_GPT_DATA (PFP §10.2.7): the disk and its partitions. */
  | { kind: 'gpt'; diskGuid: string; partitions: { typeGuid: string; uniqueGuid: string; name: string }[] }
  /** Anything else: only the digests count. */
  | { kind: 'raw' };

const MAX_SIGNATURES = 10000;
const MAX_PARTITIONS = 256;

function hx(n: bigint): string {
  return `0x${n.toString(16)}`;
}

const SECURE_BOOT_BOOLEANS = new Set(['SecureBoot', 'SetupMode', 'AuditMode', 'DeployedMode']);
const SIGNATURE_DBS = new Set(['PK', 'KEK', 'db', 'dbx', 'dbt', 'dbr']);

/** EFI_SIGNATURE_LIST array (UEFI §32.4.1) → SHA-256 of each signature's data (after the owner GUID). */
function signatureLists(r: Reader): string[] {
  const out: string[] = [];
  while (r.remaining > 0) {
    const at = r.offset;
    r.bytes(16, 'SignatureType');
    const listSize = r.u32('SignatureListSize');
    const headerSize = r.u32('SignatureHeaderSize');
    const sigSize = r.u32('SignatureSize');
    if (listSize < 28 || listSize - 28 > r.remaining) throw malformed(at, `SignatureListSize ${listSize} does not fit`);
    const list = r.sub(listSize - 28, 'EFI_SIGNATURE_LIST');
    list.bytes(headerSize, 'SignatureHeader');
    if (sigSize < 16) throw malformed(at, `SignatureSize ${sigSize} < 16`);
    if (list.remaining % sigSize !== 0) throw malformed(list.offset, `signatures do not divide into SignatureSize ${sigSize}`);
    while (list.remaining > 0) {
      const sig = list.sub(sigSize, 'EFI_SIGNATURE_DATA');
      sig.bytes(16, 'SignatureOwner');
      if (out.length >= MAX_SIGNATURES) throw malformed(sig.offset, `more than ${MAX_SIGNATURES} signatures`);
      out.push(createHash('sha256').update(sig.bytes(sig.remaining, 'SignatureData')).digest('hex'));
    }
  }
  return out;
}

function variable(r: Reader, type: number): EventData {
  const guid = guidText(r.bytes(16, 'VariableName GUID'));
  const nameLength = r.len64('UnicodeNameLength', 2);
  const dataLength = r.len64('VariableDataLength');
  const name = utf16(r.bytes(nameLength * 2, 'UnicodeName'));
  const dr = r.sub(dataLength, 'VariableData');
  const data = dr.buf.subarray(dr.pos, dr.end);
  const v: Extract<EventData, { kind: 'variable' }> = {
    kind: 'variable',
    guid,
    name,
    dataSha256: createHash('sha256').update(data).digest('hex'),
    dataLength,
  };
  const global = guid === EFI_GLOBAL_VARIABLE;
  if (type === EV.EV_EFI_VARIABLE_AUTHORITY) {
    const cert = authorityCertificate(data);
    if (cert) v.signerSha256 = createHash('sha256').update(cert).digest('hex');
  } else if (global && SECURE_BOOT_BOOLEANS.has(name)) {
    if (dataLength >= 1) v.value = data[0]!;
  } else if ((global && (name === 'PK' || name === 'KEK')) || (guid === EFI_IMAGE_SECURITY_DATABASE && SIGNATURE_DBS.has(name))) {
    if (type === EV.EV_EFI_VARIABLE_DRIVER_CONFIG) v.signatures = signatureLists(dr);
  } else if (global && name === 'BootOrder') {
    if (dataLength % 2 !== 0) throw malformed(dr.offset, 'BootOrder has an odd length');
    v.bootOrder = [];
    while (dr.remaining > 0 && v.bootOrder.length < 1024) v.bootOrder.push(dr.u16('BootOrder entry'));
  } else if (global && /^Boot[0-9A-F]{4}$/.test(name) && dataLength > 0) {
    // EFI_LOAD_OPTION (UEFI §3.1.3): Attributes, FilePathListLength, Description (NUL-terminated), FilePathList.
    dr.u32('Attributes');
    const pathLength = dr.u16('FilePathListLength');
    const rest = dr.buf.subarray(dr.pos, dr.end);
    let nul = -1;
    for (let i = 0; i + 1 < rest.length; i += 2) {
      if (rest[i] === 0 && rest[i + 1] === 0) {
        nul = i;
        break;
      }
    }
    if (nul < 0) throw malformed(dr.offset, 'Boot option description is not NUL-terminated');
    v.description = utf16(dr.bytes(nul + 2, 'Description'));
    v.devicePath = devicePathText(dr.sub(pathLength, 'FilePathList'));
  }
  return v;
}

/** `b` is exactly one DER SEQUENCE (definite length, short or long form up to 4 bytes). */
function isDerSequence(b: Buffer): boolean {
  if (b.length < 2 || b[0] !== 0x30) return false;
  const first = b[1]!;
  if (first < 0x80) return 2 + first === b.length;
  const n = first & 0x7f;
  if (n === 0 || n > 4 || b.length < 2 + n) return false;
  let len = 0;
  for (let i = 0; i < n; i++) len = len * 256 + b[2 + i]!;
  return 2 + n + len === b.length;
}

/**
 * The certificate an EV_EFI_VARIABLE_AUTHORITY event names. The firmware (EDK2
 * DxeImageVerificationLib) logs the whole EFI_SIGNATURE_DATA of the db entry that verified an
 * image — SignatureOwner GUID, then the DER certificate (UEFI §32.4.1); shim logs its vendor
 * certificate's DER alone. Other authority events (SbatLevel, MokListTrusted) name no signer.
 */
function authorityCertificate(data: Buffer): Buffer | null {
  if (isDerSequence(data)) return data;
  const afterOwner = data.subarray(16);
  return data.length > 16 && isDerSequence(afterOwner) ? afterOwner : null;
}

function image(r: Reader): EventData {
  const location = hx(r.u64('ImageLocationInMemory'));
  const length = hx(r.u64('ImageLengthInMemory'));
  const linkTimeAddress = hx(r.u64('ImageLinkTimeAddress'));
  const pathLength = r.len64('LengthOfDevicePath');
  return { kind: 'image', location, length, linkTimeAddress, devicePath: devicePathText(r.sub(pathLength, 'DevicePath')) };
}

function gpt(r: Reader): EventData {
  const at = r.offset;
  // EFI_PARTITION_TABLE_HEADER (UEFI §5.3.2)
  const signature = r.bytes(8, 'GPT signature').toString('latin1');
  if (signature !== 'EFI PART') throw malformed(at, 'GPT header signature is not "EFI PART"');
  r.u32('Revision');
  const headerSize = r.u32('HeaderSize');
  if (headerSize < 92) throw malformed(at + 12, `GPT HeaderSize ${headerSize} < 92`);
  r.bytes(4 + 4 + 8 + 8 + 8 + 8, 'GPT header fields');
  const diskGuid = guidText(r.bytes(16, 'DiskGUID'));
  r.bytes(8 + 4, 'PartitionEntryLBA, NumberOfPartitionEntries');
  const entrySize = r.u32('SizeOfPartitionEntry');
  r.bytes(4 + (headerSize - 92), 'PartitionEntryArrayCRC32 and header padding');
  const count = r.len64('NumberOfPartitions', Math.max(entrySize, 1));
  if (entrySize < 128) throw malformed(r.offset, `SizeOfPartitionEntry ${entrySize} < 128`);
  if (count > MAX_PARTITIONS) throw malformed(r.offset, `more than ${MAX_PARTITIONS} partitions`);
  const partitions = [];
  for (let i = 0; i < count; i++) {
    const e = r.sub(entrySize, 'partition entry');
    const typeGuid = guidText(e.bytes(16, 'PartitionTypeGUID'));
    const uniqueGuid = guidText(e.bytes(16, 'UniquePartitionGUID'));
    e.bytes(24, 'StartingLBA, EndingLBA, Attributes');
    partitions.push({ typeGuid, uniqueGuid, name: utf16(e.bytes(72, 'PartitionName')) });
  }
  return { kind: 'gpt', diskGuid, partitions };
}

/** Spec ID and other EV_NO_ACTION events are recognised by their 16-byte signature (PFP §10.4.5). */
export function noAction(r: Reader): EventData {
  if (r.remaining < 16) return { kind: 'no-action', signature: '' };
  const signature = ascii(r.buf.subarray(r.pos, r.pos + 16));
  if (signature === 'StartupLocality') {
    r.bytes(16, 'signature');
    return { kind: 'startup-locality', locality: r.u8('StartupLocality') };
  }
  if (signature.startsWith('Spec ID Event')) return specId(r);
  return { kind: 'no-action', signature };
}

/** TCG_EfiSpecIDEvent (PFP §10.4.5.1, "Spec ID Event03"; the SHA-1 form "Spec ID Event00" has no algorithm list). */
export function specId(r: Reader): Extract<EventData, { kind: 'spec-id' }> {
  const signature = ascii(r.bytes(16, 'Spec ID signature'));
  const platformClass = r.u32('platformClass');
  const minor = r.u8('specVersionMinor');
  const major = r.u8('specVersionMajor');
  const errata = r.u8('specErrata');
  const uintnSize = r.u8('uintnSize');
  const algorithms: { alg: number; size: number }[] = [];
  if (signature === 'Spec ID Event03') {
    const at = r.offset;
    const n = r.u32('numberOfAlgorithms');
    if (n === 0 || n > 16) throw malformed(at, `numberOfAlgorithms ${n} is not 1..16`);
    for (let i = 0; i < n; i++) {
      const alg = r.u16('algorithmId');
      const size = r.u16('digestSize');
      if (size === 0 || size > 64) throw malformed(r.offset - 2, `digestSize ${size} of algorithm 0x${alg.toString(16)} is not 1..64`);
      if (algorithms.some((a) => a.alg === alg)) throw malformed(r.offset - 4, `algorithm 0x${alg.toString(16)} listed twice`);
      algorithms.push({ alg, size });
    }
    const vendorSize = r.u8('vendorInfoSize');
    r.bytes(vendorSize, 'vendorInfo');
  }
  return { kind: 'spec-id', signature, platformClass, version: `${major}.${minor} errata ${errata}`, uintnSize, algorithms };
}

/** True for UCS-2 text of ASCII characters: every second byte zero (a trailing odd NUL is tolerated). */
function looksUtf16(b: Buffer): boolean {
  if (b.length < 2 || (b.length % 2 !== 0 && b[b.length - 1] !== 0)) return false;
  for (let i = 1; i < b.length; i += 2) if (b[i] !== 0) return false;
  return b[0] !== 0;
}

/** Decodes one event's data by its type; the Reader spans exactly the event data. */
export function decodeEventData(type: number, r: Reader): EventData {
  switch (type) {
    case EV.EV_NO_ACTION:
      return noAction(r);
    case EV.EV_SEPARATOR:
      return r.remaining === 4 ? { kind: 'separator', value: r.u32('separator') } : { kind: 'raw' };
    case EV.EV_S_CRTM_VERSION: {
      // A UCS-2 version string, or a GUID (PFP §3.3.4.2 leaves the format to the platform).
      const b = r.bytes(r.remaining, 'version');
      return { kind: 'text', text: looksUtf16(b) ? utf16(b) : b.length === 16 ? guidText(b) : ascii(b) };
    }
    case EV.EV_IPL: {
      // Boot loaders measure their command lines as UTF-8 (GRUB) or UCS-2 (systemd-boot).
      const b = r.bytes(r.remaining, 'text');
      return { kind: 'text', text: looksUtf16(b) ? utf16(b) : ascii(b) };
    }
    case EV.EV_EFI_ACTION:
    case EV.EV_ACTION:
      return { kind: 'text', text: ascii(r.bytes(r.remaining, 'text')) };
    case EV.EV_POST_CODE:
      if (r.remaining === 16) {
        return { kind: 'firmware-blob', base: hx(r.u64('BlobBase')), length: hx(r.u64('BlobLength')) };
      }
      return { kind: 'text', text: ascii(r.bytes(r.remaining, 'text')) };
    case EV.EV_EFI_PLATFORM_FIRMWARE_BLOB:
      return { kind: 'firmware-blob', base: hx(r.u64('BlobBase')), length: hx(r.u64('BlobLength')) };
    case EV.EV_EFI_PLATFORM_FIRMWARE_BLOB2: {
      const n = r.u8('BlobDescriptionSize');
      const description = ascii(r.bytes(n, 'BlobDescription'));
      return { kind: 'firmware-blob', description, base: hx(r.u64('BlobBase')), length: hx(r.u64('BlobLength')) };
    }
    case EV.EV_EFI_VARIABLE_DRIVER_CONFIG:
    case EV.EV_EFI_VARIABLE_BOOT:
    case EV.EV_EFI_VARIABLE_BOOT2:
    case EV.EV_EFI_VARIABLE_AUTHORITY:
      return variable(r, type);
    case EV.EV_EFI_BOOT_SERVICES_APPLICATION:
    case EV.EV_EFI_BOOT_SERVICES_DRIVER:
    case EV.EV_EFI_RUNTIME_SERVICES_DRIVER:
      return image(r);
    case EV.EV_EFI_GPT_EVENT:
    case EV.EV_EFI_GPT_EVENT2:
      return gpt(r);
    default:
      return { kind: 'raw' };
  }
}

/**
 * Event types whose digest is, by the PFP, the hash of the event data itself (§10.4.1 Table 9,
 * §3.3.4.8 for UEFI_VARIABLE_DATA of EV_EFI_VARIABLE_DRIVER_CONFIG, §10.2.7 for UEFI_GPT_DATA).
 * For these the decoded data can be checked against the digest; for the others (code
 * measurements, Boot#### variables) the data only describes what was hashed.
 */
export const DIGEST_IS_DATA_HASH: ReadonlySet<number> = new Set([
  EV.EV_SEPARATOR,
  EV.EV_EFI_ACTION,
  EV.EV_EFI_VARIABLE_DRIVER_CONFIG,
  // the digest of EV_EFI_VARIABLE_AUTHORITY is that of its UEFI_VARIABLE_DATA too (TCG PC Client
  // PFP, the EV_EFI_VARIABLE_AUTHORITY entry of the event types table);
  // early shim releases measured something else, so their events show dataMatchesDigest false
  EV.EV_EFI_VARIABLE_AUTHORITY,
  EV.EV_EFI_GPT_EVENT,
]);
