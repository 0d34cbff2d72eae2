import 'reflect-metadata';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, webcrypto, type KeyObject } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { CONTROL_SIGNER_EKU, signControlCommand, verifyControlCommand } from '../../protocol/control.js';
import { assertCode } from '../helpers/assert.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
const ALG = { name: 'ECDSA', hash: 'SHA-256' } as const;

interface Issued {
  pem: string;
  key: KeyObject;
  cert: x509.X509Certificate;
  signingKey: webcrypto.CryptoKey;
}

async function keyPair(): Promise<{ key: KeyObject; signingKey: webcrypto.CryptoKey; spki: Buffer }> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const signingKey = await webcrypto.subtle.importKey(
    'pkcs8',
    privateKey.export({ type: 'pkcs8', format: 'der' }),
    { name: 'ECDSA', namedCurve: 'P-256' },
    false,
    ['sign'],
  );
  return { key: privateKey, signingKey, spki: publicKey.export({ type: 'spki', format: 'der' }) };
}

async function issue(
  subject: string,
  issuer: Issued | null,
  opts: { ca?: boolean; eku?: string[]; notAfter?: Date } = {},
): Promise<Issued> {
  const kp = await keyPair();
  const now = Date.now();
  const exts: x509.Extension[] = [new x509.BasicConstraintsExtension(!!opts.ca, undefined, true)];
  exts.push(
    new x509.KeyUsagesExtension(
      opts.ca ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign : x509.KeyUsageFlags.digitalSignature,
      true,
    ),
  );
  if (opts.eku) exts.push(new x509.ExtendedKeyUsageExtension(opts.eku, false));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '01' + Math.floor(Math.random() * 1e9).toString(16),
    subject,
    issuer: issuer ? issuer.cert.subject : subject,
    notBefore: new Date(now - 60_000),
    notAfter: opts.notAfter ?? new Date(now + 86400_000),
    publicKey: await webcrypto.subtle.importKey('spki', kp.spki, { name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']),
    signingKey: issuer ? issuer.signingKey : kp.signingKey,
    signingAlgorithm: ALG,
    extensions: exts,
  });
  return { pem: cert.toString('pem'), key: kp.key, cert, signingKey: kp.signingKey };
}

async function pki() {
  const root = await issue('CN=edgeid Root CA', null, { ca: true });
  const inter = await issue('CN=edgeid Issuing CA', root, { ca: true });
  const control = await issue('CN=edgeid-control, O=edgeid', inter);
  const device = await issue('CN=dev-other', inter, { eku: ['1.3.6.1.5.5.7.3.2'] });
  const otherRoot = await issue('CN=evil Root CA', null, { ca: true });
  const otherControl = await issue('CN=edgeid-control', otherRoot);
  return { root, inter, control, device, otherRoot, otherControl, trust: root.pem + '\n' + inter.pem };
}

