/**
 * The CLIs as a script and as a technician meet them: every large listing of `edgeid-admin`
 * (≥ 1 MiB, read slowly through a pipe) equals the same written with --out; every --json is one
 * strict JSON document and stdout holds nothing else; on a pseudo-terminal colours and QR blocks
 * appear, with NO_COLOR or through a pipe they do not; device-supplied terminal escapes reach no
 * terminal raw; exit codes are 0 ok, 1 failed, 2 usage. `edgeid-agent` commands against a real
 * swtpm and a real `edgeid-server` process; the admin token of a first start stays out of a
 * piped stderr.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startServerProcess } from '../../scripts/harness/server.js';
import { extendBootPcrs, startSwtpm } from '../../scripts/harness/swtpm.js';
import { ANSI, BINS, cleanEnv, runCli, runOnPty, seedDataDir, shellLine } from '../helpers/cli.js';

// OSC 52 (write the clipboard), BEL, then CSI 2K (erase the line) and a cursor-up: what a hostile
// device would put in its claims to rewrite an operator's `devices list`
const HOSTILE_VERSION = '\x1b]52;c;ZWRnZWlk\x07\x1b[2K\x1b[1A1.0';
const HOSTILE_NAME = 'gw\x9b2K\u202ereversed\r';
const MIB = 1 << 20;

const mode = async (f: string) => (await stat(f)).mode & 0o777;

test('edgeid-admin and edgeid-agent: pipes, --out, --json, terminals, escapes and exit codes', { timeout: 1_500_000 }, async (t) => {
  const work = await mkdtemp(path.join(os.tmpdir(), 'edgeid-cli-output-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const dataDir = path.join(work, 'data');
  // 3,200 devices make `devices list` (the narrowest listing) pass 1 MiB as a table
  const ids = await seedDataDir(dataDir, {
    tokens: 600,
    devices: 3200,
    firstDevice: { agentVersion: HOSTILE_VERSION, name: HOSTILE_NAME },
  });
  const hostileId = ids[0]!;
  const srv = await startServerProcess({ dataDir });
  t.after(() => srv.stop());
  const admin = (args: string[], env?: NodeJS.ProcessEnv) =>
    runCli('edgeid-admin', [...args, '--data', dataDir], { cwd: work, ...(env ? { env } : {}) });

  await t.test('every large listing read slowly through a pipe equals the same written with --out (≥ 1 MiB each)', async () => {
    const listings = [
      ['tokens', 'list'],
      ['tokens', 'list', '--json'],
      ['devices', 'list'],
      ['devices', 'list', '--json'],
      ['audit', 'export'],
      ['audit', 'export', '--json'],
    ];
    for (const args of listings) {
      const what = args.join(' ');
      const piped = await admin(args);
      assert.equal(piped.code, 0, `${what}: ${piped.stderr}`);
      assert.ok(piped.stdout.length >= MIB, `${what} printed ${piped.stdout.length} bytes`);
      assert.equal(piped.stdout.at(-1), 0x0a, `${what} ends with its last line whole`);
      const file = path.join(work, `${args.join('-')}.out`);
      const filed = await admin([...args, '--out', file]);
      assert.equal(filed.code, 0, filed.stderr);
      assert.equal(filed.stdout.length, 0, `${what} --out prints nothing on stdout`);
      assert.match(filed.stderr, /^wrote /m);
      const written = await readFile(file);
      if (args[0] !== 'audit') {
        assert.ok(piped.stdout.equals(written), `${what}: the pipe got exactly what --out wrote`);
      } else {
        // the admin calls between the two runs are audit rows too: the pipe got every row the file
        // has up to then, byte for byte, and the file only newer rows after them
        const rows = (b: Buffer) =>
          args.includes('--json')
            ? (JSON.parse(b.toString('utf8')) as { seq: number }[])
            : b
                .toString('utf8')
                .trimEnd()
                .split('\n')
                .map((l) => JSON.parse(l) as { seq: number });
        const pipedRows = rows(piped.stdout);
        const fileRows = rows(written);
        assert.deepEqual(fileRows.slice(0, pipedRows.length), pipedRows, `${what}: the pipe got every row`);
        assert.ok(fileRows.length - pipedRows.length <= 4, `${what}: only the rows of the calls in between are new`);
        if (!args.includes('--json')) assert.ok(written.subarray(0, piped.stdout.length).equals(piped.stdout), `${what}: byte for byte`);
      }
      assert.equal(await mode(file), 0o600, `${what} --out writes 0600`);
    }
  });

  await t.test('--json prints exactly one strict JSON document on stdout; audit export is JSON lines', async () => {
    const tokens = await admin(['tokens', 'list', '--json']);
    assert.equal((JSON.parse(tokens.stdout.toString('utf8')) as unknown[]).length, 3800);
    const devices = JSON.parse((await admin(['devices', 'list', '--json'])).stdout.toString('utf8')) as {
      id: string;
      claims: { agentVersion: string };
    }[];
    assert.equal(devices.length, 3200);
    // the hostile claim survives JSON exactly (escaped by the encoder, restored by the parser)
    assert.equal(devices.find((d) => d.id === hostileId)!.claims.agentVersion, HOSTILE_VERSION);
    const show = await admin(['device', 'show', hostileId, '--json']);
    assert.equal(show.code, 0, show.stderr);
    assert.equal((JSON.parse(show.stdout.toString('utf8')) as { id: string }).id, hostileId);
    const verify = await admin(['audit', 'verify', '--json']);
    assert.equal(verify.code, 0, verify.stderr);
    assert.equal((JSON.parse(verify.stdout.toString('utf8')) as { ok: boolean }).ok, true);
    const png = path.join(work, 'json-token.png');
    const created = await admin(['token', 'create', '--zone', 'default', '--owner', 'ops', '--png', png, '--json']);
    assert.equal(created.code, 0, created.stderr);
    const doc = JSON.parse(created.stdout.toString('utf8')) as { uri: string; token: string };
    assert.match(doc.uri, /^edgeid:\/\/enroll\?/);
    // the hints went to stderr, not into the document
    assert.match(created.stderr, /QR code written to .*json-token\.png/);
    assert.match(created.stderr, /on the device: edgeid-agent enroll --uri/);
    const renew = await admin(['renew-now', ids[1]!, '--json']);
    assert.equal(renew.code, 1, 'no broker on embedded defaults: not delivered');
    assert.equal((JSON.parse(renew.stdout.toString('utf8')) as { published: boolean }).published, false);
    const revoke = await admin(['revoke', ids[2]!, '--reason', 'key-compromise', '--json']);
    assert.equal(revoke.code, 0, revoke.stderr);
    assert.equal((JSON.parse(revoke.stdout.toString('utf8')) as { device: { status: string } }).device.status, 'revoked');
    const rows = (await admin(['audit', 'export'])).stdout.toString('utf8').trimEnd().split('\n');
    assert.ok(rows.length > 9000);
    const parsed = rows.map((line) => JSON.parse(line) as { seq: number });
    // with --json the same rows as one document
    const array = JSON.parse((await admin(['audit', 'export', '--json'])).stdout.toString('utf8')) as { seq: number }[];
    assert.deepEqual(array.slice(0, parsed.length), parsed);
    const ca = JSON.parse((await admin(['ca', 'export', '--json'])).stdout.toString('utf8')) as { chain: string };
    assert.equal((ca.chain.match(/-----BEGIN CERTIFICATE-----/g) ?? []).length, 2);
  });

  await t.test('device-supplied control characters are escaped in every human listing, on a pipe and on a terminal', async () => {
    for (const args of [
      ['devices', 'list'],
      ['device', 'show', hostileId],
      ['tokens', 'list'],
    ]) {
      const r = await admin(args);
      assert.equal(r.code, 0, r.stderr);
      const text = r.stdout.toString('utf8');
      assert.doesNotMatch(text, /[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]/, `${args.join(' ')} prints no control character but newlines`);
    }
    const list = (await admin(['devices', 'list'])).stdout.toString('utf8');
    assert.ok(list.includes('\\x1b]52;c;ZWRnZWlk\\x07\\x1b[2K\\x1b[1A1.0'), 'the escape sequence is shown, inert');
    assert.ok(list.includes('gw\\x9b2K\\u202ereversed\\x0d'));
    // on a terminal too (the pty turns \n into \r\n; nothing else may be a control character)
    const pty = await runOnPty('edgeid-admin', ['device', 'show', hostileId, '--data', dataDir], { cwd: work });
    assert.equal(pty.code, 0, pty.output);
    assert.doesNotMatch(pty.output.replace(/\r\n/g, '\n'), /[\x00-\x09\x0b-\x1f\x7f-\x9f]/);
    assert.ok(pty.output.includes('\\x1b]52;c;'));
  });

  await t.test(
    'token create: QR block and colours on a terminal; no colour with NO_COLOR; neither through a pipe unless --qr',
    async () => {
      const args = ['token', 'create', '--zone', 'default', '--owner', 'ops', '--data', dataDir];
      const coloured = await runOnPty('edgeid-admin', args, { cwd: work });
      assert.equal(coloured.code, 0, coloured.output);
      assert.match(coloured.output, ANSI, 'colours on a terminal');
      assert.match(coloured.output, /[▀▄█]/, 'a QR block on a terminal');
      const noColour = await runOnPty('edgeid-admin', args, { cwd: work, env: cleanEnv({ NO_COLOR: '1' }) });
      assert.equal(noColour.code, 0, noColour.output);
      assert.doesNotMatch(noColour.output, ANSI, 'NO_COLOR: no escape code at all');
      assert.match(noColour.output, /[▀▄█]/, 'NO_COLOR: the QR code drawn with plain blocks');
      const piped = await admin(['token', 'create', '--zone', 'default', '--owner', 'ops']);
      assert.equal(piped.code, 0, piped.stderr);
      const text = piped.stdout.toString('utf8');
      assert.doesNotMatch(text + piped.stderr, ANSI);
      assert.doesNotMatch(text, /[▀▄█]/, 'no QR block in a pipe');
      assert.match(text, /^uri +edgeid:\/\/enroll\?/m);
      const forced = await admin(['token', 'create', '--zone', 'default', '--owner', 'ops', '--qr']);
      assert.match(forced.stdout.toString('utf8'), /[▀▄█]/, '--qr draws it anyway');
      assert.doesNotMatch(forced.stdout.toString('utf8'), ANSI, '--qr through a pipe: still no colour');
    },
  );

  await t.test('token create --png writes the QR code 0600, also over an existing 0644 file', async () => {
    const png = path.join(work, 'token.png');
    await writeFile(png, 'old');
    await chmod(png, 0o644);
    const r = await admin(['token', 'create', '--zone', 'default', '--owner', 'ops', '--png', png]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await mode(png), 0o600);
    assert.deepEqual([...(await readFile(png)).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG');
  });

  await t.test('exit codes: 0 ok, 2 usage (usage on stderr, stdout empty), 1 failure (code on stderr, stdout empty)', async () => {
    const help = await runCli('edgeid-admin', ['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout.toString('utf8'), /exit codes: 0 ok, 1 failed/);
    const usage: string[][] = [
      [],
      ['frobnicate'],
      ['tokens', 'list', '--bogus'],
      ['token', 'create', '--owner', 'ops'],
      ['token', 'create', '--zone', 'default', '--owner', 'ops', '--ttl', 'soon'],
      ['revoke', ids[3]!, '--reason', 'because'],
      ['device', 'show'],
    ];
    for (const args of usage) {
      const r = await admin(args);
      assert.equal(r.code, 2, `edgeid-admin ${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout.length, 0);
      assert.match(r.stderr, /usage: edgeid-admin/);
    }
    const missing = await admin(['device', 'show', 'dev-0000000000000000']);
    assert.equal(missing.code, 1);
    assert.equal(missing.stdout.length, 0);
    assert.match(missing.stderr, /device_not_found/);
    const dead = await runCli('edgeid-admin', [
      'tokens',
      'list',
      '--server',
      'https://127.0.0.1:1',
      '--admin-token',
      'x',
      '--ca',
      path.join(dataDir, 'ca', 'root.pem'),
    ]);
    assert.equal(dead.code, 1);
    assert.match(dead.stderr, /admin_server_unreachable/);
    const verifyBadFile = path.join(work, 'not-audit.jsonl');
    await writeFile(verifyBadFile, '{"seq":1}\nnot json\n');
    const bad = await admin(['audit', 'verify', '--file', verifyBadFile]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /line 2 is not JSON/);

    const agentUsage: string[][] = [
      [],
      ['frobnicate'],
      ['status', '--bogus'],
      ['enroll', '--state', path.join(work, 'x')],
      ['tpm'],
      ['tpm', 'quote', '--out', work],
    ];
    for (const args of agentUsage) {
      const r = await runCli('edgeid-agent', args);
      assert.equal(r.code, 2, `edgeid-agent ${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout.length, 0);
      assert.match(r.stderr, /usage/);
    }
    for (const args of [['--help'], ['tpm', '--help'], ['tpm', 'info', '--help'], ['status', '--help']]) {
      const r = await runCli('edgeid-agent', args);
      assert.equal(r.code, 0, `edgeid-agent ${args.join(' ')}`);
      assert.match(r.stdout.toString('utf8'), /usage/);
    }
    const badUri = await runCli('edgeid-agent', ['enroll', '--uri', 'https://not-an-enroll-uri', '--state', path.join(work, 'x')]);
    assert.equal(badUri.code, 1);
    assert.match(badUri.stderr, /enroll_uri_invalid/);
    const noTpm = await runCli('edgeid-agent', ['tpm', 'info', '--tcti', 'swtpm:host=127.0.0.1,port=1', '--json']);
    assert.equal(noTpm.code, 1);
    assert.equal(noTpm.stdout.length, 0);
  });

  await t.test('a reader that goes away makes the exit code 1 (the output was not delivered)', async () => {
    const [cmd, ...pre] = BINS['edgeid-admin'];
    const child = spawn(cmd!, [...pre!, 'audit', 'export', '--data', dataDir], {
      cwd: work,
      env: cleanEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.stdout.once('data', () => child.stdout.destroy());
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    assert.equal(code, 1, stderr);
    assert.match(stderr, /EPIPE/);
  });

  await t.test(
    'edgeid-agent: enroll on a terminal prints sentences and a next step with its --state and --tcti; status --json is strict JSON',
    async () => {
      const tpm = await startSwtpm();
      t.after(() => tpm.stop());
      await extendBootPcrs(tpm.tcti);
      const stateDir = path.join(work, 'agent state');
      const status0 = await runCli('edgeid-agent', ['status', '--state', stateDir, '--json']);
      assert.equal(status0.code, 1, 'not enrolled');
      assert.equal((JSON.parse(status0.stdout.toString('utf8')) as { enrolled: boolean }).enrolled, false);

      const { uri } = JSON.parse(
        (await admin(['token', 'create', '--zone', 'default', '--owner', 'ops', '--json'])).stdout.toString('utf8'),
      ) as { uri: string };
      const enrolled = await runOnPty('edgeid-agent', ['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti]);
      assert.equal(enrolled.code, 0, enrolled.output);
      const shown = enrolled.output.replace(/\r\n/g, '\n');
      assert.match(shown, /^enrolled as dev-[0-9a-f]{16} \(zone default\)$/m);
      assert.doesNotMatch(shown, /^\{"level"/m, 'no JSON log line on a terminal');
      assert.match(shown, /^\d\d:\d\d:\d\d /m, 'log events as sentences');
      const step = /^start the agent: (.*)$/m.exec(shown)?.[1];
      assert.equal(
        step,
        shellLine(['edgeid-agent', 'run', '--state', stateDir, '--tcti', tpm.tcti]),
        'the next step is the command that works here',
      );

      const json = await runCli('edgeid-agent', ['status', '--state', stateDir, '--json']);
      assert.equal(json.code, 0, json.stderr);
      const st = JSON.parse(json.stdout.toString('utf8')) as { enrolled: boolean; device: { id: string } };
      assert.equal(st.enrolled, true);
      assert.ok(shown.includes(st.device.id));
      const text = await runOnPty('edgeid-agent', ['status', '--state', stateDir]);
      assert.equal(text.code, 0, text.output);
      assert.match(text.output, new RegExp(`^device +${st.device.id}`, 'm'));
      assert.doesNotMatch(text.output, /^\s*[{[]/m, 'sentences, not JSON');

      // through a pipe the logs are JSON lines (for the journal); the refusal is a failure, exit 1
      const again = await runCli('edgeid-agent', ['enroll', '--uri', uri, '--state', stateDir, '--tcti', tpm.tcti, '--json']);
      assert.equal(again.code, 1);
      assert.equal(again.stdout.length, 0, 'a failed --json command prints no document');
      assert.match(again.stderr, /already_enrolled/);

      const info = await runCli('edgeid-agent', ['tpm', 'info', '--tcti', tpm.tcti, '--json']);
      assert.equal(info.code, 0, info.stderr);
      assert.equal((JSON.parse(info.stdout.toString('utf8')) as { tcti: string }).tcti, tpm.tcti);

      const wiped = await runCli('edgeid-agent', ['wipe', '--state', stateDir, '--tcti', tpm.tcti, '--json']);
      assert.equal(wiped.code, 0, wiped.stderr);
      assert.ok((JSON.parse(wiped.stdout.toString('utf8')) as { removed: number }).removed > 0);
      assert.equal((await runCli('edgeid-agent', ['status', '--state', stateDir])).code, 1, 'not enrolled any more');
    },
  );
});

test(
  'edgeid-server first start: the new admin token stays out of a piped stderr (it is in the 0600 file), and is shown on a terminal',
  { timeout: 120_000 },
  async (t) => {
    const piped = await startServerProcess();
    t.after(() => piped.close());
    assert.equal(await mode(path.join(piped.dataDir, 'admin-token')), 0o600);
    assert.ok(!piped.log().includes(piped.adminToken), 'not in the log stream');
    assert.ok(piped.log().includes(path.join(piped.dataDir, 'admin-token')), 'the log points to the file');

    const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-server-pty-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const dataDir = path.join(dir, 'data');
    const run = runOnPty('edgeid-server', ['--data', dataDir, '--listen', '127.0.0.1:0'], { env: cleanEnv({ EDGEID_LOG_LEVEL: 'warn' }) });
    // once it listens (server.json written), stop it with SIGTERM; `script` then ends too
    const deadline = Date.now() + 60_000;
    let pid = 0;
    while (!pid) {
      assert.ok(Date.now() < deadline, 'edgeid-server did not start on the pty');
      await new Promise((r) => setTimeout(r, 100));
      pid = await readFile(path.join(dataDir, 'server.json'), 'utf8').then(
        (s) => (JSON.parse(s) as { pid: number }).pid,
        () => 0,
      );
    }
    process.kill(pid, 'SIGTERM');
    const { output } = await run;
    const token = (await readFile(path.join(dataDir, 'admin-token'), 'utf8')).trim();
    assert.ok(output.includes(token), 'a person at the terminal sees it once');
  },
);
