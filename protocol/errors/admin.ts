import { defineErrors } from './types.js';

/** Codes of the admin API, the admin CLI and the server's own start-up (configuration, data dir). */
export const adminErrors = defineErrors({
  admin_unauthorized: {
    status: 401,
    message: 'The admin API needs a valid admin bearer token.',
    fix: 'Pass --admin-token or EDGEID_ADMIN_TOKEN, or run edgeid-admin on the server host with --data pointing at its data dir.',
  },
  forbidden_role: {
    status: 403,
    message: "The caller's role does not allow this admin operation (roles: viewer < technician < operator < admin).",
    fix: 'Ask an admin to do it, or for an account with the role the message names (edgeid-admin users add).',
  },
  invalid_cursor: {
    status: 400,
    message: "The page cursor `after` is malformed, or belongs to another listing's sort or order.",
    fix: 'Pass back the `next` of the previous page unchanged, with the same sort and order; start again without `after` after changing them.',
  },
  forbidden_zone: {
    status: 403,
    message: 'The device, token or zone is outside the zones of the calling user.',
    fix: 'Act only in the zones your account has (edgeid-admin users list shows them); an admin can add a user for the other zone.',
  },
  user_disabled: {
    status: 401,
    message: 'This personal token belongs to a disabled user.',
    fix: 'Ask an admin for a new account; a disabled account stays disabled.',
  },
  user_expired: {
    status: 401,
    message: 'This personal token belongs to a user whose account has expired.',
    fix: 'Ask an admin for a new account (edgeid-admin users add NAME --role R --expires 90d).',
  },
  user_is_disabled: {
    status: 409,
    message: 'The user is disabled: it gets no new token and no new role.',
    fix: 'A disabled account stays disabled; add a new user (edgeid-admin users add) instead.',
  },
  user_exists: {
    status: 409,
    message: 'A user with this name exists already.',
    fix: 'Pick another name, or give the existing user a new token with edgeid-admin users rotate-token NAME.',
  },
  user_not_found: {
    status: 404,
    message: 'No user has this name.',
    fix: 'List the users with edgeid-admin users list.',
  },
  user_invalid: {
    status: 400,
    message: 'The user cannot be created as asked (an admin acts in every zone, so it takes no --zones; --expires must be in the future).',
    fix: 'Fix the option the message names.',
  },
  user_last_admin: {
    status: 409,
    message: 'This would leave no enabled admin user.',
    fix: 'Add another admin first (edgeid-admin users add NAME --role admin), then disable or demote this one.',
  },
  credentials_file_insecure: {
    status: 400,
    message: 'The credentials file holding the personal token can be read by other users (group or world).',
    fix: 'chmod 600 the file (edgeid-admin refuses to use a token others can read).',
  },
  metrics_unauthorized: {
    status: 401,
    message: 'GET /metrics needs the admin bearer token or a source address on the metrics allow-list.',
    fix: 'Scrape from an address in metrics.allow (default: loopback) or send Authorization: Bearer <admin token> (Prometheus: authorization.credentials_file).',
  },
  device_state_conflict: {
    status: 409,
    message: 'The device is not in a state that allows this operation.',
    fix: 'Check the device status with edgeid-admin device show ID.',
  },
  token_ttl_invalid: {
    status: 400,
    message: 'The token lifetime is out of range (1 minute to 30 days).',
    fix: 'Use --ttl with a value such as 30m, 8h or 7d.',
  },
  config_invalid: {
    status: 500,
    message: 'The server configuration is invalid.',
    fix: 'Fix the field named in the message; the server does not start with a bad configuration.',
  },
  data_dir_unusable: {
    status: 500,
    message: 'The data directory cannot be used.',
    fix: 'Check that the directory exists or can be created, and its owner and permissions (0700).',
  },
  storage_full: {
    status: 503,
    message: 'The server could not write: its data directory (database, CA, CRL files) is out of space.',
    fix: 'Free space on the filesystem of the data directory (or grow it), then retry: a refused write changed nothing (the message says so when part of an action, e.g. a revocation, was already committed). Requests succeed again as soon as there is room, without a restart.',
  },
  storage_read_only: {
    status: 503,
    message: 'The server could not write: its data directory (database, CA, CRL files) is on a read-only filesystem.',
    fix: 'Make the filesystem of the data directory writable again (check `mount` and the kernel log: a filesystem remounted read-only after I/O errors needs fsck), then retry: a refused write changed nothing (the message says so when part of an action was already committed).',
  },
  store_unavailable: {
    status: 503,
    message:
      'The server could not reach its database (PostgreSQL): it is down, unreachable, refusing the connection or out of connections.',
    fix: 'Check that the PostgreSQL server in the `store` setting runs and accepts this server (address, database, user, password, max_connections), then retry: a refused request changed nothing. Requests succeed again as soon as the database answers, without a restart.',
  },
  admin_server_unreachable: {
    status: 503,
    message: 'The edgeid server cannot be reached.',
    fix: 'Check --server / EDGEID_SERVER, that the server runs, and the CA used to pin its certificate.',
  },
  ek_root_invalid: {
    status: 400,
    message: 'The file is not a usable CA certificate for the EK trust store (PEM or DER X.509, basicConstraints CA).',
    fix: "Pass the TPM maker's CA certificate (PEM or DER) as the maker publishes it.",
  },
  ek_root_unknown: {
    status: 404,
    message: 'No EK trust store certificate in use has this fingerprint (or fingerprint prefix).',
    fix: 'List them with edgeid-admin ek-roots list and pass the fingerprint shown there (the SHA-256 fingerprint, or its first 8 or more hex digits).',
  },
  ek_root_ambiguous: {
    status: 409,
    message: 'More than one EK trust store certificate has a fingerprint starting with this prefix.',
    fix: 'Pass more of the fingerprint (edgeid-admin ek-roots list --json shows all 64 hex digits); the message lists the matches.',
  },
  ek_allow_invalid: {
    status: 400,
    message:
      'The supplier manifest cannot be read: each entry must be an EK certificate (PEM or base64 DER) or an EK public key (PEM SPKI, base64 DER SPKI or base64 TPM2B_PUBLIC).',
    fix: 'Fix the entry named in the message (line or index); nothing was imported.',
  },
  ek_allow_unknown: {
    status: 404,
    message: 'No supplier manifest entry has this id.',
    fix: 'List the entries with edgeid-admin ek-allow list.',
  },
});
