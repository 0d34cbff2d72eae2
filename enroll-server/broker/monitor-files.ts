/**
 * What `edgeid-admin broker monitor add NAME --out DIR` writes for a monitoring tool: its private
 * key (P-256, made here, 0600, never sent: the server sees only its public key), its certificate
 * and the CA bundle it checks the broker against. Files are named after the certificate's CN, so
 * one directory can hold several tools' identities.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { accessSync, constants, mkdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { writeFileAtomic } from '../files.js';

export interface MonitorFiles {
  dir: string;
  keyFile: string;
  certFile: string;
  caFile: string;
}

export function monitorFiles(out: string, commonName: string): MonitorFiles {
  const dir = resolve(out);
  return { dir, keyFile: join(dir, `${commonName}.key`), certFile: join(dir, `${commonName}.pem`), caFile: join(dir, 'ca.pem') };
}

/** Creates DIR (0700) if needed and checks it can take the files: before anything is asked of the server. */
export function prepareMonitorDir(out: string): void {
  const dir = resolve(out);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (!statSync(dir).isDirectory()) throw new Error(`${dir} is not a directory`);
  accessSync(dir, constants.W_OK);
}

/** A fresh P-256 key; only its SPKI (DER) leaves this process before the files are written. */
export function newMonitorKey(): { privateKey: KeyObject; spki: Buffer } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { privateKey, spki: publicKey.export({ type: 'spki', format: 'der' }) };
}

/** Writes key (0600), certificate and CA bundle (0644), each atomically. */
export function writeMonitorFiles(
  out: string,
  commonName: string,
  p: { privateKey: KeyObject; certificate: string; caBundle: string },
): MonitorFiles {
  const f = monitorFiles(out, commonName);
  writeFileAtomic(f.keyFile, p.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600);
  writeFileAtomic(f.certFile, p.certificate, 0o644);
  writeFileAtomic(f.caFile, p.caBundle, 0o644);
  return f;
}
