/**
 * Several server instances on one PostgreSQL database beside one on SQLite (bench only; never
 * loaded by the server): renewal throughput and p50/p99 of
 *   1 instance on SQLite (data/edgeid.db, synchronous = FULL),
 *   1 instance on PostgreSQL 15,
 *   3 instances on the same PostgreSQL database,
 * with the same software devices (scripts/harness/softdevice.ts: byte-exact TPM structures, every
 * server check performed) and the same load clients: the load processes of scripts/bench-server.ts
 * (`--load-client`, HTTPS keep-alive, closed loop at each concurrency), client k sending to
 * instance k mod N, the devices split evenly over the clients. PostgreSQL is the throwaway one of
 * scripts/harness/postgres.ts started with its durable defaults (fsync, synchronous_commit on),
 * on the same machine: the database's CPU competes with the servers' and the clients'.
 *
 *   node --import tsx scripts/bench-cluster.ts [options]          (scripts/bench cluster)
 *     --devices N       seeded devices (default 192)
 *     --clients K       load processes (default 3; a multiple of 3 spreads evenly)
 *     --concurrency L   closed-loop levels, renewals in flight over all clients (default 6,24,96)
 *     --seconds S       duration of each level (default 15)
 *     --quick           < 2 minutes: 48 devices, levels 24, 4 s
 * CPU per renewal from /proc/PID/stat: the edgeid-server processes, and PostgreSQL's postmaster
 * with its backends (a backend that ended during a level is not counted).
 * Prints a markdown table for BENCHMARKS.md; exit code 1 when any renewal failed or a server died.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { cp } from 'node:fs/promises';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { arg, checkArgs, f0, f1, flag, pctl } from './harness/bench.js';
import { binsMode } from './harness/bins.js';
import { startPostgres, type Postgres } from './harness/postgres.js';
import { startServerProcess, type ServerProcess } from './harness/server.js';
import { createSoftDevice, seedSoftDevices, type SoftDevice } from './harness/softdevice.js';

const LOAD_CLIENT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'bench-server.ts');

const log = (s: string) => process.stderr.write(`[bench cluster] ${s}\n`);

/** What a load client answers for one phase (scripts/bench-server.ts PhaseResult). */
interface PhaseResult {
  ok: number;
  errors: number;
  failures: Record<string, number>;
  firstFailure: string | null;
  lat: number[];
}

/** The servers' config: rate limits out of the way (as scripts/bench-server.ts). */
const BENCH_CONFIG = {
  rateLimit: {
    perAddress: { max: 1_000_000, window: 1 },
    renew: { max: 1_000_000, window: 1 },
    enroll: { max: 1_000_000, window: 1 },
    admin: { max: 1_000_000, window: 1 },
    connectionsPerAddress: 100_000,
  },
  ek: { requireEkCertificate: false },
};

const TICK_MS = 10; // USER_HZ = 100 on Linux
function procCpuMs(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) * TICK_MS;
  } catch {
    return NaN;
  }
}

/** The postmaster listening on `port` and its children (the backends): their CPU so far, summed. */
function postgresCpuMs(port: number): number {
  const procs = readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  let master = 0;
  for (const p of procs) {
    try {
      const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (path.basename(argv[0] ?? '') === 'postgres' && argv.includes('-p') && argv[argv.indexOf('-p') + 1] === String(port))
        master = Number(p);
    } catch {
      /* gone */
    }
  }
  if (!master) return NaN;
  let total = procCpuMs(master);
  for (const p of procs) {
    try {
      const f = readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]!.split(' ');
      if (Number(f[1]) === master) total += (Number(f[11]) + Number(f[12])) * TICK_MS;
    } catch {
      /* gone */
    }
  }
  return total;
}

interface Setup {
  name: string;
  instances: number;
  store: 'sqlite' | 'postgres';
}

interface Row {
  setup: Setup;
  level: number;
  rate: number;
  p50: number;
  p99: number;
  cpuPer: number;
  /** PostgreSQL's CPU (postmaster and backends) per renewal; NaN on SQLite. */
  dbCpuPer: number;
  errors: number;
  firstFailure: string | null;
}

