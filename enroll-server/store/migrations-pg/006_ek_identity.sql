-- PostgreSQL dialect of migrations/006_ek_identity.sql (see there): the canonical EK identity,
-- the EK trust store changes of operators, supplier manifests. Flags stay INTEGER 0/1 as in SQLite.
ALTER TABLE devices ADD COLUMN ek_legacy INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET ek_legacy = 1;
ALTER TABLE devices ADD COLUMN ek_pub BYTEA;
ALTER TABLE devices ADD COLUMN ek_verified INTEGER;
ALTER TABLE devices ADD COLUMN ek_issuer TEXT;
-- one live device per EK: with several server instances this index is what decides a race
CREATE UNIQUE INDEX devices_live_ek ON devices(ek_hash) WHERE ek_legacy = 0 AND status IN ('active', 'quarantined');

CREATE TABLE ek_roots (
  fingerprint TEXT COLLATE "C" PRIMARY KEY,
  kind TEXT NOT NULL,
  der BYTEA,
  subject TEXT NOT NULL,
  not_after BIGINT,
  added_by TEXT NOT NULL,
  added_at BIGINT NOT NULL
);

CREATE TABLE ek_allow (
  id TEXT COLLATE "C" PRIMARY KEY,
  ek_id TEXT NOT NULL UNIQUE,
  zone TEXT NOT NULL,
  owner TEXT NOT NULL,
  name TEXT,
  source TEXT,
  imported_by TEXT NOT NULL,
  imported_at BIGINT NOT NULL,
  token_id TEXT COLLATE "C"
);

INSERT INTO meta (key, value) SELECT 'ek_cert_legacy_optional', '1' WHERE EXISTS (SELECT 1 FROM devices) OR EXISTS (SELECT 1 FROM tokens);

ALTER TABLE enroll_sessions ADD COLUMN ek_pub BYTEA;
ALTER TABLE enroll_sessions ADD COLUMN ek_verified INTEGER;
ALTER TABLE enroll_sessions ADD COLUMN ek_issuer TEXT;
