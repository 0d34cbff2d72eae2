/**
 * HTTPS client towards the enrollment server, pinned to the edgeid root CA.
 *
 * Enrollment has nothing but a fingerprint (SHA-256 of the root certificate's DER). `pinServerCa`
 * finds the certificate with that fingerprint — in the chain the server presents, or else in the
 * server's /v1/ca bundle, fetched without sending anything secret: a certificate is
 * self-authenticating by its hash — and from then on every request uses it as the ONLY trust
 * anchor with Node's normal verification (chain, validity, host name). No trust on first use.
 * After a root rotation the agent adds the server's next root as a second anchor, once its cross
 * certificate verified under the first (identity.ts verifyNextRoot, pinnedRootsPem).
 */
import { X509Certificate, createHash } from 'node:crypto';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import type { Static, TSchema } from 'typebox';
import { ERRORS, EdgeidError, type ErrorCode } from '../protocol/errors/index.js';
import { responseMismatch } from '../protocol/wire-check.js';

export function normaliseFingerprint(fp: string): string {
  const hex = fp
    .trim()
    .toLowerCase()
    .replace(/^sha256:/, '')
    .replace(/:/g, '');
  if (!/^[0-9a-f]{64}$/.test(hex))
    throw new EdgeidError('enroll_uri_invalid', `CA fingerprint must be sha256:<64 hex digits>, got "${fp}"`);
  return `sha256:${hex}`;
}

function derFingerprint(der: Buffer): string {
  return `sha256:${createHash('sha256').update(der).digest('hex')}`;
}

function toPem(der: Buffer): string {
  return new X509Certificate(der).toString();
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  'ECONNABORTED',
]);

function networkError(url: URL, e: unknown): EdgeidError {
  const err = e as NodeJS.ErrnoException;
  if (err.code === 'CERT_NOT_YET_VALID' || err.code === 'CERT_HAS_EXPIRED') {
    // the pinned chain is fine but not at this device's time: almost always a wrong clock
    return new EdgeidError(
      'clock_skew',
      `the server's certificate is ${err.code === 'CERT_NOT_YET_VALID' ? 'not yet valid' : 'expired'} at this device's time (${new Date().toISOString()}): the device clock is probably wrong`,
      { tlsCode: err.code },
    );
  }
  if (err.code && /CERT|SELF_SIGNED|UNABLE_TO|ERR_TLS|HOSTNAME|ALTNAME/.test(err.code)) {
    return new EdgeidError('server_untrusted', `TLS to ${url.host} failed against the pinned edgeid CA: ${err.code}: ${err.message}`);
  }
  const how = err.code && NETWORK_CODES.has(err.code) ? err.code : err.message;
  return new EdgeidError('server_unreachable', `cannot reach ${url.origin}: ${how}`, { cause: err.code ?? err.message });
}

function hostOptions(url: URL): { host: string; port: number } {
  return { host: url.hostname.replace(/^\[|\]$/g, ''), port: url.port ? Number(url.port) : 443 };
}

/** The DER certificates the server presents (leaf first), read on a connection that checks nothing. */
async function presentedChain(url: URL, timeoutMs: number): Promise<Buffer[]> {
  const { host, port } = hostOptions(url);
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host, port, rejectUnauthorized: false, ...(isIpLiteral(host) ? {} : { servername: host }) });
    const timer = setTimeout(() => sock.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })), timeoutMs);
    sock.once('secureConnect', () => {
      clearTimeout(timer);
      const out: Buffer[] = [];
      let c: tls.DetailedPeerCertificate | undefined = sock.getPeerCertificate(true);
      const seen = new Set<string>();
      while (c && c.raw && !seen.has(c.fingerprint256)) {
        seen.add(c.fingerprint256);
        out.push(c.raw);
        c = c.issuerCertificate;
      }
      sock.end();
      resolve(out);
    });
    sock.once('error', (e) => {
      clearTimeout(timer);
      reject(networkError(url, e));
    });
  });
}

function isIpLiteral(host: string): boolean {
  return net.isIP(host) !== 0;
}

/** GET without verification, for public, self-authenticating data only (the CA bundle). */
async function getUnverified(url: URL, timeoutMs: number): Promise<string> {
  const body = await boundedRequest(
    url,
    { method: 'GET', rejectUnauthorized: false, headers: { accept: 'application/x-pem-file, */*' } },
    undefined,
    {
      deadlineMs: timeoutMs,
      maxBytes: MAX_RESPONSE_BYTES,
    },
  );
  return body.text;
}

/**
 * The most any answer of the server may weigh. The largest legitimate one (an issuing response:
 * a leaf, two CA certificates and a few fields) is a few KiB; a CA bundle a few more.
 */
export const MAX_RESPONSE_BYTES = 1024 * 1024;

