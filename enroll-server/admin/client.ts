import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import https from 'node:https';
import { join, resolve } from 'node:path';
import type { Static, TSchema } from 'typebox';
import { ErrorBody } from '../../protocol/api.js';
import { EdgeidError, ERRORS, type ErrorCode } from '../../protocol/errors/index.js';
import { DATA_FILES, type ServerInfo } from '../server.js';
import { responseMismatch } from '../../protocol/wire-check.js';

export interface AdminTarget {
  server: string;
  token: string;
  /** PEM the server's TLS chain must lead to; null = the system's trust store. */
  ca: string | null;
  /** Where each setting came from (for error messages). */
  from: { server: string; token: string; ca: string };
}

/**
 * Server URL, token and CA: flags, then env (EDGEID_SERVER, EDGEID_TOKEN / EDGEID_ADMIN_TOKEN,
 * EDGEID_CA), then a credentials file for the token (see resolveToken), then the server's data
 * dir (--data, default ./data): server.json, admin-token, ca/root.pem.
 */
export function resolveTarget(
  opts: { server?: string; token?: string; adminToken?: string; credentials?: string; ca?: string; data?: string },
  env: NodeJS.ProcessEnv = process.env,
): AdminTarget {
  // empty env values count as unset
  const e = (name: string) => env[name] || undefined;
  const dataDir = resolve(opts.data ?? e('EDGEID_DATA') ?? './data');
  const fromData = (f: string) => join(dataDir, f);
  let server = opts.server ?? e('EDGEID_SERVER');
  let serverFrom = opts.server ? '--server' : 'EDGEID_SERVER';
  if (!server && existsSync(fromData(DATA_FILES.serverInfo))) {
    server = (JSON.parse(readFileSync(fromData(DATA_FILES.serverInfo), 'utf8')) as ServerInfo).url;
    serverFrom = fromData(DATA_FILES.serverInfo);
  }
  if (!server) {
    throw new EdgeidError(
      'admin_server_unreachable',
      `no server URL: pass --server URL, set EDGEID_SERVER, or run on the server host with --data DIR (looked in ${dataDir})`,
    );
  }
  const tk = resolveToken(opts, e, fromData(DATA_FILES.adminToken));
  if (!tk) {
    throw new EdgeidError(
      'admin_unauthorized',
      `no token: pass --token (your personal token) or --admin-token, set EDGEID_TOKEN or EDGEID_ADMIN_TOKEN, keep it in a 0600 credentials file (--credentials FILE, EDGEID_CREDENTIALS, ${defaultCredentialsFile(env)}), or run on the server host with --data DIR (looked in ${dataDir})`,
    );
  }
  const { token, from: tokenFrom } = tk;
  const caPath = opts.ca ?? e('EDGEID_CA') ?? (existsSync(fromData(DATA_FILES.rootPem)) ? fromData(DATA_FILES.rootPem) : undefined);
  return {
    server: server.replace(/\/+$/, ''),
    token,
    ca: caPath ? readFileSync(caPath, 'utf8') : null,
    from: { server: serverFrom, token: tokenFrom, ca: caPath ?? 'system trust store' },
  };
}

/** ~/.config/edgeid/credentials (or under $XDG_CONFIG_HOME): a person's token, mode 0600. */
export function defaultCredentialsFile(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config'), 'edgeid', 'credentials');
}

/**
 * A credentials file: the token on its first non-empty line. Refused (credentials_file_insecure)
 * when its group or others may read or write it, as ssh does with a private key.
 */
export function readCredentialsFile(file: string): string {
  const st = statSync(file);
  if ((st.mode & 0o077) !== 0) {
    throw new EdgeidError(
      'credentials_file_insecure',
      `${file} is mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}: a token file must be readable by its owner only (chmod 600 ${file})`,
      { file },
    );
  }
  const token = readFileSync(file, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l !== '');
  if (!token) throw new EdgeidError('admin_unauthorized', `${file} holds no token`);
  return token;
}

