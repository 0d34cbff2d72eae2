-- Personal accounts of the admin API (people, each with a role and optionally a set of zones).
-- A user's bearer token is never stored: only its SHA-256 (a 256-bit random token needs no
-- slow hash). zones is a JSON array of zone names, NULL for every zone. The bootstrap admin
-- token (data/admin-token) is adopted as the user `admin` at the first start after this
-- migration (the server reads the file; SQL cannot), see services/users.ts.
CREATE TABLE users (
  name TEXT PRIMARY KEY, role TEXT NOT NULL, zones TEXT, token_hash BLOB NOT NULL,
  created_by TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER,
  disabled_at INTEGER, disabled_by TEXT, token_rotated_at INTEGER, bootstrap INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX users_token_hash ON users(token_hash);
