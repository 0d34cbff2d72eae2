-- PostgreSQL dialect of migrations/003_nonce_kind.sql: challenge nonces are bounded apart from issued ones.
ALTER TABLE nonces ADD COLUMN kind TEXT NOT NULL DEFAULT 'issued';
