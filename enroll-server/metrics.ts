import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** prom-client metrics of one server instance (own registry, so several servers can share a process in tests). */
export interface Metrics {
  registry: Registry;
  enrollments: Counter<'outcome'>;
  renewals: Counter<'outcome'>;
  failures: Counter<'code' | 'route'>;
  latency: Histogram<'route' | 'method' | 'status'>;
  devices: Gauge<'status'>;
}

export function createMetrics(deviceCounts: () => Promise<Record<string, number>>, defaults = true): Metrics {
  const registry = new Registry();
  if (defaults) collectDefaultMetrics({ register: registry });
  const devices = new Gauge({
    name: 'edgeid_devices',
    help: 'Devices by status',
    labelNames: ['status'] as const,
    registers: [registry],
    async collect() {
      const counts = await deviceCounts();
      for (const s of ['active', 'quarantined', 'revoked', 'retired']) this.set({ status: s }, counts[s] ?? 0);
    },
  });
  return {
    registry,
    enrollments: new Counter({
      name: 'edgeid_enrollments_total',
      help: 'Enrollments finished, by outcome',
      labelNames: ['outcome'] as const,
      registers: [registry],
    }),
    renewals: new Counter({
      name: 'edgeid_renewals_total',
      help: 'Renewals, by outcome',
      labelNames: ['outcome'] as const,
      registers: [registry],
    }),
    failures: new Counter({
      name: 'edgeid_failures_total',
      help: 'Failed requests by error code',
      labelNames: ['code', 'route'] as const,
      registers: [registry],
    }),
    latency: new Histogram({
      name: 'edgeid_http_request_duration_seconds',
      help: 'Request latency',
      labelNames: ['route', 'method', 'status'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    devices,
  };
}

/** `edgeid_alerts_open{rule,severity}`: open alerts, read from the store at each scrape (services/alerts.ts). */
export function registerAlertGauge(
  registry: Registry,
  counts: () => Promise<{ rule: string; severity: string; count: number }[]>,
): Gauge<'rule' | 'severity'> {
  return new Gauge({
    name: 'edgeid_alerts_open',
    help: 'Open (unacknowledged) alerts by rule and severity',
    labelNames: ['rule', 'severity'] as const,
    registers: [registry],
    async collect() {
      const rows = await counts();
      this.reset();
      for (const r of rows) this.set({ rule: r.rule, severity: r.severity }, r.count);
    },
  });
}
