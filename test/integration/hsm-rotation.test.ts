/**
 * Found by an outside review: with the issuing key in a PKCS#11 token and the root local (README "Set-up with
 * the local root"), an issuing-CA rotation makes the new issuing key a file in data/ca: from then
 * on every device certificate is signed by a key that exists on disk and in the process's memory,
 * the very thing ca.key = "pkcs11" promises never happens. It should be made in the token (or the
 * rotation refused with a code that says how to rotate with an HSM).
 */
import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CertificateAuthority } from '../../enroll-server/ca/ca.js';
import { runCaCommand } from '../../enroll-server/ca/cli.js';
import { closeIssuerSigner, openIssuerSigner } from '../../enroll-server/ca/keys.js';
import { loadConfig } from '../../enroll-server/config.js';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { createSoftHsmToken } from '../../scripts/harness/softhsm.js';

test('an issuing-CA rotation on an HSM-backed CA never puts the new issuing key in a file', async (t) => {
  const tok = await createSoftHsmToken({ t });
  process.env.SOFTHSM2_CONF = tok.env.SOFTHSM2_CONF;
  const dataDir = path.join(tok.dir, 'data');
  const configFile = path.join(tok.dir, 'config.json');
  await writeFile(configFile, JSON.stringify({ ca: { key: 'pkcs11', pkcs11: tok.pkcs11('edgeid-issuing') } }));
  const argv = ['--config', configFile, '--data', dataDir];
  assert.equal(await runCaCommand(['init', '--pkcs11', ...argv], () => {}), 0);
  const cfg = loadConfig({ argv });
  if (cfg.ca.key !== 'pkcs11') assert.fail('config without ca.pkcs11');
  const signer = await openIssuerSigner({ kind: 'pkcs11', config: cfg.ca.pkcs11, env: process.env });
  t.after(() => closeIssuerSigner(signer));
  const caDir = path.join(dataDir, 'ca');
  const ca = await CertificateAuthority.open({ dir: caDir, hostnames: [], issuer: signer });
  // refused with its code: the new key would be a file
  await assert.rejects(ca.rotateIssuing(), (e) => isEdgeidError(e, 'ca_rotation_invalid') && /PKCS#11 token/.test(e.message));
  const keyFiles = (await readdir(caDir)).filter((f) => f.endsWith('.key')).sort();
  assert.deepEqual(keyFiles, ['control.key', 'root.key', 'server.key'], 'an issuing key file appeared in data/ca');
  assert.equal(ca.active.name, 'intermediate');
});
