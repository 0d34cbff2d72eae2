/**
 * Writes a ready-to-run Mosquitto 2.0 configuration directory for edgeid (what
 * `edgeid-admin broker config --out DIR` produces). The broker's TLS key is generated here, where
 * the broker runs, and never sent anywhere: the server only sees its public key.
 */
import { generateKeyPairSync, createPublicKey, createPrivateKey } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { writeFileAtomic } from '../files.js';
import { initialDynsecConfig, renderMosquittoConfig } from './mosquitto-config.js';

export interface BrokerFiles {
  dir: string;
  config: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  crlFile: string;
  dynsecFile: string;
}

export function brokerFiles(out: string): BrokerFiles {
  const dir = resolve(out);
  return {
    dir,
    config: join(dir, 'mosquitto.conf'),
    caFile: join(dir, 'ca.pem'),
    certFile: join(dir, 'server.pem'),
    keyFile: join(dir, 'server.key'),
    crlFile: join(dir, 'crl.pem'),
    dynsecFile: join(dir, 'dynsec.json'),
  };
}

/** The broker's TLS key: kept if the directory has one, else created (0600). Returns its SPKI (DER). */
export function brokerKeySpki(out: string): Buffer {
  const f = brokerFiles(out);
  mkdirSync(f.dir, { recursive: true, mode: 0o755 });
  if (!existsSync(f.keyFile)) {
    const pem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    writeFileAtomic(f.keyFile, pem, 0o600);
  }
  return createPublicKey(createPrivateKey(readFileSync(f.keyFile, 'utf8'))).export({ type: 'spki', format: 'der' });
}

export interface WriteBrokerConfigInput {
  out: string;
  port: number;
  bindAddress: string;
  certificate: string;
  caBundle: string;
  crl: string;
  runAsRoot?: boolean;
  pluginPath?: string;
}

/**
 * Writes config, CA bundle, certificate and CRL (replacing older ones) and the initial dynsec file
 * (only if none exists: it holds the broker's live permissions, which the server reconciles).
 */
export function writeBrokerConfig(i: WriteBrokerConfigInput): BrokerFiles {
  const f = brokerFiles(i.out);
  writeFileAtomic(f.caFile, i.caBundle, 0o644);
  writeFileAtomic(f.certFile, i.certificate, 0o644);
  writeFileAtomic(f.crlFile, i.crl, 0o644);
  if (!existsSync(f.dynsecFile)) writeFileAtomic(f.dynsecFile, JSON.stringify(initialDynsecConfig(), null, 2) + '\n', 0o600);
  writeFileAtomic(
    f.config,
    renderMosquittoConfig({
      bindAddress: i.bindAddress,
      port: i.port,
      caFile: f.caFile,
      certFile: f.certFile,
      keyFile: f.keyFile,
      crlFile: f.crlFile,
      dynsecFile: f.dynsecFile,
      ...(i.pluginPath ? { pluginPath: i.pluginPath } : {}),
      ...(i.runAsRoot ? { runAsRoot: true } : {}),
    }),
    0o644,
  );
  return f;
}
