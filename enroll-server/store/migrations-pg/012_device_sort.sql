-- PostgreSQL dialect of migrations/012_device_sort.sql: the newest certificate's notAfter on the
-- device row (kept by triggers on certificates) and keyset indexes for each inventory sort. The
-- name key is COLLATE "C" (byte order, as SQLite compares text) in the index and the query.
ALTER TABLE devices ADD COLUMN cert_not_after BIGINT NOT NULL DEFAULT 0;
UPDATE devices SET cert_not_after = COALESCE((SELECT MAX(not_after) FROM certificates WHERE device_id = devices.id), 0);
CREATE FUNCTION certificates_newest() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    UPDATE devices SET cert_not_after = GREATEST(cert_not_after, NEW.not_after) WHERE id = NEW.device_id;
    RETURN NEW;
  END IF;
  UPDATE devices SET cert_not_after = COALESCE((SELECT MAX(not_after) FROM certificates WHERE device_id = OLD.device_id), 0)
    WHERE id = OLD.device_id;
  RETURN OLD;
END $$;
CREATE TRIGGER certificates_newest AFTER INSERT OR DELETE ON certificates FOR EACH ROW EXECUTE FUNCTION certificates_newest();
CREATE INDEX devices_sort_name ON devices((COALESCE(name, '') COLLATE "C"), id);
CREATE INDEX devices_sort_last_seen ON devices((COALESCE(last_seen, 0)), id);
CREATE INDEX devices_sort_expiry ON devices(cert_not_after, id);
