/**
 * README.md stays true: every error code it names exists in the registry, and every command line
 * it shows names a real subcommand whose flags that CLI's own usage text lists. (The flows
 * themselves run in the demo, server, agent and broker tests.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { ERRORS } from '../../protocol/errors/index.js';
import { REPO } from '../../scripts/harness/fs.js';

const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
const shellLines = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((m) => m[1]!.split('\n')).map((l) => l.replace(/#.*$/, '').trim()).filter(Boolean);

function usage(entry: string, args: string[]): string {
  try {
    return execFileSync(process.execPath, ['--import', 'tsx', path.join(REPO, entry), ...args], { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
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
    const sub = words.filter((w) => !w.startsWith('-') && /^[a-z-]+$/.test(w)).slice(0, 2).join(' ');
    assert.ok(text.includes(sub.split(' ')[0]!), `edgeid-admin usage mentions "${sub}" (${line})`);
    for (const flag of words.filter((w) => w.startsWith('--'))) assert.ok(text.includes(flag), `edgeid-admin usage lists ${flag} (${line})`);
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
    for (const flag of line.split(/\s+/).filter((w) => w.startsWith('--'))) assert.ok(server.includes(flag), `edgeid-server usage lists ${flag}`);
  }
});

test('the scripts and files the README points to exist', () => {
  for (const l of shellLines.filter((x) => x.startsWith('scripts/'))) assert.ok(existsSync(path.join(REPO, l.split(/\s+/)[0]!)), l);
  for (const f of ['docs/ERRORS.md', 'enroll-server/README.md', 'BENCHMARKS.md', 'scripts/edgeid-agent.service', '.ci/run']) {
    assert.ok(existsSync(path.join(REPO, f)), `${f} exists`);
  }
  assert.match(readFileSync(path.join(REPO, '.ci/run'), 'utf8'), /scripts\/test/);
});
