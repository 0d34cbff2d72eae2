/**
 * EFI_DEVICE_PATH_PROTOCOL to text (UEFI spec 2.10 §10.3 "Device Path Nodes", text forms from
 * §10.6 "Text Device Path Representation"). Only the nodes boot logs carry are named; any other
 * node is shown as its type/subtype and raw bytes. The text is bounded (node count and length),
 * and a malformed node makes the whole path an EdgeidError naming the offset.
 */
import { Reader, guidText, malformed, utf16 } from './errors.js';

export const MAX_DEVICE_PATH_NODES = 64;
export const MAX_DEVICE_PATH_TEXT = 1024;

function hx(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}

function node(type: number, sub: number, r: Reader): string {
  const at = r.offset;
  try {
    switch (type) {
      case 0x01: // Hardware Device Path (§10.3.2)
        if (sub === 0x01) {
          const fn = r.u8('PCI function');
          const dev = r.u8('PCI device');
          return `Pci(${hx(dev)},${hx(fn)})`;
        }
        if (sub === 0x04) return `VenHw(${guidText(r.bytes(16, 'vendor GUID'))})`;
        break;
      case 0x02: // ACPI Device Path (§10.3.3)
        if (sub === 0x01) {
          const hid = r.u32('ACPI HID');
          const uid = r.u32('ACPI UID');
          if (hid === 0x0a0341d0) return `PciRoot(${hx(uid)})`;
          if (hid === 0x0a0841d0) return `PcieRoot(${hx(uid)})`;
          return `Acpi(${hx(hid)},${hx(uid)})`;
        }
        break;
      case 0x03: // Messaging Device Path (§10.3.4)
        if (sub === 0x02) return `Scsi(${hx(r.u16('target'))},${hx(r.u16('LUN'))})`;
        if (sub === 0x05) return `USB(${hx(r.u8('port'))},${hx(r.u8('interface'))})`;
        if (sub === 0x0b) return `MAC(${r.bytes(32, 'MAC address').subarray(0, 6).toString('hex')})`;
        if (sub === 0x12) return `Sata(${hx(r.u16('HBA port'))},${hx(r.u16('port multiplier'))},${hx(r.u16('LUN'))})`;
        if (sub === 0x17) return `NVMe(${hx(r.u32('namespace'))},${r.bytes(8, 'EUI-64').toString('hex')})`;
        if (sub === 0x18) return `Uri(${r.bytes(r.remaining, 'URI').toString('latin1')})`;
        break;
      case 0x04: // Media Device Path (§10.3.5)
        if (sub === 0x01) {
          const part = r.u32('partition number');
          const start = r.u64('partition start');
          const size = r.u64('partition size');
          const sig = r.bytes(16, 'partition signature');
          const fmt = r.u8('partition format');
          const sigType = r.u8('signature type');
          const s =
            sigType === 2 ? `GPT,${guidText(sig)}` : sigType === 1 ? `MBR,${hx(sig.readUInt32LE(0))}` : `${hx(fmt)},${sig.toString('hex')}`;
          return `HD(${part},${s},${hx(start)},${hx(size)})`;
        }
        if (sub === 0x02) return `CDROM(${hx(r.u32('boot entry'))})`;
        if (sub === 0x03) return `VenMedia(${guidText(r.bytes(16, 'vendor GUID'))})`;
        if (sub === 0x04) return utf16(r.bytes(r.remaining, 'path name'));
        if (sub === 0x06) return `FvFile(${guidText(r.bytes(16, 'firmware file GUID'))})`;
        if (sub === 0x07) return `Fv(${guidText(r.bytes(16, 'firmware volume GUID'))})`;
        if (sub === 0x08) {
          r.u32('reserved');
          return `Offset(${hx(r.u64('start'))},${hx(r.u64('end'))})`;
        }
        break;
      case 0x05: // BIOS Boot Specification Device Path (§10.3.6)
        if (sub === 0x01) return `BBS(${hx(r.u16('device type'))})`;
        break;
    }
  } catch (e) {
    throw malformed(at, `device path node ${type}/${sub}: ${(e as Error).message}`);
  }
  return `Path(${type},${sub},${r.bytes(r.remaining, 'node data').toString('hex')})`;
}

/** The text form of a device path occupying all of `r`, e.g. `PciRoot(0x0)/Pci(0x1,0x0)/HD(1,GPT,…)/\EFI\BOOT\BOOTX64.EFI`. */
export function devicePathText(r: Reader): string {
  const instances: string[][] = [[]];
  let nodes = 0;
  while (r.remaining > 0) {
    const at = r.offset;
    const type = r.u8('device path node type');
    const sub = r.u8('device path node subtype');
    const length = r.u16('device path node length');
    if (length < 4) throw malformed(at, `device path node length ${length} < 4`);
    const body = r.sub(length - 4, 'device path node');
    if (++nodes > MAX_DEVICE_PATH_NODES) throw malformed(at, `device path has more than ${MAX_DEVICE_PATH_NODES} nodes`);
    if (type === 0x7f) {
      if (sub === 0xff) break; // End Entire Device Path
      instances.push([]); // End This Instance
      continue;
    }
    instances[instances.length - 1]!.push(node(type, sub, body));
  }
  const text = instances.map((i) => i.join('/')).join(',');
  return text.length > MAX_DEVICE_PATH_TEXT ? `${text.slice(0, MAX_DEVICE_PATH_TEXT)}…` : text;
}
