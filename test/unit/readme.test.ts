/**
 * README.md stays true: every error code it names exists in the registry, every command line it
 * shows names a real subcommand whose flags that CLI's own usage text lists, and the operator's
 * block runs as typed against `edgeid-server` on its embedded defaults. (The agent and broker
 * flows run in the demo, server, agent and broker tests.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../enroll-server/config.js';
import { ERRORS } from '../../protocol/errors/index.js';
import { REPO } from '../../scripts/harness/fs.js';
import { BINS, cleanEnv, runCli, seedDataDir } from '../helpers/cli.js';

const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
const shellBlocks = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) =>
  m[1]!
    .split('\n')
    .map((l) => l.replace(/#.*$/, '').trim())
    .filter(Boolean),
);
const shellLines = shellBlocks.flat();

function usage(entry: string, args: string[]): string {
  try {
    return execFileSync(process.execPath, ['--import', 'tsx', path.join(REPO, entry), ...args], {
      cwd: REPO,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    return `${err.stdout ?? ''}${err.stderr ?? ''}`;
  }
}

test('every error code the README names is in the registry', () => {
  // the first cell of the technician's error table
  const rows = readme.split('\n').filter((l) => /^\| `[a-z_]+`/.test(l));
  const named = rows.flatMap((l) => [...l.split('|')[1]!.matchAll(/`([a-z][a-z0-9_]+)`/g)].map((m) => m[1]!));
  assert.ok(named.length >= 8);
  for (const code of named) assert.ok(code in ERRORS, `README names ${code}, which is not a registered error code`);
});

test('every edgeid-admin line in the README is a known command with known flags', () => {
  const text = usage('enroll-server/admin-cli.ts', ['--help']);
  const lines = shellLines.filter((l) => l.startsWith('edgeid-admin '));
  assert.ok(lines.length >= 10);
  for (const line of lines) {
    const words = line.split(/\s+/).slice(1);
    const sub = words
      .filter((w) => !w.startsWith('-') && /^[a-z-]+$/.test(w))
      .slice(0, 2)
      .join(' ');
    assert.ok(text.includes(sub.split(' ')[0]!), `edgeid-admin usage mentions "${sub}" (${line})`);
    for (const flag of words.filter((w) => w.startsWith('--')))
      assert.ok(text.includes(flag), `edgeid-admin usage lists ${flag} (${line})`);
  }
});

test('every edgeid-agent and edgeid-server line in the README is a known command with known flags', () => {
  const top = usage('agent/cli.ts', ['--help']);
  for (const line of shellLines.filter((l) => l.startsWith('edgeid-agent '))) {
    const [, cmd, ...rest] = line.split(/\s+/);
    assert.ok(top.includes(`  ${cmd}`), `edgeid-agent has a "${cmd}" command (${line})`);
    const text = usage('agent/cli.ts', [cmd!, '--help']);
    for (const flag of rest.filter((w) => w.startsWith('--'))) assert.ok(text.includes(flag), `edgeid-agent ${cmd} usage lists ${flag}`);
  }
  const server = usage('enroll-server/main.ts', ['--help']);
  for (const line of shellLines.filter((l) => l.startsWith('edgeid-server'))) {
    for (const flag of line.split(/\s+/).filter((w) => w.startsWith('--')))
      assert.ok(server.includes(flag), `edgeid-server usage lists ${flag}`);
  }
});

test('the scripts and files the README points to exist', () => {
  for (const l of shellLines.filter((x) => x.startsWith('scripts/'))) assert.ok(existsSync(path.join(REPO, l.split(/\s+/)[0]!)), l);
  for (const f of ['docs/ERRORS.md', 'enroll-server/README.md', 'BENCHMARKS.md', 'scripts/edgeid-agent.service', '.ci/run']) {
    assert.ok(existsSync(path.join(REPO, f)), `${f} exists`);
  }
  assert.match(readFileSync(path.join(REPO, '.ci/run'), 'utf8'), /scripts\/test/);
});

test("the README's layout table and the folders agree", () => {
  const section = /\n## Layout\n([\s\S]*?)(?:\n## |$)/.exec(readme)?.[1] ?? '';
  const named = [...section.matchAll(/^\| `([^`]+)\/` \|/gm)].map((m) => m[1]!);
  assert.ok(named.length >= 5, 'the Layout section has a folder table');
  for (const f of named) assert.ok(existsSync(path.join(REPO, f)), `the README names ${f}/, which does not exist`);
  // every top-level folder of the source tree (not hidden, not installed or built) has its row
  const ignored = new Set(['node_modules', 'dist', 'data']);
  const folders = readdirSync(REPO, { withFileTypes: true }).filter(
    (d) => d.isDirectory() && !d.name.startsWith('.') && !ignored.has(d.name),
  );
  for (const d of folders) assert.ok(named.includes(d.name), `${d.name}/ has no row in the README's Layout table`);
});

test("the README's zones exist: the embedded default, or one its config example adds", () => {
  const configs = [...readme.matchAll(/```json\n([\s\S]*?)```/g)]
    .map((m) => JSON.parse(m[1]!) as Record<string, unknown>)
    .filter((c) => 'zones' in c);
  assert.equal(configs.length, 1, 'one server config example with zones');
  const zones = new Set([
    ...Object.keys(loadConfig({ argv: [], env: {}, file: {} }).zones),
    ...Object.keys(loadConfig({ argv: [], env: {}, file: configs[0]! }).zones),
  ]);
  for (const line of shellLines) {
    const m = /--zone (\S+)/.exec(line);
    if (m) assert.ok(zones.has(m[1]!), `${line}: zone ${m[1]} exists`);
  }
});

test("the operator's commands run as typed against edgeid-server on its embedded defaults", { timeout: 300_000 }, async (t) => {
  // the block that starts the server, then talks to it from the same directory
  const block = shellBlocks.find((b) => b[0] === 'edgeid-server');
  assert.ok(block, 'the README has a block that starts with edgeid-server');
  const lines = block.slice(1);
  assert.ok(lines.length >= 10 && lines.every((l) => l.startsWith('edgeid-admin ')), 'then edgeid-admin commands');
  const work = await mkdtemp(path.join(os.tmpdir(), 'edgeid-readme-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  // DEVICE_ID is a placeholder for an id from `devices list`: each line gets a device of its own
  const ids = await seedDataDir(path.join(work, 'data'), { tokens: 0, devices: lines.filter((l) => l.includes('DEVICE_ID')).length });

  // `edgeid-server` as typed, in the directory the commands run in; only the port differs (a free
  // loopback port, not 0.0.0.0:8443), given through the environment so the line stays as typed
  const [cmd, ...pre] = BINS['edgeid-server'];
  const server = spawn(cmd!, [...pre!, ...block[0]!.split(/\s+/).slice(1)], {
    cwd: work,
    env: cleanEnv({ EDGEID_LISTEN: '127.0.0.1:0', EDGEID_LOG_LEVEL: 'warn' }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  server.stdout.on('data', (c: Buffer) => (log += c.toString()));
  server.stderr.on('data', (c: Buffer) => (log += c.toString()));
  const exited = new Promise<void>((resolve) => server.once('exit', () => resolve()));
  t.after(async () => {
    if (server.exitCode === null) {
      server.kill('SIGTERM');
      await exited;
    }
  });
  const deadline = Date.now() + 60_000;
  for (;;) {
    const pid = await readFile(path.join(work, 'data', 'server.json'), 'utf8').then(
      (s) => (JSON.parse(s) as { pid: number }).pid,
      () => 0,
    );
    if (pid === server.pid) break;
    assert.ok(Date.now() < deadline && server.exitCode === null, `edgeid-server did not start: ${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }

  let next = 0;
  for (const line of lines) {
    const args = line
      .split(/\s+/)
      .slice(1)
      .map((w) => (w === 'DEVICE_ID' ? ids[next++]! : w));
    const r = await runCli('edgeid-admin', args, { cwd: work });
    assert.equal(r.code, 0, `${line}\n${r.stderr}`);
  }
  assert.equal((await stat(path.join(work, 'token.png'))).mode & 0o777, 0o600);
  assert.match(await readFile(path.join(work, 'edgeid-ca.pem'), 'utf8'), /^-----BEGIN CERTIFICATE-----/);
  assert.ok((await readFile(path.join(work, 'audit.jsonl'), 'utf8')).split('\n').length > lines.length);
});
