-- PostgreSQL dialect of migrations/013_last_quote.sql: the last verified quote's PCR values (JSON text) and its time.
ALTER TABLE devices ADD COLUMN last_pcrs TEXT;
ALTER TABLE devices ADD COLUMN last_quote_at BIGINT;
