/**
 * Server load benchmark (bench/test only; never loaded by the server): a real `edgeid-server`
 * process (the bundle, scripts/harness/bins.ts; EDGEID_TEST_BINS=source runs the sources) on a
 * data dir seeded with N software devices (scripts/harness/softdevice.ts: byte-exact TPM
 * structures, every server check performed), rate limits raised for the bench, and load from K
 * separate client processes over HTTPS keep-alive:
 *  1. the crypto bound, on all cores (worker_threads, node:crypto), before the load: per renewal
 *     1 ECDSA P-256 signature + 3 verifications (quote, certify, CSR), over 1 KiB messages;
 *  2. closed loop at several concurrencies (renewals in flight) → renewals/s, the maximum;
 *  3. open loop at a fixed rate of 25/50/100 % of that maximum → p50/p99 latency, measured from
 *     the moment each request was due (no coordinated omission);
 *  4. enrollments/s: fresh devices, closed loop at the best renewal concurrency;
 *  5. server CPU (utime+stime, /proc/PID/stat) per renewal, RSS (/proc/PID/status) sampled every
 *     second, SQLite database size (db + WAL) before and after.
 * A renewal is POST /v1/renew with the nonce of the previous one (the first after a challenge);
 * the client builds its evidence (a new session key, TPM2_Certify, TPM2_Quote, CSR) before each
 * request, on the same machine: the client processes' CPU is reported beside the server's.
 *
 *   node --import tsx scripts/bench-server.ts [options]            (scripts/bench server)
 *     --devices N        seeded devices (default 256)
 *     --clients K        load processes (default: one per core)
 *     --concurrency L    closed-loop levels, comma-separated (default 1,4,16,64)
 *     --seconds S        duration of each phase (default 15)
 *     --tmpfs            the data dir on /dev/shm (tmpfs: every fsync is free) instead of /tmp:
 *                        what synchronous = FULL's fsync per commit costs, by difference
 *     --cpu-prof         the server runs under `node --cpu-prof` (from the sources, so that
 *                        functions and modules have their names); prints the top self-time
 *                        functions and modules
 *     --client-prof      the load clients run under `node --cpu-prof`; prints the first client's top
 *                        self-time functions (what the load generator's CPU per renewal is made of)
 *     --tamper-every M   every M-th renewal of each client carries a tampered quote (refused by the
 *                        server): proves that the bench fails on errors (its test)
 *     --enrollments E    fresh devices enrolled at the end (default 256; 0: none): enroll/start with a
 *                        software EK without certificate (ek.requireEkCertificate false),
 *                        TPM2_ActivateCredential in software (scripts/harness/softenroll.ts), finish
 *     --quick            < 2 minutes: 32 devices, 2 clients, levels 1,8, 4 s phases, one open-loop
 *                        rate; exits non-zero only on errors (a non-2xx renewal, a crash)
 *
 *   node --import tsx scripts/bench-server.ts --fleet [options]    (scripts/bench fleet)
 *     A fleet renewing on schedule: N devices whose certificates live L seconds (the zone's
 *     lifetime), each renewing every 2/3·L (agent/README: renewal at two thirds of the lifetime),
 *     their first renewals spread evenly over one interval, for M minutes: renewals/s offered and
 *     done, p50/p99 from the moment each was due, failed renewals, renewals that came after the
 *     device's certificate expired, server RSS every 5 s, CPU, DB size and its growth per day.
 *     --devices N (default 10000; the goal is 100000), --lifetime L (seconds, default 300),
 *     --minutes M (default 15), --clients K, --key-cache C (the server's keyCacheSize; default: the
 *     fleet's size + 5 %, at least 16,384).
 * Exit code 1 when any renewal failed or the server died.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { objectName, parsePublic } from '../protocol/tpm/public.js';
import { arg, checkArgs, f0, f1, flag, pctl } from './harness/bench.js';
import { binsMode } from './harness/bins.js';
import { createToken, startServerProcess, type ServerProcess } from './harness/server.js';
import { challenge, createSoftDevice, renew, seedSoftDevices, softClient, type SoftDevice } from './harness/softdevice.js';
import { softEk, softEnroll } from './harness/softenroll.js';

const SELF = fileURLToPath(import.meta.url);

// ---------------------------------------------------------------------------------------------
// load client (a child process): `--load-client`, devices and commands over IPC
// ---------------------------------------------------------------------------------------------

interface WireDevice {
  deviceId: string;
  akPublic: string;
  akPrivate: string;
  pcrValues: [number, string][];
  pcrs: number[];
}

type Command =
  | { cmd: 'init'; url: string; caPem: string; devices: WireDevice[]; tamperEvery: number }
  | { cmd: 'closed'; concurrency: number; ms: number }
  | { cmd: 'open'; rate: number; ms: number }
  | { cmd: 'enroll'; tokens: string[]; concurrency: number }
  | { cmd: 'fleet'; intervalMs: number; lifetimeMs: number; ms: number }
  | { cmd: 'exit' };

interface PhaseResult {
  ok: number;
  errors: number;
  /** status → count, for the non-2xx answers and thrown errors (status 0). */
  failures: Record<string, number>;
  firstFailure: string | null;
  /** latencies of the successful renewals (ms). */
  lat: number[];
  /** due but no free device (open loop only: the pool was too small for the rate × latency). */
  starved: number;
  clientCpuMs: number;
  /** fleet: renewals that succeeded after the device's previous certificate had expired. */
  late?: number;
}

