/**
 * Revocation benchmark: over N runs (default 20), the time from the revoke API call
 * (`POST /v1/admin/devices/ID/revoke`) to
 *   (a) the device's session being closed by the broker: the broker logs that it disconnected the
 *       client "by administrative action" (dynsec deleteClient). The device's session is the
 *       agent's own: the broker's client id is the certificate's CN (`use_username_as_clientid`),
 *       so a second session with the device's key could not run beside it. The log is read every
 *       5 ms, so (a) is late by up to that much;
 *   (b) the CRL being in force: a fresh TLS handshake with the revoked certificate (TPM key) is
 *       refused with "certificate revoked" (fresh handshakes are tried every 10 ms from the call on).
 * Also: when the API call returned, and when the agent (EdgeAgent in-process, same TPM) had
 * obeyed the signed wipe and stopped. Everything is real: edgeid-server process, Mosquitto
 * configured by `edgeid-admin broker config` and restarted by the server's reload command, swtpm.
 * Each run enrolls a new device on the same TPM (its EK may enroll again once revoked).
 * Prints a markdown table (for BENCHMARKS.md).
 *   node --import tsx scripts/bench-revoke.ts [--runs N]
 */
import 'reflect-metadata';
import { execFile } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { EdgeAgent } from '../agent/agent.js';
import { applyConfigObject, defaultConfig } from '../agent/config.js';
import { enroll } from '../agent/identity.js';
import { PostureCollector } from '../agent/posture.js';
import { StateStore } from '../agent/state/store.js';
import { Tpm } from '../agent/tpm/index.js';
import { NO_EVENT_LOG } from './harness/eventlog.js';
import { tmpDir } from './harness/fs.js';
import { readDeviceIdentity, startRevocationDeployment, tlsHandshake, tpmTlsContext } from './harness/revocation.js';
import { extendBootPcrs, startSwtpm } from './harness/swtpm.js';
import { waitFor } from './harness/wait.js';

const run = promisify(execFile);
const argv = process.argv.slice(2);
const RUNS = Number(argv[argv.indexOf('--runs') + 1] ?? 20) || 20;

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

interface Sample {
  kicked: number;
  crlInForce: number;
  apiReturned: number;
  agentWiped: number;
}

