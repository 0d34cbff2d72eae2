/**
 * What an outsider finds when probing the CLIs: help and usage text hold no control character;
 * usage mistakes are usage errors wherever the CLI runs; secrets stay off stderr unless it is a
 * terminal; JSON output carries no raw C1 or bidi control (each test names its case).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startServerProcess } from '../../scripts/harness/server.js';
import { runCli, seedDataDir } from '../helpers/cli.js';

// any control character but the newline: C0, DEL, C1 (ECMA-48 §5), bidi controls (Unicode TR #9)
const CONTROL = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

test('help and usage text of both CLIs hold no control character (no raw ESC on a terminal)', { timeout: 600_000 }, async (t) => {
  const work = await mkdtemp(path.join(os.tmpdir(), 'edgeid-cli-hardening-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const help = await runCli('edgeid-admin', ['--help'], { cwd: work });
  assert.equal(help.code, 0, help.stderr);
  assert.match(help.stdout.toString('utf8'), /usage: edgeid-admin/);
  assert.doesNotMatch(help.stdout.toString('utf8'), CONTROL, 'edgeid-admin --help');
  // the usage printed with a usage error, on stderr
  const bad = await runCli('edgeid-admin', ['tokens', 'list', '--frobnicate'], { cwd: work });
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /Unknown option '--frobnicate'/);
  assert.doesNotMatch(bad.stderr, CONTROL, 'edgeid-admin usage on stderr');
  for (const args of [['--help'], ['enroll', '--help'], ['run', '--help'], ['status', '--help'], ['wipe', '--help'], ['tpm', '--help']]) {
    const r = await runCli('edgeid-agent', args, { cwd: work });
    assert.equal(r.code, 0, `edgeid-agent ${args.join(' ')}: ${r.stderr}`);
    assert.doesNotMatch(r.stdout.toString('utf8'), CONTROL, `edgeid-agent ${args.join(' ')}`);
  }
});

test('edgeid-admin: a usage mistake is a usage error (exit 2) also where no server is configured', { timeout: 600_000 }, async (t) => {
  // a workstation: no ./data, no EDGEID_* variables
  const work = await mkdtemp(path.join(os.tmpdir(), 'edgeid-cli-hardening-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const cases: [string[], RegExp][] = [
    [['frobnicate'], /unknown command: frobnicate/],
    [['device', 'show'], /a device id is required/],
    [['device', 'frob', 'dev-0123456789abcdef'], /device show ID/],
    [['revoke', 'dev-0123456789abcdef', '--reason', 'bored'], /--reason must be one of/],
    [['retire'], /a device id is required/],
    // the README's placeholder typed as is: named as not a device id, not a schema message from the server
    [['device', 'show', 'DEVICE_ID'], /"DEVICE_ID" is not a device id: ids look like dev-/],
    [['revoke', 'DEVICE_ID', '--reason', 'key-compromise'], /is not a device id/],
    [['renew-now', 'plc-gw-17'], /"plc-gw-17" is not a device id/],
    [['devices', 'list', '--status', 'bogus'], /--status must be one of active, quarantined, revoked, retired/],
    // the argument mistake is named first, before an unwritable output path
    [['token', 'create', '--zone', 'default', '--png', '/nonexistent-dir/q.png'], /--owner is required/],
    [['frobnicate', '--out', '/nonexistent-dir/x'], /unknown command: frobnicate/],
    [['token', 'create', '--zone', 'default'], /--owner is required/],
    [['token', 'create', '--zone', 'default', '--owner', 'ops', '--ttl', 'forever'], /--ttl forever is not a duration/],
  ];
  for (const [args, why] of cases) {
    const r = await runCli('edgeid-admin', args, { cwd: work });
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, why, args.join(' '));
    assert.match(r.stderr, /usage: edgeid-admin/);
    assert.equal(r.stdout.length, 0);
  }
  // a well-formed command still says what is missing, with its code
  const r = await runCli('edgeid-admin', ['tokens', 'list'], { cwd: work });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /admin_server_unreachable: no server URL/);
});

test('edgeid-admin token create: the token (in its URI) stays off a stderr that is not a terminal', { timeout: 600_000 }, async (t) => {
  const work = await mkdtemp(path.join(os.tmpdir(), 'edgeid-cli-hardening-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const srv = await startServerProcess({ dataDir: path.join(work, 'data') });
  t.after(() => srv.stop());
  const admin = (args: string[]) => runCli('edgeid-admin', [...args, '--data', srv.dataDir], { cwd: work });
  const token = (doc: string) => /token=([A-Za-z0-9._~-]+)/.exec(decodeURIComponent(doc))![1]!;
  // stderr is a pipe in each (a CI job's log, a cron mail, the journal)
  const human = await admin(['token', 'create', '--zone', 'default', '--owner', 'ops']);
  assert.equal(human.code, 0, human.stderr);
  const json = await admin(['token', 'create', '--zone', 'default', '--owner', 'ops', '--json', '--png', path.join(work, 't.png')]);
  assert.equal(json.code, 0, json.stderr);
  const out = path.join(work, 'token.txt');
  const filed = await admin(['token', 'create', '--zone', 'default', '--owner', 'ops', '--out', out]);
  assert.equal(filed.code, 0, filed.stderr);
  const secrets = [
    token(/^uri\s+(\S+)$/m.exec(human.stdout.toString('utf8'))![1]!),
    (JSON.parse(json.stdout.toString('utf8')) as { token: string }).token,
    token(/^uri\s+(\S+)$/m.exec(await readFile(out, 'utf8'))![1]!),
  ];
  for (const [i, r] of [human, json, filed].entries()) {
    assert.ok(secrets[i]!.length > 20);
    assert.ok(!r.stderr.includes(secrets[i]!), `token ${i} is not on stderr: ${r.stderr}`);
    assert.ok(!r.stderr.includes(secrets[i]!.split('.')[1]!), `nor its secret part`);
    assert.match(r.stderr, /on the device: edgeid-agent enroll --uri/, 'the next step is still named');
  }
});

test(
  'edgeid-admin --json and audit export: device-supplied C1 and bidi controls are \\u escapes, not raw bytes',
  { timeout: 600_000 },
  async (t) => {
    const work = await mkdtemp(path.join(os.tmpdir(), 'edgeid-cli-hardening-'));
    t.after(() => rm(work, { recursive: true, force: true }));
    // CSI and OSC as 8-bit C1 controls (ECMA-48 §5.3), a right-to-left override, DEL: JSON.stringify
    // escapes none of them (it escapes only U+0000–U+001F)
    const version = '1.0\x9b2J\x9d52;c;ZWRnZWlk\x07\u202eevil\x7f';
    const name = 'gw\x9b1A\u2066x';
    const dataDir = path.join(work, 'data');
    const [id] = await seedDataDir(dataDir, { tokens: 0, devices: 1, firstDevice: { agentVersion: version, name } });
    const srv = await startServerProcess({ dataDir });
    t.after(() => srv.stop());
    const admin = (args: string[]) => runCli('edgeid-admin', [...args, '--data', dataDir], { cwd: work });
    // a token name lands in the audit trail (token.create's details)
    const created = await admin(['token', 'create', '--zone', 'default', '--owner', 'ops', '--name', name, '--json']);
    assert.equal(created.code, 0, created.stderr);
    for (const args of [
      ['devices', 'list', '--json'],
      ['device', 'show', id!, '--json'],
      ['tokens', 'list', '--json'],
      ['audit', 'export'],
      ['audit', 'export', '--json'],
    ]) {
      const r = await admin(args);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      const text = r.stdout.toString('utf8');
      assert.doesNotMatch(text.replace(/\n/g, ''), CONTROL, `${args.join(' ')} prints no raw control character`);
      // and the values are exactly the device's, to a JSON parser
      const docs =
        args[1] === 'export' && !args.includes('--json')
          ? text
              .trimEnd()
              .split('\n')
              .map((l) => JSON.parse(l) as unknown)
          : (JSON.parse(text) as unknown);
      const all = JSON.stringify(docs);
      assert.ok(
        all.includes(JSON.stringify(args[0] === 'audit' || args[0] === 'tokens' ? name : version).slice(1, -1)),
        `${args.join(' ')} holds the value unchanged`,
      );
    }
  },
);

test('edgeid-admin token create: a --png or --out path that cannot be written creates no token', { timeout: 600_000 }, async (t) => {
  const work = await mkdtemp(path.join(os.tmpdir(), 'edgeid-cli-hardening-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const srv = await startServerProcess({ dataDir: path.join(work, 'data') });
  t.after(() => srv.stop());
  const admin = (args: string[]) => runCli('edgeid-admin', [...args, '--data', srv.dataDir], { cwd: work });
  const count = async () => (JSON.parse((await admin(['tokens', 'list', '--json'])).stdout.toString('utf8')) as unknown[]).length;
  const before = await count();
  for (const flag of ['--png', '--out']) {
    const r = await admin(['token', 'create', '--zone', 'default', '--owner', 'ops', flag, path.join(work, 'no-such-dir', 'token.x')]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`${flag} .*token\\.x: cannot create that file in .*no-such-dir \\(ENOENT\\); nothing was done`));
    assert.equal(r.stdout.length, 0);
    // a directory where the file should go (a rename cannot replace it)
    const dir = await admin(['token', 'create', '--zone', 'default', '--owner', 'ops', flag, work]);
    assert.equal(dir.code, 1, dir.stderr);
    assert.match(dir.stderr, /cannot create that file in .* \(EISDIR\); nothing was done/);
  }
  assert.equal(await count(), before, 'no token was created on the server');
});

test(
  'edgeid-admin audit verify --file: a file of JSON values that are not audit rows is named as such, not a TypeError',
  { timeout: 600_000 },
  async (t) => {
    const work = await mkdtemp(path.join(os.tmpdir(), 'edgeid-cli-hardening-'));
    t.after(() => rm(work, { recursive: true, force: true }));
    for (const [i, text] of ['null\n', '[1,2]\n', '{"seq":1}\n"x"\n', '{"seq":"1"}\n'].entries()) {
      const file = path.join(work, `rows-${i}.jsonl`);
      await writeFile(file, text);
      const r = await runCli('edgeid-admin', ['audit', 'verify', '--file', file, '--json'], { cwd: work });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /line \d is not an audit row/, JSON.stringify(text));
      assert.doesNotMatch(r.stderr, /Cannot read properties|TypeError/);
      assert.equal(r.stdout.length, 0, 'no half document on stdout');
    }
  },
);
