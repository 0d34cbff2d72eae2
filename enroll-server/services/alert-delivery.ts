/**
 * Where alerts go besides the admin API and /metrics: a webhook and, optionally, syslog.
 *
 * Webhook: each new alert is queued in the store with its exact JSON body
 * (`{"type":"alert.opened","alert":Alert}`) in the transaction that opened it, so the queue
 * survives a restart. Each attempt POSTs the body with
 *   X-Edgeid-Timestamp: <unix seconds of this attempt>
 *   X-Edgeid-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>
 *   X-Edgeid-Delivery: <delivery id> (the same on every retry: receivers drop duplicates by it)
 * A receiver recomputes the MAC over the timestamp and the raw body and refuses a timestamp far
 * from its clock (replays). Any 2xx answer delivers it; anything else is retried with exponential
 * backoff and jitter (backoff × 2^(attempt-1), capped at maxBackoff, times a random 0.5 … 1)
 * until maxAttempts, then it is `failed`. Redirects are not followed. The secret comes from a
 * 0600 file and is never logged.
 *
 * Syslog: RFC 5424 messages over UDP (one per datagram, RFC 5426) or TCP (octet-counting
 * framing, RFC 6587 §3.4.1), structured data `[edgeid@32473 alert= rule= severity= device= zone=]`
 * (32473 is the example enterprise number of RFC 5612). Best effort: not queued.
 */
