import { defineErrors } from './types.js';

/** Codes for the broker integration (Mosquitto dynsec, CRL at the broker). */
export const brokerErrors = defineErrors({
  broker_not_configured: {
    status: 409,
    message: 'This server has no broker integration configured.',
    fix: 'Add a "broker" section (url, crlFile, reloadCommand) to the server config and restart it; see enroll-server/README.md.',
  },
  broker_unavailable: {
    status: 503,
    message: "The MQTT broker did not answer the server's dynamic-security commands.",
    fix: 'Check that Mosquitto runs with the edgeid config (edgeid-admin broker config) and that the server can reach it; then run edgeid-admin broker reconcile.',
  },
  broker_reload_failed: {
    status: 502,
    message: 'The new CRL was written for the broker, but the reload command failed.',
    fix: "Restart Mosquitto by hand (it reads its CRL only at start) and check the server config's broker.reloadCommand.",
  },
  broker_monitor_exists: {
    status: 409,
    message: 'A monitoring identity with this name already exists on the broker.',
    fix: 'Pick another name, or remove the old one first (edgeid-admin broker monitor list / remove NAME).',
  },
  broker_monitor_unknown: {
    status: 404,
    message: 'There is no monitoring identity with this name.',
    fix: 'edgeid-admin broker monitor list shows the names.',
  },
});
