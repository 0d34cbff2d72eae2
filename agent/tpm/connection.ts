/**
 * One open TPM: the addon, its ESYS context and the commands sent through it. Every TPM command
 * of the queue (index.ts) goes through `call()`, which turns TSS failures into TpmError and counts
 * commands by name. Facts about the TPM that do not change while the agent runs (its EKs, its NV
 * buffer size) are cached here, per connection.
 */
import type { EkKind } from './ek.js';
import type { EndorsementKey } from './ek-discovery.js';
import { toTpmError } from './errors.js';
import type { NativeAddon, NativeContext } from './native.js';

export class TpmConnection {
  private readonly stats = new Map<string, number>();
  /** EKs found by ek-discovery.ts, by kind. */
  readonly ekCache = new Map<EkKind, EndorsementKey>();
  /** TPM_PT_NV_BUFFER_MAX, once read. */
  nvBufferMax: number | undefined;

  constructor(
    readonly addon: NativeAddon,
    readonly ctx: NativeContext,
  ) {}

  /** ESYS_TR values of the hierarchies. */
  get esysTr(): NativeAddon['ESYS_TR'] {
    return this.addon.ESYS_TR;
  }

  /** Commands sent through the queue; the TLS signing path is counted apart (tls.* in commandStats). */
  get commandCount(): number {
    return this.addon.commandCount(this.ctx);
  }

  commandStats(): Record<string, number> {
    const out: Record<string, number> = Object.fromEntries(this.stats);
    for (const [name, n] of Object.entries(this.addon.tlsStats(this.ctx).commands)) {
      if (n > 0) out[`tls.${name}`] = n;
    }
    return out;
  }

  /**
   * Runs one addon primitive: TPM failures become TpmError; commands are counted under `name` (and
   * into `into`, a batch's own statistics).
   */
  async call<T>(name: string, fn: (addon: NativeAddon, ctx: NativeContext) => Promise<T>, into?: Map<string, number>): Promise<T> {
    const before = this.addon.commandCount(this.ctx);
    try {
      return await fn(this.addon, this.ctx);
    } catch (e) {
      throw toTpmError(e);
    } finally {
      const n = this.addon.commandCount(this.ctx) - before;
      if (n > 0) {
        this.stats.set(name, (this.stats.get(name) ?? 0) + n);
        into?.set(name, (into.get(name) ?? 0) + n);
      }
    }
  }
}