/** Starts the instances of one setup on fresh data dirs (the first makes the CA; the others get copies) and seeds the devices. */
async function startSetup(s: Setup, base: string, devices: SoftDevice[], pgServer: Postgres | null): Promise<ServerProcess[]> {
  const store =
    s.store === 'postgres' ? { store: { url: await pgServer!.createDatabase(`bench_${s.instances}_${Date.now()}`), poolSize: 10 } } : {};
  const config = { ...BENCH_CONFIG, ...store };
  const dirs = Array.from({ length: s.instances }, (_, i) => path.join(base, `${s.store}-${s.instances}-${i}`, 'data'));
  for (const d of dirs) mkdirSync(path.dirname(d), { recursive: true });
  const first = await startServerProcess({ dataDir: dirs[0]!, config });
  await first.stop();
  await seedSoftDevices(dirs[0]!, devices, { configFile: store });
  await first.start(config);
  const all = [first];
  for (const dir of dirs.slice(1)) {
    await cp(path.join(dirs[0]!, 'ca'), path.join(dir, 'ca'), { recursive: true });
    await cp(path.join(dirs[0]!, 'admin-token'), path.join(dir, 'admin-token'));
    all.push(await startServerProcess({ dataDir: dir, config }));
  }
  return all;
}

function wireDevices(devices: SoftDevice[]) {
  return devices.map((d) => ({
    deviceId: d.deviceId!,
    akPublic: d.ak.public.toString('base64'),
    akPrivate: (d.ak.privateKey.export({ format: 'der', type: 'pkcs8' }) as Buffer).toString('base64'),
    pcrValues: [...d.pcrValues].map(([i, v]) => [i, v.toString('base64')]),
    pcrs: d.pcrs,
  }));
}

function waitMsg(c: ChildProcess): Promise<any> {
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null) => reject(new Error(`load client exited (${code})`));
    c.once('exit', onExit);
    c.once('message', (m) => {
      c.off('exit', onExit);
      resolve(m);
    });
  });
}

