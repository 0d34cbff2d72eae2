/** Options every agent subcommand shares: --state, --tcti, --config, --log-level. */
import pino, { type Logger } from 'pino';
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
  if (v['log-level']) over.logLevel = v['log-level'];
  if (Object.keys(over).length) c = applyConfigObject(c, over);
  return c;
}

/** JSON logs (one object per line) to stderr; systemd's journal keeps them. No secrets are ever logged. */
export function makeLogger(config: AgentConfig, name = 'edgeid-agent'): Logger {
  return pino({ name, level: config.logLevel, base: { pid: process.pid } }, pino.destination({ dest: 2, sync: true }));
}
