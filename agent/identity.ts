/**
 * Enrollment and renewal as a small durable state machine.
 *
 * Commit points (each an atomic replace of state.json; key blobs are written before the state
 * that references them):
 *   E1  AK blobs on disk, then state {ak, pendingEnrollment{token}}      — before /v1/enroll/start
 *   E2  new session key blobs on disk (not yet referenced)               — before /v1/enroll/finish
 *   E3  state {device, certificate → session-N, renew nonce}; token gone — after the response
 *   R1  new session key blobs on disk (not yet referenced)               — before /v1/renew
 *   R2  state {certificate → session-N+1, previousSessionKey: N, nonce}  — after the response
 *   R3  previous blobs deleted once the new certificate is in use        — agent.ts
 * A kill anywhere leaves a state `run` continues from: before E3 it re-runs the enrollment with the
 * stored token (the server accepts a retry from the same EK while the token lives); if the server
 * had already issued when the agent died (token spent: token_used / ek_already_enrolled), the agent
 * re-attests with its AK via `/v1/renew/challenge {akName}` and renews; before R2 a renewal simply
 * runs again (a spent nonce → a fresh challenge). Unreferenced blobs are removed at start.
 */
import { X509Certificate, createHash } from 'node:crypto';
import type { Logger } from 'pino';
import {
  EnrollFinishResponse,
  EnrollStartResponse,
  RenewChallengeResponse,
  RenewResponse,
  type EnrollFinishRequest,
  type EnrollStartRequest,
  type IssueResponse,
  type RenewRequest,
} from '../protocol/api.js';
import { EdgeidError, isEdgeidError } from '../protocol/errors/index.js';
import { objectName, parsePublic, publicKeySpkiDer } from '../protocol/tpm/public.js';
import type { AgentConfig } from './config.js';
import { eventLogForQuote } from './eventlog.js';
import { produceEvidence, type EvidenceResult } from './evidence.js';
import type { PostureCollector } from './posture.js';
import { ServerClient, normaliseFingerprint, pinServerCa } from './server-client.js';
import { sessionKeyName, type AgentState, type CertificateRecord, type StateStore } from './state/store.js';
import type { Tpm } from './tpm/index.js';

export interface IdentityDeps {
  store: StateStore;
  tpm: Tpm;
  posture: PostureCollector;
  log: Logger;
  config: AgentConfig;
  /** Ends every request to the server at once (the agent stopping or wiping). */
  signal?: AbortSignal;
  /** The agent's clock (default Date.now). */
  now?: () => number;
  /** A long-lived client for the pinned server (the daemon keeps one); by default one per call. */
  client?: ServerClient;
}

export interface EnrollParams {
  server: string;
  /** Absent: zero-touch enrollment, for a TPM whose EK an operator imported from a supplier manifest. */
  token?: string;
  caFingerprint: string;
  zone?: string;
}

/** What one renewal did, for logs, status and the bench. */
export interface RenewalOutcome {
  state: AgentState;
  serial: string;
  tpmCommands: number;
  tpmCommandStats: Record<string, number>;
  durationMs: number;
  /** Bytes the event log added to the renewal request (the compressed log in base64, or only its digest). */
  eventLogWireBytes: number;
  /** Session key generation that the new certificate replaced (delete once the new one is in use). */
  replacedSessionKey?: number;
}

const NONCE_CODES = new Set(['nonce_unknown', 'nonce_used', 'nonce_expired', 'nonce_wrong_device']);

function b64(b: Buffer): string {
  return b.toString('base64');
}

/** The pinned roots as PEM: the enrollment root, and the next root once pinned (both trust anchors for TLS). */
export function pinnedRootsPem(state: AgentState): string {
  return [state.server.rootPem, state.server.nextRootPem]
    .filter((p): p is string => !!p)
    .map((p) => p.trimEnd() + '\n')
    .join('');
}

function fingerprintOf(cert: X509Certificate): string {
  return `sha256:${createHash('sha256').update(cert.raw).digest('hex')}`;
}

/**
 * Checks a `nextRoot` an issuing response carries before the agent pins it as a second root
 * (docs/BACKUP-AND-CA-ROTATION.md, root rotation): R2 must be a self-signed CA certificate, and the
 * chain must hold its cross certificate X(R2) — a CA certificate with exactly R2's subject and
 * public key, issued by the pinned root and verifying under its key, valid now (RFC 4158 §2.3;
 * RFC 5280 §6.1: a path through X(R2) ends in the pinned root). Returns R2's PEM and fingerprint;
 * throws next_root_invalid with the reason otherwise.
 */
