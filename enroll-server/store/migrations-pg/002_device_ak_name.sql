-- PostgreSQL dialect of migrations/002_device_ak_name.sql: the TPM name (hex) of each device's AK.
ALTER TABLE devices ADD COLUMN ak_name TEXT;
CREATE INDEX devices_ak_name ON devices(ak_name);
