/**
 * Issuance with the issuing CA key in a PKCS#11 token (SoftHSM2, a token of its own in a temp
 * dir) beside the file key: device certificates issued one after another (latency median/p95,
 * certificates per second), issued with 16 in flight (the token key signs one at a time through
 * one PKCS#11 session, enroll-server/ca/keys.ts), and a CRL of 1,000 entries. The certificates are
 * those the server issues (CertificateAuthority.issueDevice), fresh P-256 device keys made up front.
 * Prints a markdown table (for BENCHMARKS.md).
 *   node --import tsx scripts/bench-hsm.ts [--certs N]   (default 500)
 */
import 'reflect-metadata';
import { generateKeyPairSync } from 'node:crypto';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { CertificateAuthority } from '../enroll-server/ca/ca.js';
import { closeIssuerSigner, createTokenKey, openIssuerSigner, type CaSigner } from '../enroll-server/ca/keys.js';
import { randomSerial } from '../enroll-server/ca/ca.js';
import { tmpDir } from './harness/fs.js';
import { createSoftHsmToken } from './harness/softhsm.js';
import { rm } from 'node:fs/promises';

const argv = process.argv.slice(2);
const N = Number(argv[argv.indexOf('--certs') + 1] ?? 500) || 500;
const IN_FLIGHT = 16;

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;

type Result = { p50: number; p95: number; seqRate: number; parRate: number; crl: number; sign50: number };

/**
 * Both CAs measured in alternation (certificate by certificate, then block by block) so that the
 * load of a shared machine falls on both alike.
 */
async function measure(
  cas: [CertificateAuthority, CertificateAuthority],
  signers: [CaSigner, CaSigner],
  spkis: Buffer[],
): Promise<[Result, Result]> {
  const issue = (ca: CertificateAuthority, spki: Buffer, i: number) =>
    ca.issueDevice({ deviceId: `dev-${i}`, zone: 'default', spki, lifetimeSeconds: 3600, crlUrl: 'https://edgeid.local/v1/crl' });
  const out: Result[] = [];
  const lat: [number[], number[]] = [[], []];
  const busy: [number, number] = [0, 0];
  for (let i = 0; i < 20; i++) for (const ca of cas) await issue(ca, spkis[i]!, i); // warm-up
  for (let i = 0; i < N; i++)
    for (const k of [0, 1] as const) {
      const s = performance.now();
      await issue(cas[k], spkis[i]!, i);
      const d = performance.now() - s;
      lat[k].push(d);
      busy[k] += d;
    }
  const par: [number, number] = [0, 0];
  const BLOCK = Math.max(IN_FLIGHT, Math.floor(N / 5));
  for (let from = 0; from < N; from += BLOCK)
    for (const k of [0, 1] as const) {
      const to = Math.min(N, from + BLOCK);
      let next = from;
      const t = performance.now();
      await Promise.all(
        Array.from({ length: IN_FLIGHT }, async () => {
          while (next < to) {
            const i = next++;
            await issue(cas[k], spkis[i]!, i);
          }
        }),
      );
      par[k] += performance.now() - t;
    }
  const entries = Array.from({ length: 1000 }, () => ({
    serial: randomSerial(),
    revokedAt: new Date(),
    reason: 'key-compromise' as const,
  }));
  const crl: [number[], number[]] = [[], []];
  for (let i = 0; i < 10; i++)
    for (const k of [0, 1] as const) {
      const s = performance.now();
      await cas[k].createCrl({ number: BigInt(i + 1), validitySeconds: 3600, entries });
      crl[k].push(performance.now() - s);
    }
  // the signature alone: C_Sign in the token vs Node's ECDSA (a 300-byte TBS-sized message)
  const sign: [number[], number[]] = [[], []];
  const msg = Buffer.alloc(300, 7);
  for (let i = 0; i < 200; i++)
    for (const k of [0, 1] as const) {
      const s = performance.now();
      await signers[k].crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, signers[k].key, msg);
      sign[k].push(performance.now() - s);
    }
  for (const k of [0, 1] as const) {
    lat[k].sort((a, b) => a - b);
    crl[k].sort((a, b) => a - b);
    sign[k].sort((a, b) => a - b);
    out.push({
      p50: pct(lat[k], 50),
      p95: pct(lat[k], 95),
      seqRate: N / (busy[k] / 1000),
      parRate: N / (par[k] / 1000),
      crl: pct(crl[k], 50),
      sign50: pct(sign[k], 50),
    });
  }
  return [out[0]!, out[1]!];
}

async function main(): Promise<void> {
  const spkis = Array.from({ length: N + 20 }, () =>
    generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' }),
  );
  const fileDir = await tmpDir('edgeid-bench-hsm-file-');
  const tok = await createSoftHsmToken();
  process.env.SOFTHSM2_CONF = tok.env.SOFTHSM2_CONF;
  let signer: CaSigner | null = null;
  try {
    const fileSigner = await openIssuerSigner({ kind: 'file', path: path.join(fileDir, 'issuing.key') });
    const fileCa = await CertificateAuthority.open({ dir: path.join(fileDir, 'ca'), hostnames: [], issuer: fileSigner });
    const key = await createTokenKey({ module: tok.module, token: tok.label, keyLabel: 'bench-issuing', pin: { file: tok.pinFile } });
    signer = key.signer;
    const hsmCa = await CertificateAuthority.open({ dir: path.join(tok.dir, 'data', 'ca'), hostnames: [], issuer: signer });
    const [file, hsm] = await measure([fileCa, hsmCa], [fileSigner, signer], spkis);
    const row = (name: string, r: Result) =>
      `| ${name} | ${r.sign50.toFixed(2)} ms | ${r.p50.toFixed(2)} ms | ${r.p95.toFixed(2)} ms | ${r.seqRate.toFixed(0)} /s | ${r.parRate.toFixed(0)} /s | ${r.crl.toFixed(0)} ms |`;
    console.log(
      `\n### Issuing CA key: file vs PKCS#11 token (SoftHSM2 ${await softhsmVersion()}; ${N} device certificates each way, measured in alternation; P-256, ECDSA-SHA256)\n`,
    );
    console.log(
      '| issuing key | signature alone, median | issue one certificate, median | p95 | one after another | 16 in flight | CRL of 1,000 entries (median of 10) |',
    );
    console.log('|---|---|---|---|---|---|---|');
    console.log(row('file (PKCS#8 in data/ca, Node WebCrypto)', file));
    console.log(row('PKCS#11 token (SoftHSM2, node-webcrypto-p11, one session)', hsm));
  } finally {
    if (signer) await closeIssuerSigner(signer);
    await rm(fileDir, { recursive: true, force: true });
    await rm(tok.dir, { recursive: true, force: true });
  }
}

async function softhsmVersion(): Promise<string> {
  const { execFile } = await import('node:child_process');
  return new Promise((resolve) => execFile('softhsm2-util', ['--version'], (_e, out) => resolve(String(out).trim() || '?')));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
