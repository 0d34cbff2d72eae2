-- PostgreSQL dialect of migrations/009_broker_monitors.sql: client certificates of monitoring tools.
CREATE TABLE broker_monitors (
  serial TEXT COLLATE "C" PRIMARY KEY, name TEXT COLLATE "C" NOT NULL, common_name TEXT NOT NULL, spki_hash TEXT NOT NULL,
  not_before BIGINT NOT NULL, not_after BIGINT NOT NULL, created_by TEXT NOT NULL, created_at BIGINT NOT NULL,
  removed_at BIGINT);
CREATE UNIQUE INDEX broker_monitors_live_name ON broker_monitors(name) WHERE removed_at IS NULL;
CREATE INDEX broker_monitors_removed ON broker_monitors(removed_at, not_after);