import { createHmac } from 'node:crypto';
import dgram from 'node:dgram';
import { readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import { EdgeidError } from '../../protocol/errors/index.js';
import type { AlertSyslogConfig, AlertWebhookConfig } from '../config.js';
import type { AlertDeliveryRecord, AlertRecord } from '../store/store.js';
import type { ServerContext } from './context.js';

export interface AlertDelivery {
  /** Looks at the webhook queue now. */
  poke(): void;
  /** Sends the alert to syslog (when configured). */
  syslog(a: AlertRecord): void;
  /** Resolves when no attempt is in flight. */
  idle(): Promise<void>;
  close(): Promise<void>;
}

/** Reads the webhook's HMAC key: a file only its owner may read (config_invalid otherwise; the content is never shown). */
export function readWebhookSecret(file: string): Buffer {
  let mode: number;
  try {
    mode = statSync(file).mode;
  } catch (e) {
    throw new EdgeidError(
      'config_invalid',
      `config: alerts.webhook.secretFile: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      {
        field: 'alerts.webhook.secretFile',
      },
    );
  }
  if ((mode & 0o077) !== 0)
    throw new EdgeidError(
      'config_invalid',
      `config: alerts.webhook.secretFile: ${file} must be mode 0600 (it is ${(mode & 0o777).toString(8)})`,
      {
        field: 'alerts.webhook.secretFile',
      },
    );
  const secret = Buffer.from(readFileSync(file, 'utf8').trim(), 'utf8');
  if (secret.length < 16)
    throw new EdgeidError('config_invalid', `config: alerts.webhook.secretFile: ${file} must hold at least 16 characters`, {
      field: 'alerts.webhook.secretFile',
    });
  return secret;
}

/** The signature header's value for a body sent at `timestamp` (unix seconds). */
export function webhookSignature(secret: Buffer, timestamp: string, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(`${timestamp}.${body}`, 'utf8').digest('hex')}`;
}

/** The delay before retry number `attempt` (1 = the first retry), in ms. */
export function backoffMs(cfg: AlertWebhookConfig, attempt: number, random = Math.random): number {
  const base = Math.min(cfg.maxBackoff, cfg.backoff * 2 ** Math.max(0, attempt - 1)) * 1000;
  return Math.round(base * (0.5 + random() / 2));
}

/** Printable text for syslog: C0/C1 controls and DEL removed (they end or forge lines in a log viewer), bounded. */
export function stripControls(s: string, max = 1024): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, '').slice(0, max);
}

const SEVERITY_CODE = { critical: 2, warning: 4, info: 6 } as const;

/** One RFC 5424 message (§6) for an alert. */
export function syslogMessage(cfg: AlertSyslogConfig, a: AlertRecord, now: number, hostname = os.hostname()): string {
  // §6.3.3: inside PARAM-VALUE, '"', '\' and ']' are escaped with '\'
  const param = (v: string | null) => stripControls(v ?? '-', 256).replace(/(["\\\]])/g, '\\$1');
  const host =
    stripControls(hostname)
      .replace(/[^!-~]/g, '')
      .slice(0, 255) || '-';
  const sd = `[edgeid@32473 alert="${param(a.id)}" rule="${param(a.rule)}" severity="${param(a.severity)}" device="${param(a.deviceId)}" zone="${param(a.zone)}" count="${a.count}"]`;
  return `<${cfg.facility * 8 + SEVERITY_CODE[a.severity]}>1 ${new Date(now).toISOString()} ${host} ${cfg.appName} ${process.pid} alert ${sd} ${stripControls(a.summary)}`;
}

export function startAlertDelivery(ctx: ServerContext): AlertDelivery {
  const cfg = ctx.config.alerts.webhook;
  const sl = ctx.config.alerts.syslog;
  const log = ctx.log.child({ part: 'alerts' });
  const secret = cfg ? readWebhookSecret(cfg.secretFile) : null;
  const ca = cfg?.caFile ? readFileSync(cfg.caFile, 'utf8') : undefined;
  let timer: NodeJS.Timeout | null = null;
  let running: Promise<void> | null = null;
  let again = false;
  let closed = false;
  let udp: dgram.Socket | null = null;

  const post = (d: AlertDeliveryRecord): Promise<{ status: number | null; error: string | null }> =>
    new Promise((resolve) => {
      const url = new URL(cfg!.url);
      // the wall clock, which the receiver compares with its own (never a test's moved clock)
      const ts = String(Math.floor(Date.now() / 1000));
      const body = Buffer.from(d.body, 'utf8');
      const mod = url.protocol === 'https:' ? https : http;
      const req = mod.request(
        url,
        {
          method: 'POST',
          timeout: cfg!.timeout * 1000,
          ...(ca ? { ca } : {}),
          headers: {
            'content-type': 'application/json',
            'content-length': String(body.length),
            'user-agent': 'edgeid-server',
            'x-edgeid-event': 'alert.opened',
            'x-edgeid-delivery': d.id,
            'x-edgeid-timestamp': ts,
            'x-edgeid-signature': webhookSignature(secret!, ts, d.body),
          },
        },
        (res) => {
          // the status is the answer; the body is not read (a receiver trickling it would hold the queue)
          clearTimeout(deadline);
          resolve({ status: res.statusCode ?? null, error: null });
          res.destroy();
        },
      );
      // `timeout` bounds the whole attempt up to the status line and headers, not only a silent
      // socket: a receiver sending a byte now and then must not hold every later delivery
      const deadline = setTimeout(() => req.destroy(new Error('timed out')), cfg!.timeout * 1000);
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(deadline);
        resolve({ status: null, error: (e.code ?? e.message).slice(0, 100) });
      });
      req.end(body);
    });

  const attempt = async (d: AlertDeliveryRecord): Promise<void> => {
    const r = await post(d);
    const attempts = d.attempts + 1;
    const now = ctx.now();
    if (r.status !== null && r.status >= 200 && r.status < 300) {
      await ctx.store.updateAlertDelivery(d.id, { state: 'delivered', attempts, lastStatus: r.status, lastError: null, deliveredAt: now });
      log.info({ delivery: d.id, alert: d.alertId, attempts }, 'alert webhook delivered');
      return;
    }
    const error = r.error ?? `HTTP ${r.status}`;
    const failed = attempts >= cfg!.maxAttempts;
    await ctx.store.updateAlertDelivery(d.id, {
      state: failed ? 'failed' : 'pending',
      attempts,
      lastStatus: r.status,
      lastError: error,
      nextAt: failed ? now : now + backoffMs(cfg!, attempts),
    });
    log.warn({ delivery: d.id, alert: d.alertId, attempts, status: r.status, error, failed }, 'alert webhook attempt failed');
  };

  const schedule = async () => {
    if (closed || !cfg) return;
    const next = await ctx.store.nextAlertDelivery().catch(() => null);
    if (timer) clearTimeout(timer);
    const wait = next === null ? 1000 : Math.max(10, Math.min(1000, next - ctx.now()));
    timer = setTimeout(() => {
      timer = null;
      poke();
    }, wait);
    timer.unref();
  };

  const run = async () => {
    for (;;) {
      const due = await ctx.store.dueAlertDeliveries(ctx.now(), 20);
      for (const d of due) {
        if (closed) return;
        await attempt(d);
      }
      if (due.length < 20) return;
    }
  };

  function poke(): void {
    if (closed || !cfg) return;
    if (running) {
      again = true;
      return;
    }
    running = run()
      .catch((e) => log.error({ err: e }, 'alert webhook run failed'))
      .finally(() => {
        running = null;
        if (again) {
          again = false;
          poke();
        } else void schedule();
      });
  }

  const sendSyslog = (a: AlertRecord): void => {
    if (!sl) return;
    const msg = Buffer.from(syslogMessage(sl, a, ctx.now()), 'utf8');
    const fail = (e: Error) => log.warn({ err: e.message, alert: a.id }, 'syslog send failed');
    if (sl.protocol === 'udp') {
      if (!udp) {
        udp = dgram.createSocket(net.isIPv6(sl.host) ? 'udp6' : 'udp4');
        udp.on('error', fail);
        udp.unref();
      }
      udp.send(msg, sl.port, sl.host, (e) => e && fail(e));
    } else {
      const s = net.connect({ host: sl.host, port: sl.port }, () => s.end(Buffer.concat([Buffer.from(`${msg.length} `), msg])));
      s.setTimeout(10_000, () => s.destroy(new Error('timed out')));
      s.on('error', fail);
    }
  };

  if (cfg) poke();
  return {
    poke,
    syslog: sendSyslog,
    async idle() {
      while (running) await running;
    },
    async close() {
      closed = true;
      if (timer) clearTimeout(timer);
      while (running) await running;
      udp?.close();
    },
  };
}
