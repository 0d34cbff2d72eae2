/**
 * The README's first command: `scripts/demo` runs the whole story unattended, ends with its
 * summary, and Ctrl-C leaves no process behind. Short certificates keep it quick here.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { REPO } from '../../scripts/harness/fs.js';

function leftovers(dir: string): string[] {
  const out = execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes(dir) && !l.includes('ps -eo'));
}

function runDemo(
  dir: string,
  onLine?: (line: string, kill: () => void) => void,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(path.join(REPO, 'scripts/demo'), ['--unattended', '--lifetime', '30s', '--dir', dir], {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
      // scripts/test ran setup already; a second one would rebuild the bundle under other tests
      env: { ...process.env, EDGEID_DEMO_SKIP_SETUP: '1' },
    });
    let out = '';
    const onData = (d: Buffer) => {
      out += d.toString();
      if (onLine) for (const line of d.toString().split('\n')) onLine(line, () => child.kill('SIGINT'));
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', (code, signal) => resolve({ code, signal, out }));
  });
}

test('scripts/demo stops everything on Ctrl-C, then runs to its summary in the same directory', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-demo-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));

  let sent = false;
  const interrupted = await runDemo(dir, (line, kill) => {
    if (!sent && line.includes('enrolled plc-gw-1')) {
      sent = true;
      kill();
    }
  });
  assert.ok(sent, `the demo reached enrollment before being interrupted:\n${interrupted.out.slice(-2000)}`);
  assert.equal(interrupted.code, 130, interrupted.out.slice(-2000));
  assert.deepEqual(leftovers(dir), [], 'no process of the interrupted demo is left');

  const full = await runDemo(dir);
  assert.equal(full.code, 0, full.out.slice(-4000));
  const m = /EDGEID_DEMO_SUMMARY (\{.*\})/.exec(full.out);
  assert.ok(m, 'the demo printed its summary');
  assert.deepEqual(JSON.parse(m[1]!), {
    enrolled: 3,
    renewedEach: true,
    quarantinedAndRestored: 1,
    revokedAndWiped: 1,
    lostFromActive: 0,
    alerts: ['device_quarantined', 'device_revoked'],
  });
  // the operator can follow it in the console: its address and a one-time personal token
  assert.match(full.out, /web console: .*https:\/\/localhost:\d+\/console/);
  assert.match(full.out, /sign in as the operator .*ops-demo.* with this personal token \(shown once\): \S{20,}/);
  assert.match(full.out, /quarantined: PCRs 0 differ/);
  assert.match(full.out, /renewal_refused/);
  assert.deepEqual(leftovers(dir), [], 'no process of the demo is left');
});
