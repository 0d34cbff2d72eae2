import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RevokeReason } from '../../protocol/api.js';
import { FIRST_ISSUING, type CrlData, type IssuingCa } from '../ca/ca.js';
import { storageFailure, writeFileAtomic } from '../files.js';
import { runHooks, type ServerContext } from './context.js';

/** Validity of the long-lived copy handed to onCrlChanged hooks (see build). */
export const LONG_LIVED_CRL_SECONDS = 30 * 86400;
/** How often get() looks at most whether another instance on the database built a CRL (ms). */
export const PEER_CHECK_MS = 2000;

/**
 * The CRL of the issuing CA: regenerated at once after every revocation and before half of its
 * validity has passed; written atomically to data/crl.der and data/crl.pem; every new CRL goes to
 * the onCrlChanged hooks. Regenerations are serialised so CRL numbers never repeat.
 *
 * Several instances on one database: each builds its own CRL from the shared revocations, with
 * numbers reserved in the store. An instance that revokes builds at once; the others notice on
 * their next get() (at most every PEER_CHECK_MS) that the shared counter moved past their own
 * last number, and build again if the revoked set differs from the one they serve (a peer's
 * periodic refresh with the same set changes nothing here, so instances never set each other off).
 */
export class CrlService {
  private current: CrlData | null = null;
  /** The current CRL of each issuing CA still valid, by its name (GET /v1/crl/NAME). */
  private byIssuer = new Map<string, CrlData>();
  /** The long-lived copy of the current CRL (see build). */
  longLived: CrlData | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  /** The last build failed or could not write its files (data dir full or read-only): build again on the next get(). */
  private filesStale = false;
  /** The highest CRL number this instance reserved or saw in the store. */
  private lastNumber = 0n;
  /** The revoked serials of the current CRL (sorted, comma-joined). */
  private servedSerials = '';
  private lastPeerCheck = Number.NEGATIVE_INFINITY;

  constructor(private readonly ctx: ServerContext) {}

  /** The current CRL, regenerated first if it is missing or past half of its validity. */
  async get(): Promise<CrlData> {
    const c = this.current;
    const half = this.ctx.config.crlValidity * 500;
    const fresh = c !== null && c.nextUpdate.getTime() - half > this.ctx.now();
    if (fresh && !this.filesStale) return (await this.peerRevoked()) ? this.regenerate('revocations from another instance') : c;
    // still unwritten (storage full or read-only): the current CRL is served from memory meanwhile
    if (fresh) return this.regenerate('write again').catch((e: unknown) => (storageFailure(e) ? c : Promise.reject(e)));
    return this.regenerate('refresh');
  }

  /** Whether another instance built a CRL since this one last did, and the revoked set differs from ours. */
  private async peerRevoked(): Promise<boolean> {
    const t = performance.now();
    if (t - this.lastPeerCheck < PEER_CHECK_MS) return false;
    this.lastPeerCheck = t;
    const stored = BigInt((await this.ctx.store.getMeta('crl_number')) ?? '0');
    if (stored <= this.lastNumber) return false;
    this.lastNumber = stored;
    const serials = (await this.revokedEntries()).map((e) => e.serial.toLowerCase()).sort();
    return serials.join(',') !== this.servedSerials;
  }

  private async revokedEntries(): Promise<{ serial: string; revokedAt: Date; reason: RevokeReason }[]> {
    const { ctx } = this;
    const entries: { serial: string; revokedAt: Date; reason: RevokeReason }[] = (await ctx.store.listRevokedUnexpired(ctx.now())).map(
      (c) => ({
        serial: c.serial,
        revokedAt: new Date(c.revokedAt!),
        reason: c.reason ?? 'unspecified',
      }),
    );
    // removed monitoring tools' certificates (services/broker.ts): revoked until they expire
    for (const m of await ctx.store.listRemovedMonitorsUnexpired(ctx.now()))
      entries.push({ serial: m.serial, revokedAt: new Date(m.removedAt!), reason: 'cessation-of-operation' });
    return entries;
  }

