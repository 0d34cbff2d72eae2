import { EdgeidError } from '../../protocol/errors/index.js';

/** Well-known TPM 2.0 response codes (base codes, as `TpmError.tpmCode` reports them). */
export const TPM_RC = {
  SUCCESS: 0x000,
  /** Format-one codes (bit 7 set), without the handle/parameter/session number. */
  VALUE: 0x084,
  HANDLE: 0x08b,
  POLICY_FAIL: 0x099,
  INTEGRITY: 0x09f,
  SIZE: 0x095,
  BAD_AUTH: 0x0a2,
  /** Format-zero warnings. */
  OBJECT_MEMORY: 0x902,
  /** The 1st..7th handle names a transient object or session that is not loaded (…_H0 … _H6). */
  REFERENCE_H0: 0x910,
  REFERENCE_H6: 0x916,
  SESSION_MEMORY: 0x903,
  RETRY: 0x922,
} as const;

/** TSS2_RC layers (tss2_common.h, TSS2_RC_LAYER_SHIFT 16). */
const LAYER = { TPM: 0, ESYS: 7, SYS: 8, MU: 9, TCTI: 10 } as const;

/**
 * TSS2_BASE_RC codes (tss2_common.h) that mean the response could not be taken apart or trusted,
 * or that ESYS is still in the error state an earlier such response left it in.
 */
const BASE_MALFORMED = new Set([
  7, // BAD_SEQUENCE
  17, // MALFORMED_RESPONSE
  19, // INSUFFICIENT_RESPONSE
  27, // RSP_AUTH_FAILED
]);

/**
 * How a failed TSS call went wrong, by layer (TSS 2.0 TCTI, SAPI and ESAPI specifications):
 * - 'transport': the TCTI could not send or receive (layer 10): the TPM is unreachable or silent;
 * - 'response': a TSS function talking to the TPM (Esys_*) failed below the TPM — the SAPI or
 *   marshalling layers, or ESYS on a malformed or unauthenticated response. ESYS then keeps its
 *   context in an internal-error state: every later command fails until the connection is reopened;
 * - 'tpm': the TPM itself answered with an error code (layer 0), or ESYS refused the call locally.
 */
export function failureKind(rc: number, command: string): 'transport' | 'response' | 'tpm' {
  const layer = (rc >>> 16) & 0xff;
  if (layer === LAYER.TCTI) return 'transport';
  if (!command.startsWith('Esys_')) return 'tpm';
  if (layer === LAYER.SYS || layer === LAYER.MU) return 'response';
  if (layer === LAYER.ESYS && BASE_MALFORMED.has(rc & 0xffff)) return 'response';
  return 'tpm';
}

/**
 * A TPM (or TSS) call that failed: `rc` is the raw TSS2_RC (layer in bits 16–23), `text` its
 * decoded form from Tss2_RC_Decode, `command` the TSS function that returned it. Its code is
 * tpm_unresponsive when the TCTI could not reach the TPM, tpm_bad_response when the answer was
 * malformed (see failureKind).
 */
export class TpmError extends EdgeidError {
  readonly rc: number;
  readonly command: string;
  readonly text: string;

  constructor(rc: number, command: string, text: string) {
    const opening = command === 'Tss2_TctiLdr_Initialize' || command === 'Esys_Initialize';
    // TPM_RC_LOCKOUT (format zero, 0x921) from the TPM itself (layer 0) or as ESYS passed it on
    const lockout = (rc & 0xfff) === 0x921 && ((rc >>> 16) & 0xff) === 0;
    const kind = failureKind(rc, command);
    super(
      opening
        ? 'tpm_unavailable'
        : lockout
          ? 'tpm_lockout'
          : kind === 'transport'
            ? 'tpm_unresponsive'
            : kind === 'response'
              ? 'tpm_bad_response'
              : 'tpm_command_failed',
      `${command} failed: 0x${rc.toString(16)} ${text}`,
      { rc, command, text },
    );
    this.name = 'TpmError';
    this.rc = rc;
    this.command = command;
    this.text = text;
  }

  /** The connection is unusable after this failure (transport or malformed response): reopen it. */
  get breaksConnection(): boolean {
    return failureKind(this.rc, this.command) !== 'tpm';
  }

  /** The TSS layer that produced the code: 0 = the TPM itself, 7 = ESYS, 9 = MU, 10 = TCTI. */
  get layer(): number {
    return (this.rc >>> 16) & 0xff;
  }

  /**
   * For TPM-layer codes, the base code without the handle/parameter/session number (compare with
   * TPM_RC); other layers return the raw rc.
   */
  get tpmCode(): number {
    if (this.layer !== 0) return this.rc;
    return this.rc & 0x80 ? this.rc & 0xbf : this.rc & 0xfff;
  }
}

/**
 * True for the codes a TPM gives for a handle whose object is gone (flushed by someone else, or the
 * TPM was reset): TPM_RC_REFERENCE_H0..H6, TPM_RC_HANDLE, TPM_RC_VALUE.
 */
export function isStaleHandleError(e: unknown): boolean {
  if (!(e instanceof TpmError) || e.layer !== 0) return false;
  const c = e.tpmCode;
  return (c >= TPM_RC.REFERENCE_H0 && c <= TPM_RC.REFERENCE_H6) || c === TPM_RC.HANDLE || c === TPM_RC.VALUE;
}

/** Turns the addon's rejection ({rc, command, text} on an Error) into a TpmError; others pass through. */
export function toTpmError(e: unknown): unknown {
  if (e instanceof TpmError) return e;
  if (e instanceof Error && typeof (e as { rc?: unknown }).rc === 'number') {
    const { rc, command, text } = e as Error & { rc: number; command?: string; text?: string };
    return new TpmError(rc, command ?? 'TPM call', text ?? '');
  }
  return e;
}
