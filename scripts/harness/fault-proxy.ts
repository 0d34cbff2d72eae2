/**
 * A TCP proxy on loopback that breaks the network between a client and a server on demand, for the
 * fault tests. It forwards bytes and understands nothing (TLS passes through untouched), in one of
 * four modes, switchable at any time:
 *
 *   - 'pass'      forwards both ways;
 *   - 'reset'     resets every open connection (TCP RST) and every new one as soon as it is
 *                 accepted: what a client sees when a firewall or a dead peer refuses it;
 *   - 'blackhole' open connections stop forwarding in both directions, new ones are accepted and
 *                 never answered, nothing is ever closed: a cut cable or a silently dropping
 *                 firewall. Only the client's own timeouts end such a connection; a connection
 *                 once blackholed stays so even after the mode returns to 'pass';
 *   - 'hold'      forwards the client's bytes, keeps the server's (counted in `heldBytes`): the
 *                 request reaches the server, the answer does not reach the client. When the server
 *                 side closes meanwhile (the server was killed), the client is reset and what was
 *                 held is discarded.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';

export type FaultMode = 'pass' | 'reset' | 'blackhole' | 'hold';

interface Conn {
  client: net.Socket;
  upstream: net.Socket | null;
  mode: FaultMode;
}

export interface FaultProxyStats {
  /** Connections accepted. */
  accepted: number;
  /** Connections reset by the proxy (mode 'reset', or the server side gone while holding). */
  resets: number;
  /** Connections accepted or caught in mode 'blackhole'. */
  blackholed: number;
  /** Bytes of the server held back in mode 'hold'. */
  heldBytes: number;
}

/** Events: 'held' (bytes) whenever the server's bytes are held back. */
export class FaultProxy extends EventEmitter {
  private readonly conns = new Set<Conn>();
  private modeValue: FaultMode = 'pass';
  private readonly counters: FaultProxyStats = { accepted: 0, resets: 0, blackholed: 0, heldBytes: 0 };

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    private readonly target: { host: string; port: number },
  ) {
    super();
  }

  /** Listens on a free loopback port and forwards to `targetPort` on loopback. */
  static async start(targetPort: number, targetHost = '127.0.0.1'): Promise<FaultProxy> {
    let proxy: FaultProxy | null = null;
    const server = net.createServer((sock) => proxy?.accept(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    proxy = new FaultProxy(server, (server.address() as net.AddressInfo).port, { host: targetHost, port: targetPort });
    return proxy;
  }

  get mode(): FaultMode {
    return this.modeValue;
  }

  stats(): FaultProxyStats {
    return { ...this.counters };
  }

  /** Switches the mode for new connections and, as described above, for open ones. */
  setMode(mode: FaultMode): void {
    this.modeValue = mode;
    for (const c of this.conns) {
      if (c.mode === 'blackhole') continue; // stays silent: only the client's timeout ends it
      if (mode === 'reset') this.reset(c);
      else if (mode === 'blackhole') {
        c.mode = 'blackhole';
        this.counters.blackholed++;
      } else c.mode = mode;
    }
  }

  async close(): Promise<void> {
    for (const c of this.conns) {
      c.client.destroy();
      c.upstream?.destroy();
    }
    this.conns.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    this.counters.accepted++;
    const c: Conn = { client, upstream: null, mode: this.modeValue };
    client.on('error', () => {});
    if (c.mode === 'reset') {
      this.counters.resets++;
      client.resetAndDestroy();
      return;
    }
    this.conns.add(c);
    client.on('close', () => {
      this.conns.delete(c);
      c.upstream?.destroy();
    });
    if (c.mode === 'blackhole') {
      this.counters.blackholed++;
      client.resume(); // read and drop whatever comes, answer nothing
      return;
    }
    const up = net.connect(this.target.port, this.target.host);
    c.upstream = up;
    up.on('error', () => {});
    client.on('data', (d: Buffer) => {
      if (c.mode !== 'blackhole') up.write(d);
    });
    client.on('end', () => {
      if (c.mode !== 'blackhole') up.end();
    });
    up.on('data', (d: Buffer) => {
      if (c.mode === 'blackhole') return;
      if (c.mode === 'hold') {
        this.counters.heldBytes += d.length;
        this.emit('held', d.length);
        return;
      }
      client.write(d);
    });
    up.on('end', () => {
      if (c.mode === 'pass') client.end();
    });
    up.on('close', (hadError) => {
      if (c.mode === 'blackhole') return;
      if (c.mode === 'hold' || hadError) this.reset(c);
      else client.end();
    });
  }

  private reset(c: Conn): void {
    this.conns.delete(c);
    this.counters.resets++;
    if (!c.client.destroyed) c.client.resetAndDestroy();
    c.upstream?.destroy();
  }
}
