/**
 * TLS client keys that live in the TPM: tpm.tlsSecureContext() against a real swtpm and
 * a real Mosquitto (`require_certificate`, `use_identity_as_username`). Only the test CA is software.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tls, { type SecureContext } from 'node:tls';
import { promisify, types } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import mqtt, { type MqttClient } from 'mqtt';
import { isEdgeidError } from '../../protocol/errors/index.js';
import { TPM_ALG, sessionKeyTemplate, srkTemplate } from '../../protocol/tpm/index.js';
import { Tpm, type KeyBlob } from '../../agent/tpm/index.js';
import { loadAddon } from '../../agent/tpm/native.js';
import { sslContextHandle } from '../../agent/tpm/tls.js';
import { startMosquitto, type Mosquitto } from '../../scripts/harness/mosquitto.js';
import { startSwtpm, transientHandleCountViaTools, type Swtpm } from '../../scripts/harness/swtpm.js';
import { makeTestCa, type TestCa } from '../../scripts/harness/pki.js';
import { waitFor } from '../../scripts/harness/wait.js';

const run = promisify(execFile);

let dir: string;
let ca: TestCa;
let broker: Mosquitto;
let swtpm: Swtpm;
let tpm: Tpm;
let key: KeyBlob;
let clientIds = 0;

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'edgeid-tpm-tls-'));
  ca = await makeTestCa();
  const files = { caFile: path.join(dir, 'ca.pem'), certFile: path.join(dir, 'server.pem'), keyFile: path.join(dir, 'server.key') };
  await writeFile(files.caFile, ca.caPem);
  await writeFile(files.certFile, ca.server.certPem);
  await writeFile(files.keyFile, ca.server.keyPem, { mode: 0o600 });
  broker = await startMosquitto(files);
  swtpm = await startSwtpm();
  tpm = await Tpm.open(swtpm.tcti);
  key = await tpm.createSigningKey();
});

after(async () => {
  await tpm?.close();
  await swtpm?.stop();
  await broker?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function contextFor(
  t: Tpm,
  k: KeyBlob,
  cn: string,
  versions: Pick<tls.SecureContextOptions, 'minVersion' | 'maxVersion'> = {},
): Promise<SecureContext> {
  return t.tlsSecureContext({ key: k, certPem: await ca.issueForTpmKey(k, cn), caPem: ca.caPem, ...versions });
}

/** Connects once (no retries); the client is ended when the test ends. */
async function connect(
  t: import('node:test').TestContext,
  secureContext: SecureContext,
  clientId = `c${++clientIds}`,
): Promise<MqttClient> {
  const client = await mqtt.connectAsync(broker.url, {
    secureContext,
    clientId,
    protocolVersion: 5,
    reconnectPeriod: 0,
    connectTimeout: 10_000,
  } as mqtt.IClientOptions);
  t.after(() => client.endAsync(true));
  return client;
}

/** The error of a connection attempt that must fail (the client never connected). */
async function connectFails(secureContext: SecureContext): Promise<Error> {
  const client = mqtt.connect(broker.url, {
    secureContext,
    clientId: `c${++clientIds}`,
    protocolVersion: 5,
    reconnectPeriod: 0,
    connectTimeout: 10_000,
  } as mqtt.IClientOptions);
  try {
    return await new Promise<Error>((resolve, reject) => {
      client.once('connect', () => reject(new Error('the handshake was expected to fail')));
      client.once('error', resolve);
    });
  } finally {
    await client.endAsync(true);
  }
}

/** Waits until the broker has logged a line matching `re` (the log reaches us asynchronously). */
async function brokerLogged(re: RegExp): Promise<string> {
  return waitFor(
    `the broker to log ${re}`,
    () =>
      broker
        .log()
        .split('\n')
        .find((l) => re.test(l)),
    { timeoutMs: 5000, intervalMs: 25 },
  ).catch(() => assert.fail(`the broker never logged ${re}; log tail:\n${broker.log().slice(-1500)}`));
}

async function publishAndReceive(client: MqttClient, topic: string): Promise<void> {
  await client.subscribeAsync(topic, { qos: 1 });
  const got = new Promise<string>((resolve) => client.once('message', (_t, payload) => resolve(payload.toString())));
  await client.publishAsync(topic, 'hello from the TPM key', { qos: 1 });
  assert.equal(await got, 'hello from the TPM key');
}

