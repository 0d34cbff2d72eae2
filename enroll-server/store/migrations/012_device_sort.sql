-- Server-side sorting of the device inventory (sort=enrolled|name|lastSeen|expiry, asc or desc),
-- paged by keyset (sort key, id) so that every page is an index range scan.
-- `expiry` is the notAfter of the device's newest certificate: kept on the device row
-- (cert_not_after, 0 before the first certificate) by triggers on certificates, so that it can
-- be indexed; a sort on a correlated MAX() would read every device's certificates per page.
-- Nullable keys are sorted through COALESCE ('' / 0 first ascending) in the index and the query
-- alike, so SQLite and PostgreSQL order NULLs the same (https://www.sqlite.org/expridx.html).
ALTER TABLE devices ADD COLUMN cert_not_after INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET cert_not_after = COALESCE((SELECT MAX(not_after) FROM certificates WHERE device_id = devices.id), 0);
CREATE TRIGGER certificates_newest_insert AFTER INSERT ON certificates BEGIN
  UPDATE devices SET cert_not_after = MAX(cert_not_after, NEW.not_after) WHERE id = NEW.device_id;
END;
CREATE TRIGGER certificates_newest_delete AFTER DELETE ON certificates BEGIN
  UPDATE devices SET cert_not_after = COALESCE((SELECT MAX(not_after) FROM certificates WHERE device_id = OLD.device_id), 0)
    WHERE id = OLD.device_id;
END;
CREATE INDEX devices_sort_name ON devices(COALESCE(name, ''), id);
CREATE INDEX devices_sort_last_seen ON devices(COALESCE(last_seen, 0), id);
CREATE INDEX devices_sort_expiry ON devices(cert_not_after, id);
