/**
 * One model's pacer in a dispatcher (docs/pacing.md): the gate asked before
 * each attempt starts and told how each ended. It combines
 * - the effective concurrency (./aimd.ts), at most the slots held;
 * - the rate grant, when the model has one: a bucket of requests and one of
 *   tokens (./token-bucket.ts), spent locally with no round trip;
 * - what the upstream's rate-limit headers say (src/domain/rate-limit-headers.ts): a
 *   meter read as empty holds the model until its reset; a meter read as
 *   nearly empty lets only what is left through before its reset.
 * A 429 without such evidence cuts the concurrency and nothing else: the
 * request that got it waits its own Retry-After (the control plane's
 * not_before), the rest of the model keeps going.
 *
 * Modes (for status): free (no throttle seen, no rate), paced (a rate grant
 * bounds it), backing off (a cut not grown back), held (the meter is empty
 * until a known moment). Pure: times come in as arguments (monotonic ms),
 * and the wall clock (for RFC 3339 resets) is injectable.
 */

import {
  type MeterReading,
  meterEmptyForMs,
  parseRateLimitHeaders,
} from "../../domain/rate-limit-headers.js";
import { AimdLimit, type AimdOptions } from "./aimd.js";
import type { Admission, AttemptEnd, GateLimits, PacingGate } from "./gate.js";
import { TokenBucket } from "./token-bucket.js";

/** How long a remaining-count without a reset time is trusted. */
const READING_TTL_MS = 1000;
/**
 * Claims worth holding beyond a round trip's: this many seconds of the rate share. Enough to
 * keep the bucket fed while a refill is on its way; not so much that one dispatcher sits on
 * the work another could send with its own share.
 */
const HOLD_SECONDS = 1;
/** Latency assumed before the first answer (for what to hold and to ask for). */
const UNKNOWN_LATENCY_MS = 1000;
/** Weight of a new estimate in the mean tokens per request. */
const TOKENS_GAIN = 0.1;

export interface ModelPacerOptions extends Partial<Omit<AimdOptions, "max">> {
  /** Wall-clock ms, for resets given as times. @default Date.now */
  wallNow?: () => number;
}

export type PacerMode = "free" | "paced" | "backing_off" | "held";

/** What status, watch and /metrics show of a model's pacing. */
export interface PacerSnapshot {
  mode: PacerMode;
  /** Attempts that may run at once now. */
  concurrency: number;
  inFlight: number;
  rpm: number | undefined;
  tpm: number | undefined;
  /** Monotonic ms until which nothing starts (0: not held). */
  heldUntilMs: number;
  /** Answers counted, and how many were throttles (429, or 503 with Retry-After). */
  answered: number;
  throttled: number;
  /** The same over the last minute. */
  answeredLastMinute: number;
  throttledLastMinute: number;
  /** The span those cover, in seconds: 60, or since the first answer when that is sooner. */
  windowSeconds: number;
}

/** Counts per second over the last minute (a ring of 60). */
class MinuteCounts {
  readonly #second = new Float64Array(60).fill(-1);
  readonly #counts = new Float64Array(60);

  add(nowMs: number): void {
    const s = Math.floor(nowMs / 1000);
    const i = s % 60;
    if (this.#second[i] !== s) {
      this.#second[i] = s;
      this.#counts[i] = 0;
    }
    this.#counts[i]!++;
  }

