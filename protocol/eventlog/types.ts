/**
 * Event types of the TCG PC Client Platform Firmware Profile Specification (PFP), version 1.05,
 * §10.4.1 "Event Types" (Table 9), and the TPM algorithm IDs a log names its banks by
 * (TCG Algorithm Registry).
 */

export const EV = {
  EV_PREBOOT_CERT: 0x0,
  EV_POST_CODE: 0x1,
  EV_UNUSED: 0x2,
  EV_NO_ACTION: 0x3,
  EV_SEPARATOR: 0x4,
  EV_ACTION: 0x5,
  EV_EVENT_TAG: 0x6,
  EV_S_CRTM_CONTENTS: 0x7,
  EV_S_CRTM_VERSION: 0x8,
  EV_CPU_MICROCODE: 0x9,
  EV_PLATFORM_CONFIG_FLAGS: 0xa,
  EV_TABLE_OF_DEVICES: 0xb,
  EV_COMPACT_HASH: 0xc,
  EV_IPL: 0xd,
  EV_IPL_PARTITION_DATA: 0xe,
  EV_NONHOST_CODE: 0xf,
  EV_NONHOST_CONFIG: 0x10,
  EV_NONHOST_INFO: 0x11,
  EV_OMIT_BOOT_DEVICE_EVENTS: 0x12,
  EV_POST_CODE2: 0x13,
  EV_EFI_EVENT_BASE: 0x80000000,
  EV_EFI_VARIABLE_DRIVER_CONFIG: 0x80000001,
  EV_EFI_VARIABLE_BOOT: 0x80000002,
  EV_EFI_BOOT_SERVICES_APPLICATION: 0x80000003,
  EV_EFI_BOOT_SERVICES_DRIVER: 0x80000004,
  EV_EFI_RUNTIME_SERVICES_DRIVER: 0x80000005,
  EV_EFI_GPT_EVENT: 0x80000006,
  EV_EFI_ACTION: 0x80000007,
  EV_EFI_PLATFORM_FIRMWARE_BLOB: 0x80000008,
  EV_EFI_HANDOFF_TABLES: 0x80000009,
  EV_EFI_PLATFORM_FIRMWARE_BLOB2: 0x8000000a,
  EV_EFI_HANDOFF_TABLES2: 0x8000000b,
  EV_EFI_VARIABLE_BOOT2: 0x8000000c,
  EV_EFI_GPT_EVENT2: 0x8000000d,
  EV_EFI_HCRTM_EVENT: 0x80000010,
  EV_EFI_VARIABLE_AUTHORITY: 0x800000e0,
  EV_EFI_SPDM_FIRMWARE_BLOB: 0x800000e1,
  EV_EFI_SPDM_FIRMWARE_CONFIG: 0x800000e2,
} as const;

const NAMES = new Map<number, string>(Object.entries(EV).map(([k, v]) => [v, k]));

/** The spec's name of an event type, or its hex value for a type the spec does not define. */
export function eventTypeName(type: number): string {
  return NAMES.get(type) ?? `0x${type.toString(16).padStart(8, '0')}`;
}

/** Banks a log can carry; Node's hash name for replay (TCG Algorithm Registry, Table 3). */
export const HASH_ALGS: ReadonlyMap<number, { name: string; size: number; node: string }> = new Map([
  [0x0004, { name: 'sha1', size: 20, node: 'sha1' }],
  [0x000b, { name: 'sha256', size: 32, node: 'sha256' }],
  [0x000c, { name: 'sha384', size: 48, node: 'sha384' }],
  [0x000d, { name: 'sha512', size: 64, node: 'sha512' }],
  [0x0012, { name: 'sm3_256', size: 32, node: 'sm3' }],
]);

export function bankName(alg: number): string {
  return HASH_ALGS.get(alg)?.name ?? `0x${alg.toString(16).padStart(4, '0')}`;
}

/** Well-known EFI_GUIDs the decoders name (UEFI spec §8.2 / §32.6; TCG PFP §3.3.4). */
export const EFI_GLOBAL_VARIABLE = '8be4df61-93ca-11d2-aa0d-00e098032b8c';
export const EFI_IMAGE_SECURITY_DATABASE = 'd719b2cb-3d3a-4596-a3bc-dad00e67656f';
