/**
 * Outside review: the server sets no request deadline (Fastify's requestTimeout and
 * connectionTimeout default to 0, so Node's http requestTimeout is off). A caller that sends the
 * headers and then one body byte every few seconds holds a connection, a socket and a request
 * slot for as long as it likes; the per-address limit counts requests (1,200 a minute), not open
 * connections, so one address can hold more connections than the service's file limit
 * (systemd's default soft RLIMIT_NOFILE is 1,024; edgeid-server.service sets none).
 * Safe outcome asserted: the server answers or closes such a request within 90 s.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:tls';
import { startServerProcess } from '../../scripts/harness/server.js';

test('a request whose body drips is ended by the server within 90 s', { timeout: 180_000 }, async (t) => {
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
  assert.notEqual(ended, null, `the server still holds the dripping request after 90 s (answer so far: ${JSON.stringify(answer.slice(0, 80))})`);
});
