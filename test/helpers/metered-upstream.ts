/**
 * A loopback model endpoint that meters like a provider (docs/pacing.md): per
 * model (the JSON body's `model`), a bucket of requests and one of tokens,
 * each holding one second of its per-minute rate and refilled continuously at
 * it. A call the buckets cannot pay for is answered 429 at once, with
 * `retry-after` (whole seconds until it would fit) and OpenAI's
 * `x-ratelimit-*` headers; an accepted one after `latencyMs`, with a
 * completion, its `usage`, and the same headers. A random-429 mode answers a
 * share of calls 429 whatever the buckets hold (an overloaded upstream, not
 * a meter). Every accepted call's time is recorded, so a test can assert
 * "never more than R in any one-second or one-minute window".
 *
 * Tokens of a call: its prompt's characters / 4 plus the completion it will
 * "write" (`completionTokens`, at most the body's max_tokens) — what `usage`
 * reports, charged on arrival.
 */
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";

/** One model's meter; a rate left out is not metered. */
export interface Meter {
  rpm?: number;
  tpm?: number;
}

export interface MeteredUpstreamOptions {
  /** Meters by model; a model not named is not metered. */
  meters?: Record<string, Meter>;
  /** Time to answer an accepted call. @default 20 */
  latencyMs?: number;
  /** Completion tokens an accepted call "writes" (capped by its max_tokens). @default 16 */
  completionTokens?: number;
  /** Share of calls answered 429 at random, before the meter is asked. @default 0 */
  randomThrottle?: number;
  /** `retry-after` of a random 429, in seconds. @default 1 */
  randomRetryAfterS?: number;
  /** Send `x-ratelimit-*` headers. @default true */
  rateLimitHeaders?: boolean;
  /** Seeds the random-429 mode (deterministic runs). @default 1 */
  seed?: number;
}

/** What one model saw. */
export interface ModelRecord {
  calls: number;
  /** 429s from the meter. */
  metered: number;
  /** 429s of the random mode. */
  random: number;
  /** `Date.now()` of each accepted call, in order. */
  accepted: number[];
  /** `Date.now()` of each call the meter answered 429, in order. */
  throttledAt: number[];
  /** Tokens charged for each accepted call. */
  tokens: number[];
}

class Bucket {
  #level: number;
  #at: number;
  readonly capacity: number;
  readonly perMs: number;
  constructor(perMinute: number, now: number) {
    this.capacity = perMinute / 60;
    this.perMs = perMinute / 60_000;
    this.#level = this.capacity;
    this.#at = now;
  }
  level(now: number): number {
    this.#level = Math.min(this.capacity, this.#level + (now - this.#at) * this.perMs);
    this.#at = now;
    return this.#level;
  }
  take(n: number): void {
    this.#level -= n;
  }
  /** Ms until `n` fits (from the last level read). */
  waitMs(n: number): number {
    return Math.max(0, (Math.min(n, this.capacity) - this.#level) / this.perMs);
  }
}

/** A duration in OpenAI's header format ("1s", "6m0s", "20ms"). */
function openAiDuration(ms: number): string {
  if (ms < 1000) return `${Math.ceil(ms)}ms`;
  const s = ms / 1000;
  return s < 60 ? `${Number(s.toFixed(3))}s` : `${Math.floor(s / 60)}m${Math.round(s % 60)}s`;
}

/** A deterministic random source in [0, 1) (mulberry32): the same seed, the same run. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A running metered upstream; see the file header. */
export class MeteredUpstream {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #o: Required<Omit<MeteredUpstreamOptions, "meters">>;
  readonly #meters: Record<string, Meter>;
  readonly #buckets = new Map<string, { requests?: Bucket; tokens?: Bucket }>();
  readonly #records = new Map<string, ModelRecord>();
  readonly #random: () => number;
  readonly #timers = new Set<NodeJS.Timeout>();

  constructor(o: MeteredUpstreamOptions = {}) {
    this.#meters = o.meters ?? {};
    this.#o = {
      latencyMs: o.latencyMs ?? 20,
      completionTokens: o.completionTokens ?? 16,
      randomThrottle: o.randomThrottle ?? 0,
      randomRetryAfterS: o.randomRetryAfterS ?? 1,
      rateLimitHeaders: o.rateLimitHeaders ?? true,
      seed: o.seed ?? 1,
    };
    this.#random = rng(this.#o.seed);
    this.#server = createServer((req, res) => this.#handle(req, res));
    this.#server.on("connection", (s) => {
      this.#sockets.add(s);
      s.on("close", () => this.#sockets.delete(s));
    });
  }

