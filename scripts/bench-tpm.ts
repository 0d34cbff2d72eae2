/**
 * TPM operation latency through the addon on a fresh swtpm: median and p95 per operation, and the
 * TPM commands each one issues (flushes included). Prints a markdown table for BENCHMARKS.md.
 *   node --import tsx scripts/bench-tpm.ts [--iterations N]
 * Each operation is the agent-level call (one batch: SRK CreatePrimary, loads, the command, flushes).
 * The TLS rows use tpm.tlsSecureContext against a local Node TLS server that requires a client
 * certificate: a full handshake (TLS 1.3) and the TPM sign callback alone (ContextLoad, Sign, Flush).
 */
import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import tls from 'node:tls';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { makeCredential } from '../protocol/tpm/makecredential.js';
import { TPM_ALG, objectName, parsePublic, sessionKeyTemplate } from '../protocol/tpm/index.js';
import { Tpm } from '../agent/tpm/index.js';
import { makeTestCa } from './harness/pki.js';
import { startSwtpm } from './harness/swtpm.js';

const { values } = parseArgs({ options: { iterations: { type: 'string', default: '50' } } });
const iterations = Number(values.iterations);
if (!Number.isInteger(iterations) || iterations < 1) throw new Error('--iterations must be a positive integer');

function quantile(sorted: number[], q: number): number {
  // Nearest-rank quantile.
  const rank = Math.max(1, Math.ceil(q * sorted.length));
  return sorted[rank - 1]!;
}

interface Row {
  name: string;
  median: number;
  p95: number;
  commands: number;
}

function tlsCommandCount(tpm: Tpm): number {
  return Object.values(tpm.tlsStats().commands).reduce((a, b) => a + b, 0);
}

/** `op` returns its own duration in ms (or undefined: the wall time counts). */
async function measure(tpm: Tpm, name: string, op: () => Promise<number | unknown>): Promise<Row> {
  await op(); // warm-up
  const times: number[] = [];
  const before = tpm.commandCount + tlsCommandCount(tpm);
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now();
    const own = await op();
    times.push(typeof own === 'number' ? own : performance.now() - t0);
  }
  const commands = (tpm.commandCount + tlsCommandCount(tpm) - before) / iterations;
  times.sort((a, b) => a - b);
  return { name, median: quantile(times, 0.5), p95: quantile(times, 0.95), commands };
}

/** A local TLS server that requires a client certificate from `caPem`; one handshake per connection. */
async function tlsServer(ca: Awaited<ReturnType<typeof makeTestCa>>): Promise<{ port: number; close(): void }> {
  const server = tls.createServer(
    { key: ca.server.keyPem, cert: ca.server.certPem, ca: ca.caPem, requestCert: true, rejectUnauthorized: true },
    (s) => s.end(),
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { port: (server.address() as { port: number }).port, close: () => server.close() };
}

function handshake(port: number, secureContext: tls.SecureContext): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', secureContext });
    socket.once('secureConnect', () => socket.destroy());
    socket.once('error', reject);
    socket.once('close', () => resolve());
  });
}

const swtpm = await startSwtpm();
try {
  const tpm = await Tpm.open(swtpm.tcti);
  try {
    const ak = await tpm.createAttestationKey();
    const key = await tpm.createSigningKey();
    const selection = [{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }];
    const nonce = randomBytes(32);
    const akName = objectName(parsePublic(ak.public));
    const eks = { rsa: await tpm.endorsementKey('rsa'), ecc: await tpm.endorsementKey('ecc') };
    const credentialFor = (kind: 'rsa' | 'ecc') => makeCredential(parsePublic(eks[kind].public), akName, randomBytes(32));

    const rows: Row[] = [];
    rows.push(await measure(tpm, 'createSigningKey', () => tpm.createSigningKey()));
    rows.push(await measure(tpm, 'quote (8 PCRs)', () => tpm.quote(ak, selection, nonce)));
    rows.push(await measure(tpm, 'certify', () => tpm.certify(key, ak, nonce)));
    rows.push(await measure(tpm, 'sign (SHA-256 digest)', () => tpm.sign(key, nonce)));
    for (const kind of ['rsa', 'ecc'] as const) {
      const label = kind === 'rsa' ? 'RSA-2048 EK' : 'ECC P-384 EK';
      rows.push(
        await measure(tpm, `activateCredential (${label})`, () => {
          const cred = credentialFor(kind);
          return tpm.activateCredential(ak, cred.credentialBlob, cred.encryptedSecret, kind);
        }),
      );
    }
    // What a renewal needs in one batch: new session key, certify it, quote, PCR values, CSR signature.
    rows.push(
      await measure(tpm, 'renewal batch (CreateLoaded + certify + quote + PCR read + sign)', () =>
        tpm.batch(async (s) => {
          const loadedAk = await s.load(ak);
          const sessionKey = await s.createLoaded(sessionKeyTemplate());
          await s.certify(sessionKey, loadedAk, nonce);
          await s.quote(loadedAk, selection, nonce);
          await s.readPcrs(selection);
          await s.sign(sessionKey, nonce);
        }),
      ),
    );

    // TLS with the key in the TPM: one TPM signature per full handshake, on the main thread.
    const ca = await makeTestCa();
    const server = await tlsServer(ca);
    try {
      const secureContext = await tpm.tlsSecureContext({ key, certPem: await ca.issueForTpmKey(key, 'bench'), caPem: ca.caPem });
      rows.push(await measure(tpm, 'tls handshake with the TPM key (TLS 1.3, local server)', () => handshake(server.port, secureContext)));
      rows.push(
        await measure(tpm, 'tls sign callback alone (ContextLoad + Sign + Flush)', async () => {
          await handshake(server.port, secureContext);
          return tpm.tlsStats().lastSignMicros / 1000;
        }),
      );
      if (tpm.tlsStats().failures > 0) throw new Error(`TLS signatures failed: ${JSON.stringify(tpm.tlsStats().lastError)}`);
    } finally {
      server.close();
    }

    const info = await tpm.info();
    console.log(
      `TPM latency through the edgeid addon on swtpm (${info.manufacturer} ${info.vendor} ${info.firmwareVersion}, TCP loopback), ${iterations} iterations each after one warm-up.`,
    );
    console.log('Each operation is one agent-level call: SRK CreatePrimary, loads, the command, flushes.');
    console.log(
      'The tls rows: a full TLS 1.3 handshake with tpm.tlsSecureContext against a local server that requires a client certificate, and the TPM sign callback inside it (ContextLoad + Sign + FlushContext, main thread).',
    );
    console.log('');
    console.log('| operation | median (ms) | p95 (ms) | TPM commands |');
    console.log('|---|---:|---:|---:|');
    for (const r of rows) console.log(`| ${r.name} | ${r.median.toFixed(2)} | ${r.p95.toFixed(2)} | ${r.commands.toFixed(0)} |`);
  } finally {
    await tpm.close();
  }
} finally {
  await swtpm.stop();
}
