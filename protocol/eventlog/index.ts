/** TCG PC Client event log: parser, typed event data, replay. */
export * from './types.js';
export { malformed, guidText } from './errors.js';
export { devicePathText, MAX_DEVICE_PATH_NODES, MAX_DEVICE_PATH_TEXT } from './devicepath.js';
export { decodeEventData, DIGEST_IS_DATA_HASH, type EventData } from './decode.js';
export {
  parseEventLog,
  DEFAULT_MAX_EVENTS,
  DEFAULT_MAX_LOG_BYTES,
  PCR_COUNT,
  type EventLog,
  type LogEvent,
  type ParseOptions,
} from './parser.js';
export { replay, pcrsJson, checkReplay, type ReplayedPcrs } from './replay.js';
export { describeEvent, eventSummary } from './describe.js';
