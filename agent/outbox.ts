/**
 * Durable, bounded MQTT outbox. Every message handed to `agent.publish` is written
 * to disk (one file per message, atomically) before it is sent, and removed only when the broker
 * acknowledged it (PUBACK, QoS 1). After a crash, a reconnect or a certificate switch, whatever
 * is still here is sent again: delivery is at least once, and each message carries an id so the
 * receiver can drop duplicates.
 *
 * Bounded, by one policy only: when accepting a message would exceed `maxMessages` or `maxBytes`,
 * the OLDEST messages are dropped — just enough of them — and counted (the count survives restarts
 * and is shown by `status` as "dropped"). A single message larger than `maxBytes` could never fit:
 * it is refused (`outbox_message_too_large`) before anything is evicted or written, so one
 * oversized publish can never cost the backlog.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { EdgeidError } from '../protocol/errors/index.js';
import { DIR_MODE, removeStaleTempFiles, writeFileAtomic } from './state/fs.js';

export interface OutboxMessage {
  /** Unique id for de-duplication by the receiver. */
  id: string;
  /** Monotonic sequence number; delivery order. */
  seq: number;
  topic: string;
  payload: Buffer;
  /** ISO time the message was accepted. */
  createdAt: string;
}

export interface OutboxStats {
  pending: number;
  pendingBytes: number;
  /** Dropped because the outbox was full (oldest first), since the outbox was created. */
  dropped: number;
  /**
   * Dropped because the broker refuses a packet that large (the Maximum Packet Size of its CONNACK,
   * MQTT 5 §3.2.2.3.6): such a message could never be delivered. Since the outbox was created.
   */
  tooLarge: number;
  /** Acknowledged by the broker since this process started. */
  delivered: number;
  maxMessages: number;
}

export interface OutboxOptions {
  maxMessages?: number;
  maxBytes?: number;
}

const STATS_FILE = 'stats.json';
const MSG_RE = /^(\d{16})-([0-9a-f-]{36})\.json$/;

function fileName(m: { seq: number; id: string }): string {
  return `${String(m.seq).padStart(16, '0')}-${m.id}.json`;
}

export class Outbox {
  private readonly messages = new Map<string, OutboxMessage>(); // insertion order = seq order
  private bytes = 0;
  private dropped = 0;
  private tooLarge = 0;
  private delivered = 0;
  private nextSeq = 1;
  private tail: Promise<void> = Promise.resolve();
  private readonly maxMessages: number;
  private readonly maxBytes: number;

  private constructor(
    readonly dir: string,
    opts: OutboxOptions,
  ) {
    this.maxMessages = opts.maxMessages ?? 10_000;
    this.maxBytes = opts.maxBytes ?? 16 * 1024 * 1024;
  }

  static async open(dir: string, opts: OutboxOptions = {}): Promise<Outbox> {
    const box = new Outbox(dir, opts);
    try {
      await mkdir(dir, { recursive: true, mode: DIR_MODE });
      await removeStaleTempFiles(dir);
      const found: OutboxMessage[] = [];
      for (const name of await readdir(dir)) {
        if (name === STATS_FILE) {
          const s = JSON.parse(await readFile(path.join(dir, name), 'utf8')) as { dropped?: number; tooLarge?: number };
          box.dropped = Number.isSafeInteger(s.dropped) ? (s.dropped as number) : 0;
          box.tooLarge = Number.isSafeInteger(s.tooLarge) ? (s.tooLarge as number) : 0;
          continue;
        }
        const m = MSG_RE.exec(name);
        if (!m) continue;
        try {
          const raw = JSON.parse(await readFile(path.join(dir, name), 'utf8')) as { topic: string; payload: string; createdAt: string };
          found.push({
            id: m[2]!,
            seq: Number(m[1]),
            topic: raw.topic,
            payload: Buffer.from(raw.payload, 'base64'),
            createdAt: raw.createdAt,
          });
        } catch {
          await rm(path.join(dir, name), { force: true }); // unreadable: cannot be delivered anyway
        }
      }
      found.sort((a, b) => a.seq - b.seq);
      for (const m of found) {
        box.messages.set(m.id, m);
        box.bytes += m.payload.length;
      }
      box.nextSeq = (found.at(-1)?.seq ?? 0) + 1;
    } catch (e) {
      if (e instanceof EdgeidError) throw e;
      throw new EdgeidError('outbox_unusable', `outbox ${dir}: ${(e as Error).message}`);
    }
    return box;
  }

