import { defineErrors } from './types.js';

/**
 * Codes of the TCG event log parser and replay (protocol/eventlog). The log is untrusted input:
 * on the device it comes from firmware, on the server from the network; each code names a cause
 * and the message names the byte offset or the PCR and bank.
 */
export const eventlogErrors = defineErrors({
  eventlog_malformed: {
    status: 400,
    message: 'The TCG event log is malformed.',
    fix: 'The message names the byte offset and the field. A log the firmware wrote wrongly cannot explain the PCRs; report it with `edgeid-agent tpm eventlog --file F` output and the file.',
  },
  eventlog_too_large: {
    status: 413,
    message: 'The TCG event log is larger than the parser accepts.',
    fix: 'Real boot logs are tens of KiB; the limit is 1 MiB (compressed logs are limited after decompression too). Check what writes the file.',
  },
  eventlog_too_many_events: {
    status: 400,
    message: 'The TCG event log has more events than the parser accepts.',
    fix: 'Real boot logs have a few hundred events; the limit is 10000. Check what writes the file.',
  },
  eventlog_unreadable: {
    status: 500,
    message: 'The TCG event log file could not be read.',
    fix: "The default is /sys/kernel/security/tpm0/binary_bios_measurements (readable by root only, securityfs mounted); pass --file or set the agent's eventLog path.",
  },
  eventlog_replay_mismatch: {
    status: 400,
    message: 'The TCG event log does not replay to the quoted PCR values.',
    fix: 'The message names the PCR and bank. The log was altered, is from another boot, or the PCR was extended outside the log; the log cannot explain the PCRs. Reboot the device and renew; if it persists, investigate the device.',
  },
  eventlog_unknown: {
    status: 409,
    message: 'The evidence names an event log by digest that the server does not hold for this device.',
    fix: 'The agent sends only the digest when the log is unchanged; it sends the whole log on its next attempt after a fresh challenge.',
  },
  posture_eventlog_rejected: {
    status: 403,
    message: "The TCG event log violates the zone's posture policy: the device is quarantined.",
    fix: "The message names the event (Secure Boot off, firmware or a boot application not on the allowed list or not signed by an allowed signer, dbx rolled back). A dbx change the operator accepts: edgeid-admin approve-baseline ID. Otherwise fix the device or change the zone's eventLog policy, then approve-baseline.",
  },
});