export function verifyNextRoot(
  chainPem: string[],
  nextRootPem: string,
  pinnedRootPem: string,
  now = Date.now(),
): { pem: string; fingerprint: string } {
  const bad = (why: string) => new EdgeidError('next_root_invalid', `the next root the server sent is not pinned: ${why}`);
  let r2: X509Certificate;
  let r1: X509Certificate;
  let chain: X509Certificate[];
  try {
    r2 = new X509Certificate(nextRootPem);
    r1 = new X509Certificate(pinnedRootPem);
    chain = chainPem.map((p) => new X509Certificate(p));
  } catch {
    throw bad('a certificate cannot be parsed');
  }
  if (!r2.ca || !r2.checkIssued(r2) || !r2.verify(r2.publicKey)) throw bad('it is not a self-signed CA certificate');
  if (fingerprintOf(r2) === fingerprintOf(r1)) throw bad('it is the pinned root itself');
  const r2Key = r2.publicKey.export({ type: 'spki', format: 'der' });
  const cross = chain.find(
    (x) => x.subject === r2.subject && x.publicKey.export({ type: 'spki', format: 'der' }).equals(r2Key) && x.issuer !== x.subject,
  );
  if (!cross) throw bad('the chain holds no cross certificate with its subject and key');
  if (!cross.ca || !cross.checkIssued(r1) || !cross.verify(r1.publicKey))
    throw bad('its cross certificate does not verify under the pinned root');
  if (Date.parse(cross.validFrom) > now || Date.parse(cross.validTo) < now) throw bad('its cross certificate is not valid now');
  return { pem: r2.toString(), fingerprint: fingerprintOf(r2) };
}

/**
 * The state's server pins after an issuing response: a `nextRoot` not pinned yet is pinned when
 * verifyNextRoot accepts it; a refused one changes nothing and is logged (the certificate itself
 * is still good: its chain ends in the pinned root).
 */
export function serverPins(state: AgentState, resp: IssueResponse, log: Logger, now: number): AgentState['server'] {
  if (!resp.nextRoot || !state.server.rootPem) return state.server;
  try {
    const r2 = verifyNextRoot(resp.chain, resp.nextRoot, state.server.rootPem, now);
    if (r2.fingerprint === state.server.nextRootFingerprint) return state.server;
    log.info(
      { nextRoot: r2.fingerprint, root: state.server.caFingerprint },
      'pinned the next root of the server (cross-signed by the pinned root)',
    );
    return { ...state.server, nextRootPem: r2.pem, nextRootFingerprint: r2.fingerprint };
  } catch (e) {
    if (!isEdgeidError(e)) throw e;
    log.warn({ code: e.code, err: e.message }, 'next root refused');
    return state.server;
  }
}

export function clientFor(state: AgentState, config: AgentConfig, signal?: AbortSignal, now?: () => number): ServerClient {
  if (!state.server.rootPem) throw new EdgeidError('state_corrupt', 'the state has no pinned server CA certificate');
  return new ServerClient(state.server.url, {
    caPem: pinnedRootsPem(state),
    timeoutMs: config.httpTimeoutMs,
    ...(signal ? { signal } : {}),
    ...(now ? { now } : {}),
  });
}

/** Checks an issuing response against what we asked for and the pinned root, and makes the certificate record. */
function certificateRecord(
  resp: IssueResponse,
  state: AgentState,
  sessionKeyPub: Buffer,
  gen: number,
  client: ServerClient,
  now: () => number,
): CertificateRecord {
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(resp.certificate);
  } catch {
    throw new EdgeidError('server_error', 'the server returned a certificate that cannot be parsed');
  }
  const spki = publicKeySpkiDer(parsePublic(sessionKeyPub));
  if (!leaf.publicKey.export({ type: 'spki', format: 'der' }).equals(spki)) {
    throw new EdgeidError('server_error', 'the issued certificate is not for the session key this agent created');
  }
  const chain = resp.chain.map((p) => new X509Certificate(p));
  const root = chain.at(-1);
  const pinned = state.server.caFingerprint;
  const pins = [pinned, ...(state.server.nextRootFingerprint ? [state.server.nextRootFingerprint] : [])];
  if (!root || !pins.includes(fingerprintOf(root))) {
    throw new EdgeidError('server_fingerprint_mismatch', `the issued chain does not end in a pinned root (${pins.join(', ')})`);
  }
  let child = leaf;
  for (const issuer of chain) {
    if (!child.checkIssued(issuer) || !child.verify(issuer.publicKey)) {
      throw new EdgeidError('server_error', 'the issued certificate does not chain to the edgeid root it was sent with');
    }
    child = issuer;
  }
  return {
    pem: resp.certificate,
    chain: resp.chain,
    serial: leaf.serialNumber.toLowerCase(),
    notBefore: new Date(leaf.validFrom).toISOString(),
    notAfter: new Date(leaf.validTo).toISOString(),
    sessionKey: gen,
    // the renewal schedule runs on elapsed time, whatever this device's clock says (schedule.ts)
    ...(client.serverClockOffsetMs !== undefined ? { clockOffsetMs: client.serverClockOffsetMs } : {}),
    receivedAt: new Date(now()).toISOString(),
  };
}

