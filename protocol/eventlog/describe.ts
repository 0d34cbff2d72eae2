/**
 * One-line descriptions of events for people (CLI listings, quarantine reasons, log diffs). The
 * text contains strings from the log (device paths, variable names, descriptions): callers that
 * write it to a terminal pass it through protocol/terminal.ts `printable`.
 */
import type { LogEvent } from './parser.js';

const MAX_TEXT = 200;

function clip(s: string): string {
  return s.length > MAX_TEXT ? `${s.slice(0, MAX_TEXT)}…` : s;
}

/** What the event says, without its type name: e.g. `'BIOS' base 0xff000000 length 0x1000000`, `SecureBoot = 1`. */
export function eventSummary(e: LogEvent): string {
  const d = e.decoded;
  switch (d.kind) {
    case 'spec-id':
      return `${d.signature}, banks ${d.algorithms.map((a) => `0x${a.alg.toString(16)}`).join(',') || 'sha1'}`;
    case 'startup-locality':
      return `StartupLocality ${d.locality}`;
    case 'no-action':
      return d.signature ? `'${clip(d.signature)}'` : '';
    case 'separator':
      return d.value === 0 ? '' : `0x${d.value.toString(16)} (error)`;
    case 'text':
      return `'${clip(d.text)}'`;
    case 'firmware-blob':
      return `${d.description !== undefined ? `'${clip(d.description)}' ` : ''}base ${d.base} length ${d.length}`;
    case 'variable': {
      const parts = [d.name];
      if (d.value !== undefined) parts.push(`= ${d.value}`);
      else if (d.dataLength === 0 && !d.signatures) parts.push('(absent)');
      if (d.signatures) parts.push(`(${d.signatures.length} entries)`);
      if (d.bootOrder) parts.push(`= ${d.bootOrder.map((n) => n.toString(16).padStart(4, '0')).join(',')}`);
      if (d.description !== undefined) parts.push(`'${clip(d.description)}'`);
      if (d.devicePath) parts.push(clip(d.devicePath));
      if (d.signerSha256) parts.push(`signer ${d.signerSha256.slice(0, 16)}…`);
      return parts.join(' ');
    }
    case 'image':
      return clip(d.devicePath);
    case 'gpt':
      return `disk ${d.diskGuid}, ${d.partitions.length} partitions`;
    case 'raw':
      return `${e.data.length} bytes`;
  }
}

/** `EV_TYPE summary` */
export function describeEvent(e: LogEvent): string {
  const s = eventSummary(e);
  return s ? `${e.typeName} ${s}` : e.typeName;
}