interface Bounds {
  /** Total time for the whole exchange (connect, TLS, request, every byte of the answer). */
  deadlineMs: number;
  maxBytes: number;
  signal?: AbortSignal;
}

/**
 * One HTTPS exchange that cannot exhaust the agent: the answer is refused once it passes
 * `maxBytes` (server_response_too_large), the whole exchange once it passes `deadlineMs`
 * (server_timeout) — a server dripping a byte at a time never trips an idle timeout — and
 * `signal` (agent stop or wipe) ends it at once (request_aborted). Settles exactly once.
 */
function boundedRequest(
  url: URL,
  options: https.RequestOptions,
  payload: Buffer | undefined,
  bounds: Bounds,
): Promise<{ status: number; text: string; date: string | undefined }> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let req: ReturnType<typeof https.request> | undefined;
    const finish = (err: Error | null, value?: { status: number; text: string; date: string | undefined }) => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      bounds.signal?.removeEventListener('abort', onAbort);
      if (err) {
        req?.destroy();
        reject(err instanceof EdgeidError ? err : networkError(url, err));
      } else resolve(value!);
    };
    const deadline = setTimeout(
      () =>
        finish(
          new EdgeidError('server_timeout', `${url.origin}${url.pathname}: no complete answer within ${bounds.deadlineMs} ms`, {
            timeoutMs: bounds.deadlineMs,
          }),
        ),
      bounds.deadlineMs,
    );
    const onAbort = () => finish(new EdgeidError('request_aborted', `${url.pathname}: request abandoned (the agent is stopping)`));
    if (bounds.signal?.aborted) return onAbort();
    bounds.signal?.addEventListener('abort', onAbort, { once: true });
    const tooLarge = (n: number) =>
      new EdgeidError(
        'server_response_too_large',
        `${url.origin}${url.pathname}: the answer exceeds ${bounds.maxBytes} bytes${n > 0 ? ` (${n} announced or received)` : ''}`,
        {
          maxBytes: bounds.maxBytes,
        },
      );
    req = https.request(url, { ...options, timeout: bounds.deadlineMs }, (res) => {
      const announced = Number(res.headers['content-length'] ?? 0);
      if (announced > bounds.maxBytes) return finish(tooLarge(announced));
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (d: Buffer) => {
        size += d.length;
        if (size > bounds.maxBytes) return finish(tooLarge(size));
        chunks.push(d);
      });
      res.on('error', (e) => finish(e));
      res.on('aborted', () => finish(Object.assign(new Error('the server closed the connection mid-answer'), { code: 'ECONNRESET' })));
      res.on('end', () =>
        finish(null, { status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), date: res.headers.date }),
      );
    });
    req.on('timeout', () => finish(Object.assign(new Error(`no data within ${bounds.deadlineMs} ms`), { code: 'ETIMEDOUT' })));
    req.on('error', (e) => finish(e));
    req.end(payload);
  });
}

/**
 * Finds the pinned root: the certificate whose SHA-256 is `fingerprint`, in the presented chain or
 * in /v1/ca. Throws server_fingerprint_mismatch naming the expected and the presented fingerprints.
 */
export async function pinServerCa(
  serverUrl: string,
  fingerprint: string,
  timeoutMs = 15_000,
): Promise<{ rootPem: string; presented: string[] }> {
  const want = normaliseFingerprint(fingerprint);
  const url = new URL(serverUrl);
  if (url.protocol !== 'https:') throw new EdgeidError('enroll_uri_invalid', `server URL must be https://, got ${url.protocol}`);
  const chain = await presentedChain(url, timeoutMs);
  const presented = chain.map(derFingerprint);
  const hit = chain.find((der) => derFingerprint(der) === want);
  if (hit) return { rootPem: toPem(hit), presented };

  let bundle = '';
  try {
    bundle = await getUnverified(new URL('/v1/ca', url), timeoutMs);
  } catch {
    // fall through to the mismatch error, which is the more useful message
  }
  const offered: X509Certificate[] = [];
  for (const block of bundle.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []) {
    try {
      offered.push(new X509Certificate(block));
    } catch {
      // not a certificate; ignore
    }
  }
  const pinned = offered.find((c) => derFingerprint(c.raw) === want);
  if (pinned) return { rootPem: pinned.toString(), presented };

  // Name the CA the server really uses: the self-signed certificate its chain leads to.
  const top = chain.length ? new X509Certificate(chain.at(-1)!) : undefined;
  const actualRoot =
    (top && offered.find((c) => c.ca && top.checkIssued(c) && top.verify(c.publicKey))) ??
    (top && top.checkIssued(top) ? top : undefined) ??
    offered.find((c) => c.ca && c.checkIssued(c));
  const actual = actualRoot ? derFingerprint(actualRoot.raw) : undefined;
  throw new EdgeidError(
    'server_fingerprint_mismatch',
    `server ${url.host} is not the pinned edgeid server: expected CA fingerprint ${want}, ` +
      (actual ? `but the server's CA is ${actual}` : 'but its CA could not be identified') +
      ` (certificates presented: ${presented.length ? presented.join(', ') : 'none'})`,
    { expected: want, actual, presented },
  );
}

