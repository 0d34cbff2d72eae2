import type { ErrorInfo } from './types.js';
import { brokerErrors } from './broker.js';
import { tpmErrors } from './tpm.js';
import { enrollErrors } from './enroll.js';
import { adminErrors } from './admin.js';
import { credentialErrors } from './credential.js';
import { agentErrors } from './agent.js';
import { agentTpmErrors } from './agent-tpm.js';
import { eventlogErrors } from './eventlog.js';
import { caErrors } from './ca.js';
import { backupErrors } from './backup.js';
import { oidcErrors } from './oidc.js';
import { alertErrors } from './alerts.js';
import { consoleErrors } from './console.js';

/**
 * The one registry of error codes. Each domain keeps its own table (errors/<domain>.ts);
 * this module joins them and refuses duplicates at load time.
 */
const tables = [
  tpmErrors,
  enrollErrors,
  adminErrors,
  credentialErrors,
  agentErrors,
  agentTpmErrors,
  brokerErrors,
  eventlogErrors,
  caErrors,
  backupErrors,
  oidcErrors,
  alertErrors,
  consoleErrors,
] as const;

type Union<T> = T extends readonly (infer U)[] ? U : never;
type KeysOfUnion<T> = T extends unknown ? keyof T : never;
export type ErrorCode = KeysOfUnion<Union<typeof tables>> & string;

export const ERRORS: Readonly<Record<ErrorCode, ErrorInfo>> = (() => {
  const all: Record<string, ErrorInfo> = {};
  for (const table of tables) {
    for (const [code, info] of Object.entries(table)) {
      if (code in all) throw new Error(`error code registered twice: ${code}`);
      all[code] = info;
    }
  }
  return Object.freeze(all) as Record<ErrorCode, ErrorInfo>;
})();

/**
 * The error every layer throws for a known cause. `code` is stable and machine-readable;
 * `message` may carry specifics but never a secret.
 */
export class EdgeidError extends Error {
  readonly code: ErrorCode;
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(code: ErrorCode, message?: string, details?: Record<string, unknown>) {
    super(message ?? ERRORS[code].message);
    this.name = 'EdgeidError';
    this.code = code;
    this.details = details;
  }

  get status(): number {
    return ERRORS[this.code].status;
  }
}

export function isEdgeidError(e: unknown, code?: ErrorCode): e is EdgeidError {
  return e instanceof EdgeidError && (code === undefined || e.code === code);
}