for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
  test(`an mqtt client with the TPM key logs in over ${version}, publishes, and the broker names it by the certificate CN`, async (t) => {
    const cn = `dev-${version.replace('.', '')}`;
    const sc = await contextFor(tpm, key, cn, { minVersion: version, maxVersion: version });
    const before = tpm.tlsStats();
    const clientId = `cid-${cn}`;
    const client = await connect(t, sc, clientId);
    assert.equal((client.stream as tls.TLSSocket).getProtocol(), version);
    await publishAndReceive(client, `devices/${cn}/state`);
    // use_username_as_clientid: the client id it sent is replaced by the certificate's CN
    await brokerLogged(new RegExp(`New client connected from 127\\.0\\.0\\.1:\\d+ as ${cn} \\(.*u'${cn}'\\)`));
    const stats = tpm.tlsStats();
    assert.equal(stats.signatures - before.signatures, 1, 'one TPM signature per full handshake');
    assert.equal(stats.failures, before.failures);
  });
}

test('the SecureContext is created without any private key; the handshake signature comes from TPM2_Sign', async (t) => {
  const created = t.mock.method(tls, 'createSecureContext');
  const sc = await contextFor(tpm, key, 'dev-nokey');
  assert.equal(created.mock.callCount(), 1);
  const options = created.mock.calls[0]!.arguments[0] as Record<string, unknown>;
  assert.deepEqual(Object.keys(options).sort(), ['ca', 'cert'], 'only the certificate and the trust anchors go to Node');
  for (const value of Object.values(options)) assert.doesNotMatch(String(value), /PRIVATE KEY/);

  const before = tpm.commandStats();
  await connect(t, sc);
  const stats = tpm.commandStats();
  assert.equal((stats['tls.Sign'] ?? 0) - (before['tls.Sign'] ?? 0), 1);
  assert.equal((stats['tls.ContextLoad'] ?? 0) - (before['tls.ContextLoad'] ?? 0), 1);
  assert.equal((stats['tls.FlushContext'] ?? 0) - (before['tls.FlushContext'] ?? 0), 1);
  assert.equal(stats.Sign ?? 0, before.Sign ?? 0, 'the queue did not sign: the TLS path counts apart');

  // The same certificate without the TPM key gets no session: the broker requires the key's signature.
  const keyless = tls.createSecureContext({ cert: await ca.issueForTpmKey(key, 'dev-nokey'), ca: ca.caPem });
  await connectFails(keyless);
});

test('five mqtt.js reconnects in a row each sign once in the TPM and leave no transient object behind', async (t) => {
  const sc = await contextFor(tpm, key, 'dev-reconnect');
  const before = tpm.tlsStats();
  const client = mqtt.connect(broker.url, {
    secureContext: sc,
    clientId: 'cid-reconnect',
    protocolVersion: 5,
    reconnectPeriod: 20,
  } as mqtt.IClientOptions);
  t.after(() => client.endAsync(true));
  let connects = 0;
  await new Promise<void>((resolve, reject) => {
    client.on('error', reject);
    client.on('connect', () => {
      if (++connects === 5) resolve();
      else client.stream.destroy(); // drop the TCP connection: mqtt.js reconnects with a full handshake
    });
  });
  const stats = tpm.tlsStats();
  assert.equal(stats.signatures - before.signatures, 5);
  assert.equal(stats.failures, before.failures);
  assert.equal(stats.commands.ContextLoad! - before.commands.ContextLoad!, 5);
  assert.equal(stats.commands.FlushContext! - before.commands.FlushContext!, 5);
  assert.equal(stats.commands.CreatePrimary, before.commands.CreatePrimary, 'the saved context sufficed: no SRK was needed');
  assert.equal(await tpm.transientHandleCount(), 0);
  assert.equal(await transientHandleCountViaTools(swtpm.tcti), 0);
});

