/**
 * The broker recipe of docs/PACKAGING.md on a stock Debian Mosquitto layout: `edgeid-admin broker
 * config` into /etc/mosquitto/edgeid, the key and the dynsec file (and its directory, where the
 * plugin saves it) owned by user mosquitto, the config linked into /etc/mosquitto/conf.d, Mosquitto
 * started on Debian's own /etc/mosquitto/mosquitto.conf as root (it drops to user mosquitto). All
 * under a temp root: the stock mosquitto.conf of this host's mosquitto package with its paths moved
 * into that root. Then the server, given the `broker` section the recipe prints, reconciles the
 * broker's clients through the dynamic-security plugin. Needs root (chown, Mosquitto's user switch).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { startMosquitto } from '../../scripts/harness/mosquitto.js';
import { freePort } from '../../scripts/harness/ports.js';
import { startServerProcess } from '../../scripts/harness/server.js';
import { waitFor } from '../../scripts/harness/wait.js';
import { runCli } from '../helpers/cli.js';

const run = promisify(execFile);

test('edgeid-admin broker config installs into a stock Debian Mosquitto and the server administers it', { timeout: 300_000 }, async (t) => {
  assert.equal(
    process.getuid?.(),
    0,
    'the recipe chowns files to user mosquitto and starts Mosquitto as root: run this test as root (scripts/test does)',
  );
  const uid = Number((await run('id', ['-u', 'mosquitto'])).stdout.trim());
  const root = await mkdtemp('/var/tmp/edgeid-broker-recipe-');
  t.after(() => rm(root, { recursive: true, force: true }));
  await chmod(root, 0o755);
  const etc = path.join(root, 'etc/mosquitto');
  for (const d of ['conf.d', '../../run/mosquitto', '../../var/lib/mosquitto']) await mkdir(path.join(etc, d), { recursive: true });
  await run('chown', ['mosquitto:', path.join(root, 'run/mosquitto'), path.join(root, 'var/lib/mosquitto')]);
  // Debian's stock mosquitto.conf, its paths moved into the root; logs on stderr for the test
  const stock = await readFile('/etc/mosquitto/mosquitto.conf', 'utf8');
  assert.match(stock, /^include_dir \/etc\/mosquitto\/conf\.d$/m, 'the stock config reads conf.d');
  const conf = stock
    .replace(/^pid_file \/run\//m, `pid_file ${root}/run/`)
    .replace(/^persistence_location \/var\//m, `persistence_location ${root}/var/`)
    .replace(/^log_dest file .*$/m, 'log_dest stderr')
    .replace(/^include_dir \/etc\/mosquitto\/conf\.d$/m, `include_dir ${etc}/conf.d`);
  await writeFile(path.join(etc, 'mosquitto.conf'), conf);

  const srv = await startServerProcess();
  t.after(() => srv.close());
  const port = await freePort();
  const dir = path.join(etc, 'edgeid');

  // the recipe (docs/PACKAGING.md), paths under the root
  const made = await runCli('edgeid-admin', [
    'broker',
    'config',
    '--out',
    dir,
    '--hostname',
    '127.0.0.1',
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--data',
    srv.dataDir,
  ]);
  assert.equal(made.code, 0, made.stderr);
  await run('chown', ['mosquitto:', dir, path.join(dir, 'server.key'), path.join(dir, 'dynsec.json')]);
  await symlink(path.join(dir, 'mosquitto.conf'), path.join(etc, 'conf.d/edgeid.conf'));
  // "systemctl restart mosquitto": the unit's ExecStart, `mosquitto -c /etc/mosquitto/mosquitto.conf`
  const broker = await startMosquitto({ configFile: path.join(etc, 'mosquitto.conf'), port, supervised: true });
  t.after(() => broker.stop());

  const pid = Number(
    (await waitFor('the pid file', () => readFile(path.join(root, 'run/mosquitto/mosquitto.pid'), 'utf8').catch(() => ''))).trim(),
  );
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  assert.equal(Number(/^Uid:\s+(\d+)/m.exec(status)![1]), uid, 'Mosquitto runs as user mosquitto');
  // (a "Client connection … failed" line is the harness's plain TCP probe of the port)
  assert.doesNotMatch(broker.log(), /Unable to|denied|Error:|Error loading/, broker.log());

  // the server with the broker section `broker config` printed: it connects with its client
  // certificate as the dynsec admin and reconciles
  await srv.stop();
  await srv.start({
    broker: { url: `mqtts://127.0.0.1:${port}`, crlFile: path.join(dir, 'crl.pem'), reloadCommand: broker.reloadCommand },
    mqtt: { url: `mqtts://127.0.0.1:${port}` },
  });
  const rec = await runCli('edgeid-admin', ['broker', 'reconcile', '--json', '--data', srv.dataDir]);
  assert.equal(rec.code, 0, `${rec.stderr}\n${broker.log()}`);
  // the plugin saved its state as user mosquitto into the directory it owns
  assert.equal((await stat(path.join(dir, 'dynsec.json'))).uid, uid);
});
