/**
 * Zero-touch enrollment end to end: an operator imports a supplier manifest with edgeid-admin,
 * the agent enrolls with only the server URL and CA fingerprint (no token), exactly once; a TPM
 * not on the manifest is refused with ek_not_allowed. Real server process, real swtpm, real CLIs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Tpm } from '../../agent/tpm/index.js';
import { extendBootPcrs, startSwtpm } from '../../scripts/harness/swtpm.js';
import { tmpDir } from '../../scripts/harness/fs.js';
import { adminCli, startServerProcess } from '../../scripts/harness/server.js';
import { agentCli } from '../helpers/agent.js';

test(
  'a TPM on an imported supplier manifest enrolls without a token, once; an unlisted TPM is refused',
  { timeout: 300_000 },
  async (t) => {
    const [listed, unlisted] = await Promise.all([startSwtpm(), startSwtpm()]);
    t.after(async () => {
      await listed.stop();
      await unlisted.stop();
    });
    for (const s of [listed, unlisted]) await extendBootPcrs(s.tcti);
    const srv = await startServerProcess({ config: { zones: { default: {}, 'line-3': {} } } });
    t.after(() => srv.close());
    const dir = await tmpDir('edgeid-zt-', t);

    // the supplier's manifest: the EK certificate the agent's TPM holds (PEM in a quoted CSV field)
    const tpm = await Tpm.open(listed.tcti);
    const ek = await tpm.endorsementKey();
    await tpm.close();
    const manifest = path.join(dir, 'pallet-17.csv');
    await writeFile(manifest, `serial,ek_cert\nGW-0001,"${new X509Certificate(ek.certificate!).toString()}"\n`);
    const imported = JSON.parse(
      await adminCli(srv.dataDir, ['ek-allow', 'import', manifest, '--zone', 'line-3', '--owner', 'plant-ops', '--json']),
    );
    assert.equal(imported.added.length, 1);
    const listedEntries = JSON.parse(await adminCli(srv.dataDir, ['ek-allow', 'list', '--json']));
    assert.deepEqual(
      listedEntries.map((e: { name: string; zone: string }) => [e.name, e.zone]),
      [['GW-0001', 'line-3']],
    );

    const stateDir = path.join(dir, 'state');
    const r = await agentCli([
      'enroll',
      '--server',
      srv.url,
      '--ca-fingerprint',
      srv.caFingerprint,
      '--state',
      stateDir,
      '--tcti',
      listed.tcti,
      '--json',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const result = JSON.parse(r.stdout) as { deviceId: string; zone: string };
    assert.equal(result.zone, 'line-3');
    const device = (await srv.admin('GET', `/v1/admin/devices/${result.deviceId}`)).body.device;
    assert.deepEqual([device.owner, device.name, device.ekVerified], ['plant-ops', 'GW-0001', true]);
    const audit = (await srv.admin('GET', '/v1/admin/audit?limit=10000')).body.rows as Array<{
      event: string;
      outcome: string;
      deviceId: string | null;
      details: Record<string, unknown> | null;
    }>;
    const finish = audit.find((a) => a.event === 'enroll.finish' && a.outcome === 'ok');
    assert.equal(finish?.details?.manifestEntry, imported.added[0].id);

    // exactly once: the same TPM (a fresh state dir) is refused
    const again = await agentCli([
      'enroll',
      '--server',
      srv.url,
      '--ca-fingerprint',
      srv.caFingerprint,
      '--state',
      path.join(dir, 'state2'),
      '--tcti',
      listed.tcti,
    ]);
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /ek_not_allowed|ek_already_enrolled|already/);

    const other = await agentCli([
      'enroll',
      '--server',
      srv.url,
      '--ca-fingerprint',
      srv.caFingerprint,
      '--state',
      path.join(dir, 'state3'),
      '--tcti',
      unlisted.tcti,
    ]);
    assert.notEqual(other.code, 0);
    assert.match(other.stderr, /ek_not_allowed/);

    // the operator sees the entry used (with its device); importing it again skips it and says how to re-arm it
    const table = await adminCli(srv.dataDir, ['ek-allow', 'list']);
    assert.match(table, new RegExp(`${imported.added[0].id}.*\\bused\\b.*${result.deviceId}`));
    const reimport = await adminCli(srv.dataDir, ['ek-allow', 'import', manifest, '--zone', 'line-3', '--owner', 'plant-ops']);
    assert.match(reimport, /imported 0 EK\(s\).*1 already listed/);
    assert.match(reimport, /ek-allow remove ID first/);
  },
);

test(
  'ek-roots remove takes the fingerprint as ek-roots list prints it; an unknown one is refused with ek_root_unknown',
  { timeout: 300_000 },
  async (t) => {
    const srv = await startServerProcess({});
    t.after(() => srv.close());
    const roots = JSON.parse(await adminCli(srv.dataDir, ['ek-roots', 'list', '--json'])) as Array<{
      fingerprint: string;
      origin: string;
      disabled: boolean;
    }>;
    const gs = roots.find((r) => r.origin === 'GS_TPM_RT.pem')!;
    const shown = gs.fingerprint.slice(0, 16);
    const table = await adminCli(srv.dataDir, ['ek-roots', 'list']);
    assert.match(table, new RegExp(`^${shown}\\s`, 'm'), 'the table shows this prefix');
    const out = await adminCli(srv.dataDir, ['ek-roots', 'remove', shown]);
    assert.match(out, new RegExp(`switched off ${gs.fingerprint}`));
    const after = JSON.parse(await adminCli(srv.dataDir, ['ek-roots', 'list', '--json'])) as typeof roots;
    assert.equal(after.find((r) => r.origin === 'GS_TPM_RT.pem')!.disabled, true);
    // switched off already, and a prefix nothing has: the code and the fix, exit status non-zero
    for (const fp of [shown, 'deadbeefdeadbeef']) {
      await assert.rejects(adminCli(srv.dataDir, ['ek-roots', 'remove', fp]), (e: { code?: number; stderr?: string }) => {
        assert.notEqual(e.code, 0);
        assert.match(String(e.stderr), /ek_root_unknown/);
        return true;
      });
    }
  },
);
