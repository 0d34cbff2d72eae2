-- The EK identity becomes SHA-256 of the EK's DER SubjectPublicKeyInfo (one encoding per key),
-- computed by the enrollment service after the public area matched a TCG EK template. Rows
-- written before hold SHA-256 of the TPMT_PUBLIC bytes the client sent; the EK public area was
-- never stored, so they cannot be recomputed: they are marked ek_legacy = 1 and matched by the
-- service against both hashes of a presented EK (as sent and re-marshaled in canonical form).
ALTER TABLE devices ADD COLUMN ek_legacy INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET ek_legacy = 1;
-- canonical TPM2B_PUBLIC of the EK, so a later identity change can be computed from the row
ALTER TABLE devices ADD COLUMN ek_pub BLOB;
-- 1 = its EK certificate chained to the EK trust store; 0 = enrolled in a zone that opted out
-- (or from a manifest entry without a certificate check); NULL = enrolled before this was recorded
ALTER TABLE devices ADD COLUMN ek_verified INTEGER;
ALTER TABLE devices ADD COLUMN ek_issuer TEXT;
-- one live device per EK, enforced by the transaction that creates the device
CREATE UNIQUE INDEX devices_live_ek ON devices(ek_hash) WHERE ek_legacy = 0 AND status IN ('active', 'quarantined');

-- EK trust store changes made by operators (edgeid-admin ek-roots): 'anchor' rows add a trust
-- anchor, 'disabled' rows switch off a built-in one. The built-in store itself is code.
CREATE TABLE ek_roots (
  fingerprint TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  der BLOB,
  subject TEXT NOT NULL,
  not_after INTEGER,
  added_by TEXT NOT NULL,
  added_at INTEGER NOT NULL
);

-- Supplier manifests (edgeid-admin ek-allow): an EK listed here may enroll once without a token.
-- token_id is the token minted for it at its first enrollment attempt.
CREATE TABLE ek_allow (
  id TEXT PRIMARY KEY,
  ek_id TEXT NOT NULL UNIQUE,
  zone TEXT NOT NULL,
  owner TEXT NOT NULL,
  name TEXT,
  source TEXT,
  imported_by TEXT NOT NULL,
  imported_at INTEGER NOT NULL,
  token_id TEXT
);

-- Data dirs that already hold devices or tokens keep EK certificates optional unless the
-- configuration says otherwise; new data dirs require them.
INSERT INTO meta (key, value) SELECT 'ek_cert_legacy_optional', '1' WHERE EXISTS (SELECT 1 FROM devices) OR EXISTS (SELECT 1 FROM tokens);

-- what enroll/start learned about the EK, carried to the device row at enroll/finish
ALTER TABLE enroll_sessions ADD COLUMN ek_pub BLOB;
ALTER TABLE enroll_sessions ADD COLUMN ek_verified INTEGER;
ALTER TABLE enroll_sessions ADD COLUMN ek_issuer TEXT;
