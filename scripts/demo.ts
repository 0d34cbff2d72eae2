/**
 * The edgeid demo: a whole deployment on loopback, told step by step.
 *   scripts/demo [--unattended] [--lifetime 120s] [--dir DIR]
 * Starts the enrollment server (embedded defaults + a demo config), Mosquitto configured by
 * `edgeid-admin broker config`, and three simulated devices (swtpm with EK certificates and
 * emulated measured boot), then: tokens → enrollment → live renewals → posture drift and
 * approval → revocation → summary. Ctrl-C stops everything it started.
 * Component logs are JSON in DIR/logs/; the screen shows the story.
 */
import 'reflect-metadata';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { parseArgs, promisify } from 'node:util';
import mqtt, { type MqttClient } from 'mqtt';
import { prettyFactory } from 'pino-pretty';
import type { DeviceView } from '../protocol/api.js';
import { MONITOR_ROLE } from '../enroll-server/broker/dynsec.js';
import { buildEventLog, extendEvents, syntheticBootEvents } from './harness/eventlog.js';
import { REPO } from './harness/fs.js';
import { httpsJson } from './harness/https.js';
import { startMosquitto, type Mosquitto } from './harness/mosquitto.js';
import { softwareClientCert } from './harness/pki.js';
import { freePort } from './harness/ports.js';
import { stopChild } from './harness/process.js';
import { startServerProcess, type ServerProcess } from './harness/server.js';
import { manufactureTpm, startSwtpm, SWTPM_LOCALCA_ISSUER, SWTPM_LOCALCA_ROOT, type Swtpm } from './harness/swtpm.js';
import { waitFor } from './harness/wait.js';

const run = promisify(execFile);
const MONITOR_CN = 'edgeid-demo-monitor';

