import { defineErrors } from './types.js';

/** Codes of the admin API, the admin CLI and the server's own start-up (configuration, data dir). */
export const adminErrors = defineErrors({
  admin_unauthorized: {
    status: 401,
    message: 'The admin API needs a valid admin bearer token.',
    fix: 'Pass --admin-token or EDGEID_ADMIN_TOKEN, or run edgeid-admin on the server host with --data pointing at its data dir.',
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
  admin_server_unreachable: {
    status: 503,
    message: 'The edgeid server cannot be reached.',
    fix: 'Check --server / EDGEID_SERVER, that the server runs, and the CA used to pin its certificate.',
  },
});
