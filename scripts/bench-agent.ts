/**
 * Agent benchmark: renewal latency on swtpm against a real edgeid-server (median, p95),
 * TPM commands per renewal, bundle size, cold start of the bundled agent to MQTT connected, and its
 * steady RSS. Prints a markdown table (for BENCHMARKS.md).
 *   node --import tsx scripts/bench-agent.ts [--renewals N] [--rss-seconds S] [--bundle DIR]
 *
 * TPM commands: every command of the renewal's TPM batch, flushes included, from the queue's own
 * count. Steady state = the SRK and AK already resident (every renewal but the first of a process);
 * the first one and the TLS handshake that follows a renewal (outside the queue: tls.ContextLoad,
 * tls.Sign, tls.FlushContext) are reported on their own rows.
 *
 * RSS: the bundled agent `node dist/edgeid-agent.js run`, twice — as the systemd unit runs it (the
 * node flags of its ExecStart and its MALLOC_/UV_ Environment= tunables) and as plain `node` —
 * MQTT connected, heartbeat 1 s, 30-second certificates so it renews during the window; sampled
 * every 0.5 s for S seconds (default 60): median and max of the second half, with RssAnon/RssFile
 * and the live JS heap after a forced GC (via a small --import probe).
 * --bundle DIR measures a bundle built elsewhere (e.g. an older revision) instead of building one.
 * EDGEID_BENCH_NODE_FLAGS="..." passes extra Node/V8 flags to the measured agent process.
 *
 * Renewal soak: `scripts/bench agent --soak N [--lifetime S]` runs only this: the bundled agent as
 * the systemd unit runs it, MQTT connected (heartbeat 1 s), against a real server issuing S-second
 * certificates (default 5) and swtpm, until it has renewed N times (≥ 500 to show a leak); RSS is
 * sampled at every renewal. Prints RSS by renewal count and the slope over the second half.
 * `--plain`: plain `node`, without the unit's node flags and memory tunables.
 */
import { execFile, spawn } from 'node:child_process';
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { applyConfigObject, defaultConfig } from '../agent/config.js';
import { forgetPcrValues } from '../agent/evidence.js';
import { enroll, renewCertificate } from '../agent/identity.js';
import { PostureCollector } from '../agent/posture.js';
import { StateStore } from '../agent/state/store.js';
import { Tpm } from '../agent/tpm/index.js';
import { NO_EVENT_LOG } from './harness/eventlog.js';
import { REPO, tmpDir } from './harness/fs.js';
import { startMosquitto } from './harness/mosquitto.js';
import { edgeidCaBundle } from './harness/pki.js';
import { createToken, startServerProcess } from './harness/server.js';
import { extendBootPcrs, startSwtpm } from './harness/swtpm.js';
import { waitFor } from './harness/wait.js';

const run = promisify(execFile);
const argv = process.argv.slice(2);
const opt = (name: string): string | undefined => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined);
const N = Number(opt('--renewals') ?? 50) || 50;
const RSS_SECONDS = Number(opt('--rss-seconds') ?? 60) || 60;
const PREBUILT = opt('--bundle');
const SOAK = opt('--soak') === undefined ? 0 : Number(opt('--soak'));
const SOAK_LIFETIME = Number(opt('--lifetime') ?? 5) || 5;
const SOAK_PLAIN = argv.includes('--plain');

/** Node flags of the unit's ExecStart and its Environment= memory tunables (measured as shipped). */
async function unitSettings(): Promise<{ nodeFlags: string[]; env: Record<string, string> }> {
  const unit = await readFile(path.join(REPO, 'scripts/edgeid-agent.service'), 'utf8');
  const env: Record<string, string> = {};
  for (const m of unit.matchAll(/^Environment=(MALLOC_[A-Z_]+|UV_[A-Z_]+)=(\S+)$/gm)) env[m[1]!] = m[2]!;
  const exec = /^ExecStart=\S*node((?:\s+--\S+)*)\s+\S+\.js/m.exec(unit);
  return { nodeFlags: (exec?.[1] ?? '').split(/\s+/).filter(Boolean), env };
}

/** Reports the process's memory on SIGUSR2 (after a forced GC) into $EDGEID_BENCH_PROBE. */
const PROBE = `import { writeFileSync } from 'node:fs';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
process.on('SIGUSR2', () => {
  v8.setFlagsFromString('--expose-gc');
  runInNewContext('gc')();
  writeFileSync(process.env.EDGEID_BENCH_PROBE, JSON.stringify(process.memoryUsage()));
});
`;

function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
}