async function main(): Promise<void> {
  const work = await tmpDir('edgeid-bench-revoke-');
  const d = await startRevocationDeployment({ rateLimit: { enroll: { max: 1000, window: 60 }, admin: { max: 100_000, window: 60 } } });
  const tpmSim = await startSwtpm();
  const samples: Sample[] = [];
  const log = pino({ level: 'silent' });
  try {
    await extendBootPcrs(tpmSim.tcti);
    // One TPM connection for everything (swtpm serves one at a time): enrollment, the agent, the probes.
    const tpm = await Tpm.open(tpmSim.tcti);
    try {
      for (let i = 0; i < RUNS; i++) {
        const stateDir = path.join(work, `state-${i}`);
        const config = applyConfigObject(defaultConfig(), {
          stateDir,
          tcti: tpmSim.tcti,
          logLevel: 'silent',
          eventLog: NO_EVENT_LOG,
          mqtt: { heartbeatSeconds: 1, reconnectPeriodMs: 200 },
        });
        const token = await d.adminApi<{ uri: string }>('POST', '/v1/admin/tokens', { zone: 'default', owner: 'bench' });
        if (token.status !== 200) throw new Error(`token create: ${token.status} ${JSON.stringify(token.body)}`);
        const u = new URL(token.body.uri);
        const store = await StateStore.open(stateDir, { lock: true });
        try {
          await enroll(
            { store, tpm, config, log, posture: new PostureCollector({ config }) },
            {
              server: u.searchParams.get('server')!,
              token: u.searchParams.get('token')!,
              caFingerprint: u.searchParams.get('ca')!,
            },
          );
        } finally {
          await store.close();
        }
        const agent = await EdgeAgent.start({ config, log, tpm });
        await waitFor('agent connected', () => agent.status().mqtt.state === 'connected', 30_000);
        const id = await readDeviceIdentity(stateDir);
        const ctx = await tpmTlsContext(tpm, id);
        const logFrom = d.broker.log().length;
        const brokerSaid = (s: string) => d.broker.log().slice(logFrom).includes(s);
        const before = await tlsHandshake(d.broker.port, ctx);
        if (!before.ok) throw new Error(`the device's certificate is refused before the revoke: ${JSON.stringify(before)}`);

        const t0 = performance.now();
        const kicked = waitFor(
          'the broker to disconnect the device',
          () => {
            // Mosquitto 2.0.11 logs "Client <id> been disconnected by administrative action."
            if (brokerSaid(`Client ${id.deviceId} been disconnected by administrative action`)) return performance.now() - t0;
            // the agent ending the session itself (after the wipe) before the kick: no kick to time
            if (brokerSaid(`Client ${id.deviceId} disconnected.`)) return 'agent first' as const;
            return null;
          },
          { timeoutMs: 30_000, intervalMs: 5 },
        );
        const agentWiped = agent.exited.then(() => performance.now() - t0);
        const api = d.adminApi('POST', `/v1/admin/devices/${id.deviceId}/revoke`, { reason: 'key-compromise' }).then((r) => {
          if (r.status !== 200) throw new Error(`revoke: ${r.status} ${JSON.stringify(r.body)}`);
          return performance.now() - t0;
        });
        const crlInForce = waitFor(
          'the CRL in force',
          async () => {
            const r = await tlsHandshake(d.broker.port, ctx, 5000);
            if (!r.ok && r.code === 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED') return performance.now() - t0;
            if (!r.ok && !['ECONNREFUSED', 'ECONNRESET', 'CLOSED', 'EPIPE'].includes(r.code))
              throw new Error(`unexpected handshake outcome: ${JSON.stringify(r)}`);
            return null;
          },
          { timeoutMs: 30_000, intervalMs: 10 },
        );
        const [k, c, a, w] = await Promise.all([kicked, crlInForce, api, agentWiped]);
        samples.push({ kicked: typeof k === 'number' ? k : NaN, crlInForce: c, apiReturned: a, agentWiped: w });
        tpm.releaseTlsKey(ctx);
        process.stderr.write(
          `run ${i + 1}/${RUNS}: session closed ${typeof k === 'number' ? `${k.toFixed(0)} ms` : 'by the agent first'}, CRL in force ${c.toFixed(0)} ms\n`,
        );
      }
    } finally {
      await tpm.close();
    }
  } finally {
    await tpmSim.stop();
    await d.stop();
  }

  const mosquitto = (await run('mosquitto', ['-h']).catch((e: { stdout?: string }) => ({ stdout: e.stdout ?? '' }))).stdout
    .split('\n')[0]
    ?.trim();
  const row = (label: string, key: keyof Sample, goal: string) => {
    const v = samples
      .map((s) => s[key])
      .filter((x) => Number.isFinite(x))
      .sort((a, b) => a - b);
    if (v.length === 0) return `| ${label} | – | – | – | ${goal} |`;
    return `| ${label} | ${pct(v, 50).toFixed(0)} ms | ${pct(v, 95).toFixed(0)} ms | ${v[v.length - 1]!.toFixed(0)} ms | ${goal} |`;
  };
  console.log(
    `\n### Revocation (${RUNS} runs; ${os.cpus()[0]?.model ?? 'cpu'}, ${os.cpus().length} cores, Node ${process.version}, ${mosquitto}, swtpm)\n`,
  );
  console.log('| from the revoke API call to … | median | p95 | max | goal |\n|---|---|---|---|---|');
  console.log(row("the device's session closed by the broker (dynsec deleteClient)", 'kicked', 'p95 ≤ 500 ms'));
  console.log(row('the CRL in force (a fresh handshake with the revoked certificate refused)', 'crlInForce', ''));
  console.log(row('the API call returned (wipe sent, session kicked, CRL written, broker restart started)', 'apiReturned', ''));
  console.log(row('the agent obeyed the signed wipe and stopped', 'agentWiped', ''));
  const agentFirst = samples.filter((x) => !Number.isFinite(x.kicked)).length;
  if (agentFirst)
    console.log(
      `\n(${agentFirst} of ${RUNS} runs: the agent closed its session after the wipe before the broker's kick; not in the first row)`,
    );
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
