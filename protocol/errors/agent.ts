import { defineErrors } from './types.js';

const forgedControl =
  'The command was ignored. If this repeats, someone may be publishing to the control topic: check the broker ACLs and the audit log.';

/**
 * Codes of the edge agent (agent/) and of the signed control-command envelope (protocol/control.ts).
 * Status codes follow the registry's rule (4xx = the caller's fault); the agent itself mostly logs them.
 */
export const agentErrors = defineErrors({
  agent_config_invalid: {
    status: 400,
    message: 'The agent configuration file is not valid.',
    fix: 'Fix the field named in the message (see the agent README for the options) and start again.',
  },
  enroll_uri_invalid: {
    status: 400,
    message: 'The enrollment URI or its parameters are not valid.',
    fix: 'Use the URI printed by `edgeid-admin token create` unchanged: edgeid://enroll?server=https://…&token=…&ca=sha256:<64 hex digits>.',
  },
  already_enrolled: {
    status: 409,
    message: 'This device is already enrolled with the state directory in use.',
    fix: 'Nothing to do; run `edgeid-agent run`. To enroll anew, run `edgeid-agent wipe` first (the old identity is lost).',
  },
  not_enrolled: {
    status: 409,
    message: 'This device is not enrolled (no identity in the state directory).',
    fix: "Enroll it first: `edgeid-agent enroll --uri 'edgeid://enroll?…'` with a token from `edgeid-admin token create`.",
  },
  enrollment_incomplete: {
    status: 409,
    message: 'An enrollment was started but could not be completed and its token can no longer be used.',
    fix: 'Ask ops for a new token and run `edgeid-agent enroll` again; the attestation key in the state directory is reused.',
  },
  state_dir_unusable: {
    status: 500,
    message: 'The state directory cannot be created, locked or written.',
    fix: 'Check that the directory (default /var/lib/edgeid) is on a writable filesystem and owned by the agent user; with systemd, check ReadWritePaths.',
  },
  state_dir_full: {
    status: 500,
    message:
      'The agent could not write its state directory: the filesystem is full. The current certificate and MQTT session stay in use; nothing of the state was half-written.',
    fix: 'Free space on the filesystem of the state directory (default /var/lib/edgeid; `df -h /var/lib/edgeid`); the agent retries the renewal by itself and recovers without a restart.',
  },
  state_dir_read_only: {
    status: 500,
    message:
      'The agent could not write its state directory: the filesystem is read-only. The current certificate and MQTT session stay in use; nothing of the state was half-written.',
    fix: 'Make the filesystem writable again (`mount -o remount,rw`; a filesystem the kernel remounted read-only after I/O errors needs fsck first; with systemd check ReadWritePaths); the agent retries by itself.',
  },
  state_owner_mismatch: {
    status: 409,
    message: 'The state directory, or a file in it, is not owned by the user the agent runs as; the agent does not trust it.',
    fix: "Run the agent as the directory's owner (systemd: User=edgeid). If someone else wrote there, check the files, then remove them or wipe and enroll again; otherwise chown -R the directory to the agent user.",
  },
  state_parent_unsafe: {
    status: 409,
    message:
      'The directory containing the state directory lets another user rename or replace it (writable by group/others without the sticky bit, or owned by another user).',
    fix: 'Make the parent owned by root or the agent user and not group/other-writable (chmod go-w), or put the state directory under /var/lib (default /var/lib/edgeid).',
  },
  state_locked: {
    status: 409,
    message: 'Another edgeid-agent process is using this state directory.',
    fix: 'Stop the other agent (systemctl stop edgeid-agent) or use a different --state directory.',
  },
  state_corrupt: {
    status: 500,
    message: 'The agent state file cannot be read or does not describe a consistent identity.',
    fix: 'Restore the state directory from a backup, or wipe it and enroll the device again.',
  },
  server_unreachable: {
    status: 503,
    message: 'The enrollment server cannot be reached.',
    fix: 'Check the server URL, DNS, routes and firewalls between the device and the server; the agent retries by itself.',
  },
  server_timeout: {
    status: 504,
    message: 'The enrollment server did not send a complete answer within the time limit (httpTimeoutMs, the whole request).',
    fix: 'Check the server and the network path (a proxy holding connections open?); the agent retries by itself with backoff.',
  },
  server_response_too_large: {
    status: 502,
    message: 'The enrollment server sent an answer larger than the agent accepts (1 MiB); it was refused unread.',
    fix: 'Check that the server URL points at the edgeid server and not at another service or a broken proxy; the agent retries by itself.',
  },
  request_aborted: {
    status: 503,
    message: 'A request to the enrollment server was abandoned because the agent is stopping or wiping its identity.',
    fix: 'Nothing to do: the agent does not wait on the network to stop.',
  },
  server_fingerprint_mismatch: {
    status: 400,
    message: 'The server did not present the edgeid CA certificate whose fingerprint was pinned at enrollment.',
    fix: 'Check that the URI points at the right edgeid server and that the token was created there; a mismatch may mean an interception attempt.',
  },
  next_root_invalid: {
    status: 400,
    message:
      'The server sent a next root (root rotation) that the agent did not pin: it is not a self-signed CA, or the chain holds no cross certificate with its exact subject and key that verifies under the pinned root.',
    fix: 'Nothing breaks: the agent keeps its pinned root and the certificate it received. Check the server CA (edgeid-admin ca status: root-2, root-2-cross); a next root without a valid cross certificate may be an interception attempt.',
  },
  server_untrusted: {
    status: 400,
    message: 'The server TLS certificate does not validate against the pinned edgeid CA (chain or host name).',
    fix: 'Check the server URL host name against the server certificate (config hostnames) and that the server uses the CA it was enrolled with.',
  },
  server_error: {
    status: 502,
    message: 'The enrollment server answered with an error the agent does not know, or with a malformed response.',
    fix: 'Check the server logs for the request; update the agent if the server is newer.',
  },
  renewal_failed: {
    status: 500,
    message: 'A certificate renewal attempt failed.',
    fix: 'The agent retries with backoff; see the reason code in the log or `edgeid-agent status`.',
  },
  mqtt_url_insecure: {
    status: 400,
    message: 'The MQTT broker URL (announced by the server or configured) is not a TLS URL; the agent refuses plaintext MQTT.',
    fix: 'Set the broker URL to mqtts://host:port on the server (its mqtt.url) or in the agent config (mqtt.url).',
  },
  outbox_unusable: {
    status: 500,
    message: 'The durable MQTT outbox cannot be written.',
    fix: 'Check free space and permissions of the state directory.',
  },
  outbox_message_too_large: {
    status: 400,
    message: 'A message is larger than the whole outbox (outbox.maxBytes); it was refused and nothing else was changed.',
    fix: 'Send smaller messages (split them), or raise outbox.maxBytes in the agent config.',
  },

  control_malformed: { status: 400, message: 'A control command is not a well-formed signed envelope.', fix: forgedControl },
  control_bad_signature: { status: 400, message: 'A control command signature does not verify.', fix: forgedControl },
  control_untrusted_signer: {
    status: 400,
    message: 'A control command is signed by a certificate that is not an edgeid control signer chaining to the edgeid CA.',
    fix: forgedControl,
  },
  control_wrong_device: { status: 400, message: 'A control command is addressed to another device.', fix: forgedControl },
  control_stale: {
    status: 400,
    message: 'A control command is too old or dated in the future.',
    fix: 'Check the clocks of the device and the server (NTP); commands are accepted only within the freshness window.',
  },
  control_replayed: { status: 400, message: 'A control command with this id was already received.', fix: forgedControl },
  control_unknown_command: {
    status: 400,
    message: 'A control command names a command this agent does not know.',
    fix: 'Update the agent, or send one of: wipe, renew-now.',
  },
  clock_skew: {
    status: 400,
    message: "This device's clock is far off: the server's certificate is not valid at the device's time.",
    fix: 'Set the device clock (enable NTP, e.g. timedatectl set-ntp true), then run the command again.',
  },
});
