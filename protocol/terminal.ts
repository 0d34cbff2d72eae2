/**
 * What both CLIs (edgeid-admin, edgeid-agent) need to write to an operator's terminal or a script's
 * pipe safely:
 *  - `printable`: text that came from a device, a TPM or the network shown as inert characters.
 *    C0 controls, DEL and C1 controls (ECMA-48 §5: ESC, CSI U+009B, OSC U+009D, BEL …) would
 *    otherwise be obeyed by the terminal — an OSC 52 sequence writes the clipboard, `CSI 2K` erases
 *    the line it is on — and the Unicode bidi controls (Unicode TR #9, CVE-2021-42574) reorder
 *    what is shown. Each becomes a visible `\xHH` / `\uHHHH` escape.
 *  - `colourEnabled`: ANSI colour and terminal graphics only on a TTY, never when NO_COLOR is set
 *    (https://no-color.org) or TERM=dumb.
 *  - `flush`: resolves once everything written to a stream so far has been handed to the OS, so a
 *    command can exit without cutting a pipe short (process.exit() drops writes still queued on a
 *    pipe; Node's stdout is asynchronous for pipes on POSIX).
 */

// C0 (U+0000–U+001F), DEL, C1 (U+0080–U+009F), bidi marks (U+061C, U+200E, U+200F), embeddings,
// overrides and isolates, line/paragraph separators (Unicode TR #9, "Explicit Directional Formatting").
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

function escapeChar(c: string): string {
  const n = c.charCodeAt(0);
  return n <= 0xff ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`;
}

/** The text with every control character replaced by a visible escape; a non-string is String()-ed first. */
export function printable(value: unknown): string {
  return String(value).replace(UNSAFE, escapeChar);
}

// JSON.stringify escapes only C0 controls (RFC 8259 §7): DEL, C1 and the bidi/separator controls
// above would reach a terminal raw from `--json` output or `audit export`.
const UNSAFE_IN_JSON = /[\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/**
 * JSON.stringify(value, null, space) with every control character that `printable` escapes written
 * as a `\uXXXX` escape. Outside strings JSON text holds only ASCII, so this is the same document to
 * any parser, and inert on a terminal.
 */
export function jsonText(value: unknown, space?: number): string {
  return JSON.stringify(value, null, space).replace(UNSAFE_IN_JSON, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** True when `stream` is a terminal that may receive colour (and QR block graphics in colour). */
export function colourEnabled(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv = process.env): boolean {
  if (!stream.isTTY) return false;
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  return env.TERM !== 'dumb';
}

/** Resolves when every earlier write to `stream` has been flushed; rejects with the stream's write error (e.g. EPIPE). */
export function flush(stream: NodeJS.WritableStream): Promise<void> {
  return new Promise((resolve, reject) => {
    // A zero-length write completes after all writes queued before it (streams keep order).
    stream.write('', (e?: Error | null) => (e ? reject(e) : resolve()));
  });
}
