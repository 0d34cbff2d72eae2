-- TCG event logs per device (uncompressed bytes, as the device sent them): the last one accepted
-- (replayed to the quoted PCRs), so a renewal whose log did not change sends only its digest, and
-- the approved one recorded with the PCR baseline, so posture can name the events that changed.
ALTER TABLE devices ADD COLUMN event_log BLOB;
ALTER TABLE devices ADD COLUMN baseline_event_log BLOB;
