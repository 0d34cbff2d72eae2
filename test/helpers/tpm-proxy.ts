/**
 * A TCP proxy on loopback in front of swtpm that stalls, truncates, pads or flips bits of the TPM's
 * responses (tpm-unresponsive.test.ts). It runs in a worker thread: the TLS signing callback talks
 * to the TPM synchronously on the main thread, so a proxy on the main event loop could never answer it.
 *
 * The swtpm TCTI opens one connection per command (and the control channel on the next port, which
 * passes through untouched); the proxy reads the whole response (the size in its header) before it
 * decides what to do with it.
 */
import { EventEmitter, once } from 'node:events';
import { Worker } from 'node:worker_threads';

/** What the proxy does to the TPM's responses. */
export type ProxyMode = 'pass' | 'stall' | 'truncate' | 'pad' | 'flip' | 'flip-code';

const WORKER = `
const net = require('node:net');
const { parentPort, workerData } = require('node:worker_threads');
let mode = 'pass';
const sockets = new Set();
function relay(client, upstreamPort, mangle) {
  const upstream = net.connect(upstreamPort, '127.0.0.1');
  for (const s of [client, upstream]) {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
  }
  client.on('data', (d) => upstream.write(d));
  client.on('close', () => {
    upstream.destroy();
    if (mangle) parentPort.postMessage({ event: 'clientClosed' });
  });
  if (!mangle) {
    upstream.on('data', (d) => client.write(d));
    upstream.on('close', () => client.destroy());
    return;
  }
  let response = Buffer.alloc(0);
  upstream.on('data', (d) => {
    response = Buffer.concat([response, d]);
    if (response.length < 10 || response.length < response.readUInt32BE(2)) return; // tag, size, code
    parentPort.postMessage({ event: 'response', mode });
    if (mode === 'pass') client.end(response);
    else if (mode === 'truncate') client.write(response.subarray(0, response.length - 1)); // and no more
    else if (mode === 'pad') {
      const padded = Buffer.concat([response, Buffer.alloc(16, 0xa5)]);
      padded.writeUInt32BE(padded.length, 2);
      client.end(padded);
    } else if (mode === 'flip') {
      const flipped = Buffer.from(response);
      flipped[1] ^= 0x02; // TPM_ST_NO_SESSIONS 0x8001 -> 0x8003, a tag no response has
      client.end(flipped);
    } else if (mode === 'flip-code') {
      const flipped = Buffer.from(response);
      flipped[8] ^= 0x01; // responseCode TPM_RC_SUCCESS -> 0x100, TPM_RC_INITIALIZE
      client.end(flipped);
    }
    // 'stall': the command was taken and no answer ever comes
  });
}
async function listen() {
  for (;;) {
    const command = net.createServer((c) => relay(c, workerData.port, true));
    await new Promise((r) => command.listen(0, '127.0.0.1', r));
    const port = command.address().port;
    const control = net.createServer((c) => relay(c, workerData.ctrlPort, false));
    const bound = await new Promise((r) => {
      control.once('error', () => r(false));
      control.listen(port + 1, '127.0.0.1', () => r(true));
    });
    if (bound) return { port, servers: [command, control] };
    command.close(); // the next port is taken: try another pair
  }
}
listen().then(({ port, servers }) => {
  parentPort.on('message', (m) => {
    if (m.mode) {
      mode = m.mode;
      parentPort.postMessage({ event: 'mode', mode });
    }
    if (m.close) {
      for (const s of sockets) s.destroy();
      for (const s of servers) s.close();
      parentPort.close();
    }
  });
  parentPort.postMessage({ event: 'listening', port });
});
`;

/** Emits 'response' (a response reached the proxy, forwarded or not) and 'clientClosed' (the TCTI let go of a command connection). */
export class TpmProxy extends EventEmitter {
  private constructor(
    private readonly worker: Worker,
    /** TCTI configuration through the proxy. */
    readonly tcti: string,
  ) {
    super();
    worker.on('message', (m: { event: string }) => this.emit(m.event, m));
  }

  static async start(upstream: { port: number; ctrlPort: number }): Promise<TpmProxy> {
    const worker = new Worker(WORKER, { eval: true, workerData: { port: upstream.port, ctrlPort: upstream.ctrlPort } });
    const [m] = (await once(worker, 'message')) as [{ event: string; port: number }];
    return new TpmProxy(worker, `swtpm:host=127.0.0.1,port=${m.port}`);
  }

  /** Switches the mode; resolves when the proxy applies it to the next response. */
  async setMode(mode: ProxyMode): Promise<void> {
    const applied = once(this, 'mode');
    this.worker.postMessage({ mode });
    await applied;
  }

  async close(): Promise<void> {
    this.worker.postMessage({ close: true });
    await once(this.worker, 'exit');
  }
}
