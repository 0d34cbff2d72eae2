-- PostgreSQL dialect of migrations/007_baseline_approval_id.sql: the approval that opened a device's baseline window.
ALTER TABLE devices ADD COLUMN baseline_approval_id TEXT;