test('a handshake while a batch holds three objects fails cleanly (or works) and leaks nothing', async (t) => {
  const sc = await contextFor(tpm, key, 'dev-busy');
  const ak = await tpm.createAttestationKey();
  const before = tpm.tlsStats();
  const outcome = await tpm.batch(async (s) => {
    await s.load(ak); // SRK + AK
    await s.createLoaded(sessionKeyTemplate()); // + a new session key: 3 objects, as in a renewal
    assert.equal(await s.transientHandleCount(), 3);
    const client = mqtt.connect(broker.url, {
      secureContext: sc,
      clientId: 'cid-busy',
      protocolVersion: 5,
      reconnectPeriod: 0,
    } as mqtt.IClientOptions);
    try {
      return await new Promise<'connected' | Error>((resolve) => {
        client.once('connect', () => resolve('connected'));
        client.once('error', resolve);
      });
    } finally {
      await client.endAsync(true);
    }
  });
  const stats = tpm.tlsStats();
  t.diagnostic(outcome === 'connected' ? 'the handshake worked' : `the handshake failed: ${outcome.message}`);
  if (outcome === 'connected') {
    assert.equal(stats.signatures - before.signatures, 1);
  } else {
    assert.equal(stats.failures - before.failures, 1, `the handshake failed for another reason: ${outcome.message}`);
    assert.equal(stats.lastError?.command, 'Esys_ContextLoad');
    assert.equal(stats.lastError.rc & 0xfff, 0x902, 'TPM_RC_OBJECT_MEMORY');
    assert.equal(stats.commands.CreatePrimary, before.commands.CreatePrimary, 'no rebuild attempt while the TPM is full');
  }
  assert.equal(await tpm.transientHandleCount(), 0);
  // Once the batch is done the same context connects again.
  await connect(t, sc);
  assert.equal(tpm.tlsStats().signatures - stats.signatures, 1);
});

test('handshakes interleaved with queued TPM work all succeed and leave nothing loaded', async (t) => {
  const sc = await contextFor(tpm, key, 'dev-interleaved');
  const before = tpm.tlsStats();
  const digest = Buffer.alloc(32, 7);
  let queued = 0;
  let stop = false;
  // Queued batches (SRK + key loaded, Sign, flushes) run on the thread pool while handshakes sign
  // on the main thread: the ESYS lock serialises them command by command.
  const worker = (async () => {
    while (!stop) {
      await tpm.sign(key, digest);
      queued++;
    }
  })();
  try {
    for (let i = 0; i < 10; i++) {
      const client = await connect(t, sc, `cid-interleaved-${i}`);
      await client.endAsync(true);
    }
  } finally {
    stop = true;
    await worker;
  }
  t.diagnostic(`${queued} queued signatures ran alongside 10 handshakes`);
  assert.ok(queued > 0);
  const stats = tpm.tlsStats();
  assert.equal(stats.signatures - before.signatures, 10);
  assert.equal(stats.failures, before.failures);
  assert.equal(await tpm.transientHandleCount(), 0);
});

test('a context keeps working after its Tpm handle was garbage-collected, and is freed cleanly itself', async (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const own = await startSwtpm();
  t.after(() => own.stop());
  const collected = new Set<string>();
  const registry = new FinalizationRegistry<string>((what) => collected.add(what));
  const settle = async (what: string): Promise<boolean> => {
    for (let i = 0; i < 50 && !collected.has(what); i++) {
      gc();
      await new Promise((r) => setImmediate(r));
    }
    return collected.has(what);
  };

  const addon = loadAddon();
  for (let i = 0; i < 10; i++) {
    gc(); // earlier tests' contexts go first, so the baseline below is stable
    await new Promise((r) => setTimeout(r, 10));
  }
  const live = addon.liveObjects();
  let sc: SecureContext | undefined = await (async () => {
    const ownTpm = await Tpm.open(own.tcti); // never closed: only garbage collection ends it
    registry.register(ownTpm, 'tpm');
    const k = await ownTpm.createSigningKey();
    return contextFor(ownTpm, k, 'dev-gc');
  })();
  assert.equal(await settle('tpm'), true, 'the Tpm object was collected');
  // The key's reference kept the ESYS context open (a bare TLS handshake with the broker; no
  // mqtt client that would keep the context reachable).
  await new Promise<void>((resolve, reject) => {
    const socket = tls.connect({ port: broker.port, host: '127.0.0.1', secureContext: sc });
    socket.once('secureConnect', () => socket.destroy());
    socket.once('error', reject);
    socket.once('close', () => resolve());
  });
  assert.equal(addon.liveObjects().contexts, live.contexts + 1, 'the ESYS context lives on for the key');
  assert.equal(addon.liveObjects().tlsKeys, live.tlsKeys + 1);

  registry.register(sc, 'context');
  sc = undefined;
  assert.equal(await settle('context'), true, 'the SecureContext was collected');
  // Its SSL_CTX, the EVP_PKEY, the key and finally the ESYS context go with it.
  await waitFor('the ESYS context released', () => (gc(), addon.liveObjects().contexts <= live.contexts), {
    timeoutMs: 2000,
    intervalMs: 10,
  }).catch(() => {});
  assert.deepEqual(addon.liveObjects(), live);
  assert.equal(await transientHandleCountViaTools(own.tcti), 0);
});

