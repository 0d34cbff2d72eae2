/**
 * Wires the broker integration into a server: the server's own broker identity (an ECDSA key in
 * data/broker/, 0600, and a client certificate CN edgeid-broker-admin from the edgeid CA, renewed
 * when a third of its life is left) and the hooks object.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { CertificateAuthority } from '../ca/ca.js';
import { ensurePrivateDir, writeFileAtomic } from '../files.js';
import type { Logger } from 'pino';
import type { BrokerConfig } from '../config.js';
import { BROKER_ADMIN_CN } from './dynsec.js';
import { BrokerIntegration, type BrokerIntegrationOptions } from './integration.js';

const IDENTITY_LIFETIME_S = 90 * 86400;

export interface BrokerIdentity {
  keyPem: string;
  certPem: string;
}

export async function ensureBrokerIdentity(ca: CertificateAuthority, dataDir: string, now = Date.now()): Promise<BrokerIdentity> {
  const dir = join(dataDir, 'broker');
  ensurePrivateDir(dir);
  const keyFile = join(dir, 'admin.key');
  const certFile = join(dir, 'admin.pem');
  let keyPem: string;
  if (existsSync(keyFile)) {
    keyPem = readFileSync(keyFile, 'utf8');
  } else {
    keyPem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    writeFileAtomic(keyFile, keyPem, 0o600);
  }
  const spki = createPublicKey(createPrivateKey(keyPem)).export({ type: 'spki', format: 'der' });
  if (existsSync(certFile)) {
    const certPem = readFileSync(certFile, 'utf8');
    try {
      const c = new X509Certificate(certPem);
      const left = Date.parse(c.validTo) - now;
      const sameKey = Buffer.from(c.publicKey.export({ type: 'spki', format: 'der' })).equals(spki);
      if (sameKey && left > (IDENTITY_LIFETIME_S * 1000) / 3 && c.checkIssued(new X509Certificate(ca.chainPem[0]!)))
        return { keyPem, certPem };
    } catch {
      // unreadable: issue a new one below
    }
  }
  const issued = await ca.issueClient({ commonName: BROKER_ADMIN_CN, spki, lifetimeSeconds: IDENTITY_LIFETIME_S });
  const certPem = issued.pem + ca.chainPem[0]!;
  writeFileAtomic(certFile, certPem, 0o644);
  return { keyPem, certPem };
}

/** What the broker integration needs from the server, handed in by the composition root. */
export interface BrokerIntegrationDeps {
  config: BrokerConfig;
  ca: CertificateAuthority;
  dataDir: string;
  audit: BrokerIntegrationOptions['audit'];
  activeDeviceIds: BrokerIntegrationOptions['activeDeviceIds'];
  quarantinedDeviceIds?: BrokerIntegrationOptions['quarantinedDeviceIds'];
  log: Logger;
}

export async function createBrokerIntegration(deps: BrokerIntegrationDeps): Promise<BrokerIntegration> {
  const b = deps.config;
  const identity = await ensureBrokerIdentity(deps.ca, deps.dataDir);
  const host = new URL(b.url).hostname;
  return new BrokerIntegration({
    dynsec: {
      url: b.url,
      tls: {
        ca: deps.ca.chainPem.join(''),
        cert: identity.certPem,
        key: identity.keyPem,
        // SNI takes names only; for an IP address the certificate's IP SAN is checked
        ...(b.servername ? { servername: b.servername } : isIP(host) ? {} : { servername: host }),
      },
      // what the broker makes of it anyway (use_username_as_clientid): the certificate's CN
      clientId: BROKER_ADMIN_CN,
    },
    ...(b.crlFile
      ? {
          crl: {
            file: b.crlFile,
            ...(b.reloadCommand ? { reloadCommand: b.reloadCommand } : {}),
            stateFile: join(deps.dataDir, 'broker', 'crl-state.json'),
            policy: { everyMs: b.crlReload.every * 1000, refreshBeforeMs: b.crlReload.refreshBefore * 1000 },
          },
        }
      : {}),
    audit: deps.audit,
    activeDeviceIds: deps.activeDeviceIds,
    ...(deps.quarantinedDeviceIds ? { quarantinedDeviceIds: deps.quarantinedDeviceIds } : {}),
    log: deps.log,
  });
}