function fromWire(w: WireDevice): SoftDevice {
  const dev = createSoftDevice({ pcrs: w.pcrs });
  const pub = Buffer.from(w.akPublic, 'base64');
  const parsed = parsePublic(pub);
  const privateKey: KeyObject = createPrivateKey({ key: Buffer.from(w.akPrivate, 'base64'), format: 'der', type: 'pkcs8' });
  dev.ak = { public: pub, parsed, name: objectName(parsed), privateKey };
  dev.pcrValues = new Map(w.pcrValues.map(([i, v]) => [i, Buffer.from(v, 'base64')]));
  dev.deviceId = w.deviceId;
  return dev;
}

async function loadClient(): Promise<void> {
  let devices: SoftDevice[] = [];
  let client: ReturnType<typeof softClient> | null = null;
  const free: SoftDevice[] = [];
  let tamperEvery = 0;
  let sent = 0;
  const send = (m: unknown) => process.send!(m);

  /** one renewal of a free device; re-challenges a device whose renewal failed. */
  const once = async (r: PhaseResult, due: number): Promise<void> => {
    const dev = free.shift();
    if (!dev) {
      r.starved++;
      return;
    }
    try {
      sent++;
      const out = await renew(dev, client!, { tamperQuote: tamperEvery > 0 && sent % tamperEvery === 0 });
      if (out.status === 200) {
        r.ok++;
        r.lat.push(performance.now() - due);
      } else {
        r.errors++;
        r.failures[out.status] = (r.failures[out.status] ?? 0) + 1;
        r.firstFailure ??= `${out.status} ${JSON.stringify(out.body).slice(0, 300)}`;
        await challenge(dev, client!);
      }
    } catch (e) {
      r.errors++;
      r.failures['0'] = (r.failures['0'] ?? 0) + 1;
      r.firstFailure ??= String(e);
      await challenge(dev, client!).catch(() => {});
    } finally {
      free.push(dev);
    }
  };
  const result = (): PhaseResult => ({ ok: 0, errors: 0, failures: {}, firstFailure: null, lat: [], starved: 0, clientCpuMs: 0 });
  const cpu = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };

  process.on('message', async (m: Command) => {
    if (m.cmd === 'init') {
      client = softClient(m.url, m.caPem, { maxSockets: 1024 });
      tamperEvery = m.tamperEvery;
      devices = m.devices.map(fromWire);
      // the first renewal of a seeded device starts with a challenge (seedSoftDevices)
      for (let i = 0; i < devices.length; i += 32)
        await Promise.all(
          devices.slice(i, i + 32).map(async (d) => {
            const r = await challenge(d, client!);
            if (r.status !== 200) throw new Error(`challenge: ${r.status} ${JSON.stringify(r.body)}`);
          }),
        );
      free.push(...devices);
      send({ ready: true });
    } else if (m.cmd === 'closed') {
      const r = result();
      const c0 = cpu();
      const end = performance.now() + m.ms;
      await Promise.all(
        Array.from({ length: m.concurrency }, async () => {
          while (performance.now() < end) await once(r, performance.now());
        }),
      );
      r.clientCpuMs = cpu() - c0;
      send(r);
    } else if (m.cmd === 'open') {
      const r = result();
      const c0 = cpu();
      const start = performance.now();
      const interval = 1000 / m.rate;
      const pending = new Set<Promise<void>>();
      // request i is due at start + i·interval; a late timer sends every request already due,
      // each timed from its due moment
      let i = 0;
      await new Promise<void>((resolve) => {
        const tick = () => {
          const now = performance.now();
          while (start + i * interval <= now && i * interval < m.ms) {
            const p = once(r, start + i * interval);
            pending.add(p);
            void p.then(() => pending.delete(p));
            i++;
          }
          if (i * interval >= m.ms) return resolve();
          setTimeout(tick, Math.max(0, start + i * interval - performance.now()));
        };
        tick();
      });
      await Promise.all(pending);
      r.clientCpuMs = cpu() - c0;
      send(r);
    } else if (m.cmd === 'enroll') {
      // fresh devices (new EK and AK), each enrolled with one token; the evidence is built before each request
      const r = result();
      const c0 = cpu();
      const tokens = [...m.tokens];
      await Promise.all(
        Array.from({ length: m.concurrency }, async () => {
          for (let token = tokens.shift(); token; token = tokens.shift()) {
            const dev = createSoftDevice();
            const ek = softEk();
            const t = performance.now();
            try {
              const out = await softEnroll(dev, ek, client!, token);
              if (out.status === 200) {
                r.ok++;
                r.lat.push(performance.now() - t);
              } else {
                r.errors++;
                r.failures[`${out.step} ${out.status}`] = (r.failures[`${out.step} ${out.status}`] ?? 0) + 1;
                r.firstFailure ??= `${out.step} ${out.status} ${JSON.stringify(out.body).slice(0, 300)}`;
              }
            } catch (e) {
              r.errors++;
              r.failures['0'] = (r.failures['0'] ?? 0) + 1;
              r.firstFailure ??= String(e);
            }
          }
        }),
      );
      r.clientCpuMs = cpu() - c0;
      send(r);
    } else if (m.cmd === 'fleet') {
      // each device renews every intervalMs, the first renewals spread evenly over one interval;
      // a failed renewal is retried after a second; late = its certificate had expired meanwhile
      const r = { ...result(), late: 0 };
      const c0 = cpu();
      const start = performance.now();
      const end = start + m.ms;
      const n = devices.length;
      await Promise.all(
        devices.map(async (dev, j) => {
          let due = start + (j / n) * m.intervalMs;
          // the seeded certificate is long-lived: the first "expiry" is one lifetime after the first due time
          let expires = due + m.lifetimeMs - m.intervalMs;
          while (due < end) {
            const wait = due - performance.now();
            if (wait > 0) await new Promise((res) => setTimeout(res, wait));
            try {
              // a nonce that ran out (the challenge at start lives challengeTtl, 5 min by default)
              // is replaced first, as the agent does: renew/challenge, then renew
              if ((dev.nonceExpiresAt ?? Infinity) < Date.now() + 5000) {
                const c = await challenge(dev, client!);
                if (c.status !== 200) throw new Error(`challenge: ${c.status} ${JSON.stringify(c.body).slice(0, 200)}`);
              }
              const out = await renew(dev, client!, {});
              const done = performance.now();
              if (out.status === 200) {
                r.ok++;
                r.lat.push(done - due);
                if (done > expires) r.late++;
                // the agent renews at two thirds of its new certificate's lifetime
                expires = done + m.lifetimeMs;
                due = done + m.intervalMs;
                continue;
              }
              r.errors++;
              r.failures[out.status] = (r.failures[out.status] ?? 0) + 1;
              r.firstFailure ??= `${out.status} ${JSON.stringify(out.body).slice(0, 300)}`;
              await challenge(dev, client!).catch(() => {});
            } catch (e) {
              r.errors++;
              r.failures['0'] = (r.failures['0'] ?? 0) + 1;
              r.firstFailure ??= String(e);
              await challenge(dev, client!).catch(() => {});
            }
            due = performance.now() + 1000;
          }
        }),
      );
      r.clientCpuMs = cpu() - c0;
      send(r);
    } else if (m.cmd === 'exit') {
      client?.close();
      process.exit(0);
    }
  });
  send({ started: true });
}