test('a released key (its blob deleted by a wipe) fails the handshake cleanly', async () => {
  const sc = await contextFor(tpm, key, 'dev-wiped');
  assert.equal(tpm.releaseTlsKey(sc), true);
  assert.equal(tpm.releaseTlsKey(sc), false, 'released once');
  const before = tpm.tlsStats();
  const err = await connectFails(sc);
  assert.match(err.message, /TPM signature failed: the TLS key was released/);
  assert.equal(tpm.tlsStats().failures - before.failures, 1);
  assert.equal(tpm.tlsStats().commands.ContextLoad, before.commands.ContextLoad, 'no TPM command for a released key');
});

test('after a TPM reset the key is rebuilt from its blobs; after the owner hierarchy is cleared the handshake fails cleanly', async (t) => {
  const own = await startSwtpm();
  t.after(() => own.stop());
  const ownTpm = await Tpm.open(own.tcti);
  t.after(() => ownTpm.close());
  const k = await ownTpm.createSigningKey();
  const sc = await contextFor(ownTpm, k, 'dev-reset');
  await connect(t, sc);

  // TPM Reset: the saved context no longer loads; CreatePrimary(SRK) + Load rebuild it and save it again.
  await own.restart();
  await connect(t, sc);
  let stats = ownTpm.tlsStats();
  assert.equal(stats.signatures, 2);
  assert.equal(stats.commands.CreatePrimary, 1);
  assert.equal(stats.commands.Load, 1);
  assert.equal(stats.commands.ContextSave, 1);
  await connect(t, sc);
  assert.equal(ownTpm.tlsStats().commands.CreatePrimary, 1, 'the re-saved context is used again');

  // TPM2_Clear: new owner seeds, so neither the saved context nor the blob loads any more.
  await run('tpm2_clear', ['-T', own.tcti]);
  const err = await connectFails(sc);
  assert.match(err.message, /TPM signature failed: Esys_Load/);
  stats = ownTpm.tlsStats();
  assert.equal(stats.failures, 1);
  assert.equal(stats.lastError?.command, 'Esys_Load');
  assert.match(stats.lastError.text, /integrity/);
  assert.equal(await ownTpm.transientHandleCount(), 0);
  assert.equal(await transientHandleCountViaTools(own.tcti), 0);
});

test('between renewals (SRK and AK resident) a handshake signs in the third slot; after a TPM reset a stale key reloads under the resident SRK', async (t) => {
  const own = await startSwtpm();
  t.after(() => own.stop());
  const ownTpm = await Tpm.open(own.tcti);
  t.after(() => ownTpm.close());
  const ak = await ownTpm.createAttestationKey();
  // What a renewal leaves behind: the SRK and the AK resident, a new key created and its context saved.
  const k = await ownTpm.batch(async (s) => {
    await s.loadResident(ak);
    const key = await s.createLoaded(sessionKeyTemplate());
    await s.contextSave(key);
    return { public: key.public, private: key.private };
  });
  assert.equal(ownTpm.residentObjectCount, 2);
  const queued = ownTpm.commandCount;
  const sc = await contextFor(ownTpm, k, 'dev-resident');
  assert.equal(ownTpm.commandCount, queued, 'the renewal saved the context: no TPM command to build the TLS context');
  await connect(t, sc);
  let stats = ownTpm.tlsStats();
  assert.equal(stats.signatures, 1);
  assert.deepEqual([stats.commands.ContextLoad, stats.commands.Sign, stats.commands.FlushContext], [1, 1, 1]);
  assert.equal(await transientHandleCountViaTools(own.tcti), 2, 'only the residents between handshakes');

  // TPM Reset, then a renewal-like batch recreates the residents (its resident handles are stale: one
  // retry). Now only one slot is free, and the key's saved context no longer loads: it is reloaded
  // under the resident SRK (no CreatePrimary, which would need a second slot).
  await own.restart();
  await ownTpm.batch(async (s) => {
    const a = await s.loadResident(ak);
    await s.quote(a, [{ hashAlg: TPM_ALG.SHA256, pcrs: [0] }], Buffer.alloc(32, 1));
  });
  assert.equal(await ownTpm.transientHandleCount(), 2);
  await connect(t, sc);
  stats = ownTpm.tlsStats();
  assert.equal(stats.signatures, 2);
  assert.equal(stats.failures, 0);
  assert.equal(stats.commands.CreatePrimary, 0, 'the resident SRK was used');
  assert.equal(stats.commands.Load, 1);
  assert.equal(stats.commands.ContextSave, 1);
  await connect(t, sc);
  assert.equal(ownTpm.tlsStats().commands.Load, 1, 'the re-saved context is used again');
  assert.equal(await transientHandleCountViaTools(own.tcti), 2);
  await ownTpm.close();
  assert.equal(await transientHandleCountViaTools(own.tcti), 0, 'close() flushed the residents');
});

