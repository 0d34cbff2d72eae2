/**
 * A hostile HTTPS server on loopback for the agent's client: a self-signed certificate for
 * 127.0.0.1 (the pinned CA of the test) and a handler that misbehaves on purpose (endless body,
 * one byte a second …). `gotRequest` and `connectionClosed` let tests wait on events, not time.
 */
import { execFile } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

export interface HostileServer {
  url: string;
  /** PEM of the server's self-signed certificate: pin it as the CA. */
  ca: string;
  /** sha256:<hex> of the certificate (the agent's caFingerprint). */
  caFingerprint: string;
  gotRequest: Promise<void>;
  connectionClosed: Promise<void>;
  /** Intervals the handler started; cleared on close. */
  timers: Set<NodeJS.Timeout>;
  close(): Promise<void>;
}

export async function startHostileHttps(
  handler: (req: IncomingMessage, res: ServerResponse, srv: HostileServer) => void,
): Promise<HostileServer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-hostile-'));
  await promisify(execFile)('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-subj',
    '/CN=127.0.0.1',
    '-addext',
    'subjectAltName=IP:127.0.0.1',
    '-days',
    '1',
    '-keyout',
    path.join(dir, 'k.pem'),
    '-out',
    path.join(dir, 'c.pem'),
  ]);
  const cert = await readFile(path.join(dir, 'c.pem'), 'utf8');
  const key = await readFile(path.join(dir, 'k.pem'), 'utf8');
  await rm(dir, { recursive: true, force: true });
  let requested!: () => void;
  let closed!: () => void;
  const timers = new Set<NodeJS.Timeout>();
  const hs: HostileServer = {
    url: '',
    ca: cert,
    caFingerprint: `sha256:${createHash('sha256').update(new X509Certificate(cert).raw).digest('hex')}`,
    gotRequest: new Promise<void>((r) => (requested = r)),
    connectionClosed: new Promise<void>((r) => (closed = r)),
    timers,
    close: async () => {
      for (const x of timers) clearInterval(x);
      srv.closeAllConnections();
      await new Promise((r) => srv.close(r));
    },
  };
  const srv = https.createServer({ cert, key }, (req, res) => {
    requested();
    req.socket.once('close', () => closed());
    req.resume();
    handler(req, res, hs);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  hs.url = `https://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  return hs;
}

/** Handler: a 200 JSON answer that never ends, one space a second. */
export function drip(_req: IncomingMessage, res: ServerResponse, srv: HostileServer): void {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.write('{');
  const t = setInterval(() => res.write(' '), 1000);
  srv.timers.add(t);
  res.once('close', () => clearInterval(t));
}
