-- Client certificates the server issued to monitoring tools (edgeid-admin broker monitor add):
-- one live row per name; a removed monitor keeps its row (removed_at set) until its certificate
-- expires, so its serial stays on the CRL.
CREATE TABLE broker_monitors (
  serial TEXT PRIMARY KEY, name TEXT NOT NULL, common_name TEXT NOT NULL, spki_hash TEXT NOT NULL,
  not_before INTEGER NOT NULL, not_after INTEGER NOT NULL, created_by TEXT NOT NULL, created_at INTEGER NOT NULL,
  removed_at INTEGER);
CREATE UNIQUE INDEX broker_monitors_live_name ON broker_monitors(name) WHERE removed_at IS NULL;
CREATE INDEX broker_monitors_removed ON broker_monitors(removed_at, not_after);
