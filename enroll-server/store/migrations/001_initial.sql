-- The first schema (edgeid 0.1). Portable types only: TEXT / INTEGER / BLOB; times are
-- milliseconds since the epoch.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE tokens (
  id TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, zone TEXT NOT NULL, owner TEXT NOT NULL, name TEXT, purpose TEXT,
  created_by TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
  ek_hash TEXT, bound_at INTEGER, used_at INTEGER, device_id TEXT);

CREATE TABLE enroll_sessions (
  id TEXT PRIMARY KEY, token_id TEXT NOT NULL REFERENCES tokens(id), ek_hash TEXT NOT NULL, ak_pub BLOB NOT NULL,
  secret_hash BLOB NOT NULL, nonce BLOB NOT NULL, ip TEXT, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER);
CREATE INDEX enroll_sessions_token ON enroll_sessions(token_id);

CREATE TABLE devices (
  id TEXT PRIMARY KEY, zone TEXT NOT NULL, owner TEXT NOT NULL, name TEXT, purpose TEXT,
  status TEXT NOT NULL, status_reason TEXT, status_changed_at INTEGER, ek_hash TEXT NOT NULL, ak_pub BLOB NOT NULL,
  baseline TEXT, claims TEXT, baseline_window_until INTEGER, enrolled_by TEXT NOT NULL, enrolled_at INTEGER NOT NULL,
  retire_by INTEGER, last_seen INTEGER, last_ip TEXT);
CREATE INDEX devices_ek ON devices(ek_hash);

CREATE TABLE certificates (
  serial TEXT PRIMARY KEY, device_id TEXT NOT NULL REFERENCES devices(id), not_before INTEGER NOT NULL,
  not_after INTEGER NOT NULL, spki_hash TEXT NOT NULL, issued_at INTEGER NOT NULL, revoked_at INTEGER, reason TEXT);
CREATE INDEX certificates_device ON certificates(device_id);

CREATE TABLE nonces (
  value TEXT PRIMARY KEY, device_id TEXT NOT NULL REFERENCES devices(id), created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL, used_at INTEGER);
CREATE INDEX nonces_device ON nonces(device_id);

CREATE TABLE audit (
  seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, actor TEXT NOT NULL, event TEXT NOT NULL, device_id TEXT, ip TEXT,
  outcome TEXT NOT NULL, reason TEXT, details TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
