/**
 * HTTPS client towards the enrollment server, pinned to the edgeid root CA.
 *
 * Enrollment has nothing but a fingerprint (SHA-256 of the root certificate's DER). `pinServerCa`
 * finds the certificate with that fingerprint — in the chain the server presents, or else in the
 * server's /v1/ca bundle, fetched without sending anything secret: a certificate is
 * self-authenticating by its hash — and from then on every request uses it as the ONLY trust
 * anchor with Node's normal verification (chain, validity, host name). No trust on first use.
 */
import { X509Certificate, createHash } from 'node:crypto';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import type { Static, TSchema } from 'typebox';
import { Compile } from 'typebox/compile';
import { ERRORS, EdgeidError, type ErrorCode } from '../protocol/errors/index.js';

export function normaliseFingerprint(fp: string): string {
  const hex = fp.trim().toLowerCase().replace(/^sha256:/, '').replace(/:/g, '');
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new EdgeidError('enroll_uri_invalid', `CA fingerprint must be sha256:<64 hex digits>, got "${fp}"`);
  return `sha256:${hex}`;
}

function derFingerprint(der: Buffer): string {
  return `sha256:${createHash('sha256').update(der).digest('hex')}`;
}

function toPem(der: Buffer): string {
  return new X509Certificate(der).toString();
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'ECONNABORTED']);

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
  return new Promise((resolve, reject) => {
    const req = https.get(url, { rejectUnauthorized: false, timeout: timeoutMs, headers: { accept: 'application/x-pem-file, */*' } }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (d: Buffer) => {
        size += d.length;
        if (size > 1024 * 1024) req.destroy(new Error('CA bundle too large'));
        else chunks.push(d);
      });
      res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
    req.on('error', (e) => reject(networkError(url, e)));
  });
}

/**
 * Finds the pinned root: the certificate whose SHA-256 is `fingerprint`, in the presented chain or
 * in /v1/ca. Throws server_fingerprint_mismatch naming the expected and the presented fingerprints.
 */
export async function pinServerCa(serverUrl: string, fingerprint: string, timeoutMs = 15_000): Promise<{ rootPem: string; presented: string[] }> {
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
  timeoutMs?: number;
}

/** JSON over HTTPS with the pinned CA as the only trust anchor; server errors become EdgeidErrors. */
export class ServerClient {
  private readonly agent: https.Agent;
  private readonly timeoutMs: number;
  readonly base: URL;

  constructor(baseUrl: string, opts: ServerClientOptions) {
    this.base = new URL(baseUrl);
    this.timeoutMs = opts.timeoutMs ?? 15_000;
    this.agent = new https.Agent({ keepAlive: true, maxSockets: 2, ca: opts.caPem, rejectUnauthorized: true });
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

  private request<S extends TSchema>(method: string, path: string, response: S, body?: unknown): Promise<Static<S>> {
    const url = new URL(path, this.base);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body), 'utf8');
    return new Promise<Static<S>>((resolve, reject) => {
      const req = https.request(
        url,
        {
          method,
          agent: this.agent,
          timeout: this.timeoutMs,
          headers: {
            accept: 'application/json',
            ...(payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (d: Buffer) => chunks.push(d));
          res.on('error', (e) => reject(networkError(url, e)));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let json: unknown;
            try {
              json = text.length ? JSON.parse(text) : null;
            } catch {
              json = undefined;
            }
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300 && json !== undefined) {
              const problem = responseProblem(response, json);
              if (problem) return reject(new EdgeidError('server_error', `${url.pathname}: malformed response: ${problem.text}`, { path: url.pathname, field: problem.field, httpStatus: status }));
              return resolve(json as Static<S>);
            }
            reject(serverError(url, status, json, text));
          });
        },
      );
      req.on('timeout', () => req.destroy(Object.assign(new Error(`no answer within ${this.timeoutMs} ms`), { code: 'ETIMEDOUT' })));
      req.on('error', (e) => reject(e instanceof EdgeidError ? e : networkError(url, e)));
      req.end(payload);
    });
  }
}

/** Compiled validators of the response schemas, one per schema. */
const validators = new WeakMap<TSchema, ReturnType<typeof Compile>>();

/** Why `json` does not match `schema` (the first error, naming the field), or null when it does. */
function responseProblem(schema: TSchema, json: unknown): { field: string; text: string } | null {
  let v = validators.get(schema);
  if (!v) {
    v = Compile(schema);
    validators.set(schema, v);
  }
  if (v.Check(json)) return null;
  const [first] = v.Errors(json);
  const field = `response${first?.instancePath ?? ''}`;
  return { field, text: `${field} ${first?.message ?? 'does not match the protocol'}` };
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
