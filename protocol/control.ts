/**
 * Signed control commands: the server signs, the agent verifies.
 *
 * Wire format: the MQTT payload on `edgeid/<deviceId>/control` is the JSON of a `SignedControl`
 * (protocol/api.ts): `payload` is the canonical JSON of a `ControlCommand`, `signature` a base64
 * DER ECDSA-SHA256 signature over the payload's UTF-8 bytes, `signer` the PEM certificate of the
 * control key (optionally followed by intermediates).
 *
 * `verifyControlCommand` accepts a command only if ALL of these hold, each failure its own code:
 * - the envelope and the payload are well formed                          → control_malformed
 * - the signature verifies with the signer certificate's key               → control_bad_signature
 * - the signer is a control signer: CN `edgeid-control`, not a CA,
 *   no EKU other than CONTROL_SIGNER_EKU (device certificates carry clientAuth and are refused),
 *   and it chains, every link checked (signature, issuer name, CA flag, validity), to one of the
 *   trusted edgeid root certificates                                        → control_untrusted_signer
 * - the command names this device                                          → control_wrong_device
 * - issuedAt lies within [now - maxAge, now + maxFutureSkew]                → control_stale
 * - its id was not seen before (the caller's durable memory)               → control_replayed
 * Which commands exist, and what they do, is the agent's business.
 */
import { X509Certificate, createPrivateKey, randomUUID, sign as nodeSign, verify as nodeVerify, type KeyObject } from 'node:crypto';
import { canonicalJson, type ControlCommand, type SignedControl } from './api.js';
import { EdgeidError } from './errors/index.js';

export const CONTROL_SIGNER_CN = 'edgeid-control';
/**
 * Extended key usage a control-signing certificate may carry to say so explicitly (a UUID-based
 * OID, ITU-T X.667 arc 2.25, so no registration is needed). Optional today; if the certificate has
 * an EKU extension at all, it must contain this one.
 */
export const CONTROL_SIGNER_EKU = '2.25.224592450058323485117301865995898001638';

export const DEFAULT_CONTROL_MAX_AGE_MS = 5 * 60_000;
export const DEFAULT_CONTROL_MAX_FUTURE_SKEW_MS = 60_000;

/** The topic a device's control commands arrive on. */
export function controlTopic(deviceId: string): string {
  return `edgeid/${deviceId}/control`;
}

/** Splits a PEM bundle (or takes DER buffers) into node X509Certificates. */
export function parseCertificates(input: string | Uint8Array | (string | Uint8Array)[]): X509Certificate[] {
  const items = Array.isArray(input) ? input : [input];
  const out: X509Certificate[] = [];
  for (const item of items) {
    if (typeof item === 'string') {
      const blocks = item.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
      for (const b of blocks) out.push(new X509Certificate(b));
    } else {
      out.push(new X509Certificate(Buffer.from(item)));
    }
  }
  return out;
}

/**
 * Signs a control command with the server's control key. `id` and `issuedAt` are filled in when
 * absent. `signerPem` is the control certificate (optionally followed by intermediates).
 */
export function signControlCommand(
  command: Omit<ControlCommand, 'id' | 'issuedAt'> & { id?: string; issuedAt?: string },
  signer: { key: KeyObject | string; certPem: string },
): SignedControl {
  const full: ControlCommand = { ...command, id: command.id ?? randomUUID(), issuedAt: command.issuedAt ?? new Date().toISOString() };
  const payload = canonicalJson(full);
  const key = typeof signer.key === 'string' ? createPrivateKey(signer.key) : signer.key;
  const signature = nodeSign('sha256', Buffer.from(payload, 'utf8'), key).toString('base64');
  return { payload, signature, signer: signer.certPem };
}

export interface VerifyControlOptions {
  /** The device this agent is; commands for any other device are refused. */
  deviceId: string;
  /** Trusted edgeid root certificate(s), PEM or DER; more certificates (intermediates) may be given too. */
  trust: string | Uint8Array | (string | Uint8Array)[];
  now?: Date;
  maxAgeMs?: number;
  maxFutureSkewMs?: number;
  /** True if this command id was already received (the caller keeps the memory, durably). */
  seen?: (id: string) => boolean;
}

function malformed(why: string): EdgeidError {
  return new EdgeidError('control_malformed', `control command: ${why}`);
}

function parseEnvelope(message: string | Uint8Array): SignedControl {
  let raw: unknown;
  try {
    raw = JSON.parse(typeof message === 'string' ? message : Buffer.from(message).toString('utf8'));
  } catch {
    throw malformed('not JSON');
  }
  if (typeof raw !== 'object' || raw === null) throw malformed('not an object');
  const env = raw as Record<string, unknown>;
  if (typeof env.payload !== 'string' || typeof env.signature !== 'string' || typeof env.signer !== 'string') {
    throw malformed('payload, signature and signer must be strings');
  }
  if (env.payload.length > 16_384 || env.signer.length > 32_768 || env.signature.length > 1024) throw malformed('oversized');
  return { payload: env.payload, signature: env.signature, signer: env.signer };
}

