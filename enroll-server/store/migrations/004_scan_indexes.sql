-- Indexes for every query on a request or timer path, so none of them scans a whole table:
-- the metrics gauge (GROUP BY status), housekeeping (retire_by), the broker reconcile (status),
-- the CRL (revoked, unexpired certificates), retention (expired certificates, old audit rows),
-- the paged admin listings (their sort keys) and the audit export of one device.
CREATE INDEX devices_status ON devices(status, enrolled_at, id);
CREATE INDEX devices_retire_by ON devices(retire_by);
CREATE INDEX devices_enrolled ON devices(enrolled_at, id);
CREATE INDEX tokens_created ON tokens(created_at, id);
CREATE INDEX certificates_revoked ON certificates(revoked_at, serial);
CREATE INDEX certificates_not_after ON certificates(not_after, serial);
CREATE INDEX audit_time ON audit(time);
CREATE INDEX audit_device ON audit(device_id, seq);
