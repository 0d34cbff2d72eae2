import type { RevokeReason } from '../protocol/api.js';
import type { CrlData } from './ca/ca.js';
import type { DeviceRecord } from './store/store.js';

/**
 * Event hooks: the extension points other parts (the broker integration of issue 5) implement.
 * Every hook runs after the change is committed. The server awaits each hook, so an API call
 * (e.g. revoke) returns after its hooks ran; a hook that throws is logged and audited as
 * `hook.<name>` with outcome fail, and never undoes the committed change.
 */
export interface EdgeidHooks {
  /** A short name for logs and audit rows, e.g. 'broker'. */
  readonly name: string;
  onDeviceEnrolled?(e: { device: DeviceRecord; serial: string; certificatePem: string }): void | Promise<void>;
  onCertificateIssued?(e: { device: DeviceRecord; serial: string; notAfter: Date; renewal: boolean }): void | Promise<void>;
  /** Renewals are refused from the commit on; `serials` go onto the CRL right after the hooks ran (onCrlChanged follows). */
  onDeviceRevoked?(e: { device: DeviceRecord; reason: RevokeReason; serials: string[]; at: Date }): void | Promise<void>;
  onDeviceRetired?(e: { device: DeviceRecord; serials: string[]; at: Date; automatic: boolean }): void | Promise<void>;
  onDeviceQuarantined?(e: { device: DeviceRecord; reason: string; code: string }): void | Promise<void>;
  onBaselineApproved?(e: { device: DeviceRecord; windowUntil: Date }): void | Promise<void>;
  /**
   * A new CRL was generated (after every revocation, and before the old one's nextUpdate).
   * `longLived` has the same entries with a 30-day validity, for readers that load a CRL once
   * (Mosquitto); `serials` are the revoked serials (lower-case hex, sorted).
   */
  onCrlChanged?(e: CrlChange): void | Promise<void>;
}

export type CrlChange = CrlData & { longLived: CrlData; serials: string[] };

export type HookName = Exclude<keyof EdgeidHooks, 'name'>;

/** What one hook did (reported by revoke and retire); the wire type is in protocol/api.ts. */
export type { HookResult } from '../protocol/api.js';
