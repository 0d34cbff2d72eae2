/** `edgeid-agent enroll`: one-time enrollment by a field technician. */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { parseEnrollUri } from '../../protocol/api.js';
import { EdgeidError } from '../../protocol/errors/index.js';
import { enroll, type EnrollParams } from '../identity.js';
import { clockFromEnv } from '../schedule.js';
import { PostureCollector } from '../posture.js';
import { StateStore } from '../state/store.js';
import { DEFAULT_TCTI, Tpm } from '../tpm/index.js';
import { flushLeftoverObjects } from '../tpm-support.js';
import { defaultConfig, type AgentConfig } from '../config.js';
import { jsonText, printable } from '../../protocol/terminal.js';
import { COMMON_OPTIONS, COMMON_USAGE, makeLogger, resolveConfig, wantsSentences } from './common.js';
import { UsageError, type AgentCommand } from './types.js';

const USAGE = `usage:
  edgeid-agent enroll --uri 'edgeid://enroll?server=…&token=…&ca=sha256:…' [options]
  edgeid-agent enroll --server URL --token TOKEN --ca-fingerprint sha256:HEX [--zone ZONE] [options]
  edgeid-agent enroll --server URL --ca-fingerprint sha256:HEX [options]
      (no token: zero-touch, for a TPM whose EK the operator imported with edgeid-admin ek-allow import)

  The server's TLS certificate must chain to the CA with that fingerprint (no trust on first use).
  The URI can also come from env EDGEID_ENROLL_URI (keeps the token out of the process list).
${COMMON_USAGE}
  --json             print the result as JSON`;

/** A word as the shell reads it back: bare when it is plain, else single-quoted. */
function shellWord(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The command that starts the agent on exactly what this enrollment used (state dir, TPM, config). */
export function nextStep(config: AgentConfig, configFile: string | undefined): string {
  const defaults = defaultConfig();
  const args = ['edgeid-agent', 'run'];
  if (configFile) args.push('--config', path.resolve(configFile));
  args.push('--state', path.resolve(config.stateDir));
  const customTpm = config.tcti !== undefined && config.tcti !== DEFAULT_TCTI;
  if (customTpm) args.push('--tcti', config.tcti!);
  const asService = !configFile && path.resolve(config.stateDir) === defaults.stateDir && !customTpm;
  return `start the agent: ${args.map(shellWord).join(' ')}${asService ? '   (or: systemctl enable --now edgeid-agent)' : ''}`;
}

export const enrollCommand: AgentCommand = {
  name: 'enroll',
  summary: 'enroll this device with a one-time token (edgeid://enroll?… URI)',
  async run(args, io) {
    let values;
    try {
      ({ values } = parseArgs({
        args,
        options: {
          ...COMMON_OPTIONS,
          uri: { type: 'string' },
          server: { type: 'string' },
          token: { type: 'string' },
          'ca-fingerprint': { type: 'string' },
          zone: { type: 'string' },
          json: { type: 'boolean' },
        },
        strict: true,
      }));
    } catch (e) {
      throw new UsageError((e as Error).message, USAGE);
    }
    if (values.help) {
      io.out.write(`${USAGE}\n`);
      return 0;
    }
    const uri = values.uri ?? process.env.EDGEID_ENROLL_URI;
    let params: EnrollParams;
    if (uri) {
      if (values.server || values.token || values['ca-fingerprint'])
        throw new UsageError('give either --uri or --server/--token/--ca-fingerprint', USAGE);
      try {
        params = parseEnrollUri(uri);
      } catch (e) {
        throw new EdgeidError('enroll_uri_invalid', `enrollment URI: ${(e as Error).message}`);
      }
      if (values.zone) params.zone = values.zone;
    } else {
      // no --token: zero-touch enrollment, for a TPM whose EK is on a supplier manifest the operator imported
      if (!values.server || !values['ca-fingerprint'])
        throw new UsageError('need --uri, or --server and --ca-fingerprint (and --token unless the TPM is on a supplier manifest)', USAGE);
      params = {
        server: values.server,
        ...(values.token ? { token: values.token } : {}),
        caFingerprint: values['ca-fingerprint'],
        ...(values.zone ? { zone: values.zone } : {}),
      };
    }
    const config = resolveConfig(values);
    const log = makeLogger(config, { sentences: wantsSentences(values.json) });
    const store = await StateStore.open(config.stateDir, { lock: true });
    let tpm: Tpm | undefined;
    try {
      await store.cleanupOrphans(await store.load());
      // One-shot: no SRK/AK kept loaded after the batch (a kill leaves nothing in a TPM without RM).
      tpm = await Tpm.open(config.tcti, { keepResidents: false });
      await flushLeftoverObjects(tpm);
      // the device clock as `run` sees it (EDGEID_TEST_CLOCK_OFFSET_MS in tests): the server's
      // offset is measured against it from the first certificate on
      const clock = clockFromEnv();
      const state = await enroll({ store, tpm, log, config, posture: new PostureCollector({ config }), now: () => clock.now() }, params);
      const c = state.certificate!;
      const result = {
        deviceId: state.device!.id,
        zone: state.device!.zone,
        serial: c.serial,
        notAfter: c.notAfter,
        mqtt: state.mqtt?.url ?? null,
        stateDir: config.stateDir,
      };
      if (values.json) io.out.write(`${jsonText(result, 2)}\n`);
      else {
        io.out.write(
          `enrolled as ${printable(result.deviceId)} (zone ${printable(result.zone)})\n` +
            `  certificate ${printable(result.serial)}, valid until ${printable(result.notAfter)}\n` +
            `  broker      ${result.mqtt ? printable(result.mqtt) : '(none announced; set mqtt.url in the agent config)'}\n` +
            `  state       ${result.stateDir}\n`,
        );
      }
      io.err.write(`${nextStep(config, values.config ?? process.env.EDGEID_AGENT_CONFIG)}\n`);
      return 0;
    } finally {
      await tpm?.close().catch(() => {});
      await store.close();
    }
  },
};
