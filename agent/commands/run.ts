/** `edgeid-agent run`: the daemon (systemd unit scripts/edgeid-agent.service). */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { EdgeAgent } from '../agent.js';
import { applyConfigObject } from '../config.js';
import { COMMON_OPTIONS, COMMON_USAGE, makeLogger, resolveConfig, wantsSentences } from './common.js';
import { UsageError, type AgentCommand } from './types.js';

const USAGE = `usage:
  edgeid-agent run [options]
${COMMON_USAGE}
  --mqtt-url URL     broker (mqtts://host:port), overrides the URL the server announced
  --heartbeat SECS   heartbeat period to devices/<id>/state (0 = off; default 30)
  --telemetry SECS   publish a numbered sample to devices/<id>/telemetry through the durable
                     outbox every SECS (0 = off, the default; for demos and soak tests)

  Stops cleanly on SIGTERM/SIGINT (exit 0); a signed wipe command also ends it with exit 0.
  Exit 10: the server answered that this device is revoked or retired; the identity was wiped
  (the systemd unit does not restart it: RestartPreventExitStatus=10).`;

export const runCommand: AgentCommand = {
  name: 'run',
  summary: 'run the agent: renew the certificate, keep the MQTT session, obey control commands',
  async run(args, io) {
    let values;
    try {
      ({ values } = parseArgs({
        args,
        options: { ...COMMON_OPTIONS, 'mqtt-url': { type: 'string' }, heartbeat: { type: 'string' }, telemetry: { type: 'string' } },
        strict: true,
      }));
    } catch (e) {
      throw new UsageError((e as Error).message, USAGE);
    }
    if (values.help) {
      io.out.write(`${USAGE}\n`);
      return 0;
    }
    const telemetry = values.telemetry === undefined ? 0 : Number(values.telemetry);
    if (!Number.isFinite(telemetry) || telemetry < 0 || telemetry > 86400)
      throw new UsageError('--telemetry must be a number of seconds from 0 to 86400', USAGE);
    let config = resolveConfig(values);
    const mqtt: Record<string, unknown> = {};
    if (values['mqtt-url']) mqtt.url = values['mqtt-url'];
    if (values.heartbeat !== undefined) mqtt.heartbeatSeconds = Number(values.heartbeat);
    if (Object.keys(mqtt).length) config = applyConfigObject(config, { mqtt });
    const log = makeLogger(config, { sentences: wantsSentences(false) });
    // Signals are handled from the start: a SIGTERM while the agent is still starting (continuing an
    // enrollment, a first renewal) stops it cleanly once started — closing the TPM flushes the SRK
    // and AK it keeps loaded — instead of Node's default exit, which would leave them in a TPM
    // without resource manager.
    let agent: EdgeAgent | null = null;
    let stopRequested = false;
    const onSignal = (sig: NodeJS.Signals) => {
      log.info({ signal: sig }, 'stopping');
      if (agent) void agent.stop(0);
      else stopRequested = true;
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    try {
      agent = await EdgeAgent.start({ config, log });
    } catch (e) {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      throw e;
    }
    if (stopRequested) void agent.stop(0);
    log.info({ deviceId: agent.deviceId, stateDir: config.stateDir }, 'agent running');
    // boot tells samples of this process from those of an earlier run (seq restarts at 1)
    const boot = randomUUID().slice(0, 8);
    let seq = 0;
    const sampler =
      telemetry > 0
        ? setInterval(() => {
            seq += 1;
            agent!
              .publish(`devices/${agent!.deviceId}/telemetry`, JSON.stringify({ boot, seq, at: new Date().toISOString() }))
              .catch((e: unknown) => {
                log.warn({ err: (e as Error).message, seq }, 'telemetry sample not queued');
              });
          }, telemetry * 1000)
        : null;
    const code = await agent.exited;
    if (sampler) clearInterval(sampler);
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    return code;
  },
};
