/**
 * The agent's HTTPS client against a hostile server on loopback (pinned like the real one): an
 * endless or announced-huge body, a server dripping one byte a second, and an abort while it drips.
 * Each ends with its own code; none of these tests waits on a clock of its own.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ServerClient } from '../../agent/server-client.js';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { RenewChallengeResponse, RenewResponse } from '../../protocol/api.js';
import { drip, startHostileHttps, type HostileServer } from '../helpers/hostile-https.js';

async function hostile(
  t: { after(fn: () => Promise<void>): void },
  handler: Parameters<typeof startHostileHttps>[0],
): Promise<HostileServer> {
  const h = await startHostileHttps(handler);
  t.after(() => h.close());
  return h;
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
  await assert.rejects(client.post('/v1/renew', {}, RenewResponse), (e: unknown) => isEdgeidError(e, 'server_response_too_large'));
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
  await assert.rejects(
    client.get('/v1/ca', RenewChallengeResponse),
    (e: unknown) => isEdgeidError(e, 'server_response_too_large') && /400|419430400/.test(e.message),
  );
});

test('a server dripping a byte a second cannot hold a request past its total deadline (server_timeout)', async (t) => {
  const h = await hostile(t, drip);
  // the total deadline (2.5 s) is longer than the gap between bytes (1 s): an idle timeout alone never fires
  const client = new ServerClient(h.url, { caPem: h.ca, timeoutMs: 2500 });
  t.after(() => client.close());
  await assert.rejects(client.post('/v1/renew/challenge', {}, RenewChallengeResponse), (e: unknown) => isEdgeidError(e, 'server_timeout'));
  await h.connectionClosed;
});

test('aborting ends a dripping request at once (request_aborted), whatever the deadline', async (t) => {
  const h = await hostile(t, drip);
  const ac = new AbortController();
  const client = new ServerClient(h.url, { caPem: h.ca, timeoutMs: 600_000, signal: ac.signal });
  t.after(() => client.close());
  const pending = client.post('/v1/renew', {}, RenewResponse);
  await h.gotRequest;
  ac.abort();
  await assert.rejects(pending, (e: unknown) => isEdgeidError(e, 'request_aborted'));
  await h.connectionClosed;
  // a client whose signal is already aborted does not even connect
  await assert.rejects(client.post('/v1/renew', {}, RenewResponse), (e: unknown) => isEdgeidError(e, 'request_aborted'));
});