export interface ServerClientOptions {
  /** PEM of the pinned root (trust anchor); intermediates may follow. */
  caPem: string;
  /** Total time one request may take, answer included (default 15 s). */
  timeoutMs?: number;
  /** Largest answer accepted (default MAX_RESPONSE_BYTES, 1 MiB). */
  maxResponseBytes?: number;
  /** Aborts every request of this client (the agent stopping or wiping must not wait on the network). */
  signal?: AbortSignal;
  /** The agent's clock, to measure the server's clock against (default Date.now). */
  now?: () => number;
}

/** JSON over HTTPS with the pinned CA as the only trust anchor; server errors become EdgeidErrors. */
export class ServerClient {
  private readonly agent: https.Agent;
  private readonly timeoutMs: number;
  private readonly maxResponseBytes: number;
  private readonly signal: AbortSignal | undefined;
  private readonly now: () => number;
  /**
   * Server clock minus agent clock, from the Date header (RFC 9110 §6.6.1, whole seconds) of the
   * last answer, taken when it arrived; undefined before any answer or without the header.
   */
  serverClockOffsetMs: number | undefined;
  readonly base: URL;

  constructor(baseUrl: string, opts: ServerClientOptions) {
    this.base = new URL(baseUrl);
    this.timeoutMs = opts.timeoutMs ?? 15_000;
    this.maxResponseBytes = opts.maxResponseBytes ?? MAX_RESPONSE_BYTES;
    this.signal = opts.signal;
    this.now = opts.now ?? Date.now;
    // One TLS context for every connection: with `ca` alone, each connection parses the CA into a
    // new OpenSSL context, native memory that V8 does not see and collects late.
    this.agent = new https.Agent({
      keepAlive: true,
      maxSockets: 2,
      secureContext: tls.createSecureContext({ ca: opts.caPem }),
      rejectUnauthorized: true,
    });
  }

  close(): void {
    this.agent.destroy();
  }

  /** POSTs `body`; the answer must match `response` (a protocol/api.ts schema) or it is a server_error. */
  post<S extends TSchema>(path: string, body: unknown, response: S): Promise<Static<S>> {
    return this.request('POST', path, response, body);
  }

  get<S extends TSchema>(path: string, response: S): Promise<Static<S>> {
    return this.request('GET', path, response);
  }

  private async request<S extends TSchema>(method: string, path: string, response: S, body?: unknown): Promise<Static<S>> {
    const url = new URL(path, this.base);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body), 'utf8');
    const { status, text, date } = await boundedRequest(
      url,
      {
        method,
        agent: this.agent,
        headers: {
          accept: 'application/json',
          ...(payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}),
        },
      },
      payload,
      { deadlineMs: this.timeoutMs, maxBytes: this.maxResponseBytes, ...(this.signal ? { signal: this.signal } : {}) },
    );
    const serverTime = date ? Date.parse(date) : NaN;
    if (Number.isFinite(serverTime)) this.serverClockOffsetMs = serverTime - this.now();
    let json: unknown;
    try {
      json = text.length ? JSON.parse(text) : null;
    } catch {
      json = undefined;
    }
    if (status >= 200 && status < 300 && json !== undefined) {
      const problem = responseMismatch(response, json);
      if (problem) {
        throw new EdgeidError('server_error', `${url.pathname}: malformed response: ${problem.text}`, {
          path: url.pathname,
          field: problem.field,
          httpStatus: status,
        });
      }
      return json as Static<S>;
    }
    throw serverError(url, status, json, text);
  }
}

function serverError(url: URL, status: number, json: unknown, text: string): EdgeidError {
  const err = (json as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  const code = typeof err?.code === 'string' ? err.code : undefined;
  const message = typeof err?.message === 'string' ? err.message : undefined;
  if (code && code in ERRORS) return new EdgeidError(code as ErrorCode, message, { httpStatus: status, path: url.pathname });
  if (status === 502 || status === 503 || status === 504) {
    return new EdgeidError('server_unreachable', `${url.pathname}: HTTP ${status}`, { httpStatus: status });
  }
  return new EdgeidError('server_error', `${url.pathname}: HTTP ${status}${code ? ` ${code}` : ''}: ${message ?? text.slice(0, 200)}`, {
    httpStatus: status,
    serverCode: code,
  });
}
