/**
 * edgeid-admin with personal accounts, against a real server process: `users add` prints the
 * token once (--json: name, role, zones, token, expiresAt); the token is taken from --token,
 * EDGEID_TOKEN or a credentials file, which is refused when group or others can read it; the
 * data dir's admin-token still works (the bootstrap admin); rotate-token and disable take effect at
 * once; `audit export --user` keeps one person's rows; `users set-role` changes role and zones and
 * keeps the last admin; bad options are usage errors (exit 2) that never reach the server.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startServerProcess } from '../../scripts/harness/server.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { recordSecret } from '../../scripts/harness/secrets.js';
import { cleanEnv, runCli } from '../helpers/cli.js';

test('edgeid-admin users and personal tokens', { timeout: 600_000 }, async (t) => {
  const dataDir = await tmpDir('edgeid-accounts-cli-');
  const home = await tmpDir('edgeid-accounts-home-');
  const srv = await startServerProcess({ dataDir });
  t.after(() => srv.close());
  // no credentials file of the host's user: XDG_CONFIG_HOME is the test's own
  const env = (extra: NodeJS.ProcessEnv = {}) => cleanEnv({ XDG_CONFIG_HOME: home, ...extra });
  const admin = async (args: string[], extra: NodeJS.ProcessEnv = {}) => {
    const r = await runCli('edgeid-admin', [...args, '--data', dataDir], { env: env(extra) });
    return { ...r, out: r.stdout.toString('utf8') };
  };

  // the bootstrap admin (data/admin-token) adds a person
  const added = await admin(['users', 'add', 'alice', '--role', 'operator', '--zones', 'default', '--expires', '90d', '--json']);
  assert.equal(added.code, 0, added.stderr);
  const alice = JSON.parse(added.out) as { name: string; role: string; zones: string[]; token: string; expiresAt: string };
  recordSecret(alice.token, 'alice token');
  assert.deepEqual(Object.keys(alice).sort(), ['expiresAt', 'name', 'role', 'token', 'zones']);
  assert.deepEqual([alice.name, alice.role, alice.zones], ['alice', 'operator', ['default']]);
  const days = (Date.parse(alice.expiresAt) - Date.now()) / 86_400_000;
  assert.ok(days > 89.9 && days <= 90, `expires in ${days} days`);
  assert.ok(!added.stderr.includes(alice.token), 'the token is not repeated on stderr');

  await t.test('the personal token from --token, EDGEID_TOKEN, or a 0600 credentials file', async () => {
    const viaFlag = await admin(['devices', 'list', '--json', '--token', alice.token]);
    assert.equal(viaFlag.code, 0, viaFlag.stderr);
    // an operator is not an admin: users list is refused, by role
    const notAdmin = await admin(['users', 'list'], { EDGEID_TOKEN: alice.token });
    assert.equal(notAdmin.code, 1);
    assert.match(notAdmin.stderr, /forbidden_role/);

    const creds = path.join(home, 'edgeid', 'credentials');
    await mkdir(path.dirname(creds), { recursive: true });
    await writeFile(creds, `${alice.token}\n`, { mode: 0o644 });
    await chmod(creds, 0o644);
    const open = await admin(['devices', 'list']);
    assert.equal(open.code, 1);
    assert.match(open.stderr, /credentials_file_insecure: .*mode 0644/);
    await chmod(creds, 0o600);
    // the default file is used, before data/admin-token: the server sees alice (an operator, so users list is refused)
    const viaFile = await admin(['users', 'list']);
    assert.equal(viaFile.code, 1);
    assert.match(viaFile.stderr, /forbidden_role: .*user alice is operator/);
    // --token wins over the credentials file (which is then not read: an open one does not matter)
    await chmod(creds, 0o644);
  });

  await t.test('users list, rotate-token, disable; audit export --user', async () => {
    const list = await admin(['users', 'list', '--json', '--credentials', '/nonexistent', '--admin-token', srv.adminToken]);
    assert.equal(list.code, 0, list.stderr);
    const users = JSON.parse(list.out) as { name: string; role: string; zones: string[] | null; bootstrap: boolean }[];
    assert.deepEqual(
      users.map((u) => [u.name, u.role, u.zones, u.bootstrap]),
      [
        ['admin', 'admin', null, true],
        ['alice', 'operator', ['default'], false],
      ],
    );

    const rotated = await admin(['users', 'rotate-token', 'alice', '--json', '--token', srv.adminToken]);
    assert.equal(rotated.code, 0, rotated.stderr);
    const next = JSON.parse(rotated.out) as { token: string };
    recordSecret(next.token, 'alice token (rotated)');
    assert.notEqual(next.token, alice.token);
    const old = await admin(['devices', 'list', '--token', alice.token]);
    assert.equal(old.code, 1);
    assert.match(old.stderr, /admin_unauthorized/);
    assert.equal((await admin(['devices', 'list', '--token', next.token])).code, 0);

    const disabled = await admin(['users', 'disable', 'alice', '--token', srv.adminToken]);
    assert.equal(disabled.code, 0, disabled.stderr);
    const refused = await admin(['devices', 'list', '--token', next.token]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /user_disabled/);

    const exported = await admin(['audit', 'export', '--user', 'alice', '--token', srv.adminToken]);
    assert.equal(exported.code, 0, exported.stderr);
    const rows = exported.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { actor: string; ip: string; details: { role?: string } });
    assert.ok(rows.length >= 4, `${rows.length} rows of alice`);
    assert.ok(
      rows.every((r) => r.actor === 'user:alice' && r.details.role === 'operator' && r.ip === '127.0.0.1'),
      'every exported row is alice, operator, from loopback',
    );

    const badRole = await admin(['users', 'add', 'bob', '--role', 'root']);
    assert.equal(badRole.code, 2);
    assert.match(badRole.stderr, /--role must be one of viewer, technician, operator, admin/);
  });

  await t.test('users set-role: role and zones at once; the last admin stays; bad options are usage errors', async () => {
    const as = ['--token', srv.adminToken];
    const bob = await admin(['users', 'add', 'bob', '--role', 'technician', '--zones', 'default', '--json', ...as]);
    assert.equal(bob.code, 0, bob.stderr);
    recordSecret((JSON.parse(bob.out) as { token: string }).token, 'bob token');
    const up = await admin(['users', 'set-role', 'bob', '--role', 'operator', ...as]);
    assert.equal(up.code, 0, up.stderr);
    assert.equal(up.out, 'user bob is operator in default\n');
    const every = await admin(['users', 'set-role', 'bob', '--role', 'viewer', '--all-zones', '--json', ...as]);
    assert.equal(every.code, 0, every.stderr);
    const view = JSON.parse(every.out) as { name: string; role: string; zones: string[] | null };
    assert.deepEqual([view.name, view.role, view.zones], ['bob', 'viewer', null]);
    const last = await admin(['users', 'set-role', 'admin', '--role', 'operator', ...as]);
    assert.equal(last.code, 1);
    assert.match(last.stderr, /user_last_admin: admin is the last enabled admin/);
    for (const [args, message] of [
      [['users', 'set-role', 'bob', '--role', 'viewer', '--zones', 'default', '--all-zones'], /--zones and --all-zones exclude each other/],
      [['users', 'set-role', 'bob'], /--role/],
      [['users', 'set-role', 'Bob', '--role', 'viewer'], /"Bob" is not a user name/],
      [['users', 'add', 'carl', '--role', 'viewer', '--expires', '99999d'], /--expires 99999d .*at most 3660d/],
      [['users', 'add', 'carl', '--role', 'viewer', '--zones', ' , '], /--zones needs at least one zone name/],
    ] as const) {
      const r = await admin([...args, ...as]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
    }
    const users = JSON.parse((await admin(['users', 'list', '--json', ...as])).out) as { name: string }[];
    assert.ok(!users.some((u) => u.name === 'carl'), 'a usage error makes no account');
  });

  await t.test('tokens expire ID', async () => {
    const made = await admin(['token', 'create', '--zone', 'default', '--owner', 'ops', '--json', '--admin-token', srv.adminToken]);
    assert.equal(made.code, 0, made.stderr);
    const { id } = JSON.parse(made.out) as { id: string };
    const expired = await admin(['tokens', 'expire', id, '--json', '--admin-token', srv.adminToken]);
    assert.equal(expired.code, 0, expired.stderr);
    assert.ok(Date.parse((JSON.parse(expired.out) as { expiresAt: string }).expiresAt) <= Date.now());
    const again = await admin(['tokens', 'expire', id, '--admin-token', srv.adminToken]);
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /token_not_expirable/);
    const bad = await admin(['tokens', 'expire', 'nope', '--admin-token', srv.adminToken]);
    assert.equal(bad.code, 2);
  });
});
