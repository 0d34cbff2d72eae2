-- PostgreSQL dialect of migrations/010_users.sql: personal accounts of the admin API (zones: JSON
-- array text, NULL for every zone; only the SHA-256 of a user's token is stored).
CREATE TABLE users (
  name TEXT COLLATE "C" PRIMARY KEY, role TEXT NOT NULL, zones TEXT, token_hash BYTEA NOT NULL,
  created_by TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT,
  disabled_at BIGINT, disabled_by TEXT, token_rotated_at BIGINT, bootstrap INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX users_token_hash ON users(token_hash);