  /** Counted in the 60 seconds up to `nowMs`. */
  total(nowMs: number): number {
    const s = Math.floor(nowMs / 1000);
    let n = 0;
    for (let i = 0; i < 60; i++) if (this.#second[i]! > s - 60) n += this.#counts[i]!;
    return n;
  }
}

/** What is left of the meter until a moment, as the last response said. */
interface Budget {
  left: number;
  untilMs: number;
}

export class ModelPacer implements PacingGate {
  readonly #aimd: AimdLimit;
  readonly #wallNow: () => number;
  #requests: TokenBucket | undefined;
  #tokens: TokenBucket | undefined;
  /**
   * With no request rate granted: a bucket at the rate the upstream's headers name
   * (`x-ratelimit-limit-requests`), so one dispatcher paces to the meter before any 429.
   * Several sharing the meter each pace to all of it; their 429s cut the concurrency.
   */
  #heard: TokenBucket | undefined;
  #heardRpm: number | undefined;
  #rpm: number | undefined;
  #tpm: number | undefined;
  #inFlight = 0;
  /**
   * Slots of attempts throttled quicker than a round trip, held until the
   * round trip would have ended (sorted): a meter answers 429 at once, and
   * a slot freed by it must not start the next attempt at once (at
   * concurrency 1 that spun at ~1,000 calls a second against a 50/s meter).
   */
  readonly #parked: number[] = [];
  /** While a meter is in evidence, no start before this (AimdLimit.startIntervalMs). */
  #nextStartAt = 0;
  #heldUntil = 0;
  #requestBudget: Budget | undefined;
  #tokenBudget: Budget | undefined;
  #answered = 0;
  #throttled = 0;
  readonly #answeredRecent = new MinuteCounts();
  #firstAnswerAt: number | undefined;
  readonly #throttledRecent = new MinuteCounts();
  /** Mean estimated tokens per request (for what a token share lets start). */
  #meanTokens: number | undefined;

  constructor(nowMs: number, limits: GateLimits, o: ModelPacerOptions = {}) {
    this.#aimd = new AimdLimit({ ...o, max: limits.concurrency });
    this.#wallNow = o.wallNow ?? Date.now;
    this.setLimits(nowMs, limits);
  }

  setLimits(nowMs: number, limits: GateLimits): void {
    this.#aimd.setMax(Math.max(1, limits.concurrency));
    this.#rpm = limits.rpm;
    this.#tpm = limits.tpm;
    this.#requests = bucket(this.#requests, limits.rpm, nowMs);
    this.#tokens = bucket(this.#tokens, limits.tpm, nowMs);
  }

