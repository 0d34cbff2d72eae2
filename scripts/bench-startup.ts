/**
 * Server bundle benchmark: start-up time and RSS of `node dist/edgeid-server.js` (what the
 * edgeid-server package runs), first start (creates the CA and database) and a restart on that
 * data dir; time from spawn to the "edgeid-server listening" log line, RSS (VmRSS, /proc) at that
 * moment and after 200 admin API calls. Prints a markdown table (for BENCHMARKS.md).
 *   node --import tsx scripts/bench-startup.ts [--runs N]      (scripts/bench startup)
 */
import { spawn } from 'node:child_process';
import { readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { REPO, tmpDir } from './harness/fs.js';
import { httpsJson } from './harness/https.js';

const argv = process.argv.slice(2);
const runs = Number(argv.includes('--runs') ? argv[argv.indexOf('--runs') + 1] : 10);
const bundle = path.join(REPO, 'dist/edgeid-server.js');

const rssKiB = async (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${pid}/status`, 'utf8'))![1]);
/** user + system CPU time of a process so far (ms), from /proc/PID/stat (clock ticks of 10 ms) */
const cpuMs = async (pid: number) => {
  const f = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
};
const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
const max = (a: number[]) => Math.max(...a);

async function startOnce(dataDir: string, calls: number): Promise<{ ms: number; cpu: number; rss: number; rssAfter: number }> {
  const t0 = process.hrtime.bigint();
  const child = spawn(process.execPath, [bundle, '--data', dataDir, '--listen', '127.0.0.1:0'], {
    env: { ...process.env, EDGEID_LOG_LEVEL: 'info', NODE_ENV: 'production' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const listening = new Promise<{ url: string }>((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) => {
      log += c.toString();
      const line = log.split('\n').find((l) => l.includes('"edgeid-server listening"'));
      if (line) resolve(JSON.parse(line) as { url: string });
    });
    child.once('exit', (code) => reject(new Error(`server exited ${code}: ${log}`)));
  });
  child.stderr.on('data', () => {});
  const info = await listening;
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const rss = await rssKiB(child.pid!);
  const cpu = await cpuMs(child.pid!);
  if (calls > 0) {
    const token = (await readFile(path.join(dataDir, 'admin-token'), 'utf8')).trim();
    const ca = await readFile(path.join(dataDir, 'ca/root.pem'), 'utf8');
    for (let i = 0; i < calls; i++) {
      const r = await httpsJson('GET', `${info.url}/v1/admin/devices`, { ca, bearer: token });
      if (r.status !== 200) throw new Error(`admin call: ${r.status}`);
    }
  }
  const rssAfter = calls > 0 ? await rssKiB(child.pid!) : rss;
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
  return { ms, cpu, rss, rssAfter };
}

const first: number[] = [];
const firstCpu: number[] = [];
const againCpu: number[] = [];
const firstRss: number[] = [];
const again: number[] = [];
const againRss: number[] = [];
const after: number[] = [];
for (let i = 0; i < runs; i++) {
  const dir = await tmpDir('edgeid-bench-startup-');
  const a = await startOnce(path.join(dir, 'data'), 0);
  first.push(a.ms);
  firstCpu.push(a.cpu);
  firstRss.push(a.rss);
  const b = await startOnce(path.join(dir, 'data'), 200);
  again.push(b.ms);
  againCpu.push(b.cpu);
  againRss.push(b.rss);
  after.push(b.rssAfter);
  await rm(dir, { recursive: true, force: true });
}
const mb = (k: number) => (k / 1024).toFixed(1);
console.log(
  `Server bundle \`node dist/edgeid-server.js\` (${((await stat(bundle)).size / 1024).toFixed(0)} KiB, better_sqlite3.node beside it), ${runs} runs, --listen 127.0.0.1:0, NODE_ENV=production.`,
);
console.log(
  'Start-up = spawn to the "edgeid-server listening" log line (TLS listener up, CRL generated); its CPU time does not depend on how busy the machine is.\n',
);
console.log('| measure | median | max |');
console.log('|---|---:|---:|');
console.log(`| start-up, first start (creates CA keys, database) (ms) | ${median(first).toFixed(0)} | ${max(first).toFixed(0)} |`);
console.log(`| start-up, restart on existing data (ms) | ${median(again).toFixed(0)} | ${max(again).toFixed(0)} |`);
console.log(`| CPU time (user+sys) to listening, first start (ms) | ${median(firstCpu)} | ${max(firstCpu)} |`);
console.log(`| CPU time (user+sys) to listening, restart (ms) | ${median(againCpu)} | ${max(againCpu)} |`);
console.log(`| RSS when listening, first start (MB) | ${mb(median(firstRss))} | ${mb(max(firstRss))} |`);
console.log(`| RSS when listening, restart (MB) | ${mb(median(againRss))} | ${mb(max(againRss))} |`);
console.log(`| RSS after 200 admin API calls (MB) | ${mb(median(after))} | ${mb(max(after))} |`);