// ---------------------------------------------------------------------------------------------
// crypto bound: worker_threads on every core, plain JavaScript (no tsx in the workers)
// ---------------------------------------------------------------------------------------------

const CRYPTO_WORKER = `
const { workerData, parentPort } = require('node:worker_threads');
const { generateKeyPairSync, sign, verify, randomBytes } = require('node:crypto');
const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const msg = randomBytes(1024);
const sig = sign('sha256', msg, privateKey);
const { performance } = require('node:perf_hooks');
const end = performance.now() + workerData.ms;
let n = 0;
while (performance.now() < end) {
  sign('sha256', msg, privateKey);
  for (let k = 0; k < 3; k++) if (!verify('sha256', msg, publicKey, sig)) throw new Error('verify');
  n++;
}
parentPort.postMessage(n);
`;

async function cryptoBound(ms: number): Promise<{ perSecond: number; threads: number; msPerRenewal: number }> {
  const threads = cpus().length;
  const counts = await Promise.all(
    Array.from(
      { length: threads },
      () =>
        new Promise<number>((resolve, reject) => {
          const w = new Worker(CRYPTO_WORKER, { eval: true, workerData: { ms } });
          w.once('message', resolve);
          w.once('error', reject);
        }),
    ),
  );
  const total = counts.reduce((a, b) => a + b, 0);
  const perSecond = (total * 1000) / ms;
  return { perSecond, threads, msPerRenewal: (threads * 1000) / perSecond };
}

// ---------------------------------------------------------------------------------------------
// the server side: /proc, the data dir
// ---------------------------------------------------------------------------------------------

