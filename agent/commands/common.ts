/** Options every agent subcommand shares: --state, --tcti, --config, --log-level. */
import pino, { type Logger } from 'pino';
import { colourEnabled, printable } from '../../protocol/terminal.js';
import { applyConfigObject, defaultConfig, loadConfigFile, type AgentConfig } from '../config.js';

export const COMMON_OPTIONS = {
  state: { type: 'string' },
  tcti: { type: 'string' },
  config: { type: 'string' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

export const COMMON_USAGE = `  --state DIR        state directory (default /var/lib/edgeid, env EDGEID_STATE_DIR)
  --tcti CONF        TPM connection (env EDGEID_TCTI; default device:/dev/tpmrm0)
  --config FILE      agent config file, JSON (env EDGEID_AGENT_CONFIG)
                     TCG event log sent with each quote: config eventLog or env EDGEID_EVENT_LOG
                     (default /sys/kernel/security/tpm0/binary_bios_measurements)
  --log-level LEVEL  fatal|error|warn|info|debug (default info)`;

export interface CommonValues {
  state?: string;
  tcti?: string;
  config?: string;
  'log-level'?: string;
}

/** Effective config: defaults ← config file ← environment ← flags. */
export function resolveConfig(v: CommonValues, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  const file = v.config ?? env.EDGEID_AGENT_CONFIG;
  let c = file ? loadConfigFile(file) : defaultConfig();
  const over: Record<string, unknown> = {};
  const stateDir = v.state ?? env.EDGEID_STATE_DIR;
  if (stateDir) over.stateDir = stateDir;
  const tcti = v.tcti ?? env.EDGEID_TCTI;
  if (tcti) over.tcti = tcti;
  if (env.EDGEID_EVENT_LOG) over.eventLog = env.EDGEID_EVENT_LOG;
  if (v['log-level']) over.logLevel = v['log-level'];
  if (Object.keys(over).length) c = applyConfigObject(c, over);
  return c;
}

/**
 * Logs go to stderr: JSON lines (one object per line, what systemd's journal and scripts keep)
 * unless `sentences` — then one plain sentence per event, for a technician at a terminal.
 * No secrets are ever logged.
 */
export function makeLogger(config: AgentConfig, opts: { name?: string; sentences?: boolean } = {}): Logger {
  const base = { name: opts.name ?? 'edgeid-agent', level: config.logLevel, base: { pid: process.pid } };
  if (opts.sentences) return pino(base, sentenceStream(process.stderr));
  return pino(base, pino.destination({ dest: 2, sync: true }));
}

/** Sentences when stderr is a terminal and the caller did not ask for JSON. */
export function wantsSentences(json: boolean | undefined, stream: { isTTY?: boolean } = process.stderr): boolean {
  return !json && stream.isTTY === true;
}

const LEVEL_NAMES: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warning', 50: 'error', 60: 'fatal' };
const LEVEL_COLOURS: Record<number, number> = { 40: 33, 50: 31, 60: 31 };
const QUIET_FIELDS = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'name']);

/** A pino destination that turns each JSON line into `HH:MM:SS message (key=value …)`; every value escaped. */
function sentenceStream(out: NodeJS.WriteStream): { write(line: string): void } {
  const colour = colourEnabled(out);
  return {
    write(line: string) {
      let o: Record<string, unknown>;
      try {
        o = JSON.parse(line) as Record<string, unknown>;
      } catch {
        out.write(printable(line.trimEnd()) + '\n');
        return;
      }
      const level = typeof o.level === 'number' ? o.level : 30;
      const time = new Date(typeof o.time === 'number' ? o.time : Date.now()).toTimeString().slice(0, 8);
      const fields = Object.entries(o)
        .filter(([k]) => !QUIET_FIELDS.has(k))
        .map(([k, v]) => {
          const text =
            v && typeof v === 'object' && 'message' in v
              ? (v as { message: unknown }).message
              : typeof v === 'string'
                ? v
                : JSON.stringify(v);
          return `${k}=${printable(text)}`;
        });
      const label = level >= 40 ? `${LEVEL_NAMES[level] ?? 'error'}: ` : '';
      const head = colour && LEVEL_COLOURS[level] ? `\x1b[${LEVEL_COLOURS[level]}m${label}\x1b[0m` : label;
      out.write(`${time} ${head}${printable(o.msg ?? '')}${fields.length ? ` (${fields.join(', ')})` : ''}\n`);
    },
  };
}