async function runSetup(
  s: Setup,
  o: { base: string; devices: SoftDevice[]; pg: Postgres | null; nClients: number; levels: number[]; phaseMs: number },
) {
  const servers = await startSetup(s, o.base, o.devices, o.pg);
  const children: ChildProcess[] = [];
  const rows: Row[] = [];
  try {
    const wire = wireDevices(o.devices);
    for (let k = 0; k < o.nClients; k++) {
      const c = fork(LOAD_CLIENT, ['--load-client'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      children.push(c);
      await waitMsg(c);
    }
    await Promise.all(
      children.map((c, k) => {
        const p = waitMsg(c);
        const srv = servers[k % servers.length]!;
        c.send({ cmd: 'init', url: srv.url, caPem: srv.caPem, devices: wire.filter((_, i) => i % o.nClients === k), tamperEvery: 0 });
        return p;
      }),
    );
    const pids = servers.map((x) => x.proc!.pid!);
    const split = (total: number, k: number) => Math.floor(total / o.nClients) + (k < total % o.nClients ? 1 : 0);
    for (const level of o.levels) {
      const c0 = pids.reduce((a, p) => a + procCpuMs(p), 0);
      const d0 = s.store === 'postgres' ? postgresCpuMs(o.pg!.port) : NaN;
      const rs = (await Promise.all(
        children.map((c, k) => {
          const p = waitMsg(c);
          c.send({ cmd: 'closed', concurrency: split(level, k), ms: o.phaseMs });
          return p;
        }),
      )) as PhaseResult[];
      const cpu = pids.reduce((a, p) => a + procCpuMs(p), 0) - c0;
      const dbCpu = s.store === 'postgres' ? postgresCpuMs(o.pg!.port) - d0 : NaN;
      if (!Number.isFinite(cpu)) throw new Error(`${s.name}: a server died during the load`);
      const lat = rs.flatMap((r) => r.lat).sort((a, b) => a - b);
      const ok = rs.reduce((a, r) => a + r.ok, 0);
      const errors = rs.reduce((a, r) => a + r.errors, 0);
      const row: Row = {
        setup: s,
        level,
        rate: (ok * 1000) / o.phaseMs,
        p50: pctl(lat, 50),
        p99: pctl(lat, 99),
        cpuPer: cpu / Math.max(1, ok),
        dbCpuPer: dbCpu / Math.max(1, ok),
        errors,
        firstFailure: rs.find((r) => r.firstFailure)?.firstFailure ?? null,
      };
      rows.push(row);
      log(`${s.name}, ${level} in flight: ${f1(row.rate)} renewals/s, p99 ${f1(row.p99)} ms, ${errors} errors`);
    }
    for (const c of children) c.send({ cmd: 'exit' });
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill();
    for (const x of servers) await x.close().catch(() => {});
  }
  return rows;
}

async function main(): Promise<number> {
  checkArgs(['--quick'], ['--devices', '--clients', '--concurrency', '--seconds']);
  const quick = flag('--quick');
  const nDevices = Number(arg('--devices', quick ? '48' : '192'));
  const nClients = Number(arg('--clients', '3'));
  const levels = arg('--concurrency', quick ? '24' : '6,24,96')
    .split(',')
    .map(Number);
  const phaseMs = Number(arg('--seconds', quick ? '4' : '15')) * 1000;
  if (levels.some((l) => l > nDevices)) throw new Error('--devices must be at least the highest --concurrency');
  process.env.EDGEID_TEST_BINS ??= 'dist';
  const mode = binsMode();
  const base = mkdtempSync('/tmp/edgeid-bench-cluster-');
  let pgServer: Postgres | null = null;
  const t0 = performance.now();
  try {
    pgServer = await startPostgres({ durable: true });
    const setups: Setup[] = [
      { name: 'SQLite, 1 instance', instances: 1, store: 'sqlite' },
      { name: 'PostgreSQL, 1 instance', instances: 1, store: 'postgres' },
      { name: 'PostgreSQL, 3 instances', instances: 3, store: 'postgres' },
    ];
    const rows: Row[] = [];
    for (const s of setups) {
      // the same devices (the same AK keys and PCRs) in every setup, seeded again in its own store
      const devices = Array.from({ length: nDevices }, () => createSoftDevice());
      rows.push(...(await runSetup(s, { base, devices, pg: pgServer, nClients, levels, phaseMs })));
    }
    const cpu = cpus();
    const args = process.argv.slice(2).join(' ');
    console.log(
      `<!-- ${new Date().toISOString().slice(0, 16)}Z · ${cpu.length} cores (${cpu[0]?.model.trim()}) · ${(totalmem() / 2 ** 30).toFixed(1)} GiB · ${process.version} · programs: ${mode} · command: scripts/bench cluster${args ? ' ' + args : ''} -->`,
    );
    console.log('');
    console.log(
      `Renewals, closed loop, ${nDevices} software devices, ${nClients} load processes (client k → instance k mod N), ${phaseMs / 1000} s per level; PostgreSQL 15 on the same machine (fsync on).`,
    );
    console.log('');
    console.log(
      '| setup | in flight | renewals/s | p50 ms | p99 ms | server CPU ms/renewal (all instances) | PostgreSQL CPU ms/renewal | errors |',
    );
    console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
    for (const r of rows)
      console.log(
        `| ${r.setup.name} | ${r.level} | ${f0(r.rate)} | ${f1(r.p50)} | ${f1(r.p99)} | ${f1(r.cpuPer)} | ${f1(r.dbCpuPer)} | ${r.errors} |`,
      );
    const best = (name: string) => Math.max(...rows.filter((r) => r.setup.name === name).map((r) => r.rate));
    console.log('');
    console.log(
      `Best: SQLite ×1 ${f0(best(setups[0]!.name))}/s · PostgreSQL ×1 ${f0(best(setups[1]!.name))}/s · PostgreSQL ×3 ${f0(best(setups[2]!.name))}/s (${f1((performance.now() - t0) / 1000)} s in all).`,
    );
    const errors = rows.reduce((a, r) => a + r.errors, 0);
    if (errors > 0) {
      console.error(`[bench cluster] ${errors} renewals failed; first: ${rows.find((r) => r.firstFailure)?.firstFailure}`);
      return 1;
    }
    return 0;
  } finally {
    await pgServer?.stop().catch(() => {});
    rmSync(base, { recursive: true, force: true });
  }
}

try {
  process.exitCode = await main();
} catch (e) {
  console.error(`[bench cluster] FAILED: ${(e as Error).stack ?? e}`);
  process.exitCode = 1;
}