function applyIssue(state: AgentState, resp: IssueResponse, cert: CertificateRecord, log: Logger, now: number): AgentState {
  return {
    ...state,
    server: serverPins(state, resp, log, now),
    device: { id: resp.deviceId, zone: resp.zone, enrolledAt: state.device?.enrolledAt ?? new Date().toISOString() },
    certificate: cert,
    renew: {
      nonce: resp.renew.nonce,
      nonceExpiresAt: resp.renew.nonceExpiresAt,
      renewAfter: resp.renew.renewAfter,
      notAfter: resp.renew.notAfter,
      pcrs: resp.renew.pcrs,
      ...(resp.renew.eventLogSha256 !== undefined ? { eventLogSha256: resp.renew.eventLogSha256 } : {}),
    },
    nextSessionKey: Math.max(state.nextSessionKey, cert.sessionKey + 1),
  };
}

/**
 * `edgeid-agent enroll`: pins the server, makes the AK durable, enrolls. Continues an interrupted
 * enrollment in the same state dir (same AK); refuses if the device is already enrolled.
 */
export async function enroll(deps: IdentityDeps, params: EnrollParams): Promise<AgentState> {
  const { store, tpm, log } = deps;
  const caFingerprint = normaliseFingerprint(params.caFingerprint);
  const existing = await store.load();
  if (existing?.device) {
    throw new EdgeidError('already_enrolled', `this device is already enrolled as ${existing.device.id} with ${existing.server.url}`, {
      deviceId: existing.device.id,
    });
  }
  const { rootPem } = await pinServerCa(params.server, caFingerprint, deps.config.httpTimeoutMs);
  log.info({ server: params.server, caFingerprint }, 'server certificate pinned');

  let state: AgentState = {
    ...(existing ?? { version: 1, renewals: 0, nextSessionKey: 1 }),
    version: 1,
    server: { url: params.server, caFingerprint, rootPem },
    pendingEnrollment: {
      ...(params.token !== undefined ? { token: params.token } : {}),
      ...(params.zone ? { zone: params.zone } : {}),
      startedAt: new Date().toISOString(),
    },
  } as AgentState;
  if (!state.ak) {
    const ak = await tpm.createAttestationKey();
    await store.writeKey('ak', ak); // E1: the AK exists on disk before the server ever sees it
    state.ak = { name: objectName(parsePublic(ak.public)).toString('hex'), createdAt: new Date().toISOString() };
    log.info({ akName: state.ak.name }, 'attestation key created');
  }
  await store.save(state);
  return continueEnrollment(deps, state);
}

