/** `edgeid-agent wipe`: delete this device's identity (key blobs, state, outbox) and flush its TPM objects. */
import { parseArgs } from 'node:util';
import { StateStore } from '../state/store.js';
import { Tpm } from '../tpm/index.js';
import { flushLeftoverObjects } from '../tpm-support.js';
import { COMMON_OPTIONS, COMMON_USAGE, resolveConfig } from './common.js';
import { UsageError, type AgentCommand } from './types.js';

const USAGE = `usage:
  edgeid-agent wipe [options]
${COMMON_USAGE}
  --no-tpm           do not connect to the TPM (only delete the files)
  --json             print the result as JSON

  Refuses while the agent runs on the same state dir (stop it first). The device must be
  enrolled again afterwards; its old certificate stays valid until it expires or is revoked.`;

export const wipeCommand: AgentCommand = {
  name: 'wipe',
  summary: "delete this device's identity: key blobs, certificate, state and outbox",
  async run(args, io) {
    let values;
    try {
      ({ values } = parseArgs({
        args,
        options: { ...COMMON_OPTIONS, 'no-tpm': { type: 'boolean' }, json: { type: 'boolean' } },
        strict: true,
      }));
    } catch (e) {
      throw new UsageError((e as Error).message, USAGE);
    }
    if (values.help) {
      io.out.write(`${USAGE}\n`);
      return 0;
    }
    const config = resolveConfig(values);
    const store = await StateStore.open(config.stateDir, { lock: true, create: false });
    try {
      const removed = await store.wipe();
      let flushed = 0;
      if (!values['no-tpm']) {
        const tpm = await Tpm.open(config.tcti);
        try {
          flushed = await flushLeftoverObjects(tpm);
        } finally {
          await tpm.close();
        }
      }
      io.out.write(
        values.json
          ? `${JSON.stringify({ stateDir: config.stateDir, removed: removed.length, tpmObjectsFlushed: flushed }, null, 2)}\n`
          : `wiped ${config.stateDir}: ${removed.length} entries removed, ${flushed} TPM objects flushed\n`,
      );
      return 0;
    } finally {
      await store.close();
    }
  },
};