test('control envelope: signed commands verify and tampering is refused with its own code', async (t) => {
  const p = await pki();
  const signer = { key: p.control.key, certPem: p.control.pem };
  const now = new Date();

  await t.test('accepts a fresh command for this device signed by the control key', () => {
    const env = signControlCommand({ type: 'wipe', deviceId: 'dev-1' }, signer);
    const cmd = verifyControlCommand(JSON.stringify(env), { deviceId: 'dev-1', trust: p.trust, now });
    assert.equal(cmd.type, 'wipe');
    assert.equal(cmd.deviceId, 'dev-1');
    assert.ok(cmd.id.length > 0);
  });

  await t.test('accepts a signer carrying the control EKU', async () => {
    const c = await issue('CN=edgeid-control', p.inter, { eku: [CONTROL_SIGNER_EKU] });
    const env = signControlCommand({ type: 'renew-now', deviceId: 'dev-1' }, { key: c.key, certPem: c.pem });
    assert.equal(verifyControlCommand(JSON.stringify(env), { deviceId: 'dev-1', trust: p.trust }).type, 'renew-now');
  });

  await t.test('rejects a command whose payload was altered (forged)', () => {
    const env = signControlCommand({ type: 'renew-now', deviceId: 'dev-1' }, signer);
    const forged = { ...env, payload: env.payload.replace('renew-now', 'wipe') };
    assertCode(() => verifyControlCommand(JSON.stringify(forged), { deviceId: 'dev-1', trust: p.trust }), 'control_bad_signature');
  });

  await t.test('rejects a command signed by a device certificate of the same CA', () => {
    const env = signControlCommand({ type: 'wipe', deviceId: 'dev-1' }, { key: p.device.key, certPem: p.device.pem });
    assertCode(() => verifyControlCommand(JSON.stringify(env), { deviceId: 'dev-1', trust: p.trust }), 'control_untrusted_signer');
  });

  await t.test('rejects a clientAuth certificate even if it is named edgeid-control', async () => {
    const c = await issue('CN=edgeid-control', p.inter, { eku: ['1.3.6.1.5.5.7.3.2'] });
    const env = signControlCommand({ type: 'wipe', deviceId: 'dev-1' }, { key: c.key, certPem: c.pem });
    assertCode(() => verifyControlCommand(JSON.stringify(env), { deviceId: 'dev-1', trust: p.trust }), 'control_untrusted_signer');
  });

  await t.test('rejects a control signer from another CA', () => {
    const env = signControlCommand({ type: 'wipe', deviceId: 'dev-1' }, { key: p.otherControl.key, certPem: p.otherControl.pem });
    assertCode(() => verifyControlCommand(JSON.stringify(env), { deviceId: 'dev-1', trust: p.trust }), 'control_untrusted_signer');
  });

  await t.test('rejects a command for another device (foreign)', () => {
    const env = signControlCommand({ type: 'wipe', deviceId: 'dev-2' }, signer);
    assertCode(() => verifyControlCommand(JSON.stringify(env), { deviceId: 'dev-1', trust: p.trust }), 'control_wrong_device');
  });

  await t.test('rejects a stale command and one dated in the future', () => {
    const old = signControlCommand(
      { type: 'wipe', deviceId: 'dev-1', issuedAt: new Date(now.getTime() - 10 * 60_000).toISOString() },
      signer,
    );
    assertCode(() => verifyControlCommand(JSON.stringify(old), { deviceId: 'dev-1', trust: p.trust, now }), 'control_stale');
    const future = signControlCommand(
      { type: 'wipe', deviceId: 'dev-1', issuedAt: new Date(now.getTime() + 10 * 60_000).toISOString() },
      signer,
    );
    assertCode(() => verifyControlCommand(JSON.stringify(future), { deviceId: 'dev-1', trust: p.trust, now }), 'control_stale');
  });

  await t.test('rejects a replayed command id', () => {
    const env = signControlCommand({ type: 'wipe', deviceId: 'dev-1' }, signer);
    const seen = new Set<string>();
    const cmd = verifyControlCommand(JSON.stringify(env), { deviceId: 'dev-1', trust: p.trust, seen: (id) => seen.has(id) });
    seen.add(cmd.id);
    assertCode(
      () => verifyControlCommand(JSON.stringify(env), { deviceId: 'dev-1', trust: p.trust, seen: (id) => seen.has(id) }),
      'control_replayed',
    );
  });

  await t.test('rejects garbage with control_malformed', () => {
    for (const junk of ['', 'null', '{}', '[1]', '{"payload":1,"signature":"x","signer":"y"}', Buffer.from([0xff, 0x00])]) {
      assertCode(() => verifyControlCommand(junk, { deviceId: 'dev-1', trust: p.trust }), 'control_malformed');
    }
  });

  await t.test('rejects a signer whose certificate expired', async () => {
    const c = await issue('CN=edgeid-control', p.inter, { notAfter: new Date(Date.now() - 1000) });
    const env = signControlCommand({ type: 'wipe', deviceId: 'dev-1' }, { key: c.key, certPem: c.pem });
    assertCode(() => verifyControlCommand(JSON.stringify(env), { deviceId: 'dev-1', trust: p.trust }), 'control_untrusted_signer');
  });
});