/** Runs (or re-runs) the enrollment recorded in `state.pendingEnrollment`. */
export async function continueEnrollment(deps: IdentityDeps, state: AgentState): Promise<AgentState> {
  const { store, tpm, log, posture } = deps;
  const pending = state.pendingEnrollment;
  if (!pending || !state.ak) throw new EdgeidError('not_enrolled');
  const client = clientFor(state, deps.config, deps.signal, deps.now);
  try {
    const ak = await store.readKey('ak');
    const ek = await tpm.endorsementKey();
    const startReq: EnrollStartRequest = {
      ...(pending.token !== undefined ? { token: pending.token } : {}),
      ekPub: b64(ek.public),
      akPub: b64(ak.public),
      ...(ek.certificate ? { ekCert: b64(ek.certificate) } : {}),
      ...(pending.zone ? { zone: pending.zone } : {}),
    };
    let start: EnrollStartResponse;
    try {
      start = await client.post('/v1/enroll/start', startReq, EnrollStartResponse);
    } catch (e) {
      // without a token, a manifest entry that was used answers ek_not_allowed: maybe by us, before a crash
      if (
        isEdgeidError(e, 'token_used') ||
        isEdgeidError(e, 'ek_already_enrolled') ||
        (pending.token === undefined && isEdgeidError(e, 'ek_not_allowed'))
      ) {
        // The server may have issued before we could save the answer: re-attest with the AK.
        log.warn({ code: e.code }, 'token already spent; recovering the identity by attestation with the AK');
        return await recoverByAk(deps, state, client);
      }
      throw e;
    }
    const claims = await posture.claims();
    // enrollment: the server holds no log yet, so the whole log goes (or the claims say why not)
    const eventLog = await eventLogForQuote(deps.config.eventLog, null);
    if (eventLog.claim) claims.eventLog = eventLog.claim;
    const ev = await produceEvidence(tpm, {
      ak,
      nonce: Buffer.from(start.nonce, 'base64'),
      claims,
      pcrs: start.pcrs,
      commonName: 'edgeid-enrollment',
      activate: {
        credentialBlob: Buffer.from(start.credentialBlob, 'base64'),
        encryptedSecret: Buffer.from(start.encryptedSecret, 'base64'),
        ek,
      },
    });
    const gen = state.nextSessionKey;
    await store.writeKey(sessionKeyName(gen), ev.sessionKey); // E2
    const finishReq: EnrollFinishRequest = {
      session: start.session,
      secret: b64(ev.secret!),
      ...ev.evidence,
      ...(eventLog.field ? { eventLog: eventLog.field } : {}),
    };
    const resp = await client.post('/v1/enroll/finish', finishReq, EnrollFinishResponse);
    const cert = certificateRecord(resp, state, ev.sessionKey.public, gen, client, deps.now ?? Date.now);
    const next: AgentState = { ...applyIssue(state, resp, cert, log, (deps.now ?? Date.now)()), mqtt: resp.mqtt };
    delete next.pendingEnrollment;
    await store.save(next); // E3
    await store.writeOperatorFiles(next);
    log.info(
      { deviceId: resp.deviceId, zone: resp.zone, serial: cert.serial, notAfter: cert.notAfter, tpmCommands: ev.tpmCommands },
      'enrolled',
    );
    return next;
  } finally {
    client.close();
  }
}

/**
 * The token is spent but this agent has no identity recorded: the server issued and we died before
 * saving. The AK is the root of the identity: ask for a challenge by AK name, then renew.
 * (Needs the server to look the device up by AK name; older servers answer bad_request.)
 */
async function recoverByAk(deps: IdentityDeps, state: AgentState, client: ServerClient): Promise<AgentState> {
  let ch: RenewChallengeResponse;
  try {
    ch = await client.post('/v1/renew/challenge', { akName: state.ak!.name }, RenewChallengeResponse);
  } catch (e) {
    throw new EdgeidError(
      'enrollment_incomplete',
      `the enrollment token is spent and the server could not find this device by its attestation key (${isEdgeidError(e) ? e.code : (e as Error).message}); ask ops for a new token`,
    );
  }
  if (!ch.deviceId) throw new EdgeidError('enrollment_incomplete', 'the server did not name the device for this attestation key');
  const recovered: AgentState = {
    ...state,
    device: { id: ch.deviceId, zone: ch.zone ?? state.pendingEnrollment?.zone ?? 'default', enrolledAt: new Date().toISOString() },
    renew: { nonce: ch.nonce, nonceExpiresAt: ch.expiresAt, pcrs: ch.pcrs },
  };
  const outcome = await renewWith(deps, recovered, client, 'recovery');
  const done = { ...outcome.state };
  delete done.pendingEnrollment;
  await deps.store.save(done);
  return done;
}

async function challenge(client: ServerClient, state: AgentState): Promise<NonNullable<AgentState['renew']>> {
  const ch = await client.post('/v1/renew/challenge', { deviceId: state.device!.id }, RenewChallengeResponse);
  return {
    ...state.renew,
    nonce: ch.nonce,
    nonceExpiresAt: ch.expiresAt,
    pcrs: ch.pcrs,
    ...(ch.eventLogSha256 !== undefined ? { eventLogSha256: ch.eventLogSha256 } : {}),
  };
}

/** One renewal (R1 → R2). Throws an EdgeidError with the server's or the agent's reason code. */
export async function renewCertificate(deps: IdentityDeps, state: AgentState, reason: string): Promise<RenewalOutcome> {
  if (deps.client) return renewWith(deps, state, deps.client, reason);
  const client = clientFor(state, deps.config, deps.signal, deps.now);
  try {
    return await renewWith(deps, state, client, reason);
  } finally {
    client.close();
  }
}