test('a context outlives tpm.close(): its handshakes then fail cleanly', async (t) => {
  const own = await startSwtpm();
  t.after(() => own.stop());
  const ownTpm = await Tpm.open(own.tcti);
  const k = await ownTpm.createSigningKey();
  const sc = await contextFor(ownTpm, k, 'dev-closed');
  await ownTpm.close();
  const err = await connectFails(sc);
  assert.match(err.message, /TPM signature failed: the TPM connection is closed/);
  assert.equal(ownTpm.tlsStats().failures, 1);
});

test('refuses a certificate that is not for the TPM key (tpm_tls_key_mismatch) and a restricted key (tpm_bad_argument)', async () => {
  await assert.rejects(tpm.tlsSecureContext({ key, certPem: await ca.issueSoftware('dev-other'), caPem: ca.caPem }), (e: unknown) =>
    isEdgeidError(e, 'tpm_tls_key_mismatch'),
  );
  const ak = await tpm.createAttestationKey();
  await assert.rejects(tpm.tlsSecureContext({ key: ak, certPem: await ca.issueForTpmKey(ak, 'dev-ak'), caPem: ca.caPem }), (e: unknown) =>
    isEdgeidError(e, 'tpm_bad_argument'),
  );
  assert.equal(await tpm.transientHandleCount(), 0);
});

test("Node's tls.SecureContext still exposes its SSL_CTX as context._external, a V8 External (Node internal)", () => {
  const inner = (tls.createSecureContext({}) as unknown as { context?: Record<string, unknown> }).context;
  const where = `Node ${process.version} changed tls.SecureContext internals; agent/tpm/tls.ts and src/tls_key.cc cannot install the TPM key`;
  assert.ok(inner !== undefined && typeof inner === 'object', `${where}: SecureContext.context is missing`);
  assert.ok('_external' in inner, `${where}: context._external is missing`);
  assert.ok(types.isExternal(inner._external), `${where}: context._external is no longer a V8 External`);
});

test('anything but that External is refused with tpm_tls_node_internals_changed, never dereferenced', async () => {
  assert.throws(
    () => sslContextHandle({} as SecureContext),
    (e: unknown) => isEdgeidError(e, 'tpm_tls_node_internals_changed'),
  );
  const addon = loadAddon();
  const ctx = (tpm as unknown as { conn: { ctx: Parameters<typeof addon.tlsStats>[0] } }).conn.ctx;
  for (const notExternal of [{}, 42, null, Buffer.alloc(8)]) {
    assert.throws(
      () => addon.tlsInstallKey(ctx, notExternal, key.public, key.private, srkTemplate(), null),
      (e: unknown) => (e as { code?: string }).code === 'tpm_tls_node_internals_changed',
    );
  }
  assert.equal(
    addon.tlsOpenssl().compatible,
    true,
    `addon built for ${addon.tlsOpenssl().headers}, Node runs ${addon.tlsOpenssl().runtime}`,
  );
});

test('signs SHA-384 and SHA-512 handshake digests when the server asks for them (TLS 1.2)', async (t) => {
  const sc = await contextFor(tpm, key, 'dev-sigalgs', { maxVersion: 'TLSv1.2' });
  for (const sigalgs of ['ECDSA+SHA384', 'ECDSA+SHA512']) {
    let peer = '';
    const server = tls.createServer(
      { key: ca.server.keyPem, cert: ca.server.certPem, ca: ca.caPem, requestCert: true, rejectUnauthorized: true, sigalgs },
      (s) => {
        peer = String(s.getPeerCertificate().subject?.CN);
        s.end();
      },
    );
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    t.after(() => server.close());
    const { port } = server.address() as { port: number };
    await new Promise<void>((resolve, reject) => {
      const c = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', secureContext: sc });
      c.on('error', reject);
      c.on('close', () => resolve());
      c.resume();
    });
    assert.equal(peer, 'dev-sigalgs', `the server verified the ${sigalgs} CertificateVerify`);
  }
});
