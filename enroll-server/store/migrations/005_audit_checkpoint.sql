-- Retention: audit rows older than the retention are exported to a file and deleted; the last
-- deleted row's seq and hash stay here as the chain's anchor, so the rows that remain still
-- verify from it (store/audit-chain.ts verifyChain). One row per pruning run; the newest
-- (highest seq) is the anchor.
CREATE TABLE audit_checkpoint (
  seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, time INTEGER NOT NULL, pruned_at INTEGER NOT NULL,
  rows INTEGER NOT NULL, file TEXT NOT NULL);
