/**
 * A TPM that stops answering, or answers garbage: a TCP proxy on loopback in front of a real swtpm
 * stalls, truncates, pads or flips bits of the TPM's responses. TPM calls end with tpm_unresponsive
 * within their deadline (or tpm_bad_response at once), the event loop keeps running meanwhile, the
 * TLS signing callback gives up by its own deadline, and once the proxy heals the next call works
 * (a fresh TCTI/ESYS context, nothing left loaded in the TPM). Short deadlines come from
 * Tpm.open's options; nothing here asserts how fast anything is.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import { after, before, test } from 'node:test';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { Tpm, TpmError } from '../../agent/tpm/index.js';
import { startSwtpm, type Swtpm } from '../../scripts/harness/swtpm.js';
import { TpmProxy } from '../helpers/tpm-proxy.js';
import { makeTestCa, type TestCa } from '../../scripts/harness/pki.js';

/** Counts timer ticks: proof that the event loop ran while something was pending. */
function ticker(): { readonly ticks: number; stop(): void } {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 10);
  return {
    get ticks() {
      return ticks;
    },
    stop: () => clearInterval(timer),
  };
}

/** Short, so that a test waits little for a stall; long enough for any real swtpm command on a busy machine. */
const DEADLINES = { commandMs: 1_500, tlsMs: 1_000 };

let swtpm: Swtpm;
let proxy: TpmProxy;
let ca: TestCa;

before(async () => {
  swtpm = await startSwtpm();
  proxy = await TpmProxy.start(swtpm);
  ca = await makeTestCa();
});

after(async () => {
  await proxy?.close();
  await swtpm?.stop();
});

async function openThroughProxy(t: import('node:test').TestContext, deadlines = DEADLINES): Promise<Tpm> {
  await proxy.setMode('pass');
  const tpm = await Tpm.open(proxy.tcti, { deadlines });
  t.after(() => tpm.close());
  await tpm.flushTransientObjects(); // what an earlier test's broken connection left in the simulator
  return tpm;
}

/** A TLS server that requires a client certificate; returns one handshake with `secureContext` against it. */
async function tlsServer(t: import('node:test').TestContext, secureContext: tls.SecureContext): Promise<() => Promise<void>> {
  const server = tls.createServer(
    { key: ca.server.keyPem, cert: ca.server.certPem, ca: ca.caPem, requestCert: true, rejectUnauthorized: true },
    (s) => s.end(),
  );
  server.on('tlsClientError', () => {});
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => server.close());
  const { port } = server.address() as net.AddressInfo;
  return () =>
    new Promise<void>((resolve, reject) => {
      const c = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', secureContext });
      c.once('secureConnect', () => {
        c.destroy();
        resolve();
      });
      c.on('error', reject);
    });
}

for (const mode of ['stall', 'truncate'] as const) {
  test(`a TPM that ${mode === 'stall' ? 'never answers' : 'answers one byte short'} fails the call with tpm_unresponsive by its deadline; the loop runs meanwhile; after healing the next call works and nothing stays loaded`, async (t) => {
    const tpm = await openThroughProxy(t);
    const ak = await tpm.createAttestationKey();
    await tpm.batch(async (s) => void (await s.loadResident(ak))); // SRK + AK stay loaded in swtpm
    assert.equal(tpm.residentObjectCount, 2);

    await proxy.setMode(mode);
    const loop = ticker();
    t.after(() => loop.stop());
    const ticksBefore = loop.ticks;
    const tcticlosed = once(proxy, 'clientClosed');
    await assert.rejects(
      tpm.getRandom(8),
      (e) => isEdgeidError(e, 'tpm_unresponsive') && e.message.includes(`did not answer GetRandom within ${DEADLINES.commandMs} ms`),
    );
    assert.ok(loop.ticks > ticksBefore, 'timers fired while the TPM call was pending');
    await tcticlosed; // the addon ended the blocked read: the TCTI let go of its socket
    await assert.rejects(tpm.getRandom(8), (e) => isEdgeidError(e, 'tpm_unresponsive'), 'still silent: fails again');
    assert.notEqual(tpm.connectionState, 'ok');

    await proxy.setMode('pass');
    await tpm.unstuck(); // the probe that met the silent TPM comes back from its worker
    assert.equal((await tpm.getRandom(8)).length, 8, 'the TPM answers again: so does the agent');
    assert.equal(tpm.connectionState, 'ok');
    assert.equal(tpm.residentObjectCount, 0, 'the residents died with the old ESYS context');
    assert.equal(await tpm.transientHandleCount(), 0, 'and were flushed from the TPM by their public areas');
    const quoteKey = await tpm.batch(async (s) => (await s.loadResident(ak)).handle);
    assert.equal(typeof quoteKey, 'number', 'the AK loads again');
  });
}

test('calls queued behind a stuck command fail with tpm_unresponsive at once, not one deadline each', async (t) => {
  const tpm = await openThroughProxy(t);
  await proxy.setMode('stall');
  const first = tpm.getRandom(8);
  const queued = [tpm.getRandom(8), tpm.info(), tpm.getRandom(8)];
  await assert.rejects(first, (e) => isEdgeidError(e, 'tpm_unresponsive'));
  const sent = tpm.commandCount;
  for (const q of queued)
    await assert.rejects(q, (e) => isEdgeidError(e, 'tpm_unresponsive') && /has not answered GetRandom/.test(e.message));
  assert.equal(tpm.commandCount, sent, 'the queued calls sent nothing to the silent TPM');
  await proxy.setMode('pass');
  await tpm.unstuck();
  assert.equal((await tpm.getRandom(4)).length, 4);
});

