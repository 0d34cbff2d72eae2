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

/**
 * A TPM (or TSS) call that failed: `rc` is the raw TSS2_RC (layer in bits 16–23), `text` its
 * decoded form from Tss2_RC_Decode, `command` the TSS function that returned it.
 */
export class TpmError extends EdgeidError {
  readonly rc: number;
  readonly command: string;
  readonly text: string;

  constructor(rc: number, command: string, text: string) {
    const opening = command === 'Tss2_TctiLdr_Initialize' || command === 'Esys_Initialize';
    // TPM_RC_LOCKOUT (format zero, 0x921) from the TPM itself (layer 0) or as ESYS passed it on
    const lockout = (rc & 0xfff) === 0x921 && ((rc >>> 16) & 0xff) === 0;
    super(
      opening ? 'tpm_unavailable' : lockout ? 'tpm_lockout' : 'tpm_command_failed',
      `${command} failed: 0x${rc.toString(16)} ${text}`,
      { rc, command, text },
    );
    this.name = 'TpmError';
    this.rc = rc;
    this.command = command;
    this.text = text;
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