const TICK_MS = 10; // USER_HZ = 100 on Linux
function procCpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * TICK_MS;
}
function procRssMb(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
}
function dbBytes(dataDir: string): number {
  let n = 0;
  for (const f of ['edgeid.db', 'edgeid.db-wal', 'edgeid.db-shm']) {
    const p = path.join(dataDir, f);
    if (existsSync(p)) n += statSync(p).size;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// the profile: self time per function and per module from a .cpuprofile (Chrome DevTools format)
// ---------------------------------------------------------------------------------------------

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** The module a script URL belongs to: a package under node_modules, a project directory, or node's own. */
function moduleOf(url: string): string {
  if (!url) return '(native / V8)';
  if (url.startsWith('node:')) {
    const m = /^node:internal\/(?:deps\/)?([^/]+)/.exec(url);
    return m ? `node:internal/${m[1]!.replace(/\.js$/, '')}` : url;
  }
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (m) return m[1]!;
  const p = url.replace(/^file:\/\//, '');
  const rel = path.relative(path.resolve(path.dirname(SELF), '..'), p);
  return rel.startsWith('..') ? p : rel;
}

/**
 * Self time per module and per function, from the samples taken within [fromUs, toUs] (CLOCK_MONOTONIC
 * µs, the clock of V8's profile timestamps and of process.hrtime): the load, not the start-up.
 */
export function summariseProfile(prof: CpuProfile, window: { fromUs: number; toUs: number } | null, top = 25): string {
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  let ts = prof.startTime;
  let inWindow = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    ts += prof.timeDeltas[i] ?? 0;
    if (window && (ts < window.fromUs || ts > window.toUs)) continue;
    inWindow++;
    self.set(prof.samples[i]!, (self.get(prof.samples[i]!) ?? 0) + (prof.timeDeltas[i] ?? 0));
  }
  if (window && inWindow === 0)
    return summariseProfile(prof, null, top).replace('Profile:', 'Profile (whole run: no sample fell in the load window):');
  let total = 0;
  const fn = new Map<string, number>();
  const mod = new Map<string, number>();
  let idle = 0;
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    const name = n.callFrame.functionName || '(anonymous)';
    if (name === '(idle)') {
      idle += us;
      continue;
    }
    total += us;
    const url = n.callFrame.url;
    const where = url
      ? `${url.startsWith('node:internal/') ? url.slice('node:internal/'.length) : moduleOf(url)}:${n.callFrame.lineNumber + 1}`
      : '';
    const key = `${name}${where ? ` (${where})` : ''}`;
    fn.set(key, (fn.get(key) ?? 0) + us);
    const m = ['(garbage collector)', '(program)'].includes(name) ? name : moduleOf(n.callFrame.url);
    mod.set(m, (mod.get(m) ?? 0) + us);
  }
  const pct = (us: number) => ((100 * us) / total).toFixed(1);
  const rows = (m: Map<string, number>, k: number) =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, k)
      .map(([name, us]) => `| ${name.replace(/\|/g, '\\|')} | ${(us / 1000).toFixed(0)} | ${pct(us)} |`)
      .join('\n');
  return [
    `Profile${window ? ' of the load phases' : ''}: ${(total / 1e6).toFixed(1)} s of busy samples (idle ${(idle / 1e6).toFixed(1)} s left out); self time.`,
    '',
    '| module | self ms | % of busy |',
    '|---|---:|---:|',
    rows(mod, 15),
    '',
    '| function (module:line) | self ms | % of busy |',
    '|---|---:|---:|',
    rows(fn, top),
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// the bench
// ---------------------------------------------------------------------------------------------

interface Merged {
  ok: number;
  errors: number;
  failures: Record<string, number>;
  firstFailure: string | null;
  lat: number[];
  starved: number;
  clientCpuMs: number;
}
function merge(rs: PhaseResult[]): Merged {
  const m: Merged = { ok: 0, errors: 0, failures: {}, firstFailure: null, lat: [], starved: 0, clientCpuMs: 0 };
  for (const r of rs) {
    m.ok += r.ok;
    m.errors += r.errors;
    m.starved += r.starved;
    m.clientCpuMs += r.clientCpuMs;
    m.firstFailure ??= r.firstFailure;
    for (const [k, v] of Object.entries(r.failures)) m.failures[k] = (m.failures[k] ?? 0) + v;
    for (const x of r.lat) m.lat.push(x);
  }
  m.lat.sort((a, b) => a - b);
  return m;
}

/** The bench server's config: rate limits out of the way. */
const BENCH_CONFIG = {
  rateLimit: {
    perAddress: { max: 1_000_000, window: 1 },
    renew: { max: 1_000_000, window: 1 },
    enroll: { max: 1_000_000, window: 1 },
    admin: { max: 1_000_000, window: 1 },
    connectionsPerAddress: 100_000,
  },
  // the software devices enroll with a software EK that has no EK certificate
  ek: { requireEkCertificate: false },
};

/** Forks the load processes, hands each its share of the devices, and waits until they have challenged them. */
async function startClients(o: {
  children: ChildProcess[];
  n: number;
  url: string;
  caPem: string;
  devices: SoftDevice[];
  tamperEvery: number;
  serverPid: number;
  serverAlive: () => boolean;
  /** a directory: the clients run under `node --cpu-prof` and write their profiles there */
  profDir?: string;
}) {
  const wire = o.devices.map((d): WireDevice => ({
    deviceId: d.deviceId!,
    akPublic: d.ak.public.toString('base64'),
    akPrivate: (d.ak.privateKey.export({ format: 'der', type: 'pkcs8' }) as Buffer).toString('base64'),
    pcrValues: [...d.pcrValues].map(([i, v]) => [i, v.toString('base64')]),
    pcrs: d.pcrs,
  }));
  const waitMsg = (c: ChildProcess) =>
    new Promise<any>((resolve, reject) => {
      const onExit = (code: number | null) => reject(new Error(`load client exited (${code})`));
      c.once('exit', onExit);
      c.once('message', (m) => {
        c.off('exit', onExit);
        resolve(m);
      });
    });
  for (let k = 0; k < o.n; k++) {
    const c = fork(SELF, ['--load-client'], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: o.profDir ? [...process.execArgv, '--cpu-prof', `--cpu-prof-dir=${o.profDir}`] : process.execArgv,
    });
    o.children.push(c);
    await waitMsg(c);
  }
  await Promise.all(
    o.children.map((c, k) => {
      const p = waitMsg(c);
      c.send({
        cmd: 'init',
        url: o.url,
        caPem: o.caPem,
        devices: wire.filter((_, i) => i % o.n === k),
        tamperEvery: o.tamperEvery,
      } satisfies Command);
      return p;
    }),
  );
  /** one phase on every client; `make(k)` splits the load; returns merged results and the server CPU spent */
  const phase = async (make: (k: number) => Command) => {
    const c0 = procCpuMs(o.serverPid);
    const t = performance.now();
    const rs = (await Promise.all(
      o.children.map((c, k) => {
        const p = waitMsg(c);
        c.send(make(k));
        return p;
      }),
    )) as PhaseResult[];
    const wallMs = performance.now() - t;
    if (!o.serverAlive()) throw new Error('the server died during the load');
    const m = merge(rs);
    return { m, wallMs, serverCpuMs: procCpuMs(o.serverPid) - c0, results: rs };
  };
  return { phase };
}

async function main(): Promise<number> {
  checkArgs(
    ['--quick', '--cpu-prof', '--tmpfs', '--client-prof'],
    ['--devices', '--clients', '--concurrency', '--seconds', '--tamper-every', '--enrollments'],
  );
  const quick = flag('--quick');
  const cpuProf = flag('--cpu-prof');
  const syncOff = flag('--tmpfs');
  const clientProf = flag('--client-prof');
  const nDevices = Number(arg('--devices', quick ? '32' : '256'));
  const nClients = Number(arg('--clients', quick ? '2' : String(cpus().length)));
  const levels = arg('--concurrency', quick ? '1,8' : '1,4,16,64')
    .split(',')
    .map(Number);
  const phaseMs = Number(arg('--seconds', quick ? '4' : '15')) * 1000;
  const tamperEvery = Number(arg('--tamper-every', '0'));
  const openShares = quick ? [0.5] : [0.25, 0.5, 1];
  if (levels.some((l) => l > nDevices)) throw new Error('--devices must be at least the highest --concurrency');
  // the bundle by default (what the package runs); the profile from the sources (names kept)
  if (cpuProf) process.env.EDGEID_TEST_BINS = 'source';
  else process.env.EDGEID_TEST_BINS ??= 'dist';
  const mode = binsMode();

  const base = mkdtempSync(path.join(syncOff ? '/dev/shm' : '/tmp', 'edgeid-bench-load-'));
  const dataDir = path.join(base, 'data');
  const profDir = path.join(base, 'prof');
  const log = (s: string) => process.stderr.write(`[bench server] ${s}\n`);
  let srv: ServerProcess | null = null;
  const children: ChildProcess[] = [];
  let failed = false;
  try {
    // the server creates its CA and database at the first start; the devices are seeded while it is stopped
    const config = BENCH_CONFIG;
    const t0 = performance.now();
    srv = await startServerProcess({ dataDir, config });
    await srv.stop();
    const devices = Array.from({ length: nDevices }, () => createSoftDevice());
    await seedSoftDevices(dataDir, devices);
    log(`seeded ${nDevices} devices in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const dbBefore = dbBytes(dataDir);

    // crypto bound on all cores, while nothing else of the bench runs
    const bound = await cryptoBound(quick ? 1000 : 5000);
    log(`crypto bound ${bound.perSecond.toFixed(0)} renewals/s on ${bound.threads} threads`);

    let serverPid = 0;
    let profServer: ChildProcess | null = null;
    if (!cpuProf) {
      await srv.start(config);
      serverPid = srv.proc!.pid!;
    } else {
      // node --cpu-prof is not allowed in NODE_OPTIONS: the same command as the harness's, with the profile flags first
      const { spawn } = await import('node:child_process');
      const { programCommand } = await import('./harness/bins.js');
      const [program, ...pre] = programCommand('edgeid-server');
      const configFile = path.join(base, 'data.config.json');
      profServer = spawn(
        program,
        ['--cpu-prof', `--cpu-prof-dir=${profDir}`, ...pre, '--data', dataDir, '--listen', `127.0.0.1:${srv.port}`, '--config', configFile],
        {
          stdio: ['ignore', 'ignore', 'inherit'],
          env: { ...process.env, EDGEID_LOG_LEVEL: 'info' },
        },
      );
      const t = performance.now();
      for (;;) {
        try {
          const info = JSON.parse(readFileSync(path.join(dataDir, 'server.json'), 'utf8'));
          if (info.pid === profServer.pid) break;
        } catch {
          /* not yet written */
        }
        if (profServer.exitCode !== null) throw new Error('the profiled server exited');
        if (performance.now() - t > 60_000) throw new Error('the profiled server did not start');
        await new Promise((r) => setTimeout(r, 100));
      }
      serverPid = profServer.pid!;
    }
    const serverAlive = () => {
      try {
        readFileSync(`/proc/${serverPid}/stat`);
        return true;
      } catch {
        return false;
      }
    };

    const loadFromUs = Number(process.hrtime.bigint() / 1000n);
    // RSS every second over the whole load
    const rss: { t: number; mb: number }[] = [];
    const tLoad = performance.now();
    const sampler = setInterval(() => {
      if (serverAlive()) rss.push({ t: (performance.now() - tLoad) / 1000, mb: procRssMb(serverPid) });
    }, 1000);
    rss.push({ t: 0, mb: procRssMb(serverPid) });

    const url = `https://127.0.0.1:${srv.port}`;
    const clientProfDir = clientProf ? mkdtempSync(path.join(base, 'client-prof-')) : undefined;
    const { phase } = await startClients({
      children,
      n: nClients,
      url,
      caPem: srv.caPem,
      devices,
      tamperEvery,
      serverPid,
      serverAlive,
      profDir: clientProfDir,
    });
    log(`${nClients} load processes ready`);

    const split = (total: number, k: number) => Math.floor(total / nClients) + (k < total % nClients ? 1 : 0);

    const closed: { level: number; rate: number; p50: number; p99: number; cpuPer: number; clientCpuPer: number; errors: number }[] = [];
    let totalOk = 0;
    let renewalsOk = 0;
    let totalErr = 0;
    let firstFailure: string | null = null;
    const failures: Record<string, number> = {};
    const account = (m: Merged) => {
      totalOk += m.ok;
      totalErr += m.errors;
      firstFailure ??= m.firstFailure;
      for (const [k, v] of Object.entries(m.failures)) failures[k] = (failures[k] ?? 0) + v;
    };
    for (const level of levels) {
      const { m, serverCpuMs } = await phase((k) => ({ cmd: 'closed', concurrency: split(level, k), ms: phaseMs }));
      account(m);
      renewalsOk += m.ok;
      const rate = (m.ok * 1000) / phaseMs;
      closed.push({
        level,
        rate,
        p50: pctl(m.lat, 50),
        p99: pctl(m.lat, 99),
        cpuPer: serverCpuMs / Math.max(1, m.ok),
        clientCpuPer: m.clientCpuMs / Math.max(1, m.ok),
        errors: m.errors,
      });
      log(`closed loop ${level} in flight: ${rate.toFixed(1)} renewals/s, ${m.errors} errors`);
    }
    const best = closed.reduce((a, b) => (b.rate > a.rate ? b : a));
    const open: {
      share: number;
      rate: number;
      sent: number;
      p50: number;
      p99: number;
      max: number;
      cpuPer: number;
      errors: number;
      starved: number;
    }[] = [];
    for (const share of openShares) {
      const rate = Math.max(1, best.rate * share);
      const { m, serverCpuMs } = await phase((k) => ({ cmd: 'open', rate: rate / nClients, ms: phaseMs }));
      account(m);
      renewalsOk += m.ok;
      open.push({
        share,
        rate,
        sent: m.ok + m.errors,
        p50: pctl(m.lat, 50),
        p99: pctl(m.lat, 99),
        max: m.lat.at(-1) ?? NaN,
        cpuPer: serverCpuMs / Math.max(1, m.ok),
        errors: m.errors,
        starved: m.starved,
      });
      log(`open loop ${rate.toFixed(1)}/s: p50 ${pctl(m.lat, 50).toFixed(1)} ms, p99 ${pctl(m.lat, 99).toFixed(1)} ms, ${m.errors} errors`);
    }
    // enrollments: fresh software devices (EK without certificate, software ActivateCredential), one token each
    const nEnroll = Number(arg('--enrollments', quick ? '8' : '256'));
    let enroll: { n: number; level: number; rate: number; p50: number; p99: number; cpuPer: number; errors: number } | null = null;
    if (nEnroll > 0) {
      const tokens: string[] = [];
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          while (tokens.length < nEnroll) {
            tokens.push('');
            tokens[tokens.length - 1] = (await createToken(srv!, { owner: 'bench' })).token;
          }
        }),
      );
      const level = Math.min(best.level, nEnroll);
      const { m, serverCpuMs, wallMs } = await phase((k) => ({
        cmd: 'enroll',
        tokens: tokens.filter((_, i) => i % nClients === k),
        concurrency: Math.max(1, split(level, k)),
      }));
      account(m);
      enroll = {
        n: m.ok,
        level,
        rate: (m.ok * 1000) / wallMs,
        p50: pctl(m.lat, 50),
        p99: pctl(m.lat, 99),
        cpuPer: serverCpuMs / Math.max(1, m.ok),
        errors: m.errors,
      };
      log(`enrollments: ${enroll.rate.toFixed(1)}/s, ${m.errors} errors`);
    }
    clearInterval(sampler);
    const loadToUs = Number(process.hrtime.bigint() / 1000n);
    const serverCpuTotal = procCpuMs(serverPid);
    for (const c of children) c.send({ cmd: 'exit' } satisfies Command);

    // stop the server: the profile is written at a clean exit
    if (profServer) {
      const exited = new Promise((r) => profServer!.once('exit', r));
      profServer.kill('SIGTERM');
      await exited;
    } else await srv.stop();
    const dbAfter = dbBytes(dataDir);

    // ---- the report ----
    const out: string[] = [];
    const cores = cpus();
    out.push(
      `Machine: ${cores.length} × ${cores[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version}; server from ${mode === 'dist' ? 'the bundle (dist/edgeid-server.js)' : 'the sources (tsx)'}${cpuProf ? ' under --cpu-prof' : ''}; data dir on ${syncOff ? '/dev/shm (tmpfs: fsync free)' : '/tmp'} (synchronous = FULL; the hot path's group commit: NORMAL, then the WAL fsync'd before any answer); ${nDevices} seeded devices, ${nClients} load processes, ${phaseMs / 1000} s per phase, rate limits raised.`,
    );
    out.push('');
    out.push(
      `Crypto bound (same run, ${bound.threads} worker threads, node:crypto; 1 ECDSA P-256 sign + 3 verifications per renewal): **${f0(bound.perSecond)} renewals/s** (${bound.msPerRenewal.toFixed(3)} ms of one core per renewal).`,
    );
    out.push('');
    out.push(
      '| closed loop: renewals in flight | renewals/s | p50 ms | p99 ms | server CPU ms / renewal | client CPU ms / renewal | errors |',
    );
    out.push('|---:|---:|---:|---:|---:|---:|---:|');
    for (const r of closed)
      out.push(`| ${r.level} | ${f1(r.rate)} | ${f1(r.p50)} | ${f1(r.p99)} | ${f1(r.cpuPer)} | ${f1(r.clientCpuPer)} | ${r.errors} |`);
    out.push('');
    out.push(
      `Maximum: **${f1(best.rate)} renewals/s** (at ${best.level} in flight) = **${((100 * best.rate) / bound.perSecond).toFixed(2)} %** of the crypto bound (goal ≥ 50 %).`,
    );
    out.push('');
    out.push('| open loop: share of max | offered /s | renewals sent | p50 ms | p99 ms | max ms | server CPU ms / renewal | errors |');
    out.push('|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const r of open)
      out.push(
        `| ${(r.share * 100).toFixed(0)} % | ${f1(r.rate)} | ${r.sent} | ${f1(r.p50)} | ${f1(r.p99)} | ${f1(r.max)} | ${f1(r.cpuPer)} | ${r.errors}${r.starved ? ` (+${r.starved} not sent: no free device)` : ''} |`,
      );
    out.push('');
    const half = open.find((r) => r.share === 0.5);
    if (half) out.push(`p99 at half the maximum: **${f1(half.p99)} ms** (goal ≤ 25 ms).`);
    if (enroll) {
      out.push('');
      out.push(
        '| enrollments (start + ActivateCredential + finish) | in flight | enrollments/s | p50 ms | p99 ms | server CPU ms / enrollment | errors |',
      );
      out.push('|---:|---:|---:|---:|---:|---:|---:|');
      out.push(
        `| ${enroll.n} | ${enroll.level} | ${f1(enroll.rate)} | ${f1(enroll.p50)} | ${f1(enroll.p99)} | ${f1(enroll.cpuPer)} | ${enroll.errors} |`,
      );
      out.push('');
      out.push(`Enrollment goal ≥ 500/s: measured **${f1(enroll.rate)}/s**.`);
    }
    const rssMax = Math.max(...rss.map((r) => r.mb));
    const pick = rss.filter((_, i) => i % Math.max(1, Math.ceil(rss.length / 12)) === 0 || i === rss.length - 1);
    out.push(
      `Server RSS (MB) over the load, every ~${f0(pick.length > 1 ? pick[1]!.t - pick[0]!.t : 1)} s: ${pick.map((r) => f0(r.mb)).join(' → ')} (max ${f0(rssMax)}). Server CPU over the run: ${(serverCpuTotal / 1000).toFixed(1)} s for ${renewalsOk} renewals and ${totalOk - renewalsOk} enrollments (start-up included).`,
    );
    out.push(
      `SQLite (db + WAL): ${(dbBefore / 2 ** 20).toFixed(2)} MiB after seeding → ${(dbAfter / 2 ** 20).toFixed(2)} MiB after ${renewalsOk} renewals and ${totalOk - renewalsOk} enrollments (${f0((dbAfter - dbBefore) / Math.max(1, totalOk))} bytes per request; the WAL as the server left it).`,
    );
    out.push(
      `Renewals and enrollments: ${totalOk} OK, ${totalErr} failed${totalErr ? ` ${JSON.stringify(failures)}; first: ${firstFailure}` : ''}.`,
    );
    if (profServer) {
      const f = readdirSync(profDir).find((x) => x.endsWith('.cpuprofile'));
      if (!f) throw new Error('no .cpuprofile written');
      out.push('');
      out.push(
        summariseProfile(JSON.parse(readFileSync(path.join(profDir, f), 'utf8')) as CpuProfile, { fromUs: loadFromUs, toUs: loadToUs }),
      );
    }
    if (clientProfDir) {
      await Promise.all(children.map((c) => (c.exitCode === null ? new Promise((r) => c.once('exit', r)) : null)));
      const f = readdirSync(clientProfDir).find((x) => x.endsWith('.cpuprofile'));
      if (!f) throw new Error('no client .cpuprofile written');
      out.push('');
      out.push('Load client (one of them, whole run):');
      out.push(summariseProfile(JSON.parse(readFileSync(path.join(clientProfDir, f), 'utf8')) as CpuProfile, null));
    }
    console.log(out.join('\n'));
    if (totalErr > 0) failed = true;
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill();
    await srv?.close().catch(() => {});
    rmSync(base, { recursive: true, force: true });
  }
  return failed ? 1 : 0;
}

