/**
 * One LISTEN connection per process, fanned out to in-process waiters.
 * Channels: `fusillade_work` (payload: model) when capacity frees up or work
 * becomes pending; `fusillade_batch` (payload: batch id) when a batch's
 * requests change. Both are sent by the database (trigger, CreateBatch,
 * SetModelLimit), so every replica hears every change.
 *
 * Modes of the connection:
 * - listening: checked with `SELECT 1` every `checkIntervalMs`; a check that
 *   fails, or gets no answer within the next interval (a half-open socket
 *   raises neither 'error' nor 'end'), ends the connection;
 * - reconnecting: after an error, an end or a failed check, a new connection
 *   is tried every RECONNECT_DELAY_MS until one LISTENs; then every waiter is
 *   woken once with "*" (notifications were missed meanwhile: re-check);
 * - closed: after close(); waiters are woken once and nothing reconnects.
 */
import { EventEmitter } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";

export const WORK_CHANNEL = "fusillade_work";
export const BATCH_CHANNEL = "fusillade_batch";
/** A model's limit changed (payload: model): its holders re-read their share. */
export const LIMITS_CHANNEL = "fusillade_limits";
/** A token was revoked: every replica drops its token cache. */
export const TOKENS_CHANNEL = "fusillade_tokens";
const CHANNELS = [WORK_CHANNEL, BATCH_CHANNEL, LIMITS_CHANNEL, TOKENS_CHANNEL] as const;
export type Channel = (typeof CHANNELS)[number];

/** Delay before (each attempt at) reconnecting a lost LISTEN connection. */
const RECONNECT_DELAY_MS = 500;
/** First TCP keepalive probe after this much silence (the kernel default is 2 h). */
const KEEPALIVE_IDLE_MS = 10_000;

export interface NotificationsOptions {
  /** How often the connection is checked; an unanswered check ends it. @default 5000 */
  checkIntervalMs?: number;
  /** Told of every lost connection and failed reconnect. */
  onError?: (e: unknown) => void;
}

export class Notifications {
  private readonly emitter = new EventEmitter();
  private readonly checkIntervalMs: number;
  private readonly onError: (e: unknown) => void;
  private client: pg.Client | undefined;
  private stopChecks: (() => void) | undefined;
  private retry: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly url: string,
    options: NotificationsOptions = {},
  ) {
    this.checkIntervalMs = options.checkIntervalMs ?? 5000;
    this.onError = options.onError ?? (() => undefined);
    // Every WaitForWork long poll and every stream subscribes.
    this.emitter.setMaxListeners(0);
  }

  /** Connects and LISTENs; resolves once notifications flow. */
  async start(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.url,
      application_name: "fusillade-listen",
      keepAlive: true,
      keepAliveInitialDelayMillis: KEEPALIVE_IDLE_MS,
    });
    client.on("notification", (n) => {
      this.emitter.emit(n.channel, n.payload ?? "");
    });
    client.on("error", (e) => this.lost(client, e));
    client.on("end", () => this.lost(client, new Error("the LISTEN connection ended")));
    try {
      await client.connect();
      for (const ch of CHANNELS) await client.query(`LISTEN ${ch}`);
    } catch (e) {
      client.removeAllListeners();
      client.on("error", () => undefined);
      client.end().catch(() => undefined);
      throw e;
    }
    if (this.closed) {
      await client.end().catch(() => undefined);
      return;
    }
    this.client = client;
    this.stopChecks = this.check(client);
    // A reconnect may have missed notifications: wake everyone once to re-check.
    for (const ch of CHANNELS) this.emitter.emit(ch, "*");
  }

  /** Checks `client` every interval; returns the stop. */
  private check(client: pg.Client): () => void {
    let inFlight = false;
    const timer = setInterval(() => {
      if (inFlight) {
        this.lost(
          client,
          new Error(`the LISTEN connection did not answer within ${this.checkIntervalMs} ms`),
        );
        return;
      }
      inFlight = true;
      client.query("SELECT 1").then(
        () => {
          inFlight = false;
        },
        (e: unknown) => this.lost(client, e),
      );
    }, this.checkIntervalMs);
    timer.unref();
    return () => clearInterval(timer);
  }

  /** Drops `old` (if it is still the current connection) and reconnects. */
  private lost(old: pg.Client, cause: unknown): void {
    if (this.closed || this.client !== old) return;
    this.onError(cause);
    this.client = undefined;
    this.stopChecks?.();
    this.stopChecks = undefined;
    old.removeAllListeners();
    old.on("error", () => undefined);
    // With a query outstanding (an unanswered check), end() destroys the socket.
    old.end().catch(() => undefined);
    this.reconnect();
  }

  private reconnect(): void {
    if (this.closed) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      if (this.closed) return;
      this.start().catch((e: unknown) => {
        this.onError(e);
        this.reconnect();
      });
    }, RECONNECT_DELAY_MS);
    this.retry.unref();
  }

  /** Calls `fn` with each payload on `channel` ("*" after a reconnect); returns an unsubscribe. */
  /**
   * Tells this process's listeners at once of a notification this process
   * has just committed: they need not wait for it to come back through the
   * LISTEN connection (it still does, and is harmless twice).
   */
  announce(channel: Channel, payload: string): void {
    this.emitter.emit(channel, payload);
  }

  on(channel: Channel, fn: (payload: string) => void): () => void {
    this.emitter.on(channel, fn);
    return () => this.emitter.off(channel, fn);
  }

  /**
   * Resolves on the first notification on `channel` whose payload passes
   * `filter`, or after `timeoutMs`, or when `signal` aborts.
   */
  async wait(
    channel: Channel,
    filter: (payload: string) => boolean,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<void> {
    if (signal?.aborted) return;
    const woken = new AbortController();
    const wake = () => woken.abort();
    const off = this.on(channel, (p) => {
      if (p === "*" || filter(p)) wake();
    });
    signal?.addEventListener("abort", wake, { once: true });
    try {
      await sleep(Math.max(0, timeoutMs), undefined, { signal: woken.signal }).catch(
        () => undefined,
      );
    } finally {
      off();
      signal?.removeEventListener("abort", wake);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    this.stopChecks?.();
    const c = this.client;
    this.client = undefined;
    for (const ch of CHANNELS) this.emitter.emit(ch, "*");
    if (c) {
      c.removeAllListeners();
      c.on("error", () => undefined);
      await c.end().catch(() => undefined);
    }
  }
}
