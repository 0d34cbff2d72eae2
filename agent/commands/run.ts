/** `edgeid-agent run`: the daemon (systemd unit scripts/edgeid-agent.service). */
import { parseArgs } from 'node:util';
import { EdgeAgent } from '../agent.js';
import { applyConfigObject } from '../config.js';
import { COMMON_OPTIONS, COMMON_USAGE, makeLogger, resolveConfig } from './common.js';
import { UsageError, type AgentCommand } from './types.js';

const USAGE = `usage:
  edgeid-agent run [options]
${COMMON_USAGE}
  --mqtt-url URL     broker (mqtts://host:port), overrides the URL the server announced
  --heartbeat SECS   heartbeat period to devices/<id>/state (0 = off; default 30)

  Stops cleanly on SIGTERM/SIGINT (exit 0); a signed wipe command also ends it with exit 0.`;

export const runCommand: AgentCommand = {
  name: 'run',
  summary: 'run the agent: renew the certificate, keep the MQTT session, obey control commands',
  async run(args, io) {
    let values;
    try {
      ({ values } = parseArgs({ args, options: { ...COMMON_OPTIONS, 'mqtt-url': { type: 'string' }, heartbeat: { type: 'string' } }, strict: true }));
    } catch (e) {
      throw new UsageError((e as Error).message, USAGE);
    }
    if (values.help) {
      io.out.write(`${USAGE}\n`);
      return 0;
    }
    let config = resolveConfig(values);
    const mqtt: Record<string, unknown> = {};
    if (values['mqtt-url']) mqtt.url = values['mqtt-url'];
    if (values.heartbeat !== undefined) mqtt.heartbeatSeconds = Number(values.heartbeat);
    if (Object.keys(mqtt).length) config = applyConfigObject(config, { mqtt });
    const log = makeLogger(config);
    const agent = await EdgeAgent.start({ config, log });
    log.info({ deviceId: agent.deviceId, stateDir: config.stateDir }, 'agent running');
    const onSignal = (sig: NodeJS.Signals) => {
      log.info({ signal: sig }, 'stopping');
      void agent.stop(0);
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    const code = await agent.exited;
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    return code;
  },
};