/** The server's /metrics as name → value (unlabelled samples only). */
async function serverMetrics(url: string, caPem: string): Promise<Record<string, number>> {
  const https = await import('node:https');
  const text = await new Promise<string>((resolve, reject) => {
    https
      .get(`${url}/metrics`, { ca: caPem, timeout: 5000 }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`/metrics ${res.statusCode}`))));
      })
      .on('error', reject);
  });
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+) ([0-9.e+-]+)$/.exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

/** `--fleet`: N devices renewing on schedule (see the header). */
async function fleetMain(): Promise<number> {
  checkArgs(['--fleet'], ['--devices', '--lifetime', '--minutes', '--clients', '--key-cache']);
  const nDevices = Number(arg('--devices', '10000'));
  const lifetimeS = Number(arg('--lifetime', '300'));
  const minutes = Number(arg('--minutes', '15'));
  const nClients = Number(arg('--clients', String(cpus().length)));
  const intervalMs = (lifetimeS * 1000 * 2) / 3;
  // the server's AK cache sized to the fleet (config keyCacheSize), unless told otherwise
  const keyCache = Number(arg('--key-cache', String(Math.min(1_000_000, Math.max(16_384, Math.ceil(nDevices * 1.05))))));
  process.env.EDGEID_TEST_BINS ??= 'dist';
  const mode = binsMode();
  const base = mkdtempSync(path.join('/tmp', 'edgeid-bench-fleet-'));
  const dataDir = path.join(base, 'data');
  const log = (s: string) => process.stderr.write(`[bench fleet] ${s}\n`);
  let srv: ServerProcess | null = null;
  const children: ChildProcess[] = [];
  try {
    const config = {
      ...BENCH_CONFIG,
      allowShortLifetimes: lifetimeS < 300,
      zones: { default: { lifetime: lifetimeS } },
      keyCacheSize: keyCache,
    };
    const t0 = performance.now();
    srv = await startServerProcess({ dataDir, config });
    await srv.stop();
    const devices = Array.from({ length: nDevices }, () => createSoftDevice());
    await seedSoftDevices(dataDir, devices);
    const seedS = (performance.now() - t0) / 1000;
    log(`seeded ${nDevices} devices in ${seedS.toFixed(1)} s`);
    const dbBefore = dbBytes(dataDir);
    await srv.start(config);
    const serverPid = srv.proc!.pid!;
    const serverAlive = () => existsSync(`/proc/${serverPid}/stat`);
    const url = `https://127.0.0.1:${srv.port}`;
    const { phase } = await startClients({ children, n: nClients, url, caPem: srv.caPem, devices, tamperEvery: 0, serverPid, serverAlive });
    log(`${nClients} load processes ready (every device challenged once); renewing for ${minutes} min`);
    // RSS from /proc; the V8 heap and the memory V8 tracks outside it from the server's /metrics
    // (prom-client's default metrics), to tell JavaScript objects from native memory
    const rss: { t: number; mb: number; heapMb: number; externalMb: number }[] = [];
    const tLoad = performance.now();
    const sample = async () => {
      if (!serverAlive()) return;
      const t = (performance.now() - tLoad) / 1000;
      const mb = procRssMb(serverPid);
      const mx = await serverMetrics(url, srv!.caPem).catch(() => null);
      rss.push({
        t,
        mb,
        heapMb: (mx?.nodejs_heap_size_used_bytes ?? NaN) / 2 ** 20,
        externalMb: (mx?.nodejs_external_memory_bytes ?? NaN) / 2 ** 20,
      });
      if (Math.round(t) % 60 < 5)
        log(`${(t / 60).toFixed(1)} min: server RSS ${mb.toFixed(0)} MB, V8 heap used ${rss.at(-1)!.heapMb.toFixed(0)} MB`);
    };
    await sample();
    const sampler = setInterval(() => void sample(), 5000);
    const { m, wallMs, serverCpuMs, results } = await phase(() => ({
      cmd: 'fleet',
      intervalMs,
      lifetimeMs: lifetimeS * 1000,
      ms: minutes * 60_000,
    }));
    clearInterval(sampler);
    const late = results.reduce((a, r) => a + (r.late ?? 0), 0);
    await srv.stop();
    const dbAfter = dbBytes(dataDir);

    const cores = cpus();
    const offered = nDevices / (intervalMs / 1000);
    const warm = rss.filter((r) => r.t <= intervalMs / 1000).at(-1) ?? rss[0]!;
    const after = rss.filter((r) => r.t > intervalMs / 1000);
    const afterMax = after.length ? Math.max(...after.map((r) => r.mb)) : NaN;
    const pick = rss.filter((_, i) => i % Math.max(1, Math.ceil(rss.length / 15)) === 0 || i === rss.length - 1);
    const out: string[] = [];
    out.push(
      `Machine: ${cores.length} × ${cores[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version}; server from ${mode === 'dist' ? 'the bundle' : 'the sources (tsx)'}; data dir on /tmp (synchronous = FULL; the hot path's group commit: NORMAL, then the WAL fsync'd before any answer); keyCacheSize ${keyCache}; ${nClients} load processes on the same machine.`,
    );
    out.push('');
    out.push(
      '| devices | certificate lifetime | renewal every | minutes | offered renewals/s | done renewals/s | p50 ms | p99 ms | max ms | failed | late (after expiry) | server CPU ms / renewal | client CPU ms / renewal |',
    );
    out.push('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    out.push(
      `| ${nDevices} | ${lifetimeS} s | ${f0(intervalMs / 1000)} s | ${minutes} | ${f1(offered)} | ${f1((m.ok * 1000) / wallMs)} | ${f1(pctl(m.lat, 50))} | ${f1(pctl(m.lat, 99))} | ${f1(m.lat.at(-1) ?? NaN)} | ${m.errors} | ${late} | ${f1(serverCpuMs / Math.max(1, m.ok))} | ${f1(m.clientCpuMs / Math.max(1, m.ok))} |`,
    );
    out.push('');
    out.push(`Seeding ${nDevices} devices: ${f0(seedS)} s.`);
    out.push(
      `Server RSS (MB), every ~${f0(pick.length > 1 ? pick[1]!.t - pick[0]!.t : 5)} s: ${pick.map((r) => f0(r.mb)).join(' → ')}; after the first renewal interval (warm-up, ${f0(warm.mb)} MB at ${f0(warm.t)} s) the maximum was ${f0(afterMax)} MB (${f1(afterMax - warm.mb)} MB above).`,
    );
    out.push(
      `V8 heap used (MB) at the same moments: ${pick.map((r) => f0(r.heapMb)).join(' → ')}; external (ArrayBuffers, Buffers): ${pick.map((r) => f0(r.externalMb)).join(' → ')}.`,
    );
    out.push(
      `SQLite (db + WAL): ${(dbBefore / 2 ** 20).toFixed(1)} MiB after seeding → ${(dbAfter / 2 ** 20).toFixed(1)} MiB after ${m.ok} renewals: ${f0((dbAfter - dbBefore) / Math.max(1, m.ok))} bytes per renewal, ${((((dbAfter - dbBefore) / minutes) * 1440) / 2 ** 30).toFixed(2)} GiB per day at this rate before retention (retention deletes expired certificates and exports old audit rows: enroll-server/README).`,
    );
    if (m.errors) out.push(`Failures: ${JSON.stringify(m.failures)}; first: ${m.firstFailure}`);
    console.log(out.join('\n'));
    for (const c of children) c.send({ cmd: 'exit' } satisfies Command);
    return m.errors > 0 ? 1 : 0;
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill();
    await srv?.close().catch(() => {});
    rmSync(base, { recursive: true, force: true });
  }
}

if (process.argv.includes('--load-client')) await loadClient();
else {
  try {
    process.exitCode = await (flag('--fleet') ? fleetMain() : main());
  } catch (e) {
    console.error(`[bench server] FAILED: ${(e as Error).stack ?? e}`);
    process.exitCode = 1;
  }
}
