-- PostgreSQL dialect of migrations/005_audit_checkpoint.sql: retention anchors of the audit chain.
CREATE TABLE audit_checkpoint (
  seq BIGINT PRIMARY KEY, hash TEXT NOT NULL, time BIGINT NOT NULL, pruned_at BIGINT NOT NULL,
  rows BIGINT NOT NULL, file TEXT NOT NULL);
