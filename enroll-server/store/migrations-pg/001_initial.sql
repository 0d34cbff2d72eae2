-- The first schema, PostgreSQL dialect of migrations/001_initial.sql (same tables, columns and
-- meaning): TEXT, BIGINT for times (milliseconds since the epoch) and counters, BYTEA for blobs;
-- JSON values are stored as the same text the SQLite store keeps. Keys that listings sort on are
-- COLLATE "C" (byte order, as SQLite compares text), so pages come in the same order on both stores.
CREATE TABLE meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE tokens (
  id TEXT COLLATE "C" PRIMARY KEY, secret_hash BYTEA NOT NULL, zone TEXT NOT NULL, owner TEXT NOT NULL, name TEXT, purpose TEXT,
  created_by TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL,
  ek_hash TEXT, bound_at BIGINT, used_at BIGINT, device_id TEXT COLLATE "C");

CREATE TABLE enroll_sessions (
  id TEXT COLLATE "C" PRIMARY KEY, token_id TEXT COLLATE "C" NOT NULL REFERENCES tokens(id), ek_hash TEXT NOT NULL, ak_pub BYTEA NOT NULL,
  secret_hash BYTEA NOT NULL, nonce BYTEA NOT NULL, ip TEXT, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, used_at BIGINT);
CREATE INDEX enroll_sessions_token ON enroll_sessions(token_id);

CREATE TABLE devices (
  id TEXT COLLATE "C" PRIMARY KEY, zone TEXT NOT NULL, owner TEXT NOT NULL, name TEXT, purpose TEXT,
  status TEXT NOT NULL, status_reason TEXT, status_changed_at BIGINT, ek_hash TEXT NOT NULL, ak_pub BYTEA NOT NULL,
  baseline TEXT, claims TEXT, baseline_window_until BIGINT, enrolled_by TEXT NOT NULL, enrolled_at BIGINT NOT NULL,
  retire_by BIGINT, last_seen BIGINT, last_ip TEXT);
CREATE INDEX devices_ek ON devices(ek_hash);

CREATE TABLE certificates (
  serial TEXT COLLATE "C" PRIMARY KEY, device_id TEXT COLLATE "C" NOT NULL REFERENCES devices(id), not_before BIGINT NOT NULL,
  not_after BIGINT NOT NULL, spki_hash TEXT NOT NULL, issued_at BIGINT NOT NULL, revoked_at BIGINT, reason TEXT);
CREATE INDEX certificates_device ON certificates(device_id);

CREATE TABLE nonces (
  value TEXT COLLATE "C" PRIMARY KEY, device_id TEXT COLLATE "C" NOT NULL REFERENCES devices(id), created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL, used_at BIGINT);
CREATE INDEX nonces_device ON nonces(device_id);

CREATE TABLE audit (
  seq BIGINT PRIMARY KEY, time BIGINT NOT NULL, actor TEXT NOT NULL, event TEXT NOT NULL, device_id TEXT COLLATE "C", ip TEXT,
  outcome TEXT NOT NULL, reason TEXT, details TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
