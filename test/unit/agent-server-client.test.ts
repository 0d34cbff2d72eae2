/**
 * The agent's HTTPS client against a hostile server on loopback (pinned like the real one): an
 * endless or announced-huge body, a server dripping one byte a second, and an abort while it drips.
 * Each ends with its own code; none of these tests waits on a clock of its own.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ServerClient } from '../../agent/server-client.js';
import { isEdgeidError } from '../../protocol/errors/index.js';

type Handler = (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => void;

/** A self-signed certificate for 127.0.0.1 (IP SAN), used both as the server's and as the pinned CA. */
async function loopbackCert(t: { after(fn: () => Promise<void>): void }): Promise<{ cert: string; key: string }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-hostile-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1', '-days', '1', '-keyout', path.join(dir, 'k.pem'), '-out', path.join(dir, 'c.pem')]);
  return { cert: await readFile(path.join(dir, 'c.pem'), 'utf8'), key: await readFile(path.join(dir, 'k.pem'), 'utf8') };
}

/** Starts a hostile HTTPS server; `closed` resolves when the client's connection is gone. */
async function hostile(t: { after(fn: () => Promise<void>): void }, handler: Handler) {
  const pki = await loopbackCert(t);
  let requested!: () => void;
  let closed!: () => void;
  const gotRequest = new Promise<void>((r) => (requested = r));
  const connectionClosed = new Promise<void>((r) => (closed = r));
  const timers = new Set<NodeJS.Timeout>();
  const srv = https.createServer({ cert: pki.cert, key: pki.key }, (req, res) => {
    requested();
    req.socket.once('close', () => closed());
    req.resume();
    handler(req, res);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.after(async () => {
    for (const x of timers) clearInterval(x);
    srv.closeAllConnections();
    await new Promise((r) => srv.close(r));
  });
  const port = (srv.address() as AddressInfo).port;
  return { url: `https://127.0.0.1:${port}`, ca: pki.cert, gotRequest, connectionClosed, timers };
}

test('an endless body is refused once it passes the size bound (server_response_too_large)', async (t) => {
  let sent = 0;
  const h = await hostile(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    const pump = () => {
      while (!res.destroyed && res.write(chunk)) sent += chunk.length;
      if (!res.destroyed) res.once('drain', pump);
    };
    pump();
  });
  const client = new ServerClient(h.url, { caPem: h.ca, timeoutMs: 600_000 });
  t.after(() => client.close());
  await assert.rejects(client.post('/v1/renew', {}), (e: unknown) => isEdgeidError(e, 'server_response_too_large'));
  await h.connectionClosed; // the agent hung up instead of reading on
  assert.ok(sent < 64 * 1024 * 1024, `the agent stopped reading early (server wrote ${sent} bytes)`);
});

test('an announced huge body is refused before it is read', async (t) => {
  const h = await hostile(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(400 * 1024 * 1024) });
    res.write('{"x":"');
  });
  const client = new ServerClient(h.url, { caPem: h.ca, timeoutMs: 600_000 });
  t.after(() => client.close());
  await assert.rejects(client.get('/v1/ca'), (e: unknown) => isEdgeidError(e, 'server_response_too_large') && /400|419430400/.test(e.message));
});

test('a server dripping a byte a second cannot hold a request past its total deadline (server_timeout)', async (t) => {
  let h!: Awaited<ReturnType<typeof hostile>>;
  h = await hostile(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.write('{');
    const drip = setInterval(() => res.write(' '), 1000);
    h.timers.add(drip);
    res.once('close', () => clearInterval(drip));
  });
  // the total deadline (2.5 s) is longer than the gap between bytes (1 s): an idle timeout alone never fires
  const client = new ServerClient(h.url, { caPem: h.ca, timeoutMs: 2500 });
  t.after(() => client.close());
  await assert.rejects(client.post('/v1/renew/challenge', {}), (e: unknown) => isEdgeidError(e, 'server_timeout'));
  await h.connectionClosed;
});

test('aborting ends a dripping request at once (request_aborted), whatever the deadline', async (t) => {
  let h!: Awaited<ReturnType<typeof hostile>>;
  h = await hostile(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    const drip = setInterval(() => res.write(' '), 1000);
    h.timers.add(drip);
    res.once('close', () => clearInterval(drip));
  });
  const ac = new AbortController();
  const client = new ServerClient(h.url, { caPem: h.ca, timeoutMs: 600_000, signal: ac.signal });
  t.after(() => client.close());
  const pending = client.post('/v1/renew', {});
  await h.gotRequest;
  ac.abort();
  await assert.rejects(pending, (e: unknown) => isEdgeidError(e, 'request_aborted'));
  await h.connectionClosed;
  // a client whose signal is already aborted does not even connect
  await assert.rejects(client.post('/v1/renew', {}), (e: unknown) => isEdgeidError(e, 'request_aborted'));
});