function statsText(stats: Record<string, number>): string {
  return Object.entries(stats)
    .map(([k, v]) => (v > 1 ? `${k}×${v}` : k))
    .join(', ');
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function main(): Promise<void> {
  const rows: [string, string, string][] = [];
  const work = await tmpDir('edgeid-bench-agent-');
  const tpmSim = await startSwtpm();
  const srv = await startServerProcess({
    config: { rateLimit: { renew: { max: 100000, window: 60 }, enroll: { max: 1000, window: 60 } } },
  });
  try {
    await extendBootPcrs(tpmSim.tcti);

    // 1. renewal latency, in-process (one HTTPS round trip + one TPM batch + state commit each)
    const config = applyConfigObject(defaultConfig(), {
      stateDir: path.join(work, 'state'),
      tcti: tpmSim.tcti,
      logLevel: 'warn',
      eventLog: NO_EVENT_LOG,
    });
    const store = await StateStore.open(config.stateDir, { lock: true });
    const tpm = await Tpm.open(tpmSim.tcti);
    const deps = { store, tpm, config, log: pino({ level: 'warn' }), posture: new PostureCollector({ config }) };
    const { uri } = await createToken(srv);
    const u = new URL(uri);
    let state = await enroll(deps, {
      server: u.searchParams.get('server')!,
      token: u.searchParams.get('token')!,
      caFingerprint: u.searchParams.get('ca')!,
    });
    const times: number[] = [];
    const cmds: number[] = [];
    const first = { commands: 0, stats: {} as Record<string, number> };
    const steadyStats = new Map<string, number>(); // breakdown text → how many renewals had it
    // As in a new `run` process: no residents, no remembered PCR values.
    await tpm.flushResidents();
    forgetPcrValues();
    for (let i = 0; i < N + 3; i++) {
      const t0 = performance.now();
      const out = await renewCertificate(deps, state, 'bench');
      const ms = performance.now() - t0;
      state = out.state;
      if (i === 0) Object.assign(first, { commands: out.tpmCommands, stats: out.tpmCommandStats });
      if (i >= 3) {
        times.push(ms);
        cmds.push(out.tpmCommands);
        const k = `${out.tpmCommands} (${statsText(out.tpmCommandStats)})`;
        steadyStats.set(k, (steadyStats.get(k) ?? 0) + 1);
      }
    }
    // The TLS handshake after a renewal: the context comes from the renewal's saved context.
    const queuedBefore = tpm.commandCount;
    await tpm.tlsSecureContext({
      key: await store.readKey(`session-${state.certificate!.sessionKey}`),
      certPem: state.certificate!.pem,
      caPem: srv.caPem,
    });
    const tlsContextCommands = tpm.commandCount - queuedBefore;
    const residents = tpm.residentObjectCount;
    await tpm.close();
    await store.close();
    times.sort((a, b) => a - b);
    rows.push(['renewal latency (swtpm, HTTPS to a local server), median', `${pct(times, 50).toFixed(1)} ms`, '≤ 60 ms']);
    rows.push(['renewal latency, p95', `${pct(times, 95).toFixed(1)} ms`, '']);
    rows.push([
      'TPM commands per renewal, steady state (SRK + AK resident; every command incl. flushes)',
      `${median(cmds)}, max ${Math.max(...cmds)} over ${cmds.length}: ${[...steadyStats].map(([k, n]) => `${k} ×${n}`).join('; ')}`,
      '≤ 6',
    ]);
    rows.push([
      'TPM commands, first renewal of a process (loads the residents, reads the PCRs)',
      `${first.commands} (${statsText(first.stats)})`,
      '',
    ]);
    rows.push([
      'TPM objects resident between renewals / TPM commands to build the TLS context after a renewal',
      `${residents} (SRK, AK) / ${tlsContextCommands}`,
      '',
    ]);

    // 2. bundle
    let dist = path.join(work, 'dist');
    if (PREBUILT) dist = path.resolve(PREBUILT);
    else await run(process.execPath, [path.join(REPO, 'scripts/bundle.mjs'), '--outdir', dist], { cwd: REPO });
    const bundle = path.join(dist, 'edgeid-agent.js');
    rows.push([
      'bundle size (edgeid-agent.js)',
      `${((await stat(bundle)).size / 1024).toFixed(0)} KiB (+ addon ${((await stat(path.join(dist, 'edgeid_tpm.node'))).size / 1024).toFixed(0)} KiB)`,
      '≤ 2 MB',
    ]);

    // 3. cold start of the bundled agent to MQTT connected, then RSS while it runs and renews
    const rssSrv = await startServerProcess({
      config: {
        allowShortLifetimes: true,
        zones: { default: { lifetime: 30 } },
        rateLimit: { renew: { max: 100000, window: 60 }, enroll: { max: 1000, window: 60 } },
      },
    });
    const caFile = path.join(work, 'edgeid-ca.pem');
    await writeFile(caFile, await edgeidCaBundle(rssSrv));
    const broker = await startMosquitto({
      caFile,
      certFile: path.join(rssSrv.dataDir, 'ca', 'server.pem'),
      keyFile: path.join(rssSrv.dataDir, 'ca', 'server.key'),
    });
    try {
      const probeFile = path.join(work, 'probe.mjs');
      await writeFile(probeFile, PROBE);
      const unit = await unitSettings();
      const measure = async (label: string, nodeFlags: string[], env: Record<string, string>, coldStartRow: boolean): Promise<void> => {
        const t2 = await startSwtpm();
        try {
          await extendBootPcrs(t2.tcti);
          const stateDir = path.join(work, `state-${label.replace(/\W+/g, '-')}`);
          const tok = await createToken(rssSrv);
          await run(process.execPath, [bundle, 'enroll', '--uri', tok.uri, '--state', stateDir, '--tcti', t2.tcti]);
          const probeOut = path.join(work, 'probe.json');
          const t0 = performance.now();
          const child = spawn(
            process.execPath,
            [
              ...nodeFlags,
              ...(process.env.EDGEID_BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean),
              '--import',
              probeFile,
              bundle,
              'run',
              '--state',
              stateDir,
              '--tcti',
              t2.tcti,
              '--mqtt-url',
              broker.url,
              '--heartbeat',
              '1',
            ],
            {
              stdio: ['ignore', 'ignore', 'pipe'],
              env: { ...process.env, ...env, EDGEID_EVENT_LOG: NO_EVENT_LOG, EDGEID_BENCH_PROBE: probeOut },
            },
          );
          try {
            let log = '';
            const connected = await new Promise<number>((resolve, reject) => {
              child.stderr.on('data', (d: Buffer) => {
                log += d.toString();
                if (log.includes('"msg":"mqtt connected"')) resolve(performance.now() - t0);
              });
              child.once('exit', (c) => reject(new Error(`agent exited ${c}: ${log.slice(-1000)}`)));
            });
            if (coldStartRow) rows.push([`cold start of the bundled agent to MQTT connected (${label})`, `${connected.toFixed(0)} ms`, '']);
            const samples: number[] = [];
            let last = '';
            for (let i = 0; i < RSS_SECONDS * 2; i++) {
              await new Promise((r) => setTimeout(r, 500));
              const status = await readFile(`/proc/${child.pid}/status`, 'utf8');
              const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(status)?.[1] ?? 0) / 1024;
              samples.push(kb('VmRSS'));
              last = `RssAnon ${kb('RssAnon').toFixed(1)} + RssFile ${kb('RssFile').toFixed(1)} MB`;
            }
            await rm(probeOut, { force: true });
            child.kill('SIGUSR2');
            const heap = await waitFor(
              'the memory probe',
              async () => JSON.parse(await readFile(probeOut, 'utf8')) as { heapUsed?: number; heapTotal?: number },
              { timeoutMs: 10_000, retryErrors: true },
            );
            const renewals = (log.match(/"msg":"certificate renewed"/g) ?? []).length;
            const steady = samples.slice(samples.length / 2);
            rows.push([
              `steady RSS of the running agent, ${label} (MQTT connected, heartbeat 1 s, ${renewals} renewals in ${RSS_SECONDS} s), median of the 2nd half`,
              `${median(steady).toFixed(1)} MB (max ${Math.max(...steady).toFixed(1)}; at the end ${last}; JS heap after GC ${((heap.heapUsed ?? 0) / 1048576).toFixed(1)} of ${((heap.heapTotal ?? 0) / 1048576).toFixed(1)} MB)`,
              '≤ 60 MB',
            ]);
          } finally {
            child.kill('SIGTERM');
          }
        } finally {
          await t2.stop();
        }
      };
      const shipped = [...unit.nodeFlags, ...Object.entries(unit.env).map(([k, v]) => `${k}=${v}`)].join(' ') || 'nothing';
      await measure(`as the systemd unit runs it (${shipped})`, unit.nodeFlags, unit.env, true);
      await measure('plain `node`, no flags or tunables', [], {}, true);
    } finally {
      await broker.stop();
      await rssSrv.close();
    }
  } finally {
    await srv.close();
    await tpmSim.stop();
  }
  console.log(`\n### Agent (swtpm, ${N} renewals, Node ${process.version})\n`);
  console.log('| measure | value | goal |\n|---|---|---|');
  for (const [a, b, c] of rows) console.log(`| ${a} | ${b} | ${c} |`);
}

