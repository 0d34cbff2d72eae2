/**
 * Connections a caller holds open: a request must arrive whole within 30 s (a body dripped one
 * byte at a time is answered 408 and closed), and one network holds at most
 * rateLimit.connectionsPerAddress connections (the per-address limit counts requests, not open
 * connections; edgeid-server.service raises the file limit far above it).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type TLSSocket } from 'node:tls';
import { startServerProcess } from '../../scripts/harness/server.js';

test('a request whose body drips is answered 408 and closed within 90 s', { timeout: 180_000 }, async (t) => {
  const srv = await startServerProcess({});
  t.after(() => srv.close());
  const t0 = Date.now();
  const s = connect({ host: '127.0.0.1', port: srv.port, ca: srv.caPem, servername: 'localhost' });
  t.after(() => s.destroy());
  let answer = '';
  s.on('data', (d) => (answer += d.toString()));
  s.on('error', () => {});
  s.on('secureConnect', () =>
    s.write('POST /v1/renew/challenge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{'),
  );
  const drip = setInterval(() => s.writable && s.write(' '), 5_000);
  t.after(() => clearInterval(drip));
  const ended = await new Promise<number | null>((resolve) => {
    s.once('close', () => resolve(Date.now() - t0));
    const poll = setInterval(() => answer && (clearInterval(poll), resolve(Date.now() - t0)), 200);
    setTimeout(() => (clearInterval(poll), resolve(null)), 90_000);
  });
  assert.notEqual(
    ended,
    null,
    `the server still holds the dripping request after 90 s (answer so far: ${JSON.stringify(answer.slice(0, 80))})`,
  );
  assert.match(answer, /^HTTP\/1\.1 408 /);
});

test('one network holds at most rateLimit.connectionsPerAddress open connections; closing one frees a place', async (t) => {
  const srv = await startServerProcess({ config: { rateLimit: { connectionsPerAddress: 3 } } });
  t.after(() => srv.close());
  const open = (): Promise<{ s: TLSSocket; outcome: string }> =>
    new Promise((resolve) => {
      const s = connect({ host: '127.0.0.1', port: srv.port, ca: srv.caPem, servername: 'localhost' });
      t.after(() => s.destroy());
      s.once('secureConnect', () => resolve({ s, outcome: 'connected' }));
      s.once('error', (e: NodeJS.ErrnoException) => resolve({ s, outcome: e.code ?? e.message }));
    });
  const held = [await open(), await open(), await open()];
  assert.deepEqual(
    held.map((h) => h.outcome),
    ['connected', 'connected', 'connected'],
  );
  assert.equal((await open()).outcome, 'ECONNRESET', 'the fourth is closed at once');
  held[0]!.s.destroy();
  await new Promise((r) => held[0]!.s.once('close', r));
  // the server sees the close a moment later: the next connection fits once it has
  let again = await open();
  for (let i = 0; i < 50 && again.outcome !== 'connected'; i++) again = await open();
  assert.equal(again.outcome, 'connected');
});