test('a response with a flipped bit fails at once with tpm_bad_response; the next call works on a fresh connection', async (t) => {
  const tpm = await openThroughProxy(t);
  await proxy.setMode('flip');
  await assert.rejects(tpm.getRandom(8), (e) => e instanceof TpmError && e.code === 'tpm_bad_response' && e.command === 'Esys_GetRandom');
  assert.equal(tpm.connectionState, 'broken');
  await proxy.setMode('pass');
  assert.equal((await tpm.getRandom(8)).length, 8);
  assert.equal(tpm.connectionState, 'ok');
});

test('a flipped bit in the response code reads as that TPM error (TPM_RC_INITIALIZE); the connection stays usable', async (t) => {
  const tpm = await openThroughProxy(t);
  await proxy.setMode('flip-code');
  await assert.rejects(tpm.getRandom(8), (e) => e instanceof TpmError && e.code === 'tpm_command_failed' && e.rc === 0x100);
  assert.equal(tpm.connectionState, 'ok');
  await proxy.setMode('pass');
  assert.equal((await tpm.getRandom(8)).length, 8);
});

test('a padded response (size field and bytes both longer) neither hangs nor breaks the connection: the TSS reads its parameters and ignores the rest', async (t) => {
  const tpm = await openThroughProxy(t);
  await proxy.setMode('pad');
  assert.equal((await tpm.getRandom(8)).length, 8);
  assert.equal(tpm.connectionState, 'ok');
  await proxy.setMode('pass');
  assert.equal((await tpm.getRandom(8)).length, 8);
});

test('the TLS signing callback gives up by its deadline when the TPM stalls: the handshake fails, the loop goes on, and handshakes work again after healing', async (t) => {
  const tpm = await openThroughProxy(t);
  const key = await tpm.createSigningKey();
  const secureContext = await tpm.tlsSecureContext({ key, certPem: await ca.issueForTpmKey(key, 'dev-stall'), caPem: ca.caPem });
  const handshake = await tlsServer(t, secureContext);

  await handshake();
  const signed = tpm.tlsStats().signatures;

  await proxy.setMode('stall');
  const loop = ticker();
  t.after(() => loop.stop());
  await assert.rejects(handshake(), (e: NodeJS.ErrnoException) => e.code === 'EPROTO' || /TPM signature failed/.test(e.message));
  const stats = tpm.tlsStats();
  assert.equal(stats.signatures, signed);
  assert.equal(stats.lastError?.command, 'the TPM did not answer within the TLS signing deadline');
  const ticksAfterHandshake = loop.ticks;
  await new Promise<void>((resolve) => {
    const check = setInterval(() => {
      if (loop.ticks > ticksAfterHandshake) {
        clearInterval(check);
        resolve();
      }
    }, 5);
  }); // the loop is not frozen after the failed handshake
  assert.equal(tpm.connectionState, 'broken');
  await assert.rejects(handshake(), (e: NodeJS.ErrnoException) => e.code === 'EPROTO' || /TPM signature failed/.test(e.message));
  assert.match(tpm.tlsStats().lastError?.command ?? '', /connection is broken/, 'a broken connection fails the signature at once');

  await proxy.setMode('pass');
  await tpm.unstuck();
  await tpm.getRandom(1); // the next batch reopens the connection (an idle agent's recovery batch does the same)
  await handshake();
  assert.equal(tpm.tlsStats().signatures, signed + 1);
});

test('a handshake while a queued command waits for a silent TPM gives up waiting for the TPM lock by the TLS deadline', async (t) => {
  const tpm = await openThroughProxy(t, { commandMs: 4_000, tlsMs: 500 });
  const key = await tpm.createSigningKey();
  const secureContext = await tpm.tlsSecureContext({ key, certPem: await ca.issueForTpmKey(key, 'dev-busy'), caPem: ca.caPem });
  const handshake = await tlsServer(t, secureContext);
  await proxy.setMode('stall');
  const sent = once(proxy, 'response'); // the queued command reached the TPM; its worker now holds the lock
  const queued = tpm.getRandom(8);
  await sent;
  await assert.rejects(handshake());
  assert.equal(tpm.tlsStats().lastError?.command, 'the TPM stayed busy with another command past the TLS signing deadline');
  await assert.rejects(queued, (e) => isEdgeidError(e, 'tpm_unresponsive'));
  await proxy.setMode('pass');
  await tpm.recovered();
  await handshake();
});

test('an idle agent recovers its TLS signing path by itself once the TPM answers again (no TPM call of its own)', async (t) => {
  const tpm = await openThroughProxy(t);
  const key = await tpm.createSigningKey();
  const secureContext = await tpm.tlsSecureContext({ key, certPem: await ca.issueForTpmKey(key, 'dev-idle'), caPem: ca.caPem });
  const handshake = await tlsServer(t, secureContext);
  await proxy.setMode('stall');
  await assert.rejects(handshake());
  assert.equal(tpm.connectionState, 'broken', 'only the signing path knows: no queued call noticed');
  await proxy.setMode('pass');
  const commands = tpm.commandStats();
  await tpm.recovered(); // the health check saw the broken connection and a recovery batch reopened it
  assert.equal(tpm.connectionState, 'ok');
  assert.ok((tpm.commandStats().GetCapability ?? 0) > (commands.GetCapability ?? 0), 'the recovery probed the TPM');
  await handshake();
});

test('deadlines must be whole milliseconds', async () => {
  await assert.rejects(Tpm.open(proxy.tcti, { deadlines: { commandMs: 0 } }), (e) => isEdgeidError(e, 'tpm_bad_argument'));
  await assert.rejects(Tpm.open(proxy.tcti, { deadlines: { tlsMs: 1.5 } }), (e) => isEdgeidError(e, 'tpm_bad_argument'));
});
