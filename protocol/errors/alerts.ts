import { defineErrors } from './types.js';

/** Codes of the alerts API (services/alerts.ts). */
export const alertErrors = defineErrors({
  alert_not_found: {
    status: 404,
    message: 'No alert has this id.',
    fix: 'List the alerts with edgeid-admin alerts list (or GET /v1/admin/alerts) and use an id from there.',
  },
  alert_not_open: {
    status: 409,
    message: 'The alert is acknowledged already.',
    fix: 'Nothing to do: a new occurrence opens a new alert, which can be acknowledged in turn.',
  },
});
