-- PostgreSQL dialect of migrations/008_event_log.sql: the last accepted and the approved TCG event log per device.
ALTER TABLE devices ADD COLUMN event_log BYTEA;
ALTER TABLE devices ADD COLUMN baseline_event_log BYTEA;
