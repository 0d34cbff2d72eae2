/**
 * Our MakeCredential against real TPM behaviour: the credential our TS code makes for an EK read
 * from a swtpm is fed to tpm2_activatecredential (tpm2-tools over tpm2-tss, the TPM decrypts), which
 * must return the secret — for the RSA-2048 and ECC P-384 EKs swtpm_setup creates and for the
 * ECC P-256 EK (TCG template L-2) tpm2_createek makes. The TPM must refuse a credential bound to
 * another name or with a flipped bit.
 *
 * EK authorization, found out here: the RSA (L-1) and P-256 (L-2) EKs have userWithAuth clear
 * and need a policy session with PolicySecret(TPM_RH_ENDORSEMENT). swtpm's P-384 EK (high-range
 * template, nameAlg SHA-384) has userWithAuth SET, so an empty password works; its authPolicy is
 * PolicyB_SHA384 = PolicyOR(PolicySecret_SHA384(endorsement), PolicyAuthorizeNV_SHA384), so a
 * policy session needs PolicySecret followed by PolicyOR over both branch digests — PolicySecret
 * alone fails with TPM_RC_POLICY_FAIL.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { TPM_ALG, TPM_ECC_CURVE, TPMA_OBJECT } from '../../protocol/tpm/constants.js';
import {
  makeCredential,
  parseTpm2ToolsCredentialFile,
  toTpm2ToolsCredentialFile,
  type TpmCredential,
} from '../../protocol/tpm/makecredential.js';
import { objectName, parsePublic, type TpmPublic } from '../../protocol/tpm/public.js';
import { startSwtpm, type Swtpm } from '../../scripts/harness/swtpm.js';

const run = promisify(execFile);

const RSA_EK = '0x81010001';
const ECC_P384_EK = '0x81010016';
/** TCG EK Credential Profile: PolicyA_SHA384 (PolicySecret(endorsement)) and PolicyC_SHA384 (PolicyAuthorizeNV 0x01c07f02). */
const POLICY_A_SHA384 = '8bbf2266537c171cb56e403c4dc1d4b64f432611dc386e6f532050c3278c930e143e8bb1133824ccb431053871c6db53';
const POLICY_C_SHA384 = 'd6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5b4947c2d73e63005eed2dc2b3593d165';

type EkAuth = 'password' | 'policy-secret' | 'policy-secret-or-sha384';

interface Bench {
  tpm: Swtpm;
  dir: string;
  tools(args: string[]): Promise<{ stdout: string; stderr: string }>;
  file(name: string): string;
}

async function bench(t: TestContext): Promise<Bench> {
  const tpm = await startSwtpm();
  t.after(() => tpm.stop());
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-mkcred-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = (name: string): string => path.join(dir, name);
  const tools = (args: string[]) => {
    const [cmd, ...rest] = args;
    return run(cmd ?? '', rest, { cwd: dir, timeout: 30_000, env: { ...process.env, TPM2TOOLS_TCTI: tpm.tcti } });
  };
  return { tpm, dir, tools, file };
}

/** Creates an ECDSA P-256 AK under the RSA EK; returns its public area and the TPM-computed name. */
async function createAk(b: Bench): Promise<{ akPublic: TpmPublic; tpmName: Buffer }> {
  await b.tools([
    'tpm2_createak',
    '-C',
    RSA_EK,
    '-c',
    'ak.ctx',
    '-G',
    'ecc',
    '-g',
    'sha256',
    '-s',
    'ecdsa',
    '-u',
    'ak.pub',
    '-n',
    'ak.name',
    '-f',
    'tss',
  ]);
  await b.tools(['tpm2_flushcontext', '-t']); // no resource manager: tools leave objects loaded
  return { akPublic: parsePublic(await readFile(b.file('ak.pub'))), tpmName: await readFile(b.file('ak.name')) };
}

async function readEk(b: Bench, handleOrCtx: string, out: string): Promise<TpmPublic> {
  await b.tools(['tpm2_readpublic', '-c', handleOrCtx, '-o', out]);
  await b.tools(['tpm2_flushcontext', '-t']);
  return parsePublic(await readFile(b.file(out)));
}

