/**
 * The Debian packages (scripts/package) on this machine without touching it: installed with
 * `dpkg --root` into a temp root (maintainer scripts run with DPKG_ROOT, users written into that
 * root's /etc), the server's unit run by scripts/unit-run (its exact ExecStart as its user, with
 * its environment and file-system sandbox), upgraded to version n+1 (state and an edited conffile
 * kept), removed and purged; the agent enrolls as its unit's user against an swtpm and its unit's
 * ExecStart runs; lintian has nothing to say about them. Needs root (dpkg, chown to
 * the package's users, mount namespace); as another user the test fails and says so.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, lstat, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO } from '../../scripts/harness/fs.js';
import { freePort } from '../../scripts/harness/ports.js';
import { stopChild } from '../../scripts/harness/process.js';
import { SWTPM_LOCALCA_ISSUER, SWTPM_LOCALCA_ROOT, extendBootPcrs, startSwtpm } from '../../scripts/harness/swtpm.js';
import { waitFor } from '../../scripts/harness/wait.js';

const run = promisify(execFile);
const version = (JSON.parse(await readFile(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
const next = `${version}+pkgtest1`;
const arch = (await run('dpkg', ['--print-architecture'])).stdout.trim();
const deb = (dir: string, pkg: string, v: string) => path.join(dir, `${pkg}_${v}_${arch}.deb`);

/** dpkg on ROOT: maintainer scripts on this host with DPKG_ROOT=ROOT (no chroot into an empty root). */
async function dpkg(root: string, ...args: string[]): Promise<string> {
  try {
    const r = await run('dpkg', [`--root=${root}`, '--force-script-chrootless', ...args], {
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
    return r.stdout + r.stderr;
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`dpkg ${args.join(' ')} failed: ${err.stderr ?? ''}${err.stdout ?? ''}${err.message}`);
  }
}
async function status(root: string, pkg: string): Promise<string> {
  return (
    await run('dpkg-query', [`--admindir=${root}/var/lib/dpkg`, '-W', '-f=${db:Status-Abbrev}${Version}', pkg]).catch(() => ({
      stdout: 'absent',
    }))
  ).stdout.trim();
}
const passwd = async (root: string, name: string) =>
  (await readFile(path.join(root, 'etc/passwd'), 'utf8'))
    .split('\n')
    .find((l) => l.startsWith(`${name}:`))
    ?.split(':');
const groupLine = async (root: string, name: string) =>
  (await readFile(path.join(root, 'etc/group'), 'utf8'))
    .split('\n')
    .find((l) => l.startsWith(`${name}:`))
    ?.split(':');
// a unit's enablement link points at /lib/systemd/system/… inside the root: the link itself counts
const isLink = (f: string) =>
  lstat(f).then(
    (s) => s.isSymbolicLink(),
    () => false,
  );
const sha = async (f: string) =>
  createHash('sha256')
    .update(await readFile(f))
    .digest('hex');

/**
 * A root that holds only what the packages' Depends name, as this host's dpkg has them installed
 * (so dpkg checks the dependencies for real, against these versions), and a minimal /etc.
 */
async function makeRoot(dir: string, debs: string[]): Promise<void> {
  await chmod(dir, 0o755);
  await mkdir(path.join(dir, 'var/lib/dpkg/info'), { recursive: true });
  await mkdir(path.join(dir, 'var/lib/dpkg/updates'), { recursive: true });
  await mkdir(path.join(dir, 'etc/default'), { recursive: true });
  const names = new Set<string>();
  for (const d of debs) {
    const dep = (await run('dpkg-deb', ['-f', d, 'Depends'])).stdout;
    for (const alt of dep.split(','))
      names.add(
        alt
          .split('|')[0]!
          .replace(/\(.*\)/, '')
          .trim(),
      );
  }
  let statusText = '';
  for (const n of names) {
    const s = (await run('dpkg-query', ['-s', n])).stdout;
    statusText += `${s.trimEnd()}\n\n`;
    const same = /^Multi-Arch: same$/m.test(s) ? `:${/^Architecture: (\S+)$/m.exec(s)![1]}` : '';
    await writeFile(path.join(dir, 'var/lib/dpkg/info', `${n}${same}.list`), '');
  }
  await writeFile(path.join(dir, 'var/lib/dpkg/status'), statusText);
  await writeFile(path.join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/bash\n');
  await writeFile(path.join(dir, 'etc/group'), 'root:x:0:\ntss:x:109:\n');
  await writeFile(path.join(dir, 'etc/shadow'), 'root:*:19000:0:99999:7:::\n', { mode: 0o600 });
  await writeFile(path.join(dir, 'etc/gshadow'), 'root:*::\ntss:!::\n', { mode: 0o600 });
}

/** The server unit's ExecStart in ROOT (scripts/unit-run); resolves once it serves, with its URL. */
async function startServerUnit(
  root: string,
  t: { after(fn: () => Promise<void>): void },
): Promise<{ url: string; fingerprint: string; stop: () => Promise<void>; log: () => string }> {
  const port = await freePort();
  // the unit's EnvironmentFile: only the listen address differs from a real host
  await writeFile(path.join(root, 'etc/default/edgeid-server'), `EDGEID_LISTEN=127.0.0.1:${port}\n`);
  const child = spawn(path.join(REPO, 'scripts/unit-run'), ['--root', root, '/lib/systemd/system/edgeid-server.service'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stdout.on('data', (c: Buffer) => (log += c.toString()));
  child.stderr.on('data', (c: Buffer) => (log += c.toString()));
  const stop = () => stopChild(child, 20_000);
  t.after(stop);
  const line = await waitFor(
    'the packaged server listening',
    () => {
      assert.equal(child.exitCode, null, `the unit exited: ${log}`);
      return log.split('\n').find((l) => l.includes('"edgeid-server listening"'));
    },
    90_000,
  );
  const info = JSON.parse(line) as { url: string; caFingerprint: string; dataDir: string };
  assert.equal(info.dataDir, '/var/lib/edgeid-server', 'the data dir from the conffile');
  return { url: info.url, fingerprint: info.caFingerprint, stop, log: () => log };
}

/** The installed edgeid-admin bundle, on the installed server's data dir (as root on its host). */
async function admin(root: string, args: string[]): Promise<string> {
  const r = await run(
    process.execPath,
    [path.join(root, 'usr/lib/edgeid-server/edgeid-admin.js'), '--data', path.join(root, 'var/lib/edgeid-server'), ...args],
    { cwd: root },
  );
  return r.stdout;
}

test('the Debian packages install, run, upgrade, remove and purge (dpkg --root)', { timeout: 900_000 }, async (t) => {
  assert.equal(
    process.getuid?.(),
    0,
    'this test installs packages with dpkg --root, chowns to their users and runs the unit in a mount namespace: run it as root (scripts/test does, on the CI machine)',
  );
  const work = await mkdtemp('/var/tmp/edgeid-pkg-'); // not under /tmp: the unit gets a private /tmp
  t.after(() => rm(work, { recursive: true, force: true }));
  const v1 = path.join(work, 'v1');
  const v2 = path.join(work, 'v2');
  const root = path.join(work, 'root');
  await mkdir(root);

  // version n and n+1, from the same bundles; lintian on n while n+1 builds
  await run(path.join(REPO, 'scripts/package'), ['--out', v1], { cwd: REPO });
  const debs1 = [deb(v1, 'edgeid-agent', version), deb(v1, 'edgeid-server', version)];
  const lintian = run('lintian', ['--fail-on', 'error,warning,info', '--display-info', ...debs1]).then(
    (r) => r.stdout + r.stderr,
    (e: { stdout: string; stderr: string }) => `FAILED\n${e.stdout}${e.stderr}`,
  );
  const build2 = run(path.join(REPO, 'scripts/package'), ['--out', v2, '--version', next], { cwd: REPO });

  await makeRoot(root, debs1);
  await dpkg(root, '-i', ...debs1);
  assert.equal(await status(root, 'edgeid-agent'), `ii ${version}`);
  assert.equal(await status(root, 'edgeid-server'), `ii ${version}`);

  // users and dirs the maintainer scripts made
  const agentUser = await passwd(root, 'edgeid');
  const serverUser = await passwd(root, 'edgeid-server');
  assert.ok(agentUser && serverUser, 'system users edgeid and edgeid-server');
  assert.ok(Number(agentUser[2]) < 1000 && Number(serverUser[2]) < 1000, 'system uids');
  assert.equal(agentUser[6], '/usr/sbin/nologin');
  assert.ok((await groupLine(root, 'tss'))![3]!.split(',').includes('edgeid'), 'edgeid is in group tss');
  for (const [dir, user] of [
    ['var/lib/edgeid', agentUser],
    ['var/lib/edgeid-server', serverUser],
  ] as const) {
    const st = await stat(path.join(root, dir));
    assert.equal(st.mode & 0o777, 0o700, `${dir} 0700`);
    assert.equal(st.uid, Number(user[2]), `${dir} owned by ${user[0]}`);
  }
  for (const f of [
    'usr/bin/edgeid-agent',
    'usr/bin/edgeid-server',
    'usr/bin/edgeid-admin',
    'usr/lib/edgeid-agent/edgeid_tpm.node',
    'usr/lib/edgeid-server/better_sqlite3.node',
    'usr/lib/edgeid-server/pkcs11.node',
  ]) {
    assert.ok(existsSync(path.join(root, f)), f);
  }
  const conffiles = (await readFile(path.join(root, 'var/lib/dpkg/status'), 'utf8')).match(/^ \/etc\/edgeid\/\S+ [0-9a-f]{32}$/gm) ?? [];
  assert.deepEqual(conffiles.map((l) => l.trim().split(' ')[0]).sort(), ['/etc/edgeid/agent.json', '/etc/edgeid/server.json']);
  // the server is enabled on install; the agent is not (it needs an enrollment first)
  assert.ok(await isLink(path.join(root, 'etc/systemd/system/multi-user.target.wants/edgeid-server.service')), 'server enabled');
  assert.equal(
    await isLink(path.join(root, 'etc/systemd/system/multi-user.target.wants/edgeid-agent.service')),
    false,
    'agent not enabled',
  );

  // the installed programs run from /usr/lib with no node_modules anywhere above them
  const agentHelp = await run(process.execPath, [path.join(root, 'usr/lib/edgeid-agent/edgeid-agent.js'), '--help'], { cwd: root });
  assert.match(agentHelp.stdout, /usage: edgeid-agent/);
  // the bundled npm packages and their licenses, which the copyright files point to (edgeid-admin's too)
  assert.match(await readFile(path.join(root, 'usr/share/doc/edgeid-agent/dependencies.txt'), 'utf8'), /^mqtt \S+ MIT$/m);
  const serverDeps = await readFile(path.join(root, 'usr/share/doc/edgeid-server/dependencies.txt'), 'utf8');
  assert.match(serverDeps, /^fastify \S+ MIT$/m, 'the server bundle');
  assert.match(serverDeps, /^qrcode \S+ MIT$/m, "edgeid-admin's bundle");
  // root enrolling would leave files the service's user cannot read: the wrapper refuses, says how
  const asRoot = await run('sh', [path.join(root, 'usr/bin/edgeid-agent'), 'enroll', '--uri', 'edgeid://enroll?x']).then(
    () => ({ code: 0, stderr: '' }),
    (e: { code: number; stderr: string }) => e,
  );
  assert.equal(asRoot.code, 2, 'edgeid-agent enroll as root refused');
  assert.match(asRoot.stderr, /runuser -u edgeid -- edgeid-agent enroll/);

  // the server's unit as systemd would run it: first start creates the CA and database as its user
  let srv = await startServerUnit(root, t);
  const dbFile = path.join(root, 'var/lib/edgeid-server/edgeid.db');
  assert.equal((await stat(dbFile)).uid, Number(serverUser[2]), 'the database belongs to edgeid-server');
  assert.equal((await stat(dbFile)).mode & 0o077, 0, 'UMask=0077: nothing for group or others');
  const created = JSON.parse(
    await admin(root, ['token', 'create', '--zone', 'default', '--owner', 'pkg-test', '--name', 'gw-1', '--json']),
  ) as { uri: string };
  assert.match(created.uri, /^edgeid:\/\/enroll\?/);

  // the agent as its unit's user, in its sandbox: enroll (the unit's environment, another command),
  // then the unit's exact ExecStart until it runs; the TPM is an swtpm named by the unit's
  // EnvironmentFile (in place of /dev/tpmrm0, which this machine does not have)
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  await extendBootPcrs(tpm.tcti);
  // EK certificates are required by default: the operator trusts this test TPM's maker (swtpm's local CA,
  // which exists once a TPM was manufactured)
  for (const ca of [SWTPM_LOCALCA_ROOT, SWTPM_LOCALCA_ISSUER]) await admin(root, ['ek-roots', 'add', ca]);
  await writeFile(path.join(root, 'etc/default/edgeid-agent'), `EDGEID_TCTI=${tpm.tcti}\n`);
  const unitRun = path.join(REPO, 'scripts/unit-run');
  const agentUnit = '/lib/systemd/system/edgeid-agent.service';
  const enrolled = await run(unitRun, [
    '--root',
    root,
    agentUnit,
    '--',
    '/usr/bin/node',
    '/usr/lib/edgeid-agent/edgeid-agent.js',
    'enroll',
    '--uri',
    created.uri,
    '--json',
  ]).catch((e: { stdout: string; stderr: string }) => assert.fail(`enroll as user edgeid failed: ${e.stderr}${e.stdout}`));
  const device = JSON.parse(enrolled.stdout) as { deviceId: string; stateDir: string };
  assert.equal(device.stateDir, '/var/lib/edgeid', 'the state dir from the conffile');
  const certFile = path.join(root, 'var/lib/edgeid/cert.pem');
  assert.equal((await stat(certFile)).uid, Number(agentUser[2]), 'the identity belongs to edgeid');
  assert.equal((await stat(certFile)).mode & 0o777, 0o600);
  const agent = spawn(unitRun, ['--root', root, agentUnit], { stdio: ['ignore', 'pipe', 'pipe'] });
  let agentLog = '';
  agent.stdout.on('data', (c: Buffer) => (agentLog += c.toString()));
  agent.stderr.on('data', (c: Buffer) => (agentLog += c.toString()));
  t.after(() => stopChild(agent));
  await waitFor(
    'the packaged agent running',
    () => {
      assert.equal(agent.exitCode, null, `the agent unit exited: ${agentLog}`);
      return agentLog.includes('"msg":"agent running"') && agentLog.includes(device.deviceId);
    },
    90_000,
  );
  await stopChild(agent, 20_000);
  assert.equal(agent.exitCode, 0, `SIGTERM: a clean stop\n${agentLog}`);
  await srv.stop();
  const caBefore = await sha(path.join(root, 'var/lib/edgeid-server/ca/root.pem'));
  const certBefore = await sha(certFile);

  // an operator's edit of a conffile must survive the upgrade, like the state
  const agentConf = path.join(root, 'etc/edgeid/agent.json');
  const edited = '{ "stateDir": "/var/lib/edgeid", "tcti": "device:/dev/tpmrm0", "logLevel": "debug" }\n';
  await writeFile(agentConf, edited);

  await build2;
  const debs2 = [deb(v2, 'edgeid-agent', next), deb(v2, 'edgeid-server', next)];
  const upgradeOut = await dpkg(root, '--force-confold', '-i', ...debs2);
  assert.equal(await status(root, 'edgeid-agent'), `ii ${next}`);
  assert.equal(await status(root, 'edgeid-server'), `ii ${next}`);
  assert.equal(await readFile(agentConf, 'utf8'), edited, `edited conffile kept (${upgradeOut})`);
  assert.equal(await sha(certFile), certBefore, "the device's certificate is kept");
  assert.ok(existsSync(path.join(root, 'var/lib/edgeid/state.json')));
  assert.deepEqual(await passwd(root, 'edgeid-server'), serverUser, 'the same user, the same uid');
  assert.equal(await sha(path.join(root, 'var/lib/edgeid-server/ca/root.pem')), caBefore, 'the CA is kept');
  // n+1 serves the same data: the same CA, the token made under n still listed
  srv = await startServerUnit(root, t);
  const tokens = JSON.parse(await admin(root, ['tokens', 'list', '--json'])) as { tokens?: { owner: string }[] } | { owner: string }[];
  const list = Array.isArray(tokens) ? tokens : (tokens.tokens ?? []);
  assert.ok(
    list.some((x) => x.owner === 'pkg-test'),
    `the token from version n is there: ${JSON.stringify(tokens)}`,
  );
  await srv.stop();

  // remove: programs gone, conffiles and data stay
  await dpkg(root, '-r', 'edgeid-agent', 'edgeid-server');
  assert.equal(await status(root, 'edgeid-agent'), `rc ${next}`);
  assert.equal(existsSync(path.join(root, 'usr/bin/edgeid-server')), false);
  assert.equal(existsSync(path.join(root, 'usr/lib/edgeid-agent/edgeid-agent.js')), false);
  assert.equal(await readFile(agentConf, 'utf8'), edited);
  assert.equal(await sha(certFile), certBefore);

  // purge: conffiles and the agent's identity go; the server's CA and database stay (postrm says why)
  const purgeOut = await dpkg(root, '-P', 'edgeid-agent', 'edgeid-server');
  assert.equal(await status(root, 'edgeid-agent'), 'absent');
  assert.equal(await status(root, 'edgeid-server'), 'absent');
  assert.equal(existsSync(agentConf), false);
  assert.equal(existsSync(path.join(root, 'etc/edgeid/server.json')), false);
  assert.equal(existsSync(path.join(root, 'var/lib/edgeid')), false, 'agent state purged');
  assert.equal(await sha(path.join(root, 'var/lib/edgeid-server/ca/root.pem')), caBefore, 'server data kept on purge');
  assert.match(purgeOut, /kept \/var\/lib\/edgeid-server/);
  assert.equal(await isLink(path.join(root, 'etc/systemd/system/multi-user.target.wants/edgeid-server.service')), false, 'unit disabled');

  const lint = await lintian;
  assert.doesNotMatch(lint, /^FAILED/, `lintian:\n${lint}`);
  assert.doesNotMatch(lint, /^[EWI]: /m, `lintian:\n${lint}`);
});