  tryAdmit(nowMs: number, estimatedTokens: number): Admission {
    if (nowMs < this.#heldUntil) {
      return { ok: false, retryAtMs: this.#heldUntil, reason: "meter_empty" };
    }
    const empty = [
      exhausted(this.#requestBudget, nowMs),
      exhausted(this.#tokenBudget, nowMs),
    ].filter((t) => t !== undefined);
    if (empty.length > 0) {
      return { ok: false, retryAtMs: Math.max(...empty), reason: "meter_empty" };
    }
    this.#aimd.judge(nowMs);
    if (this.#inFlight >= this.#aimd.limit) {
      const growAt = this.#aimd.growIdle(nowMs, this.#inFlight);
      if (this.#inFlight >= this.#aimd.limit) {
        return { ok: false, retryAtMs: growAt, reason: "concurrency" };
      }
    }
    while (this.#parked.length > 0 && this.#parked[0]! <= nowMs) this.#parked.shift();
    if (nowMs < this.#nextStartAt) {
      return { ok: false, retryAtMs: this.#nextStartAt, reason: "concurrency" };
    }
    if (this.#inFlight + this.#parked.length >= this.#aimd.limit) {
      const at = this.#parked[0];
      const retryAtMs = this.#inFlight >= this.#aimd.limit || at === undefined ? Infinity : at;
      return { ok: false, retryAtMs, reason: "concurrency" };
    }
    const requests = this.#requests ?? this.#heard;
    const waitRequests = requests?.take(nowMs, 1) ?? 0;
    if (waitRequests > 0) return { ok: false, retryAtMs: nowMs + waitRequests, reason: "requests" };
    const waitTokens = this.#tokens?.take(nowMs, estimatedTokens) ?? 0;
    if (waitTokens > 0) {
      requests?.adjust(nowMs, 1);
      return { ok: false, retryAtMs: nowMs + waitTokens, reason: "tokens" };
    }
    this.#inFlight++;
    if (estimatedTokens > 0) {
      this.#meanTokens =
        this.#meanTokens === undefined
          ? estimatedTokens
          : this.#meanTokens + TOKENS_GAIN * (estimatedTokens - this.#meanTokens);
    }
    if (this.#requestBudget) this.#requestBudget.left -= 1;
    if (this.#tokenBudget) this.#tokenBudget.left -= estimatedTokens;
    this.#aimd.onAdmit(nowMs);
    this.#nextStartAt = nowMs + this.#aimd.startIntervalMs(nowMs);
    return { ok: true };
  }

  onOutcome(e: AttemptEnd): void {
    this.#inFlight = Math.max(0, this.#inFlight - 1);
    if (e.usedTokens !== undefined && this.#tokens) {
      this.#tokens.adjust(e.nowMs, e.estimatedTokens - e.usedTokens);
    }
    if (e.status === 0) {
      // No answer: says nothing about the meter.
      this.#aimd.onNoAnswer(e.nowMs, e.admittedAtMs);
      return;
    }
    this.#answered++;
    this.#firstAnswerAt ??= e.nowMs;
    this.#answeredRecent.add(e.nowMs);
    const meter = parseRateLimitHeaders(e.headers, this.#wallNow());
    if (meter.requestsPerMinute !== undefined && meter.requestsPerMinute !== this.#heardRpm) {
      this.#heardRpm = meter.requestsPerMinute;
      this.#heard = bucket(this.#heard, meter.requestsPerMinute, e.nowMs);
    }
    this.#requestBudget = this.#budget(meter.requests, e.nowMs) ?? this.#requestBudget;
    this.#tokenBudget = this.#budget(meter.tokens, e.nowMs) ?? this.#tokenBudget;
    const throttled = e.status === 429 || (e.status === 503 && e.retryAfterMs !== undefined);
    if (!throttled) {
      this.#aimd.onSuccess(e.nowMs, e.admittedAtMs, this.#inFlight + 1);
      return;
    }
    this.#throttled++;
    this.#throttledRecent.add(e.nowMs);
    this.#aimd.onThrottle(e.nowMs, e.admittedAtMs);
    const roundTripEnd = e.admittedAtMs + (this.#aimd.latencyMs ?? 0);
    if (roundTripEnd > e.nowMs) {
      const i = this.#parked.findIndex((t) => t > roundTripEnd);
      this.#parked.splice(i < 0 ? this.#parked.length : i, 0, roundTripEnd);
    }
    // Hold the model only on evidence that the meter is empty: a dimension
    // read at zero, until its reset (or the Retry-After when it gave none).
    const emptyMs = meterEmptyForMs(
      { ...meter, retryAfterMs: meter.retryAfterMs ?? e.retryAfterMs },
      READING_TTL_MS,
    );
    if (emptyMs !== undefined) this.#heldUntil = Math.max(this.#heldUntil, e.nowMs + emptyMs);
  }

  /**
   * Claims worth holding now (ModelGate.useful): a round trip and HOLD_SECONDS of the rate
   * share (requests, and tokens at the mean estimate), and after a cut twice the limit (room
   * to grow). Infinity before any of these bounds it (slow start, no rate).
   */
  useful(_nowMs: number): number {
    const seconds = (this.#aimd.latencyMs ?? UNKNOWN_LATENCY_MS) / 1000 + HOLD_SECONDS;
    let n = Number.POSITIVE_INFINITY;
    const rpm = this.#rpm ?? this.#heardRpm;
    if (rpm !== undefined) n = Math.min(n, (rpm / 60) * seconds);
    if (this.#tpm !== undefined) {
      n = Math.min(n, (this.#tpm / 60 / Math.max(1, this.#meanTokens ?? 1)) * seconds);
    }
    if (!this.#aimd.slowStart) n = Math.min(n, 2 * this.#aimd.rawLimit);
    return Number.isFinite(n) ? Math.max(1, Math.ceil(n)) : n;
  }

  /**
   * The rate `held` claims need with no backlog behind them (Little's law: held per round
   * trip), and its tokens at the mean estimate; undefined before a round trip is known.
   */
  demand(held: number): { rateWant: number; tokenWant: bigint } | undefined {
    const latency = this.#aimd.latencyMs;
    if (latency === undefined || held <= 0) return undefined;
    const rateWant = Math.max(1, Math.ceil((held * 60_000) / Math.max(1, latency)));
    const tokenWant = BigInt(Math.ceil(rateWant * (this.#meanTokens ?? 0)));
    return { rateWant: Math.min(rateWant, 2 ** 31 - 1), tokenWant };
  }

  /**
   * Whether the cut concurrency, not a rate, is what holds the model back: what it lets
   * start a minute (limit per round trip) is below what the rates allow. A model paced to
   * its `--rpm` whose concurrency was once cut reads "paced", not "backing off".
   */
  #concurrencyBinds(): boolean {
    const latency = this.#aimd.latencyMs;
    if (latency === undefined) return true;
    let rate = this.#rpm ?? this.#heardRpm ?? Number.POSITIVE_INFINITY;
    if (this.#tpm !== undefined)
      rate = Math.min(rate, this.#tpm / Math.max(1, this.#meanTokens ?? 1));
    return (this.#aimd.rawLimit * 60_000) / Math.max(1, latency) < rate;
  }

  /**
   * A reading as a budget: what is left, less what we have in flight (the
   * upstream may not have counted those yet: counting them twice errs on
   * the side of fewer 429s), until the reset.
   */
  #budget(r: MeterReading | undefined, nowMs: number): Budget | undefined {
    if (r === undefined) return undefined;
    return { left: r.remaining - this.#inFlight, untilMs: nowMs + (r.resetMs ?? READING_TTL_MS) };
  }

  snapshot(nowMs: number): PacerSnapshot {
    const held = Math.max(
      nowMs < this.#heldUntil ? this.#heldUntil : 0,
      exhausted(this.#requestBudget, nowMs) ?? 0,
      exhausted(this.#tokenBudget, nowMs) ?? 0,
    );
    const rated =
      this.#rpm !== undefined || this.#tpm !== undefined || this.#heardRpm !== undefined;
    const mode: PacerMode =
      held > 0
        ? "held"
        : this.#aimd.backingOff && this.#concurrencyBinds()
          ? "backing_off"
          : rated
            ? "paced"
            : "free";
    return {
      mode,
      concurrency: this.#aimd.limit,
      inFlight: this.#inFlight,
      rpm: this.#rpm,
      tpm: this.#tpm,
      heldUntilMs: held,
      answered: this.#answered,
      throttled: this.#throttled,
      answeredLastMinute: this.#answeredRecent.total(nowMs),
      throttledLastMinute: this.#throttledRecent.total(nowMs),
      windowSeconds:
        this.#firstAnswerAt === undefined
          ? 0
          : Math.min(60, Math.max(1, Math.ceil((nowMs - this.#firstAnswerAt) / 1000))),
    };
  }
}

/**
 * When a budget read at nothing left fills again; undefined while it has
 * some left (a large request then goes: refusing it until the reset would
 * starve it on a busy meter) or once its reset has passed.
 */
function exhausted(b: Budget | undefined, nowMs: number): number | undefined {
  return b === undefined || nowMs >= b.untilMs || b.left > 0 ? undefined : b.untilMs;
}

function bucket(b: TokenBucket | undefined, perMinute: number | undefined, nowMs: number) {
  if (perMinute === undefined) return undefined;
  if (b === undefined) return new TokenBucket(perMinute, nowMs);
  b.setRate(perMinute, nowMs);
  return b;
}
