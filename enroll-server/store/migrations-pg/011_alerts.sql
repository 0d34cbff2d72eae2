-- PostgreSQL dialect of migrations/011_alerts.sql: alerts raised by the rules on the audit stream,
-- the rules' own state (cursor, windows) and the webhook delivery queue. Times: ms since the epoch.
CREATE TABLE alerts (
  id TEXT COLLATE "C" PRIMARY KEY, rule TEXT COLLATE "C" NOT NULL, severity TEXT COLLATE "C" NOT NULL,
  alert_key TEXT COLLATE "C" NOT NULL, device_id TEXT COLLATE "C", zone TEXT COLLATE "C", address TEXT,
  summary TEXT NOT NULL, first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL, count BIGINT NOT NULL,
  state TEXT COLLATE "C" NOT NULL, acknowledged_by TEXT, acknowledged_at BIGINT);
CREATE UNIQUE INDEX alerts_open_key ON alerts(rule, alert_key) WHERE state = 'open';
CREATE INDEX alerts_first_seen ON alerts(first_seen, id);
CREATE INDEX alerts_state ON alerts(state, rule, severity);
CREATE TABLE alert_state (state_key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE alert_deliveries (
  id TEXT COLLATE "C" PRIMARY KEY, alert_id TEXT COLLATE "C" NOT NULL, body TEXT NOT NULL, state TEXT COLLATE "C" NOT NULL,
  attempts INTEGER NOT NULL, next_at BIGINT NOT NULL, last_status INTEGER, last_error TEXT,
  created_at BIGINT NOT NULL, delivered_at BIGINT);
CREATE INDEX alert_deliveries_due ON alert_deliveries(state, next_at);
CREATE INDEX alert_deliveries_created ON alert_deliveries(created_at, id);
