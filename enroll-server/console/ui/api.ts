/**
 * The console page's calls: the admin API under /console/api/v1/admin with the session cookie
 * (sent by the browser) and the session's CSRF token on every state-changing call.
 */
export interface SessionInfo {
  user: { name: string; role: Role; zones: string[] | null; via: 'token' | 'oidc' };
  csrf: string;
  idleTimeout: number;
  expiresAt: string;
  sso: boolean;
}
export type Role = 'viewer' | 'technician' | 'operator' | 'admin';
const ROLES: Role[] = ['viewer', 'technician', 'operator', 'admin'];
export const may = (have: Role, need: Role) => ROLES.indexOf(have) >= ROLES.indexOf(need);

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

let csrf = '';
export const setCsrf = (t: string) => {
  csrf = t;
};

async function call<T>(method: string, url: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (method !== 'GET') headers['x-csrf-token'] = csrf;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(url, {
    method,
    headers,
    credentials: 'same-origin',
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON */
  }
  if (!res.ok) {
    const e = (json as { error?: { code?: string; message?: string } } | null)?.error;
    if (res.status === 401) window.dispatchEvent(new CustomEvent('edgeid-signed-out'));
    throw new ApiError(res.status, e?.code ?? `http_${res.status}`, e?.message ?? res.statusText);
  }
  return json as T;
}

export const admin = {
  get: <T>(path: string) => call<T>('GET', `/console/api/v1/admin${path}`),
  post: <T>(path: string, body: unknown = {}) => call<T>('POST', `/console/api/v1/admin${path}`, body),
};
export const session = () => call<SessionInfo>('GET', '/console/api/session');
export const loginOptions = () => call<{ sso: boolean }>('GET', '/console/api/login-options');
export const logout = () => call<{ ok: boolean }>('POST', '/console/logout', {});

export const qs = (o: Record<string, string | number | undefined | null | false>) => {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(o)) if (v !== undefined && v !== null && v !== false && v !== '') p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : '';
};

export interface Device {
  id: string;
  zone: string;
  owner: string;
  name: string | null;
  purpose: string | null;
  status: 'active' | 'quarantined' | 'revoked' | 'retired';
  statusReason: string | null;
  posture: 'ok' | 'quarantined' | 'baseline-window';
  enrolledBy: string;
  enrolledAt: string;
  retireBy: string | null;
  lastSeen: string | null;
  lastIp: string | null;
  stale: boolean;
  baselineWindowUntil: string | null;
  ekHash: string;
  ekVerified?: boolean | null;
  ekIssuer?: string | null;
  claims: Record<string, unknown> | null;
  baseline: Record<string, string> | null;
  certificateNotAfter: string | null;
  certificates?: { serial: string; notBefore: string; notAfter: string; revokedAt: string | null; reason: string | null }[];
  eventLog?: { baselineSha256: string | null; currentSha256: string | null; diff: string[]; unchanged: number };
  /** Device detail only: the last quote the server verified (accepted or refused), and the zone's golden values (golden mode). */
  lastQuote?: { at: string; pcrs: Record<string, string>; golden: Record<string, string> | null } | null;
}

export interface LiveEvent {
  kind: string;
  seq: number | null;
  time: string;
  device: Device;
}

export interface Alert {
  id: string;
  rule: string;
  severity: 'info' | 'warning' | 'critical';
  deviceId: string | null;
  zone: string | null;
  address: string | null;
  summary: string;
  firstSeen: string;
  lastSeen: string;
  count: number;
  state: 'open' | 'acknowledged';
  acknowledgedBy: string | null;
  acknowledgedAt: string | null;
}

export interface AuditRow {
  seq: number;
  time: string;
  actor: string;
  event: string;
  deviceId: string | null;
  ip: string | null;
  outcome: 'ok' | 'fail';
  reason: string | null;
  details: Record<string, unknown> | null;
}