/** Runs tpm2_activatecredential on a credential file; returns the secret or the tool's error text. */
async function activate(
  b: Bench,
  ek: string,
  credFile: string,
  auth: EkAuth,
): Promise<{ ok: true; secret: Buffer } | { ok: false; error: string }> {
  const out = `${credFile}.out`;
  const args = ['tpm2_activatecredential', '-c', 'ak.ctx', '-C', ek, '-i', credFile, '-o', out];
  let session = false;
  try {
    if (auth !== 'password') {
      const sha384 = auth === 'policy-secret-or-sha384';
      await b.tools(['tpm2_startauthsession', '--policy-session', '-g', sha384 ? 'sha384' : 'sha256', '-S', 'session.ctx']);
      session = true;
      await b.tools(['tpm2_policysecret', '-S', 'session.ctx', '-c', 'e']);
      if (sha384) {
        await writeFile(b.file('policyA'), Buffer.from(POLICY_A_SHA384, 'hex'));
        await writeFile(b.file('policyC'), Buffer.from(POLICY_C_SHA384, 'hex'));
        await b.tools(['tpm2_policyor', '-S', 'session.ctx', '-l', 'sha384:policyA,policyC']);
      }
      args.push('-P', 'session:session.ctx');
    }
    await b.tools(args);
    return { ok: true, secret: await readFile(b.file(out)) };
  } catch (err) {
    return { ok: false, error: String((err as { stderr?: string }).stderr ?? err) };
  } finally {
    if (session) await b.tools(['tpm2_flushcontext', 'session.ctx']).catch(() => {});
    await b.tools(['tpm2_flushcontext', '-t']);
  }
}

async function writeCredential(b: Bench, name: string, c: TpmCredential): Promise<string> {
  await writeFile(b.file(name), toTpm2ToolsCredentialFile(c));
  return name;
}

test('the RSA-2048 EK of swtpm activates our credential and returns the secret (PolicySecret session)', async (t) => {
  const b = await bench(t);
  const { akPublic, tpmName } = await createAk(b);
  const akName = objectName(akPublic);
  assert.deepEqual(akName, tpmName, 'our AK name equals the name the TPM computed');
  const ek = await readEk(b, RSA_EK, 'ek-rsa.pub');
  assert.equal(ek.type, TPM_ALG.RSA);
  assert.equal(ek.rsa?.keyBits, 2048);
  assert.equal(ek.objectAttributes & TPMA_OBJECT.userWithAuth, 0, 'L-1 EK: policy only');

  for (const secret of [Buffer.from('edgeid-rsa-secret'), Buffer.alloc(32, 0xee) /* full SHA-256 digest size */]) {
    const cred = await writeCredential(b, 'rsa.cred', makeCredential(ek, akName, secret));
    const r = await activate(b, RSA_EK, cred, 'policy-secret');
    assert.ok(r.ok, r.ok ? '' : r.error);
    assert.deepEqual(r.secret, secret);
  }
});

test('the ECC P-384 EK of swtpm (SHA-384, AES-256) activates our credential, by password and by PolicySecret+PolicyOR', async (t) => {
  const b = await bench(t);
  const { akPublic } = await createAk(b);
  const ek = await readEk(b, ECC_P384_EK, 'ek-p384.pub');
  assert.equal(ek.ecc?.curve, TPM_ECC_CURVE.NIST_P384);
  assert.equal(ek.nameAlg, TPM_ALG.SHA384);
  assert.equal(ek.symmetric.keyBits, 256);
  assert.notEqual(ek.objectAttributes & TPMA_OBJECT.userWithAuth, 0, 'high-range EK: userWithAuth set');

  const secret = Buffer.alloc(48, 0x38); // full SHA-384 digest size
  const cred = await writeCredential(b, 'p384.cred', makeCredential(ek, objectName(akPublic), secret));
  const byPassword = await activate(b, ECC_P384_EK, cred, 'password');
  assert.ok(byPassword.ok, byPassword.ok ? '' : byPassword.error);
  assert.deepEqual(byPassword.secret, secret);

  const byPolicy = await activate(b, ECC_P384_EK, cred, 'policy-secret-or-sha384');
  assert.ok(byPolicy.ok, byPolicy.ok ? '' : byPolicy.error);
  assert.deepEqual(byPolicy.secret, secret);

  // PolicySecret alone does not satisfy this EK's PolicyB: the TPM says so.
  const sha256Policy = await activate(b, ECC_P384_EK, cred, 'policy-secret');
  assert.equal(sha256Policy.ok, false);
});

test('an ECC P-256 EK from the TCG L-2 template (tpm2_createek -G ecc) activates our credential', async (t) => {
  const b = await bench(t);
  const { akPublic } = await createAk(b);
  await b.tools(['tpm2_createek', '-c', 'ek-p256.ctx', '-G', 'ecc', '-u', 'ek-p256.pub']);
  await b.tools(['tpm2_flushcontext', '-t']);
  const ek = parsePublic(await readFile(b.file('ek-p256.pub')));
  assert.equal(ek.ecc?.curve, TPM_ECC_CURVE.NIST_P256);
  assert.equal(ek.nameAlg, TPM_ALG.SHA256);
  assert.equal(ek.symmetric.keyBits, 128);

  const secret = Buffer.from('edgeid-p256-secret');
  const cred = await writeCredential(b, 'p256.cred', makeCredential(ek, objectName(akPublic), secret));
  const r = await activate(b, 'ek-p256.ctx', cred, 'policy-secret');
  assert.ok(r.ok, r.ok ? '' : r.error);
  assert.deepEqual(r.secret, secret);
});