function parsePayload(payload: string): ControlCommand {
  let raw: unknown;
  try {
    raw = JSON.parse(payload);
  } catch {
    throw malformed('payload is not JSON');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw malformed('payload is not an object');
  const c = raw as Record<string, unknown>;
  for (const f of ['type', 'deviceId', 'id', 'issuedAt'] as const) {
    if (typeof c[f] !== 'string' || (c[f] as string).length === 0 || (c[f] as string).length > 256) {
      throw malformed(`payload field ${f} must be a non-empty string`);
    }
  }
  if (!Number.isFinite(Date.parse(c.issuedAt as string))) throw malformed('issuedAt is not a date');
  return c as unknown as ControlCommand;
}

function commonName(subject: string): string | undefined {
  for (const line of subject.split('\n')) {
    const m = /^CN=(.*)$/.exec(line.trim());
    if (m) return m[1];
  }
  return undefined;
}

function withinValidity(c: X509Certificate, at: Date): boolean {
  return Date.parse(c.validFrom) <= at.getTime() && at.getTime() <= Date.parse(c.validTo);
}

function untrusted(why: string): EdgeidError {
  return new EdgeidError('control_untrusted_signer', `control command signer: ${why}`);
}

/** Checks that `leaf` is a control signer and chains to a trusted root; throws control_untrusted_signer. */
function checkSignerChain(leaf: X509Certificate, extra: X509Certificate[], trust: X509Certificate[], at: Date): void {
  if (commonName(leaf.subject) !== CONTROL_SIGNER_CN) throw untrusted(`subject is not CN=${CONTROL_SIGNER_CN}`);
  if (leaf.ca) throw untrusted('is a CA certificate');
  const eku = leaf.keyUsage; // node: the extended key usage OIDs, undefined without the extension
  if (eku !== undefined && (eku.length === 0 || eku.some((oid) => oid !== CONTROL_SIGNER_EKU)))
    throw untrusted('has an extended key usage other than control signing');
  if (!withinValidity(leaf, at)) throw untrusted('certificate is outside its validity period');

  const roots = trust.filter((c) => c.ca && c.checkIssued(c) && c.verify(c.publicKey));
  const pool = [...extra, ...trust];
  let current = leaf;
  for (let depth = 0; depth < 8; depth++) {
    if (roots.some((r) => r.fingerprint256 === current.fingerprint256)) return;
    const issuer = pool.find(
      (c) => c.ca && c.fingerprint256 !== current.fingerprint256 && current.checkIssued(c) && current.verify(c.publicKey),
    );
    if (!issuer) throw untrusted('does not chain to the edgeid root CA');
    if (!withinValidity(issuer, at)) throw untrusted('a CA certificate in its chain is outside its validity period');
    current = issuer;
  }
  throw untrusted('chain too long');
}

/** Verifies a signed control command (see the module comment for every check) and returns it. */
export function verifyControlCommand(message: string | Uint8Array | SignedControl, opts: VerifyControlOptions): ControlCommand {
  const env =
    typeof message === 'object' && !(message instanceof Uint8Array) ? parseEnvelope(JSON.stringify(message)) : parseEnvelope(message);
  const now = opts.now ?? new Date();

  let signerChain: X509Certificate[];
  try {
    signerChain = parseCertificates(env.signer);
  } catch {
    throw malformed('signer is not a PEM certificate');
  }
  const leaf = signerChain[0];
  if (!leaf) throw malformed('signer holds no certificate');
  const signature = Buffer.from(env.signature, 'base64');
  let ok = false;
  try {
    ok = nodeVerify('sha256', Buffer.from(env.payload, 'utf8'), leaf.publicKey, signature);
  } catch {
    ok = false;
  }
  if (!ok) throw new EdgeidError('control_bad_signature');

  checkSignerChain(leaf, signerChain.slice(1), parseCertificates(opts.trust), now);

  const cmd = parsePayload(env.payload);
  if (cmd.deviceId !== opts.deviceId) {
    throw new EdgeidError('control_wrong_device', `control command for device ${cmd.deviceId}, this is ${opts.deviceId}`);
  }
  const issuedAt = Date.parse(cmd.issuedAt);
  const maxAge = opts.maxAgeMs ?? DEFAULT_CONTROL_MAX_AGE_MS;
  const skew = opts.maxFutureSkewMs ?? DEFAULT_CONTROL_MAX_FUTURE_SKEW_MS;
  if (issuedAt < now.getTime() - maxAge || issuedAt > now.getTime() + skew) {
    throw new EdgeidError('control_stale', `control command issued at ${cmd.issuedAt}, now is ${now.toISOString()}`);
  }
  if (opts.seen?.(cmd.id)) throw new EdgeidError('control_replayed', `control command ${cmd.id} was already received`);
  return cmd;
}