  /** Persists a message; resolves once it is durable. Drops the oldest ones if the outbox is full. */
  add(topic: string, payload: Buffer | string): Promise<OutboxMessage> {
    // Serialised: eviction and ordering must see the previous add's result.
    const run = this.tail.then(() => this.addNow(topic, payload));
    this.tail = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async addNow(topic: string, payload: Buffer | string): Promise<OutboxMessage> {
    const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
    if (body.length > this.maxBytes) {
      throw new EdgeidError(
        'outbox_message_too_large',
        `a ${body.length}-byte message for ${topic} exceeds the outbox limit of ${this.maxBytes} bytes`,
        {
          bytes: body.length,
          maxBytes: this.maxBytes,
        },
      );
    }
    const msg: OutboxMessage = { id: randomUUID(), seq: this.nextSeq++, topic, payload: body, createdAt: new Date().toISOString() };
    const evict: OutboxMessage[] = [];
    let count = this.messages.size + 1;
    let bytes = this.bytes + body.length;
    for (const old of this.messages.values()) {
      if (count <= this.maxMessages && bytes <= this.maxBytes) break;
      evict.push(old);
      count--;
      bytes -= old.payload.length;
    }
    try {
      await writeFileAtomic(
        path.join(this.dir, fileName(msg)),
        JSON.stringify({ topic, payload: body.toString('base64'), createdAt: msg.createdAt }),
      );
      // the broker may have acknowledged some of them while the message was being written: those
      // were delivered, not dropped
      const gone = evict.filter((old) => this.messages.get(old.id) === old);
      if (gone.length > 0) {
        for (const old of gone) this.forget(old);
        this.dropped += gone.length;
        // the count first: a crash before the files go sends them once more (counted as dropped,
        // not lost), never the other way round (lost, not counted)
        await this.saveStats();
        await Promise.all(gone.map((old) => rm(path.join(this.dir, fileName(old)), { force: true })));
      }
    } catch (e) {
      throw new EdgeidError('outbox_unusable', `outbox ${this.dir}: ${(e as Error).message}`);
    }
    this.messages.set(msg.id, msg);
    this.bytes += body.length;
    return msg;
  }

  /** Resolves once every add() called so far has finished (written or failed). */
  idle(): Promise<void> {
    return this.tail;
  }

  /** The broker acknowledged the message: forget it. Unknown ids (already acked, dropped) are ignored. */
  async ack(id: string): Promise<void> {
    const m = this.messages.get(id);
    if (!m) return;
    this.forget(m);
    this.delivered++;
    // No directory fsync: losing this unlink in a crash only means the message is sent once more.
    await rm(path.join(this.dir, fileName(m)), { force: true });
  }

  /**
   * The broker will never accept this message (larger than its maximum packet size): forget it and
   * count it (`tooLarge`), so it is not sent again on every reconnect. Unknown ids are ignored.
   */
  async dropTooLarge(id: string): Promise<void> {
    const m = this.messages.get(id);
    if (!m) return;
    this.forget(m);
    this.tooLarge++;
    await this.saveStats();
    await rm(path.join(this.dir, fileName(m)), { force: true });
  }

  has(id: string): boolean {
    return this.messages.has(id);
  }

  /** Messages not yet acknowledged, oldest first. */
  pending(): OutboxMessage[] {
    return [...this.messages.values()];
  }

  stats(): OutboxStats {
    return {
      pending: this.messages.size,
      pendingBytes: this.bytes,
      dropped: this.dropped,
      tooLarge: this.tooLarge,
      delivered: this.delivered,
      maxMessages: this.maxMessages,
    };
  }

  private saveStats(): Promise<void> {
    return writeFileAtomic(path.join(this.dir, STATS_FILE), JSON.stringify({ dropped: this.dropped, tooLarge: this.tooLarge }));
  }

  private forget(m: OutboxMessage): void {
    if (this.messages.delete(m.id)) this.bytes -= m.payload.length;
  }
}