/** Least-squares slope of y over x. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

async function soak(renewals: number): Promise<void> {
  const work = await tmpDir('edgeid-bench-soak-');
  const srv = await startServerProcess({
    config: {
      allowShortLifetimes: true,
      zones: { default: { lifetime: SOAK_LIFETIME } },
      rateLimit: { renew: { max: 100000, window: 60 }, enroll: { max: 1000, window: 60 } },
    },
  });
  const t2 = await startSwtpm();
  const caFile = path.join(work, 'edgeid-ca.pem');
  await writeFile(caFile, await edgeidCaBundle(srv));
  const broker = await startMosquitto({
    caFile,
    certFile: path.join(srv.dataDir, 'ca', 'server.pem'),
    keyFile: path.join(srv.dataDir, 'ca', 'server.key'),
  });
  const samples: { renewal: number; rss: number; anon: number; at: number }[] = [];
  const started = performance.now();
  try {
    await extendBootPcrs(t2.tcti);
    let dist = path.join(work, 'dist');
    if (PREBUILT) dist = path.resolve(PREBUILT);
    else await run(process.execPath, [path.join(REPO, 'scripts/bundle.mjs'), '--outdir', dist], { cwd: REPO });
    const bundle = path.join(dist, 'edgeid-agent.js');
    const stateDir = path.join(work, 'state');
    const tok = await createToken(srv);
    await run(process.execPath, [bundle, 'enroll', '--uri', tok.uri, '--state', stateDir, '--tcti', t2.tcti]);
    const unit = SOAK_PLAIN ? { nodeFlags: [], env: {} } : await unitSettings();
    const child = spawn(
      process.execPath,
      [...unit.nodeFlags, bundle, 'run', '--state', stateDir, '--tcti', t2.tcti, '--mqtt-url', broker.url, '--heartbeat', '1'],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, ...unit.env, EDGEID_EVENT_LOG: NO_EVENT_LOG },
      },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        let count = 0;
        let tail = '';
        child.stderr.on('data', (d: Buffer) => {
          tail = (tail + d.toString()).slice(-100_000);
          const lines = tail.split('\n');
          tail = lines.pop()!;
          for (const l of lines) {
            if (!l.includes('"msg":"certificate renewed"')) continue;
            count++;
            readFile(`/proc/${child.pid}/status`, 'utf8').then((status) => {
              const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(status)?.[1] ?? 0) / 1024;
              samples.push({ renewal: count, rss: kb('VmRSS'), anon: kb('RssAnon'), at: (performance.now() - started) / 1000 });
              if (count % 50 === 0) console.error(`[soak] ${count} renewals, RSS ${kb('VmRSS').toFixed(1)} MB`);
              if (count >= renewals) resolve();
            }, reject);
          }
        });
        child.once('exit', (c) => reject(new Error(`agent exited ${c}`)));
      });
    } finally {
      child.kill('SIGTERM');
    }
  } finally {
    await broker.stop();
    await t2.stop();
    await srv.close();
  }
  samples.sort((a, b) => a.renewal - b.renewal);
  const half = samples.slice(Math.floor(samples.length / 2));
  const perHundred =
    slope(
      half.map((s) => s.renewal),
      half.map((s) => s.rss),
    ) * 100;
  const anonPerHundred =
    slope(
      half.map((s) => s.renewal),
      half.map((s) => s.anon),
    ) * 100;
  console.log(
    `\n### Agent renewal soak (${renewals} renewals of ${SOAK_LIFETIME}-second certificates, bundled agent ${SOAK_PLAIN ? 'with plain node' : 'as the unit runs it'}, MQTT connected, Node ${process.version})\n`,
  );
  console.log('| renewals | elapsed | RSS | RssAnon |\n|---|---|---|---|');
  const marks = new Set([1, 10, 50, 100, 200, 300, 400, 500, renewals]);
  for (const s of samples)
    if (marks.has(s.renewal) || s.renewal % 250 === 0)
      console.log(`| ${s.renewal} | ${s.at.toFixed(0)} s | ${s.rss.toFixed(1)} MB | ${s.anon.toFixed(1)} MB |`);
  console.log(
    `\nSlope over the second half (renewals ${half[0]?.renewal}–${half.at(-1)?.renewal}): RSS ${perHundred >= 0 ? '+' : ''}${perHundred.toFixed(2)} MB per 100 renewals (RssAnon ${anonPerHundred >= 0 ? '+' : ''}${anonPerHundred.toFixed(2)}).`,
  );
}

(SOAK > 0 ? soak(SOAK) : main()).catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
