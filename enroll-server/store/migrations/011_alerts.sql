-- Alerts raised by the rules evaluated on the audit stream (services/alerts.ts). One open alert
-- per (rule, alert_key) — the device id, the source network or a fleet-wide key — bumped (count,
-- last_seen) while it stays open; an occurrence after its acknowledgement opens a new row.
-- Times are milliseconds since the epoch.
CREATE TABLE alerts (
  id TEXT PRIMARY KEY, rule TEXT NOT NULL, severity TEXT NOT NULL, alert_key TEXT NOT NULL,
  device_id TEXT, zone TEXT, address TEXT, summary TEXT NOT NULL,
  first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, count INTEGER NOT NULL,
  state TEXT NOT NULL, acknowledged_by TEXT, acknowledged_at INTEGER);
CREATE UNIQUE INDEX alerts_open_key ON alerts(rule, alert_key) WHERE state = 'open';
CREATE INDEX alerts_first_seen ON alerts(first_seen, id);
CREATE INDEX alerts_state ON alerts(state, rule, severity);
-- The rules' own state, written in the same transaction as the alerts it produced: the seq of the
-- last audit row evaluated ('cursor'), sliding windows, networks seen per device, stale marks.
CREATE TABLE alert_state (state_key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Webhook deliveries (a persisted queue): the exact body is kept, so every retry sends the same
-- bytes; state pending | delivered | failed.
CREATE TABLE alert_deliveries (
  id TEXT PRIMARY KEY, alert_id TEXT NOT NULL, body TEXT NOT NULL, state TEXT NOT NULL,
  attempts INTEGER NOT NULL, next_at INTEGER NOT NULL, last_status INTEGER, last_error TEXT,
  created_at INTEGER NOT NULL, delivered_at INTEGER);
CREATE INDEX alert_deliveries_due ON alert_deliveries(state, next_at);
CREATE INDEX alert_deliveries_created ON alert_deliveries(created_at, id);
