/**
 * The edgeid web console (Preact). Every string from the server, devices' ones included, is
 * rendered as a text node by JSX; nothing is inserted as HTML. Routes are the URL's fragment
 * (#/devices, #/devices/ID, #/tokens, #/alerts, #/audit, #/users).
 */
import { render } from 'preact';
import { useCallback, useEffect, useMemo, useRef, useState } from 'preact/hooks';
import QRCode from 'qrcode';
import './console.css';
import {
  admin,
  ApiError,
  loginOptions,
  logout,
  may,
  qs,
  session,
  setCsrf,
  type Alert,
  type AuditRow,
  type Device,
  type LiveEvent,
  type SessionInfo,
} from './api.js';

const REVOKE_REASONS = [
  'unspecified',
  'key-compromise',
  'affiliation-changed',
  'superseded',
  'cessation-of-operation',
  'privilege-withdrawn',
] as const;
const PAGE = 100;

const fmt = (iso: string | null | undefined) => (iso ? iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '—');
const errText = (e: unknown) => (e instanceof ApiError ? `${e.code}: ${e.message}` : String(e));

function useHash(): string {
  const [h, setH] = useState(location.hash || '#/devices');
  useEffect(() => {
    const on = () => setH(location.hash || '#/devices');
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return h;
}

/** The live device events of this session (one EventSource for the page). */
const liveListeners = new Set<(e: LiveEvent) => void>();
let source: EventSource | null = null;
function startLive(setState: (s: string) => void) {
  source?.close();
  source = new EventSource('/console/api/events');
  source.addEventListener('open', () => setState('live'));
  source.addEventListener('error', () => setState('reconnecting'));
  source.addEventListener('device', (m) => {
    const e = JSON.parse((m as MessageEvent<string>).data) as LiveEvent;
    for (const fn of liveListeners) fn(e);
  });
}
function useLive(fn: (e: LiveEvent) => void) {
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => {
    const l = (e: LiveEvent) => ref.current(e);
    liveListeners.add(l);
    return () => void liveListeners.delete(l);
  }, []);
}

// --- login ---------------------------------------------------------------------------------------

const LOGIN_ERRORS: Record<string, string> = {
  console_login_failed: 'That token is not a valid personal token of an enabled user.',
  rate_limited: 'Too many login attempts from this address; wait a minute.',
  csrf_failed: 'The login did not come from this page.',
};

function Login(props: { reason?: string }) {
  const [sso, setSso] = useState(false);
  useEffect(() => {
    loginOptions()
      .then((o) => setSso(o.sso))
      .catch(() => undefined);
  }, []);
  const code = new URLSearchParams(location.search).get('error');
  const message = code ? (LOGIN_ERRORS[code] ?? 'The login was refused.') : props.reason;
  return (
    <main class="login">
      <h1>edgeid console</h1>
      <form method="post" action="/console/login">
        <label>
          Personal token
          <input name="token" type="password" autocomplete="off" required data-testid="token" />
        </label>
        <button type="submit" data-testid="login">
          Sign in
        </button>
      </form>
      {sso && (
        <p>
          <a href="/console/oidc/login" data-testid="sso">
            Sign in with SSO
          </a>
        </p>
      )}
      {message && (
        <p class="error" role="alert" data-testid="login-error">
          {message}
        </p>
      )}
    </main>
  );
}

// --- shell ---------------------------------------------------------------------------------------

function App() {
  const [me, setMe] = useState<SessionInfo | null>(null);
  const [state, setState] = useState<'loading' | 'in' | 'out'>('loading');
  const [live, setLive] = useState('connecting');
  const [reason, setReason] = useState<string | undefined>();
  const hash = useHash();
  useEffect(() => {
    session()
      .then((s) => {
        setCsrf(s.csrf);
        setMe(s);
        setState('in');
        startLive(setLive);
      })
      .catch(() => setState('out'));
    const out = () => {
      source?.close();
      setReason('Your session ended; sign in again.');
      setState('out');
    };
    window.addEventListener('edgeid-signed-out', out);
    return () => window.removeEventListener('edgeid-signed-out', out);
  }, []);
  if (state === 'loading') return <p class="muted">Loading…</p>;
  if (state === 'out' || !me) return <Login {...(reason ? { reason } : {})} />;
  const role = me.user.role;
  const [, page = 'devices', arg] = hash.split('/');
  const nav = [
    ['devices', 'Devices'],
    ...(may(role, 'technician') ? [['tokens', 'Tokens']] : []),
    ['alerts', 'Alerts'],
    ['audit', 'Audit'],
    ...(may(role, 'admin') ? [['users', 'Users']] : []),
  ];
  return (
    <div>
      <header>
        <strong>edgeid</strong>
        <nav>
          {nav.map(([k, label]) => (
            <a href={`#/${k}`} class={page === k ? 'active' : ''} data-testid={`nav-${k}`}>
              {label}
            </a>
          ))}
        </nav>
        <span class="who" data-testid="who">
          {me.user.name} ({role}
          {me.user.zones ? `; zones ${me.user.zones.join(', ')}` : ''})
        </span>
        <span class={`live ${live}`} data-testid="live">
          {live}
        </span>
        <button
          data-testid="logout"
          onClick={async () => {
            await logout().catch(() => undefined);
            source?.close();
            location.hash = '';
            setReason('Signed out.');
            setState('out');
          }}
        >
          Sign out
        </button>
      </header>
      <main>
        {page === 'devices' && !arg && <Devices me={me} />}
        {page === 'devices' && arg && <DeviceDetail id={decodeURIComponent(arg)} me={me} />}
        {page === 'tokens' && <Tokens me={me} />}
        {page === 'alerts' && <Alerts me={me} />}
        {page === 'audit' && <Audit />}
        {page === 'users' && <Users />}
      </main>
    </div>
  );
}

// --- devices -------------------------------------------------------------------------------------

/** The server's sort keys (GET /v1/admin/devices sort=…&order=…): the whole fleet is sorted, not the page on screen. */
type SortKey = 'enrolled' | 'name' | 'lastSeen' | 'expiry';

function Devices({ me }: { me: SessionInfo }) {
  const [zone, setZone] = useState('');
  const [status, setStatus] = useState('');
  const [stale, setStale] = useState('');
  const [posture, setPosture] = useState('');
  const [search, setSearch] = useState('');
  const [sort, setSort] = useState<SortKey>('enrolled');
  const [order, setOrder] = useState<'asc' | 'desc'>('asc');
  const [cursors, setCursors] = useState<string[]>([]);
  const [rows, setRows] = useState<Device[]>([]);
  const [next, setNext] = useState<string | undefined>();
  const [error, setError] = useState('');
  const [flash, setFlash] = useState<Record<string, string>>({});
  const after = cursors.at(-1);

  const load = useCallback(() => {
    setError('');
    admin
      .get<{ devices: Device[]; next?: string }>(
        `/devices${qs({ zone, status, stale, posture, q: search.trim().slice(0, 64), sort, order, limit: PAGE, after })}`,
      )
      .then((r) => {
        setRows(r.devices);
        setNext(r.next);
      })
      .catch((e) => setError(errText(e)));
  }, [zone, status, stale, posture, search, sort, order, after]);
  useEffect(load, [load]);
  useLive((e) => {
    setRows((rs) => rs.map((d) => (d.id === e.device.id ? e.device : d)));
    setFlash((f) => ({ ...f, [e.device.id]: e.kind }));
  });

  // filters, search and sorting run on the server, one page at a time (the cursor carries the sort)
  const shown = rows;

  const resetPaging = () => setCursors([]);
  return (
    <section>
      <h2>Devices</h2>
      <div class="filters">
        <label>
          Zone
          <input
            value={zone}
            list="zones"
            placeholder={me.user.zones ? me.user.zones.join(', ') : 'any'}
            onChange={(e) => {
              setZone((e.target as HTMLInputElement).value.trim());
              resetPaging();
            }}
            data-testid="filter-zone"
          />
          {me.user.zones && (
            <datalist id="zones">
              {me.user.zones.map((z) => (
                <option value={z} />
              ))}
            </datalist>
          )}
        </label>
        <label>
          State
          <select
            value={status}
            onChange={(e) => {
              setStatus((e.target as HTMLSelectElement).value);
              resetPaging();
            }}
            data-testid="filter-status"
          >
            <option value="">any</option>
            {['active', 'quarantined', 'revoked', 'retired'].map((s) => (
              <option value={s}>{s}</option>
            ))}
          </select>
        </label>
        <label>
          Stale
          <select
            value={stale}
            onChange={(e) => {
              setStale((e.target as HTMLSelectElement).value);
              resetPaging();
            }}
          >
            <option value="">any</option>
            <option value="true">stale</option>
            <option value="false">not stale</option>
          </select>
        </label>
        <label>
          Posture
          <select
            value={posture}
            onChange={(e) => {
              setPosture((e.target as HTMLSelectElement).value);
              resetPaging();
            }}
          >
            <option value="">any</option>
            <option value="ok">ok</option>
            <option value="quarantined">quarantined</option>
            <option value="baseline-window">baseline window</option>
          </select>
        </label>
        <label>
          Search
          <input
            value={search}
            placeholder="id, name, owner, address"
            onChange={(e) => {
              setSearch((e.target as HTMLInputElement).value);
              resetPaging();
            }}
            data-testid="search"
          />
        </label>
        <label>
          Sort
          <select
            value={sort}
            onChange={(e) => {
              setSort((e.target as HTMLSelectElement).value as SortKey);
              resetPaging();
            }}
            data-testid="sort"
          >
            <option value="enrolled">enrolled</option>
            <option value="name">name</option>
            <option value="lastSeen">last seen</option>
            <option value="expiry">certificate expiry</option>
          </select>
        </label>
        <label>
          Order
          <select
            value={order}
            onChange={(e) => {
              setOrder((e.target as HTMLSelectElement).value as 'asc' | 'desc');
              resetPaging();
            }}
            data-testid="order"
          >
            <option value="asc">ascending</option>
            <option value="desc">descending</option>
          </select>
        </label>
      </div>
      {error && <p class="error">{error}</p>}
      <table class="grid" data-testid="devices">
        <thead>
          <tr>
            <th>Name</th>
            <th>Id</th>
            <th>Zone</th>
            <th>Owner</th>
            <th>State</th>
            <th>Posture</th>
            <th>Last seen</th>
            <th>Address</th>
            <th>Certificate until</th>
          </tr>
        </thead>
        <tbody>
          {shown.map((d) => (
            <tr data-device-id={d.id} class={flash[d.id] ? 'flash' : ''}>
              <td>
                <a href={`#/devices/${encodeURIComponent(d.id)}`}>{d.name ?? '(unnamed)'}</a>
              </td>
              <td class="mono">{d.id}</td>
              <td>{d.zone}</td>
              <td>{d.owner}</td>
              <td>
                <span class={`state ${d.status}`} data-testid="state">
                  {d.status}
                </span>
                {d.stale && <span class="state stale">stale</span>}
              </td>
              <td>{d.posture}</td>
              <td>{fmt(d.lastSeen)}</td>
              <td class="mono">{d.lastIp ?? '—'}</td>
              <td>{fmt(d.certificateNotAfter)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <div class="pager">
        <button disabled={cursors.length === 0} onClick={() => setCursors((c) => c.slice(0, -1))}>
          Previous
        </button>
        <span class="muted">
          page {cursors.length + 1}; {shown.length} shown
        </span>
        <button disabled={!next} onClick={() => next && setCursors((c) => [...c, next])} data-testid="next-page">
          Next
        </button>
      </div>
    </section>
  );
}

// --- device detail -------------------------------------------------------------------------------

function DeviceDetail({ id, me }: { id: string; me: SessionInfo }) {
  const [d, setD] = useState<Device | null>(null);
  const [audit, setAudit] = useState<AuditRow[]>([]);
  const [alerts, setAlerts] = useState<Alert[] | 'unavailable' | null>(null);
  const [error, setError] = useState('');
  const [notice, setNotice] = useState('');
  const [dialog, setDialog] = useState(false);
  const load = useCallback(() => {
    admin
      .get<{ device: Device }>(`/devices/${encodeURIComponent(id)}`)
      .then((r) => setD(r.device))
      .catch((e) => setError(errText(e)));
    admin
      .get<{ rows: AuditRow[] }>(`/audit${qs({ deviceId: id, order: 'desc', limit: 50 })}`)
      .then((r) => setAudit(r.rows))
      .catch(() => setAudit([]));
    admin
      .get<{ alerts: Alert[] }>(`/alerts${qs({ deviceId: id, limit: 50 })}`)
      .then((r) => setAlerts(r.alerts))
      .catch((e) => setAlerts(e instanceof ApiError && e.status === 404 ? 'unavailable' : []));
  }, [id]);
  useEffect(load, [load]);
  useLive((e) => {
    if (e.device.id !== id) return;
    setNotice(`${e.kind} at ${fmt(e.time)}`);
    load();
  });
  if (error) return <p class="error">{error}</p>;
  if (!d) return <p class="muted">Loading…</p>;
  const operator = may(me.user.role, 'operator');
  const live = d.status === 'active' || d.status === 'quarantined';
  const act = async (what: string, path: string, body: unknown = {}) => {
    setNotice('');
    try {
      await admin.post(path, body);
      setNotice(`${what}: done`);
      load();
    } catch (e) {
      setNotice(`${what} refused: ${errText(e)}`);
    }
  };
  // per PCR: the approved value (the device's baseline, else the zone's golden value) against the
  // last quote the server verified; a golden zone also accepts the device's approved baseline
  const quote = d.lastQuote ?? null;
  const pcrRows = [...new Set([...Object.keys(d.baseline ?? {}), ...Object.keys(quote?.golden ?? {}), ...Object.keys(quote?.pcrs ?? {})])]
    .sort((a, b) => Number(a) - Number(b))
    .map((pcr) => {
      const approved = d.baseline?.[pcr] ?? quote?.golden?.[pcr] ?? null;
      const last = quote?.pcrs[pcr] ?? null;
      const equal = last !== null && (last === d.baseline?.[pcr] || last === quote?.golden?.[pcr]);
      return { pcr, approved, fromGolden: d.baseline?.[pcr] === undefined && approved !== null, last, equal };
    });
  return (
    <section>
      <p>
        <a href="#/devices">← Devices</a>
      </p>
      <h2 data-testid="device-title">{d.name ?? d.id}</h2>
      {notice && (
        <p class="notice" data-testid="notice">
          {notice}
        </p>
      )}
      <dl class="facts">
        <dt>Id</dt>
        <dd class="mono">{d.id}</dd>
        <dt>State</dt>
        <dd>
          <span class={`state ${d.status}`} data-testid="detail-state">
            {d.status}
          </span>
          {d.statusReason ? ` (${d.statusReason})` : ''}
          {d.stale && <span class="state stale">stale</span>}
        </dd>
        <dt>Zone / owner</dt>
        <dd>
          {d.zone} / {d.owner}
        </dd>
        <dt>Purpose</dt>
        <dd>{d.purpose ?? '—'}</dd>
        <dt>Enrolled</dt>
        <dd>
          {fmt(d.enrolledAt)} by {d.enrolledBy}
        </dd>
        <dt>Last seen</dt>
        <dd>
          {fmt(d.lastSeen)} from <span class="mono">{d.lastIp ?? '—'}</span>
        </dd>
        <dt>EK</dt>
        <dd class="mono">
          {d.ekHash.slice(0, 16)}… {d.ekVerified ? `verified (${d.ekIssuer ?? ''})` : 'not verified'}
        </dd>
      </dl>
      {operator && (
        <div class="actions" data-testid="actions">
          {live && (
            <button class="danger" onClick={() => setDialog(true)} data-testid="revoke">
              Revoke…
            </button>
          )}
          {live && (
            <button onClick={() => confirm(`Retire ${d.name ?? d.id}?`) && act('Retire', `/devices/${d.id}/retire`)} data-testid="retire">
              Retire
            </button>
          )}
          {d.status === 'quarantined' && (
            <button onClick={() => act('Approve baseline', `/devices/${d.id}/approve-baseline`)} data-testid="approve">
              Approve baseline
            </button>
          )}
          {live && (
            <button onClick={() => act('Renew now', `/devices/${d.id}/control`, { type: 'renew-now' })} data-testid="renew-now">
              Renew now
            </button>
          )}
        </div>
      )}
      {dialog && (
        <RevokeDialog
          device={d}
          onCancel={() => setDialog(false)}
          onRevoke={async (reason) => {
            setDialog(false);
            await act('Revoke', `/devices/${d.id}/revoke`, { reason });
          }}
        />
      )}
      <h3>Certificates</h3>
      <table class="grid" data-testid="certificates">
        <thead>
          <tr>
            <th>Serial</th>
            <th>Not before</th>
            <th>Expires</th>
            <th>Revoked</th>
          </tr>
        </thead>
        <tbody>
          {(d.certificates ?? []).map((c) => (
            <tr>
              <td class="mono">{c.serial}</td>
              <td>{fmt(c.notBefore)}</td>
              <td>{fmt(c.notAfter)}</td>
              <td>{c.revokedAt ? `${fmt(c.revokedAt)} (${c.reason ?? ''})` : '—'}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <h3>Posture</h3>
      <p class="muted">
        {d.posture}
        {d.baselineWindowUntil ? `; baseline window open until ${fmt(d.baselineWindowUntil)}` : ''}.{' '}
        {quote
          ? `Last quote verified ${fmt(quote.at)} (accepted or refused), compared with the baseline PCR by PCR.`
          : 'No quote recorded yet.'}
      </p>
      <table class="grid" data-testid="posture">
        <thead>
          <tr>
            <th>PCR</th>
            <th>Baseline (sha256)</th>
            <th>Last quote (sha256)</th>
            <th>Compared</th>
          </tr>
        </thead>
        <tbody>
          {pcrRows.map((r) => (
            <tr data-pcr={r.pcr}>
              <td>{r.pcr}</td>
              <td class="mono">
                {r.approved ?? '—'}
                {r.fromGolden && <span class="muted"> (zone golden value)</span>}
              </td>
              <td class="mono">{r.last ?? '—'}</td>
              <td class={r.last !== null && !r.equal ? 'bad' : ''} data-testid="pcr-compare">
                {r.last === null ? 'not quoted' : r.equal ? 'equal' : 'differs'}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {d.eventLog && d.eventLog.diff.length > 0 && (
        <pre class="diff" data-testid="eventlog-diff">
          {d.eventLog.diff.join('\n')}
        </pre>
      )}
      <h3>Claims</h3>
      <pre class="claims">{d.claims ? JSON.stringify(d.claims, null, 2) : '—'}</pre>
      <h3>Alerts</h3>
      {alerts === 'unavailable' ? (
        <p class="muted" data-testid="alerts-unavailable">
          Alerts are not available on this server.
        </p>
      ) : (
        <AlertTable alerts={alerts ?? []} me={me} onAck={load} />
      )}
      <h3>Audit trail</h3>
      <AuditTable rows={audit} />
    </section>
  );
}

function RevokeDialog(props: { device: Device; onCancel: () => void; onRevoke: (reason: string) => void }) {
  const [reason, setReason] = useState<string>('key-compromise');
  const [typed, setTyped] = useState('');
  const expected = props.device.name ?? props.device.id;
  return (
    <div class="dialog" role="dialog" aria-modal="true" data-testid="revoke-dialog">
      <h3>Revoke {expected}</h3>
      <p>Its certificates go on the CRL, the broker drops it and its agent is told to wipe its keys. This cannot be undone.</p>
      <label>
        Reason
        <select value={reason} onChange={(e) => setReason((e.target as HTMLSelectElement).value)} data-testid="revoke-reason">
          {REVOKE_REASONS.map((r) => (
            <option value={r}>{r}</option>
          ))}
        </select>
      </label>
      <label>
        Type the device name <span class="mono">{expected}</span> to confirm
        <input value={typed} onInput={(e) => setTyped((e.target as HTMLInputElement).value)} data-testid="revoke-confirm" />
      </label>
      <div class="actions">
        <button onClick={props.onCancel}>Cancel</button>
        <button class="danger" disabled={typed !== expected} onClick={() => props.onRevoke(reason)} data-testid="revoke-submit">
          Revoke
        </button>
      </div>
    </div>
  );
}

// --- tokens --------------------------------------------------------------------------------------

interface TokenView {
  id: string;
  zone: string;
  owner: string;
  name: string | null;
  createdBy: string;
  createdAt: string;
  expiresAt: string;
  usedAt: string | null;
  deviceId: string | null;
}

function Qr({ text }: { text: string }) {
  const { size, data } = QRCode.create(text, { errorCorrectionLevel: 'M' }).modules;
  let d = '';
  for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) if (data[y * size + x]) d += `M${x + 4},${y + 4}h1v1h-1z`;
  return (
    <svg class="qr" viewBox={`0 0 ${size + 8} ${size + 8}`} width={(size + 8) * 4} height={(size + 8) * 4} data-testid="qr">
      <rect width={size + 8} height={size + 8} fill="#fff" />
      <path d={d} fill="#000" />
    </svg>
  );
}

function Tokens({ me }: { me: SessionInfo }) {
  const [list, setList] = useState<TokenView[]>([]);
  const [created, setCreated] = useState<{ token: string; uri: string; expiresAt: string; name: string | null } | null>(null);
  const [error, setError] = useState('');
  const [zone, setZone] = useState(me.user.zones?.[0] ?? 'default');
  const [owner, setOwner] = useState('');
  const [name, setName] = useState('');
  const [ttl, setTtl] = useState('8h');
  const load = useCallback(() => {
    admin
      .get<{ tokens: TokenView[] }>(`/tokens${qs({ limit: 200 })}`)
      .then((r) => setList(r.tokens.slice().reverse()))
      .catch((e) => setError(errText(e)));
  }, []);
  useEffect(load, [load]);
  const ttlSeconds = (s: string) => {
    const m = /^(\d+)([smhd]?)$/.exec(s.trim());
    return m ? Number(m[1]) * ({ s: 1, m: 60, h: 3600, d: 86400, '': 1 } as Record<string, number>)[m[2]!]! : undefined;
  };
  return (
    <section>
      <h2>Enrollment tokens</h2>
      <form
        class="filters"
        onSubmit={async (e) => {
          e.preventDefault();
          setError('');
          try {
            const t = ttlSeconds(ttl);
            const r = await admin.post<{ token: string; uri: string; expiresAt: string; name: string | null }>('/tokens', {
              zone,
              owner,
              ...(name ? { name } : {}),
              ...(t ? { ttlSeconds: t } : {}),
            });
            setCreated(r);
            load();
          } catch (err) {
            setError(errText(err));
          }
        }}
      >
        <label>
          Zone
          <input value={zone} onInput={(e) => setZone((e.target as HTMLInputElement).value)} required data-testid="token-zone" />
        </label>
        <label>
          Owner
          <input value={owner} onInput={(e) => setOwner((e.target as HTMLInputElement).value)} required data-testid="token-owner" />
        </label>
        <label>
          Device name
          <input value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} data-testid="token-name" />
        </label>
        <label>
          Valid for
          <input value={ttl} onInput={(e) => setTtl((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit" data-testid="token-create">
          Create token
        </button>
      </form>
      {error && <p class="error">{error}</p>}
      {created && (
        <div class="once" data-testid="token-created">
          <p>
            <strong>Shown once.</strong> Give this to the installer of {created.name ?? 'the device'}; it expires {fmt(created.expiresAt)}.
          </p>
          <Qr text={created.uri} />
          <p class="mono wrap" data-testid="token-uri">
            {created.uri}
          </p>
          <button onClick={() => setCreated(null)}>Done</button>
        </div>
      )}
      <table class="grid" data-testid="tokens">
        <thead>
          <tr>
            <th>Id</th>
            <th>Zone</th>
            <th>Owner</th>
            <th>Device name</th>
            <th>Created by</th>
            <th>Expires</th>
            <th>Used</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {list.map((t) => (
            <tr>
              <td class="mono">{t.id}</td>
              <td>{t.zone}</td>
              <td>{t.owner}</td>
              <td>{t.name ?? '—'}</td>
              <td>{t.createdBy}</td>
              <td>{fmt(t.expiresAt)}</td>
              <td>{t.usedAt ? `${fmt(t.usedAt)} → ${t.deviceId ?? ''}` : '—'}</td>
              <td>
                {!t.usedAt &&
                  Date.parse(t.expiresAt) > Date.now() &&
                  (may(me.user.role, 'operator') || t.createdBy === `user:${me.user.name}`) && (
                    <button
                      onClick={() =>
                        confirm(`Expire token ${t.id} now?`) &&
                        admin
                          .post(`/tokens/${t.id}/expire`)
                          .then(load)
                          .catch((e) => setError(errText(e)))
                      }
                      data-testid="token-expire"
                    >
                      Expire
                    </button>
                  )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

// --- alerts --------------------------------------------------------------------------------------

function AlertTable({ alerts, me, onAck }: { alerts: Alert[]; me: SessionInfo; onAck: () => void }) {
  const [error, setError] = useState('');
  if (alerts.length === 0) return <p class="muted">No alerts.</p>;
  return (
    <div>
      {error && <p class="error">{error}</p>}
      <table class="grid" data-testid="alerts">
        <thead>
          <tr>
            <th>Severity</th>
            <th>Rule</th>
            <th>Summary</th>
            <th>Device / address</th>
            <th>First / last seen</th>
            <th>Count</th>
            <th>State</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {alerts.map((a) => (
            <tr>
              <td>
                <span class={`sev ${a.severity}`}>{a.severity}</span>
              </td>
              <td>{a.rule}</td>
              <td>{a.summary}</td>
              <td class="mono">
                {a.deviceId ? <a href={`#/devices/${encodeURIComponent(a.deviceId)}`}>{a.deviceId}</a> : (a.address ?? '—')}
              </td>
              <td>
                {fmt(a.firstSeen)} / {fmt(a.lastSeen)}
              </td>
              <td>{a.count}</td>
              <td>{a.state === 'acknowledged' ? `acknowledged by ${a.acknowledgedBy ?? '?'} ${fmt(a.acknowledgedAt)}` : 'open'}</td>
              <td>
                {a.state === 'open' && may(me.user.role, 'operator') && (
                  <button
                    onClick={() =>
                      admin
                        .post(`/alerts/${encodeURIComponent(a.id)}/ack`, {})
                        .then(onAck)
                        .catch((e) => setError(errText(e)))
                    }
                  >
                    Acknowledge
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function Alerts({ me }: { me: SessionInfo }) {
  const [state, setState] = useState<'open' | 'acknowledged'>('open');
  const [alerts, setAlerts] = useState<Alert[] | 'unavailable' | null>(null);
  const [error, setError] = useState('');
  const load = useCallback(() => {
    admin
      .get<{ alerts: Alert[] }>(`/alerts${qs({ state, limit: 200 })}`)
      .then((r) => setAlerts(r.alerts))
      .catch((e) => (e instanceof ApiError && e.status === 404 ? setAlerts('unavailable') : setError(errText(e))));
  }, [state]);
  useEffect(load, [load]);
  return (
    <section>
      <h2>Alerts</h2>
      <div class="filters">
        {(['open', 'acknowledged'] as const).map((s) => (
          <button class={state === s ? 'active' : ''} onClick={() => setState(s)}>
            {s}
          </button>
        ))}
      </div>
      {error && <p class="error">{error}</p>}
      {alerts === 'unavailable' ? (
        <p class="muted" data-testid="alerts-unavailable">
          Alerts are not available on this server.
        </p>
      ) : (
        <AlertTable alerts={alerts ?? []} me={me} onAck={load} />
      )}
    </section>
  );
}

// --- audit ---------------------------------------------------------------------------------------

function AuditTable({ rows }: { rows: AuditRow[] }) {
  return (
    <table class="grid" data-testid="audit">
      <thead>
        <tr>
          <th>#</th>
          <th>Time</th>
          <th>Actor</th>
          <th>Event</th>
          <th>Device</th>
          <th>Address</th>
          <th>Outcome</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((r) => (
          <tr class={r.outcome === 'fail' ? 'failed' : ''}>
            <td>{r.seq}</td>
            <td>{fmt(r.time)}</td>
            <td>{r.actor}</td>
            <td>{r.event}</td>
            <td class="mono">{r.deviceId ?? '—'}</td>
            <td class="mono">{r.ip ?? '—'}</td>
            <td>{r.outcome === 'ok' ? 'ok' : `fail: ${r.reason ?? ''}`}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function Audit() {
  const [user, setUser] = useState('');
  const [deviceId, setDeviceId] = useState('');
  const [after, setAfter] = useState<number[]>([]);
  const [rows, setRows] = useState<AuditRow[]>([]);
  const [chain, setChain] = useState<string>('');
  const [error, setError] = useState('');
  const from = after.at(-1);
  useEffect(() => {
    setError('');
    admin
      .get<{ rows: AuditRow[] }>(`/audit${qs({ user, deviceId, before: from, order: 'desc', limit: PAGE })}`)
      .then((r) => setRows(r.rows))
      .catch((e) => setError(errText(e)));
  }, [user, deviceId, from]);
  return (
    <section>
      <h2>Audit log</h2>
      <p class="muted">Newest first.</p>
      <div class="filters">
        <label>
          User
          <input value={user} onChange={(e) => (setUser((e.target as HTMLInputElement).value.trim()), setAfter([]))} />
        </label>
        <label>
          Device id
          <input value={deviceId} onChange={(e) => (setDeviceId((e.target as HTMLInputElement).value.trim()), setAfter([]))} />
        </label>
        <button
          onClick={() => {
            setChain('checking…');
            admin
              .get<{ ok: boolean; rows: number; problem?: { seq: number; kind: string } }>('/audit/verify')
              .then((r) =>
                setChain(r.ok ? `chain intact (${r.rows} rows)` : `chain BROKEN at #${r.problem?.seq ?? '?'} (${r.problem?.kind ?? ''})`),
              )
              .catch((e) => setChain(errText(e)));
          }}
          data-testid="verify"
        >
          Verify chain
        </button>
        <span data-testid="chain">{chain}</span>
      </div>
      {error && <p class="error">{error}</p>}
      <AuditTable rows={rows} />
      <div class="pager">
        <button disabled={after.length === 0} onClick={() => setAfter((a) => a.slice(0, -1))}>
          Newer
        </button>
        <button disabled={rows.length < PAGE} onClick={() => setAfter((a) => [...a, rows.at(-1)!.seq])}>
          Older
        </button>
      </div>
    </section>
  );
}

// --- users ---------------------------------------------------------------------------------------

interface UserView {
  name: string;
  role: string;
  zones: string[] | null;
  createdBy: string;
  createdAt: string;
  expiresAt: string | null;
  disabledAt: string | null;
  bootstrap: boolean;
}

function Users() {
  const [users, setUsers] = useState<UserView[]>([]);
  const [error, setError] = useState('');
  const [shown, setShown] = useState<{ name: string; token: string } | null>(null);
  const [name, setName] = useState('');
  const [role, setRole] = useState('viewer');
  const [zones, setZones] = useState('');
  const load = useCallback(() => {
    admin
      .get<{ users: UserView[] }>('/users')
      .then((r) => setUsers(r.users))
      .catch((e) => setError(errText(e)));
  }, []);
  useEffect(load, [load]);
  const run = async (p: Promise<unknown>) => {
    setError('');
    try {
      const r = (await p) as { token?: string; name?: string };
      if (r?.token && r.name) setShown({ name: r.name, token: r.token });
      load();
    } catch (e) {
      setError(errText(e));
    }
  };
  return (
    <section>
      <h2>Users</h2>
      <form
        class="filters"
        onSubmit={(e) => {
          e.preventDefault();
          const z = zones
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean);
          void run(admin.post('/users', { name, role, ...(z.length ? { zones: z } : {}) }));
        }}
      >
        <label>
          Name
          <input value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} required />
        </label>
        <label>
          Role
          <select value={role} onChange={(e) => setRole((e.target as HTMLSelectElement).value)}>
            {['viewer', 'technician', 'operator', 'admin'].map((r) => (
              <option value={r}>{r}</option>
            ))}
          </select>
        </label>
        <label>
          Zones
          <input value={zones} placeholder="all" onInput={(e) => setZones((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit">Add user</button>
      </form>
      {error && <p class="error">{error}</p>}
      {shown && (
        <div class="once">
          <p>
            <strong>Shown once:</strong> the personal token of {shown.name}
          </p>
          <p class="mono wrap">{shown.token}</p>
          <button onClick={() => setShown(null)}>Done</button>
        </div>
      )}
      <table class="grid" data-testid="users">
        <thead>
          <tr>
            <th>Name</th>
            <th>Role</th>
            <th>Zones</th>
            <th>Created</th>
            <th>Expires</th>
            <th>State</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {users.map((u) => (
            <tr>
              <td>{u.name}</td>
              <td>{u.role}</td>
              <td>{u.zones ? u.zones.join(', ') : 'all'}</td>
              <td>
                {fmt(u.createdAt)} by {u.createdBy}
              </td>
              <td>{fmt(u.expiresAt)}</td>
              <td>{u.disabledAt ? `disabled ${fmt(u.disabledAt)}` : 'enabled'}</td>
              <td>
                {!u.disabledAt && (
                  <span>
                    <button onClick={() => confirm(`Disable ${u.name}?`) && run(admin.post(`/users/${u.name}/disable`))}>Disable</button>
                    <button onClick={() => confirm(`Rotate ${u.name}'s token?`) && run(admin.post(`/users/${u.name}/rotate-token`))}>
                      Rotate token
                    </button>
                  </span>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

render(<App />, document.getElementById('app')!);
