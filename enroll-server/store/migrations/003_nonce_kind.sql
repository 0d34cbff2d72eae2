-- Challenge nonces (from an unauthenticated endpoint) are bounded separately from the nonce
-- issued with a certificate, so challenges can never evict it.
ALTER TABLE nonces ADD COLUMN kind TEXT NOT NULL DEFAULT 'issued';