const { values: args } = parseArgs({
  options: {
    unattended: { type: 'boolean' },
    lifetime: { type: 'string' },
    dir: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (args.help) {
  process.stdout.write('usage: scripts/demo [--unattended] [--lifetime 120s] [--dir DIR]\n');
  process.exit(0);
}
const unattended = args.unattended === true || !process.stdin.isTTY;
const lifetime = args.lifetime ?? '120s';
const work = path.resolve(args.dir ?? path.join(REPO, '.demo'));
const logs = path.join(work, 'logs');

// ---- presentation --------------------------------------------------------------------------

const color = process.stdout.isTTY ? (c: number, s: string) => `\x1b[${c}m${s}\x1b[0m` : (_c: number, s: string) => s;
const bold = (s: string) => color(1, s);
const dim = (s: string) => color(2, s);
const green = (s: string) => color(32, s);
const red = (s: string) => color(31, s);
const t0 = Date.now();
const clock = () => dim(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s]`);
const say = (s: string) => process.stdout.write(`${clock()} ${s}\n`);
const step = (n: string, title: string) => process.stdout.write(`\n${bold(`== ${n}. ${title}`)}\n`);
const shell = (cmd: string) => process.stdout.write(`${dim('  $')} ${cmd}\n`);

async function pause(): Promise<void> {
  if (unattended) return;
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout });
  await new Promise<void>((resolve) => rl.question(dim('  (press Enter to continue)'), () => resolve()));
  rl.close();
}

// ---- processes -----------------------------------------------------------------------------

/** Agents and CLI runs (child processes), and the harness's server, broker and TPMs. */
const children = new Set<ChildProcess>();
const services: { server: ServerProcess | null; broker: Mosquitto | null; tpms: Swtpm[] } = { server: null, broker: null, tpms: [] };
let stopping = false;

/** Agent log lines worth showing people as they happen (all lines go to the JSON log files). */
const SHOWN =
  /^(certificate renewed|renewal failed|mqtt connected|mqtt connection closed|control command accepted|control command ignored|identity wiped)$/;
const pretty = prettyFactory({
  colorize: process.stdout.isTTY,
  singleLine: true,
  ignore: 'pid,hostname,name,time,level,part,url,tpmCommandStats,notAfter',
});

function startProcess(name: string, cmd: string, argv: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  const log = createWriteStream(path.join(logs, `${name}.log`), { flags: 'a' });
  const child = spawn(cmd, argv, { cwd: REPO, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  if (name.startsWith('agent-')) {
    readline.createInterface({ input: child.stderr! }).on('line', (line) => {
      try {
        const entry = JSON.parse(line) as { msg?: string };
        if (entry.msg && SHOWN.test(entry.msg)) process.stdout.write(`${clock()} ${dim(name.slice(6).padEnd(9))} ${pretty(entry)}`);
      } catch {
        /* not a log line */
      }
    });
  }
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

async function stopAll(): Promise<void> {
  stopping = true;
  // agents and CLIs first (they talk to the others), then the server, broker and TPMs
  for (const c of [...children]) await stopChild(c);
  await services.server?.stop();
  await services.broker?.stop();
  for (const t of services.tpms) await t.stop();
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (stopping) return;
    process.stdout.write(`\n${bold('stopping everything the demo started …')}\n`);
    void stopAll().then(() => process.exit(130));
  });
}

const node = (script: string, argv: string[]): [string, string[]] => [
  process.execPath,
  ['--import', 'tsx', path.join(REPO, script), ...argv],
];

/** Runs a CLI to completion; the child is tracked so Ctrl-C stops it too. */
async function cli(script: string, argv: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  const [cmd, a] = node(script, argv);
  const p = run(cmd, a, { cwd: REPO, timeout: 60_000, env: { ...process.env, ...env } });
  children.add(p.child);
  try {
    return (await p).stdout;
  } finally {
    children.delete(p.child);
  }
}

const admin = (argv: string[]) => cli('enroll-server/admin-cli.ts', [...argv, '--data', path.join(work, 'data')]);
const agentCli = (dev: Device, argv: string[], env: NodeJS.ProcessEnv = {}) =>
  cli('agent/cli.ts', [...argv, '--state', dev.stateDir], { EDGEID_TCTI: dev.tpm.tcti, EDGEID_EVENT_LOG: dev.eventLog, ...env });

/** Asks the deployment every half second (through CLIs and files, which may fail while it moves). */
const eventually = <T>(what: string, fn: () => Promise<T>, timeoutMs: number) =>
  waitFor(what, fn, { timeoutMs, intervalMs: 500, retryErrors: true });

// ---- the deployment ------------------------------------------------------------------------

interface Device {
  name: string;
  stateDir: string;
  /** The device's TCG event log (what securityfs would hold on a real gateway). */
  eventLog: string;
  tpm: Swtpm;
  agent: ChildProcess | null;
  id: string | null;
  serials: Set<string>;
}

/**
 * Emulated measured boot: a UEFI boot's events (firmware blob in PCR 0, Secure Boot variables in
 * PCR 7, the boot application in PCR 4, …) are extended into the device's swtpm and written as its
 * TCG event log, which the agent sends with each quote: the server replays it against the quote
 * and names the event that changed.
 */
async function boot(dev: Device, firmware = 'firmware-1.0'): Promise<void> {
  const events = syntheticBootEvents({ firmware });
  await extendEvents(dev.tpm.tcti, events);
  mkdirSync(path.dirname(dev.eventLog), { recursive: true, mode: 0o700 });
  writeFileSync(dev.eventLog, buildEventLog(events));
}

function startAgent(dev: Device): void {
  const [cmd, a] = node('agent/cli.ts', ['run', '--state', dev.stateDir, '--heartbeat', '5', '--telemetry', '1']);
  dev.agent = startProcess(`agent-${dev.name}`, cmd, a, { EDGEID_TCTI: dev.tpm.tcti, EDGEID_EVENT_LOG: dev.eventLog });
}

async function devices(): Promise<DeviceView[]> {
  return JSON.parse(await admin(['devices', 'list', '--json'])) as DeviceView[];
}

async function main(): Promise<void> {
  rmSync(work, { recursive: true, force: true });
  mkdirSync(logs, { recursive: true, mode: 0o700 });
  process.stdout.write(`${bold('edgeid demo')} — hardware-rooted identity for three simulated edge devices\n`);
  process.stdout.write(dim(`work dir ${work}; component logs (JSON) in ${logs}\n`));

  // -- infrastructure
  step('0', 'Starting the enrollment server, the MQTT broker and three devices');
  const brokerPort = await freePort();
  const consolePort = await freePort();
  const dataDir = path.join(work, 'data');
  const brokerDir = path.join(work, 'broker');
  const baseConfig = {
    allowShortLifetimes: true,
    zones: { default: { lifetime, pcrs: [0, 1, 2, 3, 4, 5, 6, 7] } },
    ek: { roots: [SWTPM_LOCALCA_ROOT], intermediates: [SWTPM_LOCALCA_ISSUER], requireEkCertificate: true },
    housekeepingInterval: '10s',
    // the web console on its own listener; alerts checked every 10 s (stale devices, CA expiry)
    console: { listen: `127.0.0.1:${consolePort}` },
    alerts: { checkInterval: '10s' },
  };
  const server = await startServerProcess({
    config: baseConfig,
    configFile: path.join(work, 'server.json'),
    dataDir,
    logLevel: 'info',
    logFile: path.join(logs, 'server.log'),
  });
  services.server = server;
  const serverPort = server.port;
  say(
    `enrollment server on https://localhost:${serverPort} (SQLite, CA created on first start; EK certificates must chain to the TPM maker's root)`,
  );

  shell(`edgeid-admin broker config --out ${path.relative(REPO, brokerDir)} --port ${brokerPort}`);
  await admin(['broker', 'config', '--out', brokerDir, '--port', String(brokerPort), '--bind', '127.0.0.1', '--run-as-root']);
  // The demo's monitor has a broker identity of its own (the broker's client id is the
  // certificate's CN, so it must never be the server's): a dynsec client with the read-only
  // monitor role in the initial dynsec file, and a certificate from the edgeid CA.
  const dynsecFile = path.join(brokerDir, 'dynsec.json');
  const dynsec = JSON.parse(readFileSync(dynsecFile, 'utf8')) as { clients: unknown[] };
  dynsec.clients.push({ username: MONITOR_CN, textname: 'edgeid demo monitor', roles: [{ rolename: MONITOR_ROLE }] });
  writeFileSync(dynsecFile, JSON.stringify(dynsec, null, 2) + '\n', { mode: 0o600 });
  const monitor = await softwareClientCert({ dataDir }, MONITOR_CN);
  // The server's CRL reload command restarts Mosquitto (the harness brings it back like a service
  // manager would); it runs on the server's CRL reload schedule (broker.crlReload), not per
  // revocation, so revoking one device leaves the others connected.
  const broker = await startMosquitto({
    configFile: path.join(brokerDir, 'mosquitto.conf'),
    port: brokerPort,
    supervised: true,
    logFile: path.join(logs, 'mosquitto.log'),
  });
  services.broker = broker;
  say(`Mosquitto on mqtts://127.0.0.1:${brokerPort}: client certificates required, CN = username, per-device permissions by dynsec`);

  // the server again, now driving the broker
  await server.start({
    ...baseConfig,
    mqtt: { url: `mqtts://127.0.0.1:${brokerPort}` },
    broker: { url: `mqtts://127.0.0.1:${brokerPort}`, crlFile: path.join(brokerDir, 'crl.pem'), reloadCommand: broker.reloadCommand },
  });

  // a personal account for the operator who follows the story in the console
  const operator = JSON.parse(await admin(['users', 'add', 'ops-demo', '--role', 'operator', '--zones', 'default', '--json'])) as {
    token: string;
  };
  say(
    `web console: ${bold(`https://localhost:${consolePort}/console`)} (the demo's own CA: your browser warns once; ssh -L ${consolePort}:localhost:${consolePort} from another machine)`,
  );
  say(`sign in as the operator ${bold('ops-demo')} with this personal token (shown once): ${operator.token}`);
  say(dim('  follow the devices enroll, renew, go into quarantine and get revoked there, live; the Alerts page fills up as it happens'));

  const devs: Device[] = [];
  for (const name of ['plc-gw-1', 'plc-gw-2', 'plc-gw-3']) {
    const tpmDir = path.join(work, 'tpm', name);
    mkdirSync(tpmDir, { recursive: true });
    await manufactureTpm(tpmDir);
    const tpm = await startSwtpm({ stateDir: tpmDir, logFile: path.join(logs, `swtpm-${name}.log`) });
    services.tpms.push(tpm);
    const dev: Device = {
      name,
      tpm,
      stateDir: path.join(work, 'devices', name),
      eventLog: path.join(work, 'boot', name, 'binary_bios_measurements'),
      agent: null,
      id: null,
      serials: new Set(),
    };
    await boot(dev);
    devs.push(dev);
  }
  say(`three devices, each with its own simulated TPM 2.0 (EK certificate from the TPM maker, measured boot in PCRs 0–7)`);

  // -- the subscriber: ops' view of telemetry, as the demo's own monitor identity (read only)
  const sub: MqttClient = await mqtt.connectAsync(`mqtts://127.0.0.1:${brokerPort}`, {
    ca: readFileSync(path.join(brokerDir, 'ca.pem')),
    cert: monitor.cert,
    key: monitor.key,
    servername: 'localhost',
    reconnectPeriod: 500,
    clientId: MONITOR_CN,
  });
  /** device id → "boot:seq" keys of telemetry samples received (seq restarts when an agent restarts). */
  const received = new Map<string, Set<string>>();
  const heartbeats = new Map<string, number>();
  sub.on('message', (topic, payload) => {
    const [, id, kind] = topic.split('/');
    if (!id) return;
    if (kind === 'telemetry') {
      try {
        const { boot, seq } = JSON.parse(payload.toString()) as { boot?: string; seq?: number };
        if (typeof seq === 'number') {
          if (!received.has(id)) received.set(id, new Set());
          received.get(id)!.add(`${boot ?? ''}:${seq}`);
        }
      } catch {
        /* not ours */
      }
    } else if (kind === 'state') {
      heartbeats.set(id, (heartbeats.get(id) ?? 0) + 1);
    }
  });
  await sub.subscribeAsync(['devices/+/telemetry', 'devices/+/state'], { qos: 1 });
  await pause();

  // -- 1. tokens
  step('1', 'Ops creates one-time enrollment tokens');
  const uris: string[] = [];
  for (const [i, dev] of devs.entries()) {
    const argv = ['token', 'create', '--zone', 'default', '--owner', 'controls-team', '--name', dev.name, '--ttl', '8h'];
    shell(`edgeid-admin ${argv.join(' ')}${i === 0 ? '' : ' --json'}`);
    if (i === 0) {
      // admin's stdout is a pipe here: ask for the QR explicitly when the demo runs on a terminal
      const out = await admin(process.stdout.isTTY ? [...argv, '--qr'] : argv);
      process.stdout.write(out.trimEnd().replace(/^/gm, '    ') + '\n');
      const m = /(edgeid:\/\/enroll\?\S+)/.exec(out);
      if (!m) throw new Error('token create printed no enrollment URI');
      uris.push(m[1]!);
    } else {
      uris.push((JSON.parse(await admin([...argv, '--json'])) as { uri: string }).uri);
    }
  }
  say('the technician scans the QR code (or copies the link) on site');
  await pause();

  // -- 2. enrollment
  step('2', `Each device enrolls with one command, then runs with ${lifetime} certificates`);
  for (const [i, dev] of devs.entries()) {
    shell(`edgeid-agent enroll --uri '${uris[i]!.replace(/token=[^&]+/, 'token=…')}' --state ${path.relative(REPO, dev.stateDir)}`);
    const t = Date.now();
    // the link goes in through the environment, which keeps the token out of the process list
    const out = JSON.parse(await agentCli(dev, ['enroll', '--json'], { EDGEID_ENROLL_URI: uris[i]! })) as { deviceId: string };
    dev.id = out.deviceId;
    say(
      `${green('enrolled')} ${dev.name} as ${bold(dev.id)} in ${Date.now() - t} ms (EK certificate checked, AK activated, quote and certify verified)`,
    );
    startAgent(dev);
  }
  await eventually('telemetry from every device', async () => devs.every((d) => (received.get(d.id!)?.size ?? 0) > 0), 60_000);
  for (const dev of devs) say(`telemetry from ${dev.name} arrives at the subscriber (devices/${dev.id}/telemetry, QoS 1)`);
  await pause();

  // -- 3. renewals
  step('3', 'Renewals happen live: new TPM key, new serial, the MQTT session keeps going');
  const certOf = async (dev: Device) =>
    JSON.parse(await agentCli(dev, ['status', '--json'])) as {
      certificate: { serial: string } | null;
      renewal: { total: number; tpmCommandsPerRenewal: number | null };
    };
  for (const dev of devs) dev.serials.add((await certOf(dev)).certificate!.serial);
  const lifetimeS = Number.parseInt(lifetime, 10) * (lifetime.endsWith('m') ? 60 : 1);
  say(
    `waiting for every device to renew (at about ${Math.round(lifetimeS * 0.6)}–${Math.round(lifetimeS * 0.75)} s into its certificate) …`,
  );
  for (const dev of devs) {
    const st = await eventually(
      `a renewal by ${dev.name}`,
      async () => {
        const s = await certOf(dev);
        return s.renewal.total >= 1 && s.certificate && !dev.serials.has(s.certificate.serial) ? s : null;
      },
      (lifetimeS + 60) * 1000,
    );
    say(
      `${dev.name} renewed: serial ${[...dev.serials][0]!.slice(0, 12)}… → ${bold(st.certificate!.serial.slice(0, 12))}… with a new TPM key (${st.renewal.tpmCommandsPerRenewal ?? '?'} TPM commands)`,
    );
    dev.serials.add(st.certificate!.serial);
  }
  await pause();

  // -- 4. posture drift
  const d3 = devs[2]!;
  let restored = false;
  step('4', `Posture drift: ${d3.name} reboots with new firmware (its event log and PCR 0 change)`);
  await stopChild(d3.agent);
  await d3.tpm.restart();
  await boot(d3, 'firmware-2.0-unapproved');
  startAgent(d3);
  shell(`edgeid-admin renew-now ${d3.id}`);
  await eventually(`${d3.name} connected again`, async () => (await admin(['renew-now', d3.id!])).includes('sent'), 30_000);
  const q = await eventually(
    `${d3.name} quarantined`,
    async () => (await devices()).find((d) => d.id === d3.id && d.status === 'quarantined'),
    60_000,
  );
  say(`${red('quarantined')}: ${q.statusReason ?? ''}`);
  shell(`edgeid-admin approve-baseline ${d3.id}`);
  await admin(['approve-baseline', d3.id!]);
  say('ops confirms the firmware update: the next quote becomes the new baseline');
  await admin(['renew-now', d3.id!]);
  const back = await eventually(
    `${d3.name} active again`,
    async () => {
      const d = (await devices()).find((x) => x.id === d3.id);
      const s = await certOf(d3);
      return d?.status === 'active' && s.certificate && !d3.serials.has(s.certificate.serial) ? s : null;
    },
    60_000,
  );
  d3.serials.add(back.certificate!.serial);
  say(`${green('active')} again: ${d3.name} renewed with the approved posture`);
  restored = true;
  await pause();

  // -- 5. revocation
  const d2 = devs[1]!;
  step('5', `Ops revokes ${d2.name}`);
  shell(`edgeid-admin revoke ${d2.id} --reason key-compromise`);
  const exited = new Promise<number>((resolve) => d2.agent!.once('exit', () => resolve(Date.now())));
  const tRevoke = Date.now();
  const rev = JSON.parse(await admin(['revoke', d2.id!, '--reason', 'key-compromise', '--json'])) as {
    hooks: { hook: string; ok: boolean; ms: number }[];
  };
  const tReturned = Date.now();
  const hookLine = rev.hooks.map((h) => `${h.hook} ${h.ok ? 'ok' : 'FAILED'} ${Math.round(h.ms)} ms`).join(', ');
  say(`revoke returned after ${tReturned - tRevoke} ms (${hookLine})`);
  const tExit = await Promise.race([exited, new Promise<number>((r) => setTimeout(() => r(0), 20_000))]);
  const wiped = !existsSync(path.join(d2.stateDir, 'state.json'));
  if (tExit)
    say(
      `${d2.name} got the signed wipe, deleted its keys and stopped ${tExit - tRevoke} ms after the revoke call (state dir wiped: ${wiped ? 'yes' : 'no'})`,
    );
  else say(red(`${d2.name} did not stop within 20 s`));
  const countAt = received.get(d2.id!)?.size ?? 0;
  await new Promise((r) => setTimeout(r, 3000));
  say(`messages from ${d2.name} after the revoke: ${(received.get(d2.id!)?.size ?? 0) - countAt}`);
  const refused = await httpsJson('POST', `https://localhost:${serverPort}/v1/renew/challenge`, {
    ca: server.caPem,
    body: { deviceId: d2.id },
  }).then(
    (r) => `${r.status} ${JSON.stringify(r.body)}`,
    (e: Error) => e.message,
  );
  say(`a renewal attempt for ${d2.id} is refused: ${refused}`);
  await pause();

  // -- summary
  step('6', 'Summary');
  // a device back from quarantine resends what the broker refused meanwhile (its outbox keeps it);
  // the count waits until every live device's outbox is empty
  for (const dev of devs) {
    if (!existsSync(path.join(dev.stateDir, 'state.json'))) continue;
    await eventually(
      `${dev.name}'s outbox to drain`,
      async () => (JSON.parse(await agentCli(dev, ['status', '--json'])) as { outbox: { pending: number } }).outbox.pending === 0,
      120_000,
    ).catch(() => say(`${dev.name} still has messages in its outbox`));
  }
  const final = await devices();
  const lostOf = (got: Set<string>) => {
    // per agent run: samples 1..max were sent, so max - received are missing
    const perBoot = new Map<string, { max: number; n: number }>();
    for (const k of got) {
      const [boot = '', seq = '0'] = k.split(':');
      const e = perBoot.get(boot) ?? { max: 0, n: 0 };
      e.max = Math.max(e.max, Number(seq));
      e.n += 1;
      perBoot.set(boot, e);
    }
    return [...perBoot.values()].reduce((sum, e) => sum + (e.max - e.n), 0);
  };
  const rows: { device: string; id: string; state: string; certs: number; delivered: number; lost: string }[] = [];
  for (const dev of devs) {
    const d = final.find((x) => x.id === dev.id);
    const shown = JSON.parse(await admin(['device', 'show', dev.id!, '--json'])) as { certificates?: unknown[] };
    const got = received.get(dev.id!) ?? new Set<string>();
    rows.push({
      device: dev.name,
      id: dev.id ?? '-',
      state: d?.status ?? '?',
      certs: shown.certificates?.length ?? 0,
      delivered: got.size,
      lost: d?.status === 'revoked' ? '-' : String(lostOf(got)),
    });
  }
  const header = ['device', 'id', 'state', 'certs', 'delivered', 'lost'] as const;
  const width = (k: (typeof header)[number]) => Math.max(k.length, ...rows.map((r) => String(r[k]).length));
  process.stdout.write(`  ${header.map((h) => h.toUpperCase().padEnd(width(h))).join('  ')}\n`);
  for (const r of rows) process.stdout.write(`  ${header.map((h) => String(r[h]).padEnd(width(h))).join('  ')}\n`);
  // the alerts the story raised (the rules read the audit log: quarantine, revocation, …)
  const alerts = await eventually(
    'the quarantine and revocation alerts',
    async () => {
      // --json prints every page's alerts as one array
      const list = JSON.parse(await admin(['alerts', 'list', '--json'])) as { rule: string; deviceId: string | null; summary: string }[];
      return list.some((a) => a.rule === 'device_quarantined') && list.some((a) => a.rule === 'device_revoked') ? list : null;
    },
    30_000,
  ).catch(() => [] as { rule: string; deviceId: string | null; summary: string }[]);
  say(`alerts open: ${alerts.map((a) => `${a.rule} (${a.summary})`).join('; ') || red('none')}`);
  const summary = {
    enrolled: devs.filter((d) => d.id).length,
    renewedEach: devs.every((d) => d.serials.size >= 2),
    quarantinedAndRestored: restored ? 1 : 0,
    revokedAndWiped: wiped && tExit ? 1 : 0,
    lostFromActive: rows.filter((r) => r.state === 'active').reduce((n, r) => n + Number(r.lost), 0),
    alerts: [...new Set(alerts.map((a) => a.rule))].filter((r) => r === 'device_quarantined' || r === 'device_revoked').sort(),
  };
  process.stdout.write(`\nEDGEID_DEMO_SUMMARY ${JSON.stringify(summary)}\n`);
  await sub.endAsync(true);
}

main().then(
  async () => {
    await stopAll();
    process.stdout.write(`\n${bold('done')}: everything the demo started is stopped. Logs: ${logs}\n`);
    process.exit(0);
  },
  async (e: unknown) => {
    if (stopping) return; // Ctrl-C: the signal handler stops everything and exits
    process.stdout.write(`\n${red('demo failed')}: ${e instanceof Error ? e.message : String(e)}\nlogs: ${logs}\n`);
    await stopAll();
    process.exit(1);
  },
);
