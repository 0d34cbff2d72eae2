/**
 * `edgeid-agent tpm info|quote` as a technician runs them, against a real swtpm; tpm2_checkquote
 * (tpm2-tools) accepts the files `tpm quote` writes, and quote.pcrs is byte for byte what
 * tpm2_quote -o writes for the same PCRs.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { extendBootPcrs, startSwtpm, type Swtpm } from '../../scripts/harness/swtpm.js';
import { programCommand } from '../../scripts/harness/bins.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const [AGENT, ...AGENT_ARGS] = programCommand('edgeid-agent');

async function agent(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(AGENT, [...AGENT_ARGS, ...args], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

async function setup(t: TestContext): Promise<{ swtpm: Swtpm; dir: string }> {
  const swtpm = await startSwtpm();
  t.after(() => swtpm.stop());
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return { swtpm, dir };
}

test('tpm info shows the TPM, both EKs and their certificates (text and --json)', async (t) => {
  const { swtpm } = await setup(t);
  const json = await agent(['tpm', 'info', '--tcti', swtpm.tcti, '--json']);
  assert.equal(json.code, 0, json.stderr);
  const info = JSON.parse(json.stdout) as {
    manufacturer: string;
    spec: { family: string };
    transientObjects: number;
    endorsementKeys: { kind: string; persistentHandle: string; certificateIndex: string; certificate: { issuer: string } | null }[];
  };
  assert.equal(info.manufacturer, 'IBM');
  assert.equal(info.spec.family, '2.0');
  assert.equal(info.transientObjects, 0);
  assert.deepEqual(
    info.endorsementKeys.map((k) => [k.kind, k.persistentHandle, k.certificateIndex, k.certificate?.issuer]),
    [
      ['rsa', '0x81010001', '0x01c00002', 'CN=swtpm-localca'],
      ['ecc', '0x81010016', '0x01c00016', 'CN=swtpm-localca'],
    ],
  );

  // EDGEID_TCTI is the default when --tcti is absent.
  const text = await agent(['tpm', 'info'], { EDGEID_TCTI: swtpm.tcti });
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^TPM +IBM SWTPM, firmware /m);
  assert.match(text.stdout, /^EK rsa +persistent 0x81010001, certificate in NV 0x01c00002/m);
  assert.match(text.stdout, /^PCR banks +sha256 \(0-23\)$/m);
});

test('tpm quote writes files that tpm2_checkquote accepts, and rejects with another nonce', async (t) => {
  const { swtpm, dir } = await setup(t);
  await extendBootPcrs(swtpm.tcti);
  const nonce = 'c0ffee0123456789';
  const out = path.join(dir, 'quote');
  const r = await agent(['tpm', 'quote', '--tcti', swtpm.tcti, '--nonce', nonce, '--pcrs', '0,1,2,3', '--out', out]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /verified in TS/);
  const files = ['-u', 'ak.pub', '-m', 'quote.msg', '-s', 'quote.sig', '-f', 'quote.pcrs'].map((a) =>
    a.startsWith('-') ? a : path.join(out, a),
  );
  const ok = await run('tpm2_checkquote', [...files, '-g', 'sha256', '-q', nonce]);
  assert.match(ok.stdout, /sig: [0-9a-f]+/);
  await assert.rejects(run('tpm2_checkquote', [...files, '-g', 'sha256', '-q', 'c0ffee0123456780']));
});

test('quote.pcrs is byte for byte what tpm2_quote -o writes for the same PCRs (more than 8 of them)', async (t) => {
  const { swtpm, dir } = await setup(t);
  await extendBootPcrs(swtpm.tcti);
  const pcrs = '0,1,2,3,4,5,6,7,8,9,16';
  const r = await agent(['tpm', 'quote', '--tcti', swtpm.tcti, '--nonce', 'aa55', '--pcrs', pcrs, '--out', dir]);
  assert.equal(r.code, 0, r.stderr);

  const tools = (args: string[]) => run(args[0]!, ['-T', swtpm.tcti, ...args.slice(1)], { cwd: dir });
  await tools([
    'tpm2_createak',
    '-C',
    '0x81010001',
    '-c',
    'tools-ak.ctx',
    '-G',
    'ecc',
    '-g',
    'sha256',
    '-s',
    'ecdsa',
    '-u',
    'tools-ak.pub',
  ]);
  await tools(['tpm2_flushcontext', '-t']);
  await tools([
    'tpm2_quote',
    '-c',
    'tools-ak.ctx',
    '-l',
    `sha256:${pcrs}`,
    '-q',
    'aa55',
    '-m',
    'tools.msg',
    '-s',
    'tools.sig',
    '-o',
    'tools.pcrs',
  ]);
  await tools(['tpm2_flushcontext', '-t']);
  assert.deepEqual(await readFile(path.join(dir, 'quote.pcrs')), await readFile(path.join(dir, 'tools.pcrs')));
  await run('tpm2_checkquote', [
    '-u',
    path.join(dir, 'ak.pub'),
    '-m',
    path.join(dir, 'quote.msg'),
    '-s',
    path.join(dir, 'quote.sig'),
    '-f',
    path.join(dir, 'quote.pcrs'),
    '-g',
    'sha256',
    '-q',
    'aa55',
  ]);
});

test('tpm quote without --out is a usage error (exit code 2), a dead TPM a clear error (exit code 1)', async () => {
  const usage = await agent(['tpm', 'quote', '--nonce', 'aa', '--pcrs', '0']);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /needs --nonce, --pcrs and --out/);
  const dead = await agent(['tpm', 'info', '--tcti', 'swtpm:host=127.0.0.1,port=1']);
  assert.equal(dead.code, 1);
  assert.match(dead.stderr, /\[tpm_unavailable\]/);
  assert.match(dead.stderr, /fix: /);
  const noAddon = await agent(['tpm', 'info', '--tcti', 'swtpm:host=127.0.0.1,port=1'], {
    EDGEID_TPM_ADDON: '/nonexistent/edgeid_tpm.node',
  });
  assert.equal(noAddon.code, 1);
  assert.match(noAddon.stderr, /\[tpm_addon_missing\]/);
});
