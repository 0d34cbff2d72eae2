-- The approval that opened a device's baseline window: its id is in the approval's audit row and
-- in the audit row of the renewal that closed the window (and possibly recorded a new baseline).
ALTER TABLE devices ADD COLUMN baseline_approval_id TEXT;
