-- The TPM name (hex, nameAlg ‖ digest) of each device's AK, so an agent that lost its device id
-- can find itself by its AK. Rows enrolled before this migration get their name from the
-- server at start (the store does not parse TPM structures).
ALTER TABLE devices ADD COLUMN ak_name TEXT;
CREATE INDEX devices_ak_name ON devices(ak_name);