  /** Starts listening on 127.0.0.1 (a free port). */
  async listen(): Promise<this> {
    this.#server.listen(0, "127.0.0.1");
    await once(this.#server, "listening");
    return this;
  }

  get url(): string {
    const { port } = this.#server.address() as AddressInfo;
    return `http://127.0.0.1:${port}`;
  }

  /** What `model` saw (an empty record when nothing). */
  record(model: string): ModelRecord {
    let r = this.#records.get(model);
    if (!r) {
      r = { calls: 0, metered: 0, random: 0, accepted: [], throttledAt: [], tokens: [] };
      this.#records.set(model, r);
    }
    return r;
  }

  /** Most accepted calls of `model` in any window of `ms` (half-open: [t, t + ms)). */
  maxInWindow(model: string, ms: number): number {
    return maxIn(this.record(model).accepted, ms);
  }

  /** Most tokens accepted of `model` in any window of `ms`. */
  maxTokensInWindow(model: string, ms: number): number {
    const r = this.record(model);
    let best = 0;
    let sum = 0;
    let lo = 0;
    for (let hi = 0; hi < r.accepted.length; hi++) {
      sum += r.tokens[hi]!;
      while (r.accepted[hi]! - r.accepted[lo]! >= ms) sum -= r.tokens[lo++]!;
      best = Math.max(best, sum);
    }
    return best;
  }

  async close(): Promise<void> {
    for (const t of this.#timers) clearTimeout(t);
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      let body: { model?: unknown; max_tokens?: unknown; messages?: unknown; prompt?: unknown };
      try {
        body = JSON.parse(text);
      } catch {
        body = {};
      }
      const model = typeof body.model === "string" ? body.model : "";
      const now = Date.now();
      const rec = this.record(model);
      rec.calls++;
      const prompt = Math.ceil(
        (JSON.stringify(body.messages ?? "").length + JSON.stringify(body.prompt ?? "").length) / 4,
      );
      const max = typeof body.max_tokens === "number" ? body.max_tokens : Number.POSITIVE_INFINITY;
      const completion = Math.min(this.#o.completionTokens, max);
      const tokens = prompt + completion;
      if (this.#o.randomThrottle > 0 && this.#random() < this.#o.randomThrottle) {
        rec.random++;
        this.#send(
          res,
          429,
          { "retry-after": String(this.#o.randomRetryAfterS) },
          {
            error: { message: "overloaded: try again", type: "rate_limit" },
          },
        );
        return;
      }
      const b = this.#bucketsOf(model, now);
      const requestsLeft = b.requests?.level(now);
      const tokensLeft = b.tokens?.level(now);
      const headers = this.#meterHeaders(b, requestsLeft, tokensLeft, tokens);
      if (
        (requestsLeft !== undefined && requestsLeft < 1) ||
        (tokensLeft !== undefined && tokensLeft < Math.min(tokens, b.tokens!.capacity))
      ) {
        rec.metered++;
        rec.throttledAt.push(now);
        const wait = Math.max(b.requests?.waitMs(1) ?? 0, b.tokens?.waitMs(tokens) ?? 0);
        headers["retry-after"] = String(Math.max(1, Math.ceil(wait / 1000)));
        this.#send(res, 429, headers, {
          error: { message: "Rate limit reached", type: "requests", code: "rate_limit_exceeded" },
        });
        return;
      }
      b.requests?.take(1);
      b.tokens?.take(tokens);
      rec.accepted.push(now);
      rec.tokens.push(tokens);
      const after = this.#meterHeaders(b, b.requests?.level(now), b.tokens?.level(now), tokens);
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        this.#send(res, 200, after, {
          id: `cmpl-${rec.calls}`,
          object: "chat.completion",
          model,
          choices: [{ index: 0, message: { role: "assistant", content: "ok" } }],
          usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: tokens },
        });
      }, this.#o.latencyMs);
      this.#timers.add(timer);
    });
  }

  #bucketsOf(model: string, now: number) {
    let b = this.#buckets.get(model);
    if (!b) {
      const m = this.#meters[model] ?? {};
      b = {
        requests: m.rpm === undefined ? undefined : new Bucket(m.rpm, now),
        tokens: m.tpm === undefined ? undefined : new Bucket(m.tpm, now),
      };
      this.#buckets.set(model, b);
    }
    return b;
  }

  #meterHeaders(
    b: { requests?: Bucket; tokens?: Bucket },
    requestsLeft: number | undefined,
    tokensLeft: number | undefined,
    tokens: number,
  ): Record<string, string> {
    const h: Record<string, string> = {};
    if (!this.#o.rateLimitHeaders) return h;
    if (b.requests && requestsLeft !== undefined) {
      h["x-ratelimit-limit-requests"] = String(Math.round(b.requests.capacity * 60));
      h["x-ratelimit-remaining-requests"] = String(Math.max(0, Math.floor(requestsLeft)));
      h["x-ratelimit-reset-requests"] = openAiDuration(b.requests.waitMs(1) || 1);
    }
    if (b.tokens && tokensLeft !== undefined) {
      h["x-ratelimit-limit-tokens"] = String(Math.round(b.tokens.capacity * 60));
      h["x-ratelimit-remaining-tokens"] = String(Math.max(0, Math.floor(tokensLeft)));
      h["x-ratelimit-reset-tokens"] = openAiDuration(b.tokens.waitMs(tokens) || 1);
    }
    return h;
  }

  #send(res: ServerResponse, status: number, headers: Record<string, string>, body: unknown) {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      ...headers,
      "content-type": "application/json",
      "content-length": Buffer.byteLength(text),
    });
    res.end(text);
  }
}

/** Most times in any window of `ms` (half-open: [t, t + ms)); `times` in order. */
export function maxIn(times: readonly number[], ms: number): number {
  let best = 0;
  let lo = 0;
  for (let hi = 0; hi < times.length; hi++) {
    while (times[hi]! - times[lo]! >= ms) lo++;
    best = Math.max(best, hi - lo + 1);
  }
  return best;
}

/** Starts a metered upstream on a free loopback port. */
export function startMeteredUpstream(o: MeteredUpstreamOptions = {}): Promise<MeteredUpstream> {
  return new MeteredUpstream(o).listen();
}