async function renewWith(deps: IdentityDeps, state: AgentState, client: ServerClient, reason: string): Promise<RenewalOutcome> {
  const { store, tpm, log, posture } = deps;
  if (!state.device || !state.ak) throw new EdgeidError('not_enrolled');
  const started = performance.now();
  const ak = await store.readKey('ak');
  let renew = state.renew;
  // nonceExpiresAt is server time: compare it on the server's clock as last measured
  const serverNow = (deps.now ?? Date.now)() + (state.certificate?.clockOffsetMs ?? 0);
  const fresh = (r: typeof renew) => !!r?.nonce && (!r.nonceExpiresAt || Date.parse(r.nonceExpiresAt) > serverNow + 5_000);
  if (!fresh(renew) || !renew?.pcrs) renew = await challenge(client, state);

  const gen = state.nextSessionKey;
  let ev: EvidenceResult | undefined;
  let resp: IssueResponse | undefined;
  let tpmCommands = 0;
  let eventLogWireBytes = 0;
  const stats: Record<string, number> = {};
  for (let attempt = 0; attempt < 2 && !resp; attempt++) {
    const claims = await posture.claims();
    // the log itself only when it differs from the one the server holds, else its digest
    const eventLog = await eventLogForQuote(deps.config.eventLog, renew!.eventLogSha256);
    if (eventLog.claim) claims.eventLog = eventLog.claim;
    eventLogWireBytes = eventLog.wireBytes;
    ev = await produceEvidence(tpm, {
      ak,
      nonce: Buffer.from(renew!.nonce!, 'base64'),
      claims,
      pcrs: renew!.pcrs ?? [],
      commonName: state.device.id,
    });
    tpmCommands += ev.tpmCommands;
    for (const [k, v] of Object.entries(ev.tpmCommandStats)) stats[k] = (stats[k] ?? 0) + v;
    await store.writeKey(sessionKeyName(gen), ev.sessionKey); // R1
    const req: RenewRequest = {
      deviceId: state.device.id,
      nonce: renew!.nonce!,
      ...ev.evidence,
      ...(eventLog.field ? { eventLog: eventLog.field } : {}),
    };
    try {
      resp = await client.post('/v1/renew', req, RenewResponse);
    } catch (e) {
      if (attempt === 0 && e instanceof EdgeidError && (NONCE_CODES.has(e.code) || e.code === 'eventlog_unknown')) {
        log.info({ code: e.code }, 'renewal nonce not accepted; asking for a fresh challenge');
        renew = await challenge(client, state);
        continue;
      }
      throw e;
    }
  }
  if (!resp || !ev) throw new EdgeidError('renewal_failed', 'no certificate after a fresh challenge');

  const cert = certificateRecord(resp, state, ev.sessionKey.public, gen, client, deps.now ?? Date.now);
  const replaced = state.certificate?.sessionKey;
  const older = state.previousSessionKey;
  const next: AgentState = applyIssue(state, resp, cert, log, (deps.now ?? Date.now)());
  if (replaced !== undefined && replaced !== gen) next.previousSessionKey = replaced;
  else delete next.previousSessionKey;
  const durationMs = Math.round(performance.now() - started);
  next.renewals = state.renewals + 1;
  // Steady state: the SRK and AK were resident already (no CreatePrimary/Load for them).
  const steady = !stats.CreatePrimary && !stats.Load;
  next.tpmCommandsPerRenewal = steady ? tpmCommands : (state.tpmCommandsPerRenewal ?? tpmCommands);
  next.lastRenewal = {
    at: new Date().toISOString(),
    ok: true,
    reason,
    durationMs,
    tpmCommands,
    tpmCommandStats: stats,
    serial: cert.serial,
  };
  await store.save(next); // R2
  // A key two generations old is in use by nothing (the MQTT session switched away from it).
  if (older !== undefined && older !== replaced && older !== gen) await store.removeKey(sessionKeyName(older));
  await store.writeOperatorFiles(next);
  log.info(
    { reason, serial: cert.serial, notAfter: cert.notAfter, durationMs, tpmCommands, tpmCommandStats: stats, eventLogWireBytes },
    'certificate renewed',
  );
  return {
    state: next,
    serial: cert.serial,
    tpmCommands,
    tpmCommandStats: stats,
    durationMs,
    eventLogWireBytes,
    ...(replaced !== undefined && replaced !== gen ? { replacedSessionKey: replaced } : {}),
  };
}
