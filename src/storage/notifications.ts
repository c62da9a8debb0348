/**
 * One LISTEN connection per process, fanned out to in-process waiters.
 * Channels: `fusillade_work` (payload: model) when capacity frees up or work
 * becomes pending; `fusillade_batch` (payload: batch id) when a batch's
 * requests change. Both are sent by the database (trigger, CreateBatch,
 * SetModelLimit), so every replica hears every change.
 */
import { EventEmitter } from "node:events";
import pg from "pg";

export const WORK_CHANNEL = "fusillade_work";
export const BATCH_CHANNEL = "fusillade_batch";
const CHANNELS = [WORK_CHANNEL, BATCH_CHANNEL] as const;
export type Channel = (typeof CHANNELS)[number];

/** Delay before reconnecting a lost LISTEN connection. */
const RECONNECT_DELAY_MS = 500;

export class Notifications {
  private readonly emitter = new EventEmitter();
  private client: pg.Client | undefined;
  private closed = false;

  constructor(
    private readonly url: string,
    private readonly onError: (e: unknown) => void = () => undefined,
  ) {
    // Every AcquireLeases long-poll and every stream subscribes.
    this.emitter.setMaxListeners(0);
  }

  /** Connects and LISTENs; resolves once notifications flow. */
  async start(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.url,
      application_name: "fusillade-listen",
    });
    client.on("notification", (n) => {
      this.emitter.emit(n.channel, n.payload ?? "");
    });
    client.on("error", (e) => {
      this.onError(e);
      this.reconnect(client);
    });
    client.on("end", () => this.reconnect(client));
    await client.connect();
    for (const ch of CHANNELS) await client.query(`LISTEN ${ch}`);
    this.client = client;
    // A reconnect may have missed notifications: wake everyone to re-check.
    for (const ch of CHANNELS) this.emitter.emit(ch, "*");
  }

  private reconnect(old: pg.Client): void {
    if (this.closed || this.client !== old) return;
    this.client = undefined;
    old.removeAllListeners("end");
    setTimeout(() => {
      if (this.closed) return;
      this.start().catch((e) => {
        this.onError(e);
        this.client = old; // lets reconnect() try again
        this.reconnect(old);
      });
    }, RECONNECT_DELAY_MS).unref();
  }

  /** Calls `fn` with each payload on `channel` ("*" after a reconnect); returns an unsubscribe. */
  on(channel: Channel, fn: (payload: string) => void): () => void {
    this.emitter.on(channel, fn);
    return () => this.emitter.off(channel, fn);
  }

  /**
   * Resolves on the first notification on `channel` whose payload passes
   * `filter`, or after `timeoutMs`, or when `signal` aborts.
   */
  wait(
    channel: Channel,
    filter: (payload: string) => boolean,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        off();
        signal?.removeEventListener("abort", done);
        resolve();
      };
      const off = this.on(channel, (p) => {
        if (p === "*" || filter(p)) done();
      });
      const timer = setTimeout(done, Math.max(0, timeoutMs));
      signal?.addEventListener("abort", done, { once: true });
      if (signal?.aborted) done();
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    const c = this.client;
    this.client = undefined;
    this.emitter.emit(WORK_CHANNEL, "*");
    this.emitter.emit(BATCH_CHANNEL, "*");
    if (c) {
      c.removeAllListeners("end");
      await c.end().catch(() => undefined);
    }
  }
}
