/**
 * Agent benchmark (issue 4): renewal latency on swtpm against a real edgeid-server (median, p95),
 * TPM commands per renewal, bundle size, cold start of the bundled agent to MQTT connected, and its
 * steady RSS. Prints a markdown table (for BENCHMARKS.md).
 *   node --import tsx scripts/bench-agent.ts [--renewals N]
 * EDGEID_BENCH_NODE_FLAGS="--max-semi-space-size=1 ..." passes V8 flags to the measured agent process.
 */
import { execFile, spawn } from 'node:child_process';
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { applyConfigObject, defaultConfig } from '../agent/config.js';
import { enroll, renewCertificate } from '../agent/identity.js';
import { PostureCollector } from '../agent/posture.js';
import { StateStore } from '../agent/state/store.js';
import { Tpm } from '../agent/tpm/index.js';
import { startMosquitto } from '../test/helpers/mosquitto.js';
import { extendBootPcrs, startSwtpm } from '../test/helpers/swtpm.js';
import { REPO, createToken, edgeidCaBundle, startServer, tmpDir } from '../test/integration/agent-env.js';

const run = promisify(execFile);
const argv = process.argv.slice(2);
const N = Number(argv[argv.indexOf('--renewals') + 1] ?? 50) || 50;

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function main(): Promise<void> {
  const rows: [string, string, string][] = [];
  const work = await tmpDir('edgeid-bench-agent-');
  const tpmSim = await startSwtpm();
  const srv = await startServer({ config: { rateLimit: { renew: { max: 100000, window: 60 }, enroll: { max: 1000, window: 60 } } } });
  try {
    await extendBootPcrs(tpmSim.tcti);

    // 1. renewal latency, in-process (one HTTPS round trip + one TPM batch + state commit each)
    const config = applyConfigObject(defaultConfig(), { stateDir: path.join(work, 'state'), tcti: tpmSim.tcti, logLevel: 'warn' });
    const store = await StateStore.open(config.stateDir, { lock: true });
    const tpm = await Tpm.open(tpmSim.tcti);
    const deps = { store, tpm, config, log: pino({ level: 'warn' }), posture: new PostureCollector({ config }) };
    const { uri } = await createToken(srv);
    const u = new URL(uri);
    let state = await enroll(deps, { server: u.searchParams.get('server')!, token: u.searchParams.get('token')!, caFingerprint: u.searchParams.get('ca')! });
    const times: number[] = [];
    const cmds: number[] = [];
    let stats: Record<string, number> = {};
    for (let i = 0; i < N + 3; i++) {
      const t0 = performance.now();
      const out = await renewCertificate(deps, state, 'bench');
      const ms = performance.now() - t0;
      state = out.state;
      if (i >= 3) {
        times.push(ms);
        cmds.push(out.tpmCommands);
        stats = out.tpmCommandStats;
      }
    }
    await tpm.close();
    await store.close();
    times.sort((a, b) => a - b);
    rows.push(['renewal latency (swtpm, HTTPS to a local server), median', `${pct(times, 50).toFixed(1)} ms`, '≤ 60 ms']);
    rows.push(['renewal latency, p95', `${pct(times, 95).toFixed(1)} ms`, '']);
    rows.push(['TPM commands per renewal', `${Math.max(...cmds)} (${Object.entries(stats).map(([k, v]) => `${k} ${v}`).join(', ')})`, '≤ 6']);

    // 2. bundle
    const dist = path.join(work, 'dist');
    await run(process.execPath, [path.join(REPO, 'scripts/bundle.mjs'), '--outdir', dist], { cwd: REPO });
    const bundle = path.join(dist, 'edgeid-agent.js');
    rows.push(['bundle size (edgeid-agent.js)', `${((await stat(bundle)).size / 1024).toFixed(0)} KiB (+ addon ${((await stat(path.join(dist, 'edgeid_tpm.node'))).size / 1024).toFixed(0)} KiB)`, '≤ 2 MB']);

    // 3. cold start of the bundled agent to MQTT connected, then steady RSS
    const caFile = path.join(work, 'edgeid-ca.pem');
    await writeFile(caFile, await edgeidCaBundle(srv));
    const broker = await startMosquitto({ caFile, certFile: path.join(srv.dataDir, 'ca', 'server.pem'), keyFile: path.join(srv.dataDir, 'ca', 'server.key') });
    try {
      const t2 = await startSwtpm();
      try {
        const stateDir = path.join(work, 'state2');
        const tok = await createToken(srv);
        await run(process.execPath, [bundle, 'enroll', '--uri', tok.uri, '--state', stateDir, '--tcti', t2.tcti]);
        const t0 = performance.now();
        const child = spawn(process.execPath, [...(process.env.EDGEID_BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean), bundle, 'run', '--state', stateDir, '--tcti', t2.tcti, '--mqtt-url', broker.url, '--heartbeat', '1'], { stdio: ['ignore', 'ignore', 'pipe'] });
        let log = '';
        const connected = await new Promise<number>((resolve, reject) => {
          child.stderr.on('data', (d: Buffer) => {
            log += d.toString();
            if (log.includes('"msg":"mqtt connected"')) resolve(performance.now() - t0);
          });
          child.once('exit', (c) => reject(new Error(`agent exited ${c}: ${log.slice(-1000)}`)));
        });
        rows.push(['cold start of the bundled agent to MQTT connected', `${connected.toFixed(0)} ms`, '']);
        const samples: number[] = [];
        for (let i = 0; i < 10; i++) {
          await new Promise((r) => setTimeout(r, 1000));
          const status = await readFile(`/proc/${child.pid}/status`, 'utf8');
          samples.push(Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024);
        }
        rows.push(['steady RSS of the running agent (MQTT connected, heartbeat 1 s)', `${Math.max(...samples.slice(5)).toFixed(1)} MB`, '≤ 60 MB']);
        child.kill('SIGTERM');
      } finally {
        await t2.stop();
      }
    } finally {
      await broker.stop();
    }
  } finally {
    await srv.stop();
    await tpmSim.stop();
  }
  console.log(`\n### Agent (swtpm, ${N} renewals, Node ${process.version})\n`);
  console.log('| measure | value | goal |\n|---|---|---|');
  for (const [a, b, c] of rows) console.log(`| ${a} | ${b} | ${c} |`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
