-- PostgreSQL dialect of migrations/004_scan_indexes.sql: an index for every query on a request or timer path.
CREATE INDEX devices_status ON devices(status, enrolled_at, id);
CREATE INDEX devices_retire_by ON devices(retire_by);
CREATE INDEX devices_enrolled ON devices(enrolled_at, id);
CREATE INDEX tokens_created ON tokens(created_at, id);
CREATE INDEX certificates_revoked ON certificates(revoked_at, serial);
CREATE INDEX certificates_not_after ON certificates(not_after, serial);
CREATE INDEX audit_time ON audit(time);
CREATE INDEX audit_device ON audit(device_id, seq);
-- the newest certificate of a device (the inventory listing's lateral lookup) and the nonce
-- bound per device and kind: PostgreSQL plans these better with the sort key in the index
CREATE INDEX certificates_device_not_after ON certificates(device_id, not_after DESC);
CREATE INDEX nonces_device_kind ON nonces(device_id, kind, created_at DESC) WHERE used_at IS NULL;