test('the TPM refuses our credential when it was made for another name or a bit of it is flipped', async (t) => {
  const b = await bench(t);
  const { akPublic } = await createAk(b);
  const akName = objectName(akPublic);
  const ekRsa = await readEk(b, RSA_EK, 'ek-rsa.pub');
  const ekP384 = await readEk(b, ECC_P384_EK, 'ek-p384.pub');
  const secret = Buffer.from('must not come out');

  // Bound to another key's name (the EK's own): the integrity HMAC covers the name.
  const otherName = await writeCredential(b, 'other-name.cred', makeCredential(ekRsa, objectName(ekRsa), secret));
  const r1 = await activate(b, RSA_EK, otherName, 'policy-secret');
  assert.equal(r1.ok, false);
  assert.match(r1.ok ? '' : r1.error, /integrity check failed/);

  // One flipped bit in encIdentity.
  const good = makeCredential(ekP384, akName, secret);
  const blob = Buffer.from(good.credentialBlob);
  blob[blob.length - 1] = (blob[blob.length - 1] ?? 0) ^ 0x01;
  const flipped = await writeCredential(b, 'flipped.cred', { ...good, credentialBlob: blob });
  const r2 = await activate(b, ECC_P384_EK, flipped, 'password');
  assert.equal(r2.ok, false);
  assert.match(r2.ok ? '' : r2.error, /integrity check failed/);

  // Encrypted to the other EK: the seed does not decrypt.
  const wrongEk = await writeCredential(b, 'wrong-ek.cred', makeCredential(ekP384, akName, secret));
  const r3 = await activate(b, RSA_EK, wrongEk, 'policy-secret');
  assert.equal(r3.ok, false);

  // The untampered one still works (the failures above are not harness errors).
  const ok = await activate(b, ECC_P384_EK, await writeCredential(b, 'good.cred', good), 'password');
  assert.ok(ok.ok, ok.ok ? '' : ok.error);
  assert.deepEqual(ok.secret, secret);
});

test('our credential has the same layout as tpm2_makecredential --tcti none for the RSA and P-384 EKs', async (t) => {
  const b = await bench(t);
  const { akPublic, tpmName } = await createAk(b);
  const secret = Buffer.from('layout-compare-secret');
  await writeFile(b.file('secret.bin'), secret);
  for (const [handle, pubFile] of [
    [RSA_EK, 'ek-rsa.pub'],
    [ECC_P384_EK, 'ek-p384.pub'],
  ] as const) {
    const ek = await readEk(b, handle, pubFile);
    await b.tools([
      'tpm2_makecredential',
      '-T',
      'none',
      '-u',
      pubFile,
      '-s',
      'secret.bin',
      '-n',
      tpmName.toString('hex'),
      '-o',
      'tools.cred',
    ]);
    const toolsFile = await readFile(b.file('tools.cred'));
    const theirs = parseTpm2ToolsCredentialFile(toolsFile);
    const ours = makeCredential(ek, objectName(akPublic), secret);
    const ourFile = toTpm2ToolsCredentialFile(ours);
    assert.equal(ourFile.length, toolsFile.length, handle);
    assert.deepEqual(ourFile.subarray(0, 8), toolsFile.subarray(0, 8), `${handle}: header`);
    assert.equal(ours.credentialBlob.length, theirs.credentialBlob.length, `${handle}: TPM2B_ID_OBJECT`);
    assert.equal(ours.credentialBlob.readUInt16BE(2), theirs.credentialBlob.readUInt16BE(2), `${handle}: HMAC size`);
    assert.equal(ours.encryptedSecret.length, theirs.encryptedSecret.length, `${handle}: TPM2B_ENCRYPTED_SECRET`);
    if (ek.type === TPM_ALG.ECC) {
      // TPMS_ECC_POINT: both x and y curve-size
      assert.equal(ours.encryptedSecret.readUInt16BE(2), theirs.encryptedSecret.readUInt16BE(2), `${handle}: point x size`);
    }
    // and the tools' file goes through the same activation path as ours
    const r = await activate(b, handle, 'tools.cred', handle === RSA_EK ? 'policy-secret' : 'password');
    assert.ok(r.ok, r.ok ? '' : r.error);
    assert.deepEqual(r.secret, secret);
  }
});
