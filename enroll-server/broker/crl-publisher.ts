/**
 * Puts a CRL where the broker reads it (atomically: temp file, fsync, rename, fsync dir) and then
 * runs the configured reload command. Mosquitto 2.0 reads `crlfile` when its listener starts and
 * on SIGHUP (`systemctl reload mosquitto`, sessions kept); when it runs is crl-schedule.ts's call.
 */
import 'reflect-metadata';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { X509Crl } from '@peculiar/x509';
import { promisify } from 'node:util';
import { writeFileAtomic } from '../files.js';

const run = promisify(execFile);

export interface CrlPublisherOptions {
  /** The broker's `crlfile` (PEM). */
  crlFile: string;
  /** argv of the reload command; none means "write only". Runs without a shell. */
  reloadCommand?: string[];
  reloadTimeoutMs?: number;
}

export interface CrlPublishResult {
  writtenAt: Date;
  reloadedAt: Date | null;
  reloadError: string | null;
}

export class CrlPublisher {
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly opts: CrlPublisherOptions) {}

  /**
   * Writes the CRL and reloads the broker. Calls are serialised so an older CRL can never
   * overwrite a newer one. A failing reload is reported, not thrown: the CRL file is in place and
   * the next reload picks it up; the caller audits the failure.
   */
  publish(crlPem: string): Promise<CrlPublishResult> {
    const next = this.chain.then(() => this.doPublish(crlPem));
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async doPublish(crlPem: string): Promise<CrlPublishResult> {
    // The CRL is public data; the broker (user mosquitto) must be able to read it.
    writeFileAtomic(this.opts.crlFile, crlPem, 0o644);
    const writtenAt = new Date();
    const cmd = this.opts.reloadCommand;
    if (!cmd || cmd.length === 0) return { writtenAt, reloadedAt: null, reloadError: null };
    // Mosquitto 2.0.11 logs a crlfile it cannot parse at SIGHUP and then accepts revoked
    // certificates: never ask for a reload unless the file in place is a CRL
    try {
      new X509Crl(readFileSync(this.opts.crlFile, 'utf8'));
    } catch (e) {
      return {
        writtenAt,
        reloadedAt: null,
        reloadError: `not reloading: ${this.opts.crlFile} is not a readable CRL (${(e as Error).message.slice(0, 200)})`,
      };
    }
    const [file, ...args] = cmd as [string, ...string[]];
    try {
      await run(file, args, { timeout: this.opts.reloadTimeoutMs ?? 30_000 });
      return { writtenAt, reloadedAt: new Date(), reloadError: null };
    } catch (e) {
      const err = e as { code?: unknown; stderr?: string; message: string };
      return {
        writtenAt,
        reloadedAt: null,
        reloadError: `${file} failed: ${String(err.stderr || err.message)
          .trim()
          .slice(0, 500)}`,
      };
    }
  }
}