  /** The current CRL of issuing CA `name` (null: no such CA, or it expired). */
  async getFor(name: string): Promise<CrlData | null> {
    await this.get();
    return this.byIssuer.get(name) ?? null;
  }

  regenerate(why: string): Promise<CrlData> {
    const run = this.chain.then(() =>
      this.build(why).catch((e: unknown) => {
        // the next get() builds again: a failed build (e.g. a full data dir after a revocation
        // committed) must not leave an older CRL served as the current one
        this.filesStale = true;
        throw e;
      }),
    );
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async build(why: string): Promise<CrlData> {
    const { ctx } = this;
    // two numbers (the short- and the long-lived CRL), reserved in the store before anything is
    // built: a CRL number never repeats (RFC 5280 §5.2.3), also across several server instances
    // on one database; a build that fails leaves a gap, which RFC 5280 allows
    const number = await ctx.store.nextCrlNumbers(2);
    const entries = await this.revokedEntries();
    // One CRL per issuing CA whose certificate is still valid (after a rotation the old CA's
    // certificates live on: RFC 5280 §6.3 wants a CRL from each certificate's own issuer, and
    // OpenSSL with CRL checking refuses a certificate whose issuer has no CRL). Each lists every
    // revoked serial: serials are 128 random bits, so one issuer's serial never names another's
    // certificate, and any one of them is the complete revoked set for readers that parse the first.
    const now = ctx.now();
    const issuers: IssuingCa[] = ctx.ca.issuing.filter((i) => i.cert.notAfter.getTime() > now);
    if (issuers.length === 0) issuers.push(ctx.ca.active);
    const short: CrlData[] = [];
    const long: CrlData[] = [];
    for (const issuer of issuers) {
      short.push(await ctx.ca.createCrl({ number, validitySeconds: ctx.config.crlValidity, entries, issuer }));
      // The same entries with a long validity (and the next number), for readers that load a CRL
      // file once and keep it (Mosquitto re-reads its crlfile only on SIGHUP or restart, which the
      // broker integration batches), and OpenSSL refuses every client once a loaded CRL is past
      // nextUpdate.
      long.push(await ctx.ca.createCrl({ number: number + 1n, validitySeconds: LONG_LIVED_CRL_SECONDS, entries, issuer }));
    }
    // /v1/crl (the distribution point of the first issuing CA's certificates) serves the first CA's CRL
    const at = Math.max(
      0,
      issuers.findIndex((i) => i.name === FIRST_ISSUING),
    );
    // several CRLs in one PEM file: Mosquitto's crlfile loads them all (X509_load_crl_file, PEM)
    const crl: CrlData = short[at]!;
    const longLived: CrlData = { ...long[at]!, pem: long.map((c) => c.pem).join('') };
    // the CRLs are served from memory; if the files cannot be written (data dir full or
    // read-only) they stay as they were, the error goes to the caller, and the next get() builds
    // and writes again (with new numbers)
    this.byIssuer = new Map(issuers.map((i, k) => [i.name, short[k]!]));
    this.current = crl;
    this.longLived = longLived;
    writeFileAtomic(join(ctx.config.dataDir, 'crl.der'), crl.der, 0o644);
    writeFileAtomic(join(ctx.config.dataDir, 'crl.pem'), short.map((c) => c.pem).join(''), 0o644);
    this.filesStale = false;
    ctx.log.info({ crlNumber: number.toString(), entries: entries.length, issuers: issuers.length, why }, 'CRL generated');
    const serials = entries.map((e) => e.serial.toLowerCase()).sort();
    this.servedSerials = serials.join(',');
    if (number + 1n > this.lastNumber) this.lastNumber = number + 1n;
    await runHooks(ctx, 'onCrlChanged', { ...crl, longLived, serials }, null);
    return crl;
  }

  /** The CRL files on disk, if any (for tools that run without the server). */
  static readFromDataDir(dataDir: string): Buffer | null {
    const p = join(dataDir, 'crl.der');
    return existsSync(p) ? readFileSync(p) : null;
  }
}