/**
 * The bearer token, first match wins: --token, --admin-token, EDGEID_TOKEN, EDGEID_ADMIN_TOKEN,
 * the credentials file (--credentials, EDGEID_CREDENTIALS, else the default one if it exists),
 * then the server's data/admin-token (the bootstrap admin, on the server host).
 */
function resolveToken(
  opts: { token?: string; adminToken?: string; credentials?: string },
  e: (name: string) => string | undefined,
  adminTokenFile: string,
): { token: string; from: string } | null {
  if (opts.token) return { token: opts.token, from: '--token' };
  if (opts.adminToken) return { token: opts.adminToken, from: '--admin-token' };
  for (const name of ['EDGEID_TOKEN', 'EDGEID_ADMIN_TOKEN']) {
    const v = e(name);
    if (v) return { token: v, from: name };
  }
  const named = opts.credentials ?? e('EDGEID_CREDENTIALS');
  const creds = named ?? defaultCredentialsFile({ HOME: e('HOME'), XDG_CONFIG_HOME: e('XDG_CONFIG_HOME') });
  if (named || existsSync(creds)) return { token: readCredentialsFile(creds), from: creds };
  if (existsSync(adminTokenFile)) return { token: readFileSync(adminTokenFile, 'utf8').trim(), from: adminTokenFile };
  return null;
}

export class AdminClient {
  constructor(
    readonly target: AdminTarget,
    /** Socket idle timeout of a request. */
    readonly timeoutMs = 30_000,
  ) {}

  /**
   * A JSON request whose answer is checked against its protocol/api.ts schema: an answer that does
   * not match is a server_error naming the field, never a half-typed object.
   */
  async request<S extends TSchema>(method: 'GET' | 'POST', path: string, body: unknown, response: S): Promise<Static<S>> {
    const buf = await this.send(method, path, body, true);
    let json: unknown;
    try {
      json = JSON.parse(buf.toString('utf8'));
    } catch {
      throw new EdgeidError('server_error', `${method} ${path}: the answer is not JSON`, { path });
    }
    const problem = responseMismatch(response, json);
    if (problem)
      throw new EdgeidError('server_error', `${method} ${path}: malformed response: ${problem.text}`, { path, field: problem.field });
    return json as Static<S>;
  }

  /** The answer's bytes as they are (e.g. the CA chain), without the admin token unless `auth`. */
  raw(method: 'GET' | 'POST', path: string, opts: { auth?: boolean } = {}): Promise<Buffer> {
    return this.send(method, path, undefined, opts.auth !== false);
  }

  /** A JSON request whose answer is bytes (e.g. a backup file). */
  binary(method: 'GET' | 'POST', path: string, body: unknown): Promise<Buffer> {
    return this.send(method, path, body, true);
  }

  private send(method: 'GET' | 'POST', path: string, body: unknown, auth: boolean): Promise<Buffer> {
    const url = new URL(path, this.target.server);
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise<Buffer>((resolvePromise, reject) => {
      const req = https.request(
        url,
        {
          method,
          ...(this.target.ca ? { ca: this.target.ca } : {}),
          headers: {
            ...(auth ? { authorization: `Bearer ${this.target.token}` } : {}),
            ...(data ? { 'content-type': 'application/json', 'content-length': data.length } : {}),
          },
          timeout: this.timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const buf = Buffer.concat(chunks);
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) return resolvePromise(buf);
            let err: ErrorBody['error'] | undefined;
            try {
              const json: unknown = JSON.parse(buf.toString('utf8'));
              if (!responseMismatch(ErrorBody, json)) err = (json as ErrorBody).error;
            } catch {
              /* not an edgeid error body */
            }
            const code = (err?.code && err.code in ERRORS ? err.code : 'internal_error') as ErrorCode;
            reject(new EdgeidError(code, err?.message ?? `HTTP ${status}`, err?.details));
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', (e) => {
        reject(
          new EdgeidError(
            'admin_server_unreachable',
            `cannot reach ${this.target.server} (server from ${this.target.from.server}, CA from ${this.target.from.ca}): ${e.message}`,
          ),
        );
      });
      req.end(data);
    });
  }
}
