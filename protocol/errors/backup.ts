import { defineErrors } from './types.js';

/** Backup and restore of a server's data dir, and CA rotation. */
export const backupErrors = defineErrors({
  backup_passphrase_missing: {
    status: 400,
    message: 'No usable backup passphrase was given (at least 12 characters).',
    fix: 'Pass --passphrase-file FILE (mode 0600, the passphrase on its first line) or set EDGEID_BACKUP_PASSPHRASE.',
  },
  backup_passphrase_wrong: {
    status: 400,
    message: 'The passphrase does not open this backup.',
    fix: 'Use the passphrase the backup was made with (edgeid-admin backup --passphrase-file / EDGEID_BACKUP_PASSPHRASE); nothing was written.',
  },
  backup_corrupt: {
    status: 400,
    message: 'The backup file is not an edgeid backup, or it is damaged or truncated (its integrity check failed).',
    fix: 'Restore from another copy of the backup; nothing was written.',
  },
  backup_unsupported_store: {
    status: 409,
    message: 'This server keeps its state in PostgreSQL: edgeid-admin backup copies only a SQLite store.',
    fix: 'Back up the database with pg_dump (or the PostgreSQL backup you run) and the data dir (ca/, admin-token) with your file backup.',
  },
  restore_target_not_empty: {
    status: 400,
    message: 'The restore target directory is not empty.',
    fix: 'Restore into a new or empty directory (a restore never overwrites a data dir); move the old one aside first.',
  },
  crl_issuer_unknown: {
    status: 404,
    message: 'No issuing CA of this server with this name has a CRL (unknown, or its certificate expired).',
    fix: 'Use the CRL distribution point named in the certificate; edgeid-admin ca status lists the issuing CAs.',
  },
  ca_rotation_invalid: {
    status: 409,
    message: 'The CA rotation cannot be done in the current state.',
    fix: 'See the message; edgeid-admin ca status lists the CAs and their expiry.',
  },
});
